"""Errors that mean "bad input": the CLI turns them into exit code 2 with one `error:` line."""
from __future__ import annotations

import difflib
from collections.abc import Iterable


class UserError(Exception):
    """Bad input or usage (unknown name, invalid value, missing or corrupt file)."""


def unknown(kind: str, name: str, choices: Iterable[str]) -> UserError:
    """`unknown model 'resnet21' (closest: resnet20, resnet18)`-style error."""
    choices = list(choices)
    close = difflib.get_close_matches(name, choices, n=3, cutoff=0.5)
    hint = f" (closest: {', '.join(close)})" if close else f" (choices: {', '.join(choices)})"
    return UserError(f"unknown {kind} '{name}'{hint}")


def warn(message: str, kind: str = "warning") -> None:
    """One `warning:` line on stderr (not Python's warnings machinery: no source line, no
    category, shown every time)."""
    import sys

    print(f"{kind}: {message}".splitlines()[0], file=sys.stderr, flush=True)


def note(message: str) -> None:
    """One `note:` line on stderr: something the user may not expect, nothing wrong."""
    warn(message, "note")


class InvalidRecord(UserError):
    """A weights file whose metadata or tensors cannot be used as they are."""

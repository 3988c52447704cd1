"""`reslab` command line: parse -> library call -> print. One module per subcommand, each with
`add_parser(subparsers)` registering its parser and setting `func` to its `run(args) -> int`.

Bad input (UserError, unknown names, invalid values) exits 2 with one `error:` line; anything
else exits 1 with a traceback. `--debug` or RESLAB_DEBUG=1 shows the traceback always. A closed
stdout (`| head`) ends the command quietly with 141, as Unix tools do. The conventions are
docs/guides/cli.md.

Building the parser imports no torch (the subcommand modules import it in their run functions),
so `reslab --help` and usage errors answer at once.
"""
from __future__ import annotations

import argparse
import difflib
import importlib
import importlib.util
import os
import signal
import sys
from collections.abc import Sequence
from typing import Any

from ..errors import UserError

# Order is the order of `reslab --help`.
COMMANDS = ("models", "summary", "trace", "train", "show_batch", "lr_find", "eval", "predict",
            "responses", "degradation", "grow", "paper", "report", "export", "import_", "bench",
            "serve")


CLOSED_PIPE = 141  # 128 + SIGPIPE: what `cat` and `git` end with when `head` stops reading


class _Parser(argparse.ArgumentParser):
    """No abbreviations (`--epoch` is not `--epochs`), errors as one line naming the
    subcommand, and the closest flag or choice suggested."""

    def __init__(self, *args: Any, **kwargs: Any) -> None:
        kwargs.setdefault("allow_abbrev", False)
        super().__init__(*args, **kwargs)

    def error(self, message: str) -> None:  # usage errors: one line, exit 2
        raise UserError(f"{self.prog}: {message}")

    def parse_args(self, args: Sequence[str] | None = None,
                   namespace: argparse.Namespace | None = None) -> argparse.Namespace:
        # argparse reports a subcommand's unknown flags from the top parser ("reslab: ..."):
        # report them from the subcommand's, which knows the flags to suggest.
        namespace, extras = self.parse_known_args(args, namespace)
        if extras:
            target = _subparsers(self).get(getattr(namespace, "command", None), self)
            target.error(f"unrecognized arguments: {' '.join(extras)}"
                         f"{_closest_flags(target, extras)}")
        return namespace

    def _check_value(self, action: argparse.Action, value: Any) -> None:
        if action.choices is not None and value not in action.choices:
            close = difflib.get_close_matches(str(value), [str(c) for c in action.choices], n=1)
            hint = f"did you mean {close[0]}? " if close else ""
            raise argparse.ArgumentError(action, f"invalid choice: {value!r} ({hint}choose from "
                                                 f"{', '.join(map(repr, action.choices))})")


def _subparsers(parser: argparse.ArgumentParser) -> dict[str, argparse.ArgumentParser]:
    return next((a.choices for a in parser._actions
                 if isinstance(a, argparse._SubParsersAction)), {})


def _closest_flags(parser: argparse.ArgumentParser, extras: Sequence[str]) -> str:
    """' (did you mean --epochs?)' for the unknown flags among extras that resemble one."""
    flags = [s for a in parser._actions for s in a.option_strings if s.startswith("--")]
    close = [m for e in extras if e.startswith("--") for m in _like(e.split("=", 1)[0], flags)]
    return f" (did you mean {', '.join(dict.fromkeys(close))}?)" if close else ""


# Other tools' names for reslab's flags, which spelling alone would not suggest
OTHER_NAMES = {"--learning-rate": "--lr", "--learning_rate": "--lr", "--num-epochs": "--epochs",
               "--num_epochs": "--epochs", "--max-iters": "--iters", "--steps": "--iters",
               "--imgsz": "--image-size", "--img-size": "--image-size", "--bs": "--batch-size",
               "--arch": "--model"}


def _like(given: str, flags: list[str]) -> list[str]:
    """reslab's name for a flag of another tool, else the flags an unknown one abbreviates (up
    to 3; reslab takes no abbreviations), else the one it most resembles."""
    if OTHER_NAMES.get(given) in flags:
        return [OTHER_NAMES[given]]
    begun = [f for f in flags if f.startswith(given)] if len(given) > 3 else []
    return begun if 0 < len(begun) <= 3 else \
        difflib.get_close_matches(given, flags, n=1, cutoff=0.7)


def _version() -> str:
    from .. import __version__

    return __version__


def build_parser(argv: Sequence[str] = ()) -> argparse.ArgumentParser:
    """The whole command line; argv (the one being parsed) chooses the recipe whose defaults
    the recipe flags' helps show."""
    parser = _Parser(prog="reslab", description="Deep residual learning (He et al. 2015), "
                     "reproducible and fast.")
    parser.add_argument("--debug", action="store_true", help="show tracebacks for every error")
    parser.add_argument("--version", action="version", version=f"reslab {_version()}",
                        help="print the version and exit")
    sub = parser.add_subparsers(dest="command", metavar="COMMAND", parser_class=_Parser,
                                help="`reslab COMMAND --help` lists its flags")
    for name in COMMANDS:
        spec = importlib.util.find_spec(f"{__name__}.{name}")
        if spec is not None:
            importlib.import_module(f"{__name__}.{name}").add_parser(sub)
    argv = list(argv)
    at = next((i for i, a in enumerate(argv) if a in sub.choices), None)
    if at is not None:
        from .common import show_recipe_defaults

        show_recipe_defaults(sub.choices[argv[at]], argv[at + 1:])
    return parser


# Commands that run the model once over some images: intra-op threads from the CPUs that are
# free when they start (reslab/threads.py), unless OMP_NUM_THREADS or the caller chose.
ONE_SHOT = ("eval", "predict", "responses", "export", "grow", "show-batch")


def main(argv: list[str] | None = None) -> int:
    argv = sys.argv[1:] if argv is None else argv
    from ..io import Terminated, clean_up_on_signals

    debug = "--debug" in argv or os.environ.get("RESLAB_DEBUG") == "1"
    _ignore_file_size_signal()
    restore_signals = clean_up_on_signals()
    try:
        args = build_parser(argv).parse_args(argv)
        if not getattr(args, "func", None):
            build_parser().print_help()
            return 2
        if args.command in ONE_SHOT:  # train, lr-find and serve choose their own
            from ..threads import auto_threads

            auto_threads()
        return int(args.func(args) or 0)
    except (UserError, ValueError, KeyError, FileNotFoundError) as e:
        if debug:
            raise
        msg = e.args[0] if isinstance(e, KeyError) and e.args else str(e)
        return _error(msg)
    except BrokenPipeError:
        return closed_pipe()
    except OSError as e:
        # An OS error the user can fix (permission, read-only, full disk, file-size limit, a
        # file where a directory belongs) is exit 2 like any bad input; others are bugs.
        from ..io import path_error

        err = path_error(e, e.filename or "a file", "use")
        if debug or err is None:
            raise
        return _error(str(err))
    except (MemoryError, RuntimeError) as e:
        if debug or not _out_of_memory(e):
            raise
        return _error("out of memory: the batch, image size or model is too large for this "
                      "machine; use a smaller --batch-size or --image-size")
    except KeyboardInterrupt:
        print("error: interrupted", file=sys.stderr)
        return 130
    except Terminated:
        print("error: terminated (SIGTERM)", file=sys.stderr)
        return 143
    finally:
        restore_signals()


def _error(message: str) -> int:
    print(f"error: {message}".splitlines()[0], file=sys.stderr)
    return 2


def _out_of_memory(e: BaseException) -> bool:
    text = str(e)
    return isinstance(e, MemoryError) or "can't allocate memory" in text \
        or "out of memory" in text.lower()


def _ignore_file_size_signal() -> None:
    """With a file-size limit (ulimit -f), the kernel kills a writer past it with SIGXFSZ;
    ignored, the write fails with EFBIG instead, which becomes a clean error (and the atomic
    writer keeps the previous file)."""
    if hasattr(signal, "SIGXFSZ"):
        try:
            signal.signal(signal.SIGXFSZ, signal.SIG_IGN)
        except ValueError:  # not the main thread
            pass


def closed_pipe() -> int:
    """stdout's reader went away (`reslab models | head -1`): stop quietly. stdout is pointed at
    /dev/null so that Python's flush at exit does not report the same broken pipe again."""
    try:
        devnull = os.open(os.devnull, os.O_WRONLY)
        os.dup2(devnull, sys.stdout.fileno())
    except (OSError, ValueError, AttributeError):  # no real stdout (tests): nothing to redirect
        pass
    return CLOSED_PIPE


def entry() -> None:
    try:
        try:
            code = main()
        except SystemExit as e:  # --help and --version exit from inside argparse
            code = e.code
        sys.stdout.flush()  # here, where a closed pipe is caught, not at the interpreter's exit
    except BrokenPipeError:
        code = closed_pipe()
    sys.exit(code)

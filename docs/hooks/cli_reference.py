"""MkDocs hook: the command-line reference page, generated from `reslab`'s own argparse parser
at build time (reference/cli.md), so it cannot drift from the code. Every subcommand gets its
description, its usage line and a table of its arguments with their help, choices and default.
"""
from __future__ import annotations

import argparse
import html
import os
import sys
from pathlib import Path

from mkdocs.structure.files import File

PAGE = "reference/cli.md"
SRC = Path(__file__).resolve().parents[2] / "src"

INTRO = """# Command line

Generated from `reslab`'s argument parser when the site is built; `reslab COMMAND --help`
prints the same. Exit codes: 0 success; 2 bad input (one `error:` line on stderr, no
traceback); 1 an unexpected failure; 130/143 stopped by SIGINT/SIGTERM after saving; 141 stdout
closed before the output was written (`| head`). The conventions are in
[the command-line guide](../guides/cli.md). `--debug`
(or `RESLAB_DEBUG=1`) shows tracebacks. `--json` prints exactly one JSON object on stdout. A
CKPT argument is a run directory (its final weights `model.safetensors`; for a run stopped
early its `best.safetensors`) or a weights file.
"""


def _subparsers(parser: argparse.ArgumentParser) -> dict[str, argparse.ArgumentParser]:
    for action in parser._actions:
        if isinstance(action, argparse._SubParsersAction):
            return dict(action.choices)
    return {}


def _cell(text: str) -> str:
    return html.escape(" ".join(text.split()), quote=False).replace("|", "\\|")


def _flags(action: argparse.Action) -> str:
    if not action.option_strings:
        return f"`{action.metavar or action.dest}`"
    takes_value = action.nargs != 0
    metavar = action.metavar or action.dest.upper()
    if isinstance(metavar, tuple):
        metavar = " ".join(metavar)
    return ", ".join(f"`{o} {metavar}`" if takes_value else f"`{o}`"
                     for o in action.option_strings)


def _help(action: argparse.Action) -> str:
    text = action.help or ""
    if "%(" in text:  # argparse's own expansion of %(default)s and friends
        text = text % {**vars(action), "prog": "reslab"}
    parts = [_cell(text)] if text else []
    if action.choices is not None and not isinstance(action.choices, dict):
        parts.append("choices: " + ", ".join(f"`{c}`" for c in action.choices))
    if action.option_strings and action.nargs != 0 and action.default not in (None, "",
                                                                            argparse.SUPPRESS):
        parts.append(f"default: `{action.default}`")
    return "; ".join(parts)


def _command(name: str, parser: argparse.ArgumentParser) -> str:
    lines = [f"## reslab {name}", ""]
    if parser.description:
        lines += [_cell(parser.description), ""]
    prefix = "usage: "   # argparse indents continuation lines under the program name
    usage = "\n".join(line.removeprefix(" " * len(prefix)) for line in
                      parser.format_usage().removeprefix(prefix).rstrip().splitlines())
    lines += ["```", usage, "```", ""]
    actions = [a for a in parser._actions
               if a.help is not argparse.SUPPRESS and not isinstance(a, argparse._HelpAction)]
    if actions:
        lines += ["| argument | meaning |", "|---|---|"]
        lines += [f"| {_flags(a)} | {_help(a)} |" for a in actions]
        lines.append("")
    return "\n".join(lines)


def cli_reference() -> str:
    """The Markdown of the whole reference: the global options, then every subcommand."""
    if str(SRC) not in sys.path:
        sys.path.insert(0, str(SRC))
    os.environ["COLUMNS"] = "100"   # usage lines wrap the same on every machine
    from reslab.cli import build_parser

    parser = build_parser()
    commands = _subparsers(parser)
    toc = ", ".join(f"[`{n}`](#reslab-{n})" for n in commands)
    globals_ = [a for a in parser._actions if a.option_strings
                and not isinstance(a, (argparse._HelpAction, argparse._SubParsersAction))]
    out = [INTRO, f"Commands: {toc}.", "", "## Global options", "",
           "| argument | meaning |", "|---|---|",
           *(f"| {_flags(a)} | {_help(a)} |" for a in globals_), ""]
    out += [_command(n, p) for n, p in commands.items()]
    return "\n".join(out)


def on_files(files, config):  # noqa: ANN001 (MkDocs hook signature)
    files.append(File.generated(config, PAGE, content=cli_reference()))
    return files

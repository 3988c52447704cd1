"""`reslab` command line: parse -> library call -> print. One module per subcommand, each with
`add_parser(subparsers)` registering its parser and setting `func` to its `run(args) -> int`.

Bad input (UserError, unknown names, invalid values) exits 2 with one `error:` line; anything
else exits 1 with a traceback. `--debug` or RESLAB_DEBUG=1 shows the traceback always.
"""
from __future__ import annotations

import argparse
import importlib
import os
import sys

from ..errors import UserError

# Order is the order of `reslab --help`.
COMMANDS = ("models", "summary", "trace", "train", "eval", "predict", "responses",
            "degradation", "grow", "report", "export", "import_", "bench")


class _Parser(argparse.ArgumentParser):
    def error(self, message: str) -> None:  # usage errors: one line, exit 2
        raise UserError(f"{self.prog}: {message}")


def build_parser() -> argparse.ArgumentParser:
    parser = _Parser(prog="reslab", description="Deep residual learning (He et al. 2015), "
                     "reproducible and fast.")
    parser.add_argument("--debug", action="store_true", help="show tracebacks for every error")
    sub = parser.add_subparsers(dest="command", metavar="COMMAND", parser_class=_Parser)
    for name in COMMANDS:
        spec = importlib.util.find_spec(f"{__name__}.{name}")
        if spec is not None:
            importlib.import_module(f"{__name__}.{name}").add_parser(sub)
    return parser


def main(argv: list[str] | None = None) -> int:
    argv = sys.argv[1:] if argv is None else argv
    debug = "--debug" in argv or os.environ.get("RESLAB_DEBUG") == "1"
    try:
        args = build_parser().parse_args(argv)
        if not getattr(args, "func", None):
            build_parser().print_help()
            return 2
        return int(args.func(args) or 0)
    except (UserError, ValueError, KeyError, FileNotFoundError) as e:
        if debug:
            raise
        msg = e.args[0] if isinstance(e, KeyError) and e.args else str(e)
        print(f"error: {msg}".splitlines()[0], file=sys.stderr)
        return 2
    except OSError as e:
        # A full disk outside the checkpoint writer (metrics.jsonl, an exported file) is the
        # user's to fix like any bad input; other OS errors stay unexpected.
        from ..engine.checkpoint import disk_full_errno

        code = disk_full_errno(e)
        if debug or code is None:
            raise
        where = f" {e.filename}" if e.filename else ""
        print(f"error: cannot write{where}: {os.strerror(code)}", file=sys.stderr)
        return 2
    except KeyboardInterrupt:
        print("error: interrupted", file=sys.stderr)
        return 130


def entry() -> None:
    sys.exit(main())

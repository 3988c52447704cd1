"""`reslab` command line: parse -> library call -> print. One module per subcommand, each with
`add_parser(subparsers)` registering its parser and setting `func` to its `run(args) -> int`.

Bad input (UserError, unknown names, invalid values) exits 2 with one `error:` line; anything
else exits 1 with a traceback. `--debug` or RESLAB_DEBUG=1 shows the traceback always.
"""
from __future__ import annotations

import argparse
import importlib
import os
import signal
import sys

from ..errors import UserError

# Order is the order of `reslab --help`.
COMMANDS = ("models", "summary", "trace", "train", "show_batch", "lr_find", "eval", "predict",
            "responses", "degradation", "grow", "paper", "report", "export", "import_", "bench",
            "serve")


class _Parser(argparse.ArgumentParser):
    def error(self, message: str) -> None:  # usage errors: one line, exit 2
        raise UserError(f"{self.prog}: {message}")


def _version() -> str:
    from .. import __version__

    return __version__


def build_parser() -> argparse.ArgumentParser:
    parser = _Parser(prog="reslab", description="Deep residual learning (He et al. 2015), "
                     "reproducible and fast.")
    parser.add_argument("--debug", action="store_true", help="show tracebacks for every error")
    parser.add_argument("--version", action="version", version=f"reslab {_version()}")
    sub = parser.add_subparsers(dest="command", metavar="COMMAND", parser_class=_Parser)
    for name in COMMANDS:
        spec = importlib.util.find_spec(f"{__name__}.{name}")
        if spec is not None:
            importlib.import_module(f"{__name__}.{name}").add_parser(sub)
    return parser


def main(argv: list[str] | None = None) -> int:
    argv = sys.argv[1:] if argv is None else argv
    from ..io import Terminated, clean_up_on_signals

    debug = "--debug" in argv or os.environ.get("RESLAB_DEBUG") == "1"
    _ignore_file_size_signal()
    restore_signals = clean_up_on_signals()
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
        return _error(msg)
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


def entry() -> None:
    sys.exit(main())

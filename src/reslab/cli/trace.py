"""`reslab trace MODEL`: the study notes' layer-by-layer trace (numbered weighted layers, their
modules and output shapes, stage separators; docs/notes.md)."""
from __future__ import annotations

import argparse

from .common import add_input_option, add_model_options, analyze


def add_parser(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser("trace", help="layer-by-layer trace of the output shapes",
                       description="Runs one forward and prints every weighted layer numbered "
                                   "from 1 with its module and output shape, plus the max-pool, "
                                   "shortcut projection (downsample), average pool and flatten "
                                   "lines and the stage separators, as in the study notes "
                                   "(docs/notes.md).")
    p.add_argument("model", metavar="MODEL", help="architecture name (see `reslab models`)")
    add_input_option(p)
    add_model_options(p)
    p.set_defaults(func=run)


def run(args: argparse.Namespace) -> int:
    from ..analysis.trace import render_trace, trace

    print(render_trace(analyze(args, trace)))
    return 0

"""`reslab report RUN_DIR... [--out FILE]`: a Markdown and a self-contained HTML report.

Curves, config, final metrics beside the paper's numbers, layer responses (responses.json) and
degradation sweeps (degradation.json) of each directory. Default output: RUN_DIR/report.md and
report.html for one directory, ./report.md and ./report.html for several.
"""
from __future__ import annotations

import argparse

from .common import add_out_option


def add_parser(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser("report", help="Markdown and HTML report of run directories",
                       description=__doc__)
    p.add_argument("run_dirs", nargs="+", metavar="RUN_DIR",
                   help="run directories or degradation sweep directories")
    add_out_option(p, "FILE.md or FILE.html; the other format is written beside it",
                   metavar="FILE")
    p.set_defaults(func=run)


def run(args: argparse.Namespace) -> int:
    from ..analysis.report import write_report

    md, page = write_report(args.run_dirs, args.out)
    print(f"wrote {md} and {page}")
    return 0

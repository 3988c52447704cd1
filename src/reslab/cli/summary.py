"""`reslab summary MODEL`: the paper's Table 1 for one model, per stage and in total."""
from __future__ import annotations

import argparse

from .common import (add_input_option, add_json_option, add_model_options, analyze,
                     model_kwargs, print_json)


def add_parser(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser("summary", help="per-stage table like the paper's Table 1",
                       description="Per stage (stem, layer1.., head): output shape, blocks, "
                                   "block layout, parameters and MACs (multiply-adds of conv "
                                   "and fc layers), and the totals, as in the paper's Table 1.")
    p.add_argument("model", metavar="MODEL", help="architecture name (see `reslab models`)")
    add_input_option(p)
    add_model_options(p)
    add_json_option(p)
    p.set_defaults(func=run)


def run(args: argparse.Namespace) -> int:
    from ..analysis.macs import profile
    from ..analysis.summary import format_shape, render_summary

    summary = analyze(args, profile)
    options = model_kwargs(args)
    if args.json:
        print_json({"model": args.model, "options": options, **summary.to_json()})
        return 0
    title = f"{args.model} at input {format_shape(summary.input_shape)}"
    if options:
        title += " (" + ", ".join(f"{k}={v}" for k, v in options.items()) + ")"
    print(render_summary(summary, title))
    return 0


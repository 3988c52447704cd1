"""`reslab grow CKPT --to MODEL --out CKPT2`: the paper's construction argument (section 1).

The deeper net copies the trained stem, head and blocks, and adds identity blocks, so it computes
the same function; continue training it with `reslab train --model MODEL --weights CKPT2`.
"""
from __future__ import annotations

import argparse
from pathlib import Path

from .common import add_json_option, add_out_option, print_json


def add_parser(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser("grow", help="a deeper net computing exactly the same function "
                       "(the paper's construction argument)", description=__doc__)
    p.add_argument("ckpt", metavar="CKPT", help="run directory or weights file (the shallow net)")
    p.add_argument("--to", required=True, metavar="MODEL", help="deeper architecture, same "
                   "family and block type (e.g. resnet20 -> resnet56, resnet50 -> resnet101)")
    add_out_option(p, "output .safetensors file", metavar="CKPT2", required=True)
    p.add_argument("--shortcut", choices=("A", "B", "C"),
                   help="assert the shortcut option (it must equal the trained net's)")
    p.add_argument("--seed", type=int, default=0, help="the seed of the added blocks' "
                   "He-initialised layers (their last BN is zero either way; default: 0)")
    add_json_option(p, "a JSON summary")
    p.set_defaults(func=run)


def run(args: argparse.Namespace) -> int:
    from ..io import check_writable
    from ..limits import MAX_SEED, check_int
    from ..text import plural
    from ..weights.checkpoint import Checkpoint
    from ..weights.grow import grow_checkpoint

    check_int("--seed", args.seed, 0, MAX_SEED)
    ckpt = Checkpoint(args.ckpt)
    check_writable(args.out, "--out", inputs=[ckpt.path])
    grown = grow_checkpoint(ckpt, args.to, args.out, shortcut=args.shortcut,
                            seed=args.seed)
    summary = {"from": grown.source, "to": grown.target, "out": str(Path(args.out)),
               "copied_blocks": grown.copied_blocks, "added_blocks": grown.added_blocks,
               "max_abs_logit_diff": grown.max_abs_logit_diff}
    if args.json:
        print_json(summary)
    else:
        print(f"grew {grown.source} -> {args.to}: copied "
              f"{plural(grown.copied_blocks, 'block')}, added "
              f"{plural(grown.added_blocks, 'identity block')}; max |logit difference| "
              f"{grown.max_abs_logit_diff:.3g} on random inputs; wrote {args.out}")
    return 0

"""`reslab grow CKPT --to MODEL --out CKPT2`: the paper's construction argument (section 1).

The deeper net copies the trained stem, head and blocks, and adds identity blocks, so it computes
the same function; continue training it with `reslab train --model MODEL --weights CKPT2`.
"""
from __future__ import annotations

import argparse
from pathlib import Path
from typing import TYPE_CHECKING

if TYPE_CHECKING:
    import torch


def add_parser(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser("grow", help="a deeper net computing exactly the same function "
                       "(the paper's construction argument)", description=__doc__)
    p.add_argument("ckpt", metavar="CKPT", help="run directory or weights file (the shallow net)")
    p.add_argument("--to", required=True, metavar="MODEL", help="deeper architecture, same "
                   "family and block type (e.g. resnet20 -> resnet56, resnet50 -> resnet101)")
    p.add_argument("--out", required=True, metavar="CKPT2", help="output .safetensors file")
    p.add_argument("--shortcut", choices=("A", "B", "C"),
                   help="assert the shortcut option (it must equal the trained net's)")
    p.add_argument("--json", action="store_true", help="print a JSON summary on stdout")
    p.set_defaults(func=run)


def max_logit_gap(a: torch.nn.Module, b: torch.nn.Module, input_size: list[int]) -> float:
    """max |a(x) - b(x)| over two random inputs: the promise, checked on the written weights."""
    import torch

    # Fully convolutional: exactness at 256 px or less says the same as at a larger size.
    c, h, w = input_size[0], min(input_size[1], 256), min(input_size[2], 256)
    x = torch.randn(2, c, h, w, generator=torch.Generator().manual_seed(0))
    with torch.no_grad():
        return float((a.eval()(x) - b.eval()(x)).abs().max())


def run(args: argparse.Namespace) -> int:
    from ..checkpoint import load_checkpoint, resolve_ckpt_path
    from ..io import check_writable, regular_file
    from ..models.surgery import grow, infer_arch
    from ..record import save_weights
    from .common import print_json

    check_writable(args.out, "--out", inputs=[resolve_ckpt_path(args.ckpt)])
    model, record = load_checkpoint(args.ckpt)
    source = infer_arch(model).name
    deeper = grow(model, args.to, shortcut=args.shortcut)
    opts = model.block_options
    kwargs = {**record.kwargs, "num_classes": model.num_classes,
              "in_chans": model.conv1.in_channels, "shortcut": opts["shortcut"],
              "stride_in": opts["stride_in"]}
    kwargs.pop("zero_init_residual", None)  # an init option; the weights are given
    grown = record.replace(architecture=args.to, kwargs=kwargs, extra={
        **record.extra, "grown_from": {"architecture": source, "checkpoint": str(args.ckpt)}})
    save_weights(args.out, deeper, grown)
    written, _ = load_checkpoint(regular_file(args.out, "written checkpoint"))
    gap = max_logit_gap(model, written, list(record.preprocess.input_size))
    added = len(deeper.blocks()) - len(model.blocks())
    summary = {"from": source, "to": args.to, "out": str(Path(args.out)),
               "copied_blocks": len(model.blocks()), "added_blocks": added,
               "max_abs_logit_diff": gap}
    if args.json:
        print_json(summary)
    else:
        print(f"grew {source} -> {args.to}: copied {summary['copied_blocks']} blocks, added "
              f"{added} identity blocks; max |logit difference| {gap:.3g} on random inputs; "
              f"wrote {args.out}")
    return 0

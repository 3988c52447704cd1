"""`reslab export CKPT --format onnx|torchscript|pt2 --out FILE`: a deployable file with a
dynamic batch dimension, checked against PyTorch on batches of 1 and 3 (max abs difference)."""
from __future__ import annotations

import argparse
import sys

from ..choices import EXPORT_FORMATS
from .common import add_json_option, add_out_option, print_json


def add_parser(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser("export", help="export to ONNX / TorchScript with a parity check",
                       description=__doc__)
    p.add_argument("ckpt", metavar="CKPT", help="run directory or weights file")
    p.add_argument("--format", default="onnx", choices=EXPORT_FORMATS,
                   help="onnx (onnxruntime-checked), torchscript (torch.jit), or pt2 "
                        "(torch.export); default onnx")
    add_out_option(p, "the file to write, named for its format: model.onnx, model.pt (or "
                   ".torchscript), model.pt2",
                   metavar="FILE", required=True)
    add_json_option(p)
    p.set_defaults(func=run)


def run(args: argparse.Namespace) -> int:
    from ..deploy.export import check_out_suffix, export_model
    from ..io import check_writable
    from ..weights.checkpoint import Checkpoint

    checkpoint = Checkpoint(args.ckpt)
    ckpt = checkpoint.path
    check_writable(args.out, "--out", inputs=[ckpt])
    check_out_suffix(args.out, args.format)  # before the checkpoint is loaded
    model, record = checkpoint.load()
    result = export_model(model, record, args.out, args.format)
    if args.json:
        print_json({"ckpt": str(ckpt), "architecture": record.architecture,
                    **result.to_dict()})
    else:
        size = result.path.stat().st_size / 2**20
        diffs = ", ".join(f"batch {n}: {d:.2e}" for n, d in result.max_abs_diff.items())
        print(f"wrote {result.path}: {ckpt} ({record.architecture}) exported as "
              f"{result.format}, {size:.1f} MiB, dynamic batch")
        print(f"parity vs PyTorch, max abs diff: {diffs} "
              f"({'ok' if result.ok else 'FAILED'}, tolerance {result.tolerance:.1e})")
    if not result.ok:
        print(f"error: {result.path} differs from the PyTorch model beyond fp32 tolerance",
              file=sys.stderr)
        return 1
    return 0

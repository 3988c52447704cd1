"""`reslab predict CKPT IMAGE...`: class names and probabilities for image files of any format
and mode, prepared as the model was trained (input size, channels, mean/std from the
checkpoint)."""
from __future__ import annotations

import argparse


def add_parser(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser("predict", help="classify image files with a checkpoint",
                       description=__doc__)
    p.add_argument("ckpt", metavar="CKPT", help="run directory or weights file")
    p.add_argument("images", metavar="IMAGE", nargs="+", help="image files (PNG, JPEG, ...)")
    p.add_argument("--topk", type=int, default=5, metavar="K",
                   help="classes to show per image (default 5)")
    p.add_argument("--flip", choices=("auto", "on", "off"), default="auto",
                   help="average with the mirrored image: auto (default) as the run's "
                        "evaluation did (its record says), on, off")
    p.add_argument("--batch-size", type=int, default=32)
    p.add_argument("--device", default="auto", help="auto|cpu|cuda|cuda:N|mps")
    p.add_argument("--json", action="store_true", help="one JSON object on stdout")
    p.set_defaults(func=run)


def run(args: argparse.Namespace) -> int:
    from ..checkpoint import load_checkpoint, resolve_ckpt_path
    from ..deploy.predict import format_predictions, predict_files
    from ..engine.setup import select_device
    from ..limits import MAX_BATCH, MAX_CLASSES, check_int
    from .common import print_json

    check_int("--topk", args.topk, 1, MAX_CLASSES)
    check_int("--batch-size", args.batch_size, 1, MAX_BATCH)
    device = select_device(args.device)
    ckpt = resolve_ckpt_path(args.ckpt)
    model, record = load_checkpoint(ckpt, device=device)
    results = predict_files(model, record, args.images, topk=args.topk,
                            batch_size=args.batch_size, device=device,
                            flip={"auto": None, "on": True, "off": False}[args.flip])
    if args.json:
        print_json({"ckpt": str(ckpt), "architecture": record.architecture,
                    "predictions": results})
    else:
        print(format_predictions(results))
    return 0

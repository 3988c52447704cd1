"""`reslab responses CKPT... --data D`: the paper's Fig. 7 (section 4.2).

The std of every 3x3 layer's output after BN and before the addition/ReLU, over the images of a
split; one curve per model, in layer order and sorted. Each CKPT that is a run directory also
gets a responses.json, so `reslab report` shows it.
"""
from __future__ import annotations

import argparse
import json
from pathlib import Path

from .common import (add_batch_size_option, add_data_option, add_device_option, add_json_option,
                     add_out_option, print_json)


def add_parser(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser("responses", help="std of each 3x3 layer's response (paper Fig. 7)",
                       description=__doc__)
    p.add_argument("ckpts", nargs="+", metavar="CKPT", help="run directories or weights files")
    add_data_option(p)
    p.add_argument("--data-dir", help="where the dataset files are")
    p.add_argument("--split", default="test", help="split to measure on (default test)")
    p.add_argument("--max-images", type=int, metavar="N", help="use only the first N images")
    add_batch_size_option(p, 256)
    add_device_option(p)
    add_out_option(p, "write the figure here", metavar="FILE.png")
    add_json_option(p, "{model: [std per layer]}")
    p.set_defaults(func=run)


def run(args: argparse.Namespace) -> int:
    from ..text import plural
    from ..analysis.responses import compute_responses
    from ..io import atomic_write_text, check_writable
    from ..engine.rundir import RunDir
    from ..engine.setup import select_device

    from ..limits import MAX_BATCH, check_int
    from ..weights.checkpoint import Checkpoint

    if args.max_images is not None:
        check_int("--max-images", args.max_images, 1, 10**9)
    check_int("--batch-size", args.batch_size, 1, MAX_BATCH)
    ckpts = [Checkpoint(c) for c in args.ckpts]
    if args.out:
        check_writable(args.out, "--out", inputs=[c.path for c in ckpts])
    responses = compute_responses(ckpts, args.data, data_dir=args.data_dir,
                                  split=args.split, max_images=args.max_images,
                                  batch_size=args.batch_size,
                                  device=str(select_device(args.device)))
    wrote = []
    for ckpt, (label, stds) in zip(args.ckpts, responses.items()):
        if Path(ckpt).is_dir():
            path = RunDir(Path(ckpt)).responses
            atomic_write_text(path, json.dumps({label: stds}) + "\n")
            wrote.append(path)
    if args.out:
        from ..analysis.plots import responses_figure

        responses_figure(responses, args.out, title=f"layer responses on {args.data} "
                         f"{args.split} (Fig. 7)")
    if args.json:
        print_json(responses)
        return 0
    for label, stds in responses.items():
        print(f"{label}: {plural(len(stds), 'layer')}, std mean {sum(stds) / len(stds):.4f}, "
              f"min {min(stds):.4f}, max {max(stds):.4f}")
    for path in [*wrote, *([args.out] if args.out else [])]:
        print(f"wrote {path}")
    return 0

"""`reslab predict CKPT PATH...`: class names and probabilities for image files of any format
and mode, prepared as the model was trained (input size, channels, mean/std from the
checkpoint). A PATH is an image file, a folder (its image files, recursively, sorted) or a glob
pattern in quotes ('photos/**/*.jpg'); --csv FILE also writes one row per image: its path, its
top-k classes and their probabilities. A file that is no readable image is skipped with a
warning (listed under "skipped" in --json); when none can be read, predict fails.

--cam DIR also writes a Grad-CAM heat map per image for its top class, DIR/<image stem>.cam.png:
the crop the model saw with the map over it, titled with the class and its probability
(reslab.deploy.cam). The map comes from the last stage unless --cam-layer names another."""
from __future__ import annotations

import argparse
import sys
from pathlib import Path
from typing import TYPE_CHECKING, Any

from ..errors import UserError, warn
from .common import (add_batch_size_option, add_device_option, add_json_option,
                     add_runtime_option, add_tta_options, print_json, tta_choices)

if TYPE_CHECKING:
    import torch
    from torch import nn

    from ..weights.record import Record


def add_parser(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser("predict", help="classify image files with a checkpoint",
                       description=__doc__)
    p.add_argument("ckpt", metavar="CKPT", help="run directory or weights file")
    p.add_argument("images", metavar="PATH", nargs="+",
                   help="image files (PNG, JPEG, ...), folders of them (recursively) or glob "
                        "patterns (quoted; ** spans folders)")
    p.add_argument("--topk", type=int, default=5, metavar="K",
                   help="classes to show per image (default 5)")
    add_tta_options(p)
    add_batch_size_option(p, 32)
    add_device_option(p)
    p.add_argument("--cam", metavar="DIR", help="write a Grad-CAM heat map per image for its "
                   "top class: DIR/<image stem>.cam.png")
    p.add_argument("--cam-layer", metavar="NAME", help="stage the heat map is taken from: "
                   "layer1..layer4 (ImageNet family), layer1..layer3 (CIFAR); default the last")
    p.add_argument("--csv", metavar="FILE", help="also write the predictions as CSV: file, "
                   "class_1, prob_1, ..., class_K, prob_K per image; - writes it to stdout "
                   "in place of the text")
    add_json_option(p)
    add_runtime_option(p)
    p.set_defaults(func=run)


def run(args: argparse.Namespace) -> int:
    from ..deploy.cam import cam_layer
    from ..io import ensure_dir
    from ..deploy.predict import (Unreadable, classifier, format_predictions, image_paths,
                                  predict_images, predictions_csv)
    from ..deploy.optimize import FirstBatch
    from ..deploy.runtime import check_runtime, runtime_of
    from ..engine.setup import select_device
    from ..io import atomic_write_text, check_writable
    from ..limits import MAX_BATCH, MAX_CLASSES, check_int
    from ..weights.checkpoint import Checkpoint

    # `--csv -` is stdout, as `-` is everywhere: the CSV in place of the text table.
    csv_file = None if args.csv == "-" else args.csv
    if args.csv == "-" and args.json:
        raise UserError("--csv - and --json both write to stdout: give --csv FILE, or one of "
                        "them")
    check_int("--topk", args.topk, 1, MAX_CLASSES)
    check_int("--batch-size", args.batch_size, 1, MAX_BATCH)
    if args.cam_layer is not None and args.cam is None:
        raise UserError("--cam-layer chooses the layer of the --cam heat maps: give --cam DIR")
    if args.cam is not None:
        ensure_dir(args.cam, "--cam directory")
    paths = image_paths(args.images)
    device = select_device(args.device)
    runtime = check_runtime(args.runtime, device)
    ckpt = Checkpoint(args.ckpt)
    if csv_file is not None:  # never over an image or the weights it reads
        check_writable(csv_file, "--csv", inputs=[*paths, ckpt.path])
    model, record = ckpt.load(device)
    layer = cam_layer(model, args.cam_layer) if args.cam is not None else None
    fast = FirstBatch(model, runtime, compile=False)
    forward = classifier(fast, record, **tta_choices(args))
    skipped: list[Unreadable] = []
    results = predict_images(forward, record, paths, topk=args.topk,
                             batch_size=args.batch_size, device=device, skipped=skipped)
    if not results:  # every file unreadable: nothing to show
        first = skipped[0].reason
        raise UserError(first if len(skipped) == 1 else
                        f"none of the {len(skipped)} image files could be read: {first}")
    for bad in skipped:  # one line each, as training names the files it skips
        warn(f"{bad.reason} (skipped)")
    if args.runtime == "auto":
        print(fast.describe(), file=sys.stderr)
    if args.cam is not None:
        write_cams(model, record, results, layer, args.cam, args.batch_size, device)
    if csv_file is not None:
        atomic_write_text(csv_file, predictions_csv(results), "--csv")
    if args.json:
        print_json({"ckpt": str(ckpt.path), "architecture": record.architecture,
                    "runtime": runtime_of(fast.fast), "predictions": results,
                    **({"skipped": [bad.file for bad in skipped]} if skipped else {})})
    elif args.csv == "-":
        sys.stdout.write(predictions_csv(results))
    else:
        print(format_predictions(results))
    if csv_file is not None:
        print(f"wrote {csv_file}", file=sys.stderr)
    return 0


def write_cams(model: nn.Module, record: Record, results: list[dict[str, Any]], layer: str,
               out_dir: str | Path, batch_size: int, device: torch.device) -> None:
    """One Grad-CAM figure per prediction, for its top class (the class and probability
    `predict` reports, with its flip averaging); the figure's path goes into the result."""
    from ..analysis.plots import cam_figure
    from ..deploy.cam import cam_files, cam_paths

    files = [r["file"] for r in results]
    tops = [r["top"][0] for r in results]
    maps = cam_files(model, record, files, [t["index"] for t in tops], layer,
                     batch_size=batch_size, device=device)
    for r, top, path, (image, heat) in zip(results, tops, cam_paths(files, out_dir), maps):
        cam_figure(image, heat, path, f"{top['class']} {top['prob']:.1%} "
                                      f"(Grad-CAM at {layer}) - {Path(r['file']).name}")
        r["cam"] = str(path)

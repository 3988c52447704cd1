"""`reslab eval CKPT --data D`: top-1/top-5 accuracy and loss of a trained model on a split."""
from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path
from typing import TYPE_CHECKING, Any

from ..errors import UserError
from .common import (add_batch_size_option, add_data_option, add_device_option,
                     add_json_option, add_runtime_option, add_tta_options, tta_choices)

if TYPE_CHECKING:
    from ..engine.checkpoint_eval import Evaluation
    from ..weights.checkpoint import Checkpoint


def add_parser(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser("eval", help="top-1/top-5 accuracy and loss of a checkpoint",
                       description=__doc__)
    p.add_argument("ckpt", metavar="CKPT", help="run directory or weights file")
    add_data_option(p, "the one the run was trained on")
    p.add_argument("--data-dir", help="where the dataset files are (default: where the run "
                   "found them, else the system copy or download cache)")
    p.add_argument("--split", default="test", choices=("test", "val", "train"),
                   help="split to score (default test; val: the run's own hold-out)")
    p.add_argument("--crops", type=int, default=1, choices=(1, 10),
                   help="1: centre; 10: four corners, centre and their flips (paper 3.4)")
    p.add_argument("--scales", help="comma-separated shorter sides, e.g. 224,256,384,480,640: "
                   "the paper's fully-convolutional multi-scale test, scores averaged")
    add_tta_options(p)
    add_batch_size_option(p, 256)
    add_device_option(p)
    p.add_argument("--confusion", metavar="FILE.png",
                   help="also write the confusion matrix (centre view) as a PNG")
    p.add_argument("--top-losses", nargs=2, metavar=("N", "FILE.png"),
                   help="also draw the N images of largest loss (centre view), each titled "
                        "with its true and predicted class and their probabilities")
    add_json_option(p)
    add_runtime_option(p)
    p.set_defaults(func=run)


def run(args: argparse.Namespace) -> int:
    from ..engine.checkpoint_eval import evaluate_checkpoint
    from ..io import check_writable
    from ..text import plural
    from ..weights.checkpoint import Checkpoint

    scales = _parse_scales(args.scales) if args.scales else None
    if args.confusion and (scales or args.crops == 10):
        raise UserError("--confusion is computed on the centre view: drop --crops 10/--scales, "
                        "or evaluate twice")
    ckpt = Checkpoint(args.ckpt)  # resolved on first use, once for every use below
    if args.confusion:
        check_writable(args.confusion, "--confusion", inputs=[ckpt.path])
    worst = _top_losses_option(args.top_losses, bool(scales or args.crops == 10), ckpt)
    result = evaluate_checkpoint(ckpt, data=args.data, data_dir=args.data_dir,
                                 split=args.split, crops=args.crops, scales=scales,
                                 **tta_choices(args),
                                 batch_size=args.batch_size, device=args.device,
                                 runtime=_runtime(args, scales),
                                 top_losses=worst[0] if worst else 0)
    if args.runtime == "auto":
        print(result.runtime_note, file=sys.stderr)
    wrote = []
    if args.confusion:
        from ..analysis.plots import plot_confusion

        plot_confusion(result.confusion, result.class_names, args.confusion,
                       title=f"{Path(args.ckpt).name} on {result.data} {result.split} "
                       f"(top-1 {100 * result.top1:.2f}%)")
        wrote.append(str(args.confusion))
    if worst:
        _plot_top_losses(result, args.ckpt, worst[1])
    if args.json:
        out = result.to_json()
        if len(result.per_class or ()) > MAX_TABLE:
            del out["confusion"]  # 1000 x 1000 counts are a file's job (--confusion), not stdout's
        if wrote:
            out["wrote"] = wrote
        print(json.dumps(out))
    else:
        view = ("multi-scale " + ",".join(map(str, scales)) if scales
                else "10-crop with mirrored views" if args.crops == 10
                else "centre view" + " + flip" * result.flip
                + " + 1 px translations" * result.translate)
        # With 5 classes or fewer every label is among the top 5: top-5 says nothing.
        top5 = f"top5 {result.top5:.4f}  " if result.num_classes > 5 else ""
        print(f"{Path(args.ckpt)} on {result.data} {result.split} (n={result.n}, "
              f"{view}): top1 {result.top1:.4f}  {top5}loss {result.loss:.4f}")
        if result.balanced is not None:
            print(f"balanced accuracy (mean per-class recall) {result.balanced:.4f}  "
                  f"macro-F1 {result.macro_f1:.4f}")
        rows = result.per_class or ()
        if 0 < len(rows) <= MAX_TABLE:
            from ..text import format_table

            print(format_table([r.to_json() for r in rows], PER_CLASS))
        elif rows:
            print(f"({plural(len(rows), 'class')}: --json has the per-class metrics)")
        for path in wrote:
            print(f"wrote {path}")
    if worst:
        print(f"wrote {worst[1]} (the {len(result.top_losses)} images of largest loss)",
              file=sys.stderr)
    return 0


def _top_losses_option(value: list[str] | None, multi_view: bool,
                       ckpt: Checkpoint) -> tuple[int, str] | None:
    """--top-losses N FILE.png checked: (N, FILE)."""
    from ..io import check_writable
    from ..limits import check_int

    if value is None:
        return None
    if multi_view:
        raise UserError("--top-losses is computed on the centre view: drop --crops 10/--scales, "
                        "or evaluate twice")
    try:
        n = int(value[0])
    except ValueError:
        raise UserError(f"invalid --top-losses N '{value[0]}': expected a number of images, "
                        "e.g. --top-losses 16 worst.png") from None
    check_int("--top-losses N", n, 1, MAX_TOP_LOSSES)
    return n, str(check_writable(value[1], "--top-losses", inputs=[ckpt.path]))


def _plot_top_losses(result: Evaluation, ckpt: str, path: str) -> None:
    """Draws the examples of largest loss, each titled with its classes and their
    probabilities."""
    from ..analysis.plots import image_grid_figure

    names = result.class_names
    items = result.top_losses
    image_grid_figure([t.image for t in items],
                      [f"true {names[t.label]} ({t.label_prob:.1%})\n"
                       f"pred {names[t.predicted]} ({t.prob:.1%})\nloss {t.loss:.2f}"
                       for t in items], path,
                      f"largest losses: {Path(ckpt).name} on {result.data} {result.split}")


MAX_TOP_LOSSES = 400  # images in one figure
MAX_TABLE = 100  # classes shown as a table; more (ImageNet's 1000) only in --json
PER_CLASS = (("class", "class", ""), ("precision", "precision", ".3f"),
             ("recall", "recall", ".3f"), ("f1", "f1", ".3f"), ("support", "support", "d"))


def _parse_scales(text: str) -> list[int]:
    try:
        scales = [int(s) for s in text.split(",") if s.strip()]
    except ValueError:
        scales = []
    if not scales or min(scales) < 1:
        raise ValueError(f"invalid --scales '{text}': expected sizes like 224,256,384")
    return scales


def _runtime(args: argparse.Namespace, scales: list[int] | None) -> Any:
    """The wrapper evaluate_checkpoint applies for --runtime (None: the model as loaded)."""
    if args.runtime is None:
        return None
    from ..deploy.optimize import first_batch_runtime
    from ..engine.setup import select_device

    return first_batch_runtime(args.runtime, select_device(args.device),
                               multiscale=bool(scales))

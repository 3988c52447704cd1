"""`reslab lr-find --data D --out FILE.png`: the learning-rate range test (Smith 2017;
fastai's and Lightning's lr_find). Trains briefly with the recipe's optimizer while the lr grows
geometrically from --start-lr to --end-lr over --iters steps (default: 8 epochs of the
training set, 30 to 100; fewer when --max-seconds would be exceeded), stops when the smoothed
loss exceeds 4x its minimum, and suggests the lr where the smoothed loss falls fastest on its
way down to its lowest point (steepest descent against log lr, fitted over half a decade;
reslab.engine.lr_find states the rule). Writes the plot of loss against lr; the trained
weights are thrown away and no run directory is written. The other recipe fields are flags,
as for `reslab train` (default recipe: fast), --model among them: without it the sweep trains
the recipe's model.
"""
from __future__ import annotations

import argparse
from pathlib import Path
from typing import Any

from ..errors import UserError, warn
from ..text import plural
from .common import (add_data_option, add_json_option, add_out_option, add_recipe_flags,
                     print_json, recipe_overrides)

# Fields the sweep sets or has no use for: its own length and lrs, the schedule, evaluation,
# checkpoints, EMA weights, compilation, progressive resizing, the training tricks. --data is a
# required flag of its own: the lr it finds is for the data the user names.
NOT_FLAGS = ("data", "epochs", "iters", "lr", "schedule", "milestones", "gamma",
             "warmup_iters", "warmup_lr", "warmup_until_error", "plateau_patience", "ema",
             "tta_flip", "tta_translate", "save_every", "eval_every", "tensorboard", "compile",
             "progressive_from", "progressive_until",
             # training tricks the sweep does not apply (it runs its own plain steps; the data
             # is training's, auto_augment included: engine.lr_find)
             "early_stopping", "mixup", "cutmix", "accumulate", "clip_grad_norm",
             # the sweep's plain steps draw the images as they come and score no validation
             "balance", "monitor")


def add_parser(sub: argparse._SubParsersAction) -> None:
    parser = sub.add_parser("lr-find", help="learning-rate range test: plot loss against lr, "
                            "suggest an lr", description=__doc__)
    add_data_option(parser)
    parser.add_argument("--recipe", default="fast", help="recipe name or TOML file (default "
                        "fast): optimizer, batch size, weight decay, augmentation, ...")
    parser.add_argument("--start-lr", type=float, default=1e-6, metavar="LR",
                        help="first lr of the sweep (default 1e-6)")
    parser.add_argument("--end-lr", type=float, default=10.0, metavar="LR",
                        help="last lr of the sweep (default 10, the most reslab allows)")
    parser.add_argument("--iters", type=int, metavar="N",
                        help="steps of the sweep, 10..10000 (default: 8 epochs of the training "
                             "set, at least 30, at most 100)")
    parser.add_argument("--max-seconds", type=float, default=60.0, metavar="S",
                        help="time bound: after 3 steps the rest of the sweep is re-planned "
                             "with fewer steps (at least 20) when it would take longer (default "
                             "60; 0: no bound)")
    add_out_option(parser, "the plot", metavar="FILE.png", required=True)
    parser.add_argument("--quiet", action="store_true", help="no progress output")
    add_json_option(parser)
    add_recipe_flags(parser, lambda a: a.recipe or "fast", skip=NOT_FLAGS)
    parser.set_defaults(func=run)


def run(args: argparse.Namespace) -> int:
    from ..analysis.plots import lr_find_figure
    from ..engine.lr_find import MAX_SECONDS, check_sweep, lr_find
    from ..limits import check_float
    from ..engine.recipe import load_recipe
    from ..io import check_writable

    check_sweep(args.start_lr, args.end_lr, args.iters)
    check_float("--max-seconds", args.max_seconds, 0.0, MAX_SECONDS)
    if Path(args.out).is_dir():
        raise UserError(f"--out {args.out} is a directory: give the plot's file name")
    check_writable(args.out, "--out")
    overrides = recipe_overrides(args, skip=NOT_FLAGS)
    recipe = load_recipe(args.recipe, {**overrides, "data": args.data})
    result = lr_find(recipe, start_lr=args.start_lr, end_lr=args.end_lr, iters=args.iters,
                     max_seconds=args.max_seconds, quiet=args.quiet)
    lr_find_figure(result, args.out)
    if result["suggestion"] is None:
        warn(f"no suggestion: the sweep stopped after {result['steps']} of {result['iters']} "
             "steps, too few to find a slope (lower --start-lr or --end-lr, or raise --iters)")
    if args.json:
        print_json({**result, "out": str(args.out)})
    else:
        print(_summary(result, args.out))
    return 0


def _summary(result: dict[str, Any], out: str) -> str:
    why = {"diverged": "the smoothed loss passed 4x its minimum",
           "non-finite loss": "the loss was not finite"}
    stop = (f", stopped at lr {result['stop_lr']:.3g}: {why[result['stopped']]}"
            if result["stopped"] else "")
    bound = (f" (re-planned to fit --max-seconds {result['max_seconds']:g})"
             if result["time_bounded"] else "")
    lines = [f"{result['model']} on {result['data']}: {result['steps']} of "
             f"{plural(result['iters'], 'step')}{bound} in {result['wall_s']:.1f} s, lr "
             f"{result['start_lr']:.3g} to {result['lrs'][-1]:.3g}{stop}"
             if result["lrs"] else f"no step completed{stop}"]
    if result["suggestion"] is not None:
        lines.append(f"suggested lr: {result['suggestion']:.3g} (steepest descent of the "
                     "smoothed loss on its way down)")
    if result["min_loss_lr"] is not None:
        lines.append(f"lowest smoothed loss at lr {result['min_loss_lr']:.3g}")
    lines.append(f"wrote {out}")
    return "\n".join(lines)

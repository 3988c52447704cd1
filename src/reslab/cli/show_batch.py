"""`reslab show-batch --out FILE.png`: a grid of the first training images of a recipe as the
training loop sees them (fastai's show_batch): augmented (crop, flip, --auto-augment, --erase,
progressive resizing at the first step, --mixup/--cutmix), de-normalised, each titled with its
label (mixed targets: the two classes and their weights). The recipe and its flags are those of
`reslab train` (default recipe: fast with --model/--data, else demo); nothing is trained."""
from __future__ import annotations

import argparse
import sys

from ..errors import UserError
from .common import add_out_option, add_recipe_flags
from .train import recipe_in_use

MAX_SHOWN = 256  # images in one figure


def add_parser(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser("show-batch", help="draw augmented training images with their labels",
                       description=__doc__)
    p.add_argument("--recipe", help="recipe name or TOML file, as for train")
    add_out_option(p, "the figure", metavar="FILE.png", required=True)
    p.add_argument("--n", type=int, default=16, metavar="N",
                   help=f"images to draw, 1..{MAX_SHOWN} (default 16)")
    add_recipe_flags(p, recipe_in_use)  # the recipe train would use
    p.set_defaults(func=run, quiet=False, json=False)


def run(args: argparse.Namespace) -> int:
    from ..analysis.plots import image_grid_figure
    from ..analysis.show_batch import training_images
    from ..io import check_writable
    from .train import resolve

    if not 1 <= args.n <= MAX_SHOWN:
        raise UserError(f"invalid --n {args.n}: must be between 1 and {MAX_SHOWN}")
    check_writable(args.out, "--out")
    recipe = resolve(args)
    shown = training_images(recipe, args.n)
    for line in shown.messages:
        print(line, file=sys.stderr)
    tricks = [f"{k} {v:g}" if isinstance(v, float) else f"{k} {v}"
              for k, v in (("augment", recipe.augment), ("auto_augment", recipe.auto_augment),
                           ("erase", recipe.erase), ("mixup", recipe.mixup),
                           ("cutmix", recipe.cutmix)) if v not in ("none", 0.0)]
    image_grid_figure(shown.images, shown.titles, args.out,
                      f"{recipe.data}: first training images at {shown.side} px "
                      f"({', '.join(tricks) or 'no augmentation'})")
    print(f"wrote {args.out} ({len(shown.images)} training images)", file=sys.stderr)
    return 0

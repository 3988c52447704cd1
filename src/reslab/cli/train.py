"""`reslab train`: every recipe field is a flag (--batch-size, --lr, ...); the recipe file gives
the defaults. Without --model/--data it runs the demo (resnet20 on digits)."""
from __future__ import annotations

import argparse
import sys
import time
from pathlib import Path

from ..engine.recipe import Recipe, load_recipe, recipe_names
from ..engine.rundir import RunDir, check_resume
from ..errors import UserError
from ..text import plural
from .common import add_json_option, add_out_option, add_recipe_flags, recipe_overrides


def add_parser(sub: argparse._SubParsersAction) -> None:
    parser = sub.add_parser("train", help="train a ResNet; writes a run directory",
                            description=__doc__)
    parser.add_argument("--recipe", help="recipe name (configs/: " + ", ".join(recipe_names())
                        + ") or a TOML file; default: demo without --model/--data, else fast")
    add_out_option(parser, "run directory (default runs/MODEL-DATA-TIME)")
    parser.add_argument("--resume", action="store_true", help="continue the run in --out")
    parser.add_argument("--overwrite", action="store_true",
                        help="--out already holds a run: delete its files and start afresh")
    parser.add_argument("--quiet", action="store_true", help="no progress output")
    add_json_option(parser, "a final JSON summary")
    add_recipe_flags(parser, recipe_in_use)
    parser.set_defaults(func=run)


def recipe_in_use(args: argparse.Namespace) -> str:
    """--recipe, else the demo without --model/--data, else fast."""
    return args.recipe or ("fast" if args.model or args.data else "demo")


def resolve(args: argparse.Namespace) -> Recipe:
    overrides = recipe_overrides(args)
    name = recipe_in_use(args)
    recipe = load_recipe(name, overrides)
    notes = []
    if not args.data and name != "demo":
        notes.append(f"note: no --data given: training on {recipe.data}, the dataset of recipe "
                     f"{name}")
    if not args.quiet and not getattr(args, "json", False):
        for note in notes:
            print(note, file=sys.stderr)
    return recipe


def resume_machinery(args: argparse.Namespace) -> Recipe | None:
    """The stored recipe of --out with the machinery flags given (None: none given, or no run
    there for the claim to name); a recipe flag is an error, as the resume would ignore it."""
    given = {k: v for k, v in recipe_overrides(args).items() if v is not None}
    check_resume(given, recipe_named=bool(args.recipe))
    run = RunDir(Path(args.out))
    return load_recipe(str(run.config), given) if given and run.started() else None


def run(args: argparse.Namespace) -> int:
    from .. import train
    from ..engine.state import Interrupted

    if args.resume and args.overwrite:
        raise UserError("--resume continues the run in --out and --overwrite deletes it: "
                        "give one of them")
    if args.resume:
        if not args.out:
            raise UserError("--resume needs --out DIR (the run to continue)")
        recipe = resume_machinery(args)
    else:
        recipe = resolve(args)
    out = Path(args.out) if args.out else Path("runs") / (
        f"{recipe.model}-{recipe.data.replace(':', '_').replace('/', '_')}-"
        f"{time.strftime('%Y%m%d-%H%M%S')}")
    try:
        result = train(recipe, out, resume=args.resume, overwrite=args.overwrite,
                       quiet=args.quiet)
    except Interrupted as e:
        print(f"stopped by {e.signame} at step {e.step}; state saved. Continue with: "
              f"reslab train --resume --out {e.out}", file=sys.stderr)
        return e.exit_code
    if args.json:
        print(result.to_json(indent=None))
    elif not args.quiet:
        score = (f"test top1 {result.test['top1']:.4f}" if result.test else
                 "not evaluated (no validation or test images)")
        print(f"done: {plural(result.steps, 'iteration')} in {result.train_seconds:.1f} s; "
              f"{score}; run directory {out}", file=sys.stderr)
    return 0

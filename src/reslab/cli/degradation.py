"""`reslab degradation --data D --depths 20 32 44 56 --out DIR`: the paper's Fig. 1 and Fig. 6.

Trains plainN and resnetN for every depth with the same recipe and budget (each a run directory
DIR/<model>/), then writes DIR/degradation.json and DIR/degradation.png. Run the same command
again to skip finished runs and resume interrupted ones. Every recipe field is a flag, as for
`reslab train`; the default recipe is paper-cifar (section 4.2: 64k iterations, so give
--iters or --epochs for a shorter budget).
"""
from __future__ import annotations

import argparse
import sys
from pathlib import Path

from .common import (add_data_option, add_json_option, add_out_option, add_recipe_flags,
                     recipe_overrides)

# The sweep sets the model (and trains each from scratch); --data is its own required flag.
NOT_FLAGS = ("model", "data", "weights")


def add_parser(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser("degradation", help="plain vs residual nets of several depths, same "
                       "recipe and budget (paper Fig. 6)", description=__doc__)
    add_data_option(p)
    p.add_argument("--depths", type=int, nargs="+", required=True, metavar="N",
                   help="CIFAR-family depths 6n+2: 20 32 44 56 110 1202")
    add_out_option(p, "sweep directory", metavar="DIR", required=True)
    p.add_argument("--recipe", default="paper-cifar", help="recipe name or TOML file "
                   "(default paper-cifar)")
    p.add_argument("--seeds", type=int, nargs="+", metavar="S",
                   help="repeat the runs with these seeds and report the spread (default: the "
                        "recipe's seed only); further seeds' runs are DIR/<model>-seed<S>/")
    p.add_argument("--seeds-depths", type=int, nargs="+", metavar="N",
                   help="repeat only these depths with all --seeds (default: every depth)")
    p.add_argument("--jobs", type=int, default=1, metavar="N",
                   help="train N members at a time, each a process with CPUs/N threads "
                        "(default 1: one after another)")
    p.add_argument("--quiet", action="store_true", help="no progress output")
    add_json_option(p, "degradation.json")
    add_recipe_flags(p, lambda a: a.recipe or "paper-cifar", skip=NOT_FLAGS)
    p.set_defaults(func=run)


def run(args: argparse.Namespace) -> int:
    from ..analysis.degradation import run_degradation
    from ..analysis.report import results_table
    from ..engine.recipe import coerce, load_recipe, shorten
    from ..engine.rundir import RunDir
    from ..engine.state import Interrupted
    from ..limits import MAX_SEED, check_int
    from .common import print_json

    overrides = recipe_overrides(args, skip=NOT_FLAGS)

    def say(msg: str) -> None:
        if not args.quiet:
            print(msg, file=sys.stderr, flush=True)

    iters, milestones = overrides.pop("iters"), overrides.pop("milestones")
    recipe = load_recipe(args.recipe, {**overrides, "data": args.data,
                                       "milestones": milestones})
    line = ""
    if iters is not None:  # a shorter sweep keeps the schedule's shape: the lr still drops
        recipe, line = shorten(recipe, coerce({"iters": iters}).iters,
                               recipe.milestones if milestones is not None else None)

    try:
        result = run_degradation(args.data, args.depths, Path(args.out), recipe,
                                 quiet=args.quiet, say=say,
                                 jobs=check_int("--jobs", args.jobs, 1, 64),
                                 seeds=[check_int("--seeds", s, 0, MAX_SEED)
                                        for s in args.seeds or []] or None,
                                 seeds_depths=args.seeds_depths, notes=[line] if line else [])
    except Interrupted as e:
        print(f"stopped by {e.signame} at step {e.step}; state saved. Run the same command "
              "again to continue", file=sys.stderr)
        return e.exit_code
    if args.json:
        print_json(result.to_json())
        return 0
    print(f"{'model':<12}{'seed':>5}{'depth':>6}{'train err %':>13}{'test err %':>12}")
    for model, seed, depth, train, test in results_table(result):
        print(f"{model:<12}{seed:>5}{depth:>6}{train:>13}{test:>12}")
    from ..analysis.claims import paper_claims

    print(f"budget: {'-' if result.budget is None else result.budget}")
    for c in paper_claims(result):
        print(f"{c.verdict:>14}: {c.text} ({c.evidence})")
    sweep = RunDir(Path(args.out))
    print(f"wrote {sweep.degradation} and {sweep.degradation_png.name}")
    return 0

"""What each trick of a recipe is worth: the recipe whole, then with each trick removed in turn,
or each of airbench94's techniques added on its own (and all of them together), over seeds;
time to a target accuracy, final accuracy and throughput, judged separately.

    python benchmarks/ablation.py [--recipe fast] [--variants whole no-tta ...] [--seeds 0 1 2]
    python benchmarks/ablation.py --variants whole --seeds 0 1 2     # the recipe over seeds
    python benchmarks/ablation.py --variants airbench --seeds 0 1 2  # a group: whole + +X ...
    python benchmarks/ablation.py --list                            # the variants and flags

airbench94's techniques (Jordan 2024, arXiv 2404.00498; the recipe fields say what each does)
are measured one at a time on top of the recipe, the way its paper's ablation adds them, and
all together ("+airbench-all"): their value comes together, so the sum of the single gains is
not the whole. They need an idle machine and about 9 runs of the recipe per seed.

Each (variant, seed) is one whole `python -m reslab train --recipe R --seed S FLAGS` process
(see time_to_accuracy.py for what time_s counts). Per variant: mean and min of the final test
top-1, the time to --target (mean over the seeds that reached it, and how many did), median
training img/s, whole-process seconds. The machine must be otherwise idle: a timing taken while
another job runs is not a measurement (the load average is recorded). Writes
docs/results/time-to-accuracy-RECIPE-ablation.json after every run, so an interrupted study
keeps its rows.
"""
from __future__ import annotations

import argparse
import os
import shlex
import statistics
import tempfile
from pathlib import Path
from typing import Any

from common import PYTHON, RESULTS, add_threads_option, prepare, print_table, run_timed, \
    save_results
from time_to_accuracy import read_metrics, run_config, time_to_accuracy

# Each trick of the `fast` recipe and the flags that remove it (the recipe's fields).
VARIANTS = {
    "whole": "",
    "no-progressive": "--progressive-from 1",     # native-size images from the start
    "resnet20": "--model resnet20",               # the paper's shallowest CIFAR net instead
    "eval-every-epoch": "--eval-every 1",
    "no-label-smoothing": "--label-smoothing 0",
    "no-tta": "--tta-flip false",
    "no-nesterov": "--nesterov false",
    "cosine-schedule": "--schedule cosine",
    "no-channels-last": "--channels-last false",
    "fp32": "--amp off",
    "batch-128": "--batch-size 128 --lr 0.2",     # twice the steps: muon's costs per image double
    # the recipe before Muon: SGD for the filters too, at batch 128 for 17 epochs
    "sgd": "--optimizer sgd --batch-size 128 --lr 0.2 --epochs 17",
}
# airbench94's techniques, each added alone, then all together (its values where they carry
# over: BN biases at 64x the lr, lookahead every 5 steps with decay 0.95 and BN momentum 0.6 in
# its convention, 0.4 in torch's).
AIRBENCH = {
    "+whiten-stem": "--whiten-stem true",
    "+dirac-init": "--dirac-init true",
    "+bn-bias-lr": "--bn-bias-lr 64",
    "+lookahead": "--ema 0.95 --ema-every 5 --lookahead true --bn-momentum 0.4",
    "+tta-translate": "--tta-translate true",
    "+flip-alternate": "--flip-alternate true",
}
AIRBENCH["+airbench-all"] = " ".join(AIRBENCH.values())
VARIANTS |= AIRBENCH
# --variants GROUP: the recipe as it is and the group's variants
GROUPS = {"removals": [v for v in VARIANTS if v not in AIRBENCH],
          "airbench": ["whole", *AIRBENCH]}

COLUMNS = (("variant", "variant", ""), ("seeds", "seeds", "d"),
           ("top1_mean", "final top1 mean", ".4f"), ("top1_min", "min", ".4f"),
           ("reached", "reached target", ""), ("time_mean", "time to target s", ".1f"),
           ("img_s", "train img/s (run mean)", ".0f"), ("wall_mean", "whole process s", ".1f"))


def parse_args() -> argparse.Namespace:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--recipe", default="fast")
    p.add_argument("--variants", nargs="+", default=list(VARIANTS), metavar="NAME",
                   help=f"variants or groups ({', '.join(GROUPS)}); default: all")
    p.add_argument("--flags", action="append", default=[], metavar="NAME=FLAGS",
                   help="an extra variant, e.g. --flags 'ema=--ema 0.999' (repeatable)")
    p.add_argument("--seeds", nargs="+", type=int, default=[0])
    p.add_argument("--target", type=float, default=0.94)
    p.add_argument("--train-args", default="", help="flags added to every run")
    p.add_argument("--quick", action="store_true", help="validation: --iters 30 each")
    p.add_argument("--list", action="store_true", help="print the variants and exit")
    add_threads_option(p)
    p.add_argument("--keep", type=Path, metavar="DIR",
                   help="keep each run as DIR/VARIANT-sSEED (default: temporary directories)")
    p.add_argument("--out", type=Path)
    return p.parse_args()


def one_run(recipe: str, flags: str, seed: int, target: float, quick: bool,
            keep: Path | None = None) -> dict[str, Any]:
    with tempfile.TemporaryDirectory(prefix="bench-ablation-") as tmp:
        out = keep or Path(tmp) / "run"
        cmd = [PYTHON, "-m", "reslab", "train", "--recipe", recipe, "--seed", str(seed),
               "--out", str(out), "--overwrite", "--quiet", "--json", *shlex.split(flags)]
        if quick:
            cmd += ["--iters", "30"]
        print("running: " + " ".join(cmd[1:]), flush=True)
        wall, _ = run_timed(cmd)
        rows = read_metrics(out)
        config = run_config(out)
    result = time_to_accuracy(rows, [target])
    hit = result["targets"][0]
    # The last row's img_s: images over training seconds since the start, evaluations included
    # (a median would favour the cheap early steps of progressive resizing).
    speeds = [r["img_s"] for r in rows if "img_s" in r and "split" not in r]
    return {"seed": seed, "flags": flags, "wall_s": round(wall, 2),
            "final_top1": result["final_test_top1"], "reached": hit["reached"] == "yes",
            "time_to_target_s": hit.get("time_s") if hit["reached"] == "yes" else None,
            "img_s": speeds[-1] if speeds else None,
            "training_s": result["training_s"], "epochs": config.get("epochs"),
            "load_avg_1min_after": round(os.getloadavg()[0], 2),
            "curve": result["curve"]}


def summarize(name: str, runs: list[dict[str, Any]]) -> dict[str, Any]:
    top1 = [r["final_top1"] for r in runs if r["final_top1"] is not None]
    times = [r["time_to_target_s"] for r in runs if r["reached"]]
    speeds = [r["img_s"] for r in runs if r["img_s"]]
    return {"variant": name, "seeds": len(runs),
            "top1_mean": statistics.mean(top1) if top1 else None,
            "top1_min": min(top1) if top1 else None,
            "reached": f"{len(times)} of {len(runs)}",
            "time_mean": statistics.mean(times) if times else None,
            "img_s": speeds[-1] if speeds else None,
            "wall_mean": statistics.mean(r["wall_s"] for r in runs)}


def main() -> None:
    args = parse_args()
    variants = dict(VARIANTS)
    for spec in args.flags:
        name, _, flags = spec.partition("=")
        variants[name] = flags
    if args.list:
        for name, flags in variants.items():
            print(f"{name:20s} {flags or '(the recipe as it is)'}")
        return
    args.variants = list(dict.fromkeys(
        name for v in args.variants for name in GROUPS.get(v, [v])))
    unknown = [v for v in args.variants if v not in variants]
    if unknown:
        raise SystemExit(f"error: unknown variants {unknown} (see --list)")
    prepare(args)
    out = args.out or RESULTS / f"time-to-accuracy-{Path(args.recipe).stem}-ablation.json"
    runs: dict[str, list[dict[str, Any]]] = {}
    for seed in args.seeds:  # seeds outermost: a cut-short study has every variant once
        for name in args.variants:
            flags = " ".join(filter(None, [args.train_args, variants[name]]))
            runs.setdefault(name, []).append(
                one_run(args.recipe, flags, seed, args.target, args.quick,
                        args.keep / f"{name}-s{seed}" if args.keep else None))
            rows = [summarize(n, rs) for n, rs in runs.items()]
            save_results("ablation", {"recipe": args.recipe, "target": args.target,
                                      "seeds": args.seeds, "train_args": args.train_args,
                                      "quick": args.quick, "variants": {
                                          n: variants[n] for n in args.variants}},
                         rows, out=out, runs=runs)
    print_table(f"Ablation of `{args.recipe}` (target {args.target:.2%}, seeds "
                f"{' '.join(map(str, args.seeds))})", rows, COLUMNS)


if __name__ == "__main__":
    main()

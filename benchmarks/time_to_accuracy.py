"""Time to accuracy: how long `reslab train` takes to reach 94% and 95% test top-1 on
Fashion-MNIST (the `fast` recipe by default).

    python benchmarks/time_to_accuracy.py [--recipe fast] [--targets 0.94 0.95] [--quick]
    python benchmarks/time_to_accuracy.py --from-run runs/fmnist-fast   # analyse only

Runs `python -m reslab train --recipe R --out DIR --quiet --json` and reads DIR/metrics.jsonl:
each evaluation row carries `time_s` (training seconds since the start, evaluations included,
start-up and data loading excluded) and `top1`. Reports, per target, the first evaluation that
reached it (seconds, epoch) or "not reached" with the best value, plus the whole-process wall
time. Prints a table and writes docs/results/time-to-accuracy.json. The default run is the whole
recipe (9 epochs of 60,000 images: about 4 minutes on an idle 2-core machine).
"""
from __future__ import annotations

import argparse
import json
import shlex
import tempfile
from pathlib import Path
from typing import Any

from common import (PYTHON, RESULTS, add_threads_option, prepare, print_table, run_timed,
                    save_results)

COLUMNS = (("target", "target top1", ".2f"), ("reached", "reached", ""),
           ("time_s", "training s", ".1f"), ("epoch", "epoch", ".2f"), ("step", "step", "d"),
           ("top1", "top1 then", ".4f"))


def parse_args() -> argparse.Namespace:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--recipe", default="fast")
    p.add_argument("--targets", nargs="+", type=float, default=[0.94, 0.95])
    p.add_argument("--train-args", default="",
                   help="extra `reslab train` flags, e.g. --train-args='--epochs 6'")
    p.add_argument("--quick", action="store_true",
                   help="validation: --iters 60 (one evaluation, at the end)")
    p.add_argument("--from-run", type=Path, metavar="DIR",
                   help="only analyse an existing run directory (training or finished)")
    p.add_argument("--keep", type=Path, metavar="DIR",
                   help="train into DIR and keep it (default: a temporary directory)")
    add_threads_option(p)
    p.add_argument("--out", type=Path, default=RESULTS / "time-to-accuracy.json")
    return p.parse_args()


def read_metrics(run_dir: Path) -> list[dict[str, Any]]:
    """The rows of run_dir/metrics.jsonl; a half-written last line (a run still going) is
    skipped."""
    path = run_dir / "metrics.jsonl"
    if not path.is_file():
        raise SystemExit(f"error: {path} not found (is {run_dir} a reslab run directory?)")
    rows = []
    for line in path.read_text().splitlines():
        try:
            rows.append(json.loads(line))
        except json.JSONDecodeError:
            continue
    return rows


def time_to_accuracy(rows: list[dict[str, Any]], targets: list[float]) -> dict[str, Any]:
    """Per target, the first timed test evaluation with top1 >= target (else not reached),
    plus the best and the final test top1. Uses the `val` rows when a run has no test rows
    during training (a run with --val-split evaluates on val, the test set only at the end)."""
    timed = [r for r in rows if r.get("split") == "test" and "time_s" in r]
    split = "test"
    if not timed:
        timed = [r for r in rows if r.get("split") == "val" and "time_s" in r]
        split = "val"
    final = [r for r in rows if r.get("split") == "test" and r.get("final")]
    best = max(timed, key=lambda r: r["top1"], default=None)
    reached = []
    for target in targets:
        hit = next((r for r in timed if r["top1"] >= target), None)
        row = {"target": target, "reached": "yes" if hit else "not reached (best shown)"}
        src = hit or best
        if src is not None:  # not reached: where the best value was
            row.update(time_s=src["time_s"], epoch=round(src["epoch"], 3), step=src["step"],
                       top1=src["top1"])
        reached.append(row)
    train_rows = [r for r in rows if "time_s" in r]
    return {"split": split, "evaluations": len(timed), "targets": reached,
            "best_top1": best["top1"] if best else None,
            "best_at_s": best["time_s"] if best else None,
            "final_test_top1": final[-1]["top1"] if final else None,
            "last_step": max((r["step"] for r in rows), default=0),
            "training_s": max((r["time_s"] for r in train_rows), default=None),
            "curve": [{"time_s": r["time_s"], "epoch": round(r["epoch"], 3),
                       "top1": r["top1"]} for r in timed]}


def run_config(run_dir: Path) -> dict[str, Any]:
    import tomllib

    path = run_dir / "config.toml"
    return tomllib.loads(path.read_text()) if path.is_file() else {}


def train(args: argparse.Namespace, out: Path) -> float:
    extra = shlex.split(args.train_args)
    if args.quick:
        extra += ["--iters", "60"]
    cmd = [PYTHON, "-m", "reslab", "train", "--recipe", args.recipe, "--out", str(out),
           "--quiet", "--json", *extra]
    print("running: " + " ".join(cmd[1:]), flush=True)
    wall, _ = run_timed(cmd)
    return wall


def main() -> None:
    args = parse_args()
    if not args.from_run:  # threads and the busy-machine warning only matter when timing
        prepare(args)
    if args.from_run:
        run_dir, wall = args.from_run, None
        rows, config = read_metrics(run_dir), run_config(run_dir)
    else:
        with tempfile.TemporaryDirectory(prefix="bench-tta-") as tmp:
            run_dir = args.keep or Path(tmp) / "run"
            wall = train(args, run_dir)
            rows, config = read_metrics(run_dir), run_config(run_dir)
    result = time_to_accuracy(rows, args.targets)
    title = (f"Time to accuracy: {config.get('model', '?')} on {config.get('data', '?')}, "
             f"recipe {args.recipe if not args.from_run else run_dir}, "
             f"{result['evaluations']} {result['split']} evaluations")
    print_table(title, result["targets"], COLUMNS)
    print(f"best {result['split']} top1 {result['best_top1']} at {result['best_at_s']} s; "
          f"final test top1 {result['final_test_top1']}; training "
          f"{result['training_s']} s" + (f"; whole process {wall:.1f} s" if wall else ""))
    setup = {"run": str(run_dir), "recipe": args.recipe if not args.from_run else None,
             "train_args": args.train_args, "quick": args.quick, "config": config,
             "time_s": "training seconds since the start of the loop (evaluations included; "
                       "start-up and data loading not)",
             "whole_process_s": "None when only analysing an existing run (--from-run)"}
    save_results("time_to_accuracy", setup, result["targets"], out=args.out,
                 whole_process_s=round(wall, 2) if wall else None,
                 **{k: v for k, v in result.items() if k != "targets"})


if __name__ == "__main__":
    main()

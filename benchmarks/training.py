"""Whole-process training time: `reslab train` vs a conventional torchvision script
(benchmarks/peer_torchvision_train.py) doing the same work: resnet20 on Fashion-MNIST, the same
iterations, batch size and hyper-parameters, then one test-set evaluation.

    python benchmarks/training.py [--iters 300] [--rounds 3] [--quick]

Runs alternate (reslab, peer, reslab, peer, ...) so that changes in the machine's load hit both
alike; the medians of whole-process wall time (start-up, data loading, training, evaluation,
writing results) are compared and their ratio reported, next to the training-only seconds each
process reports. Prints a table and writes docs/results/training-speed-vs-torchvision.json.

reslab runs `python -m reslab train --recipe fast --iters N --batch-size 128 --model resnet20
--activation relu --optimizer sgd --lr 0.2 --progressive-from 1 --tta-flip false --tta-translate
false --out TMP --quiet --json`: the fast recipe's machinery (channels-last + bf16, batched
augmentation on in-memory tensors) on exactly the peer's work: its model (resnet20 with ReLU,
not the recipe's resnet9p with GELU), its optimizer (SGD at lr 0.2 and batch 128, not the
recipe's muon at batch 256), native-size images throughout (no progressive resizing) and one
pass over the test set (no test-time views). Its start-up and that one evaluation are part of its
whole-process time.

Against the hardware: each runner's training loop achieves (iterations x batch x 3 x 2 x the
model's conv/fc multiply-adds per image, forward and the backward's two products) / training
seconds, shown in GFLOP/s and as a share of this machine's measured peak in the precision
reslab's `amp = "auto"` picks (common.measure_peaks; the peer always runs fp32).
"""
from __future__ import annotations

import argparse
import json
import shlex
import tempfile
from pathlib import Path
from typing import Any

from common import (PYTHON, RESULTS, ROOT, add_threads_option, measure_peaks, median,
                    prepare, print_table, run_timed, save_results, shown_command)

PEER = ROOT / "benchmarks" / "peer_torchvision_train.py"
COLUMNS = (("runner", "runner", ""), ("runs", "runs", "d"), ("wall_s", "wall s (median)", ".1f"),
           ("train_s", "train s (median)", ".1f"), ("img_s", "train img/s", ".0f"),
           ("startup_eval_s", "other s", ".1f"), ("test_top1", "test top1", ".4f"),
           ("gflop_s", "train GFLOP/s", ".1f"), ("of_peak", "of peak", ".1%"),
           ("speedup", "reslab speed-up", ".2f"))


def parse_args() -> argparse.Namespace:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--iters", type=int, default=300)
    p.add_argument("--rounds", type=int, default=3)
    p.add_argument("--quick", action="store_true", help="validation: 20 iterations, 1 round")
    p.add_argument("--batch-size", type=int, default=128)
    p.add_argument("--recipe", default="fast")
    p.add_argument("--reslab-args",
                   default="--model resnet20 --activation relu --optimizer sgd --lr 0.2 "
                           "--progressive-from 1 --tta-flip false --tta-translate false",
                   help="extra `reslab train` flags, as --reslab-args='...' (default: %(default)s)")
    p.add_argument("--peer-workers", type=int, default=0,
                   help="the peer's DataLoader processes (default 0, its fastest on a 2-core "
                        "machine: see peer_torchvision_train.py)")
    add_threads_option(p)
    p.add_argument("--out", type=Path, default=RESULTS / "training-speed-vs-torchvision.json")
    args = p.parse_args()
    if args.quick:
        args.iters, args.rounds = 20, 1
    return args


def commands(args: argparse.Namespace, tmp: Path, i: int) -> dict[str, list[str]]:
    return {
        "reslab": [PYTHON, "-m", "reslab", "train", "--recipe", args.recipe,
                   "--iters", str(args.iters), "--batch-size", str(args.batch_size),
                   "--out", str(tmp / f"reslab-{i}"), "--quiet", "--json",
                   *shlex.split(args.reslab_args)],
        "peer": [PYTHON, str(PEER), "--iters", str(args.iters),
                 "--batch-size", str(args.batch_size), "--workers", str(args.peer_workers),
                 "--json"],
    }


def reslab_train_seconds(run_dir: Path) -> float:
    """Seconds of reslab's training loop up to its last step, before any evaluation: the
    `time_s` of the run's last training-split row (its summary's wall_s would include the
    evaluation made at the last step)."""
    rows = [json.loads(line) for line in (run_dir / "metrics.jsonl").read_text().splitlines()
            if line.strip()]
    return max(r["time_s"] for r in rows if r.get("split") == "train" and "time_s" in r)


def summarize(runs: list[dict[str, Any]], name: str) -> dict[str, Any]:
    mine = [r for r in runs if r["runner"] == name]
    return {"runner": name, "runs": len(mine),
            "wall_s": round(median([r["wall_s"] for r in mine]), 2),
            "train_s": round(median([r["train_s"] for r in mine]), 2),
            "test_top1": round(median([r["test_top1"] for r in mine]), 4)}


def step_gflop_per_image() -> float:
    """The counted work of training one 28 px Fashion-MNIST image through resnet20: forward
    and backward (3 x 2 x its conv/fc multiply-adds), in GFLOP."""
    from reslab.analysis.macs import count_macs
    from reslab.models import create_model

    return 6 * count_macs(create_model("resnet20", num_classes=10, in_chans=1),
                          (1, 1, 28, 28)) / 1e9


def main() -> None:
    args = parse_args()
    prepare(args)
    from reslab.engine.setup import resolve_amp, select_device

    peaks = measure_peaks()
    reslab_precision = "bf16" if resolve_amp("auto", select_device("cpu")) else "fp32"
    runs: list[dict[str, Any]] = []
    with tempfile.TemporaryDirectory(prefix="bench-train-") as tmp:
        for i in range(args.rounds):
            for name, cmd in commands(args, Path(tmp), i).items():
                print(f"round {i + 1}/{args.rounds}: {name} ...", flush=True)
                wall, stdout = run_timed(cmd)
                report = json.loads(stdout.strip().splitlines()[-1])
                train_s = (reslab_train_seconds(Path(report["out"])) if name == "reslab"
                           else report["train_s"])
                runs.append({"runner": name, "round": i + 1, "wall_s": round(wall, 2),
                             "train_s": train_s, "test_top1": report["test"]["top1"]})
                print(f"  {wall:.1f} s whole process, {runs[-1]['train_s']:.1f} s training, "
                      f"test top1 {runs[-1]['test_top1']:.4f}", flush=True)
    rows = [summarize(runs, "reslab"), summarize(runs, "peer")]
    images = args.iters * args.batch_size
    per_image = step_gflop_per_image()
    for r in rows:
        r["img_s"] = round(images / r["train_s"], 1)
        r["startup_eval_s"] = round(r["wall_s"] - r["train_s"], 2)
        peak = peaks[reslab_precision if r["runner"] == "reslab" else "fp32"]
        r["gflop_s"] = round(r["img_s"] * per_image, 2)
        r["of_peak"] = round(r["gflop_s"] / peak.gflop_s, 4)
        r["peak"] = f"{peak.precision} {peak.gflop_s:.1f} GFLOP/s"
    ratio = rows[1]["wall_s"] / rows[0]["wall_s"]
    rows[0]["speedup"] = round(ratio, 3)
    train_ratio = rows[1]["train_s"] / rows[0]["train_s"]
    print_table(f"Training resnet20 on Fashion-MNIST, {args.iters} iterations x batch "
                f"{args.batch_size} + test evaluation, median of {args.rounds} alternated "
                "rounds", rows, COLUMNS)
    print(f"reslab's speed-up over the peer (peer time / reslab time): whole process "
          f"{ratio:.2f}x, training loop alone {train_ratio:.2f}x")
    setup = {"model": "resnet20", "data": "fashion-mnist", "iters": args.iters,
             "batch_size": args.batch_size, "rounds": args.rounds,
             **{name: shown_command(cmd)
                for name, cmd in commands(args, Path("TMP"), 0).items()},
             "peer_model": "reslab.create_model('resnet20', in_chans=1): torchvision has no "
                           "CIFAR-style resnet20; eager fp32 NCHW",
             "peer_workers": args.peer_workers,
             "wall_s": "whole process, from start to exit, timed by this script",
             "train_s": "the training loop alone, as each process reports it (reslab: the "
                        "time_s of its last training-split metrics row, before evaluation)"}
    save_results("training", setup, rows, out=args.out, runs=runs,
                 peaks={k: p.__dict__ for k, p in peaks.items()},
                 gflop_per_training_image=round(per_image, 4),
                 speedup_whole_process=round(ratio, 3),
                 speedup_training_loop=round(train_ratio, 3))


if __name__ == "__main__":
    main()

"""Time to accuracy: how long `reslab train` takes to reach 94% and 95% test top-1 on
Fashion-MNIST (the `fast` recipe by default).

    python benchmarks/time_to_accuracy.py [--recipe fast] [--targets 0.94 0.95] [--quick]
    python benchmarks/time_to_accuracy.py --from-run runs/fmnist-fast   # analyse only
    python benchmarks/time_to_accuracy.py --peer [--seeds 0 1 2] [--peer-args '...']

--peer: `reslab train --recipe R` and benchmarks/peer_airbench.py (airbench94 ported to
Fashion-MNIST) side by side, started at the same moment, one torch thread each, the same
precision (the one `amp = "auto"` picks on this CPU, given to both): both accuracy-vs-time
curves, each one's final test top-1 and training seconds (mean over the seeds, with their
spread), and the ratio of the times (peer / reslab). reslab's curve has one point per
evaluation (`--train-args '--eval-every 1'` for one per epoch; its time_s includes them); the
peer evaluates after every epoch outside its timer. Writes docs/results/time-to-accuracy-peer.json
and a plot next to it (.png). --tiny: both on tiny synthetic data, in seconds (the test suite).

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
import os
import shlex
import statistics
import subprocess
import tempfile
import textwrap
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from common import (PYTHON, RESULTS, ROOT, add_threads_option, prepare, print_table,
                    run_timed, save_results, shown_command, shown_path)

PEER = ROOT / "benchmarks" / "peer_airbench.py"
# --tiny: both sides on the same small synthetic data, a few steps each
TINY_DATA = "synthetic:512x1x28x28:10"
TINY_RESLAB = f"--data {TINY_DATA} --model resnet8 --epochs 2 --batch-size 64 --eval-every 1"
PEER_COLUMNS = (("runner", "runner", ""), ("seeds", "seeds", "d"),
                ("top1_mean", "final top1 mean", ".4f"), ("top1_min", "min", ".4f"),
                ("top1_max", "max", ".4f"), ("train_s_mean", "training s mean", ".1f"),
                ("train_s_max", "max", ".1f"))

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
    p.add_argument("--peer", action="store_true",
                   help="side by side with benchmarks/peer_airbench.py (see above)")
    p.add_argument("--peer-args", default="", help="extra peer_airbench.py flags")
    p.add_argument("--seeds", nargs="+", type=int, default=[0], help="--peer: one pair each")
    p.add_argument("--tiny", action="store_true", help="--peer on tiny synthetic data")
    p.add_argument("--out", type=Path)
    args = p.parse_args()
    if args.tiny and not args.peer:
        p.error("--tiny goes with --peer")
    if args.out is None:
        args.out = RESULTS / ("time-to-accuracy-peer.json" if args.peer
                              else "time-to-accuracy.json")
    return args


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


@dataclass(frozen=True)
class SideRun:
    """One side's run of a pair: its final test top-1, training seconds and curve."""
    runner: str
    seed: int
    top1: float
    train_s: float
    curve: list[dict[str, Any]]


def peer_commands(args: argparse.Namespace, seed: int, out: Path, amp: str
                  ) -> dict[str, list[str]]:
    """The two command lines of a pair: the same seed, one thread, the same precision."""
    extra = shlex.split(TINY_RESLAB if args.tiny else "") + shlex.split(args.train_args)
    peer_extra = ["--tiny"] if args.tiny else []
    return {"reslab": [PYTHON, "-m", "reslab", "train", "--recipe", args.recipe,
                       "--seed", str(seed), "--threads", "1", "--amp", amp, "--out", str(out),
                       "--overwrite", "--quiet", "--json", *extra],
            "peer": [PYTHON, str(PEER), "--seed", str(seed), "--threads", "1",
                     "--amp", "bf16" if amp == "bf16" else "off", "--json", *peer_extra,
                     *shlex.split(args.peer_args)]}


def run_pair(commands: dict[str, list[str]]) -> dict[str, str]:
    """Starts both commands at the same moment (one thread each: OMP_NUM_THREADS=1) and
    returns each one's stdout; a failure raises with its command line."""
    env = {**os.environ, "OMP_NUM_THREADS": "1"}
    procs = {name: subprocess.Popen(cmd, stdout=subprocess.PIPE, text=True, cwd=ROOT, env=env)
             for name, cmd in commands.items()}
    outs = {name: proc.communicate()[0] for name, proc in procs.items()}
    for name, proc in procs.items():
        if proc.returncode != 0:
            raise RuntimeError(f"exit {proc.returncode}: {' '.join(commands[name])}")
    return outs


def reslab_side(run_dir: Path, seed: int) -> SideRun:
    result = time_to_accuracy(read_metrics(run_dir), [])
    return SideRun("reslab", seed, result["final_test_top1"], result["training_s"],
                   result["curve"])


def peer_side(stdout: str, seed: int) -> SideRun:
    report = json.loads(stdout.strip().splitlines()[-1])
    return SideRun("peer", seed, report["test_top1"], report["train_s"], report["curve"])


def compare(runs: list[SideRun]) -> dict[str, Any]:
    """Per runner: final top-1 (mean, min, max, sample std) and training seconds (mean, max)
    over the seeds; the ratio of the mean training times (peer / reslab) and whether reslab
    dominates the peer's point (at least its mean accuracy in no more mean time)."""
    rows = {}
    for name in ("reslab", "peer"):
        mine = [r for r in runs if r.runner == name]
        top1, secs = [r.top1 for r in mine], [r.train_s for r in mine]
        rows[name] = {"runner": name, "seeds": len(mine), "top1_mean": statistics.mean(top1),
                      "top1_min": min(top1), "top1_max": max(top1),
                      "top1_std": statistics.stdev(top1) if len(top1) > 1 else None,
                      "train_s_mean": statistics.mean(secs), "train_s_max": max(secs)}
    mine, peer = rows["reslab"], rows["peer"]
    return {"rows": [mine, peer],
            "time_ratio_peer_over_reslab": round(peer["train_s_mean"] / mine["train_s_mean"], 3),
            "top1_difference_reslab_minus_peer": round(mine["top1_mean"] - peer["top1_mean"], 4),
            "reslab_dominates": (mine["top1_mean"] >= peer["top1_mean"]
                                 and mine["train_s_mean"] <= peer["train_s_mean"])}


def plot_curves(runs: list[SideRun], path: Path, title: str) -> Path:
    """Test top-1 against training seconds, one line per run (the benchmark's own figure)."""
    import matplotlib
    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, ax = plt.subplots(figsize=(6.5, 4.2))
    for r in runs:
        color = "C0" if r.runner == "reslab" else "C1"
        ax.plot([p["time_s"] for p in r.curve], [100 * p["top1"] for p in r.curve],
                marker="o", ms=3, color=color, alpha=0.8, label=f"{r.runner} seed {r.seed}")
    ax.set(xlabel="training seconds", ylabel="test top-1 (%)")
    ax.set_title(textwrap.fill(title, 70), fontsize=10)
    ax.grid(alpha=0.3)
    ax.legend(fontsize=8)
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)
    return path


def peer_main(args: argparse.Namespace) -> None:
    from reslab.engine.setup import resolve_amp, select_device

    amp = "bf16" if resolve_amp("auto", select_device("cpu")) is not None else "off"
    title = (f"`reslab train --recipe {args.recipe}` and airbench94's port side by side, one "
             f"thread each, {'bf16' if amp == 'bf16' else 'fp32'}")
    setup = {"recipe": args.recipe, "train_args": args.train_args, "peer_args": args.peer_args,
             "seeds": args.seeds, "tiny": args.tiny, "threads_each": 1, "precision": amp,
             "commands": {k: shown_command(v)
                          for k, v in peer_commands(args, 0, Path("TMP"), amp).items()},
             "train_s": "reslab: the time_s of its last evaluation row (training seconds, "
                        "its evaluations included); peer: training, whitening and the final "
                        "TTA evaluation (its per-epoch curve evaluations excluded)"}
    runs: list[SideRun] = []
    with tempfile.TemporaryDirectory(prefix="bench-peer-") as tmp:
        for seed in args.seeds:
            cmds = peer_commands(args, seed, Path(tmp) / f"reslab-s{seed}", amp)
            print(f"seed {seed}, side by side:\n  " + "\n  ".join(
                " ".join(c[1:]) for c in cmds.values()), flush=True)
            outs = run_pair(cmds)
            runs += [reslab_side(Path(tmp) / f"reslab-s{seed}", seed),
                     peer_side(outs["peer"], seed)]
            # saved after every pair: a run cut short keeps the seeds it finished
            result = compare(runs)
            save_results("time_to_accuracy_peer", {**setup, "seeds_done": len(runs) // 2},
                         result["rows"], out=args.out,
                         **{k: v for k, v in result.items() if k != "rows"},
                         runs=[r.__dict__ for r in runs])
    print_table(title, result["rows"], PEER_COLUMNS)
    print(f"time ratio (peer / reslab): {result['time_ratio_peer_over_reslab']:.2f}; top1 "
          f"reslab - peer: {result['top1_difference_reslab_minus_peer']:+.4f}; reslab "
          f"dominates: {result['reslab_dominates']}")
    plot = plot_curves(runs, args.out.with_suffix(".png"), title)
    print(f"wrote {plot.name}")


def main() -> None:
    args = parse_args()
    if args.peer:
        prepare(args)
        peer_main(args)
        return
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
    setup = {"run": shown_path(run_dir), "recipe": args.recipe if not args.from_run else None,
             "train_args": args.train_args, "quick": args.quick, "config": config,
             "time_s": "training seconds since the start of the loop (evaluations included; "
                       "start-up and data loading not)",
             "whole_process_s": "None when only analysing an existing run (--from-run)"}
    save_results("time_to_accuracy", setup, result["targets"], out=args.out,
                 whole_process_s=round(wall, 2) if wall else None,
                 **{k: v for k, v in result.items() if k != "targets"})


if __name__ == "__main__":
    main()

"""Training speed on an idle and on a busy machine: reslab's default thread choice against every
fixed thread count.

    python benchmarks/threads.py [--iters 20] [--rounds 2] [--model resnet20]

Each run is a whole `reslab train --recipe fast --model M --data fashion-mnist --iters N`
process (its training img/s from the run's summary). "auto" is the default (threads from the
CPUs that are free, re-chosen while training: reslab/threads.py); "1" ... "all" pass
--threads. `all` is what reslab did before it chose (torch's default: one thread per CPU).
Busy: one CPU-bound process per CPU of this process's affinity mask runs beside every run.
Runs alternate between the settings so that drifts in the machine hit all alike; medians.
Writes docs/results/first-contact-threads.json.
"""
from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import tempfile
from pathlib import Path

from common import PYTHON, median, print_table, run_timed, save_results

SPIN = "while True: pass"


def parse_args() -> argparse.Namespace:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--iters", type=int, default=20)
    p.add_argument("--rounds", type=int, default=2)
    p.add_argument("--model", default="resnet20")
    p.add_argument("--data", default="fashion-mnist")
    return p.parse_args()


def train_img_s(args: argparse.Namespace, threads: int | None, tmp: Path) -> float:
    out = tmp / f"run-{threads}"
    cmd = [PYTHON, "-m", "reslab", "train", "--recipe", "fast", "--model", args.model,
           "--data", args.data, "--iters", str(args.iters), "--tta-flip", "false",
           "--out", str(out), "--overwrite", "--quiet", "--json"]
    if threads is not None:
        cmd += ["--threads", str(threads)]
    _, stdout = run_timed(cmd)
    summary = json.loads(stdout)
    batch = int((out / "config.toml").read_text().split("batch_size = ")[1].split()[0])
    return summary["steps"] * batch / summary["wall_s"]


def measure(args: argparse.Namespace, cpus: int, busy: bool) -> dict[str, float]:
    settings: list[int | None] = [None, *range(1, cpus + 1)]
    rates: dict[str, list[float]] = {}
    spinners = [subprocess.Popen([sys.executable, "-c", SPIN]) for _ in range(cpus if busy else 0)]
    try:
        with tempfile.TemporaryDirectory() as tmp:
            for _ in range(args.rounds):
                for t in settings:
                    name = "auto" if t is None else str(t)
                    rates.setdefault(name, []).append(train_img_s(args, t, Path(tmp)))
                    print(f"{'busy' if busy else 'idle'} threads={name}: "
                          f"{rates[name][-1]:.0f} img/s", flush=True)
    finally:
        for p in spinners:
            p.kill()
            p.wait()
    return {k: median(v) for k, v in rates.items()}


def main() -> None:
    args = parse_args()
    os.environ.pop("OMP_NUM_THREADS", None)  # set, it would count as the user's choice
    cpus = len(os.sched_getaffinity(0))
    rows = []
    for busy in (False, True):
        rates = measure(args, cpus, busy)
        best = max(v for k, v in rates.items() if k != "auto")
        rows.append({"machine": "busy" if busy else "idle", **{f"t{k}": v for k, v in rates.items()},
                     "auto_vs_best": rates["auto"] / best,
                     "auto_vs_before": rates["auto"] / rates[str(cpus)]})
    columns = [("machine", "machine", ""), ("tauto", "auto img/s", ".0f"),
               *[(f"t{t}", f"{t} thread{'s' if t > 1 else ''}", ".0f") for t in range(1, cpus + 1)],
               ("auto_vs_best", "auto / best fixed", ".2f"),
               ("auto_vs_before", f"auto / {cpus} (before)", ".2f")]
    print_table(f"training img/s, {args.model} on {args.data}, {args.iters} iterations, "
                f"median of {args.rounds}", rows, columns)
    save_results("first-contact-threads", vars(args) | {"cpus": cpus}, rows)


if __name__ == "__main__":
    main()

"""Helpers shared by the benchmark scripts: where results go, the JSON record (environment +
setup + results), tables, timed subprocesses, and the machine's fp32 matmul peak.

The measurement code itself lives in the package (reslab.deploy.bench), which `reslab bench`
uses too; this module only adds what is specific to scripts run from the repository.
"""
from __future__ import annotations

import argparse
import os
import statistics
import subprocess
import sys
import time
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import torch

from reslab.deploy.bench import Column, environment, format_table, matmul_rates, write_json

ROOT = Path(__file__).resolve().parents[1]
RESULTS = ROOT / "docs" / "results"
PYTHON = sys.executable
try:  # before this process adds its own load
    LOAD_AT_START: float | None = round(os.getloadavg()[0], 2)
except OSError:
    LOAD_AT_START = None

__all__ = ["ROOT", "RESULTS", "PYTHON", "Column", "add_threads_option", "prepare",
           "measure_peak", "median", "print_table", "run_timed", "save_results"]


def add_threads_option(p: argparse.ArgumentParser) -> None:
    p.add_argument("--threads", type=int, metavar="N",
                   help="torch threads (default: torch's choice, one per core); on a busy "
                        "machine 1 thread is far less noisy than several")


def prepare(args: argparse.Namespace) -> None:
    """Applies --threads (to this process and, through OMP_NUM_THREADS, to the ones it starts)
    and warns when the machine is already busy: other processes' load makes every number
    noisy, and multi-threaded ops wait for descheduled threads (1 thread suffers far less)."""
    if getattr(args, "threads", None):
        torch.set_num_threads(args.threads)
        os.environ["OMP_NUM_THREADS"] = str(args.threads)
    load, cpus = LOAD_AT_START, os.cpu_count() or 1
    if load is not None and load > 0.5 * cpus:
        print(f"warning: the machine is busy (load average {load:.1f} on {cpus} CPUs): "
              "timings will be noisy", file=sys.stderr, flush=True)


def save_results(name: str, setup: dict[str, Any], results: Any, *, out: Path | None = None,
                 **extra: Any) -> Path:
    """Writes docs/results/NAME.json (or `out`): {"environment", "setup", "results", ...}, the
    environment carrying the code version, torch version, CPU, threads and date."""
    env = {**environment(root=ROOT), "load_avg_1min_at_start": LOAD_AT_START}
    path = write_json(out or RESULTS / f"{name}.json",
                      {"environment": env, "setup": setup, "results": results, **extra})
    print(f"wrote {path.relative_to(ROOT) if path.is_relative_to(ROOT) else path}")
    return path


def print_table(title: str, rows: Sequence[dict[str, Any]], columns: Sequence[Column], *,
                machine: bool = True) -> None:
    """The title, (with machine) a line on the CPU, threads, versions and load, the table."""
    print(f"\n{title}")
    if machine:
        env = environment(root=ROOT)
        print(f"({env['cpu']}, {env['threads']} threads, torch {env['torch']}, code "
              f"{env['code_version']}, load average {env.get('load_avg_1min', '?')})")
    print(format_table(rows, columns))


def measure_peak(repeats: int = 5) -> dict[str, float]:
    """fp32 GEMM rates in GFLOP/s (2048 x 2048 products, best of `repeats`) of torch.matmul and
    oneDNN (see reslab.deploy.bench.matmul_rates), printed; the peak is their maximum."""
    rates = matmul_rates(2048, repeats)
    print("fp32 matmul 2048x2048, best of {}: {}".format(
        repeats, ", ".join(f"{k} {v:.1f} GFLOP/s" for k, v in rates.items())), flush=True)
    return rates


def median(values: Sequence[float]) -> float:
    return statistics.median(values)


def run_timed(cmd: Sequence[str], *, env: dict[str, str] | None = None,
              cwd: Path = ROOT) -> tuple[float, str]:
    """Runs cmd to completion; returns (whole-process wall seconds, stdout). stderr passes
    through; a failure raises with the command line."""
    start = time.perf_counter()
    proc = subprocess.run(list(cmd), stdout=subprocess.PIPE, text=True, cwd=cwd,
                          env={**os.environ, **(env or {})})
    wall = time.perf_counter() - start
    if proc.returncode != 0:
        raise RuntimeError(f"exit {proc.returncode}: {' '.join(map(str, cmd))}")
    return wall, proc.stdout

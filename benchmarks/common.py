"""Helpers shared by the benchmark scripts: where results go, the JSON record (environment +
setup + results), tables, timed subprocesses, and the machine's fp32 matmul peak.

The measurement code itself lives in the package (reslab.bench), which `reslab bench` uses too;
this module adds what only scripts run from the repository need: the code version (git), the CPU
model, the machine's matmul peak and the result files.
"""
from __future__ import annotations

import argparse
import json
import os
import platform
import statistics
import subprocess
import sys
import time
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch

from reslab.bench import Step, seconds_per_call
from reslab.bench import environment as _environment
from reslab.text import Column, format_table

ROOT = Path(__file__).resolve().parents[1]
RESULTS = ROOT / "docs" / "results"
PYTHON = sys.executable
try:  # before this process adds its own load
    LOAD_AT_START: float | None = round(os.getloadavg()[0], 2)
except OSError:
    LOAD_AT_START = None

__all__ = ["ROOT", "RESULTS", "PYTHON", "Column", "Peak", "add_threads_option", "prepare",
           "measure_peak", "measure_peaks", "median", "print_table", "run_timed", "save_results"]


def cpu_name() -> str:
    """The CPU model string (/proc/cpuinfo on Linux, else what platform knows)."""
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return platform.processor() or platform.machine()



def code_version(path: str | Path | None = None) -> str:
    """`git rev-parse --short HEAD` of the checkout holding `path` (default: this package),
    with "-dirty" when tracked files differ from it; "reslab X.Y.Z" outside a checkout."""
    from reslab import __version__

    where = str(path or Path(__file__).resolve().parent)
    try:
        rev = subprocess.run(["git", "-C", where, "rev-parse", "--short", "HEAD"],
                             capture_output=True, text=True, timeout=10, check=True)
        dirty = subprocess.run(["git", "-C", where, "status", "--porcelain",
                                "--untracked-files=no"],
                               capture_output=True, text=True, timeout=10).stdout.strip()
    except (OSError, subprocess.SubprocessError):
        return f"reslab {__version__}"
    return rev.stdout.strip() + ("-dirty" if dirty else "")



def environment(device: str | torch.device = "cpu", root: str | Path | None = None
                ) -> dict[str, Any]:
    """reslab.bench.environment plus the code version and the CPU model."""
    return {**_environment(device), "code_version": code_version(root or ROOT),
            "cpu": cpu_name()}


def write_json(path: str | Path, payload: dict[str, Any]) -> Path:
    from reslab.io import atomic_write_text

    path = Path(path)
    atomic_write_text(path, json.dumps(payload, indent=2, default=str) + "\n")  # creates parents
    return path



def matmul_rates(n: int = 2048, repeats: int = 5, device: str | torch.device = "cpu"
                 ) -> dict[str, float]:
    """fp32 n x n matrix-multiply rates in GFLOP/s (2n^3 per product, best of `repeats`, all of
    torch's threads) of each GEMM torch can use: "torch.matmul" (the BLAS: MKL or OpenBLAS on
    the CPU, cuBLAS on CUDA) and, on CPUs, "oneDNN" (the library behind torch's CPU
    convolutions). They differ: on AMD CPUs MKL's sgemm runs at about half of oneDNN's rate
    (MKL picks its AVX2 kernels on non-Intel CPUs), so the BLAS alone understates the peak
    and convolutions would appear to exceed it."""
    device = torch.device(device)
    g = torch.Generator().manual_seed(0)
    a = torch.randn(n, n, generator=g).to(device)
    b = torch.randn(n, n, generator=g).to(device)
    gemms: dict[str, Step] = {"torch.matmul": lambda: torch.matmul(a, b)}
    if device.type == "cpu" and torch.backends.mkldnn.is_available():
        # inductor's CPU linear op: oneDNN's fp32 GEMM (a @ b.T), weights as given
        gemms["oneDNN"] = lambda: torch.ops.mkldnn._linear_pointwise(a, b, None, "none", [],
                                                                      "")
    rates = {}
    for name, fn in gemms.items():
        try:
            fn()  # warm-up: thread pool start, kernel choice
        except (RuntimeError, AttributeError, NotImplementedError):
            continue  # an internal op this build lacks: the others still count
        best = min(seconds_per_call(fn, 1, device) for _ in range(repeats))
        rates[name] = 2 * n ** 3 / best / 1e9
    return rates


def matmul_peak_gflops(n: int = 2048, repeats: int = 5,
                       device: str | torch.device = "cpu") -> float:
    """The machine's measured fp32 matrix-multiply peak: the best of `matmul_rates`. The
    reference for how much of the hardware a network's convolutions use."""
    return max(matmul_rates(n, repeats, device).values())



@dataclass(frozen=True)
class Peak:
    """A measured rate of this machine in GFLOP/s: the best of the GEMMs and a large 3x3
    convolution in one precision, and each of those measurements."""
    precision: str
    gflop_s: float
    rates: dict[str, float]


def conv_rate(dtype: torch.dtype = torch.float32, repeats: int = 5) -> float:
    """GFLOP/s (2 x MACs per second) of a large 3x3 convolution's forward pass, the kind of
    layer a ResNet step is made of at a size that fills the machine: batch 32, 64 -> 64
    channels, 56 x 56, channels-last, in `dtype` (bf16 through autocast, as training)."""
    conv = torch.nn.Conv2d(64, 64, 3, padding=1, bias=False).to(memory_format=torch.channels_last)
    x = torch.randn(32, 64, 56, 56).contiguous(memory_format=torch.channels_last)
    low = dtype is not torch.float32

    @torch.no_grad()
    def fn() -> None:
        with torch.autocast("cpu", dtype=dtype if low else torch.bfloat16, enabled=low):
            conv(x)
    fn()  # oneDNN picks and builds its kernel on the first call
    best = min(seconds_per_call(fn, 1) for _ in range(repeats))
    return 2 * 32 * 56 * 56 * 64 * 64 * 9 / best / 1e9


def bf16_gemm_rate(n: int = 2048, repeats: int = 5) -> float:
    """GFLOP/s of a bf16 n x n matrix product (torch.matmul)."""
    g = torch.Generator().manual_seed(0)
    a = torch.randn(n, n, generator=g).bfloat16()
    b = torch.randn(n, n, generator=g).bfloat16()
    torch.matmul(a, b)
    best = min(seconds_per_call(lambda: torch.matmul(a, b), 1) for _ in range(repeats))
    return 2 * n ** 3 / best / 1e9


def measure_peaks(repeats: int = 3) -> dict[str, Peak]:
    """This machine's fp32 peak (the GEMMs of matmul_rates and conv_rate) and, where bf16 runs
    natively (AVX512-BF16, AMX), its bf16 peak; printed. The reference a training step's
    achieved GFLOP/s is read against."""
    from reslab.engine.setup import bf16_supported

    fp32 = {**{f"{k} GEMM": v for k, v in matmul_rates(2048, repeats).items()},
            "3x3 conv": conv_rate(torch.float32, repeats)}
    peaks = {"fp32": Peak("fp32", max(fp32.values()), fp32)}
    if bf16_supported("cpu"):
        bf16 = {"torch.matmul GEMM": bf16_gemm_rate(2048, repeats),
                "3x3 conv": conv_rate(torch.bfloat16, repeats)}
        peaks["bf16"] = Peak("bf16", max(bf16.values()), bf16)
    for p in peaks.values():
        print(f"{p.precision} peak {p.gflop_s:.1f} GFLOP/s ("
              + ", ".join(f"{k} {v:.1f}" for k, v in p.rates.items()) + ")", flush=True)
    return peaks


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


def shown_path(path: Path) -> str:
    """A path as a results file records it, with nothing of the machine that ran it: relative
    to the repository when inside it, else only its name (a temporary run directory)."""
    if not path.is_absolute():
        return str(path)
    return str(path.relative_to(ROOT)) if path.is_relative_to(ROOT) else path.name


def shown_command(argv: Sequence[str]) -> str:
    """A benchmark's command line as a results file records it: without the interpreter, each
    absolute path as shown_path shows it."""
    return " ".join(shown_path(Path(a)) if Path(a).is_absolute() else a for a in argv[1:])


def save_results(name: str, setup: dict[str, Any], results: Any, *, out: Path | None = None,
                 **extra: Any) -> Path:
    """Writes docs/results/NAME.json (or `out`; docs/results/README.md says how results are
    named): {"environment", "setup", "results", ...}, the environment carrying the code version,
    torch version, CPU, threads and date."""
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
    oneDNN (see matmul_rates), printed; the peak is their maximum."""
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

"""`reslab paper`: every claim of the paper a machine can check, rerun at a chosen budget, and
one page (DIR/paper.md, DIR/paper.html) that says which hold, with the numbers.

budgets.py plans the members, runner.py trains and measures them (resumable, incremental,
parallel), schedule_plan.py writes their commands for a scheduler instead (--plan), measure.py
holds the analyses, verdicts.py judges the claims, page.py writes the page
(its claim sections in sections.py, the notes' questions in questions.py, the Korean in lang.py).
"""
from __future__ import annotations

import json
import sys
import time
from collections.abc import Callable
from pathlib import Path

from ...io import atomic_write_text
from .budgets import BUDGETS, PaperDir, Plan, plan
from .runner import run_members

__all__ = ["BUDGETS", "PaperDir", "Plan", "plan", "run_paper"]


def cpu_seconds() -> float:
    """CPU seconds of this process and the member processes it waited for (user + system)."""
    import resource

    return sum(r.ru_utime + r.ru_stime for r in (resource.getrusage(resource.RUSAGE_SELF),
                                                 resource.getrusage(resource.RUSAGE_CHILDREN)))


def _log_call(out: Path, argv: list[str], started: float, seconds: float, status: str,
              cpu: float) -> None:
    """DIR/calls.json: every call of the command on DIR, for the page's commands and times
    (wall and CPU seconds, the machine and its load)."""
    path = PaperDir(out).calls
    try:
        calls = json.loads(path.read_text())
    except (OSError, ValueError):
        calls = []
    calls.append({"argv": argv, "started": time.strftime("%Y-%m-%d %H:%M:%S UTC",
                                                         time.gmtime(started)),
                  "seconds": round(seconds, 1), "cpu_seconds": round(cpu, 1), "status": status,
                  "machine": machine()})
    atomic_write_text(path, json.dumps(calls, indent=1) + "\n")


def machine() -> str:
    """"AMD EPYC (AVX2), 2 CPUs, no GPU; torch 2.14.1": what the page says ran it."""
    import os
    import platform

    import torch

    from ...data.loaders import available_cpus

    cpu = platform.processor() or platform.machine()
    try:
        with open("/proc/cpuinfo") as f:
            info = f.read().splitlines()
        cpu = next((line.split(":", 1)[1].strip() for line in info
                    if line.startswith("model name")), cpu)
        flags = set(next((line.split(":", 1)[1].split() for line in info
                          if line.startswith("flags")), []))
        simd = ("AVX-512" + (" with bf16" if "avx512_bf16" in flags else "")
                if "avx512f" in flags else "AVX2" if "avx2" in flags else "")
        cpu += f" ({simd})" if simd else ""
    except OSError:
        pass
    gpu = (torch.cuda.get_device_name(0) if torch.cuda.is_available() else "no GPU")
    load = ""
    if hasattr(os, "getloadavg"):
        load = f"; load average {os.getloadavg()[0]:.1f} at the end"
    return f"{cpu}, {available_cpus()} CPUs, {gpu}; torch {torch.__version__}{load}"


def run_paper(p: Plan, out: str | Path, *, jobs: int = 1, lang: str = "en",
              only: list[str] | None = None, argv: list[str] | None = None,
              say: Callable[[str], None] = lambda _m: None) -> tuple[Path, Path]:
    """Runs the plan's members not finished yet into DIR, then writes the page; returns the
    paths of paper.md and paper.html."""
    from .page import write_page

    out = Path(out)
    PaperDir(out).members.mkdir(parents=True, exist_ok=True)
    started, t0, cpu0 = time.time(), time.perf_counter(), cpu_seconds()
    argv = argv if argv is not None else sys.argv[1:]
    try:
        run_members(p, out, jobs=jobs, only=only, say=say)
    except BaseException as e:
        _log_call(out, argv, started, time.perf_counter() - t0, type(e).__name__,
                  cpu_seconds() - cpu0)
        raise
    _log_call(out, argv, started, time.perf_counter() - t0, "finished", cpu_seconds() - cpu0)
    return write_page(p, out, lang)

"""Intra-op threads that do not collapse when the machine is busy.

PyTorch's CPU kernels (OpenMP, oneDNN) split each op over one thread per core and wait at a
barrier for the slowest. When another program holds a core, the thread scheduled there runs a
fraction of the time and every op waits for it: on a 2-core machine with two other CPU-bound
processes, 2 threads trained resnet20 at 33 img/s against 369 img/s with 1 (benchmarks/
threads.py). Spinning less (OMP_WAIT_POLICY=passive) only reaches 115 img/s, and costs an
idle machine ~30%.

So the thread count follows the CPUs that are free: measured from /proc/stat (the busy time of
the CPUs this process may use, minus this process's own) at the start, and again every few
seconds while training, since other programs come and go. Only when the user left the choice
to reslab: an explicit --threads, OMP_NUM_THREADS, or a torch.set_num_threads() in the calling
process is kept as it is.
"""
from __future__ import annotations

import os
import time
from dataclasses import dataclass

import torch

SAMPLE_S = 0.2        # how long the start-up measurement looks at the machine
RECHECK_S = 3.0       # seconds between measurements while training
# A CPU counts as taken when others use more than this share of it: a thread placed there
# would stall every barrier.
BUSY_SHARE = 0.35


def available_cpus() -> list[int]:
    """The CPUs this process may run on (the affinity mask, e.g. a container's share)."""
    if hasattr(os, "sched_getaffinity"):
        return sorted(os.sched_getaffinity(0))
    return list(range(os.cpu_count() or 1))


@dataclass
class _Sample:
    busy: float      # seconds the allowed CPUs were busy (all processes), since boot
    own: float       # this process's CPU seconds
    wall: float


def _busy_seconds(cpus: list[int]) -> float | None:
    """Busy seconds (user+nice+system+irq+softirq+steal) of the given CPUs since boot, or None
    where /proc/stat is not there (macOS, Windows)."""
    try:
        with open("/proc/stat") as f:
            lines = f.read().splitlines()
    except OSError:
        return None
    tick = os.sysconf("SC_CLK_TCK") if hasattr(os, "sysconf") else 100
    wanted = {f"cpu{c}" for c in cpus}
    total = 0
    for line in lines:
        parts = line.split()
        if parts and parts[0] in wanted:
            user, nice, system, _idle, _iowait, irq, softirq, steal = map(int, parts[1:9])
            total += user + nice + system + irq + softirq + steal
    return total / tick


def _sample(cpus: list[int]) -> _Sample | None:
    busy = _busy_seconds(cpus)
    if busy is None:
        return None
    t = os.times()
    # children: DataLoader workers are ours too, but they compete like any other program
    return _Sample(busy, t.user + t.system, time.monotonic())


def others_load(a: _Sample, b: _Sample) -> float:
    """CPUs' worth of work that other processes did between two samples."""
    wall = b.wall - a.wall
    if wall <= 0:
        return 0.0
    return max(0.0, ((b.busy - a.busy) - (b.own - a.own)) / wall)


def free_cpus(others: float, cpus: int) -> int:
    """The CPUs other processes leave when they keep `others` CPUs busy (0 to cpus)."""
    taken = int(others + (1 - BUSY_SHARE))  # a CPU is taken once others use BUSY_SHARE of it
    return max(0, min(cpus, cpus - taken))


def free_threads(others: float, cpus: int) -> int:
    """Threads to use when other processes keep `others` CPUs busy: the CPUs they leave, at
    least one."""
    return max(1, free_cpus(others, cpus))


def auto_note(threads: int, free: int, cpus: int) -> str:
    """How an automatic choice reads: '1 thread (auto: 0 of 2 CPUs free; at least 1)'."""
    from .text import plural

    floor = "; at least 1" if free < 1 else ""
    return f"{plural(threads, 'thread')} (auto: {free} of {plural(cpus, 'CPU')} free{floor})"


def user_chose_threads() -> bool:
    """Whether the thread count was set outside reslab (OMP_NUM_THREADS, or torch.set_num_threads
    in this process): torch's default is one thread per CPU of the affinity mask."""
    return bool(os.environ.get("OMP_NUM_THREADS")) or \
        torch.get_num_threads() != len(available_cpus())


class ThreadGovernor:
    """Chooses the intra-op threads at start and re-chooses every RECHECK_S seconds (`tick`,
    called once per training step; it only reads a clock between checks). Inactive when
    `threads` is set (> 0), when the user chose threads outside reslab, or for a deterministic
    run (`deterministic`: a thread count that depends on the load would change the kernels'
    reduction order between reruns). `once`: choose at start only (eval, predict, bench)."""

    def __init__(self, threads: int = 0, *, deterministic: bool = False,
                 once: bool = False) -> None:
        self.cpus = available_cpus()
        self.active = threads == 0 and not deterministic and not user_chose_threads()
        self.reason = "auto" if self.active else "deterministic" if deterministic else "set"
        if threads > 0:
            torch.set_num_threads(threads)
            self.reason = "set"
        self._last: _Sample | None = None
        self.free: int | None = None  # CPUs free at the last choice (None: not measured)
        self.changes = 0
        if self.active:
            self._choose_now()
            self.active = not once and self._last is not None

    def _choose_now(self) -> None:
        first = _sample(self.cpus)
        if first is None:
            return
        time.sleep(SAMPLE_S)
        self._last = _sample(self.cpus)
        torch.set_num_threads(self._threads_for(first, self._last))

    def _threads_for(self, a: _Sample, b: _Sample) -> int:
        """The threads for the load between samples a and b (free_threads), noting the CPUs
        free for `describe`."""
        self.free = free_cpus(others_load(a, b), len(self.cpus))
        return max(1, self.free)

    def tick(self) -> None:
        if not self.active or time.monotonic() - self._last.wall < RECHECK_S:
            return
        now = _sample(self.cpus)
        if now is None:
            return
        want = self._threads_for(self._last, now)
        self._last = now
        if want != torch.get_num_threads():
            torch.set_num_threads(want)
            self.changes += 1

    def describe(self) -> str:
        from .text import plural

        n = torch.get_num_threads()
        if self.reason == "auto":
            return auto_note(n, n if self.free is None else self.free, len(self.cpus))
        if self.reason == "deterministic":
            return (f"{plural(n, 'thread')}, fixed by --deterministic (a count that followed the "
                    "load would change the order of the kernels' sums between reruns)")
        return plural(n, "thread")


def auto_threads(threads: int = 0) -> ThreadGovernor:
    """For commands that run once (eval, predict, bench): threads chosen at start only."""
    return ThreadGovernor(threads, once=True)

"""Timing primitives: warmed-up, interleaved rounds of calls, the statistic of each step's
rounds. Below every module that times something (reslab.bench, the runtime choice of
reslab.deploy), so that choosing a runtime does not import the benchmark table code."""
from __future__ import annotations

import time
from collections.abc import Callable

import torch
from torch import nn

Step = Callable[[], object]


def synchronize(device: str | torch.device) -> None:
    """Waits for queued GPU work (CPU ops are synchronous already)."""
    device = torch.device(device)
    if device.type == "cuda":
        torch.cuda.synchronize(device)
    elif device.type == "mps":
        torch.mps.synchronize()


def seconds_per_call(fn: Step, iters: int, device: str | torch.device = "cpu") -> float:
    synchronize(device)
    start = time.perf_counter()
    for _ in range(iters):
        fn()
    synchronize(device)
    return (time.perf_counter() - start) / iters


def calibrate(fn: Step, device: str | torch.device = "cpu", target_s: float = 0.5,
              max_iters: int = 50) -> int:
    """Warms fn up (kernel selection, weight packing, compilation happen on the first calls),
    then returns how many calls fill about target_s."""
    fn()
    once = seconds_per_call(fn, 1, device)
    return max(1, min(max_iters, round(target_s / max(once, 1e-6))))


def seconds_per_round(steps: dict[str, Step], iters: int | dict[str, int], rounds: int,
                      device: str | torch.device = "cpu") -> dict[str, list[float]]:
    """Seconds per call of each step in each of `rounds` interleaved rounds (see module doc)."""
    out: dict[str, list[float]] = {name: [] for name in steps}
    for _ in range(rounds):
        for name, fn in steps.items():
            n = iters[name] if isinstance(iters, dict) else iters
            out[name].append(seconds_per_call(fn, n, device))
    return out


def best_of_rounds(steps: dict[str, Step], iters: int | dict[str, int], rounds: int,
                   device: str | torch.device = "cpu") -> dict[str, float]:
    """Best seconds per call of each step over `rounds` interleaved rounds (see module doc)."""
    return {name: min(s) for name, s in seconds_per_round(steps, iters, rounds, device).items()}


def time_steps(steps: dict[str, Step], *, iters: int | None = None, rounds: int = 2,
               target_s: float = 0.5, device: str | torch.device = "cpu",
               statistic: Callable[[list[float]], float] = min) -> dict[str, float]:
    """Warm every step up, then time them interleaved: `iters` calls per round, or (None) as
    many as fill about target_s per round for each step. Each step's rounds are reduced by
    `statistic`: min (the best round, the default) or statistics.median."""
    counts = {name: calibrate(fn, device, target_s) if iters is None else iters
              for name, fn in steps.items()}
    if iters is not None:
        for fn in steps.values():
            fn()  # warm-up only
    return {name: statistic(s)
            for name, s in seconds_per_round(steps, counts, rounds, device).items()}


def inference_step(model: nn.Module, x: torch.Tensor, *, channels_last: bool = False) -> Step:
    """One batch of inference; with channels_last the input is converted per call, as a user
    feeding NCHW batches would."""
    cl = torch.channels_last

    def step() -> torch.Tensor:
        with torch.inference_mode():
            return model(x.contiguous(memory_format=cl) if channels_last else x)
    return step

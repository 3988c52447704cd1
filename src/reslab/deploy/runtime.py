"""Inference runtimes behind one interface (a callable, torch tensors in and out): PyTorch with
optimize_for_inference's rewrites, ONNX Runtime on reslab's own ONNX export, or whichever of
the two is faster on the first batch shape, measured (`optimize_for_inference(...,
runtime="auto")`).

ONNX Runtime is the runtime many CPU deployments use; on small batches it beats PyTorch's eager
oneDNN path (its graph optimizer fuses Conv+BN+ReLU and the residual addition, and its
per-operator overhead is lower). Its session is a plain one (ONNX Runtime's defaults: every
graph optimization on) with as many intra-op threads as CPUs this process may use. It is an optional dependency (the `export`
extra).
"""
from __future__ import annotations

import os
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

import torch
from torch import nn

from ..choices import RUNTIMES  # noqa: F401 (re-exported)
from ..errors import UserError, unknown

Forward = Callable[[torch.Tensor], torch.Tensor]


def available_cpus() -> int:
    """CPUs this process may run on (its affinity mask; a container's or taskset's limit)."""
    try:
        return len(os.sched_getaffinity(0))
    except AttributeError:  # not Linux
        return os.cpu_count() or 1


def check_runtime(runtime: str, device: str | torch.device = "cpu") -> str:
    """runtime checked against RUNTIMES and the device: ONNX Runtime's session here runs on the
    CPU, so on another device "auto" means torch and "onnxruntime" is an error."""
    if runtime not in RUNTIMES:
        raise unknown("runtime", runtime, RUNTIMES)
    if torch.device(device).type != "cpu":
        if runtime == "onnxruntime":
            raise UserError(f"the onnxruntime runtime runs on the CPU, not {device}: use "
                            "--device cpu or --runtime torch")
        return "torch"
    return runtime


class OrtModel:
    """An ONNX Runtime session with the model's interface: a float (N, C, H, W) torch tensor in
    (any memory layout), the logits as a torch tensor out. Inference only."""

    runtime = "onnxruntime"

    def __init__(self, session: Any, threads: int) -> None:
        self.session = session
        self.optimized_with = {"runtime": "onnxruntime", "graph_optimization": "all",
                               "threads": threads}
        self.choice: RuntimeChoice | None = None

    def __call__(self, x: torch.Tensor) -> torch.Tensor:
        feed = x.detach().to("cpu", torch.float32).contiguous().numpy()
        return torch.from_numpy(self.session.run(None, {"input": feed})[0])

    def eval(self) -> OrtModel:  # so code that calls model.eval() on what it runs works
        return self


def onnxruntime_model(model: nn.Module, example_input: torch.Tensor, *,
                      threads: int | None = None) -> OrtModel:
    """model exported to ONNX (deploy.export.onnx_program: the graph `reslab export` writes)
    and loaded in an ONNX Runtime session, graph optimizations on, `threads` intra-op threads
    (default: the CPUs this process may use)."""
    from .export import onnx_program

    program = onnx_program(model.cpu().float().eval(), example_input.detach().cpu().float())
    return ort_session(program.model_proto.SerializeToString(), threads)


def ort_session(onnx_model: bytes | str, threads: int | None = None) -> OrtModel:
    """An ONNX model (bytes or a file path) in a plain CPU session: ONNX Runtime's default
    options (every graph optimization on, sequential execution) with `threads` intra-op
    threads (default: the CPUs this process may use). Plain on purpose: "auto" must never lose
    to the session a user would start themselves, so it runs that session."""
    from .export import onnx_modules

    ort = onnx_modules()
    threads = threads or available_cpus()
    options = ort.SessionOptions()
    options.intra_op_num_threads = threads
    options.log_severity_level = 3  # its notices about unused initializers are not the user's
    session = ort.InferenceSession(onnx_model, options, providers=["CPUExecutionProvider"])
    return OrtModel(session, threads)


@dataclass(frozen=True)
class RuntimeChoice:
    """What runtime="auto" measured: seconds per batch of `batch` images for each runtime."""

    runtime: str
    batch: int
    seconds: dict[str, float]

    @property
    def speedup(self) -> float:
        """The chosen runtime's advantage over the other (>= 1)."""
        other = [s for name, s in self.seconds.items() if name != self.runtime]
        return max(other) / self.seconds[self.runtime] if other else 1.0

    def describe(self) -> str:
        times = ", ".join(f"{name} {1e3 * s:.2f} ms" for name, s in self.seconds.items())
        return (f"runtime {self.runtime} (auto: {self.speedup:.2f}x faster at batch "
                f"{self.batch}; {times} per batch)")


# The runtime choice's timing: interleaved rounds (a load change hits every candidate alike),
# the order rotated each round (no candidate always runs in the same place, e.g. right after
# another runtime whose threads may still spin for a moment), the median round of each
# (one lucky or unlucky round does not decide), each round as many calls as fill TARGET_S (at
# batch 1 several calls, so a round is not one call's jitter).
ROUNDS = 5
TARGET_S = 0.2


def median_seconds(steps: dict[str, Callable[[], object]], *, rounds: int = ROUNDS,
                   target_s: float = TARGET_S) -> dict[str, float]:
    """Seconds per call of each step: warmed up, then `rounds` interleaved rounds in rotating
    order, the median round of each."""
    import statistics

    from ..timing import calibrate, seconds_per_call

    names = list(steps)
    iters = {name: calibrate(steps[name], target_s=target_s) for name in names}
    rounds_s: dict[str, list[float]] = {name: [] for name in names}
    for r in range(rounds):
        for name in names[r % len(names):] + names[:r % len(names)]:
            rounds_s[name].append(seconds_per_call(steps[name], iters[name]))
    return {name: statistics.median(s) for name, s in rounds_s.items()}


def choose_faster(candidates: dict[str, Forward], example_input: torch.Tensor, *,
                  target_s: float = TARGET_S, rounds: int = ROUNDS) -> RuntimeChoice:
    """Times each candidate on example_input (median_seconds) and names the fastest. Where
    two are within the rounds' noise either choice costs as little: the choice that can flip
    run to run is the one that does not matter."""
    from ..timing import inference_step

    steps = {name: inference_step(fn, example_input) for name, fn in candidates.items()}
    seconds = median_seconds(steps, rounds=rounds, target_s=target_s)
    best = min(seconds, key=seconds.__getitem__)
    return RuntimeChoice(best, int(example_input.shape[0]), seconds)


def runtime_of(model: Any) -> str:
    """"torch" or "onnxruntime": what a callable from optimize_for_inference runs on."""
    return getattr(model, "optimized_with", {}).get("runtime", "torch")


def describe(model: Any) -> str:
    """One line on the runtime a callable runs on and, for "auto", why."""
    choice = getattr(model, "choice", None)
    return choice.describe() if choice is not None else f"runtime {runtime_of(model)}"

"""Throughput measurement: the library part of `reslab bench` and of benchmarks/.

What lives here is what both need: a record of the environment a number was measured in, the
machine's fp32 matrix-multiply peak (to state achieved GFLOP/s as a share of it), interleaved
best-of-rounds timing, a training step as the engine runs it, and `bench_model`, the side-by-side
of one model against torchvision's same architecture.

Timing rule: variants are timed in interleaved rounds and each keeps its best round, so a burst
of load from other processes hurts every variant alike instead of one (a shared machine is the
normal case on a CPU).
"""
from __future__ import annotations

import copy
import datetime
import json
import math
import os
import platform
import subprocess
import time
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any

import torch
import torch.nn.functional as F
from torch import nn

from ..errors import UserError

Step = Callable[[], object]
# (row key, header, format spec): a column of `format_table`.
Column = tuple[str, str, str]


# --- the environment a number was measured in ---------------------------------------------

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
    from .. import __version__

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
    """Code version, library versions, CPU/GPU model, thread count, date: what a benchmark
    number needs next to it to mean anything."""
    import torchvision

    from .. import __version__

    device = torch.device(device)
    env = {"code_version": code_version(root), "reslab": __version__,
           "torch": torch.__version__, "torchvision": torchvision.__version__,
           "python": platform.python_version(), "platform": platform.platform(),
           "cpu": cpu_name(), "cpu_capability": torch.backends.cpu.get_cpu_capability(),
           "cpus": os.cpu_count(), "threads": torch.get_num_threads(),
           "device": str(device),
           "date": datetime.datetime.now(datetime.timezone.utc).isoformat(timespec="seconds")}
    if device.type == "cuda":
        env["gpu"] = torch.cuda.get_device_name(device)
    try:  # the 1-minute load average: how busy the machine was (noise in the numbers)
        env["load_avg_1min"] = round(os.getloadavg()[0], 2)
    except OSError:
        pass
    return env


def write_json(path: str | Path, payload: dict[str, Any]) -> Path:
    from ..engine.checkpoint import atomic_write_text

    path = Path(path)
    atomic_write_text(path, json.dumps(payload, indent=2, default=str) + "\n")  # creates parents
    return path


def format_table(rows: Sequence[dict[str, Any]], columns: Sequence[Column]) -> str:
    """A plain-text table: strings left-aligned, numbers right-aligned, missing values "-"."""
    def cell(row: dict[str, Any], key: str, spec: str) -> str:
        value = row.get(key)
        if value is None:
            return "-"
        return format(value, spec) if spec and isinstance(value, (int, float)) else str(value)

    cells = [[cell(r, key, spec) for key, _, spec in columns] for r in rows]
    widths = [max([len(h)] + [len(c[i]) for c in cells]) for i, (_, h, _) in enumerate(columns)]
    numeric = [bool(spec) for _, _, spec in columns]

    def line(values: Sequence[str]) -> str:
        return "  ".join(v.rjust(w) if num else v.ljust(w)
                         for v, w, num in zip(values, widths, numeric)).rstrip()

    head = line([h for _, h, _ in columns])
    return "\n".join([head, "-" * len(head)] + [line(c) for c in cells])


# --- timing -------------------------------------------------------------------------------

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


def best_of_rounds(steps: dict[str, Step], iters: int | dict[str, int], rounds: int,
                   device: str | torch.device = "cpu") -> dict[str, float]:
    """Best seconds per call of each step over `rounds` interleaved rounds (see module doc)."""
    best = {name: math.inf for name in steps}
    for _ in range(rounds):
        for name, fn in steps.items():
            n = iters[name] if isinstance(iters, dict) else iters
            best[name] = min(best[name], seconds_per_call(fn, n, device))
    return best


def time_steps(steps: dict[str, Step], *, iters: int | None = None, rounds: int = 2,
               target_s: float = 0.5, device: str | torch.device = "cpu") -> dict[str, float]:
    """Warm every step up, then time them interleaved: `iters` calls per round, or (None) as
    many as fill about target_s per round for each step."""
    counts = {name: calibrate(fn, device, target_s) if iters is None else iters
              for name, fn in steps.items()}
    if iters is not None:
        for fn in steps.values():
            fn()  # warm-up only
    return best_of_rounds(steps, counts, rounds, device)


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


# --- what is timed ------------------------------------------------------------------------

def bf16_supported(device: str | torch.device) -> bool:
    """Whether bf16 autocast runs natively (CPUs with AVX512-BF16/AMX, Ampere+ GPUs); where it
    is emulated it is slower than fp32, so the fast training variant then stays fp32."""
    device = torch.device(device)
    if device.type == "cuda":
        return torch.cuda.is_bf16_supported()
    if device.type == "cpu":
        return bool(torch.backends.mkldnn.is_available()
                    and torch.ops.mkldnn._is_mkldnn_bf16_supported())
    return False


def inference_step(model: nn.Module, x: torch.Tensor, *, channels_last: bool = False) -> Step:
    """One batch of inference; with channels_last the input is converted per call, as a user
    feeding NCHW batches would."""
    cl = torch.channels_last

    def step() -> torch.Tensor:
        with torch.inference_mode():
            return model(x.contiguous(memory_format=cl) if channels_last else x)
    return step


def training_step(model: nn.Module, x: torch.Tensor, y: torch.Tensor, *,
                  channels_last: bool = False, amp_dtype: torch.dtype | None = None) -> Step:
    """One SGD step (forward, loss, backward, update) as the engine's loop does it: model and
    batch channels-last when asked, autocast to amp_dtype, loss in fp32. The model trains in
    place (pass a copy)."""
    model.train()
    if channels_last:
        model.to(memory_format=torch.channels_last)
    opt = torch.optim.SGD(model.parameters(), lr=0.01, momentum=0.9)

    def step() -> None:
        inp = x.contiguous(memory_format=torch.channels_last) if channels_last else x
        with torch.autocast(x.device.type, dtype=amp_dtype or torch.bfloat16,
                            enabled=amp_dtype is not None):
            loss = F.cross_entropy(model(inp).float(), y)
        opt.zero_grad(set_to_none=True)
        loss.backward()
        opt.step()
    return step


def torchvision_twin(model: nn.Module, name: str) -> nn.Module | None:
    """torchvision's model of the same name carrying `model`'s weights (reslab's ImageNet family
    uses torchvision's layout and parameter names), or None when torchvision has no such
    architecture (the CIFAR family) or the shapes differ (other options than its defaults)."""
    import torchvision

    builder = getattr(torchvision.models, name, None)
    if builder is None:
        return None
    twin = builder(num_classes=model.fc.out_features)
    if model.conv1.in_channels != twin.conv1.in_channels:
        twin.conv1 = nn.Conv2d(model.conv1.in_channels, 64, 7, 2, 3, bias=False)
    try:
        twin.load_state_dict(model.state_dict())
    except RuntimeError:
        return None
    return twin.to(next(model.parameters()).device)


# --- `reslab bench` -----------------------------------------------------------------------

def _rows(seconds: dict[str, float], batch: int, baseline: str,
          macs: int | None = None) -> list[dict[str, Any]]:
    base = seconds[baseline]
    rows = []
    for name, s in seconds.items():
        row = {"variant": name, "img_s": round(batch / s, 2), "ms_per_batch": round(1e3 * s, 2),
               "vs_baseline": round(base / s, 3)}
        if macs is not None:  # achieved rate: 2 FLOPs per multiply-add
            row["gflop_s"] = round(2 * macs * batch / s / 1e9, 2)
        rows.append(row)
    return rows


def bench_model(name: str, *, batch_size: int | None = None,
                input_shape: Sequence[int] | None = None, iters: int | None = None,
                rounds: int = 2, device: str = "auto", compile: bool | str = False,
                target_s: float = 0.5) -> dict[str, Any]:
    """Inference and training throughput of `name`, side by side with the conventional way.

    Baseline ("conventional"): torchvision's same architecture, eager fp32 NCHW, with the same
    weights; for the CIFAR family, which torchvision lacks, reslab's own eager fp32 NCHW model.
    Inference: baseline, reslab eager, reslab `optimize_for_inference` (BN folded,
    channels-last; torch.compile per `compile`: False, True or "auto"). Training: baseline
    fp32 NCHW, reslab fp32 NCHW, and reslab channels-last + bf16 autocast (bf16 only where it
    is native, see `bf16_supported`), as the `fast` recipe trains.
    input_shape: (C, H, W) or (N, C, H, W); default the architecture's usual input.
    iters: timed calls per round (None: as many as fill about target_s). Returns a dict with
    `inference` and `training` rows (img_s, ms_per_batch, vs_baseline) and `speedup`.
    """
    from ..analysis.macs import count_macs
    from ..engine.setup import select_device
    from ..models import create_model, get_arch
    from .optimize import optimize_for_inference

    arch = get_arch(name)
    shape = tuple(input_shape or arch.default_input)
    if len(shape) == 3:
        shape = (1, *shape)
    if len(shape) != 4 or min(shape) < 1:
        raise UserError(f"invalid input shape {shape}: expected (N,) C, H, W, all positive")
    n = batch_size or (shape[0] if input_shape and len(input_shape) == 4
                       else 16 if arch.family == "imagenet" else 128)
    if n < 1 or rounds < 1 or (iters is not None and iters < 1):
        raise UserError("batch size, iterations and rounds must be >= 1")
    shape = (n, *shape[1:])
    dev = select_device(device)

    torch.manual_seed(0)
    ours = create_model(name, in_chans=shape[1]).to(dev).eval()
    with torch.device("meta"):
        macs = count_macs(create_model(name, in_chans=shape[1]), (1, *shape[1:]))
    g = torch.Generator().manual_seed(0)
    x = torch.randn(shape, generator=g).to(dev)
    y = torch.randint(0, ours.fc.out_features, (n,), generator=g).to(dev)
    twin = torchvision_twin(ours, name)
    if twin is not None:
        base_inf, base_train = "torchvision eager", "torchvision fp32 NCHW"
        baseline = f"torchvision.models.{name}, eager fp32 NCHW, same weights"
    else:
        base_inf, base_train = "reslab eager (conventional)", "reslab fp32 NCHW (conventional)"
        why = ": it has no CIFAR-family networks" if arch.family == "cifar" else ""
        baseline = f"reslab's own {name}, eager fp32 NCHW (torchvision has no {name}{why})"

    # Inference.
    fast = optimize_for_inference(ours, x, compile=compile)
    what = "+".join(k for k, v in (("BN folded", fast.optimized_with["bn_folded"]),
                                   ("channels_last", fast.optimized_with["channels_last"]),
                                   ("compiled", fast.optimized_with["compiled"])) if v)
    inf = {base_inf: inference_step(twin if twin is not None else ours, x)}
    if twin is not None:
        inf["reslab eager"] = inference_step(ours, x)
    inf[f"reslab optimized ({what})"] = inference_step(fast, x)
    inf_s = time_steps(inf, iters=iters, rounds=rounds, target_s=target_s, device=dev)

    # Training (each variant trains its own copy of the same initial weights).
    amp = torch.bfloat16 if bf16_supported(dev) else None
    fast_name = "reslab channels_last" + (" + bf16" if amp else "")
    train = {base_train: training_step(copy.deepcopy(twin if twin is not None else ours), x, y)}
    if twin is not None:
        train["reslab fp32 NCHW"] = training_step(copy.deepcopy(ours), x, y)
    train[fast_name] = training_step(copy.deepcopy(ours), x, y, channels_last=True,
                                     amp_dtype=amp)
    train_s = time_steps(train, iters=iters, rounds=rounds, target_s=target_s, device=dev)

    inference = _rows(inf_s, n, base_inf, macs)
    training = _rows(train_s, n, base_train)
    return {"model": name, "family": arch.family, "device": str(dev), "input": list(shape),
            "batch_size": n, "iters": iters if iters is not None else "auto", "rounds": rounds,
            "macs_per_image": macs, "baseline": baseline,
            "inference": inference, "training": training,
            # reslab's best way vs the conventional one: optimized inference, fast training
            "speedup": {"inference": inference[-1]["vs_baseline"],
                        "training": training[-1]["vs_baseline"]},
            "timing": "best round per variant, rounds interleaved",
            "environment": environment(dev)}

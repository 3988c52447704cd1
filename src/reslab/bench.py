"""Throughput measurement: `reslab bench` and the timing that benchmarks/ builds on.

Interleaved best-of-rounds timing, inference and training steps (the training step is the
engine's own), and `bench_model`, the side-by-side of one model against torchvision's same
architecture. Tooling that only the repository's benchmark scripts need (git version, the CPU
model, the machine's matmul peak, result files) lives in benchmarks/common.py.

Timing rule: variants are timed in interleaved rounds and each keeps its best round, so a burst
of load from other processes hurts every variant alike instead of one (a shared machine is the
normal case on a CPU).
"""
from __future__ import annotations

import copy
import datetime
import math
import os
import platform
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from typing import Any

import torch
from torch import nn

from .deploy.optimize import optimize_for_inference
from .engine.setup import bf16_supported, select_device
from .engine.step import sgd_step
from .errors import UserError
from .limits import MAX_BATCH, MAX_IN_CHANS, check_image_side, check_int
from .timing import Step, inference_step, seconds_per_call, time_steps  # noqa: F401 (re-exported)

# How the rows were timed (see the module docstring).
TIMING = "best round per variant, rounds interleaved"
# Input values in one timed batch (2**27 fp32 = 512 MiB; resnet50 at 224 px: batch 891).
MAX_BENCH_ELEMENTS = 2**27


# --- the environment a number was measured in ---------------------------------------------

def environment(device: str | torch.device = "cpu") -> dict[str, Any]:
    """Library versions, CPU capability, thread count, date and load: what a throughput number
    needs next to it to mean anything (benchmarks/ adds the code version and the CPU model)."""
    import torchvision

    from . import __version__

    device = torch.device(device)
    env = {"reslab": __version__, "torch": torch.__version__,
           "torchvision": torchvision.__version__, "python": platform.python_version(),
           "platform": platform.platform(), "cpu": platform.processor() or platform.machine(),
           "cpu_capability": torch.backends.cpu.get_cpu_capability(),
           "cpus": os.cpu_count(), "threads": torch.get_num_threads(), "device": str(device),
           "date": datetime.datetime.now(datetime.timezone.utc).isoformat(timespec="seconds")}
    if device.type == "cuda":
        env["gpu"] = torch.cuda.get_device_name(device)
    try:  # the 1-minute load average: how busy the machine was (noise in the numbers)
        env["load_avg_1min"] = round(os.getloadavg()[0], 2)
    except OSError:
        pass
    return env


# --- timing (reslab.timing) and what is timed --------------------------------------------

def training_step(model: nn.Module, x: torch.Tensor, y: torch.Tensor, *,
                  channels_last: bool = False, amp_dtype: torch.dtype | None = None) -> Step:
    """One SGD step exactly as the engine's loop runs it (reslab.engine.step.sgd_step): model
    and batch channels-last when asked, autocast to amp_dtype, loss in fp32. The model trains in
    place (pass a copy)."""
    model.train()
    if channels_last:
        model.to(memory_format=torch.channels_last)
    opt = torch.optim.SGD(model.parameters(), lr=0.01, momentum=0.9)
    scaler = torch.amp.GradScaler(x.device.type, enabled=amp_dtype is torch.float16)

    def step() -> None:
        sgd_step(model, opt, scaler, x, y, amp_dtype=amp_dtype, channels_last=channels_last)
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

@dataclass(frozen=True)
class Throughput:
    """One timed variant: images per second, ms per batch, its speed relative to the baseline
    and (inference) the achieved GFLOP/s."""

    variant: str
    img_s: float
    ms_per_batch: float
    vs_baseline: float
    gflop_s: float | None = None

    def to_json(self) -> dict[str, Any]:
        row = {"variant": self.variant, "img_s": self.img_s, "ms_per_batch": self.ms_per_batch,
               "vs_baseline": self.vs_baseline}
        if self.gflop_s is not None:
            row["gflop_s"] = self.gflop_s
        return row


def _rows(seconds: dict[str, float], batch: int, baseline: str,
          macs: int | None = None) -> list[Throughput]:
    base = seconds[baseline]
    # achieved rate: 2 FLOPs per multiply-add
    return [Throughput(name, round(batch / s, 2), round(1e3 * s, 2), round(base / s, 3),
                       round(2 * macs * batch / s / 1e9, 2) if macs is not None else None)
            for name, s in seconds.items()]


ORT_VARIANT = "onnxruntime (reslab's ONNX export)"


@dataclass(frozen=True)
class PrecisionRow:
    """One reduced-precision variant: its speed (and ratio to each fp32 runtime) and top-1
    agreement with the fp32 eager model; or, for a variant not measured, only a note why."""

    variant: str
    img_s: float | None = None
    ms_per_batch: float | None = None
    vs_torch_fp32: float | None = None
    vs_ort_fp32: float | None = None
    top1_agreement: float | None = None
    agreement_images: int | None = None
    note: str | None = None

    def to_json(self) -> dict[str, Any]:
        if self.note is not None:
            return {"variant": self.variant, "note": self.note}
        return {"variant": self.variant, "img_s": self.img_s, "ms_per_batch": self.ms_per_batch,
                "vs_torch_fp32": self.vs_torch_fp32, "vs_ort_fp32": self.vs_ort_fp32,
                "top1_agreement": self.top1_agreement,
                "agreement_images": self.agreement_images}


def precision_rows(model: nn.Module, x: torch.Tensor, fp32: dict[str, Callable], *,
                   agreement: Sequence[torch.Tensor], calibration: Sequence[torch.Tensor],
                   iters: int | None = None, rounds: int = 2, target_s: float = 0.5,
                   statistic: Callable[[list[float]], float] = min) -> list[PrecisionRow]:
    """Reduced precision against fp32, CPU: bf16 in PyTorch (where it is native), int8 through
    PT2E (torchao) and through ONNX Runtime's static quantization (QDQ, per-channel), each
    calibrated on `calibration`. fp32: {"torch": callable, "onnxruntime": callable}. Rows:
    speed on x (and its ratio to each fp32 runtime) and top-1 agreement with the fp32 eager
    model over the `agreement` batches (real test images for the numbers to mean anything)."""
    from .deploy.precision import bf16_model, onnx_int8_model
    from .deploy.quantize import quantize_int8

    variants = {f"fp32 {name}": fn for name, fn in fp32.items()}
    notes = {}
    if bf16_supported("cpu"):
        variants["bf16 torch"] = bf16_model(model)
    else:
        notes["bf16 torch"] = "skipped: this CPU has no native bf16 (emulated, slower than fp32)"
    try:
        variants["int8 PT2E (torchao, x86 inductor)"] = quantize_int8(model, calibration)
    except ModuleNotFoundError as e:
        notes["int8 PT2E (torchao, x86 inductor)"] = f"skipped: {e}"
    variants["int8 onnxruntime (QDQ, per-channel)"] = onnx_int8_model(
        model, calibration, threads=torch.get_num_threads())
    seconds = time_steps({k: inference_step(f, x) for k, f in variants.items()}, iters=iters,
                         rounds=rounds, target_s=target_s, statistic=statistic)
    with torch.inference_mode():
        ref = [model(b).argmax(1) for b in agreement]
        total = sum(len(r) for r in ref)
        agree = {k: sum(int((f(b).argmax(1) == r).sum()) for b, r in zip(agreement, ref)) / total
                 for k, f in variants.items()}
    n = x.shape[0]
    t_fp32, o_fp32 = (seconds.get(f"fp32 {k}") for k in ("torch", "onnxruntime"))
    rows = [PrecisionRow(k, round(n / s, 2), round(1e3 * s, 2),
                         round(t_fp32 / s, 3) if t_fp32 else None,
                         round(o_fp32 / s, 3) if o_fp32 else None, round(agree[k], 5), total)
            for k, s in seconds.items()]
    return rows + [PrecisionRow(k, note=v) for k, v in notes.items()]


@dataclass(frozen=True)
class Benchmark:
    """What `bench_model` measured: the inference and training rows of one model against its
    baseline, the inference variant its speed-up is of (`chosen`), and where it was measured."""

    model: str
    family: str
    device: str
    input: tuple[int, ...]       # N, C, H, W
    batch_size: int
    iters: int | None            # timed calls per round; None: as many as fill target_s
    rounds: int
    macs_per_image: int
    baseline: str
    inference: tuple[Throughput, ...]
    training: tuple[Throughput, ...]
    runtime_requested: str       # torch | onnxruntime | auto
    chosen: str                  # reslab's optimized inference variant on that runtime
    environment: dict[str, Any]  # see environment()
    precision: tuple[PrecisionRow, ...] | None = None

    @property
    def runtime(self) -> str:
        return "onnxruntime" if self.chosen == ORT_VARIANT else "torch"

    @property
    def inference_speedup(self) -> float:
        """reslab's optimized inference on the chosen runtime vs the conventional way."""
        return next(r.vs_baseline for r in self.inference if r.variant == self.chosen)

    @property
    def training_speedup(self) -> float:
        """reslab's fast training (the last training row) vs the conventional way."""
        return self.training[-1].vs_baseline

    def to_json(self) -> dict[str, Any]:
        out = {"model": self.model, "family": self.family, "device": self.device,
               "input": list(self.input), "batch_size": self.batch_size,
               "iters": self.iters if self.iters is not None else "auto",
               "rounds": self.rounds, "macs_per_image": self.macs_per_image,
               "baseline": self.baseline,
               "inference": [r.to_json() for r in self.inference],
               "training": [r.to_json() for r in self.training],
               "runtime": {"requested": self.runtime_requested, "variant": self.chosen,
                           "runtime": self.runtime},
               "speedup": {"inference": self.inference_speedup,
                           "training": self.training_speedup},
               "timing": TIMING, "environment": self.environment}
        if self.precision is not None:
            out["precision"] = [r.to_json() for r in self.precision]
        return out


def bench_model(name: str, *, batch_size: int | None = None,
                input_shape: Sequence[int] | None = None, iters: int | None = None,
                rounds: int = 2, device: str = "auto", compile: bool | str = False,
                target_s: float = 0.5, runtime: str = "torch", precision: bool = False
                ) -> Benchmark:
    """Inference and training throughput of `name`, side by side with the conventional way.

    Baseline ("conventional"): torchvision's same architecture, eager fp32 NCHW, with the same
    weights; for the CIFAR family, which torchvision lacks, reslab's own eager fp32 NCHW model.
    Inference: baseline, reslab eager, reslab `optimize_for_inference` (BN folded,
    channels-last; torch.compile per `compile`: False, True or "auto"). Training: baseline
    fp32 NCHW, reslab fp32 NCHW, and reslab channels-last + bf16 autocast (bf16 only where it
    is native, see `bf16_supported`), as the `fast` recipe trains.
    input_shape: (C, H, W) or (N, C, H, W); default the architecture's usual input.
    iters: timed calls per round (None: as many as fill about target_s). Returns a Benchmark:
    `inference` and `training` rows (img_s, ms_per_batch, vs_baseline) and the speed-ups.
    runtime "onnxruntime" or "auto" adds ONNX Runtime on reslab's ONNX export to the inference
    rows (CPU); `runtime` says which runtime the inference speed-up is of (auto: the faster
    one measured). precision adds `precision_rows` (random weights and inputs: their agreement
    says little; benchmarks/runtime.py measures a trained model on its test set).
    """
    from .deploy.runtime import check_runtime

    from .analysis.macs import count_macs
    from .models import create_model, get_arch

    arch = get_arch(name)
    shape = tuple(input_shape or arch.default_input)
    if len(shape) == 3:
        shape = (1, *shape)
    if len(shape) != 4 or min(shape) < 1:
        raise UserError(f"invalid input shape {shape}: expected (N,) C, H, W, all positive")
    n = batch_size or (shape[0] if input_shape and len(input_shape) == 4
                       else 16 if arch.family == "imagenet" else 128)
    check_int("batch size", n, 1, MAX_BATCH)
    check_int("rounds", rounds, 1, 100)
    if iters is not None:
        check_int("iterations", iters, 1, 10**6)
    check_int("input channels", shape[1], 1, MAX_IN_CHANS)
    for side in shape[2:]:
        check_image_side("input size", side)
    shape = (n, *shape[1:])
    if math.prod(shape) > MAX_BENCH_ELEMENTS:
        raise UserError(f"a batch of {'x'.join(map(str, shape))} is {math.prod(shape):,} input "
                        f"values, more than the {MAX_BENCH_ELEMENTS:,} limit (its activations "
                        "would not fit in memory); use a smaller --batch-size or --input")
    dev = select_device(device)
    runtime = check_runtime(runtime, dev)
    if precision and dev.type != "cpu":
        raise UserError("the reduced-precision table is measured on the CPU: use --device cpu")

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
    fast = optimize_for_inference(ours, x, runtime="torch", compile=compile)
    what = "+".join(k for k, v in (("BN folded", fast.optimized_with["bn_folded"]),
                                   ("channels_last", fast.optimized_with["channels_last"]),
                                   ("compiled", fast.optimized_with["compiled"])) if v)
    inf = {base_inf: inference_step(twin if twin is not None else ours, x)}
    if twin is not None:
        inf["reslab eager"] = inference_step(ours, x)
    torch_variant = f"reslab optimized ({what})"
    inf[torch_variant] = inference_step(fast, x)
    ort = None
    if runtime != "torch" or precision:
        # the threads torch has: the runtimes compared on equal terms
        ort = optimize_for_inference(ours, x, runtime="onnxruntime",
                                     threads=torch.get_num_threads())
    if runtime != "torch":
        inf[ORT_VARIANT] = inference_step(ort, x)
    inf_s = time_steps(inf, iters=iters, rounds=rounds, target_s=target_s, device=dev)
    chosen = {"torch": torch_variant, "onnxruntime": ORT_VARIANT}.get(
        runtime, min((torch_variant, ORT_VARIANT), key=lambda v: inf_s.get(v, math.inf)))
    reduced = None
    if precision:
        calibration = [torch.randn(min(n, 32), *shape[1:], generator=g) for _ in range(2)]
        reduced = precision_rows(ours, x, {"torch": fast, "onnxruntime": ort},
                                 agreement=[x], calibration=calibration, iters=iters,
                                 rounds=rounds, target_s=target_s)

    # Training (each variant trains its own copy of the same initial weights).
    amp = torch.bfloat16 if bf16_supported(dev) else None
    fast_name = "reslab channels_last" + (" + bf16" if amp else "")
    train = {base_train: training_step(copy.deepcopy(twin if twin is not None else ours), x, y)}
    if twin is not None:
        train["reslab fp32 NCHW"] = training_step(copy.deepcopy(ours), x, y)
    train[fast_name] = training_step(copy.deepcopy(ours), x, y, channels_last=True,
                                     amp_dtype=amp)
    train_s = time_steps(train, iters=iters, rounds=rounds, target_s=target_s, device=dev)

    return Benchmark(name, arch.family, str(dev), shape, n, iters, rounds, macs, baseline,
                     tuple(_rows(inf_s, n, base_inf, macs)), tuple(_rows(train_s, n, base_train)),
                     runtime, chosen, environment(dev),
                     tuple(reduced) if reduced is not None else None)

"""Inference-time rewrites that keep the function: BN folded into the convolutions,
channels-last memory, and torch.compile where it measurably helps; or the same model on ONNX
Runtime, or whichever of the two runs faster (reslab.deploy.runtime)."""
from __future__ import annotations

import copy
import time
import warnings
from collections import Counter
from collections.abc import Callable
from typing import Any, Literal

import torch
from torch import nn
from torch.nn.utils.fusion import fuse_conv_bn_eval

from ..errors import UserError
from .runtime import check_runtime, choose_faster, onnxruntime_model
from .runtime import describe as describe_runtime
from .runtime import runtime_of

CompileMode = bool | Literal["auto"]


def fold_batchnorm(model: nn.Module) -> nn.Module:
    """Folds every BatchNorm2d that only consumes a Conv2d's output into that conv, in place.

    The conv gets the BN's affine map of its running statistics (weight * gamma / sigma, plus a
    bias) and the BN becomes nn.Identity, so module names and the model's methods keep working.
    Pairs come from the traced data flow, not from names. Needs eval mode: folding freezes the
    running statistics.
    """
    if model.training:
        raise ValueError("fold_batchnorm needs a model in eval mode (it uses running statistics)")
    graph = torch.fx.symbolic_trace(model).graph
    modules = dict(model.named_modules())
    calls = Counter(n.target for n in graph.nodes if n.op == "call_module")
    for node in graph.nodes:
        if node.op != "call_module" or not isinstance(modules[node.target], nn.BatchNorm2d):
            continue
        src = node.args[0]
        if (isinstance(src, torch.fx.Node) and src.op == "call_module"
                and isinstance(modules[src.target], nn.Conv2d) and len(src.users) == 1
                and calls[src.target] == 1 and calls[node.target] == 1):
            fused = fuse_conv_bn_eval(modules[src.target], modules[node.target])
            model.set_submodule(src.target, fused)
            model.set_submodule(node.target, nn.Identity())
    return model


def _images_per_second(model: nn.Module, x: torch.Tensor, iters: int = 3) -> float:
    with torch.inference_mode():
        model(x)  # warm-up: kernel selection, weight reordering, compilation
        start = time.perf_counter()
        for _ in range(iters):
            model(x)
    return iters * x.shape[0] / (time.perf_counter() - start)


def optimize_for_inference(model: nn.Module, example_input: torch.Tensor, *,
                           runtime: str = "torch", compile: CompileMode = "auto",
                           channels_last: bool = True, threads: int | None = None) -> Any:
    """A faster callable for inference with the model's outputs (the original is left
    untouched): takes and returns torch tensors.

    runtime "torch": the rewrites below (`optimize_torch`), the result still the model's class.
    "onnxruntime": reslab's ONNX export in an ONNX Runtime session (deploy.runtime.OrtModel;
    graph optimizations on, `threads` intra-op threads, default the CPUs this process may use).
    "auto": both, timed on example_input's shape, the faster kept; its `choice`
    (deploy.runtime.RuntimeChoice) holds the times. On a non-CPU input "auto" is "torch".
    The result's `optimized_with` dict says what was applied, `["runtime"]` which runtime.
    """
    runtime = check_runtime(runtime, example_input.device)
    if runtime == "onnxruntime":
        return onnxruntime_model(model, example_input, threads=threads)
    fast = optimize_torch(model, example_input, compile=compile, channels_last=channels_last)
    if runtime == "torch":
        return fast
    ort = onnxruntime_model(model, example_input, threads=threads)
    choice = choose_faster({"torch": fast, "onnxruntime": ort}, example_input)
    chosen = ort if choice.runtime == "onnxruntime" else fast
    chosen.choice = choice
    return chosen


def optimize_torch(model: nn.Module, example_input: torch.Tensor, *,
                   compile: CompileMode = "auto", channels_last: bool = True) -> nn.Module:
    """A faster copy of model for inference in PyTorch (the original is left untouched).

    BN is folded into the convolutions; on 4-D inputs the weights go channels-last (oneDNN and
    cuDNN convolutions run fastest in NHWC). compile: True always uses torch.compile (inductor,
    with weight freezing), False never, "auto" times both on example_input and keeps the
    faster. The result is still the model's class, with the same outputs up to fp32 rounding;
    its `optimized_with` dict says what was applied.
    """
    fast = fold_batchnorm(copy.deepcopy(model).eval())
    if channels_last:
        fast = fast.to(memory_format=torch.channels_last)
    fast.optimized_with = {"runtime": "torch", "bn_folded": True,
                           "channels_last": channels_last, "compiled": False}
    if compile is False:
        return fast
    compiled = copy.deepcopy(fast)
    # nn.Module.compile compiles in place, so the result stays a ResNet with its methods.
    # Freezing lets inductor constant-fold and pre-pack the weights: the main win on CPU.
    compiled.compile(options={"freezing": True})
    compiled.optimized_with = {**fast.optimized_with, "compiled": True}
    if compile is True:
        return compiled
    try:
        faster = _images_per_second(compiled, example_input) > _images_per_second(
            fast, example_input)
    except Exception as e:  # noqa: BLE001 - no compiler, unsupported backend: stay eager
        warnings.warn(f"torch.compile failed, using the eager model: {str(e).splitlines()[0]}",
                      stacklevel=2)
        return fast
    return compiled if faster else fast


class FirstBatch:
    """optimize_for_inference built on the first batch it is called with: "auto" times the
    runtimes on the shape the caller really uses (eval's and predict's batch), not a guess.
    `fast` is the built callable (None before the first call)."""

    def __init__(self, model: nn.Module, runtime: str, **options: Any) -> None:
        self.model, self.runtime, self.options = model, runtime, options
        self.fast: Any = None

    def __call__(self, x: torch.Tensor) -> torch.Tensor:
        if self.fast is None:
            # Exporting and folding need ordinary tensors, also inside the caller's
            # inference_mode; x.clone() there is an ordinary tensor with x's values.
            with torch.inference_mode(False), torch.no_grad():
                self.fast = optimize_for_inference(self.model, x.clone(), runtime=self.runtime,
                                                   **self.options)
        with torch.inference_mode():
            return self.fast(x)

    @property
    def runtime_name(self) -> str:
        """The runtime the first batch chose ("torch" or "onnxruntime")."""
        return runtime_of(self.fast) if self.fast is not None else self.runtime

    def describe(self) -> str:
        return describe_runtime(self.fast) if self.fast is not None else f"runtime {self.runtime}"


def first_batch_runtime(runtime: str, device: str | torch.device, *, multiscale: bool = False
                        ) -> Callable[[nn.Module], FirstBatch]:
    """What evaluate_checkpoint wraps a loaded model with for `--runtime`: the runtime checked
    against the device; the multi-scale test feeds images of several sizes, so it runs on
    torch."""
    runtime = check_runtime(runtime, device)
    if multiscale and runtime == "onnxruntime":
        raise UserError("the multi-scale test feeds whole images of several sizes; the "
                        "onnxruntime runtime takes one: use --runtime torch")
    runtime = "torch" if multiscale else runtime
    return lambda model: FirstBatch(model, runtime, compile=False)

"""Multiply-accumulates (MACs) and parameters: reslab's one cost counter.

The paper's "FLOPs" are multiply-adds (Table 1: 3.6e9 for resnet34, 3.8e9 for resnet50), counted
over conv and fc layers; BN, ReLU, pooling and the shortcut additions are not counted. The counter
reads shapes from forward hooks, so it works on any device, the "meta" device included (no memory
and no arithmetic: the CLI uses it to profile resnet152 instantly).

Stages follow Table 1's rows: "stem" (conv1, bn1, max pool), "layer1".."layerN", "head" (avg
pool, fc).
"""
from __future__ import annotations

import re
from collections.abc import Callable, Iterable, Iterator
from contextlib import contextmanager
from dataclasses import dataclass

import torch
from torch import nn

from ..errors import UserError

Shape = tuple[int, ...]
Hook = tuple[nn.Module, str, Callable]   # (module, "pre" | "post", hook function)


class InputTooSmall(UserError):
    """The input runs out of pixels before the net's last downsampling layer."""

    def __init__(self, shape: Shape, reason: str) -> None:
        super().__init__(f"input {'x'.join(map(str, shape))} is too small for this model: "
                         f"{reason}")
        self.shape, self.reason = shape, reason


def layer_macs(module: nn.Module, output: torch.Tensor) -> int:
    """MACs of one conv or fc call, from its output: every output element costs one
    multiply-add per weight it sees (in_channels/groups * kh * kw, or in_features)."""
    if isinstance(module, nn.Conv2d):
        kh, kw = module.kernel_size
        return output.numel() * (module.in_channels // module.groups) * kh * kw
    if isinstance(module, nn.Linear):
        return output.numel() * module.in_features   # batch * in * out
    return 0


def own_params(module: nn.Module) -> int:
    return sum(p.numel() for p in module.parameters(recurse=False))


def stage_of(name: str) -> str:
    """Table 1 row of a module or parameter name: "stem", "layerK" or "head"."""
    top = name.split(".")[0]
    if re.fullmatch(r"layer\d+", top):
        return top
    return "head" if top in ("avgpool", "fc") else "stem"


def _stride(module: nn.Module) -> int:
    """The stride of a conv or pool (1 for anything else); ResNets stride H and W alike."""
    if not isinstance(module, (nn.Conv2d, nn.MaxPool2d)):
        return 1
    return module.stride if isinstance(module.stride, int) else module.stride[0]


def output_stride(model: nn.Module) -> int:
    """How much the main path shrinks the map (32 for the ImageNet stem, 4 for CIFAR): the
    product of the strides outside the shortcuts, which run in parallel with the main path."""
    stride = 1
    for name, m in model.named_modules():
        if "downsample" not in name:
            stride *= _stride(m)
    return stride


@contextmanager
def hooked(hooks: Iterable[Hook]) -> Iterator[None]:
    """Registers forward (pre-)hooks for the duration of the block, then removes them."""
    handles = []
    try:
        for module, when, fn in hooks:
            register = (module.register_forward_pre_hook if when == "pre"
                        else module.register_forward_hook)
            handles.append(register(fn))
        yield
    finally:
        for h in handles:
            h.remove()


def _size_guard(model: nn.Module, shape: Shape) -> list[Hook]:
    """Pre-hooks failing when a strided layer gets a map smaller than its stride.

    In eval mode the forward does not fail there (padding keeps a 1x1 map alive), but the
    stage no longer halves the map, so the architecture of Table 1 is gone: call it too small.
    """
    need = output_stride(model)

    def guard(name: str, stride: int) -> Callable:
        def check(module: nn.Module, args: tuple) -> None:
            h, w = args[0].shape[-2:]
            if min(h, w) < stride:
                raise InputTooSmall(shape, f"{name} (stride {stride}) gets a {h}x{w} map; "
                                    f"the net downsamples by {need}, so H and W must be at "
                                    f"least {need}")
        return check

    return [(m, "pre", guard(name, _stride(m))) for name, m in model.named_modules()
            if _stride(m) > 1]


def run_forward(model: nn.Module, shape: Shape, hooks: Iterable[Hook] = ()) -> torch.Tensor:
    """One eval-mode, no-grad forward of a zeros input of `shape` with `hooks` attached.

    Eval mode: BN running statistics stay untouched and batch 1 works at 1x1 maps. The model's
    train/eval mode is restored afterwards. Raises InputTooSmall (a UserError).
    """
    param = next(model.parameters())
    x = torch.zeros(shape, device=param.device, dtype=param.dtype)
    was_training = model.training
    model.eval()
    try:
        with torch.no_grad(), hooked([*_size_guard(model, shape), *hooks]):
            return model(x)
    finally:
        model.train(was_training)


@dataclass(frozen=True)
class LayerCost:
    """One conv or fc call, in execution order."""

    name: str
    macs: int
    params: int
    output_shape: Shape
    module: nn.Module


@dataclass(frozen=True)
class StageCost:
    """One row of Table 1: its parameters, MACs, output shape and its conv/fc layers."""

    name: str
    params: int
    macs: int
    output_shape: Shape
    layers: tuple[LayerCost, ...]


@dataclass(frozen=True)
class Profile:
    """Costs of one forward: per layer and per stage (the stages sum to the totals)."""

    input_shape: Shape
    layers: tuple[LayerCost, ...]
    stages: tuple[StageCost, ...]

    @property
    def macs(self) -> int:
        return sum(s.macs for s in self.stages)

    @property
    def params(self) -> int:
        return sum(s.params for s in self.stages)


def profile(model: nn.Module, shape: Shape) -> Profile:
    """Counts MACs per conv/fc layer and aggregates MACs and parameters per stage."""
    layers: list[LayerCost] = []
    outputs: dict[str, Shape] = {}   # stage -> output of its last top-level module to run

    def count(name: str) -> Callable:
        def hook(module: nn.Module, args: tuple, out: torch.Tensor) -> None:
            layers.append(LayerCost(name, layer_macs(module, out), own_params(module),
                                    tuple(out.shape), module))
        return hook

    def record(name: str) -> Callable:
        def hook(module: nn.Module, args: tuple, out: torch.Tensor) -> None:
            outputs[stage_of(name)] = tuple(out.shape)
        return hook

    hooks: list[Hook] = [(m, "post", count(n)) for n, m in model.named_modules()
                         if isinstance(m, (nn.Conv2d, nn.Linear))]
    hooks += [(m, "post", record(n)) for n, m in model.named_children()]
    run_forward(model, shape, hooks)
    params: dict[str, int] = {}
    for name, p in model.named_parameters():
        params[stage_of(name)] = params.get(stage_of(name), 0) + p.numel()
    stages = []
    for stage, out_shape in outputs.items():   # dicts keep execution order
        mine = tuple(c for c in layers if stage_of(c.name) == stage)
        stages.append(StageCost(stage, params.get(stage, 0), sum(c.macs for c in mine),
                                out_shape, mine))
    return Profile(tuple(shape), tuple(layers), tuple(stages))


def count_macs(model: nn.Module, shape: Shape) -> int:
    """Total MACs (conv + fc) of one forward at `shape`, e.g. 4.089e9 for resnet50 at
    1x3x224x224 (3.858e9 with the stride on the first 1x1 conv, as in the paper)."""
    return profile(model, shape).macs

"""Multiply-accumulates (MACs) and parameters: reslab's one cost counter.

The paper's "FLOPs" are multiply-adds (Table 1: 3.6e9 for resnet34, 3.8e9 for resnet50), counted
over conv and fc layers; BN, ReLU, pooling and the shortcut additions are not counted. The counter
reads shapes from forward hooks, so it works on any device, the "meta" device included (no memory
and no arithmetic: the CLI uses it to profile resnet152 instantly).

Stages are Table 1's rows: "stem" (conv1, bn1, max pool), "layer1".."layerN", "head" (avg
pool, fc); each `StageCost` carries the row's layout too, which analysis/summary.py prints.

The "MACs per 3x3 layer" of a stage shows the design rule of section 3.3: "if the feature map
size is halved, the number of filters is doubled so as to preserve the time complexity per
layer" (docs/notes.md, "Why channels double when the resolution halves"), so a 3x3 layer costs
the same in every stage.
"""
from __future__ import annotations

import re
from collections import Counter
from collections.abc import Callable, Iterable, Iterator, Sequence
from contextlib import contextmanager
from dataclasses import dataclass
from typing import Any

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
    if top == "transitions":  # a pooled net's transitions.i opens stage layer{i + 1}
        return f"layer{int(name.split('.')[1]) + 1}"
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
    """One row of Table 1: its parameters, MACs, output shape, conv/fc layers and layout.
    blocks is 0 for the stem and the head."""

    name: str                 # "stem", "layer1", ..., "head"
    params: int
    macs: int
    output_shape: Shape
    layers: tuple[LayerCost, ...]
    blocks: int = 0
    block: str = ""           # e.g. "[1x1, 64; 3x3, 64; 1x1, 256] x3"

    @property
    def paper_name(self) -> str:
        """Table 1's "layer name": conv1, conv2_x, ..., fc."""
        if self.name.startswith("layer"):
            return f"conv{int(self.name[5:]) + 1}_x"
        return "conv1" if self.name == "stem" else "fc"

    @property
    def macs_per_3x3(self) -> int | None:
        """The most common MACs of one main-path 3x3 conv in a layerK stage (None elsewhere)."""
        return _typical_3x3(self.layers) if self.name.startswith("layer") else None

    def to_json(self) -> dict[str, Any]:
        return {"name": self.name, "paper_name": self.paper_name,
                "output_shape": list(self.output_shape), "blocks": self.blocks,
                "block": self.block, "params": self.params, "macs": self.macs,
                "macs_per_3x3": self.macs_per_3x3}


@dataclass(frozen=True)
class Profile:
    """Costs of one forward: per layer and per stage (the stages sum to the totals): the
    paper's Table 1 for a model at one input."""

    input_shape: Shape
    layers: tuple[LayerCost, ...]
    stages: tuple[StageCost, ...]

    @property
    def macs(self) -> int:
        return sum(s.macs for s in self.stages)

    @property
    def params(self) -> int:
        return sum(s.params for s in self.stages)

    @property
    def blocks(self) -> int:
        return sum(s.blocks for s in self.stages)

    @property
    def level(self) -> bool:
        """True when a 3x3 layer costs the same in every stage (section 3.3)."""
        return len({s.macs_per_3x3 for s in self.stages if s.macs_per_3x3 is not None}) == 1

    def to_json(self) -> dict[str, Any]:
        return {"input_shape": list(self.input_shape), "params": self.params,
                "macs": self.macs, "blocks": self.blocks, "level_3x3_cost": self.level,
                "stages": [s.to_json() for s in self.stages]}


def _typical_3x3(layers: Sequence[LayerCost]) -> int | None:
    """MACs of the stage's usual 3x3 layer: the first one of a stage may read half the channels
    (basic blocks), so take the most common value rather than the first or the mean."""
    costs = [c.macs for c in layers if "downsample" not in c.name
             and getattr(c.module, "kernel_size", None) == (3, 3)]
    return Counter(costs).most_common(1)[0][0] if costs else None


def _conv_text(conv: nn.Conv2d) -> str:
    kh, kw = conv.kernel_size
    return f"{kh}x{kw}, {conv.out_channels}"


def _layout(model: nn.Module, name: str) -> tuple[str, int]:
    """(layout, number of blocks) of a stage in Table 1's notation: "[3x3, 64; 3x3, 64] x2"."""
    if name == "stem":
        conv = model.conv1
        text = f"{_conv_text(conv)}, stride {conv.stride[0]}"
        pool = getattr(model, "maxpool", None)
        if isinstance(pool, nn.MaxPool2d):
            text += f"; {pool.kernel_size}x{pool.kernel_size} max pool, stride {pool.stride}"
        return text, 0
    if name == "head":
        pool = "max" if isinstance(model.avgpool, nn.AdaptiveMaxPool2d) else "avg"
        return f"{pool} pool, {model.fc.out_features}-d fc", 0
    stage = getattr(model, name)
    entry = ""
    if getattr(model, "transitions", None):
        t = model.transitions[int(name[len("layer"):]) - 1]
        entry = f"{_conv_text(t.conv)}; {t.pool.kernel_size}x{t.pool.kernel_size} max pool"
        if not len(stage):
            return entry, 0
        entry += "; "
    # The main path's convs are the block's direct children; the projection sits in downsample.
    convs = [m for m in stage[0].children() if isinstance(m, nn.Conv2d)]
    return f"{entry}[{'; '.join(_conv_text(c) for c in convs)}] x{len(stage)}", len(stage)


def profile(model: nn.Module, shape: Shape) -> Profile:
    """Counts MACs per conv/fc layer and aggregates MACs and parameters per stage, with each
    stage's layout: Table 1 for `model` (a reslab ResNet) at input `shape`, e.g.
    (1, 3, 224, 224)."""
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
        layout, blocks = _layout(model, stage)
        stages.append(StageCost(stage, params.get(stage, 0), sum(c.macs for c in mine),
                                out_shape, mine, blocks, layout))
    return Profile(tuple(shape), tuple(layers), tuple(stages))


def count_macs(model: nn.Module, shape: Shape) -> int:
    """Total MACs (conv + fc) of one forward at `shape`, e.g. 4.089e9 for resnet50 at
    1x3x224x224 (3.858e9 with the stride on the first 1x1 conv, as in the paper)."""
    return profile(model, shape).macs

"""The layer-by-layer trace of the study notes (docs/notes.md, "The layer-by-layer trace"; a
copy is tests/data/seed_trace_resnet50.txt): every weighted layer of the main path numbered
1..depth with its module and output shape, so that resnet50 shows its 50 layers (Table 1), plus
the max-pool, the shortcut projections ("downsample"), the stage separators, the average pool
and the flatten before the fc layer.

The rows come from forward hooks in execution order, so the trace shows what the forward really
does (e.g. where the stride-2 sits) rather than a re-implementation of it.
"""
from __future__ import annotations

import itertools
import re
from collections.abc import Callable
from dataclasses import dataclass

import torch
from torch import nn

from .macs import Hook, Shape, run_forward

SEPARATOR_DASHES = 20   # "-------------------- layer 1 --------------------", as the notes
END_LINE = "-" * 49     # the notes close each stage with a line as long as its separator


@dataclass(frozen=True)
class TraceRow:
    """One event of the forward.

    kind: "input", "conv" (stem), "1x1 conv", "3x3 conv", "fc", "maxpool", "downsample",
    "avgpool", "flatten", "stage" (a stage starts) or "end" (it ends).
    index: the weighted-layer number (conv or fc on the main path), else None.
    module: the module as PyTorch prints it, where the notes print it (weighted layers, maxpool).
    """

    kind: str
    index: int | None = None
    module: str | None = None
    shape: Shape | None = None
    name: str = ""


def _role(name: str, module: nn.Module) -> str | None:
    """Which trace row a module produces, by torchvision's module names; None: no row."""
    if name.endswith("downsample"):
        return "downsample"
    if ".downsample" in name:
        return None   # the projection's conv: shown as one "downsample" line, not numbered
    if isinstance(module, nn.Conv2d):
        kh, kw = module.kernel_size
        return "conv" if "." not in name else f"{kh}x{kw} conv"
    if isinstance(module, nn.Linear):
        return "fc"
    if re.fullmatch(r"layer\d+", name):
        return "stage"
    if re.fullmatch(r"transitions\.\d+", name):
        return "transition"   # a pooled net's stage starts with it (models.blocks.Transition)
    if re.fullmatch(r"transitions\.\d+\.pool", name):
        return "maxpool"
    return name if name in ("maxpool", "avgpool") else None


def trace(model: nn.Module, shape: Shape) -> list[TraceRow]:
    """The seed-style trace of one forward of a zeros input of `shape` (eval mode)."""
    rows = [TraceRow("input", shape=tuple(shape), name="input")]
    counter = itertools.count(1)   # numbers the weighted layers as they run

    def post(name: str, kind: str) -> Callable:
        def hook(module: nn.Module, args: tuple, out: torch.Tensor) -> None:
            weighted = kind in ("conv", "fc") or kind.endswith(" conv")
            shows_module = weighted or kind == "maxpool"
            rows.append(TraceRow(kind, next(counter) if weighted else None,
                                 repr(module) if shows_module else None, tuple(out.shape), name))
        return hook

    def flatten(module: nn.Module, args: tuple) -> None:
        # The head flattens with torch.flatten, not a module: the fc's input is its output.
        rows.append(TraceRow("flatten", shape=tuple(args[0].shape), name="flatten"))

    def stage(name: str, start: bool) -> Callable:
        def hook(module: nn.Module, *_: object) -> None:
            rows.append(TraceRow("stage" if start else "end", name=name))
        return hook

    hooks: list[Hook] = []
    pooled = bool(getattr(model, "transitions", None))
    for name, module in model.named_modules():
        role = _role(name, module)
        if role == "stage":
            if not pooled:  # else the stage's separator comes before its transition
                hooks.append((module, "pre", stage(name, True)))
            hooks.append((module, "post", stage(name, False)))
        elif role == "transition":
            hooks.append((module, "pre", stage(f"layer{int(name.split('.')[1]) + 1}", True)))
        elif role is not None:
            if role == "fc":
                hooks.append((module, "pre", flatten))
            hooks.append((module, "post", post(name, role)))
    run_forward(model, shape, hooks)
    return rows


def _shape_text(shape: Shape) -> str:
    return repr(torch.Size(shape))   # "torch.Size([1, 64, 56, 56])", as the notes print it


def render_trace(rows: list[TraceRow]) -> str:
    """The trace as the notes print it: "kind : module", then "layer idx K : shape"."""
    lines = []
    for row in rows:
        if row.kind == "stage":
            dashes = "-" * SEPARATOR_DASHES
            lines.append(f"{dashes} layer {row.name.removeprefix('layer')} {dashes}")
        elif row.kind == "end":
            lines.append(END_LINE)
        else:
            if row.module is not None:
                lines.append(f"{row.kind} : {row.module}")
            label = f"layer idx {row.index}" if row.index is not None else row.kind
            lines.append(f"{label} : {_shape_text(row.shape)}")
    return "\n".join(lines)

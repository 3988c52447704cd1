"""The paper's Table 1 as a view of a built model: per stage its output shape, blocks, block
layout, parameters and MACs, from one hooked forward (see macs.py).

The "MACs per 3x3 layer" column shows the design rule of section 3.3: "if the feature map size is
halved, the number of filters is doubled so as to preserve the time complexity per layer"
(docs/notes.md, "Why channels double when the resolution halves"), so a 3x3 layer costs the same
in every stage.
"""
from __future__ import annotations

from collections import Counter
from collections.abc import Sequence
from dataclasses import asdict, dataclass

from torch import nn

from .macs import LayerCost, Shape, StageCost, profile


@dataclass(frozen=True)
class StageRow:
    """One row of Table 1. blocks is 0 for the stem and the head."""

    name: str                 # "stem", "layer1", ..., "head"
    paper_name: str           # Table 1's "layer name": conv1, conv2_x, ..., fc
    output_shape: Shape
    blocks: int
    block: str                # e.g. "[1x1, 64; 3x3, 64; 1x1, 256] x3"
    params: int
    macs: int
    macs_per_3x3: int | None  # the most common MACs of one main-path 3x3 conv in the stage


@dataclass(frozen=True)
class Summary:
    input_shape: Shape
    stages: tuple[StageRow, ...]

    @property
    def params(self) -> int:
        return sum(s.params for s in self.stages)

    @property
    def macs(self) -> int:
        return sum(s.macs for s in self.stages)

    @property
    def blocks(self) -> int:
        return sum(s.blocks for s in self.stages)

    @property
    def level(self) -> bool:
        """True when a 3x3 layer costs the same in every stage (section 3.3)."""
        return len({s.macs_per_3x3 for s in self.stages if s.macs_per_3x3 is not None}) == 1

    def to_dict(self) -> dict:
        return {"input_shape": list(self.input_shape), "params": self.params,
                "macs": self.macs, "blocks": self.blocks, "level_3x3_cost": self.level,
                "stages": [{**asdict(s), "output_shape": list(s.output_shape)}
                           for s in self.stages]}


def _conv_text(conv: nn.Conv2d) -> str:
    kh, kw = conv.kernel_size
    return f"{kh}x{kw}, {conv.out_channels}"


def _describe_stage(model: nn.Module, name: str) -> tuple[str, int]:
    """(layout, number of blocks) in Table 1's notation: "[3x3, 64; 3x3, 64] x2"."""
    if name == "stem":
        conv = model.conv1
        text = f"{_conv_text(conv)}, stride {conv.stride[0]}"
        pool = getattr(model, "maxpool", None)
        if isinstance(pool, nn.MaxPool2d):
            text += f"; {pool.kernel_size}x{pool.kernel_size} max pool, stride {pool.stride}"
        return text, 0
    if name == "head":
        return f"avg pool, {model.fc.out_features}-d fc", 0
    stage = getattr(model, name)
    first = stage[0]
    # The main path's convs are the block's direct children; the projection sits in downsample.
    convs = [m for m in first.children() if isinstance(m, nn.Conv2d)]
    return f"[{'; '.join(_conv_text(c) for c in convs)}] x{len(stage)}", len(stage)


def _paper_name(name: str) -> str:
    if name.startswith("layer"):
        return f"conv{int(name[5:]) + 1}_x"
    return "conv1" if name == "stem" else "fc"


def _typical_3x3(layers: Sequence[LayerCost]) -> int | None:
    """MACs of the stage's usual 3x3 layer: the first one of a stage may read half the channels
    (basic blocks), so take the most common value rather than the first or the mean."""
    costs = [c.macs for c in layers if "downsample" not in c.name
             and getattr(c.module, "kernel_size", None) == (3, 3)]
    return Counter(costs).most_common(1)[0][0] if costs else None


def _row(model: nn.Module, stage: StageCost) -> StageRow:
    layout, blocks = _describe_stage(model, stage.name)
    per_3x3 = _typical_3x3(stage.layers) if stage.name.startswith("layer") else None
    return StageRow(stage.name, _paper_name(stage.name), stage.output_shape, blocks, layout,
                    stage.params, stage.macs, per_3x3)


def summarize(model: nn.Module, shape: Shape) -> Summary:
    """Table 1 for `model` at input `shape` (e.g. (1, 3, 224, 224)); runs one forward."""
    prof = profile(model, shape)
    return Summary(tuple(shape), tuple(_row(model, s) for s in prof.stages))


def format_macs(n: int) -> str:
    """4089184256 -> "4.089G" (the paper's unit), 40551040 -> "40.6M"."""
    for unit, scale, digits in (("G", 1e9, 3), ("M", 1e6, 1), ("K", 1e3, 1)):
        if n >= scale:
            return f"{n / scale:.{digits}f}{unit}"
    return str(n)


def format_shape(shape: Shape) -> str:
    return "x".join(map(str, shape))


def format_table(headers: Sequence[str], rows: Sequence[Sequence[str]],
                 right: Sequence[int] = ()) -> str:
    """A plain-text table with two spaces between columns; columns in `right` right-aligned."""
    widths = [max(len(str(r[i])) for r in [headers, *rows]) for i in range(len(headers))]

    def line(cells: Sequence[str]) -> str:
        return "  ".join(str(c).rjust(w) if i in right else str(c).ljust(w)
                         for i, (c, w) in enumerate(zip(cells, widths))).rstrip()

    return "\n".join([line(headers), line(["-" * w for w in widths]), *map(line, rows)])


def render_summary(summary: Summary, title: str | None = None) -> str:
    """Table 1 as text, with a total row and a note on the per-3x3-layer cost."""
    headers = ["stage", "paper", "output", "blocks", "layout", "params", "MACs", "MACs/3x3"]
    rows = [[s.name, s.paper_name, format_shape(s.output_shape), str(s.blocks or "-"), s.block,
             f"{s.params:,}", format_macs(s.macs),
             format_macs(s.macs_per_3x3) if s.macs_per_3x3 is not None else "-"]
            for s in summary.stages]
    rows.append(["total", "", "", str(summary.blocks), "", f"{summary.params:,}",
                 format_macs(summary.macs), ""])
    per = [format_macs(s.macs_per_3x3) for s in summary.stages if s.macs_per_3x3 is not None]
    if summary.level:
        note = (f"MACs/3x3: one 3x3 layer costs {per[0]} in every stage: the filters double as "
                f"the map halves (section 3.3).")
    else:
        note = (f"MACs/3x3: one 3x3 layer costs {', '.join(per)} by stage: not level at this "
                f"input (section 3.3 keeps it level when every stage halves the map exactly).")
    parts = [title] if title else []
    parts += [format_table(headers, rows, right=(3, 5, 6, 7)),
              f"MACs: multiply-adds of conv and fc layers ({summary.macs:,} in total).", note]
    return "\n".join(parts)

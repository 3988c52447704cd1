"""grow() applied to a weights file: a trained net (run directory or weights file) grown into a
deeper one that computes the same function, written with the shallow net's record and checked
from the written file (what `reslab grow` runs; the construction itself is
reslab.models.surgery.grow)."""
from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

import torch

from ..io import regular_file
from ..models.surgery import grow, infer_arch
from .checkpoint import Checkpoint, as_checkpoint, load_checkpoint
from .record import save_weights


@dataclass(frozen=True)
class Grown:
    """What grow_checkpoint wrote: the architectures, the blocks, and the promise checked."""

    source: str
    target: str
    copied_blocks: int
    added_blocks: int
    max_abs_logit_diff: float   # |shallow(x) - grown(x)| on random inputs, from the written file


def max_logit_gap(a: torch.nn.Module, b: torch.nn.Module, input_size: list[int]) -> float:
    """max |a(x) - b(x)| over two random inputs: the promise, checked on the written weights."""
    # Fully convolutional: exactness at 256 px or less says the same as at a larger size.
    c, h, w = input_size[0], min(input_size[1], 256), min(input_size[2], 256)
    x = torch.randn(2, c, h, w, generator=torch.Generator().manual_seed(0))
    with torch.no_grad():
        return float((a.eval()(x) - b.eval()(x)).abs().max())


def grow_checkpoint(ckpt: str | Path | Checkpoint, to: str, out: str | Path, *,
                    shortcut: str | None = None, seed: int = 0) -> Grown:
    """grow() a checkpoint (run directory, weights file or a resolved Checkpoint) into `to` and
    save it at `out` with the shallow net's record (classes, preprocessing), noting where it
    was grown from and the seed of the added blocks' draws."""
    checkpoint = as_checkpoint(ckpt)
    ckpt = checkpoint.given
    model, record = checkpoint.load()
    source = infer_arch(model).name
    deeper = grow(model, to, shortcut=shortcut, seed=seed)
    opts = model.block_options
    kwargs = {**record.kwargs, "num_classes": model.num_classes,
              "in_chans": model.conv1.in_channels, "shortcut": opts["shortcut"],
              "stride_in": opts["stride_in"]}
    kwargs.pop("zero_init_residual", None)  # an init option; the weights are given
    grown = record.replace(architecture=to, kwargs=kwargs, extra={
        **record.extra, "grown_from": {"architecture": source, "checkpoint": Path(ckpt).name,
                                      "seed": seed}})
    save_weights(out, deeper, grown)
    written, _ = load_checkpoint(regular_file(out, "written checkpoint"))
    gap = max_logit_gap(model, written, list(record.preprocess.input_size))
    return Grown(source, to, len(model.blocks()), len(deeper.blocks()) - len(model.blocks()), gap)

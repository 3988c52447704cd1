"""Layer responses, section 4.2 "Analysis of Layer Responses" and Fig. 7.

"The responses are the outputs of each 3x3 layer, after BN and before other nonlinearity
(ReLU/addition)." For a ResNet the response of a block's last 3x3 layer is its residual function
F(x); small responses mean the residual functions stay close to zero, i.e. the identity
preconditioning of section 3.1 is reasonable (docs/notes.md, "What the layer responses show").
"""
from __future__ import annotations

import hashlib
import json
import math
from collections.abc import Iterable, Iterator, Sequence
from pathlib import Path
from typing import TYPE_CHECKING, Any

import torch
from torch import nn

from ..engine.rundir import RunDir
from ..errors import UserError
from ..limits import fit_batch
from ..models import BasicBlock, Bottleneck, ResNet

if TYPE_CHECKING:
    from ..weights.checkpoint import Checkpoint
    from ..weights.record import Record


def response_layers(model: ResNet) -> list[nn.BatchNorm2d]:
    """The BN that follows every 3x3 conv, in forward order.

    CIFAR stem conv1/bn1 (3x3; the ImageNet stem's 7x7 is not counted), then per basic block
    bn1 and bn2, per bottleneck only bn2 (its 1x1 layers are not 3x3 layers). resnet20 has 19,
    resnet56 55, resnet110 109: every weighted layer but the fc.
    """
    layers = [model.bn1] if model.conv1.kernel_size == (3, 3) else []
    for block in model.blocks():
        if isinstance(block, Bottleneck):
            layers.append(block.bn2)
        elif isinstance(block, BasicBlock):
            layers += [block.bn1, block.bn2]
        else:
            raise TypeError(f"unknown block type {type(block).__name__}")
    return layers


class _Moments:
    """Streaming mean and variance: each batch's moments (float32, on the model's device, no
    sync) merged in float64 with Chan et al.'s pairwise formula."""

    def __init__(self) -> None:
        self.n: int = 0
        self.mean: torch.Tensor | float = 0.0
        self.m2: torch.Tensor | float = 0.0

    def add(self, t: torch.Tensor) -> None:
        var, mean = torch.var_mean(t.detach().float(), correction=0)
        n, total = t.numel(), self.n + t.numel()
        delta = mean.double() - self.mean
        self.m2 = self.m2 + var.double() * n + delta * delta * (self.n * n / total)
        self.mean = self.mean + delta * (n / total)
        self.n = total

    def std(self) -> float:
        return math.sqrt(float(self.m2) / self.n) if self.n else float("nan")


def _inputs(batches: Iterable[Any]) -> Iterator[torch.Tensor]:
    for b in batches:
        yield b[0] if isinstance(b, (tuple, list)) else b


@torch.no_grad()
def layer_responses(model: ResNet, batches: Iterable[Any]) -> list[float]:
    """The std of each 3x3 layer's response (response_layers order) over all the images.

    Definition: for one layer, the population standard deviation (ddof 0) of every element of
    its BN output, pooled over images, channels and positions, N*C*H*W values; the model is in
    eval mode, so BN uses its running statistics as at test time. batches yield x or (x, y),
    already normalised as in training.
    """
    layers = response_layers(model)
    moments = [_Moments() for _ in layers]
    # The hook reduces immediately: the in-place ReLU after bn1 overwrites the tensor later.
    hooks = [bn.register_forward_hook(lambda _m, _i, out, acc=acc: acc.add(out))
             for bn, acc in zip(layers, moments)]
    was_training = model.training
    model.eval()
    try:
        for x in _inputs(batches):
            model(x)
    finally:
        for h in hooks:
            h.remove()
        model.train(was_training)
    if moments and moments[0].n == 0:
        raise UserError("no images to measure layer responses on")
    return [m.std() for m in moments]


def take_images(batches: Iterable[Any], max_images: int | None) -> Iterator[torch.Tensor]:
    """The inputs of the batches, stopping after max_images (None: all)."""
    left = max_images
    for x in _inputs(batches):
        if left is not None:
            if left <= 0:
                return
            x, left = x[:left], left - len(x[:left])
        yield x


def _path_name(path: Path) -> str:
    # A run directory, or RUN/model.safetensors, is named by the run; other files by their stem.
    if path.is_dir():
        return path.resolve().name
    run = RunDir(path.resolve().parent)
    return run.path.name if path.stem in (run.weights.stem, run.best.stem) else path.stem


def model_labels(paths: list[str], archs: list[str]) -> list[str]:
    """Unique labels: the architectures when they differ, else the run names (-2, -3 if equal)."""
    if len(set(archs)) == len(archs):
        return archs
    seen: dict[str, int] = {}
    labels = []
    for name in (_path_name(Path(p)) for p in paths):
        seen[name] = seen.get(name, 0) + 1
        labels.append(name if seen[name] == 1 else f"{name}-{seen[name]}")
    return labels


class PreparedData:
    """Datasets prepared as each checkpoint was trained (its record's preprocessing), loaded
    once per distinct preparation; on the dataset it was trained on, with the same val
    hold-out."""

    def __init__(self, data: str, data_dir: str | None = None) -> None:
        self.data, self.data_dir, self._cache = data, data_dir, {}

    def for_record(self, record: Record) -> Any:
        from ..data import load_data

        pre = record.preprocess
        options = {**record.split_options(self.data),
                   "image_size": pre.input_size[-1], "normalize": pre.normalize,
                   "crop_fraction": pre.crop_fraction}
        key = json.dumps({**options, **pre.to_json()}, sort_keys=True) + _digest(pre.mean_image)
        if key not in self._cache:
            self._cache[key] = load_data(self.data, data_dir=self.data_dir, augment="none",
                                         stats=pre.stats(), **options)
        return self._cache[key]

    def batches(self, label: str, model: ResNet, record: Record, split: str, batch_size: int,
                device: str) -> Iterator[Any]:
        dataset = self.for_record(record)
        if model.conv1.in_channels != dataset.in_chans:
            raise UserError(f"{label} takes {model.conv1.in_channels}-channel images; "
                            f"{self.data} has {dataset.in_chans}")
        return dataset.eval_batches(split, fit_batch(batch_size, dataset.input_size),
                                    torch.device(device))


def compute_responses(ckpts: Sequence[str | Checkpoint], data: str, *, data_dir: str | None = None,
                      split: str = "test", max_images: int | None = None,
                      batch_size: int = 256, device: str = "cpu") -> dict[str, list[float]]:
    """{label: stds in layer order} for each checkpoint on the split of `data` (Fig. 7).

    Each model sees the images prepared as in its training (PreparedData); ckpts: run
    directories, weights files or the Checkpoints the caller resolved."""
    from ..weights.checkpoint import as_checkpoint

    checkpoints = [as_checkpoint(c) for c in ckpts]
    loaded = [c.load(device) for c in checkpoints]
    prepared = PreparedData(data, data_dir)
    out = {}
    labels = model_labels([str(c.given) for c in checkpoints], [r.architecture for _, r in loaded])
    for label, (model, record) in zip(labels, loaded):
        batches = prepared.batches(label, model, record, split, batch_size, device)
        out[label] = layer_responses(model, take_images(batches, max_images))
    return out


@torch.no_grad()
def residual_ratios(model: ResNet, batches: Iterable[Any]) -> list[float]:
    """For each residual block, in forward order: the mean over images of ||F(x)|| / ||x||,
    F(x) the residual branch (up to its last BN) and x what the shortcut adds to it (the
    identity, or its zero-padded/projected form where the shape changes). Small values: the
    block stays close to the identity (docs/notes.md, "What the layer responses show"). Plain
    nets have no shortcut: UserError."""
    if not model.block_options["residual"]:
        raise UserError("a plain net has no shortcut: F(x) / x is defined for ResNets only")
    was_training = model.training
    model.eval()
    sums: list[float] = []
    n = 0
    try:
        for x in _inputs(batches):
            h, ratios = model.forward_stem(x), []
            for _, stage in model.stages():
                for block in stage:
                    branch = block.residual_branch(h)
                    identity = h if block.downsample is None else block.downsample(h)
                    ratios.append(float((branch.flatten(1).norm(dim=1)
                                         / identity.flatten(1).norm(dim=1).clamp_min(1e-12))
                                        .double().sum()))
                    h = block.merge(h, branch)
            sums = [a + b for a, b in zip(sums, ratios)] if sums else ratios
            n += len(x)
    finally:
        model.train(was_training)
    if not n:
        raise UserError("no images to measure the residual functions on")
    return [v / n for v in sums]


def _digest(t: torch.Tensor | None) -> str:
    return "" if t is None else hashlib.sha1(t.numpy().tobytes()).hexdigest()

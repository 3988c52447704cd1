"""In-memory datasets (digits, Fashion-MNIST, CIFAR, synthetic): uint8 tensors copied once to the
training device and augmented there in whole batches."""
from __future__ import annotations

from collections.abc import Iterator

import torch
import torch.nn.functional as F

from .augment import SCALE_AUGMENTS, EpochPlan, imagenet_batch, pad_fill, window_batch
from .base import Batch, Data, Span
from .datasets import Split


class InMemoryData(Data):
    """uint8 tensors, copied once to the training device and augmented there in whole batches."""

    def __init__(self, arrays: dict[str, Split], **kw) -> None:
        super().__init__(splits=tuple(arrays), **kw)
        self._arrays = arrays
        self._device_cache: dict[tuple[str, str], Split] = {}

    def _size(self, split: str) -> int:
        return len(self._arrays[split][1])

    def _labels(self, split: str) -> torch.Tensor:
        return self._arrays[split][1].long().cpu()

    def _on(self, split: str, device: torch.device, pad: int = 0) -> Split:
        """The split on `device` (copied once), images padded by `pad` with the mean colour."""
        key = (split, str(device), pad)
        if key not in self._device_cache:
            x, y = self._arrays[split]
            self._device_cache[key] = (pad_fill(x.to(device), pad, self.normalize.fill),
                                       y.to(device))
        return self._device_cache[key]

    def _train_iter(self, plan: EpochPlan, spans: list[Span],
                    device: torch.device) -> Iterator[Batch]:
        pad = self.pad if self.augment in ("crop-flip", "crop") else 0
        x_all, y_all = self._on("train", device, pad)
        for lo, hi in spans:
            order, params = plan.take(lo, hi)
            idx = order.to(device, non_blocking=True)
            if self.augment in SCALE_AUGMENTS:
                x = imagenet_batch(x_all.index_select(0, idx), params, self.normalize,
                                   policy=self.auto_augment)
            else:
                x = window_batch(x_all, idx, params, pad, self.normalize, self.auto_augment)
            yield x, y_all.index_select(0, idx)

    def _eval_iter(self, split: str, batch_size: int, device: torch.device, rank: int,
                   world_size: int, resize: int | None) -> Iterator[Batch]:
        x_all, y_all = self._on(split, device)
        idx = torch.arange(rank, len(y_all), world_size, device=device)
        for sel in idx.split(batch_size):
            x = x_all.index_select(0, sel)
            if resize is None or tuple(x.shape[-2:]) == (resize, resize):
                yield self.normalize.from_uint8(x), y_all.index_select(0, sel)
                continue
            x = F.interpolate(x.float().div_(255), size=(resize, resize), mode="bilinear",
                              align_corners=False, antialias=resize < min(x.shape[-2:]))
            yield self.normalize(x), y_all.index_select(0, sel)

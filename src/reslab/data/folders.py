"""Image folders: files decoded by DataLoader worker processes (geometry in the workers with PIL
and torchvision.transforms.v2), flips, colour and normalisation batched on the device."""
from __future__ import annotations

from collections.abc import Iterator

import torch
from torch.utils.data import DataLoader, Dataset, Sampler

from ..errors import UserError, warn
from .augment import SCALE_AUGMENTS, EpochPlan, imagenet_batch, pad_fill, window_batch
from .base import Batch, Data, Span
from .scan import FolderSource
from .images import (FOLDER_CROP_FRACTION, eval_geometry, open_image, pil_to_uint8, scale_crop,
                     to_channels, whole_image)
from .normalize import Stats, compute_stats

STATS_SAMPLE = 1000  # images decoded to measure a folder's mean/std: enough for 3 decimals
# A split whose decoded images fit in this many bytes is decoded once and kept: a small folder
# otherwise spends most of each epoch decoding the same files again.
CACHE_BYTES = 512 * 2**20


class FolderDataset(Dataset):
    """Decodes one image file per (index, seed) key into a uint8 (C, size, size) tensor: the
    paper's scale augmentation when `scale_aug` (seeded per example), else evaluation geometry;
    with `whole`, the whole image with its shorter side = size, any aspect ratio (multi-scale).

    A file that fails to decode here (e.g. truncated after a header that the scan accepted) is
    replaced by the next readable one with a warning naming it, so a long run does not die."""

    def __init__(self, items: list[tuple[str, int]], in_chans: int, size: int,
                 crop_fraction: float, scale_aug: bool = False, whole: bool = False,
                 resize: str = "crop") -> None:
        self.items, self.in_chans, self.size = items, in_chans, size
        self.crop_fraction, self.scale_aug, self.whole = crop_fraction, scale_aug, whole
        self.resize = resize

    def __len__(self) -> int:
        return len(self.items)

    def __getitem__(self, key: tuple[int, int]) -> tuple[torch.Tensor, int]:
        index, seed = key
        for attempt in range(min(16, len(self.items))):
            path, label = self.items[(index + attempt) % len(self.items)]
            try:
                img = to_channels(open_image(path), self.in_chans)
            except UserError as exc:
                warn(f"{exc}; using the next image instead")
                continue
            if self.scale_aug:
                img = scale_crop(img, self.size, seed)
            elif self.whole:
                img = whole_image(img, self.size)
            else:
                img = eval_geometry(img, (self.size, self.size), self.crop_fraction,
                                    self.resize)
            return pil_to_uint8(img), label
        raise UserError(f"none of the {min(16, len(self.items))} images from "
                        f"'{self.items[index][0]}' on could be decoded (truncated or damaged "
                        "files): remove them from the folder")


class _KeyBatches(Sampler):
    """Lists of (index, seed) keys, one list per span of an epoch plan (or of an index list)."""

    def __init__(self, order: torch.Tensor, seeds: torch.Tensor | None, spans: list[Span]) -> None:
        self.order, self.seeds, self.spans = order, seeds, spans

    def __len__(self) -> int:
        return len(self.spans)

    def __iter__(self) -> Iterator[list[tuple[int, int]]]:
        for lo, hi in self.spans:
            seeds = self.seeds[lo:hi].tolist() if self.seeds is not None else [0] * (hi - lo)
            yield list(zip(self.order[lo:hi].tolist(), seeds))


def collate_runs(samples: list[tuple[torch.Tensor, int]]) -> list[Batch]:
    """Whole images of several shapes cannot be stacked: one (x, y) per run of consecutive
    samples of the same shape, in order (so the examples' order and labels stay aligned)."""
    runs: list[Batch] = []
    start = 0
    for i in range(1, len(samples) + 1):
        if i == len(samples) or samples[i][0].shape != samples[start][0].shape:
            part = samples[start:i]
            runs.append((torch.stack([x for x, _ in part]),
                         torch.tensor([label for _, label in part])))
            start = i
    return runs


def decode_batches(ds: FolderDataset, sampler: _KeyBatches, device: torch.device,
                   workers: int) -> Iterator[Batch]:
    """uint8 (x, y) batches of `ds` in the sampler's order, decoded by `workers` processes.
    With ds.whole, a sampler batch comes as several (x, y), one per run of one image shape."""
    # A private generator: DataLoader would otherwise draw its workers' base seed from the
    # global RNG and shift it (our randomness comes from the per-example seeds instead).
    loader = DataLoader(ds, batch_sampler=sampler, num_workers=workers,
                        pin_memory=device.type == "cuda", generator=torch.Generator(),
                        collate_fn=collate_runs if ds.whole else None)
    try:
        for batch in loader:
            for x, y in batch if ds.whole else [batch]:
                yield x.to(device, non_blocking=True), y.to(device, non_blocking=True)
    except UserError as e:
        raise UserError(_worker_message(str(e))) from None


def _worker_message(text: str) -> str:
    """The error a DataLoader worker raised, without the "Caught UserError in DataLoader
    worker process 0" frame and traceback that the loader wraps it in."""
    prefix = f"{UserError.__module__}.{UserError.__qualname__}: "
    lines = [ln for ln in text.splitlines() if ln.startswith(prefix)]
    return lines[-1][len(prefix):] if lines else text


class KeptImages:
    """A split's images at one evaluation geometry, stored as batches of it are decoded. The
    geometry does not depend on the epoch, so once every image is in, the kept pixels are what
    a fresh decode would give."""

    def __init__(self, n: int, shape: tuple[int, int, int]) -> None:
        self.x = torch.empty((n, *shape), dtype=torch.uint8)
        self.y = torch.empty(n, dtype=torch.int64)
        self.filled = torch.zeros(n, dtype=torch.bool)
        self.complete = False

    def store(self, idx: torch.Tensor, x: torch.Tensor, y: torch.Tensor) -> None:
        self.x[idx], self.y[idx], self.filled[idx] = x.cpu(), y.cpu(), True
        self.complete = bool(self.filled.all())


class FolderData(Data):
    """Image files decoded by `workers` DataLoader processes; geometry in the workers (PIL +
    torchvision.transforms.v2), flips, colour and normalisation batched on the device."""

    def __init__(self, items: dict[str, list[tuple[str, int]]], workers: int,
                 resize: str = "crop", **kw) -> None:
        super().__init__(splits=tuple(items), **kw)
        self._items, self.workers = items, workers
        self.resize = resize  # how an image becomes the square input (images.eval_geometry)
        # (split's file list, side, crop fraction) -> its decoded images, where they fit
        self._kept: dict[tuple[int, int, float], KeptImages | None] = {}

    def _size(self, split: str) -> int:
        return len(self._items[split])

    def _labels(self, split: str) -> torch.Tensor:
        return torch.tensor([label for _, label in self._items[split]], dtype=torch.int64)

    @property
    def same_val_test(self) -> bool:
        return "val" in self._items and self._items.get("test") is self._items["val"]

    def decode(self, items: list[tuple[str, int]], sampler: _KeyBatches, device: torch.device, *,
               size: int | None = None, crop_fraction: float | None = None,
               scale_aug: bool = False, whole: bool = False) -> Iterator[Batch]:
        ds = FolderDataset(items, self.in_chans, size or self.input_size[-1],
                           self.crop_fraction if crop_fraction is None else crop_fraction,
                           scale_aug, whole, self.resize)
        return decode_batches(ds, sampler, device, self.workers)

    def _kept_images(self, split: str) -> KeptImages | None:
        """split's kept images at input_size (filled as they are decoded), or None when the
        split is too large to keep."""
        side = self.input_size[-1]
        key = (id(self._items[split]), side, self.crop_fraction)  # val and test may be one list
        if key not in self._kept:
            n = self._size(split)
            self._kept[key] = (KeptImages(n, (self.in_chans, side, side))
                               if n * self.in_chans * side * side <= CACHE_BYTES else None)
        return self._kept[key]

    def _batches(self, split: str, sampler: _KeyBatches, device: torch.device) -> Iterator[Batch]:
        """The sampler's uint8 batches of split at the evaluation geometry: from the kept
        images once every image of the split has been decoded, else decoded (and kept)."""
        kept = self._kept_images(split)
        if kept is not None and kept.complete:
            for lo, hi in sampler.spans:
                idx = sampler.order[lo:hi]
                yield kept.x[idx].to(device), kept.y[idx].to(device)
            return
        for (x, y), (lo, hi) in zip(self.decode(self._items[split], sampler, device),
                                    sampler.spans):
            if kept is not None:
                kept.store(sampler.order[lo:hi], x, y)
            yield x, y

    def _train_iter(self, plan: EpochPlan, spans: list[Span],
                    device: torch.device) -> Iterator[Batch]:
        scale_aug = self.augment in SCALE_AUGMENTS
        pad = self.pad if self.augment in ("crop-flip", "crop") else 0
        sampler = _KeyBatches(plan.order, plan.params.get("seed"), spans)
        batches = (self.decode(self._items["train"], sampler, device, scale_aug=True)
                   if scale_aug else self._batches("train", sampler, device))
        for (x, y), (lo, hi) in zip(batches, spans):
            _, params = plan.take(lo, hi)
            if scale_aug:
                yield imagenet_batch(x, params, self.normalize, geometry_done=True,
                                     policy=self.auto_augment), y
            else:
                idx = torch.arange(len(x), device=device)
                yield window_batch(pad_fill(x, pad, self.normalize.fill), idx, params, pad,
                                   self.normalize, self.auto_augment), y

    def _eval_iter(self, split: str, batch_size: int, device: torch.device, rank: int,
                   world_size: int, resize: int | None) -> Iterator[Batch]:
        """Shorter side to size/crop_fraction, centre crop; with resize: the whole image, shorter
        side = resize, aspect ratio kept, no crop (the paper's fully-convolutional multi-scale
        test, section 3.4; the 10-crop takes its 256 x 256 centre itself). Images of different
        shapes cannot be stacked: a batch is then split into runs of one shape, in order."""
        order = torch.arange(rank, self._size(split), world_size)
        spans = [(i, min(i + batch_size, len(order))) for i in range(0, len(order), batch_size)]
        sampler = _KeyBatches(order, None, spans)
        batches = (self._batches(split, sampler, device) if resize is None else
                   self.decode(self._items[split], sampler, device, size=resize, whole=True))
        for x, y in batches:
            yield self.normalize.from_uint8(x), y


def folder_stats(src: FolderSource, train: list[tuple[str, int]], size: int, seed: int,
                  normalize: str, workers: int, resize: str = "crop") -> Stats:
    """Statistics from up to STATS_SAMPLE training images, decoded as evaluation decodes them."""
    pick = torch.randperm(len(train), generator=torch.Generator().manual_seed(seed))
    pick = pick[:STATS_SAMPLE]
    spans = [(i, min(i + 64, len(pick))) for i in range(0, len(pick), 64)]
    ds = FolderDataset(train, src.in_chans, size, FOLDER_CROP_FRACTION, resize=resize)
    sample = [x for x, _ in decode_batches(ds, _KeyBatches(pick, None, spans),
                                           torch.device("cpu"), workers)]
    return compute_stats(torch.cat(sample), normalize)

"""`Data`: a dataset's splits as batches for training and evaluation, in memory or from folders.

Batch semantics (shared by both backends):
- `batch_size` in `train_batches` is the global batch; rank r of world_size gets positions
  [r*b/ws, (r+1)*b/ws) of every global batch, so the union of the ranks' shards is exactly the
  single-process batch and the recipe's batch size means the same thing at any world size.
- an epoch is an `EpochPlan` (augment.py): order and augmentation draws from (seed, epoch)
  alone, so resuming at `start_step` replays the uninterrupted run exactly, and skipped batches
  are never decoded or augmented.
"""
from __future__ import annotations

import os
from collections.abc import Iterator, Sequence

import torch
import torch.nn.functional as F
from torch.utils.data import DataLoader, Dataset, Sampler

from ..errors import UserError, unknown, warn
from ..limits import (MAX_DATASET_BYTES, MAX_PAD, MAX_WORKERS, check_image_side,
                      check_int)
from .augment import (AUGMENTS, EpochPlan, epoch_generator, imagenet_batch, pad_fill,
                      plan_epoch, window_batch)
from .normalize import NORMALIZE, Normalizer, Stats, compute_stats
from .datasets import ArraySource, FolderSource, Split, load_source
from .images import (FOLDER_CROP_FRACTION, eval_geometry, open_image, pil_to_uint8, scale_crop,
                     to_channels, whole_image)

STATS_SAMPLE = 1000  # images decoded to measure a folder's mean/std: enough for 3 decimals
Batch = tuple[torch.Tensor, torch.Tensor]
Span = tuple[int, int]


class Data:
    """A loaded dataset (see `load_data`). Public attributes: name, class_names, in_chans,
    input_size (C, H, W), mean/std (per channel, [0, 1] pixel units, from the training split),
    mean_image (the per-pixel mean for normalize="pixel", else None), splits, skipped (unreadable
    files left out), crop_fraction (the evaluation crop geometry, for `images.preprocess`)."""

    def __init__(self, *, name: str, class_names: list[str], input_size: tuple[int, int, int],
                 stats: Stats, splits: tuple[str, ...], augment: str, pad: int,
                 crop_fraction: float, skipped: Sequence[str] = (), held_out: int = 0) -> None:
        self.name, self.class_names = name, list(class_names)
        self.in_chans, self.input_size = input_size[0], tuple(input_size)
        self._stats = stats
        self.normalize = self._normalizer()
        self.splits, self.skipped = splits, list(skipped)
        self.augment, self.pad, self.crop_fraction = augment, pad, crop_fraction
        self.held_out = held_out  # training images held out as "val" (the resolved --val-split)

    @property
    def same_val_test(self) -> bool:
        """Whether "test" is the held-out "val" set under another name (a folder without val/)."""
        return False

    def _normalizer(self) -> Normalizer:
        s = self._stats
        return Normalizer(s.mean_image if s.mean_image is not None else s.mean, s.std)

    @property
    def stats(self) -> Stats:
        """The normalisation statistics every batch is prepared with."""
        return self._stats

    @property
    def mean(self) -> list[float]:
        return self._stats.mean

    @property
    def std(self) -> list[float]:
        return self._stats.std

    @property
    def mean_image(self) -> torch.Tensor | None:
        return self._stats.mean_image

    def __repr__(self) -> str:
        sizes = ", ".join(f"{s}={self.num_examples(s)}" for s in self.splits)
        return f"Data({self.name}, {len(self.class_names)} classes, {self.input_size}, {sizes})"

    def _check_split(self, split: str) -> str:
        if split not in self.splits:
            raise UserError(f"dataset {self.name} has no '{split}' split "
                            f"(splits: {', '.join(self.splits)})")
        return split

    def num_examples(self, split: str) -> int:
        return self._size(self._check_split(split))

    def steps_per_epoch(self, batch_size: int, world_size: int = 1) -> int:
        """Full global batches per epoch (drop_last: every rank takes the same number of steps)."""
        if batch_size < 1 or world_size < 1 or batch_size % world_size:
            raise UserError(f"batch size {batch_size} must be a positive multiple of the "
                            f"world size {world_size}")
        return self.num_examples("train") // batch_size

    def train_batches(self, epoch: int, batch_size: int, device: str | torch.device, *,
                      start_step: int = 0, rank: int = 0, world_size: int = 1,
                      seed: int = 0) -> Iterator[Batch]:
        """This rank's augmented, normalised (x, y) on `device` for steps start_step.. of the
        epoch; a deterministic function of (seed, epoch) that leaves the global RNG alone."""
        steps = self.steps_per_epoch(batch_size, world_size)
        if steps < 1:
            raise UserError(f"batch size {batch_size} is larger than the training set "
                            f"({self.num_examples('train')} images)")
        if not 0 <= rank < world_size or not 0 <= start_step <= steps:
            raise UserError(f"rank {rank} / world size {world_size} / start step {start_step} "
                            f"out of range ({steps} steps per epoch)")
        plan = plan_epoch(self.num_examples("train"), self.augment,
                          epoch_generator(seed, epoch), pad=self.pad)
        share = batch_size // world_size
        spans = [(s * batch_size + rank * share, s * batch_size + (rank + 1) * share)
                 for s in range(start_step, steps)]
        return self._train_iter(plan, spans, torch.device(device))

    def eval_batches(self, split: str, batch_size: int, device: str | torch.device, *,
                     rank: int = 0, world_size: int = 1,
                     resize: int | None = None) -> Iterator[Batch]:
        """Normalised, unaugmented (x, y) of this rank's shard (examples rank::world_size), in
        order. resize: evaluate at resize x resize (paper's multi-scale and 10-crop tests)."""
        self._check_split(split)
        if batch_size < 1 or not 0 <= rank < world_size or (resize is not None and resize < 1):
            raise UserError(f"invalid evaluation batching: batch size {batch_size}, rank {rank},"
                            f" world size {world_size}, resize {resize}")
        return self._eval_iter(split, batch_size, torch.device(device), rank, world_size, resize)

    # Backends implement these three.
    def _size(self, split: str) -> int:
        raise NotImplementedError

    def _train_iter(self, plan: EpochPlan, spans: list[Span],
                    device: torch.device) -> Iterator[Batch]:
        raise NotImplementedError

    def _eval_iter(self, split: str, batch_size: int, device: torch.device, rank: int,
                   world_size: int, resize: int | None) -> Iterator[Batch]:
        raise NotImplementedError


class InMemoryData(Data):
    """uint8 tensors, copied once to the training device and augmented there in whole batches."""

    def __init__(self, arrays: dict[str, Split], **kw) -> None:
        super().__init__(splits=tuple(arrays), **kw)
        self._arrays = arrays
        self._device_cache: dict[tuple[str, str], Split] = {}

    def _size(self, split: str) -> int:
        return len(self._arrays[split][1])

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
            if self.augment == "imagenet":
                x = imagenet_batch(x_all.index_select(0, idx), params, self.normalize)
            else:
                x = window_batch(x_all, idx, params, pad, self.normalize)
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


class FolderDataset(Dataset):
    """Decodes one image file per (index, seed) key into a uint8 (C, size, size) tensor: the
    paper's scale augmentation when `scale_aug` (seeded per example), else evaluation geometry;
    with `whole`, the whole image with its shorter side = size, any aspect ratio (multi-scale).

    A file that fails to decode here (e.g. truncated after a header that the scan accepted) is
    replaced by the next readable one with a warning naming it, so a long run does not die."""

    def __init__(self, items: list[tuple[str, int]], in_chans: int, size: int,
                 crop_fraction: float, scale_aug: bool = False, whole: bool = False) -> None:
        self.items, self.in_chans, self.size = items, in_chans, size
        self.crop_fraction, self.scale_aug, self.whole = crop_fraction, scale_aug, whole

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
                img = eval_geometry(img, (self.size, self.size), self.crop_fraction)
            return pil_to_uint8(img), label
        raise UserError(f"no readable image near '{self.items[index][0]}'")


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
    for batch in loader:
        for x, y in batch if ds.whole else [batch]:
            yield x.to(device, non_blocking=True), y.to(device, non_blocking=True)


class FolderData(Data):
    """Image files decoded by `workers` DataLoader processes; geometry in the workers (PIL +
    torchvision.transforms.v2), flips, colour and normalisation batched on the device."""

    def __init__(self, items: dict[str, list[tuple[str, int]]], workers: int, **kw) -> None:
        super().__init__(splits=tuple(items), **kw)
        self._items, self.workers = items, workers

    def _size(self, split: str) -> int:
        return len(self._items[split])

    @property
    def same_val_test(self) -> bool:
        return "val" in self._items and self._items.get("test") is self._items["val"]

    def decode(self, items: list[tuple[str, int]], sampler: _KeyBatches, device: torch.device, *,
               size: int | None = None, crop_fraction: float | None = None,
               scale_aug: bool = False, whole: bool = False) -> Iterator[Batch]:
        ds = FolderDataset(items, self.in_chans, size or self.input_size[-1],
                           self.crop_fraction if crop_fraction is None else crop_fraction,
                           scale_aug, whole)
        return decode_batches(ds, sampler, device, self.workers)

    def _train_iter(self, plan: EpochPlan, spans: list[Span],
                    device: torch.device) -> Iterator[Batch]:
        scale_aug = self.augment == "imagenet"
        pad = self.pad if self.augment in ("crop-flip", "crop") else 0
        sampler = _KeyBatches(plan.order, plan.params.get("seed"), spans)
        batches = self.decode(self._items["train"], sampler, device, scale_aug=scale_aug)
        for (x, y), (lo, hi) in zip(batches, spans):
            _, params = plan.take(lo, hi)
            if scale_aug:
                yield imagenet_batch(x, params, self.normalize, geometry_done=True), y
            else:
                idx = torch.arange(len(x), device=device)
                yield window_batch(pad_fill(x, pad, self.normalize.fill), idx, params, pad,
                                   self.normalize), y

    def _eval_iter(self, split: str, batch_size: int, device: torch.device, rank: int,
                   world_size: int, resize: int | None) -> Iterator[Batch]:
        """Shorter side to size/crop_fraction, centre crop; with resize: the whole image, shorter
        side = resize, aspect ratio kept, no crop (the paper's fully-convolutional multi-scale
        test, section 3.4; the 10-crop takes its 256 x 256 centre itself). Images of different
        shapes cannot be stacked: a batch is then split into runs of one shape, in order."""
        order = torch.arange(rank, self._size(split), world_size)
        spans = [(i, min(i + batch_size, len(order))) for i in range(0, len(order), batch_size)]
        batches = self.decode(self._items[split], _KeyBatches(order, None, spans), device,
                              size=resize, whole=resize is not None)
        for x, y in batches:
            yield self.normalize.from_uint8(x), y


def hold_out(labels: torch.Tensor, val_split: int, seed: int, name: str
             ) -> tuple[torch.Tensor, torch.Tensor]:
    """(train, val) index tensors, sorted: val_split examples held out, stratified (each class
    keeps its share, largest remainders get the rounding), drawn at random within each class
    from a generator fixed by seed, so the same (labels, val_split, seed) give the same split
    in training, `eval --split val` and `responses` (the paper's 45k/5k CIFAR split, 4.2)."""
    n = len(labels)
    if val_split >= n:
        raise UserError(f"--val-split {val_split} leaves no training images: {name} has {n}")
    g = torch.Generator().manual_seed(seed)
    classes, counts = torch.unique(labels, return_counts=True)
    share = counts.double() * val_split / n
    take = share.floor().long()
    rest = val_split - int(take.sum())
    if rest:  # largest remainders first; ties by class order
        order = torch.argsort(share - take, descending=True, stable=True)
        take[order[:rest]] += 1
    val = []
    for c, k in zip(classes.tolist(), take.tolist()):
        members = torch.nonzero(labels == c).flatten()
        val.append(members[torch.randperm(len(members), generator=g)[:k]])
    val_idx = torch.cat(val).sort().values
    keep = torch.ones(n, dtype=torch.bool)
    keep[val_idx] = False
    return torch.nonzero(keep).flatten(), val_idx


def default_hold_out(labels: torch.Tensor) -> int:
    """Images held out for validation from a folder without val/: 10%, at least one per class
    while every class keeps at least one training image (0 when the folder is too small)."""
    counts = torch.unique(labels, return_counts=True)[1]
    if int(counts.min()) < 2:
        return 0
    return max(len(counts), round(0.1 * len(labels)))


def resize_uint8(x: torch.Tensor, size: int) -> torch.Tensor:
    """Bilinear (antialiased when shrinking) resize of uint8 images to size x size, kept uint8:
    the result is filled in chunks of at most 64 MiB of float pixels, so the peak memory is the
    uint8 result, not four times it."""
    if tuple(x.shape[-2:]) == (size, size):
        return x
    out = torch.empty((len(x), x.shape[1], size, size), dtype=torch.uint8)
    chunk = max(1, 2**24 // (x.shape[1] * size * max(size, *x.shape[-2:])))
    for i in range(0, len(x), chunk):
        part = F.interpolate(x[i:i + chunk].float(), size=(size, size), mode="bilinear",
                             align_corners=False, antialias=size < min(x.shape[-2:]))
        out[i:i + chunk] = part.round_().clamp_(0, 255).to(torch.uint8)
    return out


def _array_data(src: ArraySource, val_split: int, seed: int, image_size: int | None,
                normalize: str, stats: Stats | None, crop_fraction: float | None,
                **kw) -> InMemoryData:
    if image_size:
        n = len(src.train[1]) + (len(src.test[1]) if src.test is not None else 0)
        size = n * src.train[0].shape[1] * image_size ** 2
        if size > MAX_DATASET_BYTES:
            raise UserError(f"image size {image_size} would make {src.name} {size / 2**30:.1f} "
                            f"GiB in memory, more than the {MAX_DATASET_BYTES / 2**30:.0f} GiB "
                            "limit; choose a smaller --image-size")

    def sized(split: Split) -> Split:
        return (resize_uint8(split[0], image_size) if image_size else split[0]), split[1]

    x, y = sized(src.train)
    arrays = {"train": (x, y)}
    if val_split:
        train, val = hold_out(y, val_split, seed, src.name)
        arrays = {"train": (x[train], y[train]), "val": (x[val], y[val])}
    if src.test is not None:
        arrays["test"] = sized(src.test)
    return InMemoryData(arrays, name=src.name, class_names=src.class_names,
                        input_size=tuple(x.shape[1:]), crop_fraction=1.0, held_out=val_split or 0,
                        stats=stats or compute_stats(arrays["train"][0], normalize), **kw)


def _folder_data(src: FolderSource, val_split: int, seed: int, image_size: int | None,
                 normalize: str, workers: int, stats: Stats | None, crop_fraction: float | None,
                 **kw) -> FolderData:
    """Splits: train; val = the held-out images, else PATH/val; test = PATH/val, else the
    held-out images (one held-out set then answers to both names)."""
    items = {"train": src.train}
    labels = torch.tensor([label for _, label in src.train])
    if val_split is None:  # auto: a folder without val/ holds out a validation set
        val_split = default_hold_out(labels) if src.val is None else 0
    if val_split:
        train, val = hold_out(labels, val_split, seed, src.name)
        items = {"train": [src.train[i] for i in train], "val": [src.train[i] for i in val]}
    elif src.val is not None:
        items["val"] = src.val
    if "val" in items:
        items["test"] = src.val if src.val is not None else items["val"]
    size = image_size or 224
    crop = crop_fraction or FOLDER_CROP_FRACTION
    if stats is None:
        stats = _folder_stats(src, items["train"], size, seed, normalize, workers)
    return FolderData(items, workers, name=src.name, class_names=src.class_names,
                      input_size=(src.in_chans, size, size), crop_fraction=crop,
                      stats=stats, skipped=src.skipped, held_out=val_split, **kw)


def _folder_stats(src: FolderSource, train: list[tuple[str, int]], size: int, seed: int,
                  normalize: str, workers: int) -> Stats:
    """Statistics from up to STATS_SAMPLE training images, decoded as evaluation decodes them."""
    pick = torch.randperm(len(train), generator=torch.Generator().manual_seed(seed))
    pick = pick[:STATS_SAMPLE]
    spans = [(i, min(i + 64, len(pick))) for i in range(0, len(pick), 64)]
    ds = FolderDataset(train, src.in_chans, size, FOLDER_CROP_FRACTION)
    sample = [x for x, _ in decode_batches(ds, _KeyBatches(pick, None, spans),
                                           torch.device("cpu"), workers)]
    return compute_stats(torch.cat(sample), normalize)


def available_cpus() -> int:
    """The CPUs this process may run on (the affinity mask, e.g. a container's share)."""
    return len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else (
        os.cpu_count() or 1)


def load_data(spec: str, *, data_dir: str | None = None, val_split: int | None = 0,
              seed: int = 0,
              image_size: int | None = None, normalize: str = "channel",
              augment: str = "crop-flip", pad: int = 4, workers: int = 4,
              stats: Stats | None = None, crop_fraction: float | None = None) -> Data:
    """Loads the dataset a --data spec names (README, Datasets), ready to batch.

    val_split: hold out that many training images as "val" (stratified, seeded); None: 10% of
    an image folder that has no val/ folder, else none. image_size: resize in-memory data
    once at load time / the crop size for folders (default 224). normalize: "channel" (mean/std
    per channel) or "pixel" (the per-pixel mean image and a global std, paper section 4.2).
    augment: "crop-flip" (pad `pad` px, random crop, flip: section 4.2), "flip", "none", or
    "imagenet" (scale augmentation in [256, 480]/224 x size, flip, colour: section 3.4).
    stats, crop_fraction: a checkpoint's preprocessing (reslab.record) to prepare the images
    exactly as for that model, instead of measuring the training split."""
    if normalize not in NORMALIZE:
        raise unknown("normalization", normalize, NORMALIZE)
    if augment not in AUGMENTS:
        raise unknown("augmentation", augment, AUGMENTS)
    if val_split is not None:
        check_int("val_split", val_split, 0, 10**9)
    check_int("pad", pad, 0, MAX_PAD)
    check_int("workers", workers, 0, MAX_WORKERS)
    workers = min(workers, available_cpus())  # more decoders than CPUs only wait
    if image_size is not None:
        check_image_side("image size", image_size)
    src = load_source(spec, data_dir, workers)
    opts = dict(val_split=val_split, seed=seed, image_size=image_size, normalize=normalize,
                augment=augment, pad=pad, stats=stats, crop_fraction=crop_fraction)
    if isinstance(src, FolderSource):
        return _folder_data(src, workers=workers, **opts)
    return _array_data(src, **opts)

"""`Data`: a dataset's splits as batches for training and evaluation (the interface both backends,
memory.py and folders.py, implement).

Batch semantics (shared by both backends):
- `batch_size` in `train_batches` is the global batch; rank r of world_size gets positions
  [r*b/ws, (r+1)*b/ws) of every global batch, so the union of the ranks' shards is exactly the
  single-process batch and the recipe's batch size means the same thing at any world size.
- an epoch is an `EpochPlan` (augment.py): order and augmentation draws from (seed, epoch)
  alone, so resuming at `start_step` replays the uninterrupted run exactly, and skipped batches
  are never decoded or augmented.
"""
from __future__ import annotations

from collections.abc import Iterator, Sequence

import torch

from ..errors import UserError
from .augment import EpochPlan, alternate_flips, epoch_generator, plan_epoch, random_erase
from .normalize import Normalizer, Stats

Batch = tuple[torch.Tensor, torch.Tensor]
Span = tuple[int, int]


class Data:
    """A loaded dataset (see `load_data`). Public attributes: name, class_names, in_chans,
    input_size (C, H, W), mean/std (per channel, [0, 1] pixel units, from the training split),
    mean_image (the per-pixel mean for normalize="pixel", else None), splits, skipped (unreadable
    files left out), crop_fraction (the evaluation crop geometry, for `images.preprocess`)."""

    def __init__(self, *, name: str, class_names: list[str], input_size: tuple[int, int, int],
                 stats: Stats, splits: tuple[str, ...], augment: str, pad: int,
                 crop_fraction: float, skipped: Sequence[str] = (), held_out: int = 0,
                 erase: float = 0.0, auto_augment: str = "none") -> None:
        self.name, self.class_names = name, list(class_names)
        self.in_chans, self.input_size = input_size[0], tuple(input_size)
        self._stats = stats
        self.normalize = self._normalizer()
        self.splits, self.skipped = splits, list(skipped)
        self.augment, self.pad, self.crop_fraction = augment, pad, crop_fraction
        self.erase = erase  # random erasing probability of a training image
        self.auto_augment = auto_augment  # a policy of augment.AUTO_AUGMENTS, per image
        self.held_out = held_out  # training images held out as "val" (the resolved --val-split)
        self.flip_alternate = False  # mirror each image every other epoch (augment.py)
        self.resize = "crop"  # image folders: how an image becomes the input (folders.py)
        self.start_notes: list[str] = []  # what loading did that training should say once
        # per training image: the chance an epoch draws it (None: each once, in a random order)
        self.sample_weights: torch.Tensor | None = None

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

    def labels(self, split: str) -> torch.Tensor:
        """The class index of every image of split, in order (int64, on the CPU)."""
        return self._labels(self._check_split(split))

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
                          epoch_generator(seed, epoch), pad=self.pad, erase=self.erase,
                          auto_augment=self.auto_augment, weights=self.sample_weights)
        if self.flip_alternate:
            plan = alternate_flips(plan, seed, epoch)
        share = batch_size // world_size
        spans = [(s * batch_size + rank * share, s * batch_size + (rank + 1) * share)
                 for s in range(start_step, steps)]
        batches = self._train_iter(plan, spans, torch.device(device))
        if self.erase == 0:
            return batches
        # The erasing draws of each batch, by the same positions the backend took
        return ((random_erase(x, plan.take(lo, hi)[1]), y)
                for (x, y), (lo, hi) in zip(batches, spans))

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

    # Backends implement these four.
    def _size(self, split: str) -> int:
        raise NotImplementedError

    def _labels(self, split: str) -> torch.Tensor:
        raise NotImplementedError

    def _train_iter(self, plan: EpochPlan, spans: list[Span],
                    device: torch.device) -> Iterator[Batch]:
        raise NotImplementedError

    def _eval_iter(self, split: str, batch_size: int, device: torch.device, rank: int,
                   world_size: int, resize: int | None) -> Iterator[Batch]:
        raise NotImplementedError

"""`load_data`: a --data spec -> a `Data` (base.py) ready to batch, in memory (memory.py) or from
image folders (folders.py); the validation hold-out and the in-memory resize live here."""
from __future__ import annotations

import torch
import torch.nn.functional as F

from ..choices import RESIZES
from ..errors import UserError, note, unknown, warn
from ..limits import (MAX_DATASET_BYTES, MAX_PAD, MAX_WORKERS, check_float, check_image_side,
                      check_int)
from ..text import plural
from .augment import AUGMENTS, AUTO_AUGMENTS
from .base import Data
from .datasets import ArraySource, Split, load_source
from .scan import FolderSource
from .folders import FolderData, folder_stats
from .images import FOLDER_CROP_FRACTION, GRAY_MODES
from .memory import InMemoryData
from .normalize import NORMALIZE, Stats, compute_stats

__all__ = ["Data", "FolderData", "InMemoryData", "available_cpus", "hold_out", "load_data"]


def _stratified(labels: torch.Tensor, k: int, seed: int
                ) -> tuple[torch.Tensor, list[tuple[int, int]]]:
    """k examples drawn stratified (each class keeps its share, largest remainders get the
    rounding), at random within each class from a generator fixed by seed: their sorted
    indices, and the (class, count) of every class that got none."""
    n = len(labels)
    g = torch.Generator().manual_seed(seed)
    classes, counts = torch.unique(labels, return_counts=True)
    share = counts.double() * k / n
    take = share.floor().long()
    rest = k - int(take.sum())
    if rest:  # largest remainders first; ties by class order
        order = torch.argsort(share - take, descending=True, stable=True)
        take[order[:rest]] += 1
    chosen = []
    for c, t in zip(classes.tolist(), take.tolist()):
        members = torch.nonzero(labels == c).flatten()
        chosen.append(members[torch.randperm(len(members), generator=g)[:t]])
    missing = [(c, int(m)) for c, m, t in zip(classes.tolist(), counts.tolist(), take.tolist())
               if t == 0]
    return torch.cat(chosen).sort().values, missing


def _classes(missing: list[tuple[int, int]], class_names: list[str] | None) -> str:
    shown = ", ".join(f"class {class_names[c] if class_names else c} ({plural(k, 'image')})"
                      for c, k in missing[:3])
    return shown + (f" and {len(missing) - 3} more" if len(missing) > 3 else "")


def hold_out(labels: torch.Tensor, val_split: int, seed: int, name: str,
             class_names: list[str] | None = None) -> tuple[torch.Tensor, torch.Tensor]:
    """(train, val) index tensors, sorted: val_split examples held out, stratified and seeded
    (_stratified), so the same (labels, val_split, seed) give the same split in training,
    `eval --split val` and `responses` (the paper's 45k/5k CIFAR split, 4.2). A class too
    small to get any held-out image is said in a note (class_names name it)."""
    n = len(labels)
    if val_split >= n:
        raise UserError(f"--val-split {val_split} leaves no training images: {name} has {n}")
    val_idx, missing = _stratified(labels, val_split, seed)
    if missing:  # its validation recall would be undefined: say so rather than score it as 0
        note(f"{_classes(missing, class_names)} too small to hold out any of the {val_split} "
             f"validation images of {name}: trained on, not validated (a larger --val-split, "
             "or more images)")
    keep = torch.ones(n, dtype=torch.bool)
    keep[val_idx] = False
    return torch.nonzero(keep).flatten(), val_idx


SUBSET_SEED = 0  # one subset for every run seed: members of a sweep see the same images


def subset(labels: torch.Tensor, train_images: int | None, name: str,
           class_names: list[str] | None = None) -> torch.Tensor | None:
    """The sorted indices of a class-balanced subset of train_images examples (each class keeps
    its share, drawn as hold_out draws, from a generator fixed by SUBSET_SEED), None for all.
    A subset that leaves a class without an image is refused: the net could not learn it."""
    if train_images is None:
        return None
    if train_images > len(labels):
        raise UserError(f"train_images {train_images} is more than the {len(labels):,} training "
                        f"images of {name}")
    if train_images == len(labels):
        return None
    chosen, missing = _stratified(labels, train_images, SUBSET_SEED)
    if missing:
        raise UserError(f"train_images {train_images} leaves {_classes(missing, class_names)} "
                        f"of {name} without a training image: give a larger --train-images")
    return chosen


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
                train_images: int | None, resize: str = "crop", **kw) -> InMemoryData:
    del resize  # arrays are square already (resized whole when image_size is given)
    if image_size:
        n = len(src.train[1]) + (len(src.test[1]) if src.test is not None else 0)
        size = n * src.train[0].shape[1] * image_size ** 2
        if size > MAX_DATASET_BYTES:
            raise UserError(f"image size {image_size} would make {src.name} {size / 2**30:.1f} "
                            f"GiB in memory, more than the {MAX_DATASET_BYTES / 2**30:.0f} GiB "
                            "limit; choose a smaller --image-size")

    def sized(split: Split) -> Split:
        return (resize_uint8(split[0], image_size) if image_size else split[0]), split[1]

    x, y = src.train
    chosen = subset(y, train_images, src.name, src.class_names)
    x, y = sized((x, y) if chosen is None else (x[chosen], y[chosen]))
    arrays = {"train": (x, y)}
    if val_split:
        train, val = hold_out(y, val_split, seed, src.name, src.class_names)
        arrays = {"train": (x[train], y[train]), "val": (x[val], y[val])}
    if src.test is not None:
        arrays["test"] = sized(src.test)
    return InMemoryData(arrays, name=src.name, class_names=src.class_names,
                        input_size=tuple(x.shape[1:]), crop_fraction=1.0, held_out=val_split or 0,
                        stats=stats or compute_stats(arrays["train"][0], normalize), **kw)


def _folder_data(src: FolderSource, val_split: int, seed: int, image_size: int | None,
                 normalize: str, workers: int, stats: Stats | None, crop_fraction: float | None,
                 train_images: int | None, resize: str = "crop", **kw) -> FolderData:
    """Splits: train; val = the held-out images, else PATH/val; test = PATH/test, else
    PATH/val (ImageNet's layout), else the held-out images (one held-out set then answers to
    both names)."""
    chosen = subset(torch.tensor([label for _, label in src.train]), train_images, src.name,
                    src.class_names)
    train_items = src.train if chosen is None else [src.train[i] for i in chosen.tolist()]
    items = {"train": train_items}
    labels = torch.tensor([label for _, label in train_items])
    if val_split is None:  # auto: a folder without val/ holds out a validation set
        val_split = default_hold_out(labels) if src.val is None else 0
    if val_split:
        train, val = hold_out(labels, val_split, seed, src.name, src.class_names)
        items = {"train": [train_items[i] for i in train], "val": [train_items[i] for i in val]}
        if src.val is not None and src.test is not None:
            warn(f"--val-split {val_split} holds out the validation images from train/: "
                 f"{src.name.partition(':')[2]}/val/ is not used")
    elif src.val is not None:
        items["val"] = src.val
    if src.test is not None:
        items["test"] = src.test
    elif "val" in items:
        items["test"] = src.val if src.val is not None else items["val"]
    size = image_size or 224
    crop = crop_fraction or FOLDER_CROP_FRACTION
    if stats is None:
        stats = folder_stats(src, items["train"], size, seed, normalize, workers, resize)
    data = FolderData(items, workers, resize, name=src.name, class_names=src.class_names,
                      input_size=(src.in_chans, size, size), crop_fraction=crop,
                      stats=stats, skipped=src.skipped, held_out=val_split, **kw)
    line = preparation_note([src.headers[p] for p, _ in items["train"] if p in src.headers],
                            src.in_chans, size, crop, resize)
    data.start_notes = [line] if line else []
    return data


# Sides further apart than this are "not square"; a shorter side this many times the input's is
# "much larger" (the resize throws most pixels away)
SQUARE_TOLERANCE = 1.1
MUCH_LARGER = 4


def preparation_note(headers: list[tuple[str, tuple[int, int]]], in_chans: int, size: int,
                     crop: float, resize: str) -> str | None:
    """One line saying what preparing these training images (mode, (width, height)) does that
    a user may not expect: grayscale images converted to RGB, images much larger than the
    input, and what the resize does to images that are not square (None: nothing to say)."""
    n, parts = len(headers), []
    gray = sum(mode in GRAY_MODES for mode, _ in headers) if in_chans == 3 else 0
    if gray:
        parts.append(f"{gray:,} of {n:,} are grayscale, converted to RGB like the others")
    large = sum(min(wh) >= MUCH_LARGER * size for _, wh in headers)
    if large:
        parts.append(f"{large:,} of {n:,} are over {MUCH_LARGER}x the {size} px input, "
                     "downscaled (--image-size trains larger)")
    oblong = [wh for _, wh in headers if max(wh) > SQUARE_TOLERANCE * min(wh)]
    if oblong:
        w, h = max(oblong, key=lambda wh: max(wh) / min(wh))
        what = {"crop": f"resized to {round(size / crop)} px on the shorter side and "
                        f"centre-cropped to {size}x{size} (a {w}x{h} image loses "
                        f"{1 - crop * min(w, h) / max(w, h):.0%} of its "
                        f"{'width' if w > h else 'height'}; --resize squish or pad keeps whole "
                        "images)",
                "squish": f"squished to {size}x{size} (--resize squish), aspect ratio not kept",
                "pad": f"fitted inside {size}x{size} with black borders (--resize pad)"}[resize]
        parts.append(f"{len(oblong):,} of {n:,} are not square: {what}")
    return f"note: training images: {'; '.join(parts)}" if parts else None


def _stats_for(stats: Stats, in_chans: int, spec: str) -> Stats:
    """A checkpoint's statistics for images of in_chans channels: RGB statistics for
    grayscale images (fine-tuning RGB weights, whose stem is summed for one channel) are
    averaged over the channels, as a gray pixel is the mean of R, G and B."""
    if len(stats.mean) == in_chans:
        return stats
    if in_chans == 1 and stats.mean_image is None:
        return Stats([sum(stats.mean) / len(stats.mean)], [sum(stats.std) / len(stats.std)])
    raise UserError(f"{spec} has {in_chans}-channel images but the weights' statistics are for "
                    f"{plural(len(stats.mean), 'channel')}")


def available_cpus() -> int:
    """How many CPUs this process may run on (the affinity mask, e.g. a container's share)."""
    from ..threads import available_cpus as cpus

    return len(cpus())


def load_data(spec: str, *, data_dir: str | None = None, val_split: int | None = 0,
              seed: int = 0,
              image_size: int | None = None, normalize: str = "channel",
              augment: str = "crop-flip", pad: int = 4, workers: int = 4,
              stats: Stats | None = None, crop_fraction: float | None = None,
              erase: float = 0.0, auto_augment: str = "none",
              train_images: int | None = None, resize: str = "crop") -> Data:
    """Loads the dataset a --data spec names (docs/guides/training.md, Datasets), ready to batch.

    val_split: hold out that many training images as "val" (stratified, seeded); None: 10% of
    an image folder that has no val/ folder, else none. image_size: resize in-memory data
    once at load time / the crop size for folders (default 224). normalize: "channel" (mean/std
    per channel) or "pixel" (the per-pixel mean image and a global std, paper section 4.2).
    augment: "crop-flip" (pad `pad` px, random crop, flip: section 4.2), "flip", "none", or
    "imagenet" (scale augmentation in [256, 480]/224 x size, flip, colour: section 3.4).
    stats, crop_fraction: a checkpoint's preprocessing (reslab.weights.record) to prepare the images
    exactly as for that model, instead of measuring the training split. erase: random erasing
    probability of a training image (reslab.data.augment.random_erase). auto_augment: a
    torchvision policy per training image (reslab.data.augment.AUTO_AUGMENTS). train_images:
    train on a class-balanced subset of that many training images (subset), taken before the
    val hold-out; the same subset for every seed. resize: how a folder's image becomes the
    square input: crop, squish or pad (images.eval_geometry)."""
    if normalize not in NORMALIZE:
        raise unknown("normalization", normalize, NORMALIZE)
    if augment not in AUGMENTS:
        raise unknown("augmentation", augment, AUGMENTS)
    if auto_augment not in AUTO_AUGMENTS:
        raise unknown("auto-augmentation policy", auto_augment, AUTO_AUGMENTS)
    if resize not in RESIZES:
        raise unknown("resize", resize, RESIZES)
    if val_split is not None:
        check_int("val_split", val_split, 0, 10**9)
    if train_images is not None:
        check_int("train_images", train_images, 1, 10**9)
    check_int("pad", pad, 0, MAX_PAD)
    check_int("workers", workers, 0, MAX_WORKERS)
    check_float("erase", erase, 0.0, 1.0)
    workers = min(workers, available_cpus())  # more decoders than CPUs only wait
    if image_size is not None:
        check_image_side("image size", image_size)
    src = load_source(spec, data_dir, workers)
    if stats is not None:
        stats = _stats_for(stats, src.in_chans if isinstance(src, FolderSource)
                           else int(src.train[0].shape[1]), spec)
    opts = dict(val_split=val_split, seed=seed, image_size=image_size, normalize=normalize,
                augment=augment, pad=pad, stats=stats, crop_fraction=crop_fraction, erase=erase,
                auto_augment=auto_augment, train_images=train_images, resize=resize)
    if isinstance(src, FolderSource):
        return _folder_data(src, workers=workers, **opts)
    return _array_data(src, **opts)

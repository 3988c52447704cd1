"""Recipes that fit the data they are given.

`fast`, `fast-long`, `finetune` and `demo` were tuned on one dataset size and image size (60,000
Fashion-MNIST images of 28 px, 1,437 digits of 8 px). On a small folder of a user's images the
same numbers are wrong in ways that look fine: batch 128 on 270 images is 2 steps an epoch, so
9 epochs are 18 optimizer steps; the BN running statistics (momentum 0.1, updated once a step
while the weights move fast) never settle, and with progressive resizing they are averaged over
images of another size. The net is then right in train mode and at chance in eval mode.

A recipe with `adapt = true` has those defaults fitted here, once, before training: each
change is said in a start-up note, and a field the user gave (a flag or an override, recorded
in `Recipe.given`) is never changed. The adapted recipe is what the run directory's config.toml
holds, so a resumed run does not adapt again.
"""
from __future__ import annotations

import math
from dataclasses import dataclass

from ..choices import FLIPPING_AUGMENTS
from ..text import plural
from .recipe import Recipe

# An epoch of fewer steps than this is too coarse a unit: halve the batch until it has them.
MIN_STEPS_PER_EPOCH = 8
MIN_BATCH = 8           # BatchNorm's batch statistics get too noisy below this
# Fewer optimizer steps than this do not train a net from scratch, nor let the BN running
# statistics (an EMA with momentum 0.1: ~10 steps of memory) follow the final weights.
MIN_ITERS = 400
# Progressive resizing saves time on long runs; on short ones the BN statistics learnt at the
# small sides are what eval mode sees. Off below this many iterations.
PROGRESSIVE_MIN_ITERS = 1500
# Images smaller than this (8x8 digits, icons, characters) are usually glyphs whose mirror
# image is another class or none: no mirroring unless asked.
MIN_FLIP_SIDE = 16
PAD_FRACTION = 8        # the random crop's padding at most 1/8 of the side (4 px of 32)


@dataclass(frozen=True)
class DataFacts:
    """What adaptation needs to know of the training data."""

    train_images: int
    side: int               # the shorter side of the training images, in px
    world_size: int = 1


def adapt(r: Recipe, facts: DataFacts) -> tuple[Recipe, list[str]]:
    """The recipe with its defaults fitted to the data, and one note per change; tta_flip
    follows the training augmentation (no test-time mirror where training never mirrored)."""
    if not r.adapt:
        return r, []
    changes: dict = {}
    notes: list[str] = []
    free = [name for name in ("batch_size", "lr", "epochs", "progressive_from", "augment", "pad")
            if name not in r.given]
    n = facts.train_images

    batch = r.batch_size
    if "batch_size" in free:
        while batch > MIN_BATCH and n / batch < MIN_STEPS_PER_EPOCH:
            batch //= 2
        batch = max(batch - batch % facts.world_size, facts.world_size)
        if batch != r.batch_size:
            changes["batch_size"] = batch
            why = f"{n:,} training images"
            if "lr" in free:  # the linear scaling rule (Goyal et al. 2017)
                changes["lr"] = r.lr * batch / r.batch_size
                notes.append(f"batch {batch} (recipe {r.batch_size}) and lr "
                             f"{changes['lr']:.3g} (recipe {r.lr:g}, scaled with the batch) "
                             f"for {why}")
            else:
                notes.append(f"batch {batch} (recipe {r.batch_size}) for {why}")

    steps = max(1, n // batch)
    total = r.iters or math.ceil(r.epochs * steps)
    if r.iters is None and "epochs" in free and total < MIN_ITERS:
        epochs = math.ceil(MIN_ITERS / steps)
        changes["epochs"] = float(epochs)
        notes.append(f"{epochs} epochs (recipe {r.epochs:g}): "
                     f"{plural(r.epochs, 'epoch', fmt='g')} of {plural(steps, 'step')} would "
                     f"be {plural(total, 'optimizer step')}, fewer than the {MIN_ITERS} a net "
                     "needs to train and its BN statistics to settle")
        total = epochs * steps

    if (r.progressive_from is not None and "progressive_from" in free
            and total < PROGRESSIVE_MIN_ITERS):
        changes["progressive_from"] = None
        notes.append(f"no progressive resizing: it pays on long runs, and "
                     f"{plural(total, 'iteration')} {'is' if total == 1 else 'are'} fewer "
                     f"than {PROGRESSIVE_MIN_ITERS:,}")

    augment = r.augment
    if facts.side < MIN_FLIP_SIDE and "augment" in free and "flip" in augment:
        augment = {"crop-flip": "crop", "flip": "none"}.get(augment, augment)
        if augment != r.augment:
            changes["augment"] = augment
            notes.append(f"augment {augment} (recipe {r.augment}): {facts.side} px images are "
                         "usually glyphs whose mirror image is another class (--augment "
                         f"{r.augment} to mirror anyway)")
    if r.tta_flip and "tta_flip" not in r.given and augment not in FLIPPING_AUGMENTS:
        # the net never saw a mirrored image: averaging one in scores another glyph (the
        # digits: 96.39% with it, 98.89% without). The record's tta_flip then tells eval,
        # predict and serve the same.
        changes["tta_flip"] = False
        notes.append(f"no test-time flip (recipe tta_flip true): augment {augment} does not "
                     "mirror, so the net never saw a mirrored image (--tta-flip true to "
                     "average one in anyway)")
    if "pad" in free and augment in ("crop", "crop-flip"):
        pad = min(r.pad, max(1, facts.side // PAD_FRACTION))
        if pad != r.pad:
            changes["pad"] = pad
            notes.append(f"pad {pad} px (recipe {r.pad}): at most 1/{PAD_FRACTION} of the "
                         f"{facts.side} px side")
    if not changes:
        return r, []
    prefix = f"note: recipe {r.recipe} adapted to the data: " if r.recipe else "note: adapted: "
    return r.replace(**changes), [prefix + note for note in notes]


def from_scratch_note(r: Recipe, train_side: int) -> str | None:
    """A line when a fine-tuning recipe gets no weights: it would train its ImageNet-sized net
    from scratch, with a fine-tuning lr, at train_side px (e.g. 224 for 48 px images: about
    50 minutes for 515 images on 2 cores), which nobody asks for on purpose."""
    if r.recipe != "finetune" or r.weights is not None:
        return None
    return (f"warning: recipe finetune without --weights trains {r.model} from scratch, with "
            f"its small fine-tuning lr, at {train_side} px: slow (about 50 minutes for 500 "
            "images on 2 cores at 224 px) and rarely what you want. Give --weights torchvision:resnet18 (or a weights file) to "
            "fine-tune, or leave out --recipe to train from scratch at the images' size")
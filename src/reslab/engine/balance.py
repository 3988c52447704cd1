"""Imbalanced training classes: said at start-up, and handled as the recipe's `balance` says.

A folder of 400 / 120 / 40 / 12 images trained as it comes learns to ignore the rarest class
(recall 0.03 while top-1 looks fine: issue 28). Two remedies, both measured against none in
docs/results/imbalance.md:

- sampler: every epoch draws its images with replacement, each class equally often (the
  WeightedRandomSampler recipe of torchvision's and timm's users), so a batch sees every class;
- weights: the cross-entropy weighted by inverse class frequency (scikit-learn's "balanced"
  class_weight: n / (k * n_c)), the images seen as they come.

`auto` applies AUTO_METHOD when the largest class has at least IMBALANCE_RATIO times the images
of the smallest, and nothing otherwise: balanced data trains exactly as without this module.
"""
from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass

import torch

from ..text import plural

IMBALANCE_RATIO = 3.0   # largest / smallest class: below this, auto leaves the data as it is
AUTO_METHOD = "sampler"  # what auto does on imbalanced data (docs/results/imbalance.md)
RAREST_SHOWN = 3         # classes named in the note
WHAT = {"sampler": "a class-balanced sampler (every class drawn equally often)",
        "weights": "the loss weighted by inverse class frequency",
        "none": "nothing (the images are drawn as they come)"}


@dataclass(frozen=True)
class ClassBalance:
    """The training split's class counts and what is done about their imbalance."""
    names: tuple[str, ...]
    counts: tuple[int, ...]
    asked: str    # the recipe's balance
    method: str   # what it resolved to: sampler, weights or none

    @property
    def ratio(self) -> float:
        return max(self.counts) / max(1, min(self.counts))

    @property
    def imbalanced(self) -> bool:
        return self.ratio >= IMBALANCE_RATIO

    def monitor(self, asked: str) -> str:
        """The validation figure to follow (recipe's monitor): auto is the balanced accuracy on
        imbalanced data (a stratified hold-out is as imbalanced as train/), else top-1."""
        if asked != "auto":
            return asked
        return "balanced" if self.imbalanced else "top1"

    def sample_weights(self, labels: torch.Tensor) -> torch.Tensor | None:
        """Per training image, the chance of being drawn (sampler), else None (a permutation)."""
        if self.method != "sampler":
            return None
        counts = torch.tensor(self.counts, dtype=torch.float64).clamp_(min=1)
        return (1.0 / counts)[labels]

    def loss_weights(self) -> torch.Tensor | None:
        """Per class, the cross-entropy weight n / (k * n_c) (weights), else None."""
        if self.method != "weights":
            return None
        counts = torch.tensor(self.counts, dtype=torch.float32).clamp_(min=1)
        return counts.sum() / (len(self.counts) * counts)

    def note(self) -> str | None:
        """One line when the classes are imbalanced: the rarest classes' counts and what is
        done about it (None on balanced data)."""
        if not self.imbalanced:
            return None
        rarest = sorted(range(len(self.counts)), key=lambda c: (self.counts[c], c))
        shown = ", ".join(f"{self.names[c]} ({plural(self.counts[c], 'image')})"
                          for c in rarest[:RAREST_SHOWN])
        other = ("--balance none to train on the images as they come" if self.method != "none"
                 else "--balance auto or sampler to draw every class equally often")
        return (f"note: imbalanced training classes ({self.ratio:.0f}:1, largest "
                f"{max(self.counts):,} images); the rarest: {shown}; balance {self.asked}: "
                f"{WHAT[self.method]} ({other}); the balanced accuracy (mean per-class recall) "
                "is reported beside top-1")


def class_balance(asked: str, labels: torch.Tensor, names: Sequence[str]) -> ClassBalance:
    """The balance of the training labels and what `asked` (the recipe's balance) does."""
    counts = tuple(torch.bincount(labels, minlength=len(names)).tolist())
    imbalanced = max(counts) / max(1, min(counts)) >= IMBALANCE_RATIO
    method = (AUTO_METHOD if imbalanced else "none") if asked == "auto" else asked
    return ClassBalance(tuple(names), counts, asked, method)

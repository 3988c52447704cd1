"""The BN running statistics after training: recomputed on request, and checked always.

BatchNorm normalises with the batch's statistics in training and with running averages
(momentum 0.1 per step) in evaluation. When a run is short, or its last images differ from the
evaluation images (progressive resizing), the averages lag the final weights and the net that
scored well in training is at chance in eval mode, with nothing else looking wrong. The check
compares eval-mode accuracy on training images with the training accuracy of the last epoch.
"""
from __future__ import annotations

from collections.abc import Iterable
from dataclasses import dataclass

import torch
from torch import nn

# Images of the training set used to measure eval-mode accuracy (a second or two of forward).
CHECK_IMAGES = 2048
# Eval-mode accuracy this far below the training accuracy is a broken model, not overfitting:
# on its own training images, a net in eval mode scores at least about what it scored in
# training with augmentation on.
MAX_GAP = 0.2


def batchnorms(model: nn.Module) -> list[nn.modules.batchnorm._BatchNorm]:
    return [m for m in model.modules() if isinstance(m, nn.modules.batchnorm._BatchNorm)]


@torch.no_grad()
def recalibrate_bn(model: nn.Module, batches: Iterable[tuple[torch.Tensor, torch.Tensor]],
                   autocast_dtype: torch.dtype | None = None) -> int:
    """Recomputes every BN layer's running mean/var as the plain average over `batches` (the
    training images, unaugmented); the weights are untouched. Returns the images seen."""
    layers = batchnorms(model)
    saved = [(m.momentum, m.training) for m in layers]
    for m in layers:
        m.reset_running_stats()
        m.momentum = None  # None: a cumulative average instead of an EMA
        m.train()
    seen = 0
    for x, _ in batches:
        device = x.device.type
        with torch.autocast(device, dtype=autocast_dtype or torch.bfloat16,
                            enabled=autocast_dtype is not None):
            model(x)
        seen += len(x)
    for m, (momentum, training) in zip(layers, saved):
        m.momentum = momentum
        m.train(training)
    return seen


def first_images(batches: Iterable[tuple[torch.Tensor, torch.Tensor]], limit: int = CHECK_IMAGES
                 ) -> Iterable[tuple[torch.Tensor, torch.Tensor]]:
    """The batches up to about `limit` images."""
    seen = 0
    for x, y in batches:
        if seen >= limit:
            return
        seen += len(y)
        yield x, y


@dataclass(frozen=True)
class BNCheck:
    """Eval-mode accuracy on training images against the last epoch's training accuracy."""

    train_top1: float       # the last epoch's running accuracy, train mode, augmented
    eval_top1: float        # eval mode, unaugmented, the same kind of images
    images: int
    chance: float

    @property
    def broken(self) -> bool:
        return (self.train_top1 - self.eval_top1 > MAX_GAP
                and self.train_top1 > self.chance + MAX_GAP)

    def warning(self, recalibrated: bool) -> str:
        fix = ("train longer (--epochs)" if recalibrated else
               "rerun with --bn-recalibrate (recomputes the BN statistics after training), or "
               "train longer (--epochs)")
        return (f"in eval mode the model scores {self.eval_top1:.1%} on {self.images:,} "
                f"of its own training images against {self.train_top1:.1%} in training: its BN "
                "running statistics do not match its weights (too few iterations for them to "
                f"settle, or training images of another size); {fix}")


__all__ = ["BNCheck", "CHECK_IMAGES", "first_images", "recalibrate_bn"]

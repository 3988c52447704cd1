"""Mixup (Zhang et al. 2018) and CutMix (Yun et al. 2019) of a training batch, with
torchvision.transforms.v2.MixUp / CutMix: the batch blended with (or pasted into) itself rolled
by one, and the one-hot targets mixed by the same weight, so the loss takes soft targets.

v2's transforms draw from the global generator and take no other; each step's draws come from a
seed derived from (recipe seed, step) under a forked RNG, so a resumed run mixes exactly as an
uninterrupted one, every rank mixes its shard with the same weight, and the global RNG is left
alone."""
from __future__ import annotations

from collections.abc import Callable

import numpy as np
import torch

Mixer = Callable[[torch.Tensor, torch.Tensor], tuple[torch.Tensor, torch.Tensor]]


def batch_mixer(mixup: float, cutmix: float, num_classes: int) -> Mixer | None:
    """The v2 transform for the recipe's alphas: MixUp, CutMix, one of the two at random per
    batch when both are set (as timm does), or None when both are 0."""
    if mixup <= 0 and cutmix <= 0:
        return None
    from torchvision.transforms import v2

    chosen = ([v2.MixUp(alpha=mixup, num_classes=num_classes)] if mixup > 0 else []) + \
             ([v2.CutMix(alpha=cutmix, num_classes=num_classes)] if cutmix > 0 else [])
    return chosen[0] if len(chosen) == 1 else v2.RandomChoice(chosen)


def step_seed(seed: int, step: int) -> int:
    """A seed for the mixing draws of one step; SeedSequence decorrelates nearby pairs."""
    words = np.random.SeedSequence([seed % 2**63, step, 0x313C]).generate_state(2, np.uint32)
    return int(words[0]) << 31 | int(words[1]) >> 1


def mix_batch(mixer: Mixer, x: torch.Tensor, y: torch.Tensor, seed: int,
              step: int) -> tuple[torch.Tensor, torch.Tensor]:
    """(mixed images, target probabilities (N, K)) of step `step`'s batch."""
    with torch.random.fork_rng(devices=[]):  # v2 draws lam and boxes on the CPU generator
        torch.default_generator.manual_seed(step_seed(seed, step))
        return mixer(x, y)

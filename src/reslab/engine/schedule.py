"""Learning-rate schedules as pure functions of the iteration (plus two small pieces of state the
paper's recipes need: the plateau divisor and resnet110's warm-up flag)."""
from __future__ import annotations

import math
from dataclasses import dataclass

from .recipe import Recipe


@dataclass
class ScheduleState:
    """The schedule's mutable part, saved with the training state for exact resume."""

    plateau_scale: float = 1.0       # multiplied by gamma at each plateau (paper-imagenet)
    plateau_best: float = math.inf   # best validation error seen
    plateau_bad_epochs: int = 0
    warm: bool = True                # resnet110: still at warmup_lr until train error drops

    def to_dict(self) -> dict:
        return dict(vars(self))


def lr_at(step: int, total: int, r: Recipe, state: ScheduleState | None = None) -> float:
    """The learning rate for iteration `step` (0-based) of `total`."""
    state = state or ScheduleState()
    if r.warmup_until_error is not None and state.warm:
        return r.warmup_lr  # section 4.2: 0.01 "until the training error is below 80%"
    if step < r.warmup_iters:
        return r.warmup_lr + (r.lr - r.warmup_lr) * step / r.warmup_iters
    if r.schedule == "step":
        # Section 4.2: divide by 10 at 32k and 48k iterations.
        return r.lr * r.gamma ** sum(step >= m for m in r.milestones)
    if r.schedule == "cosine":
        t = (step - r.warmup_iters) / max(1, total - r.warmup_iters)
        return 0.5 * r.lr * (1 + math.cos(math.pi * t))
    if r.schedule == "onecycle":
        # Linear up to lr over the first 25% (or warmup_iters), then linear down to 0.
        peak = r.warmup_iters or max(1, int(0.25 * total))
        if step < peak:
            return r.lr * (0.1 + 0.9 * step / peak)
        return r.lr * max(0.0, (total - step) / max(1, total - peak))
    if r.schedule == "plateau":
        return r.lr * state.plateau_scale
    return r.lr  # constant


def on_train_error(state: ScheduleState, r: Recipe, train_error: float) -> None:
    """resnet110's warm-up ends once the training error is below the threshold."""
    if r.warmup_until_error is not None and state.warm and train_error < r.warmup_until_error:
        state.warm = False


def on_val_error(state: ScheduleState, r: Recipe, val_error: float) -> None:
    """Section 3.4: 'the learning rate ... is divided by 10 when the error plateaus'."""
    if r.schedule != "plateau":
        return
    if val_error < state.plateau_best - 1e-4:
        state.plateau_best, state.plateau_bad_epochs = val_error, 0
        return
    state.plateau_bad_epochs += 1
    if state.plateau_bad_epochs >= r.plateau_patience:
        state.plateau_scale *= r.gamma
        state.plateau_bad_epochs = 0

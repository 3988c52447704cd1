"""Learning-rate schedules as pure functions of the iteration (plus two small pieces of state the
paper's recipes need: the plateau divisor and resnet110's warm-up flag with its running error)."""
from __future__ import annotations

import math
from dataclasses import dataclass, field

from .recipe import Recipe

# resnet110's warm-up (section 4.2: lr 0.01 "until the training error is below 80% (about 400
# iterations)") ends on the training error over the last WARMUP_WINDOW iterations, checked after
# every iteration. One batch's error is too noisy to end it: at batch 128 and an error near 80%
# its sampling std is sqrt(0.8 * 0.2 / 128) = 3.5 points, so a lucky batch would cross 80% while
# the net is still at ~85%. The mean of 50 batches (6,400 images at batch 128) has ~0.5 points,
# and lags the current error by ~25 iterations, small against the paper's ~400. A plain window
# (not an EMA) because it is exactly "the training error over the last 50 iterations" (train
# batches all have the same size), with no start-up bias: the warm-up ends only once the window
# is full, so it lasts at least WARMUP_WINDOW iterations.
WARMUP_WINDOW = 50


@dataclass
class ScheduleState:
    """The schedule's mutable part, saved with the training state for exact resume."""

    plateau_scale: float = 1.0       # multiplied by gamma at each plateau (paper-imagenet)
    plateau_best: float = math.inf   # best validation error seen
    plateau_bad_epochs: int = 0
    warm: bool = True                # resnet110: still at warmup_lr until train error drops
    # resnet110: the training errors of the last WARMUP_WINDOW iterations while warm (emptied
    # when the warm-up ends); a default so that states saved before it existed still load.
    warm_errors: list[float] = field(default_factory=list)

    def to_dict(self) -> dict:
        d = dict(vars(self))
        d["warm_errors"] = list(self.warm_errors)  # a copy: the saved state must not move on
        return d


MIN_PROGRESSIVE_SIDE = 8  # px: smaller images hold too little to learn from


def train_side(step: int, total: int, r: Recipe, native: int) -> int:
    """Progressive resizing (fast.ai's DAWNBench recipe): the side of the training images at
    iteration `step`, growing linearly from r.progressive_from x `native` to `native` over the
    first r.progressive_until of the iterations, in 4 px steps (a few distinct shapes keep the
    kernels' per-shape setup rare); `native` when off or once grown. A fraction, not pixels, so
    one recipe suits 28 px Fashion-MNIST and 224 px image folders alike; never below
    MIN_PROGRESSIVE_SIDE px (8x8 digits train at their size throughout)."""
    if r.progressive_from is None:
        return native
    start = max(round(r.progressive_from * native), min(native, MIN_PROGRESSIVE_SIDE))
    t = step / max(1, r.progressive_until * total)
    if start >= native or t >= 1:
        return native
    return min(native, start + 4 * int((native - start) * t / 4))


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


def warming_up(state: ScheduleState, r: Recipe) -> bool:
    """True while resnet110's warm-up is on (the loop then measures each batch's error)."""
    return r.warmup_until_error is not None and state.warm


def on_train_batch(state: ScheduleState, r: Recipe, batch_error: float) -> None:
    """Called after every training iteration with that batch's training error (fraction
    misclassified): resnet110's warm-up ends at the first iteration where the mean error of the
    last WARMUP_WINDOW iterations is below warmup_until_error; the next iteration gets lr."""
    if not warming_up(state, r):
        return
    window = state.warm_errors
    window.append(float(batch_error))
    del window[:-WARMUP_WINDOW]
    # fsum: the correctly rounded sum, so that a window of errors all equal to the threshold
    # is not below it through rounding (sum([0.8] * 50) / 50 = 0.7999999999999999).
    mean = math.fsum(window) / WARMUP_WINDOW
    if len(window) == WARMUP_WINDOW and mean < r.warmup_until_error:
        state.warm, state.warm_errors = False, []


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

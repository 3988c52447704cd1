"""The learning-rate range test (Smith, "Cyclical Learning Rates for Training Neural Networks",
WACV 2017, section 3.3), in the exponential form of fastai's `lr_find` and PyTorch Lightning's
`Tuner.lr_find`: train briefly while the learning rate grows, watch where the loss falls fastest.

The rule, step by step:

- The start is `reslab train`'s, assembled by the same function (engine.assembly.assemble):
  the recipe's seed; the --weights' architecture, layout and normalisation; the data (training
  split, image size, augmentation with any auto_augment policy and erasing, as training
  augments it); the model (fresh, whitened by whiten_stem, or --weights); the batch adapted to
  the data as reslab.engine.adapt says and clamped to the training set; then the optimizer
  (`build_optimizer`: SGD, AdamW or muon, momentum, nesterov, weight-decay groups; muon's
  filter lr follows the swept lr in the recipe's ratio muon_lr / lr), label smoothing,
  amp and channels_last. The recipe's schedule is replaced by the sweep, whose plain steps
  leave out what a step of training adds: accumulation, gradient clipping, mixup/cutmix, the
  class-balanced sampler, EMA; torch.compile and torchrun are not used (a few hundred steps).
- The number of steps n: --iters, else 8 epochs of the training set, at least 30 and at most
  100 (fastai's and Lightning's length): a folder of 300 images gets 30 steps, not 100 epochs.
- Step i of n (i = 0 .. n-1) sets lr_i = start * (end / start) ** (i / (n - 1)), a geometric
  sweep from start to end, and takes one training step on the next training batch (epoch after
  epoch, as in training).
- Time bound (max_seconds, 0: none): after the first PROBE_STEPS steps, and every 10 steps
  after, the time per step so far is measured; when the planned steps would take longer, the
  rest of the sweep is re-planned with fewer steps, still geometric, still ending at end (at
  least MIN_STEPS in all), so a slow or busy machine gets a coarser sweep of the whole range
  rather than half of it.
- The loss is smoothed with an exponential moving average and Adam's bias correction, as fastai
  and Lightning: avg_i = beta avg_{i-1} + (1 - beta) loss_i (avg_-1 = 0),
  smoothed_i = avg_i / (1 - beta ** (i + 1)). beta = 1 - 1/span with span = n / 8 steps (3 to
  50; 50 is fastai's 0.98): their fixed 0.98 averages over 50 steps, longer than a short sweep,
  which shifts the curve's minimum far to the right.
- The sweep stops early when smoothed_i exceeds 4 times the lowest smoothed loss so far (their
  divergence threshold), or at a loss that is not finite (that step is neither applied nor
  recorded).
- The suggestion is the lr at the steepest descent of the smoothed loss against log(lr)
  (fastai's "steep", Lightning's `suggestion()`), made robust to noise: the slope at each step
  is the least-squares slope of smoothed over log(lr) in a window of WINDOW_DECADES of lr around
  it, and at least its neighbours (not a two-point difference, which batch noise dominates),
  and only steps on the way down
  to the lowest smoothed loss, within SEARCH_DECADES below it, are candidates, never the first
  n // 10 steps (too few losses in the average, lr too small to move the weights, as fastai).
  fastai leaves out only the last 5 steps and Lightning the last one; but a net with BN often
  spikes at a high lr and partly recovers before the 4x threshold is reached, and that recovery
  is a steep descent too (their rule suggested an lr 6x past the minimum, inside the spike);
  and on a small folder their rule picked 5.2e-6, a noise dip at the start of the sweep, with
  the minimum at 0.07. None when fewer than 3 candidates remain.

The weights are thrown away afterwards: nothing is saved, no run directory is written. `lr_find`
returns the numbers; the figure is `reslab.analysis.plots.lr_find_figure`.
"""
from __future__ import annotations

import itertools
import math
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from typing import Any

import numpy as np
import torch

from ..data import Data
from ..errors import UserError
from ..limits import LR_FIND_ITERS, MAX_LR, check_float, check_int
from ..threads import ThreadGovernor
from .assembly import assemble
from .logging import Progress
from .recipe import Recipe
from .setup import build_optimizer, resolve_amp, seed_everything, select_device, set_lr
from .step import sgd_step

BETA = 0.98       # EMA factor of the smoothed loss of long sweeps (fastai, Lightning)
DIVERGED = 4.0    # stop when the smoothed loss exceeds this times its minimum (fastai, Lightning)
AUTO_EPOCHS, AUTO_STEPS = 8, (30, 100)  # the default number of steps (module docstring)
PROBE_STEPS, MIN_STEPS = 3, 20          # the time bound: steps timed, fewest steps planned
WINDOW_DECADES = 0.5   # of lr, the window of the least-squares slope
SEARCH_DECADES = 2.0   # of lr below the lowest smoothed loss, where the suggestion is looked for
MAX_SECONDS = 86_400

_clock: Callable[[], float] = time.perf_counter  # tests replace it


class _NonFinite(Exception):
    """The loss of a step is NaN or infinite: the sweep ends before that step is applied."""


def check_sweep(start_lr: float, end_lr: float, iters: int | None
                ) -> tuple[float, float, int | None]:
    """The sweep's bounds, validated (reslab.limits): 0 < start_lr < end_lr <= MAX_LR,
    iters in LR_FIND_ITERS (None: chosen from the training set)."""
    start = check_float("start_lr", start_lr, 0.0, MAX_LR, lo_open=True)
    end = check_float("end_lr", end_lr, 0.0, MAX_LR, lo_open=True)
    if start >= end:
        raise UserError(f"start_lr {start:g} must be below end_lr {end:g}")
    return start, end, None if iters is None else check_int("iters", iters, *LR_FIND_ITERS)


def auto_iters(steps_per_epoch: int) -> int:
    """The default length: AUTO_EPOCHS epochs, within AUTO_STEPS."""
    lo, hi = AUTO_STEPS
    return min(hi, max(lo, AUTO_EPOCHS * steps_per_epoch))


def smoothing(iters: int) -> float:
    """beta of the smoothed loss for a sweep of iters steps (module docstring)."""
    return 1 - 1 / min(50.0, max(3.0, iters / 8))


def sweep_lrs(start_lr: float, end_lr: float, iters: int) -> list[float]:
    """The geometric sweep: iters values from start_lr to end_lr, a constant ratio apart."""
    return [start_lr * (end_lr / start_lr) ** (i / (iters - 1)) for i in range(iters)]


class SmoothedLoss:
    """The bias-corrected exponential moving average of the losses (module docstring)."""

    def __init__(self, beta: float = BETA) -> None:
        self.beta, self.avg, self.n = beta, 0.0, 0

    def update(self, loss: float) -> float:
        self.avg = self.beta * self.avg + (1 - self.beta) * loss
        self.n += 1
        return self.avg / (1 - self.beta ** self.n)


@dataclass
class Plan:
    """The lrs to sweep, re-planned once with fewer steps when the time bound requires."""

    start_lr: float
    end_lr: float
    iters: int
    max_seconds: float = 0.0  # 0: no bound

    def __post_init__(self) -> None:
        self.lrs = sweep_lrs(self.start_lr, self.end_lr, self.iters)

    def replan(self, done: int, seconds: float) -> bool:
        """Called after `done` steps that took seconds: fewer steps when the rest would not fit
        the bound (True when re-planned). Never more steps than planned."""
        if not self.max_seconds or len(self.lrs) <= max(MIN_STEPS, done + 1):
            return False
        per_step = seconds / done
        fit = done + int(max(0.0, self.max_seconds - seconds) / max(per_step, 1e-9))
        steps = max(MIN_STEPS, done + 1, fit)
        if steps >= len(self.lrs):
            return False
        # The rest continues geometrically from the last lr taken to end_lr.
        rest = sweep_lrs(self.lrs[done - 1], self.end_lr, steps - done + 1)[1:]
        self.lrs = self.lrs[:done] + rest
        return True


@dataclass
class Sweep:
    """What the sweep recorded, one entry per step taken; why and at which lr it stopped."""

    planned: int = 0     # steps planned (after any re-planning)
    beta: float = BETA   # of the smoothed loss
    lrs: list[float] = field(default_factory=list)
    losses: list[float] = field(default_factory=list)
    smoothed: list[float] = field(default_factory=list)
    stopped: str | None = None   # "diverged", "non-finite loss", or None: every step ran
    stop_lr: float | None = None


def lowest_after(smoothed: list[float], skip_begin: int) -> int:
    """Index of the lowest smoothed loss after the first skip_begin steps: the average starts
    at the first raw loss, which a loss that rises before it falls would leave as the minimum
    (the lowest loss "at the start lr" says nothing about the lr)."""
    skip = skip_begin if len(smoothed) > skip_begin else 0
    return skip + int(np.argmin(smoothed[skip:]))


def steepest(lrs: list[float], smoothed: list[float], skip_begin: int) -> int | None:
    """Index of the steepest descent of smoothed against log(lr), slopes fitted over a window,
    among the steps from skip_begin (and SEARCH_DECADES below the lowest smoothed loss) to the
    lowest smoothed loss (module docstring); None when fewer than 3 candidates remain."""
    if not smoothed:
        return None
    stop = lowest_after(smoothed, skip_begin) + 1
    # Every step enters the fits (a window at the minimum sees the rise after it, so its slope
    # is about 0), but only steps up to the minimum are candidates.
    x, y = np.log10(np.asarray(lrs[:len(smoothed)])), np.asarray(smoothed)
    first = max(skip_begin, int(np.searchsorted(x, x[stop - 1] - SEARCH_DECADES)))
    if stop - first < 3:
        return None
    slopes = []
    for i in range(first, stop):
        steps = np.arange(len(x))  # a coarse (time-bounded) sweep: at least the neighbours
        near = ((np.abs(x - x[i]) <= WINDOW_DECADES / 2) | (np.abs(steps - i) <= 1)) \
            & (steps >= skip_begin)
        xs, ys = x[near], y[near]
        slopes.append(np.polyfit(xs, ys, 1)[0] if len(xs) >= 2 else 0.0)
    return first + int(np.argmin(slopes))


def lr_find(recipe: Recipe, *, start_lr: float = 1e-6, end_lr: float = 10.0,
            iters: int | None = None, max_seconds: float = 60.0, quiet: bool = True
            ) -> dict[str, Any]:
    """Runs the range test (module docstring) with the recipe's data, model and optimizer.

    Returns {model, data, optimizer, batch_size, start_lr, end_lr, iters (the steps planned),
    time_bounded (whether max_seconds cut the plan), beta, steps, stopped ("diverged",
    "non-finite loss" or None), stop_lr (the lr of the step that ended it), suggestion (an lr,
    or None), suggestion_index, min_loss_lr (where the smoothed loss is lowest), lrs, losses,
    smoothed (per step taken), wall_s}. Progress, and what loading --weights reports, go to
    stderr unless quiet."""
    start_lr, end_lr, iters = check_sweep(start_lr, end_lr, iters)
    max_seconds = check_float("max_seconds", max_seconds, 0.0, MAX_SECONDS)
    ThreadGovernor(recipe.threads, deterministic=recipe.deterministic, once=True)
    device = select_device(recipe.device)
    seed_everything(recipe.seed, recipe.deterministic)
    # The sweep sets the lr and its own length, so adapt leaves them (and the progressive
    # resizing the sweep does not apply) as they are; it evaluates nothing, so the test-time
    # flip is not its business. Its plain steps take one batch each: no accumulation.
    fixed = {"lr", "epochs", "progressive_from", "tta_flip"}
    start = assemble(recipe.replace(given=sorted({*recipe.given, *fixed}), accumulate=1), device)
    r, data, model = start.recipe, start.data, start.model.train()
    iters = iters or auto_iters(data.steps_per_epoch(r.batch_size))
    progress = Progress(iters, quiet=quiet, desc="lr-find")
    for message in start.notes + start.model_notes:
        progress.write(message)
    started = _clock()
    try:
        sweep = _sweep(r, model, _batches(r, data, device), Plan(start_lr, end_lr, iters,
                                                                  max_seconds), device, progress)
    finally:
        progress.close()
    best = steepest(sweep.lrs, sweep.smoothed, skip_begin=sweep.planned // 10)
    lowest = lowest_after(sweep.smoothed, sweep.planned // 10) if sweep.smoothed else None
    return {"model": r.model, "data": r.data, "optimizer": r.optimizer,
            "batch_size": r.batch_size, "start_lr": start_lr, "end_lr": end_lr,
            "iters": sweep.planned, "time_bounded": sweep.planned < iters,
            "max_seconds": max_seconds, "beta": sweep.beta,
            "steps": len(sweep.lrs), "stopped": sweep.stopped, "stop_lr": sweep.stop_lr,
            "suggestion": None if best is None else sweep.lrs[best], "suggestion_index": best,
            "min_loss_lr": None if lowest is None else sweep.lrs[lowest],
            "lrs": sweep.lrs, "losses": sweep.losses, "smoothed": sweep.smoothed,
            "wall_s": round(_clock() - started, 2)}


def _batches(r: Recipe, data: Data, device: torch.device
             ) -> Iterator[tuple[torch.Tensor, torch.Tensor]]:
    for epoch in itertools.count():
        yield from data.train_batches(epoch, r.batch_size, device, seed=r.seed)


def _sweep(r: Recipe, model: torch.nn.Module,
           batches: Iterator[tuple[torch.Tensor, torch.Tensor]], plan: Plan,
           device: torch.device, progress: Progress) -> Sweep:
    """One training step per lr, recorded, until the loss diverges or the lrs run out."""
    optimizer = build_optimizer(r, model)
    amp = resolve_amp(r.amp, device)  # auto: bf16 where it runs natively, as in training
    scaler = torch.amp.GradScaler(device.type, enabled=amp is torch.float16)
    sweep = Sweep(planned=plan.iters, beta=smoothing(plan.iters))
    ema, best, started = SmoothedLoss(sweep.beta), math.inf, _clock()
    for step, (x, y) in enumerate(batches):
        if step == len(plan.lrs):
            break
        if (step >= PROBE_STEPS and (step - PROBE_STEPS) % 10 == 0
                and plan.replan(step, _clock() - started)):
            if step == PROBE_STEPS:  # the steps so far, smoothed as the new plan says
                sweep.beta = smoothing(len(plan.lrs))
                ema = SmoothedLoss(sweep.beta)
                sweep.smoothed = [ema.update(v) for v in sweep.losses]
                best = min(sweep.smoothed)
            sweep.planned = len(plan.lrs)
            progress.replan(len(plan.lrs))
        lr = plan.lrs[step]
        set_lr(optimizer, lr)
        try:
            loss, _ = sgd_step(model, optimizer, scaler, x, y, amp_dtype=amp,
                               channels_last=r.channels_last,
                               label_smoothing=r.label_smoothing, check_loss=_finite)
        except _NonFinite:
            sweep.stopped, sweep.stop_lr = "non-finite loss", lr
            break
        smoothed = ema.update(loss)
        best = min(best, smoothed)
        sweep.lrs.append(lr)
        sweep.losses.append(loss)
        sweep.smoothed.append(smoothed)
        progress.update(len(sweep.lrs), lr=lr, loss=smoothed)
        if smoothed > DIVERGED * best:
            sweep.stopped, sweep.stop_lr = "diverged", lr
            break
    return sweep


def _finite(loss: float) -> None:
    if not math.isfinite(loss):
        raise _NonFinite(loss)

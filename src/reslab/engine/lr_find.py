"""The learning-rate range test (Smith, "Cyclical Learning Rates for Training Neural Networks",
WACV 2017, section 3.3), in the exponential form of fastai's `lr_find` and PyTorch Lightning's
`Tuner.lr_find`: train briefly while the learning rate grows, watch where the loss falls fastest.

The rule, step by step:

- Setup as `reslab train` would start: the recipe's seed, data (training split, augmented),
  model (fresh, or --weights), optimizer (`build_optimizer`: SGD or AdamW, momentum, nesterov,
  weight-decay groups), label smoothing, amp and channels_last. The recipe's schedule is
  replaced by the sweep; torch.compile and torchrun are not used (a few hundred steps).
- Step i of n (i = 0 .. n-1) sets lr_i = start * (end / start) ** (i / (n - 1)), a geometric
  sweep from start to end, and takes one training step on the next training batch (epoch after
  epoch, as in training).
- The loss is smoothed with an exponential moving average and Adam's bias correction, as fastai
  and Lightning: avg_i = beta avg_{i-1} + (1 - beta) loss_i (avg_-1 = 0, beta = 0.98),
  smoothed_i = avg_i / (1 - beta ** (i + 1)).
- The sweep stops early when smoothed_i exceeds 4 times the lowest smoothed loss so far (their
  divergence threshold), or at a loss that is not finite (that step is neither applied nor
  recorded).
- The suggestion is the lr at the steepest descent of the smoothed loss against log(lr)
  (fastai's "steep", Lightning's `suggestion()`): the most negative numpy.gradient (central
  differences) of smoothed over log(lr), leaving out the first n // 10 steps (too few losses in
  the average, lr too small to move the weights, as fastai) and every step after the lowest
  smoothed loss. fastai leaves out only the last 5 steps and Lightning the last one; but a net
  with BN often spikes at a high lr and partly recovers before the 4x threshold is reached, and
  that recovery is a steep descent too (seen on synthetic data: their rule suggested an lr 6x
  past the minimum, inside the spike). Past the minimum the loss no longer improves, so here the
  suggestion lies on the way down to it. None when fewer than 3 steps remain.

The weights are thrown away afterwards: nothing is saved, no run directory is written. `lr_find`
returns the numbers; the figure is `reslab.analysis.plots.lr_find_figure`.
"""
from __future__ import annotations

import itertools
import math
from collections.abc import Iterator
from dataclasses import dataclass, field
from typing import Any

import numpy as np
import torch

from ..data import Data, load_data
from ..errors import UserError
from ..limits import LR_FIND_ITERS, MAX_LR, check_float, check_int
from .logging import Progress
from .recipe import Recipe
from .setup import build_model, build_optimizer, seed_everything, select_device
from .step import sgd_step

BETA = 0.98       # EMA factor of the smoothed loss (fastai, Lightning)
DIVERGED = 4.0    # stop when the smoothed loss exceeds this times its minimum (fastai, Lightning)


class _NonFinite(Exception):
    """The loss of a step is NaN or infinite: the sweep ends before that step is applied."""


def check_sweep(start_lr: float, end_lr: float, iters: int) -> tuple[float, float, int]:
    """The sweep's bounds, validated (reslab.limits): 0 < start_lr < end_lr <= MAX_LR,
    iters in LR_FIND_ITERS."""
    start = check_float("start_lr", start_lr, 0.0, MAX_LR, lo_open=True)
    end = check_float("end_lr", end_lr, 0.0, MAX_LR, lo_open=True)
    if start >= end:
        raise UserError(f"start_lr {start:g} must be below end_lr {end:g}")
    return start, end, check_int("iters", iters, *LR_FIND_ITERS)


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
class Sweep:
    """What the sweep recorded, one entry per step taken; why and at which lr it stopped."""

    lrs: list[float] = field(default_factory=list)
    losses: list[float] = field(default_factory=list)
    smoothed: list[float] = field(default_factory=list)
    stopped: str | None = None   # "diverged", "non-finite loss", or None: every step ran
    stop_lr: float | None = None


def steepest(lrs: list[float], smoothed: list[float], skip_begin: int) -> int | None:
    """Index of the steepest descent of smoothed against log(lr) among the steps from
    skip_begin to the lowest smoothed loss (module docstring); None when fewer than 3 remain."""
    stop = int(np.argmin(smoothed)) + 1 if smoothed else 0
    if stop - skip_begin < 3:
        return None
    slope = np.gradient(np.asarray(smoothed[skip_begin:stop]), np.log(lrs[skip_begin:stop]))
    return skip_begin + int(np.argmin(slope))


def lr_find(recipe: Recipe, *, start_lr: float = 1e-6, end_lr: float = 10.0, iters: int = 200,
            quiet: bool = True) -> dict[str, Any]:
    """Runs the range test (module docstring) with the recipe's data, model and optimizer.

    Returns {model, data, optimizer, batch_size, start_lr, end_lr, iters, steps, stopped
    ("diverged", "non-finite loss" or None), stop_lr (the lr of the step that ended it),
    suggestion (an lr, or None), suggestion_index, min_loss_lr (where the smoothed loss is
    lowest), lrs, losses, smoothed (per step taken)}. Progress, and what loading --weights
    reports, go to stderr unless quiet."""
    start_lr, end_lr, iters = check_sweep(start_lr, end_lr, iters)
    r = recipe
    if r.threads:
        torch.set_num_threads(r.threads)
    device = select_device(r.device)
    seed_everything(r.seed, r.deterministic)
    data = load_data(r.data, data_dir=r.data_dir, val_split=r.val_split, seed=r.seed,
                     image_size=r.image_size, normalize=r.normalize, augment=r.augment,
                     pad=r.pad, workers=r.workers, erase=r.erase)
    model, messages = _model(r, data, device)
    progress = Progress(iters, quiet=quiet, desc="lr-find")
    for message in messages:
        progress.write(message)
    try:
        sweep = _sweep(r, model, _batches(r, data, device), sweep_lrs(start_lr, end_lr, iters),
                       device, progress)
    finally:
        progress.close()
    best = steepest(sweep.lrs, sweep.smoothed, skip_begin=iters // 10)
    lowest = int(np.argmin(sweep.smoothed)) if sweep.smoothed else None
    return {"model": r.model, "data": r.data, "optimizer": r.optimizer,
            "batch_size": r.batch_size, "start_lr": start_lr, "end_lr": end_lr, "iters": iters,
            "steps": len(sweep.lrs), "stopped": sweep.stopped, "stop_lr": sweep.stop_lr,
            "suggestion": None if best is None else sweep.lrs[best], "suggestion_index": best,
            "min_loss_lr": None if lowest is None else sweep.lrs[lowest],
            "lrs": sweep.lrs, "losses": sweep.losses, "smoothed": sweep.smoothed}


def _model(r: Recipe, data: Data, device: torch.device) -> tuple[torch.nn.Module, list[str]]:
    """The model `reslab train` would start from, and what loading --weights reported."""
    torch.manual_seed(r.seed)
    model, messages = build_model(r, len(data.class_names), data.in_chans), []
    if r.weights:
        from ..interop import init_weights

        messages = init_weights(model, r.weights)
    model.to(device).train()
    return (model.to(memory_format=torch.channels_last) if r.channels_last else model), messages


def _batches(r: Recipe, data: Data, device: torch.device
             ) -> Iterator[tuple[torch.Tensor, torch.Tensor]]:
    for epoch in itertools.count():
        yield from data.train_batches(epoch, r.batch_size, device, seed=r.seed)


def _sweep(r: Recipe, model: torch.nn.Module,
           batches: Iterator[tuple[torch.Tensor, torch.Tensor]], lrs: list[float],
           device: torch.device, progress: Progress) -> Sweep:
    """One training step per lr, recorded, until the loss diverges or the lrs run out."""
    optimizer = build_optimizer(r, model)
    amp = {"bf16": torch.bfloat16, "fp16": torch.float16}.get(r.amp)
    scaler = torch.amp.GradScaler(device.type, enabled=amp is torch.float16)
    sweep, ema, best = Sweep(), SmoothedLoss(), math.inf
    for lr, (x, y) in zip(lrs, batches):
        for group in optimizer.param_groups:
            group["lr"] = lr
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

"""fit(): the training loop as numbered phases (nanoGPT style):

  1. assemble: device, process group, seeds, data, model, optimizer (and resume state)
  2. per iteration: lr -> forward/backward -> step -> EMA -> log
  3. per epoch end: evaluate -> checkpoint
  4. finish: test set, weights, summary (the caller writes the report: the engine knows
     nothing of analysis)
"""
from __future__ import annotations

import math
import os
import time
from pathlib import Path
from typing import Any

import torch
import torch.nn.functional as F

from ..data import load_data
from ..data.loaders import available_cpus
from ..data.normalize import Stats
from ..interop import apply_state_dict, layout_kwargs, open_weights
from ..models import get_arch
from ..errors import UserError, warn
from ..record import Preprocess, Record, TrainingData, save_weights
from ..threads import ThreadGovernor
from ..text import plural
from . import state as run_state
from .distributed import all_reduce_sum, broadcast_flag, cleanup, init_distributed
from .adapt import DataFacts, adapt
from .calibration import BNCheck, first_images, recalibrate_bn
from .evaluate import Tally, evaluate, flip_tta
from .logging import MetricsLog, Progress
from .mixing import batch_mixer, mix_batch
from .recipe import Recipe, save_recipe
from .rundir import RunLock, claim
from .schedule import (ScheduleState, lr_at, on_train_batch, on_val_error, train_side,
                       warming_up)
from .setup import (EMA, architecture_from_weights, build_model, build_optimizer, resolve_amp,
                    seed_everything, select_device)
from .step import sgd_step


class NonFiniteLoss(UserError):
    """Training diverged: the loss became NaN or infinite."""


class Run:
    """The assembled objects of one training run (phase 1)."""

    def __init__(self, r: Recipe, out: Path | None, quiet: bool, resume: bool = False) -> None:
        self.quiet, self.messages = quiet, []
        self.threads = ThreadGovernor(r.threads, deterministic=r.deterministic)
        probe = select_device(r.device)
        self.d = init_distributed(probe.type)
        self.device = select_device(r.device, self.d.local_rank)
        self.out = out if self.d.is_main else None
        seed_everything(r.seed + self.d.rank, r.deterministic)
        # read once: the weights, their record (normalisation) and layout (option A's padding)
        state, source_record = open_weights(r.weights, strict_record=False) if r.weights \
            else (None, None)
        self.layout = layout_kwargs(state, source_record) if state is not None else {}
        if not resume:
            r, notes = architecture_from_weights(r, source_record)
            self.messages += notes
        r = self._fit_workers(r)
        self.data = load_data(r.data, data_dir=r.data_dir, val_split=r.val_split, seed=r.seed,
                              image_size=self._image_size(r), normalize=r.normalize,
                              augment=r.augment, pad=r.pad, workers=r.workers, erase=r.erase,
                              auto_augment=r.auto_augment,
                              stats=self._source_stats(r, source_record))
        if not resume:  # a resumed run's stored recipe is already adapted
            r, notes = adapt(r, DataFacts(self.data.num_examples("train"),
                                          min(self.data.input_size[1:]), self.d.world_size))
            self.messages += notes
            self.data.augment, self.data.pad = r.augment, r.pad  # read at batch time
        self.r = r = self._fit_batch(r)
        torch.manual_seed(r.seed)  # the same initial weights on every rank
        self.model = build_model(r, len(self.data.class_names), self.data.in_chans, self.layout)
        if state is not None:
            self.messages += apply_state_dict(self.model, state, str(r.weights),
                                              layout=self.layout)
        self.model.to(self.device)
        if r.channels_last:
            self.model.to(memory_format=torch.channels_last)
        self.optimizer = build_optimizer(r, self.model)
        self.ema = EMA(self.model, r.ema) if r.ema > 0 else None
        self.sched = ScheduleState()
        self.mixer = batch_mixer(r.mixup, r.cutmix, len(self.data.class_names))
        if r.early_stopping and "val" not in self.data.splits:
            raise UserError(f"early_stopping watches the validation top-1: {r.data} has no "
                            "validation split (hold one out with --val-split N)")
        self.bad_evals = 0  # evaluations since the best validation top-1 (early stopping)
        self.steps_per_epoch = self.data.steps_per_epoch(r.step_batch, self.d.world_size)
        self.total = r.iters or max(1, math.ceil(r.epochs * self.steps_per_epoch))
        self.frozen_until = math.ceil(r.freeze_epochs * self.steps_per_epoch)
        if self.frozen_until:
            self.messages.append(f"note: head-only phase: iterations 1-{self.frozen_until} "
                                 f"({plural(r.freeze_epochs, 'epoch', fmt='.3g')}) train only "
                                 "the classifier (fc)")
        self.step, self.best_val, self.train_tally = 0, -1.0, Tally(self.device)
        self.elapsed_before, self.started = 0.0, time.perf_counter()  # training seconds
        self.forward = self._wrap_model()
        self.amp_dtype = resolve_amp(r.amp, self.device)
        self.scaler = torch.amp.GradScaler(self.device.type,
                                           enabled=self.amp_dtype is torch.float16)

    # Defaults that fit the data and the machine (each change is said in a note).
    @staticmethod
    def _fit_workers(r: Recipe) -> Recipe:
        cpus = available_cpus()
        return r.replace(workers=cpus) if r.workers > cpus else r

    @staticmethod
    def _image_size(r: Recipe) -> int | None:
        """Image folders default to the model family's resolution (32 px CIFAR, 224 ImageNet)."""
        if r.image_size is None and r.data.startswith("imagefolder:"):
            return get_arch(r.model).default_input[-1]
        return r.image_size

    def _source_stats(self, r: Recipe, source: Record | None) -> Stats | None:
        """Fine-tuning keeps the normalisation the weights were trained with (per channel)."""
        if source is None or r.normalize != "channel" or source.preprocess.normalize != "channel":
            return None
        if not r.data.startswith("imagefolder:") and not source.trained_on(r.data):
            return None  # an in-memory dataset of other images: its own statistics
        self.messages.append(f"note: normalising with the mean/std the weights were trained "
                             f"with ({r.weights})")
        pre = source.preprocess
        return Stats(list(pre.mean), list(pre.std))

    def _fit_batch(self, r: Recipe) -> Recipe:
        n, ws = self.data.num_examples("train"), self.d.world_size
        if r.step_batch <= n:
            return r
        times = f" x accumulate {r.accumulate}" if r.accumulate > 1 else ""
        if n < ws * r.accumulate:
            raise UserError(f"the training set has {n} images, fewer than the {ws} "
                            f"processes{times}")
        fit = n // r.accumulate - n // r.accumulate % ws
        self.messages.append(f"note: batch size {r.batch_size}{times} is larger than the {n} "
                             f"training images; using {fit}")
        return r.replace(batch_size=fit)

    def _wrap_model(self) -> torch.nn.Module:
        model = self.model
        if self.d.enabled:
            from torch.nn.parallel import DistributedDataParallel as DDP

            ids = [self.device.index] if self.device.type == "cuda" else None
            model = DDP(model, device_ids=ids)
        return torch.compile(model) if self.r.compile else model

    def elapsed(self) -> float:
        """Seconds of training so far, across resumes (for time-to-accuracy)."""
        return self.elapsed_before + time.perf_counter() - self.started

    def record(self) -> Record:
        """What the saved weights need to be used anywhere (reslab.record)."""
        r, d = self.r, self.data
        stats = d.stats
        pre = Preprocess(input_size=tuple(d.input_size), mean=tuple(stats.mean),
                         std=tuple(stats.std), normalize=r.normalize, mean_image=stats.mean_image,
                         crop_fraction=d.crop_fraction, tta_flip=r.tta_flip)
        kwargs = {**r.model_kwargs(), **self.layout, "num_classes": len(d.class_names),
                  "in_chans": d.in_chans}
        return Record(r.model, kwargs, tuple(d.class_names), pre,
                      data=TrainingData(r.data, r.data_dir, d.held_out, r.seed))

    def eval_model(self) -> torch.nn.Module:
        """The weights to evaluate and save: the EMA when enabled, else the live model."""
        if self.ema is None:
            return self.model
        shadow = build_model(self.r, len(self.data.class_names), self.data.in_chans, self.layout)
        shadow.load_state_dict(self.ema.state_dict())
        return shadow.to(self.device)

    def evaluate(self, split: str) -> dict[str, float]:
        model = self.eval_model()
        batches = self.data.eval_batches(split, max(256, self.r.batch_size), self.device,
                                         rank=self.d.rank, world_size=self.d.world_size)
        predict = flip_tta(model) if self.r.tta_flip else None
        return evaluate(model, batches, d=self.d, device=self.device,
                        autocast_dtype=self.amp_dtype, predict=predict)


def fit(recipe: Recipe | None, out_dir: str | Path | None, *, resume: bool = False,
        overwrite: bool = False, quiet: bool = False) -> dict[str, Any]:
    """Trains as the recipe says; writes the run directory (docs/design.md) when out_dir is set.

    A directory that already holds a run is refused unless `resume` (continue from its state/;
    the stored config wins over `recipe`) or `overwrite` (its run files are deleted first). The
    directory is locked while the run writes it. Returns a summary: out, model, steps, wall_s,
    train, val, test; the caller writes the report (reslab.analysis.report.write_run_report).
    """
    out = Path(out_dir) if out_dir is not None else None
    if resume and out is None:
        raise UserError("resume needs the run directory to continue")
    if out is None or int(os.environ.get("RANK", "0")) != 0:  # torchrun: rank 0 owns the run
        return _fit(recipe, out, resume, quiet)
    with RunLock(out):
        claim(out, "resume" if resume else "overwrite" if overwrite else "new")
        return _fit(recipe, out, resume, quiet)


def _fit(recipe: Recipe | None, out: Path | None, resume: bool, quiet: bool) -> dict[str, Any]:
    if resume:
        recipe = run_state.stored_recipe(out)
    if recipe is None:
        raise UserError("a recipe is needed to start a run")
    run = Run(recipe, out, quiet, resume)
    try:
        return _train(run, resume)
    finally:
        cleanup(run.d)


def _train(run: Run, resume: bool) -> dict[str, Any]:
    r, out = run.r, run.out
    if resume:
        run_state.restore(run, out)
    elif out is not None:
        out.mkdir(parents=True, exist_ok=True)
        save_recipe(out / "config.toml", r)
    log = MetricsLog(out / "metrics.jsonl" if out else None, run.step if resume else None,
                     tensorboard=r.tensorboard)
    progress = Progress(run.total, run.step, quiet=quiet_rank(run))
    progress.write(startup_line(run, resume))
    for m in run.messages:
        progress.write(m)
    stop = run_state.StopSignal()
    started, seen, val = time.perf_counter(), 0, None
    run.started = started
    try:
        while run.step < run.total and not stopped_early(run):
            epoch, within = divmod(run.step, run.steps_per_epoch)
            batches = run.data.train_batches(epoch, r.step_batch, run.device, start_step=within,
                                             rank=run.d.rank, world_size=run.d.world_size,
                                             seed=r.seed)
            for x, y in batches:
                run.threads.tick()
                loss = _train_step(run, x, y)
                run.step += 1
                if run.step == run.frozen_until < run.total:
                    progress.write(f"note: head-only phase over after iteration {run.step}: "
                                   "training every layer")
                seen += len(y) * run.d.world_size
                img_s = seen / (time.perf_counter() - started)
                if run.step % 20 == 0 or run.step == run.total:
                    log.log(step=run.step, epoch=run.step / run.steps_per_epoch, loss=loss,
                            lr=max(g["lr"] for g in run.optimizer.param_groups),
                            img_s=round(img_s, 1))
                progress.update(run.step, loss=loss, img_s=round(img_s), epoch=epoch)
                epoch_end = run.step % run.steps_per_epoch == 0
                if epoch_end or run.step == run.total:
                    val = _end_of_epoch(run, log, progress, epoch_end)
                elif r.train_error_every and run.step % r.train_error_every == 0:
                    _log_train_error(run, log)
                elif r.save_every and run.step % r.save_every == 0 and out is not None:
                    run_state.save(run, out)
                if broadcast_flag(stop.requested, run.d, run.device):
                    raise run_state.Interrupted(stop.signame, run.step)
                if run.step >= run.total or stopped_early(run):
                    break
    except run_state.Interrupted as e:
        if out is not None:
            run_state.save(run, out)
        progress.close()
        raise e.with_out(out)
    finally:
        stop.restore()
    progress.close()
    return _finish(run, log, time.perf_counter() - started, val)


def startup_line(run: Run, resume: bool) -> str:
    """What is about to happen, in one line: recipe, model, data, size, device, precision, out."""
    r, d = run.r, run.data
    splits = [s for s in ("train", "val", "test") if s in d.splits]
    if "val" in splits and "test" in splits and d.same_val_test:
        splits.remove("test")
    sizes = ", ".join(f"{'val/test' if s == 'val' and d.same_val_test else s} "
                      f"{d.num_examples(s):,}" for s in splits)
    c, h, w = d.input_size
    precision = {torch.bfloat16: "bf16", torch.float16: "fp16"}.get(run.amp_dtype, "fp32")
    threads = f", {run.threads.describe()}" if run.device.type == "cpu" else ""
    where = f" -> {run.out}" if run.out is not None else ""
    batch = f"{r.batch_size}" + (f" x {r.accumulate} accumulated" if r.accumulate > 1 else "")
    return (f"{'resuming' if resume else 'training'} {r.model} "
            f"({'recipe ' + r.recipe if r.recipe else 'custom recipe'}) on {r.data}: {sizes}, "
            f"{plural(len(d.class_names), 'class')}, {h}x{w}x{c}; batch {batch}, "
            f"{plural(run.total, 'iteration')} "
            f"({plural(run.total / run.steps_per_epoch, 'epoch', fmt='.3g')}); "
            f"{run.device}{threads}, {precision}{where}")


def quiet_rank(run: Run) -> bool:
    return run.quiet or not run.d.is_main


def _train_step(run: Run, x: torch.Tensor, y: torch.Tensor) -> float:
    r = run.r
    lr = lr_at(run.step, run.total, r, run.sched)
    frozen = run.step < run.frozen_until  # --freeze-epochs: only the head learns
    for group in run.optimizer.param_groups:
        group["lr"] = 0.0 if frozen and not group.get("head") else lr
    run.model.train()
    if frozen:  # the body's BN keeps its running statistics too: the body is exactly frozen
        for name, module in run.model.named_modules():
            if isinstance(module, torch.nn.BatchNorm2d):
                module.eval()

    def check(value: float) -> None:
        if not math.isfinite(value):
            kept = ("the last good state is kept in state/"
                    if run.out is not None and run_state.exists(run.out)
                    else "no state was saved before it")  # e.g. it diverged before --save-every
            raise NonFiniteLoss(f"loss is {value} at step {run.step + 1}; {kept} "
                                "(hint: lower --lr, or --amp off)")

    warming = warming_up(run.sched, r)
    x, target = train_view(run, run.step, x, y)
    value, logits = sgd_step(run.forward, run.optimizer, run.scaler, x, target,
                             amp_dtype=run.amp_dtype, channels_last=r.channels_last,
                             label_smoothing=r.label_smoothing, accumulate=r.accumulate,
                             clip_grad_norm=r.clip_grad_norm, check_loss=check)
    if warming:
        # resnet110's warm-up: this batch's error over all ranks (every rank must switch at the
        # same iteration); one small transfer per step, during the warm-up only.
        wrong = torch.stack([(logits.argmax(1) != y).sum().double(),
                             torch.tensor(len(y), dtype=torch.float64, device=y.device)])
        misses, seen = all_reduce_sum(wrong, run.d).tolist()
    if run.ema is not None:
        run.ema.update(run.model)
    if warming:
        on_train_batch(run.sched, r, misses / seen)
    with torch.no_grad():
        loss_sum = torch.tensor(value * len(y), device=logits.device)
        run.train_tally.add(logits.float(), y, loss_sum)
    return value


def _log_train_error(run: Run, log: MetricsLog) -> dict[str, Any]:
    """Logs the running training accuracy and loss since the last such row (the epoch's, or
    the last train_error_every iterations'), and starts a new tally."""
    train = run.train_tally.result(run.d)
    run.train_tally = Tally(run.device)
    log.log(step=run.step, epoch=run.step / run.steps_per_epoch, split="train",
            time_s=round(run.elapsed(), 2), **train)
    return train


def train_view(run: Run, step: int, x: torch.Tensor,
               y: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """The batch as iteration `step` trains on it: progressively resized, then mixed (mixup or
    cutmix: the targets become class probabilities); else the labels as they came."""
    h, w = x.shape[-2:]
    side = train_side(step, run.total, run.r, w)
    if side != w:  # the height in proportion: non-square images keep their aspect
        x = F.interpolate(x, size=(max(1, round(h * side / w)), side), mode="bilinear",
                          antialias=True, align_corners=False)
    if run.mixer is None:
        return x, y
    return mix_batch(run.mixer, x, y, run.r.seed, step)


def stopped_early(run: Run) -> bool:
    """Early stopping: the validation top-1 has not improved for the recipe's patience."""
    return 0 < run.r.early_stopping <= run.bad_evals


def _end_of_epoch(run: Run, log: MetricsLog, progress: Progress, full_epoch: bool) -> dict | None:
    """Evaluate (train running accuracy, val or test), adjust the schedule, checkpoint."""
    r, epoch = run.r, run.step / run.steps_per_epoch
    train = _log_train_error(run, log)
    val = None
    last = run.step == run.total
    split = "val" if "val" in run.data.splits else "test" if "test" in run.data.splits else None
    if last and r.bn_recalibrate:
        _recalibrate(run, progress)
    if split is not None and (last or (r.eval_every and round(epoch) % r.eval_every == 0)):
        val = run.evaluate(split)
        log.log(step=run.step, epoch=epoch, split=split, time_s=round(run.elapsed(), 2), **val)
        progress.write(f"epoch {epoch:.2f} train top1 {train['top1']:.4f} loss "
                       f"{train['loss']:.4f} | {split} top1 {val['top1']:.4f} "
                       f"loss {val['loss']:.4f}")
        if split == "val":
            on_val_error(run.sched, r, 1 - val["top1"])
            improved = val["top1"] > run.best_val
            run.bad_evals = 0 if improved else run.bad_evals + 1
            if improved:
                run.best_val = val["top1"]
                if run.out is not None:
                    save_weights(run.out / "best.safetensors", run.eval_model(), run.record())
            if stopped_early(run) and not last:
                progress.write(early_stop_line(run, epoch))
    run.last_train = train
    if run.out is not None and (full_epoch or last):
        run_state.save(run, run.out)
    return val


def _recalibrate(run: Run, progress: Progress) -> None:
    """--bn-recalibrate: the BN statistics of the weights to be saved, from every training
    image, unaugmented (each rank sees all of them, so every rank gets the same statistics)."""
    model = run.eval_model()
    seen = recalibrate_bn(model, run.data.eval_batches("train", max(256, run.r.batch_size),
                                                       run.device), run.amp_dtype)
    if run.ema is not None:  # the saved weights are the EMA's: give it the new statistics
        run.ema.load_state_dict(model.state_dict())
    progress.write(f"BN running statistics recomputed on {seen:,} training images")


def _check_bn(run: Run) -> BNCheck | None:
    """Eval mode against train mode on training images: catches BN statistics that do not
    match the weights (engine/calibration.py), which no loss curve shows."""
    train = getattr(run, "last_train", None)
    if not train:
        return None
    batches = run.data.eval_batches("train", max(256, run.r.batch_size), run.device)
    result = evaluate(run.eval_model(), first_images(batches), device=run.device,
                      autocast_dtype=run.amp_dtype)
    check = BNCheck(train["top1"], result["top1"], result["n"], 1 / len(run.data.class_names))
    if check.broken and run.d.is_main:
        warn(check.warning(run.r.bn_recalibrate))
    return check


def early_stop_line(run: Run, epoch: float) -> str:
    n = run.bad_evals
    kept = (f"; the best weights are in {run.out / 'best.safetensors'}, the last in "
            "model.safetensors" if run.out is not None else "")
    return (f"early stopping: val top1 has not improved for {n} evaluation{'s' if n != 1 else ''}"
            f" (best {run.best_val:.4f}); stopped at epoch {epoch:.3g} of "
            f"{run.total / run.steps_per_epoch:.3g}{kept}")


def _finish(run: Run, log: MetricsLog, wall_s: float, val: dict | None) -> dict[str, Any]:
    bn = _check_bn(run)
    test = None
    if "val" not in run.data.splits and val is not None:
        test = val  # the last epoch's evaluation already scored the test split at this step
    elif "test" in run.data.splits:
        test = run.evaluate("test")
    if test is not None:
        log.log(step=run.step, epoch=run.step / run.steps_per_epoch, split="test", final=True,
                time_s=round(run.elapsed(), 2), **test)
    summary = {"out": str(run.out) if run.out else None, "model": run.r.model,
               "data": run.r.data, "steps": run.step,
               "epochs": round(run.step / run.steps_per_epoch, 3), "wall_s": round(wall_s, 2),
               "train": getattr(run, "last_train", None),
               "train_eval": None if bn is None else {"top1": bn.eval_top1, "n": bn.images},
               "stopped_early": stopped_early(run),
               "val": val if "val" in run.data.splits else None, "test": test,
               "skipped_images": len(run.data.skipped), "skipped": run.data.skipped[:100]}
    if run.out is not None:
        save_weights(run.out / "model.safetensors", run.eval_model(), run.record())
        run_state.write_summary(run.out, summary)
    return summary

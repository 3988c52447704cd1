"""fit(): the training loop as numbered phases (nanoGPT style):

  1. assemble (engine.run.Run): device, process group, seeds, data, model, optimizer (and
     resume state)
  2. per iteration: lr -> forward/backward -> step -> EMA -> log
  3. per epoch end: evaluate -> checkpoint
  4. finish: test set, weights, summary (the caller writes the report: the engine knows
     nothing of analysis)
"""
from __future__ import annotations

import math
import os
import time
from dataclasses import dataclass
from pathlib import Path

import torch
import torch.nn.functional as F

from ..errors import UserError, warn
from ..weights.record import save_weights
from ..text import plural
from . import state as run_state
from .calibration import BNCheck, first_images, recalibrate_bn
from .distributed import all_reduce_sum, broadcast_flag, cleanup
from .evaluate import Tally, evaluate
from .logging import MetricsLog, Progress
from .mixing import mix_batch
from .recipe import Recipe, save_recipe
from .result import FitResult, Scores
from .run import Run
from .rundir import RunDir, RunLock, claim, resumed_recipe
from .schedule import lr_at, on_train_batch, on_val_error, train_side, warming_up
from .setup import base_lr, set_lr
from .step import sgd_step


class NonFiniteLoss(UserError):
    """Training diverged: the loss became NaN or infinite."""


def fit(recipe: Recipe | None, out_dir: str | Path | None, *, resume: bool = False,
        overwrite: bool = False, quiet: bool = False) -> FitResult:
    """Trains as the recipe says; writes the run directory (docs/design.md) when out_dir is set.

    A directory that already holds a run is refused unless `resume` (continue from its state/
    with its stored config; of `recipe` only where and how fast it runs counts, and a field its
    `given` sets to another value is refused) or `overwrite` (its run files are deleted first).
    The directory is locked while the run writes it. Returns the run's numbers (its summary.json);
    the caller writes the report (reslab.analysis.report.write_run_report).
    """
    out = Path(out_dir) if out_dir is not None else None
    if resume and out is None:
        raise UserError("resume needs the run directory to continue")
    if out is None or int(os.environ.get("RANK", "0")) != 0:  # torchrun: rank 0 owns the run
        return _fit(recipe, out, resume, quiet)
    with RunLock(out):
        claim(out, "resume" if resume else "overwrite" if overwrite else "new")
        return _fit(recipe, out, resume, quiet)


def _fit(recipe: Recipe | None, out: Path | None, resume: bool, quiet: bool) -> FitResult:
    if resume:
        recipe = resumed_recipe(RunDir(out), recipe)  # the run continues as it started
    if recipe is None:
        raise UserError("a recipe is needed to start a run")
    run = Run(recipe, out, quiet, resume)
    try:
        return _train(run, resume)
    finally:
        cleanup(run.dist)


def _train(run: Run, resume: bool) -> FitResult:
    r, out, p = run.r, run.out, run.progress
    if resume:
        run_state.restore(run, out)
    elif out is not None:
        out.mkdir(parents=True, exist_ok=True)
        save_recipe(RunDir(out).config, r)
    log = MetricsLog(RunDir(out).metrics if out else None, p.step if resume else None,
                     tensorboard=r.tensorboard)
    console = Progress(run.total, p.step, quiet=quiet_rank(run))  # bar or plain lines
    console.write(startup_line(run, resume))
    for m in run.messages:
        console.write(m)
    stop = run_state.StopSignal()
    started, seen, scores = time.perf_counter(), 0, EpochScores()
    p.started = started
    try:
        while p.step < run.total and not stopped_early(run):
            epoch, within = divmod(p.step, run.steps_per_epoch)
            batches = run.data.train_batches(epoch, r.step_batch, run.device, start_step=within,
                                             rank=run.dist.rank,
                                             world_size=run.dist.world_size, seed=r.seed)
            for x, y in batches:
                run.threads.tick()
                loss = _train_step(run, x, y)
                p.step += 1
                if p.step == run.frozen_until < run.total:
                    console.write(f"note: head-only phase over after iteration {p.step}: "
                                  "training every layer")
                seen += len(y) * run.dist.world_size
                img_s = seen / (time.perf_counter() - started)
                if p.step % 20 == 0 or p.step == run.total:
                    log.log(step=p.step, epoch=p.step / run.steps_per_epoch, loss=loss,
                            lr=base_lr(run.optimizer),
                            img_s=round(img_s, 1))
                console.update(p.step, loss=loss, img_s=round(img_s), epoch=epoch)
                epoch_end = p.step % run.steps_per_epoch == 0
                if epoch_end and run.ema is not None and run.ema.lookahead:
                    run.ema.update(run.model, decay=1.0)  # airbench94: epochs end on the EMA
                if epoch_end or p.step == run.total:
                    scores = _end_of_epoch(run, log, console, epoch_end)
                elif r.train_error_every and p.step % r.train_error_every == 0:
                    _log_train_error(run, log)
                elif r.save_every and p.step % r.save_every == 0 and out is not None:
                    run_state.save(run, out)
                if broadcast_flag(stop.requested, run.dist, run.device):
                    raise run_state.Interrupted(stop.signame, p.step)
                if p.step >= run.total or stopped_early(run):
                    break
    except run_state.Interrupted as e:
        if out is not None:
            run_state.save(run, out)
        console.close()
        raise e.with_out(out)
    finally:
        stop.restore()
    console.close()
    return _finish(run, log, time.perf_counter() - started, scores)


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
    return run.quiet or not run.dist.is_main


def _train_step(run: Run, x: torch.Tensor, y: torch.Tensor) -> float:
    r, p = run.r, run.progress
    lr = lr_at(p.step, run.total, r, p.schedule)
    frozen = p.step < run.frozen_until  # --freeze-epochs: only the head learns
    set_lr(run.optimizer, lr, head_only=frozen)
    run.model.train()
    if frozen:  # the body's BN keeps its running statistics too: the body is exactly frozen
        for name, module in run.model.named_modules():
            if isinstance(module, torch.nn.BatchNorm2d):
                module.eval()

    def check(value: float) -> None:
        if not math.isfinite(value):
            kept = ("the last good state is kept in state/"
                    if run.out is not None and RunDir(run.out).has_state()
                    else "no state was saved before it")  # e.g. it diverged before --save-every
            raise NonFiniteLoss(f"loss is {value} at step {p.step + 1}; {kept} "
                                "(hint: lower --lr, or --amp off)")

    warming = warming_up(p.schedule, r)
    x, target = train_view(run, p.step, x, y)
    value, logits = sgd_step(run.forward, run.optimizer, run.scaler, x, target,
                             amp_dtype=run.amp_dtype, channels_last=r.channels_last,
                             label_smoothing=r.label_smoothing, accumulate=r.accumulate,
                             clip_grad_norm=r.clip_grad_norm, check_loss=check,
                             class_weights=run.class_weights)
    if warming:
        # resnet110's warm-up: this batch's error over all ranks (every rank must switch at the
        # same iteration); one small transfer per step, during the warm-up only.
        wrong = torch.stack([(logits.argmax(1) != y).sum().double(),
                             torch.tensor(len(y), dtype=torch.float64, device=y.device)])
        misses, seen = all_reduce_sum(wrong, run.dist).tolist()
    if run.ema is not None and run.ema.due(p.step + 1):  # p.step: steps before this one
        run.ema.update(run.model, run.ema.decay_at(p.step + 1, run.total))
    if warming:
        on_train_batch(p.schedule, r, misses / seen)
    with torch.no_grad():
        loss_sum = torch.tensor(value * len(y), device=logits.device)
        p.train_tally.add(logits.float(), y, loss_sum)
    return value


def _log_train_error(run: Run, log: MetricsLog) -> Scores:
    """Logs the running training accuracy and loss since the last such row (the epoch's, or
    the last train_error_every iterations'), and starts a new tally."""
    p = run.progress
    train = p.train_tally.result(run.dist)
    p.train_tally = Tally(run.device)
    log.log(step=p.step, epoch=p.step / run.steps_per_epoch, split="train",
            time_s=round(p.elapsed(), 2), **train)
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
    """Early stopping: the validation figure (run.monitor) has not improved for the recipe's
    patience."""
    return 0 < run.r.early_stopping <= run.progress.bad_evals


@dataclass(frozen=True)
class EpochScores:
    """An epoch end's scores: the running training ones, and the val split's (else the test
    split's) when it was evaluated."""
    train: Scores | None = None
    evaluated: Scores | None = None


def _end_of_epoch(run: Run, log: MetricsLog, console: Progress, full_epoch: bool) -> EpochScores:
    """Evaluate (train running accuracy, val or test), adjust the schedule, checkpoint."""
    r, p = run.r, run.progress
    epoch = p.step / run.steps_per_epoch
    train = _log_train_error(run, log)
    val = None
    last = p.step == run.total
    split = "val" if "val" in run.data.splits else "test" if "test" in run.data.splits else None
    if last and r.bn_recalibrate:
        _recalibrate(run, console)
    if split is not None and (last or (r.eval_every and round(epoch) % r.eval_every == 0)):
        val = run.evaluate(split)
        log.log(step=p.step, epoch=epoch, split=split, time_s=round(p.elapsed(), 2), **val)
        console.write(f"epoch {epoch:.2f} train top1 {train['top1']:.4f} loss "
                      f"{train['loss']:.4f} | {split} top1 {val['top1']:.4f} "
                      f"balanced {val['balanced']:.4f} loss {val['loss']:.4f}")
        if split == "val":
            on_val_error(p.schedule, r, 1 - val["top1"])
            improved = val[run.monitor] > p.best_val
            p.bad_evals = 0 if improved else p.bad_evals + 1
            if improved:
                p.best_val = val[run.monitor]
                if run.out is not None:
                    save_weights(RunDir(run.out).best, run.eval_model(), run.record())
            if stopped_early(run) and not last:
                console.write(early_stop_line(run, epoch))
    if run.out is not None and (full_epoch or last):
        run_state.save(run, run.out)
    return EpochScores(train, val)


def _recalibrate(run: Run, console: Progress) -> None:
    """--bn-recalibrate: the BN statistics of the weights to be saved, from every training
    image, unaugmented (each rank sees all of them, so every rank gets the same statistics)."""
    model = run.eval_model()
    seen = recalibrate_bn(model, run.data.eval_batches("train", max(256, run.r.batch_size),
                                                       run.device), run.amp_dtype)
    if run.ema is not None:  # the saved weights are the EMA's: give it the new statistics
        run.ema.load_state_dict(model.state_dict())
    console.write(f"BN running statistics recomputed on {seen:,} training images")


def _check_bn(run: Run, train: Scores | None) -> BNCheck | None:
    """Eval mode against train mode (`train`: the last epoch's running scores) on training
    images: catches BN statistics that do not match the weights (engine/calibration.py), which
    no loss curve shows."""
    if not train:
        return None
    batches = run.data.eval_batches("train", max(256, run.r.batch_size), run.device)
    result = evaluate(run.eval_model(), first_images(batches), device=run.device,
                      autocast_dtype=run.amp_dtype)
    check = BNCheck(train["top1"], result["top1"], result["n"], 1 / len(run.data.class_names))
    if check.broken and run.dist.is_main:
        warn(check.warning(run.r.bn_recalibrate))
    return check


def early_stop_line(run: Run, epoch: float) -> str:
    n = run.progress.bad_evals
    files = RunDir(run.out) if run.out is not None else None
    kept = (f"; the best weights are in {files.best}, the last in {files.weights.name}"
            if files is not None else "")
    return (f"early stopping: val {run.monitor} has not improved for "
            f"{plural(n, 'evaluation')}"
            f" (best {run.progress.best_val:.4f}); stopped at epoch {epoch:.3g} of "
            f"{run.total / run.steps_per_epoch:.3g}{kept}")


def _finish(run: Run, log: MetricsLog, wall_s: float, last: EpochScores) -> FitResult:
    p = run.progress
    bn = _check_bn(run, last.train)
    test = None
    if "val" not in run.data.splits and last.evaluated is not None:
        test = last.evaluated  # the last epoch's evaluation scored the test split at this step
    elif "test" in run.data.splits:
        test = run.evaluate("test")
    if test is not None:
        log.log(step=p.step, epoch=p.step / run.steps_per_epoch, split="test", final=True,
                time_s=round(p.elapsed(), 2), **test)
        lost = (run.figures.lost_class_warning(run.data.class_names, test["top1"])
                if run.figures is not None else None)
        if lost and run.dist.is_main:
            warn(lost)
    result = FitResult(
        out=str(run.out) if run.out else None, model=run.r.model, data=run.r.data,
        steps=p.step, epochs=round(p.step / run.steps_per_epoch, 3), wall_s=round(wall_s, 2),
        train=last.train,
        train_eval=None if bn is None else {"top1": bn.eval_top1, "n": bn.images},
        stopped_early=stopped_early(run), val=last.evaluated if "val" in run.data.splits else None,
        test=test, skipped_images=len(run.data.skipped), skipped=run.data.skipped[:100],
        train_seconds=p.elapsed_before + wall_s)
    if run.out is not None:
        save_weights(RunDir(run.out).weights, run.eval_model(), run.record())
        result.write(run.out)
    return result

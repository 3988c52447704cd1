"""fit(): the training loop as numbered phases (nanoGPT style):

  1. assemble: device, process group, seeds, data, model, optimizer (and resume state)
  2. per iteration: lr -> forward/backward -> step -> EMA -> log
  3. per epoch end: evaluate -> checkpoint
  4. finish: test set, weights, report
"""
from __future__ import annotations

import math
import time
import warnings
from pathlib import Path
from typing import Any

import torch
import torch.nn.functional as F

from ..analysis.report import write_run_report
from ..data import load_data
from ..errors import UserError
from . import state as run_state
from .distributed import all_reduce_sum, broadcast_flag, cleanup, init_distributed
from .evaluate import Tally, evaluate, flip_tta
from .logging import MetricsLog, Progress
from .recipe import Recipe, save_recipe
from .schedule import ScheduleState, lr_at, on_train_batch, on_val_error, warming_up
from .setup import EMA, build_model, build_optimizer, seed_everything, select_device


class NonFiniteLoss(UserError):
    """Training diverged: the loss became NaN or infinite."""


class Run:
    """The assembled objects of one training run (phase 1)."""

    def __init__(self, r: Recipe, out: Path | None, quiet: bool) -> None:
        self.r, self.quiet = r, quiet
        if r.threads:
            torch.set_num_threads(r.threads)
        probe = select_device(r.device)
        self.d = init_distributed(probe.type)
        self.device = select_device(r.device, self.d.local_rank)
        self.out = out if self.d.is_main else None
        seed_everything(r.seed + self.d.rank, r.deterministic)
        self.data = load_data(r.data, data_dir=r.data_dir, val_split=r.val_split, seed=r.seed,
                              image_size=r.image_size, normalize=r.normalize, augment=r.augment,
                              pad=r.pad, workers=r.workers)
        torch.manual_seed(r.seed)  # the same initial weights on every rank
        self.model = build_model(r, len(self.data.class_names), self.data.in_chans)
        self.messages: list[str] = []
        if r.weights:
            from ..interop import init_weights

            self.messages += init_weights(self.model, r.weights)
        self.model.to(self.device)
        if r.channels_last:
            self.model.to(memory_format=torch.channels_last)
        self.optimizer = build_optimizer(r, self.model)
        self.ema = EMA(self.model, r.ema) if r.ema > 0 else None
        self.sched = ScheduleState()
        self.steps_per_epoch = self.data.steps_per_epoch(r.batch_size, self.d.world_size)
        if self.steps_per_epoch < 1:
            raise UserError(f"batch size {r.batch_size} is larger than the training set "
                            f"({self.data.num_examples('train')} images)")
        self.total = r.iters or max(1, math.ceil(r.epochs * self.steps_per_epoch))
        self.step, self.best_val, self.train_tally = 0, -1.0, Tally(self.device)
        self.elapsed_before, self.started = 0.0, time.perf_counter()  # training seconds
        self.forward = self._wrap_model()
        amp = {"bf16": torch.bfloat16, "fp16": torch.float16}.get(r.amp)
        self.amp_dtype = amp
        self.scaler = torch.amp.GradScaler(self.device.type, enabled=amp is torch.float16)

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

    def meta(self) -> dict[str, Any]:
        return {"architecture": self.r.model,
                "kwargs": {**self.r.model_kwargs(), "num_classes": len(self.data.class_names),
                           "in_chans": self.data.in_chans},
                "class_names": self.data.class_names, "mean": self.data.mean,
                "std": self.data.std, "input_size": list(self.data.input_size),
                "crop_fraction": self.data.crop_fraction, "normalize": self.r.normalize}

    def eval_model(self) -> torch.nn.Module:
        """The weights to evaluate and save: the EMA when enabled, else the live model."""
        if self.ema is None:
            return self.model
        shadow = build_model(self.r, len(self.data.class_names), self.data.in_chans)
        shadow.load_state_dict(self.ema.state_dict())
        return shadow.to(self.device)

    def evaluate(self, split: str) -> dict[str, float]:
        model = self.eval_model()
        batches = self.data.eval_batches(split, max(256, self.r.batch_size), self.device,
                                         rank=self.d.rank, world_size=self.d.world_size)
        predict = flip_tta(model) if self.r.tta_flip else None
        return evaluate(model, batches, d=self.d, device=self.device,
                        autocast_dtype=self.amp_dtype, predict=predict)


def fit(recipe: Recipe, out_dir: str | Path | None, *, resume: bool = False,
        quiet: bool = False) -> dict[str, Any]:
    """Trains as the recipe says; writes the run directory (INTERFACE.md) when out_dir is set.

    With resume, continues from out_dir/state/ (the stored config wins over `recipe`).
    Returns a summary: out, model, steps, wall_s, train, val, test.
    """
    out = Path(out_dir) if out_dir is not None else None
    if resume:
        if out is None or not run_state.exists(out):
            raise UserError(f"nothing to resume in {out}: no state/ directory "
                            "(start the run without --resume)")
        recipe = run_state.stored_recipe(out)
    run = Run(recipe, out, quiet)
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
    for m in run.messages:
        progress.write(m)
    stop = run_state.StopSignal()
    started, seen, val = time.perf_counter(), 0, None
    run.started = started
    try:
        while run.step < run.total:
            epoch, within = divmod(run.step, run.steps_per_epoch)
            batches = run.data.train_batches(epoch, r.batch_size, run.device, start_step=within,
                                             rank=run.d.rank, world_size=run.d.world_size,
                                             seed=r.seed)
            for x, y in batches:
                loss = _train_step(run, x, y)
                run.step += 1
                seen += len(y) * run.d.world_size
                img_s = seen / (time.perf_counter() - started)
                if run.step % 20 == 0 or run.step == run.total:
                    log.log(step=run.step, epoch=run.step / run.steps_per_epoch, loss=loss,
                            lr=run.optimizer.param_groups[0]["lr"], img_s=round(img_s, 1))
                progress.update(run.step, loss=loss, img_s=round(img_s), epoch=epoch)
                epoch_end = run.step % run.steps_per_epoch == 0
                if epoch_end or run.step == run.total:
                    val = _end_of_epoch(run, log, progress, epoch_end)
                elif r.save_every and run.step % r.save_every == 0 and out is not None:
                    run_state.save(run, out)
                if broadcast_flag(stop.requested, run.d, run.device):
                    raise run_state.Interrupted(stop.signame, run.step)
                if run.step >= run.total:
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


def quiet_rank(run: Run) -> bool:
    return run.quiet or not run.d.is_main


def _train_step(run: Run, x: torch.Tensor, y: torch.Tensor) -> float:
    r = run.r
    for group in run.optimizer.param_groups:
        group["lr"] = lr_at(run.step, run.total, r, run.sched)
    if r.channels_last:
        x = x.contiguous(memory_format=torch.channels_last)
    run.model.train()
    with torch.autocast(run.device.type, dtype=run.amp_dtype or torch.bfloat16,
                        enabled=run.amp_dtype is not None):
        logits = run.forward(x)
        loss = F.cross_entropy(logits.float(), y, label_smoothing=r.label_smoothing)
    warming = warming_up(run.sched, r)
    if warming:
        # resnet110's warm-up: this batch's error over all ranks (every rank must switch at the
        # same iteration), fetched with the loss in one transfer: no extra sync per step.
        wrong = torch.stack([(logits.detach().argmax(1) != y).sum().double(),
                             torch.tensor(len(y), dtype=torch.float64, device=y.device)])
        wrong = all_reduce_sum(wrong, run.d)
        value, misses, seen = torch.cat([loss.detach().double().view(1), wrong]).tolist()
    else:
        value = loss.item()
    if not math.isfinite(value):
        kept = ("the last good state is kept in state/"
                if run.out is not None and run_state.exists(run.out)
                else "no state was saved before it")  # e.g. it diverged before --save-every
        raise NonFiniteLoss(f"loss is {value} at step {run.step + 1}; {kept} "
                            "(hint: lower --lr, or --amp off)")
    run.optimizer.zero_grad(set_to_none=True)
    run.scaler.scale(loss).backward()
    run.scaler.step(run.optimizer)
    run.scaler.update()
    if run.ema is not None:
        run.ema.update(run.model)
    if warming:
        on_train_batch(run.sched, r, misses / seen)
    with torch.no_grad():
        run.train_tally.add(logits.detach().float(), y, loss.detach() * len(y))
    return value


def _end_of_epoch(run: Run, log: MetricsLog, progress: Progress, full_epoch: bool) -> dict | None:
    """Evaluate (train running accuracy, val or test), adjust the schedule, checkpoint."""
    r, epoch = run.r, run.step / run.steps_per_epoch
    train = run.train_tally.result(run.d)
    run.train_tally = Tally(run.device)
    log.log(step=run.step, epoch=epoch, split="train", time_s=round(run.elapsed(), 2), **train)
    val = None
    last = run.step == run.total
    if last or round(epoch) % r.eval_every == 0:
        split = "val" if "val" in run.data.splits else "test"
        val = run.evaluate(split)
        log.log(step=run.step, epoch=epoch, split=split, time_s=round(run.elapsed(), 2), **val)
        progress.write(f"epoch {epoch:.2f} train top1 {train['top1']:.4f} loss "
                       f"{train['loss']:.4f} | {split} top1 {val['top1']:.4f} "
                       f"loss {val['loss']:.4f}")
        if split == "val":
            on_val_error(run.sched, r, 1 - val["top1"])
            if val["top1"] > run.best_val:
                run.best_val = val["top1"]
                if run.out is not None:
                    from .checkpoint import save_weights

                    save_weights(run.out / "best.safetensors", run.eval_model(), run.meta())
    run.last_train = train
    if run.out is not None and (full_epoch or last):
        run_state.save(run, run.out)
    return val


def _finish(run: Run, log: MetricsLog, wall_s: float, val: dict | None) -> dict[str, Any]:
    from .checkpoint import save_weights

    test = None
    if "val" not in run.data.splits and val is not None:
        test = val  # the last epoch's evaluation already scored the test split at this step
    elif "test" in run.data.splits:
        test = run.evaluate("test")
    if test is not None:
        log.log(step=run.step, epoch=run.step / run.steps_per_epoch, split="test", final=True,
                time_s=round(run.elapsed(), 2), **test)
    summary = {"out": str(run.out) if run.out else None, "model": run.r.model,
               "data": run.r.data, "steps": run.step, "wall_s": round(wall_s, 2),
               "train": getattr(run, "last_train", None),
               "val": val if "val" in run.data.splits else None, "test": test,
               "skipped_images": len(run.data.skipped)}
    if run.out is not None:
        save_weights(run.out / "model.safetensors", run.eval_model(), run.meta())
        run_state.write_summary(run.out, summary)
        try:
            write_run_report(run.out)
        except Exception as e:  # noqa: BLE001 - the weights are saved; a figure must not fail the run
            warnings.warn(f"could not write the run report: {e}", stacklevel=1)
    return summary

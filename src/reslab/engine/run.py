"""A training run: device, process group, seeds; its data, model and batch (engine.assembly,
shared with lr_find); class balance, optimizer, EMA, the iteration counts; and the record its
saved weights carry."""
from __future__ import annotations

import math
from pathlib import Path

import torch

from ..errors import UserError
from ..weights.record import Preprocess, Record, TrainingData
from ..text import plural
from ..threads import ThreadGovernor
from .assembly import assemble, fit_workers, image_size
from .balance import class_balance
from .distributed import init_distributed
from .evaluate import ClassFigures, Confusion, Tally, evaluate
from .mixing import batch_mixer
from .recipe import Recipe
from .schedule import ScheduleState
from .setup import (EMA, build_model, build_optimizer, resolve_amp, seed_everything,
                    select_device)
from .state import RunProgress
from .tta import tta_model


class Run:
    """The objects of one training run, assembled once (phase 1 of engine.loop), and its
    progress (engine.state.RunProgress: what a resume restores)."""

    def __init__(self, r: Recipe, out: Path | None, quiet: bool, resume: bool = False) -> None:
        self.quiet, self.messages = quiet, []
        self.threads = ThreadGovernor(r.threads, deterministic=r.deterministic)
        probe = select_device(r.device)
        self.dist = init_distributed(probe.type)
        self.device = select_device(r.device, self.dist.local_rank)
        self.out = out if self.dist.is_main else None
        seed_everything(r.seed + self.dist.rank, r.deterministic)
        start = assemble(r, self.device, world_size=self.dist.world_size, resume=resume)
        self.r = r = start.recipe
        self.data, self.model, self.layout = start.data, start.model, start.layout
        self.messages += start.notes
        labels = self.data.labels("train")
        self.balance = class_balance(r.balance, labels, self.data.class_names)
        self.messages += [line for line in (self.balance.note(),) if line]
        self.messages += start.model_notes
        self.data.sample_weights = self.balance.sample_weights(labels)
        weights = self.balance.loss_weights()
        self.class_weights = None if weights is None else weights.to(self.device)
        self.monitor = self.balance.monitor(r.monitor)  # what early stopping and best follow
        self.figures: ClassFigures | None = None  # the last evaluation's per-class figures
        self.optimizer = build_optimizer(r, self.model)
        self.ema = (EMA(self.model, r.ema, every=r.ema_every, lookahead=r.lookahead)
                    if r.ema > 0 else None)
        self.mixer = batch_mixer(r.mixup, r.cutmix, len(self.data.class_names))
        if r.early_stopping and "val" not in self.data.splits:
            figure = {"top1": "top-1", "balanced": "balanced accuracy"}[self.monitor]
            raise UserError(f"early_stopping watches the validation {figure}: {r.data} "
                            "has no validation split (hold one out with --val-split N)")
        self.steps_per_epoch = self.data.steps_per_epoch(r.step_batch, self.dist.world_size)
        self.total = r.iters or max(1, math.ceil(r.epochs * self.steps_per_epoch))
        self.frozen_until = math.ceil(r.freeze_epochs * self.steps_per_epoch)
        if self.frozen_until:
            self.messages.append(f"note: head-only phase: iterations 1-{self.frozen_until} "
                                 f"({plural(r.freeze_epochs, 'epoch', fmt='.3g')}) train only "
                                 "the classifier (fc)")
        self.progress = RunProgress(ScheduleState(), Tally(self.device))  # state/ restores it
        self.forward = self._wrap_model()
        self.amp_dtype = resolve_amp(r.amp, self.device)
        self.scaler = torch.amp.GradScaler(self.device.type,
                                           enabled=self.amp_dtype is torch.float16)

    # tests/test_own_images.py reads these two through Run
    _fit_workers = staticmethod(fit_workers)
    _image_size = staticmethod(image_size)

    def _wrap_model(self) -> torch.nn.Module:
        model = self.model
        if self.dist.enabled:
            from torch.nn.parallel import DistributedDataParallel as DDP

            ids = [self.device.index] if self.device.type == "cuda" else None
            model = DDP(model, device_ids=ids)
        return torch.compile(model) if self.r.compile else model

    def record(self) -> Record:
        """What the saved weights need to be used anywhere (reslab.record)."""
        r, d = self.r, self.data
        stats = d.stats
        pre = Preprocess(input_size=tuple(d.input_size), mean=tuple(stats.mean),
                         std=tuple(stats.std), normalize=r.normalize, mean_image=stats.mean_image,
                         crop_fraction=d.crop_fraction, tta_flip=r.tta_flip, resize=d.resize,
                         tta_translate=r.tta_translate)
        kwargs = {**r.model_kwargs(), **self.layout, "num_classes": len(d.class_names),
                  "in_chans": d.in_chans}
        return Record(r.model, kwargs, tuple(d.class_names), pre,
                      data=TrainingData(r.data, r.data_dir, d.held_out, r.seed,
                                        r.train_images))

    def eval_model(self) -> torch.nn.Module:
        """The weights to evaluate and save: the EMA when enabled, else the live model."""
        if self.ema is None:
            return self.model
        shadow = build_model(self.r, len(self.data.class_names), self.data.in_chans, self.layout)
        shadow.load_state_dict(self.ema.state_dict())
        return shadow.to(self.device)

    def evaluate(self, split: str) -> dict[str, float]:
        """top1, top5, loss, n, balanced, macro_f1 of split; its per-class figures are kept in
        self.figures (the lost-class warning at the end of training)."""
        model = self.eval_model()
        batches = self.data.eval_batches(split, max(256, self.r.batch_size), self.device,
                                         rank=self.dist.rank, world_size=self.dist.world_size)
        # the views the record names (record()), so eval, predict and serve score as this did
        predict = tta_model(model, flip=self.r.tta_flip, translate=self.r.tta_translate)
        confusion = Confusion(len(self.data.class_names), self.device)
        scores = evaluate(model, batches, d=self.dist, device=self.device,
                          autocast_dtype=self.amp_dtype, predict=predict, confusion=confusion)
        self.figures = ClassFigures.of(confusion.matrix(self.dist))
        return scores

"""A training run assembled: device, process group, seeds, data (with the defaults that fit it),
model, optimizer, EMA, the iteration counts; and the record its saved weights carry."""
from __future__ import annotations

import math
from pathlib import Path

import torch

from ..data import load_data
from ..data.loaders import available_cpus
from ..data.normalize import Stats
from ..errors import UserError
from ..weights.layouts import apply_state_dict, layout_kwargs
from ..weights.reading import open_weights
from ..models import get_arch
from ..models.init import whiten_conv_
from ..weights.record import Preprocess, Record, TrainingData
from ..text import plural
from ..threads import ThreadGovernor
from .adapt import DataFacts, adapt, from_scratch_note
from .balance import class_balance
from .calibration import first_images
from .distributed import init_distributed
from .evaluate import ClassFigures, Confusion, Tally, evaluate, flip_tta
from .mixing import batch_mixer
from .recipe import Recipe
from .schedule import ScheduleState
from .setup import (EMA, architecture_from_weights, build_model, build_optimizer, resolve_amp,
                    seed_everything, select_device)
from .state import RunProgress
from .tta import translate_tta

WHITEN_IMAGES = 5000


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
                              auto_augment=r.auto_augment, train_images=r.train_images,
                              resize=r.resize,
                              stats=self._source_stats(r, source_record))
        self.messages += self.data.start_notes
        if not resume:  # a resumed run's stored recipe is already adapted
            r, notes = adapt(r, DataFacts(self.data.num_examples("train"),
                                          min(self.data.input_size[1:]), self.dist.world_size))
            self.messages += notes
            self.data.augment, self.data.pad = r.augment, r.pad  # read at batch time
            scratch = from_scratch_note(r, self.data.input_size[-1])
            self.messages += [scratch] if scratch else []
        self.data.flip_alternate = r.flip_alternate
        self.r = r = self._fit_batch(r)
        labels = self.data.labels("train")
        self.balance = class_balance(r.balance, labels, self.data.class_names)
        self.messages += [line for line in (self.balance.note(),) if line]
        self.data.sample_weights = self.balance.sample_weights(labels)
        weights = self.balance.loss_weights()
        self.class_weights = None if weights is None else weights.to(self.device)
        self.monitor = self.balance.monitor(r.monitor)  # what early stopping and best follow
        self.figures: ClassFigures | None = None  # the last evaluation's per-class figures
        torch.manual_seed(r.seed)  # the same initial weights on every rank
        self.model = build_model(r, len(self.data.class_names), self.data.in_chans, self.layout)
        if state is not None:
            self.messages += apply_state_dict(self.model, state, str(r.weights),
                                              layout=self.layout)
        elif r.whiten_stem and not resume:  # a resumed run's state holds the weights
            self._whiten_stem()
        self.model.to(self.device)
        if r.channels_last:
            self.model.to(memory_format=torch.channels_last)
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

    def _whiten_stem(self) -> None:
        """whiten_stem: the first conv initialised from the patches of up to WHITEN_IMAGES
        training images, normalised and unaugmented (airbench94 uses 5,000)."""
        batches = first_images(self.data.eval_batches("train", 500, "cpu"), WHITEN_IMAGES)
        k = whiten_conv_(self.model.conv1, (x for x, _ in batches))
        self.messages.append(f"note: the first conv whitens the training images' patches "
                             f"({k} leading directions and their negatives)")

    def _fit_batch(self, r: Recipe) -> Recipe:
        n, ws = self.data.num_examples("train"), self.dist.world_size
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
                         crop_fraction=d.crop_fraction, tta_flip=r.tta_flip, resize=d.resize)
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
        if self.r.tta_translate:
            predict = translate_tta(model, flip=self.r.tta_flip)
        else:
            predict = flip_tta(model) if self.r.tta_flip else None
        confusion = Confusion(len(self.data.class_names), self.device)
        scores = evaluate(model, batches, d=self.dist, device=self.device,
                          autocast_dtype=self.amp_dtype, predict=predict, confusion=confusion)
        self.figures = ClassFigures.of(confusion.matrix(self.dist))
        return scores

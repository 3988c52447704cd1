"""A checkpoint's scores on a split (`reslab eval`): the checkpoint's own preprocessing and
test-time views, or the paper's 10-crop and multi-scale testing, as an Evaluation."""
from __future__ import annotations

from collections.abc import Callable, Sequence
from dataclasses import dataclass, replace
from pathlib import Path
from typing import Any

import torch
from torch import nn

from ..choices import FLIPPING_AUGMENTS
from ..errors import UserError
from ..limits import MAX_BATCH, MAX_SCALES, check_image_side, check_int, fit_batch
from ..weights.checkpoint import Checkpoint, as_checkpoint
from .evaluate import (ClassFigures, ClassScore, Confusion, TopLoss, TopLosses, evaluate,
                       evaluate_scored, per_class)


@dataclass(frozen=True)
class Evaluation:
    """A checkpoint's scores on a split (evaluate_checkpoint): how it was scored, top-1/top-5
    (fractions), mean loss and images; for the centre view also the per-class metrics, the
    confusion matrix (rows: true class, columns: predicted) and the examples of largest loss
    when asked; with a runtime, its name and what it chose."""
    ckpt: str
    data: str
    split: str
    crops: int
    scales: tuple[int, ...] | None
    flip: bool
    translate: bool  # airbench94's 1 px translations averaged in (engine.tta.tta_model)
    num_classes: int
    trained_augment: str | None
    top1: float
    top5: float
    loss: float
    n: int
    top_losses: tuple[TopLoss, ...] | None = None
    per_class: tuple[ClassScore, ...] | None = None
    confusion: list[list[int]] | None = None
    runtime: str | None = None
    runtime_note: str | None = None
    balanced: float | None = None  # mean per-class recall (ClassFigures); None multi-scale
    macro_f1: float | None = None

    @property
    def class_names(self) -> list[str]:
        return [c.name for c in self.per_class or ()]

    def to_json(self) -> dict[str, Any]:
        out: dict[str, Any] = {
            "ckpt": self.ckpt, "data": self.data, "split": self.split, "crops": self.crops,
            "scales": list(self.scales) if self.scales is not None else None,
            "flip": self.flip, "translate": self.translate, "num_classes": self.num_classes,
            "trained_augment": self.trained_augment, "top1": self.top1, "top5": self.top5,
            "loss": self.loss, "n": self.n}
        if self.top_losses is not None:
            out["top_losses"] = [t.to_json(self.class_names) for t in self.top_losses]
        if self.per_class is not None:
            out["per_class"] = [c.to_json() for c in self.per_class]
        if self.confusion is not None:
            out["confusion"] = self.confusion
        if self.runtime is not None:
            out["runtime"], out["runtime_note"] = self.runtime, self.runtime_note
        if self.balanced is not None:
            out["balanced"], out["macro_f1"] = self.balanced, self.macro_f1
        return out


def evaluate_checkpoint(ckpt: str | Path | Checkpoint, *, data: str | None = None,
                        data_dir: str | None = None, split: str = "test", crops: int = 1,
                        scales: list[int] | None = None, flip: bool | None = None,
                        translate: bool | None = None, batch_size: int = 256, device: str = "auto",
                        runtime: Callable[[nn.Module], Any] | None = None,
                        top_losses: int = 0) -> Evaluation:
    """Scores a checkpoint on a split: centre view, the paper's 10-crop, or multi-scale.

    Everything comes from the checkpoint's record (reslab.weights.record): the images are
    prepared as in its training (size, crop, mean/std or per-pixel mean), the dataset defaults
    to the one it was trained on, with its val hold-out and seed so `--split val` is the same
    split as in training.
    flip: average with the horizontal flip; translate: with airbench94's 1 px translations
    too (engine.tta.tta_model); both of the centre view, each by default as the run's reported
    numbers did (its record says).
    runtime: None, the model as loaded; else what wraps it for another runtime, e.g.
    reslab.deploy.optimize.first_batch_runtime("auto", device) (built on the first batch, as
    `reslab predict` builds it, so the two agree; its result has `runtime_name` and
    `describe()`). The engine stands below deploy, so the wrapper comes from the caller.

    top_losses: also return the centre view's that many examples of largest loss as
    `top_losses`, TopLoss items with their images de-normalised to [0, 1].
    ckpt: a run directory, a weights file or the Checkpoint the caller resolved."""
    from ..data import load_data
    from ..errors import warn
    from .setup import select_device
    from .tta import multiscale_logits, tta_logits, tta_model

    check_int("batch size", batch_size, 1, MAX_BATCH)
    if scales is not None:
        if not 1 <= len(scales) <= MAX_SCALES:
            raise UserError(f"give 1 to {MAX_SCALES} scales, got {len(scales)}")
        for s in scales:
            check_image_side("scale", s)
    centre = crops == 1 and not scales  # the one view the run's test-time augmentation takes
    if translate and not centre:
        raise UserError("--translate on averages translations of the centre view: drop "
                        "--crops 10/--scales, or --translate on")
    dev = select_device(device)
    checkpoint = as_checkpoint(ckpt)
    ckpt = checkpoint.given  # what the messages and the result name
    model, record = checkpoint.load(dev)
    spec = data or (record.data.spec if record.data is not None else None)
    if not spec:
        raise UserError(f"--data is required: {ckpt} does not say what it was trained on")
    pre = record.preprocess
    trained_dir = record.data.data_dir if record.trained_on(spec) else None
    d = load_data(spec, data_dir=data_dir or trained_dir, **record.split_options(spec),
                  image_size=pre.input_size[-1],
                  normalize=pre.normalize, augment="none", stats=pre.stats(),
                  crop_fraction=pre.crop_fraction, resize=pre.resize)
    if split not in d.splits:
        raise UserError(f"split '{split}' not available for {spec} "
                        f"(available: {', '.join(d.splits)}; val needs --val-split in training)")
    if len(d.class_names) != record.num_classes:
        raise UserError(f"{spec} has {len(d.class_names)} classes but the model was trained "
                        f"for {record.num_classes}")
    if d.in_chans != record.in_chans:
        raise UserError(f"{spec} has {d.in_chans}-channel images but the model takes "
                        f"{record.in_chans}")
    if list(d.class_names) != list(record.class_names):
        warn(f"{spec}'s classes ({_names(d.class_names)}) are not the ones the model was "
             f"trained on ({_names(record.class_names)}); scoring by class index")
    mirrors = "--crops 10" if crops == 10 and not scales else "--flip on" if flip else None
    augment = trained_augment(checkpoint)
    if mirrors and augment is not None and augment not in FLIPPING_AUGMENTS:
        warn(f"{mirrors} also scores mirrored views, but this run was trained without flips "
             f"(augment {augment}): mirrored images may score lower; --crops 1 --flip off "
             "scores the images as trained")
    tta = pre.tta(flip, translate)
    size = d.input_size[1]
    batch_size = fit_batch(batch_size, d.input_size)
    forward = model if runtime is None else runtime(model)
    views: dict[str, Any] = {}  # what only the centre view measures
    confusion = Confusion(len(d.class_names), dev)
    if scales:
        scores = evaluate_scored(multiscale_logits(
            forward, [d.eval_batches(split, batch_size, dev, resize=s) for s in scales]), dev)
    elif crops == 10:
        batches = d.eval_batches(split, batch_size, dev, resize=round(size * 256 / 224))
        scores = evaluate(model, batches, device=dev, confusion=confusion,
                          predict=lambda x: tta_logits(forward, x, crops=10, crop_size=size))
    else:
        preds: list[tuple[torch.Tensor, torch.Tensor]] = []
        worst = TopLosses(top_losses) if top_losses else None
        scores = evaluate(model, d.eval_batches(split, batch_size, dev), device=dev,
                          predict=tta_model(forward, flip=tta.flip, translate=tta.translate),
                          predictions=preds,
                          top_losses=worst, confusion=confusion)
        if worst is not None:
            views["top_losses"] = tuple(replace(
                t, image=d.normalize.invert(t.image[None])[0].clamp(0, 1)) for t in worst.items())
        y_true, y_pred = (torch.cat(t).numpy() for t in zip(*preds))
        views["per_class"] = tuple(per_class(y_true, y_pred, d.class_names))
        views["confusion"] = confusion.matrix().long().tolist()  # rows: true, cols: predicted
    if runtime is not None:
        views["runtime"], views["runtime_note"] = forward.runtime_name, forward.describe()
    if not scales:
        figures = ClassFigures.of(confusion.matrix())
        views["balanced"], views["macro_f1"] = figures.balanced, figures.macro_f1
        lost = figures.lost_class_warning(d.class_names, scores["top1"])
        if lost:
            warn(lost)
    return Evaluation(str(ckpt), spec, split, crops, tuple(scales) if scales else None,
                      bool(tta.flip and centre), bool(tta.translate and centre),
                      len(d.class_names), augment,
                      scores["top1"], scores["top5"], scores["loss"], scores["n"], **views)


def trained_augment(ckpt: Checkpoint) -> str | None:
    """The training augmentation of the run a checkpoint belongs to (its config.toml), None
    when it is not in a run directory."""
    from .recipe import read_toml

    config = ckpt.run_config
    if config is None:
        return None
    try:
        value = read_toml(config, "run config").get("augment", "crop-flip")
    except UserError:
        return None
    return value if isinstance(value, str) else None


def _names(names: Sequence[str]) -> str:
    shown = ", ".join(names[:4])
    return shown + (", ..." if len(names) > 4 else "")

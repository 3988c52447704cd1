"""Top-1 / top-5 accuracy and loss over a split, summed across ranks; a checkpoint's scores
(`reslab eval`) as an Evaluation."""
from __future__ import annotations

from collections.abc import Callable, Iterable, Sequence
from dataclasses import dataclass, replace
from pathlib import Path
from typing import Any

import torch
import torch.nn.functional as F
from torch import nn

from ..choices import FLIPPING_AUGMENTS
from ..errors import UserError
from ..limits import MAX_BATCH, MAX_SCALES, check_image_side, check_int, fit_batch
from ..weights.checkpoint import Checkpoint, as_checkpoint
from .distributed import Dist, all_reduce_sum


class Tally:
    """Running sums of loss, top-1 and top-5 hits; `result()` gives the metrics.jsonl keys."""

    def __init__(self, device: torch.device | str = "cpu") -> None:
        self.sums = torch.zeros(4, dtype=torch.float64, device=device)  # loss, top1, top5, n

    def add(self, logits: torch.Tensor, y: torch.Tensor, loss_sum: torch.Tensor) -> None:
        k = min(5, logits.shape[1])
        top = logits.topk(k, dim=1).indices
        hit = top == y[:, None]
        self.sums += torch.stack([loss_sum.double(), hit[:, 0].sum().double(),
                                  hit.any(1).sum().double(),
                                  torch.tensor(float(len(y)), device=self.sums.device,
                                               dtype=torch.float64)])

    def result(self, d: Dist | None = None) -> dict[str, float]:
        s = all_reduce_sum(self.sums.clone(), d or Dist()).tolist()
        n = max(s[3], 1.0)
        return {"top1": s[1] / n, "top5": s[2] / n, "loss": s[0] / n, "n": int(s[3])}

    def state(self) -> list[float]:
        return self.sums.tolist()

    def load(self, values: list[float]) -> None:
        self.sums = torch.tensor(values, dtype=torch.float64, device=self.sums.device)


class Confusion:
    """Counts of (true class, predicted class) over batches, summed across ranks: the
    class-balanced figures (balanced accuracy, macro-F1) and each class's recall."""

    def __init__(self, num_classes: int, device: torch.device | str = "cpu") -> None:
        self.k = num_classes
        self.counts = torch.zeros(num_classes * num_classes, dtype=torch.float64, device=device)

    def add(self, logits: torch.Tensor, y: torch.Tensor) -> None:
        self.counts += torch.bincount(y * self.k + logits.argmax(1),
                                      minlength=self.k * self.k).to(self.counts)

    def matrix(self, d: Dist | None = None) -> torch.Tensor:
        """(k, k) counts, rows: true class, columns: predicted (on the CPU)."""
        return all_reduce_sum(self.counts.clone(), d or Dist()).view(self.k, self.k).cpu()


@dataclass(frozen=True)
class ClassFigures:
    """Balanced accuracy (mean recall) and macro-F1 over the classes present in the split
    (scikit-learn's balanced_accuracy_score; F1 0 where a class is never predicted), and each
    class's recall and support."""
    balanced: float
    macro_f1: float
    recall: tuple[float, ...]
    support: tuple[int, ...]

    @classmethod
    def of(cls, confusion: torch.Tensor) -> ClassFigures:
        m = confusion.double()
        hits, support, predicted = m.diag(), m.sum(1), m.sum(0)
        recall = hits / support.clamp(min=1)
        precision = hits / predicted.clamp(min=1)
        f1 = torch.where(hits > 0, 2 * precision * recall / (precision + recall).clamp(min=1e-12),
                         torch.zeros_like(hits))
        present = support > 0
        if not bool(present.any()):
            return cls(0.0, 0.0, tuple(recall.tolist()), tuple(support.long().tolist()))
        return cls(float(recall[present].mean()), float(f1[present].mean()),
                   tuple(recall.tolist()), tuple(support.long().tolist()))

    def lost_class_warning(self, names: Sequence[str], top1: float) -> str | None:
        """One line when a class is all but never recognised while top-1 looks fine."""
        lost = [c for c, (r, n) in enumerate(zip(self.recall, self.support))
                if n >= LOST_MIN_SUPPORT and r < LOST_RECALL]
        if not lost or top1 < FINE_TOP1:
            return None
        c = min(lost, key=lambda i: self.recall[i])
        rest = [names[i] for i in lost if i != c]
        others = (f" (so do {', '.join(rest[:3])}{' and more' if len(rest) > 3 else ''})"
                  if rest else "")
        return (f"class {names[c]} has recall {self.recall[c]:.2f} "
                f"({round(self.recall[c] * self.support[c])} of {self.support[c]}){others} "
                f"while top-1 is {top1:.1%}: balanced accuracy {self.balanced:.1%} (if the "
                "training classes are imbalanced, see --balance)")


# A class "all but lost": recall below this, on at least this many images, while top-1 is at
# least FINE_TOP1 (a model at chance everywhere is another problem, said elsewhere)
LOST_RECALL = 0.1
LOST_MIN_SUPPORT = 5
FINE_TOP1 = 0.5


@dataclass(frozen=True)
class TopLoss:
    """One of the examples the model gets most wrong: its position in the split, true and
    predicted class, the probabilities of both, its loss, and the image as the model saw it."""
    index: int
    label: int
    predicted: int
    prob: float       # of the predicted class
    label_prob: float  # of the true class
    loss: float
    image: torch.Tensor  # (C, H, W), normalised as the model's input, on the CPU

    def to_json(self, names: Sequence[str]) -> dict[str, Any]:
        """Its JSON form (no pixels), the classes by name."""
        return {"index": self.index, "class": names[self.label],
                "predicted": names[self.predicted], "prob": self.prob,
                "class_prob": self.label_prob, "loss": self.loss}


class TopLosses:
    """Keeps the n examples of largest cross-entropy loss seen, over batches in split order
    (ties: the earlier example first), with their images (fastai's top_losses)."""

    def __init__(self, n: int) -> None:
        self.n, self.seen = n, 0
        self.loss = self.index = self.probs = self.labels = self.images = None

    def add(self, x: torch.Tensor, y: torch.Tensor, logits: torch.Tensor) -> None:
        loss = F.cross_entropy(logits, y, reduction="none").cpu()
        new = (loss, torch.arange(self.seen, self.seen + len(y)), logits.softmax(1).cpu(),
               y.cpu(), x.float().cpu())
        self.seen += len(y)
        if self.loss is not None:
            new = tuple(torch.cat([old, part]) for old, part in zip(
                (self.loss, self.index, self.probs, self.labels, self.images), new))
        keep = torch.sort(new[0], descending=True, stable=True).indices[:self.n]
        self.loss, self.index, self.probs, self.labels, self.images = (t[keep] for t in new)

    def items(self) -> list[TopLoss]:
        if self.loss is None:
            return []
        return [TopLoss(int(i), int(y), int(p.argmax()), float(p.max()), float(p[y]),
                        float(loss), img)
                for loss, i, p, y, img in zip(self.loss, self.index, self.probs, self.labels,
                                              self.images)]


@dataclass(frozen=True)
class ClassScore:
    """Precision, recall, F1 and support (test images) of one class."""
    name: str
    precision: float
    recall: float
    f1: float
    support: int

    def to_json(self) -> dict[str, Any]:
        return {"class": self.name, "precision": self.precision, "recall": self.recall,
                "f1": self.f1, "support": self.support}


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


@torch.no_grad()
def evaluate(model: nn.Module | Callable[[torch.Tensor], torch.Tensor],
             batches: Iterable[tuple[torch.Tensor, torch.Tensor]], *, d: Dist | None = None,
             device: torch.device | str = "cpu", autocast_dtype: torch.dtype | None = None,
             predict: Callable[[torch.Tensor], torch.Tensor] | None = None,
             predictions: list[tuple[torch.Tensor, torch.Tensor]] | None = None,
             top_losses: TopLosses | None = None,
             confusion: Confusion | None = None) -> dict[str, float]:
    """{'top1', 'top5', 'loss', 'n'} over the batches (accuracies as fractions), and with a
    confusion also 'balanced' and 'macro_f1' (ClassFigures). predictions: a list that receives
    each batch's (labels, predicted classes), for per-class metrics; top_losses: collects the
    examples of largest loss."""
    if isinstance(model, nn.Module):
        was_training = model.training
        model.eval()
    predict = predict or model
    tally = Tally(device)
    device_type = torch.device(device).type
    for x, y in batches:
        with torch.autocast(device_type, dtype=autocast_dtype or torch.bfloat16,
                            enabled=autocast_dtype is not None):
            logits = predict(x).float()
        tally.add(logits, y, F.cross_entropy(logits, y, reduction="sum"))
        if predictions is not None:
            predictions.append((y.cpu(), logits.argmax(1).cpu()))
        if top_losses is not None:
            top_losses.add(x, y, logits)
        if confusion is not None:
            confusion.add(logits, y)
    if isinstance(model, nn.Module) and was_training:
        model.train()
    if confusion is None:
        return tally.result(d)
    figures = ClassFigures.of(confusion.matrix(d))
    return tally.result(d) | {"balanced": figures.balanced, "macro_f1": figures.macro_f1}


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


def per_class(y_true: Any, y_pred: Any, names: Sequence[str]) -> list[ClassScore]:
    """Precision, recall, F1 and support of every class (scikit-learn; 0 where undefined)."""
    from sklearn.metrics import precision_recall_fscore_support

    p, r, f, s = precision_recall_fscore_support(y_true, y_pred, labels=list(range(len(names))),
                                                 zero_division=0)
    return [ClassScore(name, float(p[i]), float(r[i]), float(f[i]), int(s[i]))
            for i, name in enumerate(names)]


def _names(names: Sequence[str]) -> str:
    shown = ", ".join(names[:4])
    return shown + (", ..." if len(names) > 4 else "")


def evaluate_scored(scored: Iterable[tuple[torch.Tensor, torch.Tensor]],
                    device: torch.device) -> dict[str, float]:
    """Metrics from already computed (logits, labels) pairs."""
    tally = Tally(device)
    for logits, y in scored:
        tally.add(logits, y, F.cross_entropy(logits, y, reduction="sum"))
    return tally.result()

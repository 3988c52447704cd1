"""Top-1 / top-5 accuracy and loss over a split, summed across ranks, and the per-class figures
(confusion, balanced accuracy, macro-F1, top losses); a checkpoint's scores are
engine/checkpoint_eval.py's."""
from __future__ import annotations

from collections.abc import Callable, Iterable, Sequence
from dataclasses import dataclass
from typing import Any

import torch
import torch.nn.functional as F
from torch import nn

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


def per_class(y_true: Any, y_pred: Any, names: Sequence[str]) -> list[ClassScore]:
    """Precision, recall, F1 and support of every class (scikit-learn; 0 where undefined)."""
    from sklearn.metrics import precision_recall_fscore_support

    p, r, f, s = precision_recall_fscore_support(y_true, y_pred, labels=list(range(len(names))),
                                                 zero_division=0)
    return [ClassScore(name, float(p[i]), float(r[i]), float(f[i]), int(s[i]))
            for i, name in enumerate(names)]


def evaluate_scored(scored: Iterable[tuple[torch.Tensor, torch.Tensor]],
                    device: torch.device) -> dict[str, float]:
    """Metrics from already computed (logits, labels) pairs."""
    tally = Tally(device)
    for logits, y in scored:
        tally.add(logits, y, F.cross_entropy(logits, y, reduction="sum"))
    return tally.result()

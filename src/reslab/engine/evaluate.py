"""Top-1 / top-5 accuracy and loss over a split, summed across ranks."""
from __future__ import annotations

from collections.abc import Callable, Iterable
from pathlib import Path
from typing import Any

import torch
import torch.nn.functional as F
from torch import nn

from ..errors import UserError
from .distributed import Dist, all_reduce_sum


class Tally:
    """Running sums of loss, top-1 and top-5 hits; `result()` gives the INTERFACE.md keys."""

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


def flip_tta(model: nn.Module) -> Callable[[torch.Tensor], torch.Tensor]:
    """Logits averaged with those of the horizontally flipped image (test-time flip)."""
    return lambda x: 0.5 * (model(x) + model(torch.flip(x, dims=[3])))


@torch.no_grad()
def evaluate(model: nn.Module | Callable[[torch.Tensor], torch.Tensor],
             batches: Iterable[tuple[torch.Tensor, torch.Tensor]], *, d: Dist | None = None,
             device: torch.device | str = "cpu", autocast_dtype: torch.dtype | None = None,
             predict: Callable[[torch.Tensor], torch.Tensor] | None = None) -> dict[str, float]:
    """{'top1', 'top5', 'loss', 'n'} over the batches (accuracies as fractions)."""
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
    if isinstance(model, nn.Module) and was_training:
        model.train()
    return tally.result(d)


def confusion_matrix(model: nn.Module, batches: Iterable[tuple[torch.Tensor, torch.Tensor]],
                     num_classes: int) -> torch.Tensor:
    """(true, predicted) counts over the batches."""
    cm = torch.zeros(num_classes, num_classes, dtype=torch.int64)
    model.eval()
    with torch.no_grad():
        for x, y in batches:
            pred = model(x).argmax(1).cpu()
            cm += torch.bincount(y.cpu() * num_classes + pred,
                                 minlength=num_classes ** 2).view(num_classes, num_classes)
    return cm


def _run_config(ckpt: str | Path) -> dict:
    """The training config of a run directory (or of the run a weights file sits in), if any."""
    from .recipe import read_toml

    path = Path(ckpt)
    cfg = (path if path.is_dir() else path.parent) / "config.toml"
    return read_toml(cfg) if cfg.is_file() else {}


def evaluate_checkpoint(ckpt: str | Path, *, data: str | None = None,
                        data_dir: str | None = None, split: str = "test", crops: int = 1,
                        scales: list[int] | None = None, batch_size: int = 256,
                        device: str = "auto", confusion_png: str | None = None
                        ) -> dict[str, Any]:
    """Scores a checkpoint on a split: centre view, the paper's 10-crop, or multi-scale.

    Images are normalised with the checkpoint's mean/std; a run directory's config supplies
    the dataset, its val hold-out and seed so `--split val` is the same split as in training.
    """
    from ..data import load_data
    from .checkpoint import load_checkpoint
    from .setup import select_device
    from .tta import multiscale_logits, tta_logits

    dev = select_device(device)
    model, meta = load_checkpoint(ckpt, device=dev)
    cfg = _run_config(ckpt)
    spec = data or cfg.get("data")
    if not spec:
        raise UserError(f"--data is required: {ckpt} does not say what it was trained on")
    same = spec == cfg.get("data")
    d = load_data(spec, data_dir=data_dir or (cfg.get("data_dir") if same else None),
                  val_split=cfg.get("val_split", 0) if same else 0,
                  seed=cfg.get("seed", 0) if same else 0,
                  image_size=cfg.get("image_size") if same else None,
                  normalize=cfg.get("normalize", "channel") if same else "channel")
    if split not in d.splits:
        raise UserError(f"split '{split}' not available for {spec} "
                        f"(available: {', '.join(d.splits)}; val needs --val-split in training)")
    if len(d.class_names) != meta["kwargs"]["num_classes"]:
        raise UserError(f"{spec} has {len(d.class_names)} classes but the model was trained "
                        f"for {meta['kwargs']['num_classes']}")
    if d.in_chans != meta["kwargs"].get("in_chans", 3):
        raise UserError(f"{spec} has {d.in_chans}-channel images but the model takes "
                        f"{meta['kwargs'].get('in_chans', 3)}")
    d.mean, d.std = list(meta.get("mean", d.mean)), list(meta.get("std", d.std))
    size = d.input_size[1]
    if scales:
        result = evaluate_scored(multiscale_logits(
            model, [d.eval_batches(split, batch_size, dev, resize=s) for s in scales]), dev)
    elif crops == 10:
        batches = d.eval_batches(split, batch_size, dev, resize=round(size * 256 / 224))
        result = evaluate(model, batches, device=dev,
                          predict=lambda x: tta_logits(model, x, crops=10, crop_size=size))
    else:
        result = evaluate(model, d.eval_batches(split, batch_size, dev), device=dev)
    if confusion_png:
        from ..analysis.plots import plot_confusion

        cm = confusion_matrix(model, d.eval_batches(split, batch_size, dev), len(d.class_names))
        plot_confusion(cm, d.class_names, confusion_png)
    return {"ckpt": str(ckpt), "data": spec, "split": split, "crops": crops,
            "scales": scales, **result}


def evaluate_scored(scored: Iterable[tuple[torch.Tensor, torch.Tensor]],
                    device: torch.device) -> dict[str, float]:
    """Metrics from already computed (logits, labels) pairs."""
    tally = Tally(device)
    for logits, y in scored:
        tally.add(logits, y, F.cross_entropy(logits, y, reduction="sum"))
    return tally.result()

"""Classifying image files with a checkpoint: decode (reslab.data.images, the one decoding
path), prepare as the model was evaluated in training, batch, softmax, top-k."""
from __future__ import annotations

from collections.abc import Iterator, Sequence
from os import PathLike
from typing import Any

import torch
import torch.nn.functional as F
from torch import nn

from ..data.images import open_image, preprocess
from ..engine.evaluate import flip_tta
from ..limits import fit_batch
from ..record import Record


def chunks(items: Sequence[Any], size: int) -> Iterator[Sequence[Any]]:
    """items in consecutive slices of at most size."""
    for i in range(0, len(items), size):
        yield items[i:i + size]


def prepare_images(record: Record, paths: Sequence[str | PathLike]) -> torch.Tensor:
    """The (N, C, H, W) batch the model sees for these files: decoded (open_image), converted to
    the record's channels, resized and centre-cropped, normalised, as the run's evaluation
    prepared its images. `predict_files` and Grad-CAM (deploy.cam) both read files through it."""
    pre = record.preprocess
    mean = pre.mean_image if pre.mean_image is not None else pre.mean
    return preprocess([open_image(p) for p in paths], pre.in_chans, pre.input_size, mean,
                      pre.std, crop_fraction=pre.crop_fraction)


def predict_files(model: nn.Module, record: Record, paths: Sequence[str | PathLike], *,
                  topk: int = 5, batch_size: int = 32, device: str | torch.device = "cpu",
                  flip: bool | None = None) -> list[dict[str, Any]]:
    """One result per file, in order: {"file", "top": [{"class", "index", "prob"}, ...]}.

    The record gives the input channels and size, the evaluation crop, the normalisation (per
    channel or the per-pixel mean image) and the class names; every image, whatever its mode
    and size, is prepared exactly as the run's evaluation prepared its images. An unreadable
    file raises UserError naming it (before any result is returned). flip: average the logits
    with the mirrored image's (default: as the run's evaluation did, its record says)."""
    names, pre = record.class_names, record.preprocess
    k = max(1, min(topk, len(names)))
    model = model.to(device).eval()
    forward = flip_tta(model) if (pre.tta_flip if flip is None else flip) else model
    results = []
    for chunk in chunks(list(paths), fit_batch(batch_size, pre.input_size)):
        x = prepare_images(record, chunk)
        with torch.inference_mode():
            probs = F.softmax(forward(x.to(device)).float(), dim=1).cpu()
        values, indices = probs.topk(k, dim=1)
        for path, vals, idx in zip(chunk, values.tolist(), indices.tolist()):
            results.append({"file": str(path), "top": [
                {"class": names[i], "index": i, "prob": v} for v, i in zip(vals, idx)]})
    return results


def format_predictions(results: list[dict[str, Any]]) -> str:
    """Human-readable lines: the file, then its top-k classes with probabilities."""
    lines = []
    for r in results:
        lines.append(r["file"])
        lines += [f"  {t['prob']:7.2%}  {t['class']}" for t in r["top"]]
        if r.get("cam"):
            lines.append(f"  Grad-CAM: {r['cam']}")
    return "\n".join(lines)

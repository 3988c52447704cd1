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


def _chunks(items: Sequence[Any], size: int) -> Iterator[Sequence[Any]]:
    for i in range(0, len(items), size):
        yield items[i:i + size]


def predict_files(model: nn.Module, meta: dict[str, Any], paths: Sequence[str | PathLike], *,
                  topk: int = 5, batch_size: int = 32, device: str | torch.device = "cpu"
                  ) -> list[dict[str, Any]]:
    """One result per file, in order: {"file", "top": [{"class", "index", "prob"}, ...]}.

    meta (checkpoint metadata) gives the input channels and size, mean/std and class names;
    every image, whatever its mode and size, is converted and resized to that. An unreadable
    file raises UserError naming it (before any result is returned)."""
    names = meta["class_names"]
    in_chans, k = int(meta["input_size"][0]), max(1, min(topk, len(names)))
    model = model.to(device).eval()
    results = []
    for chunk in _chunks(list(paths), batch_size):
        x = preprocess([open_image(p) for p in chunk], in_chans, meta["input_size"],
                       meta["mean"], meta["std"], crop_fraction=meta.get("crop_fraction"))
        with torch.inference_mode():
            probs = F.softmax(model(x.to(device)).float(), dim=1).cpu()
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
    return "\n".join(lines)

"""Classifying image files with a checkpoint: which files (folders and glob patterns, as timm's
inference.py takes them), decode (reslab.data.images, the one decoding path), prepare as the
model was evaluated in training, batch, softmax, top-k; the results as text or CSV."""
from __future__ import annotations

import csv
import glob
import io
from collections.abc import Callable, Iterator, Sequence
from dataclasses import dataclass
from os import PathLike
from pathlib import Path
from typing import Any

import torch
import torch.nn.functional as F
from PIL import Image
from torch import nn

from ..data.images import ImageError, open_image, preprocess
from ..engine.tta import tta_model
from ..limits import fit_batch
from ..weights.record import Record


def image_paths(args: Sequence[str]) -> list[str]:
    """The image files the arguments name, in order: a file as given (a missing one fails when
    it is read, naming it); a folder: the image files under it, recursively, sorted; a glob
    pattern (*, ?, [...]; ** spans folders): the image files it matches, sorted. Image files are
    those with an extension PIL reads; hidden files are left out. A folder or pattern without
    one image is a UserError."""
    from PIL import Image

    from ..errors import UserError

    exts = {e.lower() for e in Image.registered_extensions()}
    paths: list[str] = []
    for arg in args:
        folder = Path(arg).is_dir()
        if folder:  # hidden files and folders left out, as glob's * leaves them out
            found = [str(p) for p in sorted(Path(arg).rglob("*"))
                     if not any(s.startswith(".") for s in p.relative_to(arg).parts)]
        elif glob.has_magic(arg):
            found = sorted(glob.glob(arg, recursive=True))
        else:
            paths.append(arg)
            continue
        images = [p for p in found if Path(p).suffix.lower() in exts and Path(p).is_file()]
        if not images:
            what = "folder" if folder else "pattern"
            raise UserError(f"no image files in {what} '{arg}' (extensions PIL reads: "
                            ".png, .jpg, ...)")
        paths += images
    return paths


def chunks(items: Sequence[Any], size: int) -> Iterator[Sequence[Any]]:
    """items in consecutive slices of at most size."""
    for i in range(0, len(items), size):
        yield items[i:i + size]


def prepare_images(record: Record, paths: Sequence[str | PathLike]) -> torch.Tensor:
    """The (N, C, H, W) batch the model sees for these files: decoded (open_image), then
    `prepare_decoded`. `predict_files` and Grad-CAM (deploy.cam) both read files through it."""
    return prepare_decoded(record, [open_image(p) for p in paths])


def prepare_decoded(record: Record, images: Sequence[Image.Image]) -> torch.Tensor:
    """Decoded images as the model sees them: converted to the record's channels, resized and
    centre-cropped, normalised, as the run's evaluation prepared its images (the server's
    uploads take this path too)."""
    pre = record.preprocess
    mean = pre.mean_image if pre.mean_image is not None else pre.mean
    return preprocess(images, pre.in_chans, pre.input_size, mean, pre.std,
                      crop_fraction=pre.crop_fraction, resize=pre.resize)


def classifier(model: Callable[[torch.Tensor], torch.Tensor], record: Record, *,
               flip: bool | None = None, translate: bool | None = None
               ) -> Callable[[torch.Tensor], torch.Tensor]:
    """The logits function prediction uses: model (an nn.Module or a runtime's callable,
    deploy.runtime) under the test-time augmentation `eval` scores with (engine.tta.tta_model):
    averaged with the mirrored image's when flip says so, with the 1 px translations' when
    translate does (each None: as the run's evaluation did, its record says)."""
    tta = record.preprocess.tta(flip, translate)
    return tta_model(model, flip=tta.flip, translate=tta.translate)


def top_classes(logits: torch.Tensor, names: Sequence[str], topk: int
                ) -> list[list[dict[str, Any]]]:
    """Per row of logits, its topk classes by softmax probability: [{"class", "index",
    "prob"}, ...] (topk clipped to the number of classes)."""
    probs = F.softmax(logits.float(), dim=1).cpu()
    values, indices = probs.topk(max(1, min(topk, len(names))), dim=1)
    return [[{"class": names[i], "index": i, "prob": v} for v, i in zip(vals, idx)]
            for vals, idx in zip(values.tolist(), indices.tolist())]


def predict_files(model: nn.Module, record: Record, paths: Sequence[str | PathLike], *,
                  topk: int = 5, batch_size: int = 32, device: str | torch.device = "cpu",
                  flip: bool | None = None, translate: bool | None = None,
                  runtime: str | None = None) -> list[dict[str, Any]]:
    """One result per file, in order: {"file", "top": [{"class", "index", "prob"}, ...]}.

    The record gives the input channels and size, the evaluation crop, the normalisation (per
    channel or the per-pixel mean image) and the class names; every image, whatever its mode
    and size, is prepared exactly as the run's evaluation prepared its images. An unreadable
    file raises UserError naming it (before any result is returned). flip, translate: the
    test-time views, as `classifier` takes them (default: as the run's evaluation did, its
    record says).
    runtime: None, the model as given; else "torch", "onnxruntime" or "auto"
    (deploy.optimize.FirstBatch: built on the first batch)."""
    from .optimize import FirstBatch

    model = model.to(device).eval()
    fast = model if runtime is None else FirstBatch(model, runtime, compile=False)
    return predict_images(classifier(fast, record, flip=flip, translate=translate), record,
                          paths, topk=topk, batch_size=batch_size, device=device)


@dataclass(frozen=True)
class Unreadable:
    """A file predict_images left out: its path and why it could not be decoded."""
    file: str
    reason: str


def predict_images(forward: Callable[[torch.Tensor], torch.Tensor], record: Record,
                   paths: Sequence[str | PathLike], *, topk: int = 5, batch_size: int = 32,
                   device: str | torch.device = "cpu", skipped: list[Unreadable] | None = None
                   ) -> list[dict[str, Any]]:
    """predict_files with the logits function given (`classifier`'s). skipped: where a file
    that is there but is no readable image (ImageError) goes, left out of the results, as
    training skips one; without it such a file raises. A missing file always raises."""
    results = []
    for chunk in chunks(list(paths), fit_batch(batch_size, record.preprocess.input_size)):
        images, kept = [], []
        for path in chunk:
            try:
                images.append(open_image(path))
            except ImageError as exc:
                if skipped is None:
                    raise
                skipped.append(Unreadable(str(path), str(exc)))
                continue
            kept.append(path)
        if not kept:
            continue
        x = prepare_decoded(record, images)
        with torch.inference_mode():
            tops = top_classes(forward(x.to(device)), record.class_names, topk)
        results += [{"file": str(path), "top": top} for path, top in zip(kept, tops)]
    return results


def predictions_csv(results: list[dict[str, Any]]) -> str:
    """One row per image: its path, then its top-k classes and their probabilities
    (file, class_1, prob_1, ..., class_k, prob_k)."""
    k = max((len(r["top"]) for r in results), default=0)
    buf = io.StringIO()
    writer = csv.writer(buf, lineterminator="\n")
    writer.writerow(["file"] + [f"{c}_{i}" for i in range(1, k + 1) for c in ("class", "prob")])
    for r in results:
        writer.writerow([r["file"]] + [v for t in r["top"] for v in (t["class"],
                                                                     f"{t['prob']:.6f}")])
    return buf.getvalue()


def format_predictions(results: list[dict[str, Any]]) -> str:
    """Human-readable lines: the file, then its top-k classes with probabilities."""
    lines = []
    for r in results:
        lines.append(r["file"])
        lines += [f"  {t['prob']:7.2%}  {t['class']}" for t in r["top"]]
        if r.get("cam"):
            lines.append(f"  Grad-CAM: {r['cam']}")
    return "\n".join(lines)

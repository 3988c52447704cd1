"""Loading a checkpoint for use: a run directory or any weights file -> (model, Record).

reslab weights files describe themselves (reslab.record); other weights files (torchvision/timm
.pth, plain safetensors, training checkpoints) need the architecture and get a default record
(reslab.interop).
"""
from __future__ import annotations

import warnings
from pathlib import Path
from typing import Any

import torch
from torch import nn

from .errors import UserError
from .interop import model_from_file, resolve_ckpt_path  # noqa: F401 - re-exported
from .io import is_safetensors, load_safetensors
from .record import MEAN_IMAGE_KEY, Record, is_reslab, load_into, parse_metadata

def load_checkpoint(path: str | Path, device: str | torch.device = "cpu", *,
                    architecture: str | None = None, **model_kwargs: Any
                    ) -> tuple[nn.Module, Record]:
    """(model in eval mode, its Record) from a run directory or a weights file.

    A reslab safetensors file describes itself. Any other weights file needs `architecture`
    (and optionally create_model options such as num_classes; by default the checkpoint's own
    head and stem sizes): see reslab.interop."""
    file = resolve_ckpt_path(path)
    if is_safetensors(file):
        tensors, raw = load_safetensors(file)
        if is_reslab(raw):
            record = parse_metadata(raw, tensors, str(file))
            if architecture is not None and architecture != record.architecture:
                raise UserError(f"{file} holds a {record.architecture}, not a {architecture}")
            tensors.pop(MEAN_IMAGE_KEY, None)
            model = load_into(record.build_model(), tensors, record, str(file))
            return model.to(device).eval(), record
    if architecture is None:
        raise UserError(f"{file} has no reslab metadata (architecture); pass "
                        f"architecture=NAME or import it once with "
                        f"`reslab import {file} --model NAME --out FILE.safetensors`")
    model, record, messages = model_from_file(file, architecture, **model_kwargs)
    for message in messages:
        warnings.warn(message, stacklevel=2)
    return model.to(device).eval(), record

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
from .interop import (damaged_safetensors, looks_like_safetensors, looks_like_torch_file,
                      model_from_state, not_weights, open_weights, resolve_ckpt_path)
from .io import is_safetensors
from .record import Record, load_into

__all__ = ["load_checkpoint", "resolve_ckpt_path"]


def load_checkpoint(path: str | Path, device: str | torch.device = "cpu", *,
                    architecture: str | None = None, **model_kwargs: Any
                    ) -> tuple[nn.Module, Record]:
    """(model in eval mode, its Record) from a run directory or a weights file (read once).

    A reslab safetensors file describes itself. Any other weights file needs `architecture`
    (and optionally create_model options such as num_classes; by default the checkpoint's own
    head and stem sizes): see reslab.interop."""
    file = resolve_ckpt_path(path)
    if architecture is None and not is_safetensors(file):  # unusable: not worth reading
        if looks_like_safetensors(file):
            raise damaged_safetensors(file)
        if not looks_like_torch_file(file):  # a text file, an ONNX export: say that first
            raise not_weights(file)
        raise _needs_architecture(file)
    state, record = open_weights(file)
    if record is not None and record.architecture != (architecture or record.architecture):
        raise UserError(f"{file} holds a {record.architecture}, not a {architecture}")
    if record is not None:
        model = load_into(record.build_model(), state, record, str(file))
        return model.to(device).eval(), record
    if architecture is None:
        raise _needs_architecture(file)
    model, record, messages = model_from_state(state, None, file, architecture, **model_kwargs)
    for message in messages:
        warnings.warn(message, stacklevel=2)
    return model.to(device).eval(), record


def _needs_architecture(file: Path) -> UserError:
    return UserError(f"{file} has no reslab metadata (the architecture its weights are for): "
                     f"import it once with `reslab import {file} --model NAME --out "
                     "FILE.safetensors` (in Python: load_checkpoint(path, architecture=NAME))")

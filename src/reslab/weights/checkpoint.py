"""Loading a checkpoint for use: a run directory or any weights file -> (model, Record).

reslab weights files describe themselves (reslab.weights.record); other weights files
(torchvision/timm .pth, plain safetensors, training checkpoints) need the architecture and get a
default record (reslab.weights.reading, reslab.weights.layouts).
"""
from __future__ import annotations

import warnings
from functools import cached_property
from pathlib import Path
from typing import Any

import torch
from torch import nn

from ..errors import UserError
from ..io import is_safetensors
from ..rundir_names import RunFiles
from .layouts import model_from_state
from .reading import (damaged_safetensors, looks_like_safetensors, looks_like_torch_file,
                      not_weights, read_weights_file, resolve_ckpt_path)
from .record import Record
from .tensors import load_into

__all__ = ["Checkpoint", "load_checkpoint", "resolve_ckpt_path"]


def load_checkpoint(path: str | Path, device: str | torch.device = "cpu", *,
                    architecture: str | None = None, **model_kwargs: Any
                    ) -> tuple[nn.Module, Record]:
    """(model in eval mode, its Record) from a run directory or a weights file (read once).

    A reslab safetensors file describes itself. Any other weights file needs `architecture`
    (and optionally create_model options such as num_classes; by default the checkpoint's own
    head and stem sizes): see reslab.weights.layouts."""
    return _load_file(resolve_ckpt_path(path), device, architecture, **model_kwargs)


def _load_file(file: Path, device: str | torch.device, architecture: str | None,
               **model_kwargs: Any) -> tuple[nn.Module, Record]:
    """load_checkpoint of a resolved weights file."""
    if architecture is None and not is_safetensors(file):  # unusable: not worth reading
        if looks_like_safetensors(file):
            raise damaged_safetensors(file)
        if not looks_like_torch_file(file):  # a text file, an ONNX export: say that first
            raise not_weights(file)
        raise _needs_architecture(file)
    state, record = read_weights_file(file)
    if record is not None and record.architecture != (architecture or record.architecture):
        raise UserError(f"{file} holds a {record.architecture}, not a {architecture}")
    if record is not None:
        model = load_into(record.build_model(), state, f"{record.architecture} {record.kwargs}",
                          str(file))
        return model.to(device).eval(), record
    if architecture is None:
        raise _needs_architecture(file)
    model, record, messages = model_from_state(state, None, file, architecture, **model_kwargs)
    for message in messages:
        warnings.warn(message, stacklevel=3)  # the caller of load_checkpoint
    return model.to(device).eval(), record


def _needs_architecture(file: Path) -> UserError:
    return UserError(f"{file} has no reslab metadata (the architecture its weights are for): "
                     f"import it once with `reslab import {file} --model NAME --out "
                     "FILE.safetensors` (in Python: load_checkpoint(path, architecture=NAME))")


class Checkpoint:
    """A CKPT argument (run directory or weights file) resolved once, for every command that
    takes one: `path`, the weights file (resolved on first use, so a command checks its flags
    in its own order first); `run_config`, the config.toml of the run the weights belong to
    (None outside a run directory); `load()`, the model and its record, read once."""

    def __init__(self, given: str | Path) -> None:
        self.given = given  # as the user wrote it: what messages and labels name
        self._loaded: tuple[nn.Module, Record] | None = None

    @cached_property
    def path(self) -> Path:
        return resolve_ckpt_path(self.given)

    @cached_property
    def run_config(self) -> Path | None:
        config = RunFiles(self.path.parent).config
        return config if config.is_file() else None

    def load(self, device: str | torch.device = "cpu") -> tuple[nn.Module, Record]:
        """(model in eval mode on device, its Record), read from the file on the first call."""
        if self._loaded is None:
            self._loaded = _load_file(self.path, "cpu", None)
        model, record = self._loaded
        return model.to(device), record


def as_checkpoint(ckpt: str | Path | Checkpoint) -> Checkpoint:
    """ckpt itself when already resolved (a Checkpoint), else a Checkpoint of it."""
    return ckpt if isinstance(ckpt, Checkpoint) else Checkpoint(ckpt)

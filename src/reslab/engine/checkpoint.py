"""Checkpoints: weights as safetensors with metadata, resumable state loadable with
weights_only=True, everything written atomically (temporary file, fsync, rename) so a crash at
any moment leaves the previous file intact."""
from __future__ import annotations

import json
import os
import tempfile
from collections.abc import Callable
from pathlib import Path
from typing import Any

import torch
from safetensors import SafetensorError
from safetensors.torch import load_file, save_file, safe_open

from ..errors import UserError

FORMAT = "reslab-1"
META_KEYS = ("architecture", "kwargs", "class_names", "mean", "std", "input_size")


def _umask() -> int:
    mask = os.umask(0)
    os.umask(mask)
    return mask


def atomic_write(path: str | Path, write: Callable[[str], None]) -> None:
    """Calls write(tmp_path), fsyncs, then renames onto path: readers see old or new, never half."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(prefix=f".{path.name}.", suffix=".tmp", dir=path.parent)
    os.close(fd)
    os.chmod(tmp, 0o666 & ~_umask())  # mkstemp makes 0600; result files follow the umask
    try:
        write(tmp)
        with open(tmp, "rb") as f:
            os.fsync(f.fileno())
        os.replace(tmp, path)
        dir_fd = os.open(path.parent, os.O_RDONLY)
        try:
            os.fsync(dir_fd)
        finally:
            os.close(dir_fd)
    except BaseException:
        Path(tmp).unlink(missing_ok=True)
        raise


def atomic_write_text(path: str | Path, text: str) -> None:
    atomic_write(path, lambda tmp: Path(tmp).write_text(text))


def save_weights(path: str | Path, model: torch.nn.Module, meta: dict[str, Any]) -> None:
    """Writes model.state_dict() as safetensors; meta values (JSON-able) go into its metadata.

    meta holds at least: architecture (registry name), kwargs (create_model options),
    class_names, mean, std (per input channel) and input_size ([C, H, W] seen in training).
    """
    tensors = {k: v.detach().to("cpu").contiguous() for k, v in model.state_dict().items()}
    metadata = {"format": FORMAT, **{k: json.dumps(v) for k, v in meta.items()}}
    atomic_write(path, lambda tmp: save_file(tensors, tmp, metadata=metadata))


def read_weights(path: str | Path) -> tuple[dict[str, torch.Tensor], dict[str, Any]]:
    """(state_dict, meta) of a reslab safetensors file; UserError when unreadable."""
    path = Path(path)
    if not path.is_file():
        raise UserError(f"checkpoint not found: {path}")
    try:
        with safe_open(str(path), framework="pt") as f:
            raw = f.metadata() or {}
        tensors = load_file(str(path))
    except (SafetensorError, OSError, ValueError) as e:
        raise UserError(f"cannot read checkpoint {path}: not a valid safetensors file ({e})") from None
    meta = {}
    for key, value in raw.items():
        if key == "format":
            continue
        try:
            meta[key] = json.loads(value)
        except json.JSONDecodeError:
            meta[key] = value
    return tensors, meta


def resolve_ckpt_path(path: str | Path) -> Path:
    """A CKPT argument: a run directory (its best, else final weights) or a weights file."""
    path = Path(path)
    if path.is_dir():
        for name in ("best.safetensors", "model.safetensors"):
            if (path / name).is_file():
                return path / name
        raise UserError(f"no best.safetensors or model.safetensors in run directory {path}")
    if not path.exists():
        raise UserError(f"checkpoint not found: {path}")
    return path


def save_state(path: str | Path, state: dict[str, Any]) -> None:
    """Resumable training state (tensors, numbers, strings, lists, dicts only: weights_only-safe)."""
    atomic_write(path, lambda tmp: torch.save(state, tmp))


def load_state(path: str | Path) -> dict[str, Any]:
    """Loads a state written by save_state, never executing pickled code."""
    try:
        return torch.load(path, map_location="cpu", weights_only=True)
    except FileNotFoundError:
        raise UserError(f"no saved training state at {path}") from None
    except Exception as e:  # noqa: BLE001 - any unpickling failure is a bad file
        raise UserError(f"cannot load training state {path}: {str(e).splitlines()[0]}") from None


def load_checkpoint(path: str | Path, device: str | torch.device = "cpu", *,
                    architecture: str | None = None, **model_kwargs: Any
                    ) -> tuple[torch.nn.Module, dict[str, Any]]:
    """(model in eval mode, meta) from a run directory or a weights file.

    meta: architecture, kwargs, class_names, mean, std, input_size. A reslab safetensors file
    describes itself. Any other weights file (torchvision/timm .pth, plain safetensors, training
    checkpoints) needs `architecture` (and optionally create_model options such as num_classes;
    by default the checkpoint's own head and stem sizes): see reslab.interop.
    """
    import warnings

    from ..interop import model_from_file, reslab_metadata
    from ..models import create_model

    file = resolve_ckpt_path(path)
    if "architecture" not in (reslab_metadata(file) or {}):
        if architecture is None:
            raise UserError(f"{file} has no reslab metadata (architecture); pass "
                            f"architecture=NAME or import it once with "
                            f"`reslab import {file} --model NAME --out FILE.safetensors`")
        model, meta, messages = model_from_file(file, architecture, **model_kwargs)
        for message in messages:
            warnings.warn(message, stacklevel=2)
        return model.to(device).eval(), meta
    tensors, meta = read_weights(file)
    if architecture is not None and architecture != meta["architecture"]:
        raise UserError(f"{file} holds a {meta['architecture']}, not a {architecture}")
    model = create_model(meta["architecture"], **meta.get("kwargs", {}))
    try:
        model.load_state_dict(tensors, strict=True)
    except RuntimeError as e:
        raise UserError(f"{file} does not match {meta['architecture']}: "
                        f"{str(e).splitlines()[0]}") from None
    return model.to(device).eval(), meta

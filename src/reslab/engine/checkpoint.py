"""Checkpoints: weights as safetensors with metadata, resumable state loadable with
weights_only=True, everything written atomically (temporary file, fsync, rename) so a crash at
any moment leaves the previous file intact."""
from __future__ import annotations

import errno
import json
import os
import re
import tempfile
import warnings
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any

import torch
from safetensors import SafetensorError
from safetensors.torch import load_file, save_file, safe_open

from ..errors import UserError

FORMAT = "reslab-1"
# A full disk or quota: the user's to fix (exit 2), not a reslab bug.
DISK_FULL = (errno.ENOSPC, errno.EDQUOT)


def _umask() -> int:
    mask = os.umask(0)
    os.umask(mask)
    return mask


def disk_full_errno(e: BaseException) -> int | None:
    """ENOSPC/EDQUOT when e or its cause is a full disk: torch.save reports it as a RuntimeError
    whose context is the OSError, safetensors as an error text ending `(os error 28)`."""
    chain: list[BaseException] = []
    seen: BaseException | None = e
    while seen is not None and seen not in chain:  # a hand-made cause could loop
        chain.append(seen)
        seen = seen.__cause__ or seen.__context__
    for err in chain:
        found = re.search(r"\(os error (\d+)\)", str(err))
        code = err.errno if isinstance(err, OSError) else int(found.group(1)) if found else None
        if code in DISK_FULL:
            return code
    return None


def atomic_write(path: str | Path, write: Callable[[str], None], what: str = "file") -> None:
    """Calls write(tmp_path), fsyncs, then renames onto path: readers see old or new, never half.

    A full disk raises UserError (`cannot write checkpoint PATH: No space left on device`); the
    previous file at path is left as it was."""
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
    except BaseException as e:
        Path(tmp).unlink(missing_ok=True)
        code = disk_full_errno(e) if isinstance(e, Exception) else None
        if code is not None:
            raise UserError(f"cannot write {what} {path}: {os.strerror(code)}") from None
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
    atomic_write(path, lambda tmp: save_file(tensors, tmp, metadata=metadata), "checkpoint")


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
    def write(tmp: str) -> None:
        # Through a Python file: torch's own path writer reports a full disk without its errno.
        with open(tmp, "wb") as f:
            torch.save(state, f)

    atomic_write(path, write, "checkpoint")


def torch_load_safe(path: str | Path, safe_globals: Sequence[type] = ()) -> Any:
    """torch.load(weights_only=True): tensors and plain containers (plus safe_globals), never
    pickled code. Errors are torch's own; unpickle_failure() explains them."""
    with warnings.catch_warnings():
        # torch notes pickle protocols it did not write; the error that follows says more.
        warnings.simplefilter("ignore", UserWarning)
        with torch.serialization.safe_globals(list(safe_globals)):
            return torch.load(path, map_location="cpu", weights_only=True)


def unpickle_failure(e: Exception) -> tuple[str | None, str]:
    """(the global a refused pickle needs, or None; a one-line reason) of a torch_load_safe error.

    A pickle that references a class or function (GLOBAL) is what weights_only refuses: loading
    it could run arbitrary code."""
    text = str(e)
    found = re.search(r"GLOBAL ([\w.]+)", text)
    reason = re.search(r"WeightsUnpickler error: \s*(.+)", text)
    line = text.splitlines()[0] if text else ""
    return (found.group(1) if found else None,
            reason.group(1) if reason else f"{type(e).__name__}: {line}")


def load_state(path: str | Path) -> dict[str, Any]:
    """Loads a state written by save_state, never executing pickled code."""
    try:
        return torch_load_safe(path)
    except FileNotFoundError:
        raise UserError(f"no saved training state at {path}") from None
    except Exception as e:  # noqa: BLE001 - any unpickling failure is a bad file
        needs, reason = unpickle_failure(e)
        if needs:
            raise UserError(
                f"refusing to load training state {path}: unpickling it needs {needs}, and a "
                "pickle that references code can run it; reslab writes its states as tensors "
                "and plain values only, so this file was not written by reslab (start the run "
                "afresh without --resume)") from None
        raise UserError(f"cannot load training state {path}: {reason}") from None


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
    raw = reslab_metadata(file)
    if raw is None and file.suffix == ".safetensors":
        read_weights(file)  # raises: say "not a valid safetensors file", not "import it"
    if "architecture" not in (raw or {}):
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
    kwargs = meta.get("kwargs", {})
    if not isinstance(meta["architecture"], str) or not isinstance(kwargs, dict):
        raise UserError(f"{file} has invalid reslab metadata: architecture "
                        f"{meta['architecture']!r}, kwargs {kwargs!r}")
    try:
        model = create_model(meta["architecture"], **kwargs)
    except (TypeError, ValueError, RuntimeError) as e:  # kwargs the model does not take
        raise UserError(f"{file} has invalid reslab metadata for {meta['architecture']}: "
                        f"kwargs {kwargs!r} ({str(e).splitlines()[0]})") from None
    try:
        model.load_state_dict(tensors, strict=True)
    except RuntimeError as e:
        raise UserError(f"{file} does not match {meta['architecture']}: "
                        f"{str(e).splitlines()[0]}") from None
    return model.to(device).eval(), meta

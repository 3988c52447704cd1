"""Reading a weights file: the one way reslab opens one (reslab and plain safetensors, torch
.pth/.pt/.tar read weights_only, training checkpoint dicts with DDP/compile prefixes, a run
directory's final weights, torchvision:NAME), without ever executing pickled code; every tensor
is checked (reslab.weights.tensors) and a reslab file's record validated (reslab.weights.record).
What the tensors are then loaded into is reslab.weights.layouts' job.
"""
from __future__ import annotations

import argparse
import json
from pathlib import Path
from typing import Any

import torch

from ..errors import InvalidRecord, UserError
from ..io import (is_safetensors, load_safetensors, regular_file, torch_load_safe,
                  unpickle_failure, unpickler_reason)
from ..limits import short_text
from ..rundir_names import RunFiles
from .pretrained import TORCHVISION, torchvision_weights
from .record import FORMAT, MEAN_IMAGE_KEY, Record, invalid, short_json
from .tensors import check_tensors

# The first format of reslab's weights files: the record's fields flat in the metadata, no mean
# image (read, never written).
OLD_FORMAT = "reslab-1"
# Where training scripts keep the weights inside a checkpoint dict, in order of preference.
_WRAPPER_KEYS = ("state_dict", "model", "model_state_dict", "net", "state_dict_ema", "model_ema")
# DDP wraps the model as `module`, torch.compile as `_orig_mod`: neither is part of the network.
_PREFIXES = ("module.", "_orig_mod.")
# Harmless classes that popular scripts pickle next to the weights (timm's train.py saves its
# argparse Namespace as `args`): plain attribute bags, they cannot run code when unpickled.
_SAFE_EXTRA = [argparse.Namespace]

StateDict = dict[str, torch.Tensor]


def open_weights(source: str | Path, *, strict_record: bool = True
                 ) -> tuple[StateDict, Record | None]:
    """(state_dict, reslab record or None): the one way reslab reads a weights file.

    source: a reslab or plain safetensors file, a torch .pth/.pt/.tar (read weights_only: no
    pickled code runs), a training checkpoint dict (DDP/compile prefixes stripped), a run
    directory (its final weights) or torchvision:NAME[.WEIGHTS] (the hub-cache file, with the
    record torchvision's weights API gives). The file is read once; every tensor is checked
    (a dtype reslab writes, finite values) before anyone uses it.

    strict_record=False: a reslab file whose record is invalid or of an unusable old form gives
    its weights and no record (for importing or fine-tuning, which bring their own)."""
    if str(source).startswith(TORCHVISION):
        path, record = torchvision_weights(str(source))
    else:
        path, record = resolve_ckpt_path(source), None
    return read_weights_file(path, record, strict_record=strict_record)


def read_weights_file(path: Path, record: Record | None = None, *, strict_record: bool = True
                      ) -> tuple[StateDict, Record | None]:
    """open_weights of a resolved file (resolve_ckpt_path); record: the one it comes with
    (torchvision's), replaced by the file's own when it is a reslab file."""
    if is_safetensors(path):
        tensors, raw = load_safetensors(path)
        if is_reslab(raw):
            try:
                record = parse_metadata(raw, tensors, str(path))
            except InvalidRecord:
                if strict_record:
                    raise
        tensors.pop(MEAN_IMAGE_KEY, None)
        state = _strip_prefixes(tensors)
    else:
        state = _strip_prefixes(_find_state_dict(_safe_torch_load(path), path))
    check_tensors(state, str(path))
    return state, record


def _safe_torch_load(path: Path) -> Any:
    try:
        return torch_load_safe(path, _SAFE_EXTRA)
    except Exception as e:  # noqa: BLE001 - zip/pickle readers raise many types on bad files
        needs, _ = unpickle_failure(e)
        if needs:  # a class or function reference: what weights_only exists to refuse
            raise UserError(
                f"refusing to load {path}: unpickling it needs {needs}, and a pickle "
                "that is more than tensors can run arbitrary code. If you trust the file, "
                f"convert it once: python -c \"import torch; c = torch.load('{path}', "
                "weights_only=False); torch.save(c.state_dict() if hasattr(c, 'state_dict') "
                "else c.get('state_dict', c), 'weights.pth')\" and use weights.pth") from None
        if looks_like_safetensors(path):
            raise damaged_safetensors(path) from None
        # torch's unpickler says where a pickle went wrong; another reader's exception
        # (KeyError: 101 for a text file) would tell a user nothing.
        reason = unpickler_reason(e)
        detail = f" (torch's safe loader: {short_text(reason)})" if reason else ""
        raise UserError(f"{not_weights(path)}{detail}") from None


def damaged_safetensors(path: Path) -> UserError:
    return UserError(f"cannot read checkpoint {path}: it is not a readable safetensors file "
                     "(its header is damaged or the file is truncated): copy it again")


def looks_like_safetensors(path: Path) -> bool:
    """A .safetensors name or a JSON header after the 8 length bytes (is_safetensors said no)."""
    if path.suffix == ".safetensors":
        return True
    try:
        with open(path, "rb") as f:
            return f.read(9)[8:9] == b"{"
    except OSError:
        return False


def looks_like_torch_file(path: Path) -> bool:
    """torch.save's zip archive, or a pickle (protocol 2 and later begin with 0x80)."""
    try:
        with open(path, "rb") as f:
            head = f.read(4)
    except OSError:
        return False
    return head.startswith(b"PK\x03\x04") or head[:1] == b"\x80"


def not_weights(path: Path) -> UserError:
    """What a file that is neither kind of weights file is told, the likely mix-up named."""
    hint = (": an ONNX export runs in ONNX Runtime; give reslab the .safetensors weights or "
            "run directory it was exported from" if path.suffix.lower() == ".onnx" else "")
    return UserError(f"cannot read {path}: it is neither a safetensors file nor a PyTorch "
                     f"checkpoint{hint}")


def _is_state_dict(obj: Any) -> bool:
    return isinstance(obj, dict) and bool(obj) and all(
        isinstance(k, str) and isinstance(v, torch.Tensor) for k, v in obj.items())


def _find_state_dict(obj: Any, path: Path) -> StateDict:
    """The weights inside a plain state_dict or a training checkpoint dict (searched nested)."""
    if _is_state_dict(obj):
        return obj
    if isinstance(obj, dict):
        for key in _WRAPPER_KEYS:
            if key in obj:
                try:
                    return _find_state_dict(obj[key], path)
                except UserError:
                    continue
        keys = ", ".join(short_text(k, 60) for k in list(obj)[:8])
        raise UserError(f"no state_dict in {path} (top-level keys: {keys})")
    raise UserError(f"no state_dict in {path}: it holds a {type(obj).__name__}")


def _strip_prefixes(state: StateDict) -> StateDict:
    """The network's own names: wrapper prefixes (DDP, torch.compile) removed."""
    out = {}
    for key, value in state.items():
        changed = True
        while changed:
            changed = False
            for prefix in _PREFIXES:
                if key.startswith(prefix):
                    key, changed = key[len(prefix):], True
        out[key] = value
    return out


def resolve_ckpt_path(path: str | Path) -> Path:
    """A CKPT argument: a run directory (its final weights, the ones its reported numbers are
    of; else, for a run stopped early, its best) or a weights file."""
    path = Path(path)
    if path.is_dir():
        run = RunFiles(path)
        for weights in (run.weights, run.best):  # the weights the run reported first
            if weights.is_file():
                return weights
        raise UserError(f"no {run.weights.name} or {run.best.name} in run directory {path}")
    if not path.exists():
        raise UserError(f"checkpoint not found: {path}")
    return regular_file(path, "checkpoint")


# --- a reslab file's record ------------------------------------------------------------------

def _from_old_format(meta: dict[str, Any], where: str) -> dict[str, Any]:
    """A reslab-1 file's flat metadata as a reslab-2 record object."""
    if meta.get("normalize") == "pixel":
        raise InvalidRecord(
            f"{where} was written by an older reslab (format {OLD_FORMAT}) for per-pixel-mean "
            "input but does not hold the mean image that training subtracted, so its input "
            "preparation cannot be reproduced; retrain it, or re-import it with per-channel "
            "statistics you choose: reslab import FILE --model ARCH --mean M --std S --out NEW")
    pre = {k: meta[k] for k in ("input_size", "mean", "std", "crop_fraction") if k in meta}
    extra = {k: meta[k] for k in ("grown_from",) if k in meta}
    return {"architecture": meta.get("architecture"), "kwargs": meta.get("kwargs"),
            "class_names": meta.get("class_names"), "preprocess": {**pre, "normalize": "channel"},
            "data": None, "extra": extra}


def is_reslab(raw: dict[str, str]) -> bool:
    """Whether raw safetensors metadata is reslab's (either format)."""
    return raw.get("format") in (FORMAT, OLD_FORMAT) or "architecture" in raw or "record" in raw


def parse_metadata(raw: dict[str, str], tensors: dict[str, torch.Tensor],
                   where: str) -> Record:
    """The Record of a reslab safetensors file's raw metadata (and its mean-image tensor)."""
    fmt = raw.get("format", OLD_FORMAT)
    if fmt == FORMAT:
        try:
            obj = json.loads(raw.get("record", ""))
        except json.JSONDecodeError as e:
            raise invalid(where, f"the record is not valid JSON ({e.msg})") from None
    elif fmt == OLD_FORMAT:
        meta = {}
        for key, value in raw.items():
            try:
                meta[key] = json.loads(value)
            except json.JSONDecodeError:
                meta[key] = value
        obj = _from_old_format(meta, where)
    else:
        raise InvalidRecord(f"{where} has format {short_json(fmt)}, which this reslab does not "
                            f"know (it reads {FORMAT} and {OLD_FORMAT}); a newer reslab wrote it?")
    return Record.from_json(obj, tensors.get(MEAN_IMAGE_KEY), where)

"""Weights from elsewhere: reslab and plain safetensors, torchvision/timm state_dicts, training
checkpoints (DDP, torch.compile, timm's train.py), loaded without ever executing pickled code.

Key names: our ResNet uses torchvision's module names, and timm's ResNet (resnet18..152, default
stem) uses the same ones (conv1, bn1, layerN.i.convK/bnK, downsample.0/1, fc): timm's extra
modules (act*, aa, drop_block, se=None) hold no parameters. The CIFAR ResNets of akamaster's
reproduction name the classifier `linear` (renamed to `fc`) and pad option A's zero channels on
both sides of the input's: their files imply `pad_sides="both"` (layout_kwargs), which the
importer builds and records. tests/test_interop.py checks each layout against its own forward
pass, written as the foreign code does it.
"""
from __future__ import annotations

import argparse
import re
from pathlib import Path
from typing import Any

import torch
from torch import nn

from .engine.rundir import RunDir
from .errors import InvalidRecord, UserError
from .io import (is_safetensors, load_safetensors, regular_file, torch_load_safe,
                 unpickle_failure, unpickler_reason)
from .limits import MAX_CLASSES, MAX_IN_CHANS, check_int, short_text
from .text import plural
from .models import create_model, get_arch, list_models
from .models.blocks import Bottleneck
from .record import MEAN_IMAGE_KEY, Preprocess, Record, is_reslab, parse_metadata
from .weights_check import check_tensors

IMAGENET_MEAN = (0.485, 0.456, 0.406)
IMAGENET_STD = (0.229, 0.224, 0.225)
# Where training scripts keep the weights inside a checkpoint dict, in order of preference.
_WRAPPER_KEYS = ("state_dict", "model", "model_state_dict", "net", "state_dict_ema", "model_ema")
# DDP wraps the model as `module`, torch.compile as `_orig_mod`: neither is part of the network.
_PREFIXES = ("module.", "_orig_mod.")
# Harmless classes that popular scripts pickle next to the weights (timm's train.py saves its
# argparse Namespace as `args`): plain attribute bags, they cannot run code when unpickled.
_SAFE_EXTRA = [argparse.Namespace]
_HEAD = ("fc.weight", "fc.bias")

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


def _is_akamaster(state: StateDict) -> bool:
    return "linear.weight" in state and "fc.weight" not in state


def reslab_names(state: StateDict) -> StateDict:
    """state with known foreign names mapped to ours (akamaster's classifier `linear` -> `fc`)."""
    if not _is_akamaster(state):
        return state
    return {f"fc.{k[len('linear.'):]}" if k.startswith("linear.") else k: v
            for k, v in state.items()}


def layout_kwargs(state: StateDict, record: Record | None = None) -> dict[str, Any]:
    """The create_model options a file's layout implies that its tensors cannot show: option A
    is parameter-free, so only the source tells where its zero channels go. akamaster's
    pytorch_resnet_cifar10 pads planes//4 zero channels on both sides of the input's; a reslab
    record says its own."""
    if record is not None:
        return {"pad_sides": record.kwargs["pad_sides"]} if "pad_sides" in record.kwargs else {}
    return {"pad_sides": "both"} if _is_akamaster(state) else {}


def guess_architecture(state: StateDict) -> str | None:
    """The registered residual architecture whose block layout matches the state_dict's keys."""
    counts = []
    for stage in range(1, 5):
        idx = {int(m.group(1)) for k in state if (m := re.match(rf"layer{stage}\.(\d+)\.", k))}
        if idx:
            counts.append(max(idx) + 1)
    bottleneck = any(k.startswith("layer1.0.conv3.") for k in state)
    for name in list_models():
        arch = get_arch(name)
        if (arch.residual and tuple(arch.layers) == tuple(counts)
                and (arch.block is Bottleneck) == bottleneck):
            return name
    return None


def apply_state_dict(model: nn.Module, state: StateDict, source: str,
                     target: str = "the model", layout: dict[str, Any] | None = None
                     ) -> list[str]:
    """Loads state into model strictly, except: a head of another size stays freshly initialised
    (fine-tuning), a 3-channel stem is summed for a 1-channel model, and missing BN
    num_batches_tracked counters are kept. Returns messages saying what was adapted.

    layout: the options the weights need (layout_kwargs; by default read from the names); a
    model built otherwise is refused, since its option-A shortcuts would shift the channels."""
    layout = layout_kwargs(state) if layout is None else layout
    _check_layout(model, layout, source)
    own = model.state_dict()
    state, messages, fresh = dict(reslab_names(state)), [], set()
    if (all(k in state and k in own for k in _HEAD)
            and state["fc.weight"].shape != own["fc.weight"].shape):
        old, new = state.pop("fc.weight").shape, own["fc.weight"].shape
        state.pop("fc.bias")
        fresh = set(_HEAD)
        messages.append(f"head replaced: {source} has {plural(old[0], 'class', fmt='d')}, "
                        f"the model {new[0]}; "
                        "fc is freshly initialised for fine-tuning")
    messages += _adapt_stem(own, state)
    _check_match(own, state, f"{source} does not match {target}", skip=fresh)
    # Old checkpoints lack BN's num_batches_tracked (unused in eval): keep the model's.
    model.load_state_dict({k: state.get(k, own[k]) for k in own}, strict=True)
    return messages


def _check_layout(model: nn.Module, layout: dict[str, Any], source: str) -> None:
    options = getattr(model, "block_options", {})
    wanted = layout.get("pad_sides", "after")
    if (options.get("shortcut") == "A" and options.get("residual")
            and options.get("pad_sides", "after") != wanted):
        raise UserError(
            f"{source} pads option-A shortcuts with zero channels on {_SIDES[wanted]}, the model "
            f"on {_SIDES[options.get('pad_sides', 'after')]}: loading it would shift the "
            f"channels of every block; build the model with pad_sides=\"{wanted}\" (reslab "
            "import does it and records it)")


_SIDES = {"after": "the side after the input's channels",
          "both": "both sides of the input's channels (akamaster's layout)"}


def _adapt_stem(own: StateDict, state: StateDict) -> list[str]:
    """RGB weights for a grayscale model: the summed kernel responds to gray as RGB did."""
    w, mine = state.get("conv1.weight"), own.get("conv1.weight")
    if w is None or mine is None or w.dim() != 4 or w.shape == mine.shape:
        return []
    same_kernel = (w.shape[0], *w.shape[2:]) == (mine.shape[0], *mine.shape[2:])
    if mine.shape[1] == 1 and w.shape[1] == 3 and same_kernel:
        state["conv1.weight"] = w.sum(dim=1, keepdim=True)
        return ["stem adapted: 3-channel conv1 summed over its input channels for 1-channel input"]
    return []


def _check_match(own: StateDict, state: StateDict, what: str, skip: set[str]) -> None:
    missing = [k for k in own if k not in state and k not in skip
               and not k.endswith("num_batches_tracked")]
    unexpected = [short_text(k, 80) for k in state if k not in own]
    shapes = [f"{k} {list(state[k].shape)} vs model {list(own[k].shape)}"
              for k in own if k in state and state[k].shape != own[k].shape]
    problems = ([f"shape {s}" for s in shapes[:3]] + [f"missing {k}" for k in missing[:3]]
                + [f"unexpected {k}" for k in unexpected[:3]])
    if problems:
        guess = guess_architecture(state)
        hint = f" (its keys look like {guess})" if guess else ""
        raise UserError(f"{what}{hint}: {'; '.join(problems)}")


TORCHVISION = "torchvision:"


def resolve_ckpt_path(path: str | Path) -> Path:
    """A CKPT argument: a run directory (its final weights, the ones its reported numbers are
    of; else, for a run stopped early, its best) or a weights file."""
    path = Path(path)
    if path.is_dir():
        run = RunDir(path)
        for weights in (run.weights, run.best):  # the weights the run reported first
            if weights.is_file():
                return weights
        raise UserError(f"no {run.weights.name} or {run.best.name} in run directory {path}")
    if not path.exists():
        raise UserError(f"checkpoint not found: {path}")
    return regular_file(path, "checkpoint")



def torchvision_weights(spec: str) -> tuple[Path, Record]:
    """(cached weights file, record) of `torchvision:NAME[.WEIGHTS]`, e.g. torchvision:resnet50
    (its DEFAULT weights) or torchvision:resnet50.IMAGENET1K_V2, through torchvision's weights
    API: class names and preprocessing (mean/std, resize and crop) come with the weights.

    The file is looked up in the torch hub cache ($TORCH_HOME/hub/checkpoints, by default
    ~/.cache/torch/hub/checkpoints) and downloaded there when missing (unless RESLAB_OFFLINE=1);
    offline, the error names the file, where it comes from and where to put it."""
    import os
    from urllib.parse import urlparse

    from torchvision.models import get_model_weights

    name, _, tag = spec[len(TORCHVISION):].partition(".")
    ours = [m for m in list_models() if get_arch(m).family == "imagenet" and get_arch(m).residual]
    if name not in ours:
        from .errors import unknown

        raise unknown("torchvision model", name, ours)
    enum = get_model_weights(name)
    choices = [w.name for w in enum]
    if tag and tag not in choices:
        from .errors import unknown

        raise unknown(f"{name} weights", tag, choices)
    weights = enum[tag] if tag else enum.DEFAULT
    filename = os.path.basename(urlparse(weights.url).path)
    cache = Path(torch.hub.get_dir()) / "checkpoints" / filename
    if not cache.is_file():
        _download(weights.url, cache, f"{name}.{weights.name}")
    t = weights.transforms()
    crop, resize = int(t.crop_size[0]), int(t.resize_size[0])
    pre = Preprocess(input_size=(3, crop, crop), mean=tuple(t.mean), std=tuple(t.std),
                     crop_fraction=crop / resize)
    num_classes = len(weights.meta["categories"])
    record = Record(name, {"num_classes": num_classes, "in_chans": 3},
                    tuple(weights.meta["categories"]), pre,
                    extra={"pretrained": f"torchvision {name}.{weights.name}"})
    return cache, record


def _download(url: str, path: Path, what: str) -> None:
    import os

    reason = "RESLAB_OFFLINE=1"
    if os.environ.get("RESLAB_OFFLINE") != "1":
        from .io import ensure_dir

        ensure_dir(path.parent, "torch hub cache")
        try:
            torch.hub.download_url_to_file(url, str(path), progress=False)
            return
        except Exception as e:  # noqa: BLE001 - offline, proxy, disk: all "not available"
            reason = str(e).splitlines()[0] if str(e) else type(e).__name__
    raise UserError(f"pretrained weights {what} are not in the torch hub cache and could not "
                    f"be downloaded ({reason}): put {path.name} (from {url}) in {path.parent} "
                    "(or set TORCH_HOME to a cache that has it)")


def init_weights(model: nn.Module, spec: str | Path) -> list[str]:
    """Initialises model from any supported weights file or torchvision:NAME (fine-tuning);
    returns messages saying what was adapted."""
    state, record = open_weights(spec, strict_record=False)
    return apply_state_dict(model, state, str(spec), layout=layout_kwargs(state, record))


def default_record(architecture: str, kwargs: dict[str, Any], num_classes: int, in_chans: int
                   ) -> Record:
    """The record of imported weights: class names "0".."K-1", ImageNet mean/std for 3-channel
    input (what torchvision, timm and the common CIFAR reproductions trained with), 0.5/0.5
    otherwise, the family's input size and evaluation crop; no training data known."""
    family = get_arch(architecture).family
    rgb = in_chans == 3
    size = 224 if family == "imagenet" else 32
    pre = Preprocess(input_size=(in_chans, size, size),
                     mean=IMAGENET_MEAN if rgb else (0.5,) * in_chans,
                     std=IMAGENET_STD if rgb else (0.5,) * in_chans,
                     crop_fraction=224 / 256 if family == "imagenet" else 1.0)
    return Record(architecture, {**kwargs, "num_classes": num_classes, "in_chans": in_chans},
                  tuple(str(i) for i in range(num_classes)), pre)


def model_from_file(path: str | Path, architecture: str, **model_kwargs: Any
                    ) -> tuple[nn.Module, Record, list[str]]:
    """(model, record, messages): builds `architecture` and loads any weights file into it.

    num_classes and in_chans default to the checkpoint's own (head and stem shapes)."""
    state, record = open_weights(path, strict_record=False)
    return model_from_state(state, record, path, architecture, **model_kwargs)


def model_from_state(state: StateDict, record: Record | None, path: str | Path,
                     architecture: str, **model_kwargs: Any
                     ) -> tuple[nn.Module, Record, list[str]]:
    """model_from_file of weights already read (open_weights)."""
    layout = layout_kwargs(state, record)
    state = reslab_names(state)
    kwargs = {**layout, **{k: v for k, v in model_kwargs.items() if v is not None}}
    if "fc.weight" in state:
        kwargs.setdefault("num_classes", int(state["fc.weight"].shape[0]))
    if "conv1.weight" in state and state["conv1.weight"].dim() == 4:
        kwargs.setdefault("in_chans", int(state["conv1.weight"].shape[1]))
    check_model_kwargs(kwargs)
    try:
        model = create_model(architecture, **kwargs)
    except (TypeError, ValueError) as e:
        raise UserError(f"cannot build {architecture} for {path}: {e}") from None
    messages = apply_state_dict(model, state, str(path), architecture, layout=layout)
    new = default_record(architecture, kwargs, model.fc.out_features, model.conv1.in_channels)
    if record is not None and not messages:  # a reslab file used as is keeps its record
        new = record.replace(architecture=architecture, kwargs=new.kwargs)
    return model.eval(), new, messages


def check_model_kwargs(kwargs: dict[str, Any]) -> None:
    """Bounds on the sizes a model is built with (a forged head of 10**9 classes)."""
    if "num_classes" in kwargs:
        check_int("num_classes", kwargs["num_classes"], 1, MAX_CLASSES)
    if "in_chans" in kwargs:
        check_int("in_chans", kwargs["in_chans"], 1, MAX_IN_CHANS)

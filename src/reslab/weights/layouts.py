"""Weights from elsewhere into a reslab model: torchvision/timm state_dicts, training checkpoints
(DDP, torch.compile, timm's train.py) and plain safetensors, as reslab.weights.reading read them.

Key names: our ResNet uses torchvision's module names, and timm's ResNet (resnet18..152, default
stem) uses the same ones (conv1, bn1, layerN.i.convK/bnK, downsample.0/1, fc): timm's extra
modules (act*, aa, drop_block, se=None) hold no parameters. The CIFAR ResNets of akamaster's
reproduction name the classifier `linear` (renamed to `fc`) and pad option A's zero channels on
both sides of the input's: their files imply `pad_sides="both"` (layout_kwargs), which the
importer builds and records. tests/test_interop.py checks each layout against its own forward
pass, written as the foreign code does it.
"""
from __future__ import annotations

import re
from pathlib import Path
from typing import Any

from torch import nn

from ..errors import UserError
from ..limits import MAX_CLASSES, MAX_IN_CHANS, check_int, short_text
from ..models import create_model, get_arch, list_models
from ..models.blocks import Bottleneck
from ..text import plural
from .reading import StateDict, open_weights
from .record import Preprocess, Record

IMAGENET_MEAN = (0.485, 0.456, 0.406)
IMAGENET_STD = (0.229, 0.224, 0.225)
_HEAD = ("fc.weight", "fc.bias")


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

"""Importing weights once: torchvision, timm or other training checkpoints (.pth state_dicts,
{'state_dict': ...} with DDP/compile prefixes, plain safetensors) or torchvision's pretrained
weights, converted into a reslab weights file whose record says how to use them (class names,
input size, mean/std). What `reslab import` does, for Python callers too:

    from reslab.weights.importer import import_weights
    done = import_weights("resnet50.pth", "resnet50.safetensors", "resnet50",
                          class_names="imagenet")

Reading goes through reslab.weights.reading (pickles weights_only: nothing in a file is
executed). The errors name the `reslab import` flags, the same names as the arguments here."""
from __future__ import annotations

import dataclasses
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from ..errors import UserError
from ..io import check_writable, read_text, same_file
from ..limits import MAX_TEXT_BYTES, check_image_side, check_stats
from .layouts import model_from_state
from .pretrained import TORCHVISION
from .reading import open_weights
from .record import Record, save_weights


@dataclass(frozen=True)
class ImportedWeights:
    """What import_weights wrote."""
    path: Path              # the reslab weights file
    architecture: str
    num_classes: int
    in_chans: int
    params: int
    record: Record
    messages: tuple[str, ...]  # what was adapted on the way (a replaced head, a summed stem)


def import_weights(source: str | Path, out: str | Path, architecture: str | None = None, *,
                   class_names: str | Path | Sequence[str] | None = None,
                   mean: Sequence[float] | None = None, std: Sequence[float] | None = None,
                   input_size: int | None = None, **model_kwargs: Any) -> ImportedWeights:
    """Converts source (a weights file or torchvision:NAME[.WEIGHTS]) into the reslab file out.

    architecture: the model the weights are for (default for torchvision:NAME: NAME);
    model_kwargs: create_model options (num_classes and in_chans default to the file's head and
    stem). class_names: a file of names one per line, "imagenet" (torchvision's 1000 ImageNet
    categories) or the names themselves (default "0".."K-1"). mean/std: per-channel input
    statistics in [0, 1] pixel units, input_size: the training resolution (defaults: the
    family's, ImageNet's statistics for 3 channels)."""
    if input_size is not None:
        check_image_side("--input-size", input_size)
    check_writable(out, "--out")
    from_torchvision = str(source).startswith(TORCHVISION)
    if not from_torchvision and same_file(source, out):
        raise UserError(f"--out {out} is the file being imported: write the reslab file "
                        "beside it")
    state, pretrained = open_weights(source, strict_record=False)
    if from_torchvision:
        architecture = architecture or pretrained.architecture
    if not architecture:
        raise UserError("--model is required: the architecture the weights are for")
    model, record, messages = model_from_state(state, pretrained, source, architecture,
                                               **model_kwargs)
    k, c = model.fc.out_features, model.conv1.in_channels
    pre = record.preprocess
    changes: dict[str, Any] = {}
    for key, value in (("mean", mean), ("std", std)):
        if value is not None:
            if len(value) != c:
                raise ValueError(f"--{key} needs {c} values (one per input channel)")
            changes[key] = tuple(value)
    check_stats(changes.get("mean", ()), changes.get("std", ()), "--")
    if input_size:
        changes["input_size"] = (c, input_size, input_size)
    if changes and pre.normalize == "pixel":  # per-channel statistics replace the mean image
        changes.update(normalize="channel", mean_image=None)
    record = record.replace(preprocess=dataclasses.replace(pre, **changes))
    if class_names is not None:
        record = record.replace(class_names=tuple(_class_names(class_names, k)))
    record = Record.from_json(record.to_json(), record.preprocess.mean_image, str(out))
    save_weights(out, model, record)
    return ImportedWeights(path=Path(out), architecture=architecture, num_classes=k,
                           in_chans=c, params=sum(p.numel() for p in model.parameters()),
                           record=record, messages=tuple(messages))


def _class_names(spec: str | Path | Sequence[str], k: int) -> list[str]:
    if isinstance(spec, (str, Path)):
        spec = imagenet_categories() if spec == "imagenet" else [
            line.strip() for line in read_text(spec, "class names file", MAX_TEXT_BYTES)
            .splitlines() if line.strip()]
    names = list(spec)
    if len(names) != k:
        raise ValueError(f"--class-names gives {len(names)} names but the model has {k} classes")
    return names


def imagenet_categories() -> list[str]:
    """torchvision's names of the 1000 ImageNet classes."""
    from torchvision.models import ResNet50_Weights

    return list(ResNet50_Weights.IMAGENET1K_V1.meta["categories"])

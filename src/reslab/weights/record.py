"""The checkpoint record: everything needed to use a set of weights, stored inside the weights
file and validated when read.

A reslab weights file is a safetensors file holding the model's state_dict, the per-pixel mean
image (tensor `reslab.mean_image`, for normalize="pixel") and one metadata entry `record`, a JSON
object (format "reslab-2"):

    architecture   registry name, e.g. "resnet20"
    kwargs         create_model options: num_classes, in_chans, shortcut, stride_in, ...
    class_names    one string per output
    preprocess     normalize ("channel" | "pixel"), mean and std (per input channel, [0, 1]
                   pixel units), input_size [C, H, W], crop_fraction (evaluation geometry:
                   shorter side to H / crop_fraction, centre crop), tta_flip (whether the run's
                   reported numbers averaged the horizontal flip), tta_translate (whether they
                   averaged airbench94's 1 px translations, engine/tta.py; absent: false)
    data           what it was trained on (TrainingData): spec, data_dir, val_split, seed (so
                   `eval --split val` rebuilds the same held-out images); null for imported
                   weights
    extra          free-form provenance, e.g. grown_from

`eval`, `predict`, `responses`, `export`, `grow` and the Python API read only this record, never a
run's config.toml: a checkpoint copied anywhere behaves as it does in its run directory.
Files of the first format (reslab-1: the same fields flat in the metadata, without the mean image)
still load (weights.reading turns them into a record), except per-pixel-mean ones, whose input
preparation they cannot reproduce.
"""
from __future__ import annotations

import dataclasses
import json
import math
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, NamedTuple

import torch
from torch import nn

from ..choices import RESIZES
from ..data.images import default_crop_fraction
from ..data.normalize import NORMALIZE, Normalizer, Stats
from ..errors import InvalidRecord, UserError
from ..io import save_safetensors
from ..limits import (MAX_ABS_MEAN, MAX_BATCH_VALUES, MAX_CLASS_NAME, MAX_CLASSES,
                      MAX_IMAGE_SIDE, MAX_IN_CHANS, MAX_SEED, check_float, check_int, check_stats,
                      short_text)
from ..models import create_model, is_model
from ..models.blocks import ACTIVATIONS, PAD_SIDES, SHORTCUTS, STRIDE_IN
from .tensors import check_tensors

FORMAT = "reslab-2"  # the record's format; weights.reading also reads the first, "reslab-1"
MEAN_IMAGE_KEY = "reslab.mean_image"
KWARGS = ("num_classes", "in_chans", "shortcut", "stride_in", "zero_init_residual", "pad_sides",
          "activation")


@dataclass(frozen=True)
class Preprocess:
    """How images are prepared for the model, exactly as its training evaluated them."""

    input_size: tuple[int, int, int]
    mean: tuple[float, ...]
    std: tuple[float, ...]
    normalize: str = "channel"
    mean_image: torch.Tensor | None = field(default=None, compare=False)
    crop_fraction: float = 1.0
    tta_flip: bool = False
    resize: str = "crop"  # how an image becomes the input (data.images.eval_geometry)
    tta_translate: bool = False  # airbench94's 1 px translations averaged in (engine/tta.py)

    @property
    def in_chans(self) -> int:
        return self.input_size[0]

    def stats(self) -> Stats:
        return Stats(list(self.mean), list(self.std), self.mean_image)

    def normalizer(self) -> Normalizer:
        return Normalizer(self.mean_image if self.mean_image is not None else self.mean,
                          self.std)

    def tta(self, flip: bool | None = None, translate: bool | None = None) -> TTA:
        """The test-time views to score with: each given choice, None as the run's evaluation
        did (this record)."""
        return TTA(self.tta_flip if flip is None else flip,
                   self.tta_translate if translate is None else translate)

    def to_json(self) -> dict[str, Any]:
        # resize and tta_translate only when set: the records of runs without them stay as
        # they were, and a reader takes their absence for the default
        return ({"normalize": self.normalize, "mean": list(self.mean), "std": list(self.std),
                 "input_size": list(self.input_size), "crop_fraction": self.crop_fraction,
                 "tta_flip": self.tta_flip}
                | ({"resize": self.resize} if self.resize != "crop" else {})
                | ({"tta_translate": True} if self.tta_translate else {}))


class TTA(NamedTuple):
    """Which test-time views a score averages: the mirror image (flip) and airbench94's 1 px
    translations (translate; each view with its mirror under flip): engine.tta.tta_model."""
    flip: bool = False
    translate: bool = False


@dataclass(frozen=True)
class TrainingData:
    """What a record's weights were trained on: the dataset spec, where its files were, and the
    val hold-out and seed, so `eval --split val` rebuilds the same held-out images (and the
    training subset, when the run trained on one, `--split train` the same images)."""

    spec: str
    data_dir: str | None = None
    val_split: int = 0
    seed: int = 0
    train_images: int | None = None

    def to_json(self) -> dict[str, Any]:
        out = {"spec": self.spec, "data_dir": self.data_dir, "val_split": self.val_split,
               "seed": self.seed}
        if self.train_images is not None:   # absent from the records of whole-split runs
            out["train_images"] = self.train_images
        return out

    @classmethod
    def from_json(cls, value: Any, where: str = "record") -> TrainingData | None:
        """The record's `data` entry checked (InvalidRecord naming the first violation); None
        for null (imported weights)."""
        if value is None:
            return None
        if not isinstance(value, dict) or not isinstance(value.get("spec"), str):
            raise invalid(where, f"data must be null or an object with a spec, got "
                          f"{short_json(value)}")
        data_dir = value.get("data_dir")
        if data_dir is not None and not isinstance(data_dir, str):
            raise invalid(where, f"data.data_dir must be a string, got {short_json(data_dir)}")
        try:
            val_split = check_int("data.val_split", value.get("val_split", 0), 0, 10**9)
            seed = check_int("data.seed", value.get("seed", 0), 0, MAX_SEED)
            train_images = value.get("train_images")
            if train_images is not None:
                check_int("data.train_images", train_images, 1, 10**9)
        except UserError as e:
            raise invalid(where, str(e)) from None
        return cls(value["spec"], data_dir, val_split, seed, train_images)


@dataclass(frozen=True)
class Record:
    """A validated checkpoint record (see the module docstring)."""

    architecture: str
    kwargs: dict[str, Any]
    class_names: tuple[str, ...]
    preprocess: Preprocess
    data: TrainingData | None = None
    extra: dict[str, Any] = field(default_factory=dict)

    @property
    def num_classes(self) -> int:
        return int(self.kwargs["num_classes"])

    @property
    def in_chans(self) -> int:
        return int(self.kwargs.get("in_chans", 3))

    def trained_on(self, spec: str) -> bool:
        """Whether spec is the dataset these weights were trained on."""
        return self.data is not None and spec == self.data.spec

    def split_options(self, spec: str) -> dict[str, int | None]:
        """load_data's val_split, seed and train_images for spec: training's when it is the
        dataset trained on (so `--split val` is the same held-out images and `--split train`
        the same subset), else all images, none held out and seed 0."""
        if not self.trained_on(spec):
            return {"val_split": 0, "seed": 0, "train_images": None}
        return {"val_split": self.data.val_split, "seed": self.data.seed,
                "train_images": self.data.train_images}

    def replace(self, **changes: Any) -> Record:
        return dataclasses.replace(self, **changes)

    def build_model(self) -> nn.Module:
        """The architecture with the recorded options (fresh weights)."""
        try:
            return create_model(self.architecture, **self.kwargs)
        except (TypeError, ValueError) as e:
            raise InvalidRecord(f"cannot build {self.architecture} with {self.kwargs}: "
                                f"{str(e).splitlines()[0]}") from None

    def to_json(self) -> dict[str, Any]:
        return {"architecture": self.architecture, "kwargs": dict(self.kwargs),
                "class_names": list(self.class_names), "preprocess": self.preprocess.to_json(),
                "data": self.data.to_json() if self.data is not None else None,
                "extra": dict(self.extra)}

    @classmethod
    def from_json(cls, obj: Any, mean_image: torch.Tensor | None = None,
                  where: str = "record") -> Record:
        """A Record from its JSON form, every field checked (InvalidRecord naming the first
        violation)."""
        return _parse(obj, mean_image, where)


# --- validation -----------------------------------------------------------------------------

def invalid(where: str, message: str) -> InvalidRecord:
    """The error of a record that fails a check: where it came from, then what is wrong."""
    return InvalidRecord(f"{where}: invalid checkpoint metadata: {message}")



def _require(obj: Any, key: str, where: str) -> Any:
    if key not in obj:
        raise invalid(where, f"'{key}' is missing")
    return obj[key]


def _numbers(value: Any, n: int, name: str, where: str) -> tuple[float, ...]:
    if not isinstance(value, list) or len(value) != n:
        raise invalid(where, f"{name} must be a list of {n} numbers (one per input channel), "
                      f"got {short_json(value)}")
    if not all(isinstance(v, (int, float)) and not isinstance(v, bool) and math.isfinite(v)
               for v in value):
        raise invalid(where, f"{name} must hold finite numbers, got {short_json(value)}")
    return tuple(float(v) for v in value)


def short_json(value: Any) -> str:
    """value as JSON, cut to 60 characters, for error messages."""
    text = json.dumps(value) if not isinstance(value, torch.Tensor) else "a tensor"
    return text if len(text) <= 60 else text[:57] + "..."


def _kwargs(value: Any, where: str) -> dict[str, Any]:
    if not isinstance(value, dict):
        raise invalid(where, f"kwargs must be an object, got {short_json(value)}")
    unknown_keys = sorted(set(value) - set(KWARGS))
    if unknown_keys:
        raise invalid(where, f"kwargs has unknown options "
                      f"{', '.join(short_text(k, 60) for k in unknown_keys[:5])} "
                      f"(known: {', '.join(KWARGS)})")
    try:
        num_classes = check_int("num_classes", _require(value, "num_classes", where), 1,
                                MAX_CLASSES)
        in_chans = check_int("in_chans", value.get("in_chans", 3), 1, MAX_IN_CHANS)
    except InvalidRecord:
        raise
    except UserError as e:
        raise invalid(where, str(e)) from None
    out: dict[str, Any] = {**value, "num_classes": num_classes, "in_chans": in_chans}
    for key, choices in (("shortcut", SHORTCUTS), ("stride_in", STRIDE_IN),
                         ("pad_sides", PAD_SIDES), ("activation", ACTIVATIONS)):
        if key in value and value[key] not in choices:
            raise invalid(where, f"kwargs {key} {short_json(value[key])} is not one of "
                          f"{', '.join(choices)}")
    if not isinstance(value.get("zero_init_residual", False), bool):
        raise invalid(where, "kwargs zero_init_residual must be true or false")
    return out


def _preprocess(value: Any, in_chans: int, mean_image: torch.Tensor | None,
                where: str) -> Preprocess:
    if not isinstance(value, dict):
        raise invalid(where, f"preprocess must be an object, got {short_json(value)}")
    size = _require(value, "input_size", where)
    if (not isinstance(size, list) or len(size) != 3
            or not all(isinstance(s, int) and not isinstance(s, bool) for s in size)):
        raise invalid(where, f"input_size must be [C, H, W] whole numbers, got {short_json(size)}")
    if size[0] != in_chans:
        raise invalid(where, f"input_size {size} has {size[0]} channels but the model takes "
                      f"{in_chans}")
    if not all(1 <= s <= MAX_IMAGE_SIDE for s in size[1:]):
        raise invalid(where, f"input_size {size}: height and width must be between 1 and "
                      f"{MAX_IMAGE_SIDE}")
    if size[0] * size[1] * size[2] > MAX_BATCH_VALUES:
        raise invalid(where, f"input_size {size} is {size[0] * size[1] * size[2]:,} values per "
                      f"image, more than the {MAX_BATCH_VALUES:,} limit")
    mean = _numbers(_require(value, "mean", where), in_chans, "mean", where)
    std = _numbers(_require(value, "std", where), in_chans, "std", where)
    if min(std) <= 0:
        raise invalid(where, f"std must be positive, got {list(std)}")
    try:
        check_stats(mean, std)
    except UserError as e:
        raise invalid(where, str(e)) from None
    normalize = value.get("normalize", "channel")
    if normalize not in NORMALIZE:
        raise invalid(where, f"normalize {short_json(normalize)} is not one of "
                      f"{', '.join(NORMALIZE)}")
    crop = value.get("crop_fraction", default_crop_fraction(size))
    try:
        crop = check_float("crop_fraction", crop, 0.0, 1.0, lo_open=True)
    except UserError as e:
        raise invalid(where, str(e)) from None
    flip, translate = (_flag(value, key, where) for key in ("tta_flip", "tta_translate"))
    resize = value.get("resize", "crop")  # absent: the crop every record before it used
    if resize not in RESIZES:
        raise invalid(where, f"resize {short_json(resize)} is not one of {', '.join(RESIZES)}")
    if normalize == "pixel":
        if mean_image is None:
            raise invalid(where, f"normalize is \"pixel\" but the file has no {MEAN_IMAGE_KEY} "
                          "tensor (the per-pixel mean image)")
        if tuple(mean_image.shape) != tuple(size) or not mean_image.dtype.is_floating_point:
            raise invalid(where, f"{MEAN_IMAGE_KEY} has shape {list(mean_image.shape)} "
                          f"({mean_image.dtype}); expected float {size}")
        if not bool(torch.isfinite(mean_image).all()):
            raise invalid(where, f"{MEAN_IMAGE_KEY} holds non-finite values")
        largest = float(mean_image.abs().max())
        if largest > MAX_ABS_MEAN:  # the bound check_stats puts on a per-channel mean
            raise invalid(where, f"{MEAN_IMAGE_KEY} holds values outside [-{MAX_ABS_MEAN:g}, "
                          f"{MAX_ABS_MEAN:g}] (largest {largest:.3g})")
        mean_image = mean_image.float()
    else:
        mean_image = None
    return Preprocess(tuple(size), mean, std, normalize, mean_image, crop, flip, resize,
                      translate)


def _flag(value: dict[str, Any], key: str, where: str) -> bool:
    """preprocess[key], a boolean that is false when absent (records written before it)."""
    flag = value.get(key, False)
    if not isinstance(flag, bool):
        raise invalid(where, f"{key} must be true or false, got {short_json(flag)}")
    return flag


def _parse(obj: Any, mean_image: torch.Tensor | None, where: str) -> Record:
    if not isinstance(obj, dict):
        raise invalid(where, f"the record must be an object, got {short_json(obj)}")
    arch = _require(obj, "architecture", where)
    if not isinstance(arch, str) or not is_model(arch):
        raise invalid(where, f"unknown architecture {short_json(arch)}")
    kwargs = _kwargs(_require(obj, "kwargs", where), where)
    names = _require(obj, "class_names", where)
    if not isinstance(names, list) or not all(isinstance(n, str) for n in names):
        raise invalid(where, f"class_names must be a list of strings, got {short_json(names)}")
    if len(names) != kwargs["num_classes"]:
        raise invalid(where, f"class_names has {len(names)} names but the model has "
                      f"{kwargs['num_classes']} classes")
    if any(len(n) > MAX_CLASS_NAME for n in names):
        raise invalid(where, f"a class name is longer than {MAX_CLASS_NAME} characters")
    pre = _preprocess(_require(obj, "preprocess", where), kwargs["in_chans"], mean_image, where)
    extra = obj.get("extra") or {}
    if not isinstance(extra, dict):
        raise invalid(where, f"extra must be an object, got {short_json(extra)}")
    data = TrainingData.from_json(obj.get("data"), where)
    return Record(arch, kwargs, tuple(names), pre, data, extra)


# --- files ----------------------------------------------------------------------------------

def save_weights(path: str | Path, model: nn.Module, record: Record) -> None:
    """Writes model.state_dict() and the record as one safetensors file (atomically); the
    record and the tensors pass the checks every reader applies, so no writer makes a file
    that a reader refuses."""
    _parse(record.to_json(), record.preprocess.mean_image, str(path))
    tensors = dict(model.state_dict())
    check_tensors(tensors, str(path))
    if record.preprocess.mean_image is not None:
        tensors[MEAN_IMAGE_KEY] = record.preprocess.mean_image.float()
    metadata = {"format": FORMAT, "record": json.dumps(record.to_json())}
    save_safetensors(path, tensors, metadata, "checkpoint")

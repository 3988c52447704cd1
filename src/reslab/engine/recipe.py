"""Training recipes: a frozen dataclass, loaded from TOML (configs/) and overridden from the CLI.

The resolved recipe is saved as the run's config.toml, so `--resume` and reports see exactly what
ran.
"""
from __future__ import annotations

import dataclasses
import tomllib
from collections.abc import Iterable
from dataclasses import dataclass, field, fields
from pathlib import Path
from typing import Any

import tomli_w

from ..choices import (ACTIVATIONS, AUGMENTS, AUTO_AUGMENTS, BALANCE, MONITOR, NORMALIZE, RESIZES,
                       STRIDE_IN)
from ..errors import UserError, unknown
from ..io import read_text
from ..limits import (MAX_BATCH, MAX_EPOCHS, MAX_IMAGE_SIDE, MAX_ITERS, MAX_LR, MAX_PAD, MAX_SEED,
                      MAX_TEXT_BYTES, MAX_THREADS, MAX_WORKERS, check_float, check_int,
                      short_text)
from .values import convert

CONFIG_DIR = Path(__file__).resolve().parent.parent / "configs"

CHOICES = {
    "optimizer": ("sgd", "adamw", "muon"),
    "schedule": ("step", "cosine", "onecycle", "plateau", "constant"),
    "augment": AUGMENTS,
    "auto_augment": AUTO_AUGMENTS,
    "normalize": NORMALIZE,
    "amp": ("auto", "off", "bf16", "fp16"),
    "stride_in": STRIDE_IN,
    "activation": ACTIVATIONS,
    "balance": BALANCE,
    "monitor": MONITOR,
    "resize": RESIZES,
}


# Where a recipe came from: set by --recipe and by the flags given, not flags of their own.
PROVENANCE = ("recipe", "given")
# Where and how fast a run goes: a resumed run may set them (its stored recipe stays as it was).
RUNS_ON = ("device", "workers", "threads", "tensorboard")
# Fields that do not change what a run learns: a finished run is reused even if they differ,
# and a resume may give them (changed_fields is the one rule that reads this).
MACHINERY = PROVENANCE + RUNS_ON

MAX_ACCUMULATE = 1024  # micro-batches per optimizer step
MAX_BN_BIAS_LR = 1000.0  # airbench94 uses 64
MAX_ALPHA = 100.0      # Beta(alpha, alpha) of mixup/cutmix: beyond ~10 it is always lam = 0.5
# Every numeric field's range (None-able fields are checked when set): far beyond real use.
INT_BOUNDS = {"batch_size": (1, MAX_BATCH), "iters": (1, MAX_ITERS),
              "warmup_iters": (0, MAX_ITERS), "plateau_patience": (1, 100_000),
              "image_size": (1, MAX_IMAGE_SIDE), "pad": (0, MAX_PAD), "val_split": (0, 10**9),
              "train_images": (1, 10**9),
              "workers": (0, MAX_WORKERS), "seed": (0, MAX_SEED), "threads": (0, MAX_THREADS),
              "save_every": (0, MAX_ITERS), "eval_every": (0, MAX_EPOCHS),
              "train_error_every": (0, MAX_ITERS),
              "accumulate": (1, MAX_ACCUMULATE), "early_stopping": (0, 100_000),
              "ema_every": (1, MAX_ITERS)}
# (lo, hi, lo excluded, hi excluded)
FLOAT_BOUNDS = {"lr": (0.0, MAX_LR, True, False), "epochs": (0.0, MAX_EPOCHS, True, False),
                "freeze_epochs": (0.0, MAX_EPOCHS, False, False),
                "momentum": (0.0, 1.0, False, True), "weight_decay": (0.0, 1.0, False, True),
                "label_smoothing": (0.0, 1.0, False, True), "gamma": (0.0, 1.0, True, False),
                "warmup_lr": (0.0, MAX_LR, False, False), "ema": (0.0, 1.0, False, True),
                "warmup_until_error": (0.0, 1.0, True, False),
                "progressive_from": (0.0, 1.0, True, False),
                "progressive_until": (0.0, 1.0, True, False), "erase": (0.0, 1.0, False, False),
                "mixup": (0.0, MAX_ALPHA, False, False), "cutmix": (0.0, MAX_ALPHA, False, False),
                "clip_grad_norm": (0.0, 1e9, False, False),
                "bn_bias_lr": (0.0, MAX_BN_BIAS_LR, True, False),
                "muon_lr": (0.0, MAX_LR, True, False), "muon_momentum": (0.0, 1.0, False, True),
                "bn_momentum": (0.0, 1.0, True, False)}


@dataclass(frozen=True)
class Recipe:
    """Everything that defines a training run. Iteration counts are optimizer steps."""

    # what
    recipe: str | None = None            # the recipe name or file this came from (descriptive)
    model: str = "resnet20"
    data: str = "digits"
    data_dir: str | None = None
    shortcut: str | None = None          # None: the family's default (A for CIFAR, B ImageNet)
    stride_in: str = "3x3"
    zero_init_residual: bool = False
    activation: str = "relu"             # or airbench94's gelu: after every BN and addition
    # airbench94's initialisations (models/init.py): initial weights only, not the architecture
    dirac_init: bool = False             # 3x3 convs start as the identity where they can
    whiten_stem: bool = False            # the first conv whitens the training images' patches
    weights: str | None = None           # initialise from a checkpoint (head replaced if needed)
    freeze_epochs: float = 0.0           # fine-tuning: train only the classifier (fc) this long
    image_size: int | None = None        # None: native size (arrays), the model family's (folders)
    resize: str = "crop"                 # folders: crop the centre, squish or pad to the square
    # how long: epochs, or iters when given (iters wins)
    epochs: float = 1.0
    iters: int | None = None
    batch_size: int = 128
    # optimizer (section 3.4: SGD, momentum 0.9, weight decay 1e-4)
    optimizer: str = "sgd"
    lr: float = 0.1
    momentum: float = 0.9
    nesterov: bool = False
    weight_decay: float = 1e-4
    decay_all: bool = False              # True: decay BN/bias too, as the paper; False: weights only
    label_smoothing: float = 0.0
    clip_grad_norm: float = 0.0          # max global L2 norm of the gradients (0: off)
    bn_bias_lr: float = 1.0              # lr multiplier of the BN biases (airbench94: 64)
    muon_lr: float = 0.07                # optimizer muon: the conv filters' peak lr ...
    muon_momentum: float = 0.6           # ... and momentum (airbench94_muon's 0.6)
    bn_momentum: float = 0.1             # BN running-statistics momentum, torch's convention
    accumulate: int = 1                  # micro-batches of batch_size per optimizer step
    # schedule
    schedule: str = "step"
    milestones: list[int] = field(default_factory=list)   # iterations where lr is multiplied
    gamma: float = 0.1
    warmup_iters: int = 0                # linear warm-up from warmup_lr
    warmup_lr: float = 0.0
    warmup_until_error: float | None = None  # resnet110: lr warmup_lr until train error < this
    plateau_patience: int = 2            # epochs without val improvement before lr * gamma
    early_stopping: int = 0              # evaluations without val improvement before stopping
    monitor: str = "auto"                # what early stopping and best.safetensors watch:
                                         # top1, balanced (mean recall), auto (balanced when
                                         # the training classes are imbalanced: balance.py)
    ema: float = 0.0                     # EMA decay of the weights per step (0: off)
    ema_every: int = 1                   # steps between EMA updates (decay ** ema_every each)
    lookahead: bool = False              # airbench94: the EMA copied back into the weights
    # data
    augment: str = "crop-flip"
    pad: int = 4
    erase: float = 0.0                   # random erasing probability (Zhong et al. 2017)
    auto_augment: str = "none"           # torchvision RandAugment / TrivialAugment per image
    mixup: float = 0.0                   # mixup's Beta alpha (Zhang et al. 2018; 0: off)
    cutmix: float = 0.0                  # CutMix's Beta alpha (Yun et al. 2019; 0: off)
    normalize: str = "channel"
    val_split: int | None = None         # None: 10% of a folder without val/, else none
    train_images: int | None = None      # a class-balanced subset of the training split (the
                                         # same images for every seed); None: all of it
    tta_flip: bool = False               # average with the horizontal flip at evaluation
    tta_translate: bool = False          # ... and with 1 px translations (airbench94)
    flip_alternate: bool = False         # mirror each image every other epoch (airbench94)
    balance: str = "auto"                # imbalanced classes: sampler, weights, none (balance.py)
    progressive_from: float | None = None  # progressive resizing: start side / native side
    progressive_until: float = 0.5       # ... growing to the native side by this fraction
    workers: int = 4
    # machinery
    seed: int = 0
    deterministic: bool = False
    device: str = "auto"
    threads: int = 0                     # CPU intra-op threads (0: PyTorch's default, one per core)
    amp: str = "auto"                    # auto: bf16 where the hardware runs it natively
    channels_last: bool = False
    compile: bool = False
    save_every: int = 0                  # iterations between resumable states (0: epoch ends)
    eval_every: int = 1                  # epochs between evaluations (0: at the end only)
    train_error_every: int = 0           # also log the running training error every N iters
    tensorboard: bool = False
    # fitting the recipe to the data (engine/adapt.py)
    adapt: bool = False                  # fit batch, length, resizing, augmentation to the data
    given: list[str] = field(default_factory=list)  # fields the user set: adapt leaves them
    bn_recalibrate: bool = False         # recompute the BN running statistics after training

    def __post_init__(self) -> None:
        """Every field checked once, here, where a recipe enters (TOML, flags, stored configs);
        the limits (reslab.limits) are far beyond real use and name the value when hit."""
        for name, choices in CHOICES.items():
            value = getattr(self, name)
            if value not in choices:
                raise UserError(f"invalid {name} '{value}' (choices: {', '.join(choices)})")
        from ..models import get_arch  # here, not at the top: the CLI's --help stays torch-free

        get_arch(self.model)  # a UserError naming the closest models
        if not self.data:
            raise UserError("invalid data '': name a dataset (e.g. digits, fashion-mnist)")
        for name, (lo, hi) in INT_BOUNDS.items():
            value = getattr(self, name)
            if value is not None:
                check_int(name, value, lo, hi)
        for m in self.milestones:
            check_int("milestone", m, 0, MAX_ITERS)
        for name in self.given:
            if name not in _FIELD_NAMES:
                raise unknown("recipe field in given", name, _FIELD_NAMES)
        for name, (lo, hi, lo_open, hi_open) in FLOAT_BOUNDS.items():
            value = getattr(self, name)
            if value is not None:
                check_float(name, value, lo, hi, lo_open=lo_open, hi_open=hi_open)
        if self.schedule == "plateau" and self.eval_every == 0:
            raise UserError("the plateau schedule lowers the lr on evaluations: eval_every 0 "
                            "(at the end only) leaves it none; use eval_every >= 1")
        if self.lookahead and self.ema == 0:
            raise UserError("lookahead copies the weights' EMA back into them: it needs an "
                            "ema decay (e.g. ema 0.95 as airbench94)")
        if self.early_stopping and self.eval_every == 0:
            raise UserError("early_stopping counts evaluations without improvement: eval_every "
                            "0 (at the end only) leaves it none; use eval_every >= 1")

    @classmethod
    def settable_fields(cls) -> tuple[dataclasses.Field, ...]:
        """The fields a user sets (each a --flag): all but the PROVENANCE, which --recipe and
        the flags given set."""
        return tuple(f for f in fields(cls) if f.name not in PROVENANCE)

    @property
    def step_batch(self) -> int:
        """Images per optimizer step (iteration): accumulate micro-batches of batch_size."""
        return self.batch_size * self.accumulate

    def model_kwargs(self) -> dict[str, Any]:
        """Options for create_model (num_classes/in_chans come from the data)."""
        kw: dict[str, Any] = {"stride_in": self.stride_in}
        if self.shortcut is not None:
            kw["shortcut"] = self.shortcut
        if self.zero_init_residual:
            kw["zero_init_residual"] = True
        if self.activation != "relu":  # ReLU nets' records stay as they were
            kw["activation"] = self.activation
        return kw

    def to_dict(self) -> dict[str, Any]:
        return {k: v for k, v in dataclasses.asdict(self).items() if v is not None}

    def replace(self, **changes: Any) -> Recipe:
        return coerce(self.to_dict() | changes)


_FIELD_NAMES = tuple(f.name for f in fields(Recipe))


def changed_fields(names: Iterable[str], a: Recipe | None = None,
                   b: Recipe | None = None) -> list[str]:
    """The fields among names that would change what a run learns (all but MACHINERY): those
    where the recipes a and b differ, or every one when they are not given (the command line
    refuses a recipe flag on a resume before any run is read). The one rule behind what a
    resume may change (engine.rundir.check_resume), whether a sweep reuses a finished run
    (engine.sweep.config_diff) and what names a paper run (analysis.paper.budgets)."""
    return [n for n in names if n not in MACHINERY
            and (a is None or b is None or getattr(a, n) != getattr(b, n))]


def _field_types() -> dict[str, str]:
    return {f.name: str(f.type) for f in fields(Recipe)}


def coerce(values: dict[str, Any]) -> Recipe:
    """A Recipe from loosely typed values (TOML or CLI strings); unknown keys are an error."""
    types = _field_types()
    out = {}
    for key, value in values.items():
        key = key.replace("-", "_")
        if key not in types:
            raise unknown("recipe key", key, types)
        out[key] = _convert(key, types[key], value)
    return Recipe(**out)


def _convert(key: str, type_name: str, value: Any) -> Any:
    """value as exactly the type the field needs (engine.values), or None where the field
    allows it; a UserError naming the field otherwise."""
    if value is None or (isinstance(value, str) and value.lower() == "none"
                         and "None" in type_name):
        if "None" not in type_name:
            raise UserError(f"invalid value for {key}: None (it needs a value)")
        return None
    try:
        return convert(type_name, value)
    except (TypeError, ValueError, OverflowError):  # OverflowError: int("inf"), float(10**400)
        if key in COUNT_OF:  # say what is allowed where a fraction is the likely mistake
            lo, hi = INT_BOUNDS[key]
            raise UserError(f"invalid {key} {short_text(repr(value))}: must be a whole number of "
                            f"{COUNT_OF[key]} between {lo} and {hi:,} (a count, not a "
                            "fraction)") from None
        expected = EXPECTED.get(type_name.split(" |")[0])
        raise UserError(f"invalid value for {key}: {short_text(repr(value))}"
                        + (f" ({expected})" if expected else "")) from None


# What each field type takes, for the message a wrong value gets
EXPECTED = {"bool": "true or false", "int": "a whole number", "float": "a finite number",
            "list[int]": "whole numbers, comma-separated", "list[str]": "names, comma-separated",
            "str": "a name"}


# Counts that other tools take as fractions (Keras' validation_split, scikit-learn's test_size)
COUNT_OF = {"val_split": "training images"}


def recipe_names() -> list[str]:
    return sorted(p.stem for p in CONFIG_DIR.glob("*.toml"))


def read_toml(path: Path, what: str = "recipe") -> dict[str, Any]:
    """A TOML file as a dict; UserError when missing, not a regular file, unreadable, too large
    or not valid TOML."""
    text = read_text(path, what, MAX_TEXT_BYTES)
    try:
        return tomllib.loads(text)
    except tomllib.TOMLDecodeError as e:
        raise UserError(f"invalid TOML in {path}: {e}") from None


def load_recipe(name_or_file: str = "demo", overrides: dict[str, Any] | None = None) -> Recipe:
    """A named recipe (configs/NAME.toml) or a TOML file, with overrides applied on top."""
    values = read_toml(_recipe_path(name_or_file))
    values.pop("description", None)
    values.setdefault("recipe", name_or_file)
    given = {k.replace("-", "_"): v for k, v in (overrides or {}).items() if v is not None}
    given.pop("given", None)
    recipe = coerce(values | given)  # checks the file's own `given` like any field
    names = sorted(set(recipe.given) | (set(given) & set(_FIELD_NAMES) - {"recipe"}))
    return recipe.replace(given=names) if names != recipe.given else recipe


def _recipe_path(name_or_file: str) -> Path:
    """configs/NAME.toml for a recipe name, else the file given."""
    path = Path(name_or_file)
    if not (name_or_file.endswith(".toml") or path.is_file()):
        path = CONFIG_DIR / f"{name_or_file}.toml"
        if not path.is_file():
            raise unknown("recipe", name_or_file, recipe_names())
    return path


def save_recipe(path: str | Path, recipe: Recipe) -> None:
    from ..io import atomic_write_text

    atomic_write_text(path, tomli_w.dumps(recipe.to_dict()))


def shorten(base: Recipe, iters: int, milestones: list[int] | None = None) -> tuple[Recipe, str]:
    """base trained for `iters` iterations with its step schedule kept in proportion: the
    recipe's milestones are scaled by iters / base.iters (paper-cifar's 32k and 48k of 64k
    become 50% and 75% of iters), so a short run still drops its lr. Explicit `milestones`
    are kept, but one at or past `iters` is refused (the lr would never drop there).
    Returns the recipe and a line saying what was done ("" when nothing changed)."""
    check_int("iters", iters, 1, MAX_ITERS)
    if milestones:
        late = [m for m in milestones if m >= iters]
        if late:
            raise UserError(f"milestones {late} are at or past the {iters:,} iterations: "
                            "the lr would never drop there")
        return base.replace(iters=iters, milestones=list(milestones)), ""
    if base.schedule != "step" or not base.milestones:
        return base.replace(iters=iters), ""
    if base.iters is None:
        late = [m for m in base.milestones if m >= iters]
        if late:
            raise UserError(f"the recipe's milestones {late} are at or past the {iters:,} "
                            "iterations: give --milestones")
        return base.replace(iters=iters), ""
    scaled = sorted({max(1, round(m * iters / base.iters)) for m in base.milestones})
    scaled = [m for m in scaled if m < iters]
    line = (f"milestones scaled to the {iters:,} iterations: {scaled} (the recipe's "
            f"{base.milestones} of {base.iters:,})")
    return base.replace(iters=iters, milestones=scaled), line

"""Training recipes: a frozen dataclass, loaded from TOML (configs/) and overridden from the CLI.

The resolved recipe is saved as the run's config.toml, so `--resume` and reports see exactly what
ran.
"""
from __future__ import annotations

import dataclasses
import decimal
import math
import tomllib
from dataclasses import dataclass, field, fields
from pathlib import Path
from typing import Any

import tomli_w

from ..choices import AUGMENTS, AUTO_AUGMENTS, NORMALIZE, STRIDE_IN
from ..errors import UserError, unknown
from ..io import read_text
from ..limits import (MAX_BATCH, MAX_EPOCHS, MAX_IMAGE_SIDE, MAX_ITERS, MAX_LR, MAX_PAD, MAX_SEED,
                      MAX_TEXT_BYTES, MAX_THREADS, MAX_WORKERS, check_float, check_int,
                      short_text)

CONFIG_DIR = Path(__file__).resolve().parent.parent / "configs"

CHOICES = {
    "optimizer": ("sgd", "adamw"),
    "schedule": ("step", "cosine", "onecycle", "plateau", "constant"),
    "augment": AUGMENTS,
    "auto_augment": AUTO_AUGMENTS,
    "normalize": NORMALIZE,
    "amp": ("auto", "off", "bf16", "fp16"),
    "stride_in": STRIDE_IN,
}


MAX_ACCUMULATE = 1024  # micro-batches per optimizer step
MAX_ALPHA = 100.0      # Beta(alpha, alpha) of mixup/cutmix: beyond ~10 it is always lam = 0.5
# Every numeric field's range (None-able fields are checked when set): far beyond real use.
INT_BOUNDS = {"batch_size": (1, MAX_BATCH), "iters": (1, MAX_ITERS),
              "warmup_iters": (0, MAX_ITERS), "plateau_patience": (1, 100_000),
              "image_size": (1, MAX_IMAGE_SIDE), "pad": (0, MAX_PAD), "val_split": (0, 10**9),
              "workers": (0, MAX_WORKERS), "seed": (0, MAX_SEED), "threads": (0, MAX_THREADS),
              "save_every": (0, MAX_ITERS), "eval_every": (0, MAX_EPOCHS),
              "train_error_every": (0, MAX_ITERS),
              "accumulate": (1, MAX_ACCUMULATE), "early_stopping": (0, 100_000)}
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
                "clip_grad_norm": (0.0, 1e9, False, False)}


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
    weights: str | None = None           # initialise from a checkpoint (head replaced if needed)
    freeze_epochs: float = 0.0           # fine-tuning: train only the classifier (fc) this long
    image_size: int | None = None        # None: native size (arrays), the model family's (folders)
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
    ema: float = 0.0                     # EMA decay of the weights (0: off)
    # data
    augment: str = "crop-flip"
    pad: int = 4
    erase: float = 0.0                   # random erasing probability (Zhong et al. 2017)
    auto_augment: str = "none"           # torchvision RandAugment / TrivialAugment per image
    mixup: float = 0.0                   # mixup's Beta alpha (Zhang et al. 2018; 0: off)
    cutmix: float = 0.0                  # CutMix's Beta alpha (Yun et al. 2019; 0: off)
    normalize: str = "channel"
    val_split: int | None = None         # None: 10% of a folder without val/, else none
    tta_flip: bool = False               # average with the horizontal flip at evaluation
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
        from ..models import REGISTRY  # here, not at the top: the CLI's --help stays torch-free

        if self.model not in REGISTRY:
            raise unknown("model", self.model, REGISTRY)
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
        if self.early_stopping and self.eval_every == 0:
            raise UserError("early_stopping counts evaluations without improvement: eval_every "
                            "0 (at the end only) leaves it none; use eval_every >= 1")

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
        return kw

    def to_dict(self) -> dict[str, Any]:
        return {k: v for k, v in dataclasses.asdict(self).items() if v is not None}

    def replace(self, **changes: Any) -> Recipe:
        return coerce(self.to_dict() | changes)


# One line per field for `--help`; choices, ranges and built-in defaults are added by field_help.
FIELD_HELP = {
    "recipe": "the recipe name or file the run started from (set by --recipe)",
    "model": "architecture (reslab models lists them)",
    "data": "dataset: digits, fashion-mnist, cifar10, cifar100, imagefolder:PATH, "
            "synthetic[:NxCxHxW[:K]]",
    "data_dir": "where the dataset files are (default: system copy or download cache)",
    "shortcut": "section 3.3 option A (zero-pad), B (project where shapes change), C (always)",
    "stride_in": "bottleneck stride on the 3x3 conv (torchvision) or the first 1x1 (paper)",
    "zero_init_residual": "zero each block's last BN so every block starts as the identity",
    "weights": "initialise from a checkpoint: a reslab, torchvision or timm file, or "
               "torchvision:NAME[.WEIGHTS] (e.g. torchvision:resnet18); a head of another "
               "size is replaced",
    "freeze_epochs": "fine-tuning: train only the classifier (fc) for the first N epochs",
    "image_size": "training resolution (default: native for in-memory data, 32 for CIFAR-family "
                  "and 224 for ImageNet-family models on image folders)",
    "epochs": "training length in epochs (--iters wins when given)",
    "iters": "training length in iterations (optimizer steps)",
    "batch_size": "images per forward/backward pass: per optimizer step, unless accumulate "
                  "adds up several (clamped to the training set, with a note)",
    "optimizer": "optimizer",
    "lr": "peak learning rate",
    "momentum": "SGD momentum",
    "nesterov": "Nesterov momentum",
    "weight_decay": "L2 weight decay",
    "decay_all": "decay BN scales and biases too (the paper) instead of weights only",
    "label_smoothing": "label smoothing of the cross-entropy targets (also of mixup's and "
                       "cutmix's mixed targets)",
    "clip_grad_norm": "clip the gradients' global L2 norm to this before each optimizer step "
                      "(0: off)",
    "accumulate": "gradient accumulation: an optimizer step (iteration) sums the gradients of "
                  "this many micro-batches of batch_size images, so it sees batch_size x "
                  "accumulate images; iterations, epochs and milestones count optimizer steps",
    "schedule": "learning-rate schedule",
    "milestones": "step schedule: iterations where lr is multiplied by gamma, e.g. 32000,48000",
    "gamma": "lr factor at each milestone or plateau",
    "warmup_iters": "linear warm-up from warmup_lr over this many iterations",
    "warmup_lr": "warm-up starting lr (with warmup_until_error: the lr until then)",
    "warmup_until_error": "resnet110 (section 4.2): stay at warmup_lr until the training error "
                          "of the last 50 batches is below this",
    "plateau_patience": "plateau schedule: evaluations without improvement before lr * gamma",
    "early_stopping": "stop when the validation top-1 has not improved for this many "
                      "evaluations (needs a validation split; the best weights stay in "
                      "best.safetensors; 0: off)",
    "ema": "EMA decay of the weights, evaluated and saved instead of them (0: off)",
    "augment": "training augmentation (crop-flip: pad + random crop + mirror, section 4.2; "
               "imagenet: scale + crop + mirror + colour jitter + PCA lighting, section 3.4; "
               "imagenet-pca: the same with the PCA lighting only, as the paper)",
    "pad": "padding in px for the random crop",
    "erase": "random erasing (Zhong et al. 2017): the probability that a training image gets a "
             "random rectangle (2-40% of it, aspect 0.3-3.3) set to the mean colour",
    "auto_augment": "an augmentation policy per training image after crop and flip "
                    "(torchvision.transforms.v2 RandAugment: 2 ops of magnitude 9, or "
                    "TrivialAugmentWide: 1 op of random magnitude)",
    "mixup": "mixup (Zhang et al. 2018): each batch blended with itself rolled by one, weight "
             "~ Beta(alpha, alpha), targets mixed alike (torchvision.transforms.v2.MixUp); the "
             "alpha, e.g. 0.2 (0: off; with cutmix, one of the two per batch)",
    "cutmix": "CutMix (Yun et al. 2019): a box of the rolled batch pasted in, targets mixed by "
              "its area (torchvision.transforms.v2.CutMix); the alpha, e.g. 1.0 (0: off)",
    "normalize": "per-channel mean/std, or the per-pixel mean image (the paper)",
    "val_split": "training images held out for validation, stratified and seeded (default: 10% "
                 "of an image folder without val/, else none; 0: no validation)",
    "tta_flip": "evaluate with the horizontally mirrored image averaged in",
    "progressive_from": "progressive resizing: train on images resized to this fraction of "
                        "their side at first (0.5: 28 px images start at 14; never below 8 px), "
                        "growing in 4 px steps to the native side (cheaper early epochs; "
                        "evaluation always at the native side; 1: off)",
    "progressive_until": "progressive resizing: the fraction of the iterations after which "
                         "training images have their native side",
    "workers": "image-folder decoding processes (at most the CPUs)",
    "seed": "random seed (weights, order, augmentation, validation split)",
    "deterministic": "bit-identical reruns (deterministic kernels only)",
    "device": "auto (cuda, mps, cpu), cpu, cuda, cuda:N, mps",
    "threads": "CPU threads for torch (0: one per core)",
    "amp": "mixed precision (auto: bf16 where the hardware runs it natively: CUDA with bf16, "
           "CPUs with AVX512-BF16 or AMX; else fp32)",
    "channels_last": "NHWC memory format (faster convolutions on CPUs and tensor cores)",
    "compile": "torch.compile the training step",
    "save_every": "also write the resumable state every N iterations (0: epoch ends only)",
    "eval_every": "epochs between evaluations (0: only after the last iteration, which saves "
                  "their time in short runs)",
    "train_error_every": "also log the running training error over the last N iterations "
                         "every N iterations (no extra computation: the thin curves of Fig. 6 "
                         "for runs of a few epochs; 0: at epoch ends only)",
    "tensorboard": "also log to TensorBoard (pip install tensorboard)",
    "adapt": "fit the recipe's batch size, length, progressive resizing and augmentation to the "
             "data's size and image side, with a note for each change (flags you give are kept)",
    "given": "the fields set on the command line or as overrides (recorded; adapt keeps them)",
    "bn_recalibrate": "after training, recompute the BN running statistics on the training "
                      "images (for short runs whose statistics lag the weights)",
}


def field_help(name: str, defaults: RecipeDefaults | None = None) -> str:
    """`--help` text of a recipe field: what it does, its choices or range, and its default in
    the recipe in use and where that comes from ("from recipe fast", or "built in" when the
    recipe file does not set it)."""
    parts = [FIELD_HELP.get(name, name.replace("_", " "))]
    if name in CHOICES:
        parts.append(f"choices: {', '.join(CHOICES[name])}")
    if name in INT_BOUNDS:
        lo, hi = INT_BOUNDS[name]
        parts.append(f"range {lo}..{hi:,}")
    if name in FLOAT_BOUNDS:
        lo, hi, lo_open, hi_open = FLOAT_BOUNDS[name]
        parts.append(f"range {'(' if lo_open else '['}{lo:g}, {hi:g}{')' if hi_open else ']'}")
    defaults = defaults or RecipeDefaults()
    value, source = defaults.of(name)
    return "; ".join(parts) + f" (default {_cli_text(value)}{source})"


@dataclass(frozen=True)
class RecipeDefaults:
    """The values a recipe file sets, as written there (for --help: nothing is validated and
    torch is not imported). name None: no recipe file, every default built in."""

    name: str | None = None
    values: dict[str, Any] = field(default_factory=dict)

    @classmethod
    def load(cls, name_or_file: str) -> RecipeDefaults:
        """The recipe's values; one that does not load (unknown name, bad file) gives the
        built-in defaults: --help still works, and the run itself reports the error."""
        try:
            values = read_toml(_recipe_path(name_or_file))
        except UserError:
            return cls()
        values.pop("description", None)
        return cls(name_or_file, values)

    def of(self, name: str) -> tuple[Any, str]:
        """(default value, where it comes from)."""
        if name in self.values:
            return self.values[name], f" from recipe {self.name}"
        f = {f.name: f for f in fields(Recipe)}[name]
        built_in = f.default_factory() if f.default_factory is not dataclasses.MISSING \
            else f.default
        return built_in, ", built in"


def _cli_text(value: Any) -> str:
    """A value as it is typed on the command line: lists comma-separated, booleans lower
    case, no value "none"."""
    if value is None or value == []:
        return "none"
    if isinstance(value, bool):
        return str(value).lower()
    if isinstance(value, list):
        return ",".join(map(str, value))
    return str(value)


_FIELD_NAMES = tuple(f.name for f in fields(Recipe))


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
    """value as exactly the type the field needs: a bool is a bool (or true/false text from
    the command line), an integer is converted exactly (never through a float, which rounds
    above 2**53), a float is finite, text is text."""
    if value is None or (isinstance(value, str) and value.lower() == "none"
                         and "None" in type_name):
        if "None" not in type_name:
            raise UserError(f"invalid value for {key}: None (it needs a value)")
        return None
    try:
        if type_name.startswith("bool"):
            if isinstance(value, bool):
                return value
            if isinstance(value, str) and value.lower() in _BOOL_TEXT:
                return _BOOL_TEXT[value.lower()]
            raise ValueError(value)
        if type_name.startswith("list[str]"):
            items = value.split(",") if isinstance(value, str) else value
            if not isinstance(items, (list, tuple)) or not all(isinstance(v, str) for v in items):
                raise ValueError(value)
            return [v.strip() for v in items if v.strip()]
        if type_name.startswith("list"):
            items = value.split(",") if isinstance(value, str) else value
            if not isinstance(items, (list, tuple)):
                raise ValueError(value)
            return [_whole(v) for v in items if str(v).strip()]
        if type_name.startswith("int"):
            return _whole(value)
        if type_name.startswith("float"):
            if isinstance(value, bool) or not isinstance(value, (int, float, str)):
                raise ValueError(value)
            f = float(value)
            if not math.isfinite(f):  # inf/nan pass every range check below, then diverge
                raise ValueError(value)
            return f
        if not isinstance(value, str):
            raise ValueError(value)
        return value
    except (TypeError, ValueError, OverflowError):  # OverflowError: int("inf"), float(10**400)
        raise UserError(f"invalid value for {key}: {short_text(repr(value))}") from None


_BOOL_TEXT = {"true": True, "false": False, "1": True, "0": False, "yes": True, "no": False}


def _whole(value: Any) -> int:
    """An integer, exactly: 9007199254740993 stays itself (float() would give ...992). Text such
    as "1e3" is read as the decimal it writes; a float only where it is exact (below 2**53)."""
    if isinstance(value, bool):
        raise ValueError(value)
    if isinstance(value, int):
        return value
    if isinstance(value, str):
        try:
            exact = decimal.Decimal(value.strip())
        except decimal.InvalidOperation:
            raise ValueError(value) from None
        # adjusted(): the exponent; "1e999999999" must not build a billion-digit int
        if exact.is_finite() and exact.adjusted() <= 40 and exact == exact.to_integral_value():
            return int(exact)
        raise ValueError(value)
    if isinstance(value, float) and value.is_integer() and abs(value) <= 2**53:
        return int(value)
    raise ValueError(value)


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

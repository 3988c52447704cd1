"""`--help` for the recipe fields: one line per field, its choices or range, and its default in
the recipe in use with where that comes from (recipe.py holds the fields and their checks)."""
from __future__ import annotations

import dataclasses
from dataclasses import dataclass, field, fields
from typing import Any

from ..errors import UserError
from .recipe import CHOICES, FLOAT_BOUNDS, INT_BOUNDS, Recipe, _recipe_path, read_toml

AIRBENCH = "(airbench94: Jordan 2024, arXiv 2404.00498)"

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
    "activation": "the nonlinearity after every BN and shortcut addition: the paper's relu, or "
                  "gelu " + AIRBENCH,
    "dirac_init": "start every 3x3 conv as the identity where it can: output channel i copies "
                  "input channel i, the rest keep their He init " + AIRBENCH,
    "whiten_stem": "initialise the first conv from the training images: its filters whiten "
                   "their patches (leading eigenvectors / sqrt(eigenvalue), and their "
                   "negatives) " + AIRBENCH,
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
    "optimizer": "optimizer (muon: Muon's orthogonalised steps for the conv filters, SGD for "
                 "the rest, as airbench94_muon)",
    "lr": "peak learning rate",
    "momentum": "SGD momentum",
    "nesterov": "Nesterov momentum",
    "weight_decay": "L2 weight decay",
    "decay_all": "decay BN scales and biases too (the paper) instead of weights only",
    "label_smoothing": "label smoothing of the cross-entropy targets (also of mixup's and "
                       "cutmix's mixed targets)",
    "bn_bias_lr": "learning-rate multiplier of the BN biases (airbench94: 64); with decay_all "
                  "their weight decay is divided by it, so lr x decay stays the same",
    "muon_lr": "optimizer muon: the peak learning rate of the conv filters' orthogonalised "
               "steps (the schedule scales it as it scales lr; each step turns a filter bank "
               "by about this much)",
    "muon_momentum": "optimizer muon: the conv filters' momentum (Nesterov when nesterov is "
                     "set; airbench94_muon: 0.6)",
    "bn_momentum": "BN running-statistics momentum in torch's convention (the new batch's "
                   "weight; airbench94's 0.6 is 0.4 here)",
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
    "monitor": "the validation figure early stopping and best.safetensors follow: top1, "
               "balanced (mean per-class recall); auto: balanced when the training classes "
               "are imbalanced, else top1",
    "early_stopping": "stop when the validation figure (monitor) has not improved for this many "
                      "evaluations (needs a validation split; the best weights stay in "
                      "best.safetensors; 0: off)",
    "ema": "EMA decay of the weights per step, evaluated and saved instead of them (0: off)",
    "ema_every": "update the EMA every N steps (with decay ema ** N)",
    "lookahead": "copy the EMA back into the weights at each update, its decay ramped by "
                 "(step / total) ** 3 (airbench94's lookahead; needs ema)",
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
    "resize": "image folders: how an image becomes the square input: crop (shorter side "
              "resized, centre cut, the paper's), squish (whole image, aspect not kept), pad "
              "(whole image, black borders); recorded with the weights for eval and predict",
    "tta_flip": "evaluate with the horizontally mirrored image averaged in",
    "tta_translate": "evaluate with 1 px translations too: half the weight on the image, a "
                     "quarter on each of its shifts up-left and down-right (reflect padding), "
                     "each with its mirror under tta_flip " + AIRBENCH,
    "flip_alternate": "mirror each training image every other epoch (a random half in even "
                      "epochs, the other half in odd ones) instead of at random "
                      + AIRBENCH,
    "balance": "imbalanced training classes (largest/smallest >= 3): sampler (each class drawn "
               "equally often), weights (loss weighted by inverse class frequency), none; auto: "
               "what measured best (docs/results/imbalance.md) when imbalanced, none otherwise",
    "progressive_from": "progressive resizing: train on images resized to this fraction of "
                        "their side at first (0.5: 28 px images start at 14; never below 8 px), "
                        "growing in 4 px steps to the native side (cheaper early epochs; "
                        "evaluation always at the native side; 1: off)",
    "progressive_until": "progressive resizing: the fraction of the iterations after which "
                         "training images have their native side",
    "workers": "image-folder decoding processes (at most the CPUs)",
    "seed": "random seed (weights, order, augmentation, validation split)",
    "deterministic": "bit-identical reruns: deterministic kernels only, and the thread count "
                     "fixed (threads, else PyTorch's default) instead of following the load, "
                     "as it sets the order of the kernels' sums",
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

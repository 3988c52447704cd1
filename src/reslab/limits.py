"""Bounds for every size and value a user can give (flags, recipe fields, checkpoint metadata,
dataset headers, decompressed sizes), in one place.

Each limit is far beyond any real use (the paper's largest test scale is 640 px, ImageNet-21k has
21,841 classes) and far below what would exhaust memory or overflow an integer, so a typo such as
`--image-size 100000` is an error naming the value and the limit instead of an allocator
traceback minutes later.
"""
from __future__ import annotations

import math
from typing import Any

from .errors import UserError

MAX_IMAGE_SIDE = 4096          # px: training, evaluation and prediction resolutions
MAX_PAD = 256                  # px of padding for the random-crop augmentation
MAX_CLASSES = 100_000          # classifier outputs
MAX_IN_CHANS = 64              # input channels of a model
MAX_BATCH = 65_536             # images in one batch
MAX_SCALES = 16                # resolutions of a multi-scale test
MAX_EPOCHS = 100_000
MAX_ITERS = 10**9
MAX_LR = 10.0                  # SGD's 0.1 and AdamW's 1e-3 are the usual orders
LR_FIND_ITERS = (10, 10_000)   # steps of a learning-rate range test (fastai, Lightning: 100)
MAX_WORKERS = 256
MAX_THREADS = 1024
MAX_SEED = 2**63 - 1
MAX_CLASS_NAME = 1_000         # characters in one class name
MAX_DATASET_BYTES = 4 * 2**30  # uint8 pixels of an in-memory dataset (after any resize)
MAX_FILE_BYTES = 2 * 2**30     # bytes read from one dataset file (decompressed for .gz)
MAX_TEXT_BYTES = 16 * 2**20    # a recipe, class-name list or run file read as text
MAX_MESSAGE_PART = 200         # characters of a user's value quoted in an error message
# Normalisation statistics, in [0, 1] pixel units (the same bounds for training, import and
# every record read): a mean of 1e30 or a std of 1e-30 only gives logits of 1e29.
MAX_ABS_MEAN = 10.0
MIN_STD, MAX_STD = 1e-6, 10.0


def short_text(value: Any, limit: int = MAX_MESSAGE_PART) -> str:
    """value as text of at most `limit` characters (a 1 MB key makes a 1 MB error line)."""
    text = value if isinstance(value, str) else repr(value)
    text = text.replace("\n", "\\n")
    return text if len(text) <= limit else f"{text[:limit - 3]}... ({len(text):,} characters)"


def check_int(name: str, value: Any, lo: int, hi: int) -> int:
    """value as an int within [lo, hi]; UserError naming the value and the limits.

    A float is taken only when it holds a whole number exactly representable (below 2**53):
    above, the float is already another integer than the one written."""
    if isinstance(value, bool) or not isinstance(value, int):
        if (isinstance(value, float) and math.isfinite(value) and value == int(value)
                and abs(value) <= 2**53):
            value = int(value)
        else:
            raise UserError(f"invalid {name} {short_text(value)}: must be a whole number")
    if not lo <= value <= hi:
        raise UserError(f"invalid {name} {value}: must be between {lo} and {hi:,}")
    return value


def check_float(name: str, value: Any, lo: float, hi: float, *, lo_open: bool = False,
                hi_open: bool = False) -> float:
    """value as a finite float within the interval; UserError naming the value and the limits."""
    try:
        f = float(value)
    except (TypeError, ValueError, OverflowError):
        raise UserError(f"invalid {name} {value!r}: must be a number") from None
    if isinstance(value, bool) or not math.isfinite(f):
        raise UserError(f"invalid {name} {value!r}: must be a finite number")
    low_ok = f > lo if lo_open else f >= lo
    high_ok = f < hi if hi_open else f <= hi
    if not (low_ok and high_ok):
        left, right = "(" if lo_open else "[", ")" if hi_open else "]"
        raise UserError(f"invalid {name} {value}: must be in {left}{lo:g}, {hi:g}{right}")
    return f


def check_image_side(name: str, value: Any, lo: int = 1) -> int:
    return check_int(name, value, lo, MAX_IMAGE_SIDE)


MAX_BATCH_VALUES = 2**26  # input values in one inference batch (256 MiB of fp32)


def fit_batch(batch_size: int, input_size: tuple[int, ...]) -> int:
    """batch_size, lowered so that one batch of input_size images (C, H, W) stays within
    MAX_BATCH_VALUES: large resolutions (a 4096 px model) are scored a few images at a time
    instead of exhausting the memory."""
    per_image = max(1, int(input_size[0]) * int(input_size[1]) * int(input_size[2]))
    return max(1, min(batch_size, MAX_BATCH_VALUES // per_image))


def check_stats(mean: tuple[float, ...], std: tuple[float, ...], what: str = "") -> None:
    """The one set of bounds on normalisation statistics, for every way a record is made or
    read (training, import flags, a file): finite, |mean| <= MAX_ABS_MEAN, std in
    [MIN_STD, MAX_STD] (pixels are in [0, 1]: a std of 1e-30 would only scale the logits to
    1e29, silently)."""
    for v in mean:
        check_float(f"{what}mean value", v, -MAX_ABS_MEAN, MAX_ABS_MEAN)
    for v in std:
        v = check_float(f"{what}std value", v, 0.0, MAX_STD, lo_open=True)
        if v < MIN_STD:
            raise UserError(f"invalid {what}std value {v:g}: below {MIN_STD:g}, which would "
                            "scale the input (and the scores) by more than a million")

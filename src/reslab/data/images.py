"""Image files: the one decoding path (`open_image`), channel conversion, and the evaluation
geometry shared by folder evaluation and `reslab predict` (`preprocess`).

Evaluation geometry follows the paper's single-crop test (section 3.4): the shorter side is resized
to size / crop_fraction (256 for a 224 crop, crop_fraction = 224/256) and the centre square is cut.
In-memory datasets are evaluated full-frame, i.e. crop_fraction = 1. The multi-scale test (section
3.4, fully convolutional) sees the whole image instead: `whole_image`, no crop.
"""
from __future__ import annotations

import os
import warnings
from collections.abc import Sequence
from os import PathLike

import numpy as np
import torch
from PIL import Image, ImageOps, UnidentifiedImageError
from torchvision.transforms.v2 import functional as TF

from ..errors import UserError, warn
from ..io import regular_file
from .normalize import Normalizer

# 224 / 256: the paper's test crop of an image whose shorter side was resized to 256.
FOLDER_CROP_FRACTION = 224 / 256
# Scale augmentation (paper section 3.4): shorter side random in [256, 480] for a 224 crop.
SCALE_RANGE = (256 / 224, 480 / 224)
# Modes that hold one intensity per pixel (alpha aside); anything else is read as colour.
GRAY_MODES = frozenset({"1", "L", "LA", "La", "I", "I;16", "I;16B", "I;16L", "I;16N", "F"})
_HIGH_DEPTH = frozenset({"I", "I;16", "I;16B", "I;16L", "I;16N", "F"})
# An image of 89-179 megapixels opens (beyond, DecompressionBombError refuses it): PIL's
# warning about it says nothing the user must act on, and it would print raw from scanning
# threads, where warnings cannot be caught per call.
warnings.filterwarnings("ignore", category=Image.DecompressionBombWarning)
_DECODE_ERRORS = (UnidentifiedImageError, OSError, SyntaxError, ValueError, EOFError,
                  Image.DecompressionBombError)


def open_image(path: str | PathLike) -> Image.Image:
    """Decodes an image file fully (any format PIL reads), EXIF orientation applied.

    Raises UserError naming the file when it is missing or not a readable image."""
    if not os.path.lexists(path):
        raise UserError(f"image '{path}' not found")
    regular_file(path, "image")  # a FIFO or device would block the decoder
    try:
        with warnings.catch_warnings(record=True) as notes, Image.open(path) as img:
            warnings.simplefilter("always")
            img.load()
            img = ImageOps.exif_transpose(img)
        _say(notes, path)
        return img
    except FileNotFoundError:
        raise UserError(f"image '{path}' not found") from None
    except _DECODE_ERRORS as exc:
        raise UserError(f"cannot read image '{path}': {exc}") from None


def _say(notes: list[warnings.WarningMessage], path: str | PathLike) -> None:
    """PIL's warnings on odd files (a very large image, damaged EXIF data) as one `warning:`
    line naming the file, not Python's warning with its source line."""
    for text in dict.fromkeys(str(n.message).splitlines()[0] for n in notes if str(n.message)):
        warn(f"image '{path}': {text[:200]}")


def probe_image(path: str | PathLike) -> str:
    """The mode of an image file from its header only (cheap: no pixel decoding).

    Used to scan large folders; a truncated file can still pass and fail at decoding time."""
    regular_file(path, "image")
    try:
        with Image.open(path) as img:  # in threads: warnings are caught where images decode
            return img.mode
    except _DECODE_ERRORS as exc:
        raise UserError(f"cannot read image '{path}': {exc}") from None


def to_channels(img: Image.Image, in_chans: int) -> Image.Image:
    """An 8-bit 'L' (in_chans=1) or 'RGB' (in_chans=3) version of an image of any mode.

    16-bit and float images are rescaled (PIL's own convert would clip them at 255); alpha is
    dropped; palette images with transparency go through RGBA so PIL does not warn."""
    if in_chans not in (1, 3):
        raise UserError(f"images can be read with 1 or 3 channels, not {in_chans}")
    if img.mode in _HIGH_DEPTH:
        img = _high_depth_to_l(img)
    elif img.mode == "P" and "transparency" in img.info:
        img = img.convert("RGBA")
    target = "L" if in_chans == 1 else "RGB"
    if img.mode == target:
        return img
    for via in ((), ("RGBA",), ("LA",)):  # PIL lacks some direct routes (e.g. La -> L)
        try:
            out = img
            for mode in (*via, target):
                out = out.convert(mode)
            return out
        except ValueError:
            continue
    raise UserError(f"cannot convert a {img.mode} image to {target}")


def _high_depth_to_l(img: Image.Image) -> Image.Image:
    arr = np.asarray(img, dtype=np.float64)
    if img.mode.startswith("I;16"):
        scale = 255 / 65535
    elif img.mode == "F":
        scale = 255.0 if arr.size and arr.max() <= 1.0 else 1.0  # [0,1] floats or 0..255
    else:  # 'I' (32-bit): 16-bit PNGs open this way in some Pillow versions
        scale = 255 / 65535 if arr.size and arr.max() > 255 else 1.0
    return Image.fromarray(np.clip(np.rint(arr * scale), 0, 255).astype(np.uint8), "L")


def pil_to_uint8(img: Image.Image) -> torch.Tensor:
    """(C, H, W) uint8 tensor of an 'L' or 'RGB' image."""
    return TF.pil_to_tensor(img)


def eval_geometry(img: Image.Image, size: tuple[int, int], crop_fraction: float) -> Image.Image:
    """Resizes the shorter side to min(size) / crop_fraction, then cuts the centre (H, W)."""
    shorter = max(min(size), round(min(size) / crop_fraction))
    img = TF.resize(img, [shorter], antialias=True)
    return TF.center_crop(img, list(size))


def whole_image(img: Image.Image, shorter: int) -> Image.Image:
    """The whole image with its shorter side resized to `shorter`, aspect ratio kept, no crop:
    the paper's fully-convolutional multi-scale test (section 3.4; global average pooling takes
    any size). The longer side is int(shorter * long / short), as torchvision's resize."""
    return TF.resize(img, [shorter], antialias=True)


def scale_crop(img: Image.Image, size: int, seed: int) -> Image.Image:
    """The paper's scale augmentation (section 3.4) for one image: shorter side resized to a
    random length in [size*256/224, size*480/224], then a random size x size crop.

    The randomness comes from `seed` (drawn per example from the epoch's generator), so a worker
    process produces the same crop whichever worker or resume point handles the example."""
    g = torch.Generator().manual_seed(seed)
    lo, hi = (round(size * s) for s in SCALE_RANGE)
    shorter = int(torch.randint(lo, hi + 1, (1,), generator=g))
    img = TF.resize(img, [shorter], antialias=True)
    w, h = img.size
    top = int(torch.randint(0, h - size + 1, (1,), generator=g))
    left = int(torch.randint(0, w - size + 1, (1,), generator=g))
    return TF.crop(img, top, left, size, size)


def default_crop_fraction(input_size: Sequence[int]) -> float:
    """Heuristic when the caller does not know how a model was evaluated: inputs of 64 px and up
    are taken to come from image folders (paper protocol), smaller ones from in-memory datasets."""
    return FOLDER_CROP_FRACTION if min(input_size[-2:]) >= 64 else 1.0


def preprocess(images: Sequence[Image.Image], in_chans: int, input_size: Sequence[int],
               mean: Sequence[float] | torch.Tensor, std: Sequence[float], *,
               crop_fraction: float | None = None) -> torch.Tensor:
    """Model-ready (N, C, H, W) float32 batch from PIL images of any mode and size, prepared as
    evaluation prepares its data: channel conversion, `eval_geometry`, normalisation.

    mean may be per channel or a per-pixel mean image (C, H, W) (normalize="pixel").
    crop_fraction: store `Data.crop_fraction` with the model and pass it; None guesses."""
    size = (int(input_size[-2]), int(input_size[-1]))
    frac = default_crop_fraction(size) if crop_fraction is None else crop_fraction
    if not images:
        return torch.empty(0, in_chans, *size)
    batch = torch.stack([pil_to_uint8(eval_geometry(to_channels(im, in_chans), size, frac))
                         for im in images])
    return Normalizer(mean, std)(batch.float() / 255)

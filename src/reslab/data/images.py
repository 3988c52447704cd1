"""Image files: the one decoding path (`open_image`), channel conversion, and the evaluation
geometry shared by folder evaluation and `reslab predict` (`preprocess`).

Evaluation geometry follows the paper's single-crop test (section 3.4): the shorter side is resized
to size / crop_fraction (256 for a 224 crop, crop_fraction = 224/256) and the centre square is cut.
In-memory datasets are evaluated full-frame, i.e. crop_fraction = 1. The multi-scale test (section
3.4, fully convolutional) sees the whole image instead: `whole_image`, no crop.
"""
from __future__ import annotations

import io
import os
import warnings
from collections.abc import Sequence
from os import PathLike
from types import ModuleType
from typing import BinaryIO

import numpy as np
import torch
from PIL import Image, ImageOps, UnidentifiedImageError

from ..errors import UserError, warn
from ..io import regular_file
from .normalize import Normalizer


def _tf() -> ModuleType:
    """torchvision's v2 functional, imported on first use: importing torchvision takes 1.5 s
    (its ops import torch._dynamo), which every command paid at start, images or not."""
    from torchvision.transforms.v2 import functional

    return functional

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


class ImageError(UserError):
    """An image that cannot be used. `kind` says why, for callers that answer each cause
    differently (the HTTP server's error codes): "not_an_image", "truncated_image",
    "decompression_bomb", "too_many_pixels" or "unreadable"."""

    def __init__(self, message: str, kind: str) -> None:
        super().__init__(message)
        self.kind = kind


def _kind(exc: BaseException) -> str:
    if isinstance(exc, Image.DecompressionBombError):
        return "decompression_bomb"
    if isinstance(exc, UnidentifiedImageError):
        return "not_an_image"
    if isinstance(exc, EOFError) or "truncated" in str(exc).lower():
        return "truncated_image"
    return "unreadable"


def _decode(source: str | PathLike | BinaryIO, name: str | PathLike, max_pixels: int | None
            ) -> Image.Image:
    try:
        with warnings.catch_warnings(record=True) as notes, Image.open(source) as img:
            warnings.simplefilter("always")
            # Checked on the header, before any pixel is decoded: the memory a decode takes.
            if max_pixels is not None and img.width * img.height > max_pixels:
                raise ImageError(f"image '{name}' has too many pixels: {img.width} x "
                                 f"{img.height} = {img.width * img.height:,}, more than "
                                 f"{max_pixels:,}", "too_many_pixels")
            img.load()
            img = ImageOps.exif_transpose(img)
        _say(notes, name)
        return img
    except FileNotFoundError:
        raise UserError(f"image '{name}' not found") from None
    except _DECODE_ERRORS as exc:
        kind = _kind(exc)
        # PIL names a file by its path but an in-memory one by its object's repr
        detail = ("cannot identify image file (not an image format PIL reads)"
                  if kind == "not_an_image" and isinstance(source, io.BytesIO) else exc)
        raise ImageError(f"cannot read image '{name}': {detail}", kind) from None


def open_image(path: str | PathLike) -> Image.Image:
    """Decodes an image file fully (any format PIL reads), EXIF orientation applied.

    Raises UserError naming the file when it is missing or not a readable image (ImageError,
    with its cause, for a file that is there); PIL's warnings on odd files become one
    `warning:` line naming it."""
    if not os.path.lexists(path):
        raise UserError(f"image '{path}' not found")
    regular_file(path, "image")  # a FIFO or device would block the decoder
    return _decode(path, path, None)


def decode_image(data: bytes, name: str, max_pixels: int | None = None) -> Image.Image:
    """open_image for bytes in memory (an upload), named `name` in errors; images of more than
    max_pixels pixels are refused from their header (ImageError "too_many_pixels"), and PIL's
    decompression-bomb guard applies as to files."""
    return _decode(io.BytesIO(data), name, max_pixels)


def _say(notes: list[warnings.WarningMessage], path: str | PathLike) -> None:
    """PIL's warnings on odd files (a very large image, damaged EXIF data) as one `warning:`
    line naming the file, not Python's warning with its source line."""
    for text in dict.fromkeys(str(n.message).splitlines()[0] for n in notes if str(n.message)):
        warn(f"image '{path}': {text[:200]}")


def probe_image(path: str | PathLike) -> tuple[str, tuple[int, int]]:
    """The mode and (width, height) of an image file from its header only (cheap: no pixel
    decoding).

    Used to scan large folders; a truncated file can still pass and fail at decoding time."""
    regular_file(path, "image")
    try:
        with Image.open(path) as img:  # in threads: warnings are caught where images decode
            return img.mode, img.size
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
    return _tf().pil_to_tensor(img)


def eval_geometry(img: Image.Image, size: tuple[int, int], crop_fraction: float,
                  resize: str = "crop") -> Image.Image:
    """The image as an (H, W) input. resize "crop": the shorter side resized to
    min(size) / crop_fraction, then the centre cut (the paper's; a 50x20 image loses 60% of its
    width); "squish": the whole image resized to (H, W), its aspect ratio not kept; "pad": the
    whole image fitted inside (H, W), aspect ratio kept, the rest black."""
    if resize == "squish":
        return _tf().resize(img, list(size), antialias=True)
    if resize == "pad":
        (w, h), (height, width) = img.size, size
        scale = min(height / h, width / w)
        nh, nw = max(1, round(h * scale)), max(1, round(w * scale))
        img = _tf().resize(img, [nh, nw], antialias=True)
        left, top = (width - nw) // 2, (height - nh) // 2
        return _tf().pad(img, [left, top, width - nw - left, height - nh - top], fill=0)
    shorter = max(min(size), round(min(size) / crop_fraction))
    img = _tf().resize(img, [shorter], antialias=True)
    return _tf().center_crop(img, list(size))


def whole_image(img: Image.Image, shorter: int) -> Image.Image:
    """The whole image with its shorter side resized to `shorter`, aspect ratio kept, no crop:
    the paper's fully-convolutional multi-scale test (section 3.4; global average pooling takes
    any size). The longer side is int(shorter * long / short), as torchvision's resize."""
    return _tf().resize(img, [shorter], antialias=True)


def scale_crop(img: Image.Image, size: int, seed: int) -> Image.Image:
    """The paper's scale augmentation (section 3.4) for one image: shorter side resized to a
    random length in [size*256/224, size*480/224], then a random size x size crop.

    The randomness comes from `seed` (drawn per example from the epoch's generator), so a worker
    process produces the same crop whichever worker or resume point handles the example."""
    g = torch.Generator().manual_seed(seed)
    lo, hi = (round(size * s) for s in SCALE_RANGE)
    shorter = int(torch.randint(lo, hi + 1, (1,), generator=g))
    img = _tf().resize(img, [shorter], antialias=True)
    w, h = img.size
    top = int(torch.randint(0, h - size + 1, (1,), generator=g))
    left = int(torch.randint(0, w - size + 1, (1,), generator=g))
    return _tf().crop(img, top, left, size, size)


def default_crop_fraction(input_size: Sequence[int]) -> float:
    """Heuristic when the caller does not know how a model was evaluated: inputs of 64 px and up
    are taken to come from image folders (paper protocol), smaller ones from in-memory datasets."""
    return FOLDER_CROP_FRACTION if min(input_size[-2:]) >= 64 else 1.0


def preprocess(images: Sequence[Image.Image], in_chans: int, input_size: Sequence[int],
               mean: Sequence[float] | torch.Tensor, std: Sequence[float], *,
               crop_fraction: float | None = None, resize: str = "crop") -> torch.Tensor:
    """Model-ready (N, C, H, W) float32 batch from PIL images of any mode and size, prepared as
    evaluation prepares its data: channel conversion, `eval_geometry`, normalisation.

    mean may be per channel or a per-pixel mean image (C, H, W) (normalize="pixel").
    crop_fraction: store `Data.crop_fraction` with the model and pass it; None guesses.
    resize: how the image becomes (H, W) (eval_geometry)."""
    size = (int(input_size[-2]), int(input_size[-1]))
    frac = default_crop_fraction(size) if crop_fraction is None else crop_fraction
    if not images:
        return torch.empty(0, in_chans, *size)
    batch = torch.stack([pil_to_uint8(eval_geometry(to_channels(im, in_chans), size, frac,
                                                    resize)) for im in images])
    return Normalizer(mean, std)(batch.float() / 255)

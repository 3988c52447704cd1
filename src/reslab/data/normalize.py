"""Input normalisation: the statistics a model was trained with (`Stats`), how they are
measured (`compute_stats`), and how they are applied (`Normalizer`), per channel or per pixel.

"pixel" follows the paper's CIFAR protocol (section 4.2, "the per-pixel mean subtracted"): each
pixel position has its own mean, and the images are then divided by ONE global std, the spread of
all pixels around their position's mean. A per-pixel std would amplify the near-constant border
pixels of centred datasets (Fashion-MNIST, digits) into noise, and the paper names no division at
all; one global std only sets the input scale, as per-channel std does for "channel".
"""
from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass

import torch
import torch.nn.functional as F

from ..choices import NORMALIZE  # noqa: F401 (re-exported)

@dataclass(frozen=True)
class Stats:
    """Normalisation statistics in [0, 1] pixel units. mean_image is set for normalize="pixel"."""
    mean: list[float]
    std: list[float]
    mean_image: torch.Tensor | None = None


def compute_stats(x: torch.Tensor, mode: str, chunk: int = 4096) -> Stats:
    """Statistics of uint8 images (N, C, H, W), accumulated in float64 chunks to bound memory.

    "channel": per-channel mean and std. "pixel": the per-pixel mean image (the paper's CIFAR
    protocol, section 4.2, and ImageNet's, section 3.4) and one global std of the pixels around
    it. The paper only subtracts the mean; the division by one scalar is a uniform rescaling that
    puts the input at unit variance (He init's assumption, and O(1) values for bf16/fp16), keeps
    the relative scale of the colour channels, and is absorbed by the BN after conv1 (up to its
    eps): the functions the net can compute are the same. See docs/paper-deviations.md."""
    n, c = x.shape[:2]
    s1 = torch.zeros(x.shape[1:], dtype=torch.float64)
    s2 = torch.zeros(x.shape[1:], dtype=torch.float64)
    for i in range(0, n, chunk):
        part = x[i:i + chunk].to(torch.float64) / 255
        s1 += part.sum(0)
        s2 += part.square().sum(0)
    if mode == "pixel":
        mean_image = s1 / n
        var = (s2 / n - mean_image.square()).mean().clamp_min(1e-12)
        std = float(var.sqrt())
        mean = mean_image.mean((1, 2))
        return Stats(mean.tolist(), [std] * c, mean_image.float())
    count = n * x.shape[2] * x.shape[3]
    mean = s1.sum((1, 2)) / count
    std = (s2.sum((1, 2)) / count - mean.square()).clamp_min(1e-12).sqrt()
    return Stats(mean.tolist(), std.tolist())


class Normalizer:
    """(x - mean) / std, with mean per channel (C,) or a per-pixel image (C, H, W) (bilinearly
    resized when evaluating at another resolution, see `_fit_mean` for non-square inputs).
    `from_uint8` fuses the /255 with it: one multiply-add per element. Device copies are cached."""

    def __init__(self, mean: Sequence[float] | torch.Tensor, std: Sequence[float]) -> None:
        mean = torch.as_tensor(mean, dtype=torch.float32)
        self.per_pixel = mean.dim() == 3
        self.mean = mean.unsqueeze(0) if self.per_pixel else mean.view(1, -1, 1, 1)
        self.std = torch.as_tensor(std, dtype=torch.float32).view(1, -1, 1, 1)
        # Padding value for crops, per channel: the mean colour, i.e. ~0 after normalisation.
        self.fill = self.mean.mean((0, 2, 3)).mul(255).round().to(torch.uint8)
        self._cache: dict[tuple, torch.Tensor] = {}

    def _mean(self, device: torch.device, hw: tuple[int, ...]) -> torch.Tensor:
        resized = self.per_pixel and tuple(self.mean.shape[-2:]) != hw
        key = ("mean", str(device), hw if resized else None)
        if key not in self._cache:
            mean = self.mean
            if resized:
                mean = self._fit_mean(hw)
                # Whole images (multi-scale test) come in many shapes: keep a few resized means.
                old = [k for k in self._cache if k[0] == "mean" and k[2] is not None]
                for k in old[:max(0, len(old) - 7)]:
                    del self._cache[k]
            self._cache[key] = mean.to(device)
        return self._cache[key]

    def _fit_mean(self, hw: tuple[int, ...]) -> torch.Tensor:
        """The per-pixel mean for an input of size hw. A square mean image (measured on square
        crops) on a non-square input, a whole image of the multi-scale test, is resized to the
        shorter side and centred, its border values extended along the longer side: geometry
        kept (no stretching), and the centre square gets exactly the mean a square input of
        that size gets (the 10-crop's 256 x 256 centre of a whole image included)."""
        mean = self.mean
        h, w = mean.shape[-2:]
        size = hw
        if h == w and hw[0] != hw[1]:
            size = (min(hw), min(hw))
        if tuple(size) != (h, w):
            mean = F.interpolate(mean, size=size, mode="bilinear", align_corners=False,
                                 antialias=size[0] < h)
        if tuple(size) != tuple(hw):
            dh, dw = hw[0] - size[0], hw[1] - size[1]
            top, left = int(round(dh / 2.0)), int(round(dw / 2.0))  # as torchvision's centre crop
            mean = F.pad(mean, (left, dw - left, top, dh - top), mode="replicate")
        return mean

    def _std(self, device: torch.device) -> torch.Tensor:
        return self._cache.setdefault(("std", str(device)), self.std.to(device))

    def __call__(self, x: torch.Tensor) -> torch.Tensor:
        """x: float images in [0, 1]."""
        return (x - self._mean(x.device, tuple(x.shape[-2:]))) / self._std(x.device)

    def invert(self, x: torch.Tensor) -> torch.Tensor:
        """The images in [0, 1] pixel units that __call__ turned into x: x * std + mean."""
        return x * self._std(x.device) + self._mean(x.device, tuple(x.shape[-2:]))

    def from_uint8(self, x: torch.Tensor, bias: torch.Tensor | None = None) -> torch.Tensor:
        """x: uint8 images; bias: -mean/std already aligned with x (else computed here)."""
        std = self._std(x.device)
        if bias is None:
            bias = -self._mean(x.device, tuple(x.shape[-2:])) / std
        return torch.addcmul(bias, x, 1 / (255 * std))

    def padded_bias(self, pad: int, hw: tuple[int, int], device: torch.device) -> torch.Tensor:
        """-mean/std as a (1, C, H+2p, W+2p) image whose border maps the fill colour to 0, so
        per-pixel-mean crops can gather their bias with the pixels' own windows."""
        key = ("bias", str(device), hw, pad)
        if key not in self._cache:
            std = self._std(device)
            bias = -self._mean(device, hw) / std
            if pad:
                border = -self.fill.to(device, torch.float32).view(1, -1, 1, 1) / (255 * std)
                out = border.expand(1, bias.shape[1], hw[0] + 2 * pad, hw[1] + 2 * pad).clone()
                out[..., pad:pad + hw[0], pad:pad + hw[1]] = bias
                bias = out
            self._cache[key] = bias
        return self._cache[key]

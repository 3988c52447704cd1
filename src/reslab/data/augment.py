"""Batched augmentation and normalisation on tensors, on the training device.

Every random choice of an epoch is drawn up front from one private generator seeded by
(seed, epoch) and stored per position of the epoch's order (`EpochPlan`). A batch is then a pure
function of its positions: resuming at step k, or taking one rank's shard, reproduces exactly the
values an uninterrupted single-process run would see, without drawing or decoding anything for the
skipped batches. Drawing 60,000 shifts and flips costs about a millisecond.
"""
from __future__ import annotations

import math
from collections.abc import Callable
from dataclasses import dataclass
from functools import lru_cache

import numpy as np
import torch
import torch.nn.functional as F

from ..choices import AUGMENTS, AUTO_AUGMENTS  # noqa: F401 (re-exported)
from .images import SCALE_RANGE
from .normalize import Normalizer

# Scale augmentation, flip and colour (section 3.4): "imagenet" adds fb.resnet.torch's colour
# jitter to the PCA lighting, "imagenet-pca" has the PCA lighting only (AlexNet's "standard
# colour augmentation" the paper cites: the paper-imagenet recipe).
SCALE_AUGMENTS = ("imagenet", "imagenet-pca")
# AlexNet's PCA colour augmentation (the paper's "standard colour augmentation [21]", section
# 3.4): ImageNet RGB eigenvalues/vectors as used by fb.resnet.torch; alpha ~ N(0, 0.1).
PCA_EIGVAL = (0.2175, 0.0188, 0.0045)
PCA_EIGVEC = ((-0.5675, 0.7192, 0.4009), (-0.5808, -0.0045, -0.8140), (-0.5836, -0.6948, 0.4203))
LIGHTING_STD = 0.1
JITTER = 0.4  # brightness, contrast and saturation factors in [0.6, 1.4] (fb.resnet.torch)
_LUMA = (0.299, 0.587, 0.114)  # ITU-R 601-2, as PIL and torchvision use for grayscale
# Random erasing (Zhong et al. 2017, torchvision's RandomErasing defaults): a rectangle of 2-40%
# of the image, aspect ratio log-uniform in [0.3, 1/0.3].
ERASE_AREA = (0.02, 0.4)
ERASE_ASPECT = (0.3, 1 / 0.3)


def epoch_generator(seed: int, epoch: int, stream: int = 0xDA7A) -> torch.Generator:
    """A private CPU generator for (seed, epoch); SeedSequence decorrelates nearby pairs.
    `stream` names another sequence of draws of the same (seed, epoch)."""
    words = np.random.SeedSequence([seed % 2**63, epoch, stream]).generate_state(2, np.uint32)
    return torch.Generator().manual_seed(int(words[0]) << 32 | int(words[1]))


@dataclass(frozen=True)
class EpochPlan:
    """An epoch's example order and its augmentation draws, indexed by position in the order."""
    order: torch.Tensor
    params: dict[str, torch.Tensor]

    def take(self, lo: int, hi: int) -> tuple[torch.Tensor, dict[str, torch.Tensor]]:
        return self.order[lo:hi], {k: v[lo:hi] for k, v in self.params.items()}


def plan_epoch(n: int, augment: str, g: torch.Generator, *, pad: int,
               erase: float = 0.0, auto_augment: str = "none",
               weights: torch.Tensor | None = None) -> EpochPlan:
    """Draws the order (a permutation of n) and every augmentation parameter for one epoch.
    weights: n sampling weights; the order is then n draws with replacement in proportion to
    them (a class-balanced sampler: engine/balance.py) instead of a permutation.
    erase: the probability of random erasing per image; auto_augment: a policy of
    AUTO_AUGMENTS, which gets one seed per image (their draws come last, so a plan without
    them is the same as before they existed).

    For "imagenet", `scale`/`offset` drive the batched scale augmentation of in-memory data and
    `seed` the per-example scale augmentation that folder workers do (both are drawn so the plan
    does not depend on the data's backend)."""
    order = (torch.randperm(n, generator=g) if weights is None
             else torch.multinomial(weights.double(), n, replacement=True, generator=g))
    params: dict[str, torch.Tensor] = {}
    if augment in ("crop-flip", "crop"):
        params["shift"] = torch.randint(0, 2 * pad + 1, (n, 2), generator=g)
    if augment in ("crop-flip", "flip", *SCALE_AUGMENTS):
        params["flip"] = torch.randint(0, 2, (n,), generator=g).bool()
    if augment in SCALE_AUGMENTS:
        lo, hi = SCALE_RANGE
        params["scale"] = lo + (hi - lo) * torch.rand(n, generator=g)
        params["offset"] = torch.rand(n, 2, generator=g)
        params["seed"] = torch.randint(0, 2**62, (n,), generator=g)
        params["jitter"] = 1 - JITTER + 2 * JITTER * torch.rand(n, 3, generator=g)
        params["light"] = LIGHTING_STD * torch.randn(n, 3, generator=g)
        if augment == "imagenet-pca":  # drawn all the same: the other draws stay in step
            params["jitter"] = torch.ones(n, 3)
    if erase > 0:
        params["erase"] = torch.rand(n, generator=g) < erase
        params["erase_box"] = torch.rand(n, 4, generator=g)  # area, aspect, top, left in [0, 1)
    if auto_augment != "none":
        params["policy_seed"] = torch.randint(0, 2**62, (n,), generator=g)
    return EpochPlan(order, params)


def alternate_flips(plan: EpochPlan, seed: int, epoch: int) -> EpochPlan:
    """The plan with airbench94's alternating ("derandomised") flip (Jordan 2024, arXiv
    2404.00498): each image gets one random mirror bit for the whole run (drawn
    from the seed alone) and is mirrored in even epochs where it is set, in odd epochs where it
    is not, so every image is seen both ways in any two consecutive epochs. A plan without
    flips is returned as it is."""
    if "flip" not in plan.params:
        return plan
    n = len(plan.order)
    bits = torch.randint(0, 2, (n,), generator=epoch_generator(seed, 0, FLIP_STREAM)).bool()
    flips = bits[plan.order] ^ bool(epoch % 2)
    return EpochPlan(plan.order, {**plan.params, "flip": flips})


FLIP_STREAM = 0xF11B  # alternate_flips' draws: the run's, not any epoch's


@lru_cache(maxsize=None)
def policy_transform(name: str) -> Callable[[torch.Tensor], torch.Tensor]:
    """The torchvision.transforms.v2 transform of an AUTO_AUGMENTS policy (its defaults)."""
    from torchvision.transforms import v2

    return {"randaugment": v2.RandAugment, "trivialaugment": v2.TrivialAugmentWide}[name]()


def auto_augment(x: torch.Tensor, params: dict[str, torch.Tensor], name: str) -> torch.Tensor:
    """Applies the policy to each image of a batch (uint8, or float in [0, 1]) on its own: one
    op choice and magnitude per image, as torchvision applies it to a dataset's samples.

    v2 transforms draw from the global generator and take no other, so each image's draws come
    from its own seed of the epoch plan under a forked RNG: the batch is a pure function of its
    positions (exact resume and sharding) and the global RNG is left as it was."""
    if "policy_seed" not in params or name == "none" or not len(x):
        return x
    transform = policy_transform(name)
    with torch.random.fork_rng(devices=[]):
        out = []
        for image, seed in zip(x, params["policy_seed"].tolist()):
            torch.default_generator.manual_seed(seed)
            out.append(transform(image))
    return torch.stack(out)


def random_erase(x: torch.Tensor, params: dict[str, torch.Tensor]) -> torch.Tensor:
    """Random erasing of normalised images (N, C, H, W), in place: where params["erase"], a
    rectangle of ERASE_AREA of the image with an ERASE_ASPECT ratio, placed uniformly, is set to
    0, the mean colour after normalisation (per pixel for the per-pixel mean). Batched: one
    mask from broadcast comparisons, no Python loop."""
    if "erase" not in params:
        return x
    n, _, h, w = x.shape
    on = params["erase"].to(x.device)
    area, aspect, top, left = params["erase_box"].to(x.device, torch.float32).unbind(1)
    lo, hi = ERASE_AREA
    a = (lo + (hi - lo) * area) * h * w
    ratio = torch.exp(math.log(ERASE_ASPECT[0]) + math.log(ERASE_ASPECT[1] / ERASE_ASPECT[0])
                      * aspect)
    eh = torch.sqrt(a * ratio).round().clamp(1, h)
    ew = torch.sqrt(a / ratio).round().clamp(1, w)
    y0 = (top * (h - eh + 1)).floor()
    x0 = (left * (w - ew + 1)).floor()
    rows = torch.arange(h, device=x.device, dtype=torch.float32)
    cols = torch.arange(w, device=x.device, dtype=torch.float32)
    in_rows = (rows >= y0[:, None]) & (rows < (y0 + eh)[:, None])  # (N, h)
    in_cols = (cols >= x0[:, None]) & (cols < (x0 + ew)[:, None])  # (N, w)
    mask = (in_rows[:, :, None] & in_cols[:, None, :]) & on[:, None, None]
    return x.masked_fill_(mask[:, None], 0.0)


def pad_fill(x: torch.Tensor, pad: int, fill: torch.Tensor | int = 0) -> torch.Tensor:
    """Pads uint8 images (N, C, H, W) by `pad` px on each side with a per-channel fill."""
    if pad == 0:
        return x
    n, c, h, w = x.shape
    out = torch.empty(n, c, h + 2 * pad, w + 2 * pad, dtype=x.dtype, device=x.device)
    out.copy_(torch.as_tensor(fill, dtype=x.dtype).to(x.device).view(1, -1, 1, 1).expand_as(out))
    out[..., pad:pad + h, pad:pad + w] = x
    return out


def crop_windows(shift: torch.Tensor, flip: torch.Tensor, h: int,
                 w: int) -> tuple[torch.Tensor, torch.Tensor]:
    """Source rows (N, h) and columns (N, w) of each crop: output (i, j) reads padded pixel
    (i + dy, j + dx), or column (w - 1 - j) + dx when mirrored, for shift = (dy, dx)."""
    rows = shift[:, 0:1] + torch.arange(h, device=shift.device)
    cols = torch.arange(w, device=shift.device).expand(len(shift), w)
    return rows, torch.where(flip[:, None], w - 1 - cols, cols) + shift[:, 1:2]


def take_windows(src: torch.Tensor, idx: torch.Tensor, rows: torch.Tensor,
                 cols: torch.Tensor) -> torch.Tensor:
    """src[idx[n], :, rows[n]][..., cols[n]] for every n: one row gather, one column gather, no
    Python loop (0.3 ms for 256 Fashion-MNIST crops on one CPU thread)."""
    chans = torch.arange(src.shape[1], device=src.device)
    part = src[idx[:, None, None], chans[None, :, None], rows[:, None, :]]  # (N, C, h, W + 2p)
    return part.gather(3, cols[:, None, None, :].expand(*part.shape[:3], cols.shape[1]))


def crop_flip(x: torch.Tensor, shift: torch.Tensor, flip: torch.Tensor, pad: int,
              fill: torch.Tensor | int = 0) -> torch.Tensor:
    """Pads each image by `pad` px, crops the original size at shift = (dy, dx) (each in
    [0, 2*pad]) and mirrors where `flip`: the CIFAR augmentation of paper section 4.2."""
    rows, cols = crop_windows(shift, flip, x.shape[-2], x.shape[-1])
    return take_windows(pad_fill(x, pad, fill), torch.arange(len(x), device=x.device), rows, cols)


def window_batch(src: torch.Tensor, idx: torch.Tensor, params: dict[str, torch.Tensor],
                 pad: int, normalize: Normalizer, policy: str = "none") -> torch.Tensor:
    """Crop-flip ("shift", "flip"), flip or nothing, and normalisation of images `idx` of a
    uint8 source padded by `pad` (with `normalize.fill`), fused into two gathers and a
    multiply-add. Padding shows the mean colour (0 after normalisation, as when the paper pads
    mean-subtracted images); a per-pixel mean stays aligned with the pixels it was measured on.
    policy: an AUTO_AUGMENTS policy applied to the uint8 crops before normalisation."""
    n, dev = len(idx), src.device
    shift = params.get("shift", torch.zeros(n, 2, dtype=torch.long)).to(dev, non_blocking=True)
    flip = params.get("flip", torch.zeros(n, dtype=torch.bool)).to(dev, non_blocking=True)
    hw = (src.shape[-2] - 2 * pad, src.shape[-1] - 2 * pad)
    rows, cols = crop_windows(shift, flip, *hw)
    bias = None
    if normalize.per_pixel:
        bias = take_windows(normalize.padded_bias(pad, hw, dev), torch.zeros_like(idx), rows, cols)
    crops = auto_augment(take_windows(src, idx, rows, cols), params, policy)
    return normalize.from_uint8(crops, bias)


def hflip(x: torch.Tensor, flip: torch.Tensor) -> torch.Tensor:
    """Mirrors the images where `flip` is true (exact: a reversed copy, no resampling)."""
    return torch.where(flip[:, None, None, None], x.flip(-1), x)


def scale_crop_flip(x: torch.Tensor, scale: torch.Tensor, offset: torch.Tensor,
                    flip: torch.Tensor) -> torch.Tensor:
    """Batched scale augmentation (paper section 3.4) for in-memory data: each image enlarged by
    its `scale` in [256/224, 480/224], a crop of the original size at the relative `offset`
    (in [0, 1]^2) and an optional mirror, as one affine resampling (bilinear upscaling)."""
    a = 1 / scale
    theta = torch.zeros(len(x), 2, 3, device=x.device)
    theta[:, 0, 0] = torch.where(flip, -a, a)
    theta[:, 1, 1] = a
    theta[:, :, 2] = (2 * offset - 1) * (1 - a)[:, None]
    grid = F.affine_grid(theta, list(x.shape), align_corners=False)
    return F.grid_sample(x, grid, mode="bilinear", padding_mode="border", align_corners=False)


def _gray(x: torch.Tensor) -> torch.Tensor:
    if x.shape[1] != 3:
        return x.mean(1, keepdim=True)
    luma = torch.tensor(_LUMA, device=x.device, dtype=x.dtype).view(1, 3, 1, 1)
    return (x * luma).sum(1, keepdim=True)


def colour(x: torch.Tensor, jitter: torch.Tensor, light: torch.Tensor) -> torch.Tensor:
    """Brightness, contrast and saturation jitter (torchvision's blend formulas, fixed order),
    then AlexNet PCA lighting noise for RGB. x in [0, 1]; one factor row per image."""
    b, c, s = (f.view(-1, 1, 1, 1) for f in jitter.unbind(1))
    x = (x * b).clamp(0, 1)
    mean = _gray(x).mean((2, 3), keepdim=True)
    x = ((x - mean) * c + mean).clamp(0, 1)
    if x.shape[1] != 3:
        return x
    gray = _gray(x)
    x = ((x - gray) * s + gray).clamp(0, 1)
    eigval = torch.tensor(PCA_EIGVAL, device=x.device)
    eigvec = torch.tensor(PCA_EIGVEC, device=x.device)
    shift = (light * eigval) @ eigvec.T  # (N, 3): sum_k eigvec[:, k] * alpha_k * eigval_k
    return (x + shift[:, :, None, None]).clamp(0, 1)


def imagenet_batch(x: torch.Tensor, params: dict[str, torch.Tensor], normalize: Normalizer, *,
                   geometry_done: bool = False, policy: str = "none") -> torch.Tensor:
    """augment="imagenet" for a uint8 batch: scale crop and flip (unless a folder worker
    already did the scale crop: `geometry_done`), an AUTO_AUGMENTS policy, colour, then
    normalisation. Works in [0, 1] pixel units because colour jitter needs them."""
    p = {k: v.to(x.device, non_blocking=True) for k, v in params.items()}
    x = x.float().div_(255)
    if geometry_done:
        x = hflip(x, p["flip"])
    else:
        x = scale_crop_flip(x, p["scale"], p["offset"], p["flip"])
    x = auto_augment(x, params, policy)
    return normalize(colour(x, p["jitter"], p["light"]))

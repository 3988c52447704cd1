"""Initialisations from airbench94 (Keller Jordan, "94% on CIFAR-10 in 3.29 seconds on a single
GPU", arXiv 2404.00498, and its public code github.com/KellerJordan/cifar10-airbench): identity
(Dirac) convolutions and a first layer that whitens the patches of the training images.

Both change only the initial weights, never the architecture: a model trained with them is
saved, loaded and exported as any other of its family.
"""
from __future__ import annotations

import math
from collections.abc import Iterable

import torch
import torch.nn.functional as F
from torch import nn

# Added to the eigenvalues before 1/sqrt: directions of almost no variance (flat patches) are
# not blown up to unit variance (airbench's value for normalised images).
WHITEN_EPS = 5e-4
MAX_POSITIONS = 1024  # patches per image at most (a regular grid on large images)
CHUNK = 64            # images unfolded at once


@torch.no_grad()
def dirac_init_(model: nn.Module) -> int:
    """Makes every 3x3 convolution start as (a subsampled) identity where it can: output channel
    i < min(in, out) copies input channel i, the other output channels keep their random init
    (airbench's `dirac_(w[:w.size(1)])`: an implicit residual through every layer). Returns the
    number of convolutions changed."""
    changed = 0
    for m in model.modules():
        if isinstance(m, nn.Conv2d) and m.kernel_size == (3, 3) and m.groups == 1:
            w = m.weight
            nn.init.dirac_(w[:w.shape[1]])
            changed += 1
    return changed


@torch.no_grad()
def patch_covariance(images: Iterable[torch.Tensor], kernel: tuple[int, int]
                     ) -> tuple[torch.Tensor, int]:
    """The covariance (D, D), D = C*kh*kw, of the kh x kw patches (no padding) of the batches
    of normalised images (N, C, H, W), in float64, and the number of patches. Every patch of
    small images; on large ones a regular grid of about MAX_POSITIONS per image (224 px
    images hold 47,524 7x7 patches each). Accumulated in chunks of CHUNK images, so memory
    stays bounded."""
    total = outer = None
    n = 0
    for batch in images:
        positions = (batch.shape[-2] - kernel[0] + 1) * (batch.shape[-1] - kernel[1] + 1)
        stride = max(1, math.ceil(math.sqrt(positions / MAX_POSITIONS)))
        for x in batch.split(CHUNK):
            p = F.unfold(x.double(), kernel, stride=stride).transpose(1, 2)
            p = p.reshape(-1, p.shape[-1])
            s, o = p.sum(0), p.T @ p
            total, outer = (s, o) if total is None else (total + s, outer + o)
            n += len(p)
    if total is None or n < 2:
        raise ValueError("whitening needs at least two patches")
    mean = total / n
    return (outer - n * torch.outer(mean, mean)) / (n - 1), n


@torch.no_grad()
def whiten_conv_(conv: nn.Conv2d, images: Iterable[torch.Tensor],
                 eps: float = WHITEN_EPS) -> int:
    """Initialises `conv` to whiten the patches of `images` (airbench's whitening layer): its
    filters are the k leading eigenvectors of the patch covariance, each scaled by
    1/sqrt(eigenvalue + eps), followed by their negatives (so that a ReLU after it loses
    nothing), k = min(out_channels // 2, D). The first k output channels then have an identity
    covariance on the patches (up to eigenvalue / (eigenvalue + eps)). Output channels beyond
    2k keep their init. Returns k.

    airbench also freezes this layer and gives it a bias; here it is only an initialisation
    (the layer keeps training, its BN follows)."""
    kh, kw = conv.kernel_size
    if conv.groups != 1:
        raise ValueError("whitening needs an ungrouped convolution")
    cov, _ = patch_covariance(images, (kh, kw))
    values, vectors = torch.linalg.eigh(cov)                  # ascending
    values, vectors = values.flip(0), vectors.flip(1)         # leading first
    k = min(conv.out_channels // 2, cov.shape[0])
    filters = (vectors[:, :k] / torch.sqrt(values[:k].clamp_min(0) + eps)).T
    filters = filters.reshape(k, conv.in_channels, kh, kw)
    w = conv.weight
    w[:2 * k] = torch.cat([filters, -filters]).to(w.dtype)
    return k

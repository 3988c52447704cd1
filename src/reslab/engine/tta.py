"""Test-time views. The paper's evaluation modes (section 3.4): 10-crop and
fully-convolutional multi-scale testing, both averaging softmax scores over views, and return
log of the averaged probabilities: usable wherever logits are (argmax, top-k and cross-entropy
all give the averaged-score answers, since softmax(log p) = p). A run's own test-time
augmentation (tta_model: the mirror image, airbench94's 1 px translations) averages logits.
"""
from __future__ import annotations

from collections.abc import Callable, Iterable, Iterator

import torch
import torch.nn.functional as F

Model = Callable[[torch.Tensor], torch.Tensor]


def _offset(full: int, crop: int) -> int:
    # Same rounding as torchvision's center_crop, so 1-crop matches folder evaluation.
    return int(round((full - crop) / 2.0))


def center_crop(x: torch.Tensor, size: int) -> torch.Tensor:
    """The centre size x size window of a (N, C, H, W) batch."""
    h, w = x.shape[-2:]
    _check_size(h, w, size)
    top, left = _offset(h, size), _offset(w, size)
    return x[..., top:top + size, left:left + size]


def ten_crop(x: torch.Tensor, size: int) -> torch.Tensor:
    """(10, N, C, size, size): top-left, top-right, bottom-left, bottom-right, centre (as
    torchvision's five_crop), then the horizontal flip of each of those five, in that order."""
    h, w = x.shape[-2:]
    _check_size(h, w, size)
    crops = [x[..., :size, :size], x[..., :size, w - size:], x[..., h - size:, :size],
             x[..., h - size:, w - size:], center_crop(x, size)]
    crops += [c.flip(-1) for c in crops]
    return torch.stack(crops)


def _check_size(h: int, w: int, size: int) -> None:
    if size > min(h, w):
        raise ValueError(f"crop {size} is larger than the {h}x{w} image")


def mean_probs(logits: Iterable[torch.Tensor]) -> torch.Tensor:
    """Average of the softmax scores of several views' logits (N, K), in float32."""
    total, n = None, 0
    for z in logits:
        p = F.softmax(z.float(), dim=1)
        total, n = (p if total is None else total + p), n + 1
    if total is None:
        raise ValueError("no views to average")
    return total / n


def _log(p: torch.Tensor) -> torch.Tensor:
    return torch.log(p.clamp_min(torch.finfo(p.dtype).tiny))


@torch.no_grad()
def tta_logits(model: Model, x: torch.Tensor, crops: int = 1, crop_size: int | None = None
               ) -> torch.Tensor:
    """log of the softmax scores averaged over the views of a normalised batch (N, C, H, W).

    crops=1: the centre crop_size crop (the whole image when crop_size is None);
    crops=10: the paper's 10-crop ("standard 10-crop testing [21]": AlexNet's corners and centre
    of the central square, e.g. 224 crops of the 256 x 256 centre of an image whose shorter side
    is 256; a non-square batch is first cut to its centre square). The crops run one at a time
    to bound memory.
    """
    size = crop_size or min(x.shape[-2:])
    if crops == 1:
        return _log(mean_probs([model(center_crop(x, size))]))
    if crops == 10:
        square = center_crop(x, min(x.shape[-2:]))
        return _log(mean_probs(model(c) for c in ten_crop(square, size)))
    raise ValueError(f"crops must be 1 or 10, got {crops}")


def translations(x: torch.Tensor, shift: int = 1) -> tuple[torch.Tensor, torch.Tensor]:
    """The batch moved by `shift` px down-right and up-left (out[i, j] = x[i - s, j - s], and
    x[i + s, j + s]), the borders filled by reflection: airbench94's test-time translations."""
    h, w = x.shape[-2:]
    padded = F.pad(x, (shift,) * 4, mode="reflect")
    return padded[..., :h, :w], padded[..., 2 * shift:, 2 * shift:]


def flip_tta(model: Model) -> Model:
    """Logits averaged with those of the horizontally flipped image (test-time flip)."""
    return lambda x: 0.5 * (model(x) + model(x.flip(-1)))


def tta_model(model: Model, *, flip: bool, translate: bool) -> Model:
    """The logits function of a test-time augmentation, the one path of `train`'s evaluation,
    `eval`, `predict` and `serve` (the record's TTA says which): the translations (each view
    with its mirror under flip), the mirror alone, or the model as it is."""
    if translate:
        return translate_tta(model, flip=flip)
    return flip_tta(model) if flip else model


def translate_tta(model: Model, flip: bool = True) -> Model:
    """airbench94's multi-crop test-time augmentation (its tta_level 2; Jordan 2024, arXiv
    2404.00498): logits of the image weighted 1/2 and of each of its two 1 px translations
    1/4, each view averaged with its mirror image when `flip`. Logits are averaged, as
    airbench does (and flip_tta)."""
    views = flip_tta(model) if flip else model

    def predict(x: torch.Tensor) -> torch.Tensor:
        down_right, up_left = translations(x)
        return 0.5 * views(x) + 0.25 * (views(down_right) + views(up_left))
    return predict


def resize_shorter(x: torch.Tensor, size: int) -> torch.Tensor:
    """The batch resized (bilinear, antialiased) so its shorter side is size, aspect kept."""
    h, w = x.shape[-2:]
    scale = size / min(h, w)
    out = (max(1, round(h * scale)), max(1, round(w * scale)))
    if out == (h, w):
        return x
    return F.interpolate(x, size=out, mode="bilinear", antialias=True, align_corners=False)


@torch.no_grad()
def multiscale_probs(model: Model, views: Iterable[torch.Tensor], flip: bool = False
                     ) -> torch.Tensor:
    """Softmax scores averaged over the same images at several scales, each seen whole
    (fully-convolutional: the global average pool takes any size); flip adds mirrored views."""
    def logits() -> Iterator[torch.Tensor]:
        for v in views:
            yield model(v)
            if flip:
                yield model(v.flip(-1))
    return mean_probs(logits())


def multiscale_logits(model: Model, batches_per_scale: list[Iterable[tuple[torch.Tensor,
                                                                          torch.Tensor]]],
                      flip: bool = False) -> Iterator[tuple[torch.Tensor, torch.Tensor]]:
    """(log averaged scores, labels) per batch of the first scale, from one loader per scale,
    e.g. shorter sides {224, 256, 384, 480, 640}, each image seen whole.

    The loaders must yield the same images in the same order, but may cut them into batches
    differently: whole images of different aspect ratios come in runs of one shape, and two
    images with the same shape at one scale may differ by a pixel at another. Scores are
    therefore aligned per example, by position in that order, before they are averaged."""
    streams = [_scored(model, batches, flip) for batches in batches_per_scale]
    if not streams:
        raise ValueError("no views to average")
    pending: list[list[tuple[torch.Tensor, torch.Tensor]]] = [[] for _ in streams[1:]]
    for p, y in streams[0]:
        total = p.clone()
        for stream, queue in zip(streams[1:], pending):
            q, labels = _take(stream, queue, len(y))
            if not torch.equal(labels, y):
                raise ValueError("the per-scale loaders disagree on the labels: not the same "
                                 "images")
            total += q
        yield _log(total / len(streams)), y
    for stream, queue in zip(streams[1:], pending):
        if queue or next(stream, None) is not None:
            raise ValueError("the per-scale loaders yield different numbers of images")


def _scored(model: Model, batches: Iterable[tuple[torch.Tensor, torch.Tensor]], flip: bool
            ) -> Iterator[tuple[torch.Tensor, torch.Tensor]]:
    """(softmax scores averaged over the flips, labels) per batch of one scale."""
    for x, y in batches:
        yield multiscale_probs(model, [x], flip=flip), y


def _take(stream: Iterator[tuple[torch.Tensor, torch.Tensor]],
          queue: list[tuple[torch.Tensor, torch.Tensor]], n: int
          ) -> tuple[torch.Tensor, torch.Tensor]:
    """The next n examples' (scores, labels) of a stream, whatever its batches; the rest of
    the last batch used stays in queue for the next call."""
    have = sum(len(y) for _, y in queue)
    while have < n:
        item = next(stream, None)
        if item is None:
            raise ValueError("the per-scale loaders yield different numbers of images")
        queue.append(item)
        have += len(item[1])
    p, y = torch.cat([q for q, _ in queue]), torch.cat([t for _, t in queue])
    queue.clear()
    if have > n:
        queue.append((p[n:], y[n:]))
    return p[:n], y[:n]


def scales_of(x: torch.Tensor, sizes: Iterable[int]) -> list[torch.Tensor]:
    """The batch at each shorter-side size, for `multiscale_probs` on an in-memory batch."""
    return [resize_shorter(x, s) for s in sizes]

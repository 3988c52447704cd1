"""The first training images of a recipe as the training loop sees them (fastai's show_batch):
the run assembled as `reslab train` assembles it (its data, the defaults it adapts), the first
steps' batches augmented (crop, flip, policy, erasing, progressive resizing, mixup/cutmix),
de-normalised, each with its label: the class, or the mixed classes and their weights."""
from __future__ import annotations

from dataclasses import dataclass

import torch

from ..engine.loop import Run, train_view
from ..engine.distributed import cleanup
from ..engine.recipe import Recipe


@dataclass(frozen=True)
class ShownBatch:
    images: list[torch.Tensor]  # (C, H, W) in [0, 1], as the step trains on them
    titles: list[str]           # the target of each: a class, or "a 0.62 + b 0.38" when mixed
    side: int                   # the training side of the first step (progressive resizing)
    messages: list[str]         # what the run said about its adapted defaults


def training_images(recipe: Recipe, n: int) -> ShownBatch:
    """The first n training images of the recipe's run (steps 0, 1, ... as needed)."""
    run = Run(recipe, None, quiet=True)
    try:
        names, images, titles, side = run.data.class_names, [], [], None
        batches = run.data.train_batches(0, run.r.step_batch, run.device, seed=run.r.seed)
        for step, (x, y) in enumerate(batches):
            x, target = train_view(run, step, x, y)
            side = side or x.shape[-1]
            images += list(run.data.normalize.invert(x.float()).clamp(0, 1).cpu())
            titles += [target_title(t, names) for t in target.cpu()]
            if len(images) >= n:
                break
        return ShownBatch(images[:n], titles[:n], side or 0, list(run.messages))
    finally:
        cleanup(run.dist)


def target_title(target: torch.Tensor, names: list[str]) -> str:
    """A label's class name; a mixed target's two largest classes with their weights."""
    if target.dim() == 0:
        return names[int(target)]
    weights, classes = target.topk(min(2, len(names)))
    parts = [f"{names[int(c)]} {float(w):.2f}" for w, c in zip(weights, classes) if w > 0.005]
    return " + ".join(parts)

"""The data, model and batch of a training run, assembled in one place for everything that
trains: `fit` (engine.run.Run adds the optimizer, EMA, class balance and iteration counts) and
`lr_find` (its sweep starts from exactly what `reslab train` would start from).

In order: the --weights read once (their record gives the architecture and the normalisation,
their layout option A's padding); the data loaded as the recipe says, at the size and with the
workers that fit it; the recipe's defaults adapted to that data (engine.adapt); the batch
clamped to the training set; the model built, initialised (the weights, or whiten_stem) and put
on the device. Each change to the recipe is said in a note.
"""
from __future__ import annotations

from dataclasses import dataclass
from typing import Any

import torch
from torch import nn

from ..data import Data, load_data
from ..data.loaders import available_cpus
from ..data.normalize import Stats
from ..errors import UserError
from ..models import check_input_side, get_arch
from ..models.init import whiten_conv_
from ..weights.layouts import apply_state_dict, layout_kwargs
from ..weights.reading import open_weights
from ..weights.record import Record
from .adapt import DataFacts, adapt, from_scratch_note
from .calibration import first_images
from .recipe import Recipe
from .setup import architecture_from_weights, build_model

WHITEN_IMAGES = 5000


@dataclass
class Assembled:
    """What a training run starts from."""

    recipe: Recipe             # adapted to the weights and the data; the batch clamped
    data: Data
    model: nn.Module           # initialised, on the device (channels_last if the recipe says)
    layout: dict[str, Any]     # model options the initial weights need (interop.layout_kwargs)
    notes: list[str]           # what fitting the recipe to the weights and the data did
    model_notes: list[str]     # what initialising the model did (loading --weights, whitening)

    @property
    def batch_size(self) -> int:
        return self.recipe.batch_size


def assemble(r: Recipe, device: torch.device, *, world_size: int = 1,
             resume: bool = False) -> Assembled:
    """The run's data, model and batch (module docstring). resume: r is a run's stored recipe,
    already adapted (a resumed run's state then holds the weights)."""
    notes: list[str] = []
    # read once: the weights, their record (normalisation) and layout (option A's padding)
    state, source = open_weights(r.weights, strict_record=False) if r.weights else (None, None)
    layout = layout_kwargs(state, source) if state is not None else {}
    if not resume:
        r, said = architecture_from_weights(r, source)
        notes += said
    r = fit_workers(r)
    stats = source_stats(r, source)
    if stats is not None:
        notes.append(f"note: normalising with the mean/std the weights were trained with "
                     f"({r.weights})")
    data = load_data(r.data, data_dir=r.data_dir, val_split=r.val_split, seed=r.seed,
                     image_size=image_size(r), normalize=r.normalize, augment=r.augment,
                     pad=r.pad, workers=r.workers, erase=r.erase, auto_augment=r.auto_augment,
                     train_images=r.train_images, resize=r.resize, stats=stats)
    notes += data.start_notes
    check_input_side(r.model, min(data.input_size[1:]))
    if not resume:  # a resumed run's stored recipe is already adapted
        r, said = adapt(r, DataFacts(data.num_examples("train"), min(data.input_size[1:]),
                                     world_size))
        notes += said
        data.augment, data.pad = r.augment, r.pad  # read at batch time
        scratch = from_scratch_note(r, data.input_size[-1])
        notes += [scratch] if scratch else []
    data.flip_alternate = r.flip_alternate
    r, said = fit_batch(r, data.num_examples("train"), world_size)
    notes += said
    torch.manual_seed(r.seed)  # the same initial weights on every rank
    model, model_notes = build_model(r, len(data.class_names), data.in_chans, layout), []
    if state is not None:
        model_notes += apply_state_dict(model, state, str(r.weights), layout=layout)
    elif r.whiten_stem and not resume:  # a resumed run's state holds the weights
        model_notes.append(whiten_stem(model, data))
    model.to(device)
    if r.channels_last:
        model.to(memory_format=torch.channels_last)
    return Assembled(r, data, model, layout, notes, model_notes)


# Defaults that fit the data and the machine (each change is said in a note).
def fit_workers(r: Recipe) -> Recipe:
    """No more data workers than the CPUs this process may use."""
    cpus = available_cpus()
    return r.replace(workers=cpus) if r.workers > cpus else r


def image_size(r: Recipe) -> int | None:
    """Image folders default to the model family's resolution (32 px CIFAR, 224 ImageNet)."""
    if r.image_size is None and r.data.startswith("imagefolder:"):
        return get_arch(r.model).default_input[-1]
    return r.image_size


def source_stats(r: Recipe, source: Record | None) -> Stats | None:
    """Fine-tuning keeps the normalisation the weights were trained with (per channel)."""
    if source is None or r.normalize != "channel" or source.preprocess.normalize != "channel":
        return None
    if not r.data.startswith("imagefolder:") and not source.trained_on(r.data):
        return None  # an in-memory dataset of other images: its own statistics
    pre = source.preprocess
    return Stats(list(pre.mean), list(pre.std))


def fit_batch(r: Recipe, n: int, world_size: int) -> tuple[Recipe, list[str]]:
    """A step's images (batch x accumulate) at most the n training images: every step a full
    batch, divisible by the world size."""
    if r.step_batch <= n:
        return r, []
    times = f" x accumulate {r.accumulate}" if r.accumulate > 1 else ""
    if n < world_size * r.accumulate:
        raise UserError(f"the training set has {n} images, fewer than the {world_size} "
                        f"processes{times}")
    fit = n // r.accumulate - n // r.accumulate % world_size
    return r.replace(batch_size=fit), [f"note: batch size {r.batch_size}{times} is larger than "
                                       f"the {n} training images; using {fit}"]


def whiten_stem(model: nn.Module, data: Data) -> str:
    """whiten_stem: the first conv initialised from the patches of up to WHITEN_IMAGES
    training images, normalised and unaugmented (airbench94 uses 5,000); returns the note."""
    batches = first_images(data.eval_batches("train", 500, "cpu"), WHITEN_IMAGES)
    k = whiten_conv_(model.conv1, (x for x, _ in batches))
    return (f"note: the first conv whitens the training images' patches "
            f"({k} leading directions and their negatives)")

"""A small trained checkpoint and its test images, for the runtime and serving tests: resnet8
fitted for a few seconds to scikit-learn's 8x8 digits (1 channel), saved as a reslab weights
file whose record names the dataset, so `reslab eval` scores it without --data."""
from __future__ import annotations

from pathlib import Path

import torch
import torch.nn.functional as F
from PIL import Image

from reslab.data import datasets
from reslab.models import create_model
from reslab.weights.record import Record, save_weights


def digits_checkpoint(path: Path, steps: int = 60, seed: int = 0) -> Path:
    """resnet8 after `steps` SGD steps on digits' training split (about 90% test top-1)."""
    x, y = datasets.digits().train
    x = x.float() / 255
    mean, std = float(x.mean()), float(x.std())
    x = (x - mean) / std
    torch.manual_seed(seed)
    model = create_model("resnet8", num_classes=10, in_chans=1)
    opt = torch.optim.SGD(model.parameters(), lr=0.1, momentum=0.9, nesterov=True)
    g = torch.Generator().manual_seed(seed)
    for _ in range(steps):
        i = torch.randint(0, len(y), (64,), generator=g)
        opt.zero_grad()
        F.cross_entropy(model(x[i]), y[i].long()).backward()
        opt.step()
    record = Record.from_json({
        "architecture": "resnet8", "kwargs": {"num_classes": 10, "in_chans": 1},
        "class_names": [str(i) for i in range(10)],
        "preprocess": {"input_size": [1, 8, 8], "mean": [mean], "std": [std]},
        "data": {"spec": "digits", "data_dir": None, "val_split": 0, "seed": 0}})
    save_weights(path, model.eval(), record)
    return path


def digits_pngs(folder: Path, n: int | None = None) -> tuple[list[Path], list[int]]:
    """digits' test split (its first n images) as 8-bit grayscale PNG files (lossless)."""
    x, y = datasets.digits().test
    n = len(y) if n is None else n
    paths = []
    for i in range(n):
        paths.append(folder / f"{i:03d}.png")
        Image.fromarray(x[i, 0].numpy(), "L").save(paths[-1])
    return paths, y[:n].tolist()

"""torchvision's pretrained weights (`torchvision:NAME[.WEIGHTS]`): the hub-cache file, fetched
when missing, and the record torchvision's weights API gives (class names, preprocessing)."""
from __future__ import annotations

from pathlib import Path

import torch

from ..errors import UserError
from ..models import get_arch, list_models
from .record import Preprocess, Record

TORCHVISION = "torchvision:"


def torchvision_weights(spec: str) -> tuple[Path, Record]:
    """(cached weights file, record) of `torchvision:NAME[.WEIGHTS]`, e.g. torchvision:resnet50
    (its DEFAULT weights) or torchvision:resnet50.IMAGENET1K_V2, through torchvision's weights
    API: class names and preprocessing (mean/std, resize and crop) come with the weights.

    The file is looked up in the torch hub cache ($TORCH_HOME/hub/checkpoints, by default
    ~/.cache/torch/hub/checkpoints) and downloaded there when missing (unless RESLAB_OFFLINE=1);
    offline, the error names the file, where it comes from and where to put it."""
    import os
    from urllib.parse import urlparse

    from torchvision.models import get_model_weights

    name, _, tag = spec[len(TORCHVISION):].partition(".")
    ours = [m for m in list_models() if get_arch(m).family == "imagenet" and get_arch(m).residual]
    if name not in ours:
        from ..errors import unknown

        raise unknown("torchvision model", name, ours)
    enum = get_model_weights(name)
    choices = [w.name for w in enum]
    if tag and tag not in choices:
        from ..errors import unknown

        raise unknown(f"{name} weights", tag, choices)
    weights = enum[tag] if tag else enum.DEFAULT
    filename = os.path.basename(urlparse(weights.url).path)
    cache = Path(torch.hub.get_dir()) / "checkpoints" / filename
    if not cache.is_file():
        _download(weights.url, cache, f"{name}.{weights.name}")
    t = weights.transforms()
    crop, resize = int(t.crop_size[0]), int(t.resize_size[0])
    pre = Preprocess(input_size=(3, crop, crop), mean=tuple(t.mean), std=tuple(t.std),
                     crop_fraction=crop / resize)
    num_classes = len(weights.meta["categories"])
    record = Record(name, {"num_classes": num_classes, "in_chans": 3},
                    tuple(weights.meta["categories"]), pre,
                    extra={"pretrained": f"torchvision {name}.{weights.name}"})
    return cache, record


def _download(url: str, path: Path, what: str) -> None:
    import os

    reason = "RESLAB_OFFLINE=1"
    if os.environ.get("RESLAB_OFFLINE") != "1":
        from ..io import ensure_dir

        ensure_dir(path.parent, "torch hub cache")
        try:
            torch.hub.download_url_to_file(url, str(path), progress=False)
            return
        except Exception as e:  # noqa: BLE001 - offline, proxy, disk: all "not available"
            reason = str(e).splitlines()[0] if str(e) else type(e).__name__
    raise UserError(f"pretrained weights {what} are not in the torch hub cache and could not "
                    f"be downloaded ({reason}): put {path.name} (from {url}) in {path.parent} "
                    "(or set TORCH_HOME to a cache that has it)")


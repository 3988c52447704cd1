"""`reslab import FILE --model NAME --out FILE.safetensors`: converts torchvision, timm or other
training checkpoints (.pth state_dicts, {'state_dict': ...} with DDP/compile prefixes, plain
safetensors) once into a reslab weights file with metadata. Pickles are read with
weights_only=True: nothing in the file is executed."""
from __future__ import annotations

import argparse
from pathlib import Path


def add_parser(sub: argparse._SubParsersAction) -> None:
    from .common import add_model_options

    p = sub.add_parser("import", help="convert a torchvision/timm/training checkpoint to reslab",
                       description=__doc__)
    p.add_argument("file", metavar="FILE", help="weights file to convert")
    p.add_argument("--model", required=True, help="architecture, e.g. resnet50")
    add_model_options(p)
    p.add_argument("--class-names", metavar="FILE|imagenet",
                   help="class names, one per line (default 0..K-1); 'imagenet' uses "
                        "torchvision's 1000 ImageNet categories")
    p.add_argument("--mean", type=_floats, help="per-channel input mean, e.g. 0.5,0.5,0.5 "
                   "(default ImageNet's for 3 channels, 0.5 otherwise)")
    p.add_argument("--std", type=_floats, help="per-channel input std")
    p.add_argument("--input-size", type=int, metavar="PX",
                   help="training resolution (default 224 ImageNet family, 32 CIFAR)")
    p.add_argument("--out", required=True, metavar="FILE.safetensors")
    p.set_defaults(func=run)


def _floats(text: str) -> list[float]:
    try:
        return [float(v) for v in text.split(",")]
    except ValueError:
        raise argparse.ArgumentTypeError(f"expected comma-separated numbers, got '{text}'")


def _class_names(spec: str, k: int) -> list[str]:
    if spec == "imagenet":
        from torchvision.models import ResNet50_Weights

        names = list(ResNet50_Weights.IMAGENET1K_V1.meta["categories"])
    else:
        path = Path(spec)
        if not path.is_file():
            raise ValueError(f"class names file not found: {path}")
        names = [line.strip() for line in path.read_text().splitlines() if line.strip()]
    if len(names) != k:
        raise ValueError(f"--class-names gives {len(names)} names but the model has {k} classes")
    return names


def run(args: argparse.Namespace) -> int:
    from ..engine.checkpoint import save_weights
    from ..interop import model_from_file
    from .common import model_kwargs

    model, meta, messages = model_from_file(args.file, args.model, **model_kwargs(args))
    k, c = model.fc.out_features, model.conv1.in_channels
    if args.class_names:
        meta["class_names"] = _class_names(args.class_names, k)
    for key in ("mean", "std"):
        value = getattr(args, key)
        if value is not None:
            if len(value) != c:
                raise ValueError(f"--{key} needs {c} values (one per input channel)")
            meta[key] = value
    if args.input_size:
        meta["input_size"] = [c, args.input_size, args.input_size]
    save_weights(args.out, model, meta)
    for message in messages:
        print(message)
    params = sum(p.numel() for p in model.parameters())
    print(f"wrote {args.out}: {args.model}, {k} classes, {c} input channels, {params:,} params")
    return 0

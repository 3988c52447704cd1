"""`reslab import FILE --model NAME --out FILE.safetensors`: converts torchvision, timm or other
training checkpoints (.pth state_dicts, {'state_dict': ...} with DDP/compile prefixes, plain
safetensors) once into a reslab weights file with metadata. Pickles are read with
weights_only=True: nothing in the file is executed."""
from __future__ import annotations

import argparse

from ..limits import MAX_IMAGE_SIDE


def add_parser(sub: argparse._SubParsersAction) -> None:
    from .common import add_model_options, add_out_option

    p = sub.add_parser("import", help="convert a torchvision/timm/training checkpoint to reslab",
                       description=__doc__)
    p.add_argument("file", metavar="FILE", help="weights file to convert, or "
                   "torchvision:NAME[.WEIGHTS] for torchvision's pretrained weights (from the "
                   "torch hub cache, downloaded when missing)")
    p.add_argument("--model", help="architecture, e.g. resnet50 (default for torchvision:NAME: "
                   "NAME)")
    add_model_options(p)
    p.add_argument("--class-names", metavar="FILE|imagenet",
                   help="class names, one per line (default 0..K-1); 'imagenet' uses "
                        "torchvision's 1000 ImageNet categories")
    p.add_argument("--mean", type=_floats, help="per-channel input mean in [0, 1] pixel units, "
                   "e.g. 0.5,0.5,0.5 (default ImageNet's for 3 channels, 0.5 otherwise)")
    p.add_argument("--std", type=_floats, help="per-channel input std (positive)")
    p.add_argument("--input-size", type=int, metavar="PX",
                   help=f"training resolution, 1..{MAX_IMAGE_SIDE} (default 224 ImageNet "
                        "family, 32 CIFAR)")
    add_out_option(p, "the reslab weights file to write", metavar="FILE.safetensors",
                   required=True)
    p.set_defaults(func=run)


def _floats(text: str) -> list[float]:
    try:
        return [float(v) for v in text.split(",")]
    except ValueError:
        raise argparse.ArgumentTypeError(f"expected comma-separated numbers, got '{text}'")


def run(args: argparse.Namespace) -> int:
    # The conversion is the library's (reslab.weights.importer): here only flags and printing.
    from ..text import plural
    from ..weights.importer import import_weights
    from .common import model_kwargs

    done = import_weights(args.file, args.out, args.model, class_names=args.class_names or None,
                          mean=args.mean, std=args.std, input_size=args.input_size,
                          **model_kwargs(args))
    for message in done.messages:
        print(message)
    print(f"wrote {args.out}: {done.architecture}, {plural(done.num_classes, 'class')}, "
          f"{plural(done.in_chans, 'input channel')}, {plural(done.params, 'param')}")
    return 0

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


def _class_names(spec: str, k: int) -> list[str]:
    from ..io import read_text
    from ..limits import MAX_TEXT_BYTES

    if spec == "imagenet":
        from torchvision.models import ResNet50_Weights

        names = list(ResNet50_Weights.IMAGENET1K_V1.meta["categories"])
    else:
        text = read_text(spec, "class names file", MAX_TEXT_BYTES)
        names = [line.strip() for line in text.splitlines() if line.strip()]
    if len(names) != k:
        raise ValueError(f"--class-names gives {len(names)} names but the model has {k} classes")
    return names


def run(args: argparse.Namespace) -> int:
    from ..errors import UserError
    from ..interop import TORCHVISION, model_from_state, open_weights
    from ..io import check_writable, same_file
    from ..limits import check_image_side
    from ..record import Record, check_stats, save_weights
    from ..text import plural
    from .common import model_kwargs

    if args.input_size is not None:
        check_image_side("--input-size", args.input_size)
    check_writable(args.out, "--out")
    if not args.file.startswith(TORCHVISION) and same_file(args.file, args.out):
        raise UserError(f"--out {args.out} is the file being imported: write the reslab file "
                        "beside it")
    state, pretrained = open_weights(args.file, strict_record=False)
    if args.file.startswith(TORCHVISION):
        args.model = args.model or pretrained.architecture
    if not args.model:
        raise UserError("--model is required: the architecture the weights are for")
    model, record, messages = model_from_state(state, pretrained, args.file, args.model,
                                               **model_kwargs(args))
    k, c = model.fc.out_features, model.conv1.in_channels
    pre = record.preprocess
    changes = {}
    for key in ("mean", "std"):
        value = getattr(args, key)
        if value is not None:
            if len(value) != c:
                raise ValueError(f"--{key} needs {c} values (one per input channel)")
            changes[key] = tuple(value)
    check_stats(changes.get("mean", ()), changes.get("std", ()), "--")
    if args.input_size:
        changes["input_size"] = (c, args.input_size, args.input_size)
    if changes and pre.normalize == "pixel":  # per-channel statistics replace the mean image
        changes.update(normalize="channel", mean_image=None)
    import dataclasses

    record = record.replace(preprocess=dataclasses.replace(pre, **changes))
    if args.class_names:
        record = record.replace(class_names=tuple(_class_names(args.class_names, k)))
    record = Record.from_json(record.to_json(), record.preprocess.mean_image, args.out)
    save_weights(args.out, model, record)
    for message in messages:
        print(message)
    params = sum(p.numel() for p in model.parameters())
    print(f"wrote {args.out}: {args.model}, {plural(k, 'class')}, {plural(c, 'input channel')}, "
          f"{plural(params, 'param')}")
    return 0

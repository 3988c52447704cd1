"""Helpers shared by the subcommands: the flags several of them take (--json, --out, --device,
--batch-size, --flip, --data, --threads: defined here once), model options, the --input shape,
JSON output, building a model for shape-only analysis, and the recipe fields as flags.

Nothing here imports torch at module level: the parser (and `reslab --help`) is built without
it; the functions that need a model import it when called."""
from __future__ import annotations

import argparse
import json
import re
import sys
from collections.abc import Callable, Sequence
from typing import TYPE_CHECKING, Any, TypeVar

from ..choices import SHORTCUTS, STRIDE_IN
from ..errors import UserError
from ..limits import MAX_BATCH, MAX_CLASSES, MAX_IMAGE_SIDE, MAX_IN_CHANS, check_int

if TYPE_CHECKING:
    from ..analysis.macs import Shape
    from ..models.resnet import ResNet

T = TypeVar("T")
INPUT_HINT = "expected NxCxHxW, e.g. 1x3x224x224"


def add_model_options(parser: argparse.ArgumentParser) -> None:
    """The create_model options as flags; each defaults to None, meaning "the model's default"."""
    g = parser.add_argument_group("model options")
    g.add_argument("--num-classes", type=int, metavar="N",
                   help="classifier outputs (default 1000 ImageNet family, 10 CIFAR family)")
    g.add_argument("--in-chans", type=int, metavar="C", help="input channels (default 3)")
    g.add_argument("--shortcut", choices=SHORTCUTS,
                   help="section 3.3 option: A zero-pad, B project where shapes change, "
                        "C project always (default A for CIFAR, B for ImageNet)")
    g.add_argument("--stride-in", choices=STRIDE_IN,
                   help="bottleneck stride on the 3x3 conv (torchvision, default) or on the "
                        "first 1x1 conv (the paper)")
    g.add_argument("--zero-init-residual", action="store_true", default=None,
                   help="zero the last BN of each block so every block starts as the identity")


def model_kwargs(args: argparse.Namespace) -> dict[str, Any]:
    """The create_model keyword arguments of the options actually given on the command line."""
    names = ("num_classes", "in_chans", "shortcut", "stride_in", "zero_init_residual")
    kwargs = {n: getattr(args, n) for n in names if getattr(args, n, None) is not None}
    if "num_classes" in kwargs:
        check_int("--num-classes", kwargs["num_classes"], 1, MAX_CLASSES)
    if "in_chans" in kwargs:
        check_int("--in-chans", kwargs["in_chans"], 1, MAX_IN_CHANS)
    return kwargs


def parse_input_shape(text: str) -> Shape:
    """"1x3x224x224" -> (1, 3, 224, 224); "3x224x224" -> batch 1. Raises UserError."""
    if not re.fullmatch(r"\s*\d+(\s*[xX]\s*\d+){2,3}\s*", text or ""):
        raise UserError(f"invalid --input '{text}': {INPUT_HINT}")
    dims = tuple(int(d) for d in re.split(r"[xX]", text))
    if min(dims) < 1:
        raise UserError(f"invalid --input '{text}': every dimension must be positive")
    if max(dims[-2:]) > MAX_IMAGE_SIDE:
        raise UserError(f"invalid --input '{text}': height and width must be between 1 and "
                        f"{MAX_IMAGE_SIDE:,}")
    if (len(dims) == 4 and dims[0] > MAX_BATCH) or dims[-3] > MAX_IN_CHANS:
        raise UserError(f"invalid --input '{text}': at most {MAX_BATCH:,} images of "
                        f"{MAX_IN_CHANS} channels")
    return dims if len(dims) == 4 else (1, *dims)


# --- the flags several subcommands share: one definition each ------------------------------
# Each helper tags the action it adds (SHARED_TAG), so a test can tell a shared flag defined
# here from a copy in a subcommand's module.
SHARED_FLAGS = ("--json", "--out", "--device", "--batch-size", "--flip", "--translate", "--data",
                "--threads")
SHARED_TAG = "reslab_shared"
# --flip and --translate -> the library's flip and translate values: None lets the
# checkpoint's record decide (its evaluation's).
AUTO_ON_OFF = {"auto": None, "on": True, "off": False}


def _shared(action: argparse.Action) -> argparse.Action:
    setattr(action, SHARED_TAG, True)
    return action


def add_json_option(parser: argparse.ArgumentParser, what: str = "one JSON object") -> None:
    """--json: stdout holds `what` (one JSON object) and nothing else."""
    _shared(parser.add_argument("--json", action="store_true", help=f"print {what} on stdout"))


def add_out_option(parser: argparse.ArgumentParser, help: str, *, metavar: str | None = None,
                   required: bool = False) -> None:
    """--out: where the command writes; each command says what (help) and its form (metavar:
    FILE.png, DIR, ...)."""
    _shared(parser.add_argument("--out", required=required, metavar=metavar, help=help))


def add_device_option(parser: argparse.ArgumentParser) -> None:
    _shared(parser.add_argument("--device", default="auto",
                                help="auto (default) | cpu | cuda | cuda:N | mps"))


def add_batch_size_option(parser: argparse.ArgumentParser, default: int | None,
                          default_text: str | None = None) -> None:
    """--batch-size N of an inference command; default_text says a default that is not one
    number."""
    said = f"default {default}" if default_text is None else f"default: {default_text}"
    _shared(parser.add_argument("--batch-size", type=int, default=default, metavar="N",
                                help=f"images per forward pass ({said})"))


TTA_FLAGS = {"--flip": "average with the mirrored image",
             "--translate": "average with the image moved 1 px up-left and down-right "
                            "(airbench94's test-time translations; each with its mirror "
                            "under --flip)"}


def add_tta_options(parser: argparse.ArgumentParser) -> None:
    """--flip and --translate, each auto|on|off: the test-time views (engine.tta.tta_model);
    tta_choices(args) are their values for the library."""
    for flag, what in TTA_FLAGS.items():
        _shared(parser.add_argument(flag, choices=tuple(AUTO_ON_OFF), default="auto",
                                    help=f"{what}: auto (default) as the run's evaluation did "
                                         "(its record says), on, off"))


def tta_choices(args: argparse.Namespace) -> dict[str, bool | None]:
    """--flip and --translate as the library's flip= and translate= arguments (None: as the
    record says)."""
    return {"flip": AUTO_ON_OFF[args.flip], "translate": AUTO_ON_OFF[args.translate]}


def add_data_option(parser: argparse.ArgumentParser, default_text: str | None = None) -> None:
    """--data: required unless the command has a default, which default_text then says."""
    _shared(parser.add_argument("--data", required=default_text is None,
                                help="dataset (as for train)" if default_text is None
                                else f"dataset (default: {default_text})"))


def add_threads_option(parser: argparse.ArgumentParser, of: str, default_text: str) -> None:
    """--threads N: the CPU threads `of` the command's model runs on."""
    _shared(parser.add_argument("--threads", type=int, metavar="N",
                                help=f"CPU threads of {of} (default: {default_text})"))


def add_runtime_option(parser: argparse.ArgumentParser, default: str = "torch") -> None:
    from ..choices import RUNTIMES

    parser.add_argument("--runtime", choices=RUNTIMES, default=default,
                        help="inference runtime: torch (BN folded, channels-last), onnxruntime "
                             "(reslab's ONNX export in an ONNX Runtime session, CPU; needs "
                             "the export extra), or auto (times both on the first batch, "
                             f"keeps the faster, says which); default {default}")


def add_input_option(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--input", metavar="NxCxHxW", type=str, default=None,
                        help="input shape, e.g. 1x3x224x224 or 3x32x32 (default: the model's "
                             "usual input, 224x224 for ImageNet and 32x32 for CIFAR models)")


def input_shape(args: argparse.Namespace) -> Shape:
    """The --input shape, else the architecture's default input with --in-chans channels."""
    from ..models import get_arch

    if args.input is not None:
        shape = parse_input_shape(args.input)
    else:
        n, _, h, w = get_arch(args.model).default_input
        shape = (n, getattr(args, "in_chans", None) or 3, h, w)
    chans = getattr(args, "in_chans", None) or 3
    if shape[1] != chans:
        raise UserError(f"--input has {shape[1]} channels but the model takes {chans} "
                        f"(set --in-chans {shape[1]})")
    return shape


def analysis_model(name: str, **kwargs: Any) -> ResNet:
    """A model on the "meta" device: right shapes and parameter counts, no memory, no init
    time. Enough for MACs, summaries and traces, which only read shapes."""
    import torch

    from ..models import create_model

    with torch.device("meta"):
        return create_model(name, **kwargs)


def analyze(args: argparse.Namespace, fn: Callable[[ResNet, Shape], T]) -> T:
    """Builds args.model with the given model options (meta device) and applies fn to it and
    the --input shape; an input too small for the net becomes a UserError naming the model."""
    from ..analysis.macs import InputTooSmall

    model = analysis_model(args.model, **model_kwargs(args))
    shape = input_shape(args)
    try:
        return fn(model, shape)
    except InputTooSmall as e:
        raise UserError(f"input {'x'.join(map(str, shape))} is too small for {args.model}: "
                        f"{e.reason}") from None


def print_json(obj: Any) -> None:
    """Exactly one JSON object on stdout (the command-line contract: nothing else goes there)."""
    if not isinstance(obj, dict):
        raise TypeError("print_json prints one JSON object: pass a dict")
    # default=str: paths and other plain values print as text rather than failing
    sys.stdout.write(json.dumps(obj, indent=2, default=str) + "\n")
    sys.stdout.flush()


def add_recipe_flags(parser: argparse.ArgumentParser, recipe_in_use: Callable[[Any], str], *,
                     skip: tuple[str, ...] = ()) -> None:
    """Every Recipe field as a --flag (string-valued; the recipe coerces and validates it), its
    help generated from the field's description, choices, range and its default in the recipe
    in use. Booleans take an optional value: --deterministic means true, --nesterov false turns
    it off.

    recipe_in_use(args) names the recipe the command would run with, from --recipe, --model and
    --data (None where not given); `show_recipe_defaults` fills the helps in for the command
    line being parsed, so `reslab train --recipe fast --help` shows fast's values."""
    from ..engine.recipe import Recipe

    g = parser.add_argument_group("recipe fields (override the recipe file)")
    actions = {}
    for f in Recipe.settable_fields():
        if f.name in skip:
            continue
        flag = "--" + f.name.replace("_", "-")
        if str(f.type).startswith("bool"):
            action = g.add_argument(flag, nargs="?", const="true", default=None, metavar="BOOL")
        else:
            action = g.add_argument(flag, default=None, metavar=f.name.upper())
        actions[f.name] = _shared(action)  # --batch-size, --data, --device of a recipe
    parser.set_defaults(_recipe_help=(recipe_in_use, actions))
    show_recipe_defaults(parser, ())


def show_recipe_defaults(parser: argparse.ArgumentParser, argv: Sequence[str]) -> None:
    """Sets the help of each recipe flag of parser (a subcommand's) to the default of the recipe
    that argv (that subcommand's arguments) would run with. A parser without recipe flags is
    left as it is."""
    hook = parser.get_default("_recipe_help")
    if hook is None:
        return
    from ..engine.recipe_help import RecipeDefaults, field_help

    recipe_in_use, actions = hook
    defaults = RecipeDefaults.load(recipe_in_use(_preparse(argv)))
    for name, action in actions.items():
        action.help = field_help(name, defaults).replace("%", "%%")


def _preparse(argv: Sequence[str]) -> argparse.Namespace:
    """--recipe, --model and --data of a command line, wherever they are (before or after
    --help); anything malformed counts as not given: the real parse reports it."""
    pre = _Preparser(add_help=False, allow_abbrev=False)
    for flag in ("--recipe", "--model", "--data"):
        pre.add_argument(flag)
    try:
        return pre.parse_known_args(list(argv))[0]
    except argparse.ArgumentError:
        return argparse.Namespace(recipe=None, model=None, data=None)


class _Preparser(argparse.ArgumentParser):
    def error(self, message: str) -> None:  # silent: the real parse says what is wrong
        raise argparse.ArgumentError(None, message)


def recipe_overrides(args: argparse.Namespace, *, skip: tuple[str, ...] = ()) -> dict[str, Any]:
    """The recipe fields given on the command line (None: not given)."""
    from ..engine.recipe import Recipe

    return {f.name: getattr(args, f.name) for f in Recipe.settable_fields()
            if f.name not in skip}

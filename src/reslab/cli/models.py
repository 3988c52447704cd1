"""`reslab models`: every registered architecture with its depth, parameters and MACs at its
default input (Table 1's FLOPs row for ImageNet, section 4.2's nets for CIFAR)."""
from __future__ import annotations

import argparse

from .common import add_json_option, analysis_model, print_json

# models.registry's families, named here so that parsing the command line imports no torch
# (tests/test_inspect.py checks the two agree)
FAMILIES = ("imagenet", "cifar", "pooled")


def add_parser(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser("models", help="list the architectures with depth, params and MACs",
                       description="Every registered architecture: depth, block, parameters "
                                   "and MACs (multiply-adds of conv and fc layers) at its "
                                   "default input, with its default options.")
    p.add_argument("--family", choices=FAMILIES, help="only this family")
    add_json_option(p)
    p.set_defaults(func=run)


def describe(name: str) -> dict:
    """One architecture as a dict: the facts of the registry plus params and MACs."""
    from ..analysis.macs import profile
    from ..models import get_arch

    arch = get_arch(name)
    model = analysis_model(name)
    prof = profile(model, arch.default_input)
    return {"name": name, "family": arch.family, "depth": arch.depth,
            "block": "bottleneck" if arch.block.expansion == 4 else "basic",
            "residual": arch.residual, "layers": list(arch.layers), "widths": list(arch.widths),
            "shortcut": _shortcut(arch),
            "input_shape": list(arch.default_input), "params": prof.params, "macs": prof.macs}


def _shortcut(arch) -> str | None:
    """What the table calls its shortcuts: a pooled net's blocks keep their shape, so every
    shortcut is an identity whatever the option; None for a plain net."""
    if not arch.residual:
        return None
    return "identity" if arch.downsampling == "pool" else arch.default_shortcut


COLUMNS = (("name", "name", ""), ("family", "family", ""), ("depth", "depth", "d"),
           ("block", "block", ""), ("blocks", "blocks", ""), ("shortcut", "shortcut", ""),
           ("input", "input", ""), ("params", "params", ","), ("macs", "MACs", ">"))


def run(args: argparse.Namespace) -> int:
    from ..analysis.summary import format_macs, format_shape
    from ..models import list_models
    from ..text import format_table

    rows = [describe(name) for name in list_models(args.family)]
    if args.json:
        print_json({"models": rows})
        return 0
    table = [{**r, "blocks": ",".join(map(str, r["layers"])),
              "shortcut": r["shortcut"] or "none (plain)",
              "input": format_shape(r["input_shape"]), "macs": format_macs(r["macs"])}
             for r in rows]
    print(format_table(table, COLUMNS, rule="columns"))
    return 0

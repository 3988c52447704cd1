"""Name -> architecture. The ImageNet family of Table 1 and the CIFAR family of section 4.2,
each in a residual ("resnetN") and a plain ("plainN") variant; the pooled family ("resnet9p":
Page's ResNet-9, whose stages start with a conv and a max-pool instead of a stride-2 block);
and the CIFAR and pooled nets widened k times ("resnetN-wK": every stage's filters x K, as the
wide residual networks of Zagoruyko and Komodakis, arXiv 1605.07146, widen the paper's
16/32/64)."""
from __future__ import annotations

import re
from dataclasses import dataclass, replace

from ..errors import UserError, unknown
from .blocks import BasicBlock, Bottleneck
from .resnet import ResNet


@dataclass(frozen=True)
class Arch:
    name: str
    family: str               # "imagenet" | "cifar" | "pooled"
    depth: int                # weighted layers, as the name says
    block: type
    layers: tuple[int, ...]
    residual: bool
    width: int = 1            # the stages' filters as a multiple of the paper's

    @property
    def widths(self) -> tuple[int, ...]:
        """Filters per stage before a bottleneck's expansion."""
        return tuple(self.width * w for w in BASE_WIDTHS[self.family])

    @property
    def default_input(self) -> tuple[int, int, int, int]:
        return (1, 3, 224, 224) if self.family == "imagenet" else (1, 3, 32, 32)

    @property
    def min_side(self) -> int:
        """The smallest input side its forward takes: a pooled net halves the map with a 2x2
        max-pool per stage (a 1 px map has nothing to pool); strided convs pad, so any side."""
        return 2 ** len(self.layers) if self.family == "pooled" else 1

    @property
    def downsampling(self) -> str:
        return "pool" if self.family == "pooled" else "stride"

    @property
    def default_shortcut(self) -> str:
        # The paper: option A on CIFAR (section 4.2); B for the ImageNet ResNets (Table 3).
        return "B" if self.family == "imagenet" else "A"


# The pooled family's first width is its stem's (Page's "prep" layer); x4 is Page's ResNet-9.
BASE_WIDTHS = {"imagenet": (64, 128, 256, 512), "cifar": (16, 32, 64),
                "pooled": (16, 32, 64, 128)}


_IMAGENET = {18: (BasicBlock, (2, 2, 2, 2)), 34: (BasicBlock, (3, 4, 6, 3)),
             50: (Bottleneck, (3, 4, 6, 3)), 101: (Bottleneck, (3, 4, 23, 3)),
             152: (Bottleneck, (3, 8, 36, 3))}
# 6n+2 layers: n blocks of two 3x3 layers in each of three stages. The paper trains n = 3, 5,
# 7, 9, 18, 200; n = 1, 2 (8 and 14 layers) are the same family made shallower, for recipes
# that trade depth for time (see the `fast` recipe's ablation).
_CIFAR_N = {8: 1, 14: 2, 20: 3, 32: 5, 44: 7, 56: 9, 110: 18, 1202: 200}
# Page's ResNet-9 (DAWNBench 2018; see blocks.Transition) and a block more: stem + 3
# transitions + two layers per block + fc. "p" for max-pool downsampling.
_POOLED = {9: (1, 0, 1), 11: (1, 1, 1)}


def _build_registry() -> dict[str, Arch]:
    archs = {}
    for residual, prefix in ((True, "resnet"), (False, "plain")):
        for depth, (block, layers) in _IMAGENET.items():
            archs[f"{prefix}{depth}"] = Arch(f"{prefix}{depth}", "imagenet", depth, block, layers,
                                             residual)
        for depth, n in _CIFAR_N.items():
            archs[f"{prefix}{depth}"] = Arch(f"{prefix}{depth}", "cifar", depth, BasicBlock,
                                             (n, n, n), residual)
        for depth, layers in _POOLED.items():
            archs[f"{prefix}{depth}p"] = Arch(f"{prefix}{depth}p", "pooled", depth, BasicBlock,
                                              layers, residual)
    return archs


REGISTRY: dict[str, Arch] = _build_registry()
# "resnet14-w4", "resnet9p-w2": a CIFAR or pooled net, every stage k times as wide (k = 2..16)
WIDE = re.compile(r"(?P<base>(?:resnet|plain)\d+p?)-w(?P<k>\d+)")
MAX_WIDTH = 16


def list_models(family: str | None = None) -> list[str]:
    """Registered architecture names, optionally of one family ("imagenet", "cifar", "pooled")."""
    if family is not None and family not in BASE_WIDTHS:
        raise unknown("family", family, list(BASE_WIDTHS))
    return [a.name for a in REGISTRY.values() if family in (None, a.family)]


def get_arch(name: str) -> Arch:
    """The registry's architecture, or a CIFAR net of it widened by a "-wK" suffix."""
    if name in REGISTRY:
        return REGISTRY[name]
    wide = WIDE.fullmatch(name) if isinstance(name, str) else None
    if wide is None:
        raise unknown("model", name, REGISTRY) from None
    base, k = REGISTRY.get(wide["base"]), int(wide["k"])
    widenable = base is not None and base.family != "imagenet"
    if not widenable or not 2 <= k <= MAX_WIDTH or wide["k"] != str(k):
        raise UserError(f"unknown model '{name}': a -wK suffix widens a CIFAR-family or pooled "
                        f"net (resnet8 ... resnet1202, resnet9p, resnet11p, plain8 ...) by K = 2 "
                        f"to {MAX_WIDTH}, e.g. resnet14-w2")
    return replace(base, name=name, width=k)


def is_model(name: object) -> bool:
    """Whether get_arch knows name (a registered or widened architecture)."""
    try:
        get_arch(name)  # type: ignore[arg-type]
    except UserError:
        return False
    return True


def check_input_side(name: str, side: int) -> None:
    """UserError when images of `side` px (the shorter side) are too small for model `name`."""
    arch = get_arch(name)
    if side < arch.min_side:
        raise UserError(f"{name} needs images of at least {arch.min_side} px (one 2x2 max-pool "
                        f"per stage); these are {side} px: give --image-size {arch.min_side} "
                        f"or more, or a CIFAR-family model such as --model resnet14")


def create_model(name: str, *, num_classes: int | None = None, in_chans: int = 3,
                 shortcut: str | None = None, stride_in: str = "3x3",
                 zero_init_residual: bool = False, pad_sides: str = "after",
                 activation: str = "relu") -> ResNet:
    """Builds a registered architecture with He initialisation.

    num_classes defaults to 1000 (ImageNet family) or 10 (CIFAR family); shortcut to the
    paper's choice for the family (A for CIFAR, B for ImageNet).
    """
    arch = get_arch(name)
    return ResNet(arch.block, arch.layers, widths=arch.widths,
                  stem="imagenet" if arch.family == "imagenet" else "cifar",
                  num_classes=(num_classes if num_classes is not None
                               else 1000 if arch.family == "imagenet" else 10),
                  in_chans=in_chans, shortcut=shortcut or arch.default_shortcut,
                  stride_in=stride_in, residual=arch.residual,
                  zero_init_residual=zero_init_residual, pad_sides=pad_sides,
                  downsampling=arch.downsampling, activation=activation)

"""Building blocks of the paper's section 3: residual learning F(x) + x with shortcuts A/B/C.

Module names follow torchvision's resnet.py (conv1/bn1/conv2/bn2[/conv3/bn3], downsample) so its
state_dicts load strictly. Unlike torchvision, each ReLU is its own functional call, not one
shared `nn.ReLU` module called two or three times: a module called at several places is one
"source partition" to PT2E quantizers (torchao's x86 quantizer refuses it), and ReLU has no state,
so the state_dicts are unchanged. A block built with ``residual=False`` is the paper's "plain" counterpart:
the same stacked layers, no shortcut.
"""
from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn

from ..choices import ACTIVATIONS, SHORTCUTS, STRIDE_IN  # noqa: F401 (re-exported)

# Where option A puts its zero channels: after the input's (reslab, fb.resnet.torch) or half
# on each side (akamaster/pytorch_resnet_cifar10's LambdaLayer, whose checkpoints reslab imports).
PAD_SIDES = ("after", "both")


def activate(x: torch.Tensor, activation: str) -> torch.Tensor:
    """The nonlinearity after a BN: ReLU in place (the paper's), or GELU (airbench94's; it
    needs its input for the backward pass, so it cannot overwrite it)."""
    return F.relu(x, inplace=True) if activation == "relu" else F.gelu(x)


def conv3x3(in_planes: int, out_planes: int, stride: int = 1) -> nn.Conv2d:
    """3x3 convolution with padding 1 (the paper's basic layer)."""
    return nn.Conv2d(in_planes, out_planes, kernel_size=3, stride=stride, padding=1, bias=False)


def conv1x1(in_planes: int, out_planes: int, stride: int = 1) -> nn.Conv2d:
    """1x1 convolution: the bottleneck's reduce/restore layers and the projection shortcut."""
    return nn.Conv2d(in_planes, out_planes, kernel_size=1, stride=stride, bias=False)


class PadShortcut(nn.Module):
    """Option A (section 3.3): identity with stride-2 subsampling and zero-padded extra channels.

    Parameter-free, so a plain net and its option-A ResNet have exactly the same parameter count.
    The paper does not say on which side the zeros go: they are appended after the input's
    channels (out[:, :C_in] = x, out[:, C_in:] = 0), as fb.resnet.torch's option A concatenates
    them. The side does not change what the net can learn: every layer is initialised i.i.d.
    over channels, so padding elsewhere is the same net up to a permutation of channel indices;
    it matters only when loading weights trained with another convention: ``sides="both"`` puts
    half of the zeros before the input's channels and half after, as akamaster's reproduction
    (``F.pad(x[:, :, ::2, ::2], (0, 0, 0, 0, planes // 4, planes // 4))``). The subsampling keeps
    the top-left pixel of each stride x stride cell, the one a stride-2, padding-1 3x3 conv (the
    residual branch) centres its output on. See docs/paper-deviations.md.
    """

    def __init__(self, in_planes: int, out_planes: int, stride: int, sides: str = "after"
                 ) -> None:
        super().__init__()
        if sides not in PAD_SIDES:
            raise ValueError(f"pad_sides must be one of {PAD_SIDES}, got {sides!r}")
        self.in_planes, self.out_planes, self.stride = in_planes, out_planes, stride
        self.sides = sides

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if self.stride != 1:
            # x[:, :, ::s, ::s] as a 1x1 average pool: the same values, but its backward keeps
            # a channels-last gradient channels-last (slicing's returns NCHW, and every
            # element-wise backward upstream then mixes layouts and runs several times slower)
            x = F.avg_pool2d(x, 1, self.stride)
        extra = self.out_planes - self.in_planes
        front = extra // 2 if self.sides == "both" else 0
        # F.pad pads the last dims first: (W_left, W_right, H_top, H_bottom, C_front, C_back).
        return F.pad(x, (0, 0, 0, 0, front, extra - front)) if extra else x

    def extra_repr(self) -> str:
        sides = ", sides=both" if self.sides == "both" else ""
        return f"{self.in_planes}, {self.out_planes}, stride={self.stride}{sides}"


def make_shortcut(kind: str, in_planes: int, out_planes: int, stride: int,
                  pad_sides: str = "after") -> nn.Module | None:
    """The shortcut of one block; None means the plain identity x.

    A: identity, zero-padding where dimensions grow.  B: projection (1x1 conv + BN) only where
    dimensions change.  C: projection on every block.
    """
    changes = stride != 1 or in_planes != out_planes
    if kind == "C" or (kind == "B" and changes):
        return nn.Sequential(conv1x1(in_planes, out_planes, stride), nn.BatchNorm2d(out_planes))
    if kind == "A" and changes:
        return PadShortcut(in_planes, out_planes, stride, pad_sides)
    if kind not in SHORTCUTS:
        raise ValueError(f"shortcut must be one of {SHORTCUTS}, got {kind!r}")
    return None


class _Block(nn.Module):
    """What both blocks share: out = relu(F(x) + shortcut(x)), or relu(F(x)) for a plain block
    (GELU in place of each ReLU with activation="gelu")."""

    expansion = 1
    downsample: nn.Module | None

    def __init__(self, residual: bool, activation: str) -> None:
        super().__init__()
        if activation not in ACTIVATIONS:
            raise ValueError(f"activation must be one of {', '.join(ACTIVATIONS)}, "
                             f"got {activation!r}")
        self.residual = residual
        self.activation = activation

    def residual_branch(self, x: torch.Tensor) -> torch.Tensor:  # F(x), ending at the last BN
        raise NotImplementedError

    def last_bn(self) -> nn.BatchNorm2d:
        raise NotImplementedError

    def merge(self, x: torch.Tensor, out: torch.Tensor) -> torch.Tensor:
        """Adds the shortcut to the branch output F(x), then the final ReLU."""
        if self.residual:
            identity = x if self.downsample is None else self.downsample(x)
            out = out + identity
        return activate(out, self.activation)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.merge(x, self.residual_branch(x))


class BasicBlock(_Block):
    """Two 3x3 layers (Fig. 2 / Fig. 5 left), used by resnet18/34 and the CIFAR nets."""

    expansion = 1

    def __init__(self, inplanes: int, planes: int, stride: int = 1, *, shortcut: str = "B",
                 stride_in: str = "3x3", residual: bool = True, pad_sides: str = "after",
                 activation: str = "relu") -> None:
        super().__init__(residual, activation)
        self.conv1 = conv3x3(inplanes, planes, stride)
        self.bn1 = nn.BatchNorm2d(planes)
        self.conv2 = conv3x3(planes, planes)
        self.bn2 = nn.BatchNorm2d(planes)
        self.downsample = (make_shortcut(shortcut, inplanes, planes, stride, pad_sides)
                           if residual else None)
        self.stride = stride

    def residual_branch(self, x: torch.Tensor) -> torch.Tensor:
        out = activate(self.bn1(self.conv1(x)), self.activation)
        return self.bn2(self.conv2(out))

    def last_bn(self) -> nn.BatchNorm2d:
        return self.bn2


class Bottleneck(_Block):
    """1x1 reduce, 3x3, 1x1 restore (Fig. 5 right), used by resnet50/101/152.

    ``stride_in="3x3"`` puts the stride-2 on the 3x3 conv (torchvision "v1.5", 4.089 GMACs for
    resnet50); ``"1x1"`` puts it on the first 1x1 conv as the paper and its Caffe models (3.858).
    """

    expansion = 4

    def __init__(self, inplanes: int, planes: int, stride: int = 1, *, shortcut: str = "B",
                 stride_in: str = "3x3", residual: bool = True, pad_sides: str = "after",
                 activation: str = "relu") -> None:
        super().__init__(residual, activation)
        if stride_in not in STRIDE_IN:
            raise ValueError(f"stride_in must be one of {STRIDE_IN}, got {stride_in!r}")
        s1, s3 = (1, stride) if stride_in == "3x3" else (stride, 1)
        self.conv1 = conv1x1(inplanes, planes, s1)
        self.bn1 = nn.BatchNorm2d(planes)
        self.conv2 = conv3x3(planes, planes, s3)
        self.bn2 = nn.BatchNorm2d(planes)
        self.conv3 = conv1x1(planes, planes * self.expansion)
        self.bn3 = nn.BatchNorm2d(planes * self.expansion)
        out_planes = planes * self.expansion
        self.downsample = (make_shortcut(shortcut, inplanes, out_planes, stride, pad_sides)
                           if residual else None)
        self.stride = stride

    def residual_branch(self, x: torch.Tensor) -> torch.Tensor:
        out = activate(self.bn1(self.conv1(x)), self.activation)
        out = activate(self.bn2(self.conv2(out)), self.activation)
        return self.bn3(self.conv3(out))

    def last_bn(self) -> nn.BatchNorm2d:
        return self.bn3


class Transition(nn.Module):
    """The start of a stage of Page's ResNet-9 (D. Page, "How to train your ResNet", 2018, the
    DAWNBench CIFAR-10 net that airbench94 descends from): a 3x3 conv to the stage's width, a
    2x2 max-pool, BN, ReLU. Pooling before BN and ReLU (airbench94's order; Page pools last)
    runs BN and ReLU on a quarter of the pixels."""

    def __init__(self, inplanes: int, planes: int, activation: str = "relu") -> None:
        super().__init__()
        self.activation = activation
        self.conv = conv3x3(inplanes, planes)
        self.pool = nn.MaxPool2d(2)
        self.bn = nn.BatchNorm2d(planes)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return activate(self.bn(self.pool(self.conv(x))), self.activation)

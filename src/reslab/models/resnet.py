"""The ResNet of the paper's Table 1 (ImageNet stem) and section 4.2 (CIFAR stem).

One class serves both families and both the residual and plain variants: they differ only in the
stem, the stage widths and whether blocks add their shortcut.
"""
from __future__ import annotations

from dataclasses import dataclass

import torch
from torch import nn

from .blocks import (ACTIVATIONS, PAD_SIDES, SHORTCUTS, STRIDE_IN, BasicBlock, Bottleneck,
                     Transition, conv3x3)

DOWNSAMPLING = ("stride", "pool")


@dataclass(frozen=True)
class Intermediates:
    """What `ResNet.forward_intermediates` returns: the paper's objects of analysis.

    stages: output of the stem and of every stage, in order ("stem", "layer1", ...).
    residuals: every block's residual branch output F(x) (after its last BN, before the
    addition), keyed by module name ("layer1.0", ...).
    logits: the classifier output.
    """

    stages: dict[str, torch.Tensor]
    residuals: dict[str, torch.Tensor]
    logits: torch.Tensor


class ResNet(nn.Module):
    """Deep residual network (He et al. 2015).

    Args:
        block: BasicBlock or Bottleneck.
        layers: blocks per stage, e.g. (3, 4, 6, 3) for resnet50 or (3, 3, 3) for resnet20.
        widths: filters per stage before expansion, (64, 128, 256, 512) or (16, 32, 64).
        stem: "imagenet" (7x7/2 conv + 3x3/2 max-pool) or "cifar" (3x3 conv, 16 filters).
        downsampling: "stride" (the paper: each stage after the first starts with a stride-2
            block) or "pool" (Page's ResNet-9, below: every stage starts with a `Transition`,
            a 3x3 conv to the stage's width and a 2x2 max-pool, and its blocks keep the
            size; widths then has one more entry than layers, the stem's first).
        residual: False builds the paper's plain counterpart (no shortcuts).
        pad_sides: where option A's zero channels go, "after" the input's or "both" sides
            (akamaster's CIFAR checkpoints).
        activation: "relu" (the paper's) or "gelu" (airbench94's) after every BN and
            addition; the parameters are the same.
    """

    def __init__(self, block: type[BasicBlock | Bottleneck], layers: tuple[int, ...], *,
                 widths: tuple[int, ...], stem: str, num_classes: int = 1000, in_chans: int = 3,
                 shortcut: str = "B", stride_in: str = "3x3", residual: bool = True,
                 zero_init_residual: bool = False, pad_sides: str = "after",
                 downsampling: str = "stride", activation: str = "relu") -> None:
        super().__init__()
        if downsampling not in DOWNSAMPLING:
            raise ValueError(f"downsampling must be one of {', '.join(DOWNSAMPLING)}, "
                             f"got {downsampling!r}")
        if len(widths) != len(layers) + (downsampling == "pool"):
            raise ValueError("widths needs one entry per stage (and the stem's first, with "
                             "downsampling='pool')")
        if shortcut not in SHORTCUTS:
            raise ValueError(f"shortcut must be one of {', '.join(SHORTCUTS)}, got {shortcut!r}")
        if stride_in not in STRIDE_IN:
            raise ValueError(f"stride_in must be one of {', '.join(STRIDE_IN)}, got {stride_in!r}")
        if pad_sides not in PAD_SIDES:
            raise ValueError(f"pad_sides must be one of {', '.join(PAD_SIDES)}, got {pad_sides!r}")
        if activation not in ACTIVATIONS:
            raise ValueError(f"activation must be one of {', '.join(ACTIVATIONS)}, "
                             f"got {activation!r}")
        if num_classes < 1 or in_chans < 1:
            raise ValueError("num_classes and in_chans must be positive")
        if zero_init_residual and not residual:
            raise ValueError("zero_init_residual needs shortcuts: a plain net would output zeros")
        self.block_options = dict(shortcut=shortcut, stride_in=stride_in, residual=residual,
                                  pad_sides=pad_sides, activation=activation)
        self.stem_kind = stem
        self.downsampling = downsampling
        self.num_classes = num_classes
        self.inplanes = widths[0]
        if stem == "imagenet":
            self.conv1 = nn.Conv2d(in_chans, self.inplanes, kernel_size=7, stride=2, padding=3,
                                   bias=False)
        else:
            self.conv1 = conv3x3(in_chans, self.inplanes)
        self.bn1 = nn.BatchNorm2d(self.inplanes)
        # torchvision's name for the stem's nonlinearity, whichever it is
        self.relu = nn.ReLU(inplace=True) if activation == "relu" else nn.GELU()
        self.maxpool = (nn.MaxPool2d(kernel_size=3, stride=2, padding=1) if stem == "imagenet"
                        else None)
        self.stage_names = []
        # Page's stages each begin with a Transition (to the stage's width, half the size).
        self.transitions = nn.ModuleList()
        for i, (planes, blocks) in enumerate(zip(widths[downsampling == "pool":], layers)):
            # Section 3.3: "when the feature map size is halved, the number of filters is
            # doubled so as to preserve the time complexity per layer" (docs/notes.md, "Why channels
            # double when the resolution halves").
            stride = 1 if i == 0 else 2
            if downsampling == "pool":
                self.transitions.append(Transition(self.inplanes, planes, activation))
                self.inplanes, stride = planes, 1
            setattr(self, f"layer{i + 1}", self._make_layer(block, planes, blocks, stride))
            self.stage_names.append(f"layer{i + 1}")
        # Page's net ends on a global max-pool, the paper's on an average.
        self.avgpool = (nn.AdaptiveMaxPool2d((1, 1)) if downsampling == "pool"
                        else nn.AdaptiveAvgPool2d((1, 1)))
        self.num_features = widths[-1] * block.expansion
        self.fc = nn.Linear(self.num_features, num_classes)
        self._init_weights(zero_init_residual)

    def _make_layer(self, block: type[BasicBlock | Bottleneck], planes: int, blocks: int,
                    stride: int) -> nn.Sequential:
        if blocks == 0:  # a pooled stage may be its Transition alone (ResNet-9's second)
            return nn.Sequential()
        layers = [block(self.inplanes, planes, stride, **self.block_options)]
        self.inplanes = planes * block.expansion
        layers += [block(self.inplanes, planes, **self.block_options) for _ in range(1, blocks)]
        return nn.Sequential(*layers)

    def _init_weights(self, zero_init_residual: bool) -> None:
        if self.fc.weight.is_meta:  # shapes only (counts, traces): no values to draw, and each
            return                  # init op on "meta" is a slow Python decomposition
        # He init (the paper's ref. [13]) as torchvision: fan_out, gain for ReLU.
        for m in self.modules():
            if isinstance(m, nn.Conv2d):
                nn.init.kaiming_normal_(m.weight, mode="fan_out", nonlinearity="relu")
            elif isinstance(m, nn.BatchNorm2d):
                nn.init.ones_(m.weight)
                nn.init.zeros_(m.bias)
        if zero_init_residual:
            # Each block starts as the identity: +0.2~0.3% top-1 per arXiv 1706.02677.
            for block in self.blocks():
                nn.init.zeros_(block.last_bn().weight)

    def blocks(self) -> list[BasicBlock | Bottleneck]:
        """Every residual (or plain) block in forward order."""
        return [b for name in self.stage_names for b in getattr(self, name)]

    def stages(self) -> list[tuple[str, nn.Sequential]]:
        return [(name, getattr(self, name)) for name in self.stage_names]

    def enter_stage(self, i: int, x: torch.Tensor) -> torch.Tensor:
        """What comes before stage i's blocks: its Transition, or nothing (the paper's nets)."""
        return self.transitions[i](x) if self.transitions else x

    def forward_stem(self, x: torch.Tensor) -> torch.Tensor:
        x = self.relu(self.bn1(self.conv1(x)))
        return self.maxpool(x) if self.maxpool is not None else x

    def forward_features(self, x: torch.Tensor) -> torch.Tensor:
        """Stem and all stages: the last feature map (N, num_features, H/32 or H/4, ...)."""
        x = self.forward_stem(x)
        for i, (_, stage) in enumerate(self.stages()):
            x = stage(self.enter_stage(i, x))
        return x

    def forward_head(self, x: torch.Tensor, pre_logits: bool = False) -> torch.Tensor:
        """Global average pool, flatten, and (unless pre_logits) the fully-connected classifier."""
        x = torch.flatten(self.avgpool(x), 1)
        return x if pre_logits else self.fc(x)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.forward_head(self.forward_features(x))

    def forward_intermediates(self, x: torch.Tensor) -> Intermediates:
        """The forward pass, keeping each stage output and each block's residual branch F(x)."""
        stages, residuals = {}, {}
        x = stages["stem"] = self.forward_stem(x)
        for s, (name, stage) in enumerate(self.stages()):
            x = self.enter_stage(s, x)
            for i, block in enumerate(stage):
                branch = block.residual_branch(x)
                residuals[f"{name}.{i}"] = branch.clone()  # merge's in-place ReLU may reuse it
                x = block.merge(x, branch)
            stages[name] = x
        return Intermediates(stages, residuals, self.forward_head(x))

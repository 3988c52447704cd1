"""The ResNet family: blocks, the network, and the name registry."""
from .blocks import BasicBlock, Bottleneck, PadShortcut, conv1x1, conv3x3, make_shortcut
from .registry import (REGISTRY, Arch, check_input_side, create_model, get_arch, is_model,
                       list_models)
from .resnet import Intermediates, ResNet

__all__ = ["BasicBlock", "Bottleneck", "PadShortcut", "conv1x1", "conv3x3", "make_shortcut",
           "REGISTRY", "Arch", "check_input_side", "create_model", "get_arch", "is_model",
           "list_models", "Intermediates", "ResNet"]

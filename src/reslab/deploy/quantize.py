"""Post-training static int8 quantization for x86 CPUs (fbgemm / oneDNN kernels).

torch 2.14 still ships FX graph mode quantization (torch.ao.quantization.quantize_fx), deprecated
in favour of torchao's PT2E flow; torchao is not a dependency, so FX it is. FX traces the
residual `out + identity` followed by ReLU into one quantized add_relu, so the shortcut addition
runs in int8 too; the option-A zero-pad shortcut runs in float between (de)quantize nodes.
"""
from __future__ import annotations

import copy
import warnings
from collections.abc import Iterable

import torch
from torch import nn


def quantize_int8(model: nn.Module, calibration_batches: Iterable[torch.Tensor],
                  backend: str = "x86") -> nn.Module:
    """An int8 copy of model: BN folded, weights per-channel int8, activations uint8 with
    ranges observed on calibration_batches (a few hundred representative, normalised
    images are enough). The result takes and returns float tensors and runs on the CPU."""
    from torch.ao.quantization import get_default_qconfig_mapping
    from torch.ao.quantization.quantize_fx import convert_fx, prepare_fx

    batches = iter(calibration_batches)
    first = next(batches, None)
    if first is None:
        raise ValueError("quantize_int8 needs at least one calibration batch")
    torch.backends.quantized.engine = backend
    float_model = copy.deepcopy(model).cpu().eval()
    with warnings.catch_warnings():
        # The deprecation notice and observer chatter are about the API, not the result.
        warnings.simplefilter("ignore", DeprecationWarning)
        warnings.simplefilter("ignore", UserWarning)
        prepared = prepare_fx(float_model, get_default_qconfig_mapping(backend),
                              example_inputs=(first.cpu(),))
        with torch.inference_mode():
            prepared(first.cpu())
            for x in batches:
                prepared(x.cpu())
        return convert_fx(prepared)

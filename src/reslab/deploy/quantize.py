"""Post-training static int8 quantization for x86 CPUs, on PyTorch's maintained path: PT2E.

The flow is torchao's: `torch.export` the float model, annotate it with the x86 inductor
quantizer (per-channel int8 weights, uint8 activations), observe ranges on calibration batches,
convert, and let inductor lower the quantize/dequantize pattern to oneDNN int8 convolutions with
the ReLU and the residual addition fused in (`freezing` prepacks the weights once). The FX
graph-mode API this replaces is deprecated. torchao is an optional extra:
``pip install 'reslab[int8]'``.

The compiled graph is specialised to each batch size it sees (a few seconds of compiling the
first time each size comes, then cached); a server that pads its batches to one size compiles
once.
"""
from __future__ import annotations

import contextlib
import copy
import logging
import warnings
from collections.abc import Iterable, Iterator

import torch
from torch import nn

INSTALL_HINT = "int8 quantization needs torchao: pip install 'reslab[int8]' (or pip install torchao)"


@contextlib.contextmanager
def _quiet(*loggers: str) -> Iterator[None]:
    """Keeps torch's logged notices about itself (torchao's import touches a deprecated pytree
    API; inductor's compiler probe looks for CUDA) off the user's terminal."""
    levels = {name: logging.getLogger(name).level for name in loggers}
    for name in loggers:
        logging.getLogger(name).setLevel(logging.ERROR)
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore", UserWarning)  # inductor's tensor-copy notices
            yield
    finally:
        for name, level in levels.items():
            logging.getLogger(name).setLevel(level)


def _torchao():
    """torchao's PT2E entry points, or the install hint."""
    try:
        with _quiet("torch.utils._pytree"):
            from torchao.quantization.pt2e import allow_exported_model_train_eval
            from torchao.quantization.pt2e.quantize_pt2e import convert_pt2e, prepare_pt2e
            from torchao.quantization.pt2e.quantizer import x86_inductor_quantizer as x86
    except ImportError as e:
        raise ModuleNotFoundError(f"{INSTALL_HINT} ({e})") from None
    return allow_exported_model_train_eval, prepare_pt2e, convert_pt2e, x86


class Int8Model(nn.Module):
    """A converted PT2E graph, compiled by inductor with frozen (prepacked) weights. Takes and
    returns float tensors on the CPU; inference only (gradients are off inside)."""

    def __init__(self, graph: nn.Module) -> None:
        super().__init__()
        self.graph = graph
        self._compiled = torch.compile(graph, dynamic=False)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        # freezing is read when inductor compiles, which happens at the first call of each
        # batch size, so it is set around every call rather than once here.
        with torch._inductor.config.patch(freezing=True), torch.no_grad(), \
                _quiet("torch.utils.cpp_extension"):
            return self._compiled(x.cpu())


def quantize_int8(model: nn.Module, calibration_batches: Iterable[torch.Tensor]) -> Int8Model:
    """An int8 copy of model: BN folded, weights per-channel int8, activations uint8 with
    ranges observed on calibration_batches (a few hundred representative, normalised images
    are enough). The result takes and returns float tensors and runs on the CPU."""
    allow_train_eval, prepare_pt2e, convert_pt2e, x86 = _torchao()
    batches = iter(calibration_batches)
    first = next(batches, None)
    if first is None:
        raise ValueError("quantize_int8 needs at least one calibration batch")
    float_model = copy.deepcopy(model).cpu().eval()
    quantizer = x86.X86InductorQuantizer()
    quantizer.set_global(x86.get_default_x86_inductor_quantization_config())
    batch = torch.export.Dim("batch", min=1)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", UserWarning)  # observer and export notices
        exported = torch.export.export(float_model, (first.cpu(),),
                                       dynamic_shapes=({0: batch},)).module()
        prepared = prepare_pt2e(exported, quantizer)
        with torch.no_grad():
            prepared(first.cpu())
            for x in batches:
                prepared(x.cpu())
        converted = convert_pt2e(prepared)
    allow_train_eval(converted)  # so evaluate()'s model.eval() is a no-op, not an error
    return Int8Model(converted)

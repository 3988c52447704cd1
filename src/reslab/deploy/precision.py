"""Reduced-precision inference next to fp32: bf16 in PyTorch (where the CPU computes bf16
natively: AVX512-BF16 or AMX; elsewhere it is emulated and slower than fp32) and int8 through
ONNX Runtime's static quantization (QDQ format, per-channel int8 weights, uint8 activations
calibrated on real images), beside PT2E int8 (deploy.quantize). Each takes and returns float
torch tensors, like the fp32 runtimes, so they are measured and compared the same way
(`reslab bench --precision`, benchmarks/runtime.py).
"""
from __future__ import annotations

import copy
import tempfile
from collections.abc import Iterable
from pathlib import Path

import torch
from torch import nn

from ..io import atomic_write
from .optimize import fold_batchnorm
from .runtime import OrtModel, ort_session


class Bf16Model(nn.Module):
    """model (BN folded, channels-last) with bf16 weights; takes float input, returns float
    logits. bf16 keeps fp32's exponent range and 8 bits of mantissa: the logits move by
    about 1% of their size, so near-ties between classes can flip."""

    def __init__(self, model: nn.Module) -> None:
        super().__init__()
        folded = fold_batchnorm(copy.deepcopy(model).cpu().eval())
        self.model = folded.to(memory_format=torch.channels_last).to(torch.bfloat16)
        self.optimized_with = {"runtime": "torch", "precision": "bf16", "bn_folded": True,
                               "channels_last": True}

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.model(x.to(torch.bfloat16, memory_format=torch.channels_last)).float()


def bf16_model(model: nn.Module) -> Bf16Model:
    """A bf16 copy of model for CPU inference (see Bf16Model; the original is untouched)."""
    return Bf16Model(model)


def onnx_int8_model(model: nn.Module, calibration_batches: Iterable[torch.Tensor], *,
                    threads: int | None = None) -> OrtModel:
    """model exported to ONNX (the graph `reslab export` writes), statically quantized by ONNX
    Runtime (QDQ, per-channel int8 weights, uint8 activations whose ranges are the min/max
    seen on calibration_batches: a few hundred normalised training images) and loaded in a
    session with every graph optimization on, which fuses the Q/DQ pairs into int8 kernels."""
    from onnxruntime.quantization import (CalibrationDataReader, CalibrationMethod,
                                          QuantFormat, QuantType, quantize_static)
    from onnxruntime.quantization.shape_inference import quant_pre_process

    from .export import onnx_program

    batches = [x.detach().cpu().float().contiguous() for x in calibration_batches]
    if not batches:
        raise ValueError("onnx_int8_model needs at least one calibration batch")

    class Reader(CalibrationDataReader):
        def __init__(self) -> None:
            self.feeds = iter([{"input": x.numpy()} for x in batches])

        def get_next(self) -> dict | None:
            return next(self.feeds, None)

    program = onnx_program(copy.deepcopy(model).cpu().float().eval(), batches[0])
    with tempfile.TemporaryDirectory() as tmp:
        fp32, pre, int8 = (Path(tmp) / n for n in ("fp32.onnx", "pre.onnx", "int8.onnx"))
        atomic_write(fp32, lambda tmp: program.save(tmp))
        # shape inference and graph cleanup first, as ONNX Runtime's docs ask before quantizing
        quant_pre_process(str(fp32), str(pre), skip_symbolic_shape=True)
        quantize_static(str(pre), str(int8), Reader(), quant_format=QuantFormat.QDQ,
                        per_channel=True, activation_type=QuantType.QUInt8,
                        weight_type=QuantType.QInt8, calibrate_method=CalibrationMethod.MinMax)
        fast = ort_session(str(int8), threads)
    fast.optimized_with["precision"] = "int8 (QDQ, per-channel)"
    return fast

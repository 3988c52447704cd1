"""Deployment: faster inference on PyTorch or ONNX Runtime (chosen by measurement), reduced
precision (bf16, int8), export, and prediction on files."""
from .export import FORMATS, ExportResult, export_model
from .optimize import fold_batchnorm, optimize_for_inference
from .precision import bf16_model, onnx_int8_model
from .quantize import quantize_int8
from .runtime import RUNTIMES

__all__ = ["FORMATS", "RUNTIMES", "ExportResult", "bf16_model", "export_model",
           "fold_batchnorm", "onnx_int8_model", "optimize_for_inference", "quantize_int8"]

"""Deployment: faster fp32 inference, int8 quantization, export, and prediction on files."""
from .export import FORMATS, ExportResult, export_model
from .optimize import fold_batchnorm, optimize_for_inference
from .quantize import quantize_int8

__all__ = ["FORMATS", "ExportResult", "export_model", "fold_batchnorm",
           "optimize_for_inference", "quantize_int8"]

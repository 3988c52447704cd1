"""Export to ONNX, TorchScript or a torch.export program, with a dynamic batch dimension and a
numerical parity check of the written file against the PyTorch model."""
from __future__ import annotations

import json
import warnings
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import torch
from torch import nn

from ..choices import EXPORT_FORMATS
from ..errors import UserError, unknown
from ..io import atomic_write, ensure_dir
from ..weights.record import Record

Runner = Callable[[torch.Tensor], torch.Tensor]
FORMATS = EXPORT_FORMATS
PARITY_BATCHES = (1, 3)


@dataclass
class ExportResult:
    path: Path
    format: str
    max_abs_diff: dict[int, float] = field(default_factory=dict)  # batch size -> difference
    tolerance: float = 0.0

    @property
    def ok(self) -> bool:
        return all(d <= self.tolerance for d in self.max_abs_diff.values())

    def to_dict(self) -> dict[str, Any]:
        return {"path": str(self.path), "format": self.format, "ok": self.ok,
                "tolerance": self.tolerance,
                "max_abs_diff": {str(k): v for k, v in self.max_abs_diff.items()}}


def _meta_json(record: Record) -> str:
    """The checkpoint record as JSON, with the per-pixel mean image (if any) as nested lists,
    so a deployed file carries everything needed to prepare its input."""
    obj = record.to_json()
    if record.preprocess.mean_image is not None:
        obj["preprocess"]["mean_image"] = record.preprocess.mean_image.round(decimals=6).tolist()
    return json.dumps(obj)


def onnx_modules() -> Any:
    """onnxruntime, once onnxscript (which the dynamo exporter needs) is known to import too;
    UserError with the install hint otherwise."""
    try:
        import onnxruntime as ort
        import onnxscript  # noqa: F401 - the dynamo exporter needs it; fail early and clearly
    except ImportError as e:
        raise UserError(f"ONNX needs onnx, onnxscript and onnxruntime ({e.name} is "
                        "missing): pip install 'reslab[export]'") from None
    return ort


def onnx_program(model: nn.Module, example: torch.Tensor) -> Any:
    """The ONNX program of model (eval mode) for inputs shaped like example, with a dynamic
    batch dimension: input "input", output "logits". Shared by the file export and the
    onnxruntime inference runtime (reslab.deploy.runtime), so both run the same graph."""
    onnx_modules()
    if example.shape[0] == 1:  # exporters specialise a dimension of size 1 to a constant
        example = example.expand(2, *example.shape[1:]).contiguous()
    batch = torch.export.Dim("batch", min=1)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")  # exporter notices about torch internals, not the model
        return torch.onnx.export(model, (example,), input_names=["input"],
                                 output_names=["logits"], dynamic_shapes=({0: batch},),
                                 dynamo=True, verbose=False)


def _onnx(model: nn.Module, example: torch.Tensor, out: Path, record: Record) -> Runner:
    ort = onnx_modules()
    program = onnx_program(model, example)
    # Deployment code finds preprocessing and class names in the file itself.
    program.model.metadata_props["reslab"] = _meta_json(record)
    atomic_write(out, lambda tmp: program.save(tmp))
    session = ort.InferenceSession(str(out), providers=["CPUExecutionProvider"])
    return lambda x: torch.from_numpy(session.run(None, {"input": x.numpy()})[0])


def _torchscript(model: nn.Module, example: torch.Tensor, out: Path, record: Record
                 ) -> Runner:
    with warnings.catch_warnings():
        # TorchScript is deprecated in favour of torch.export but still the format many
        # C++ and mobile runtimes load; the warnings say nothing about this model.
        warnings.simplefilter("ignore", FutureWarning)
        traced = torch.jit.trace(model, example)
        atomic_write(out, lambda tmp: torch.jit.save(
            traced, tmp, _extra_files={"reslab.json": _meta_json(record)}))
        return torch.jit.load(str(out))


def _pt2(model: nn.Module, example: torch.Tensor, out: Path, record: Record) -> Runner:
    batch = torch.export.Dim("batch", min=1)
    program = torch.export.export(model, (example,), dynamic_shapes=({0: batch},))
    def write(tmp: str) -> None:
        # Through a file object: given a path, torch.export logs that it does not end in .pt2.
        with open(tmp, "wb") as f:
            torch.export.save(program, f, extra_files={"reslab.json": _meta_json(record)})

    atomic_write(out, write)
    return torch.export.load(str(out)).module()


_WRITERS = {"onnx": _onnx, "torchscript": _torchscript, "pt2": _pt2}
# The names each format's files go by (the first is suggested): an --out of another kind
# (weights, another format's export) is refused rather than silently replaced.
SUFFIXES = {"onnx": (".onnx",), "torchscript": (".pt", ".torchscript"), "pt2": (".pt2",)}


def check_out_suffix(out: str | Path, fmt: str) -> None:
    """UserError unless out's suffix is one of fmt's (SUFFIXES); an unknown fmt passes here
    (export_model names it)."""
    out, suffixes = Path(out), SUFFIXES.get(fmt)
    if suffixes is not None and out.suffix.lower() not in suffixes:
        raise UserError(f"--out {out}: --format {fmt} writes a {' or '.join(suffixes)} "
                        f"file; name it e.g. {out.with_suffix(suffixes[0])}")


@torch.no_grad()
def export_model(model: nn.Module, record: Record, out: str | Path, fmt: str = "onnx"
                 ) -> ExportResult:
    """Writes model (CPU, eval, fp32) to out and checks the file's outputs against PyTorch on
    random inputs of batch 1 and 3 (the file has a dynamic batch dimension)."""
    if fmt not in _WRITERS:
        raise unknown("export format", fmt, FORMATS)
    check_out_suffix(out, fmt)
    model = model.cpu().float().eval()
    out = Path(out)
    if out.is_dir():
        raise UserError(f"cannot write {out}: it is a directory")
    ensure_dir(out.parent)
    shape = tuple(int(s) for s in record.preprocess.input_size)
    g = torch.Generator().manual_seed(0)
    # Batch 2 when tracing: exporters specialise a dimension of size 1 to a constant.
    run = _WRITERS[fmt](model, torch.randn(2, *shape, generator=g), out, record)
    result = ExportResult(out, fmt)
    scale = 1.0
    for n in PARITY_BATCHES:
        x = torch.randn(n, *shape, generator=g)
        ref = model(x)
        result.max_abs_diff[n] = float((run(x) - ref).abs().max())
        scale = max(scale, float(ref.abs().max()))
    # fp32 kernels of different runtimes differ by rounding, relative to the logits' size.
    result.tolerance = 1e-4 * scale
    return result

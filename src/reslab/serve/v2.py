"""The Open Inference Protocol (KServe "v2"), REST: what Triton, KServe, Seldon MLServer and
OpenVINO Model Server speak, so their clients (tritonclient.http, load generators, gateways)
work with `reslab serve` unmodified.

    GET  /v2/health/live, /v2/health/ready          {"live": true}, {"ready": true}
    GET  /v2                                         server metadata
    GET  /v2/models/{name}[/versions/1]              model metadata: inputs and outputs
    GET  /v2/models/{name}[/versions/1]/ready        {"name", "ready"}
    POST /v2/models/{name}[/versions/1]/infer        inference

One model, version "1". Inputs (exactly one per request):
  "images"  BYTES [N]        encoded image files (PNG, JPEG, ...), base64 strings in JSON
  "input"   FP32  [N,C,H,W]  prepared tensors, (C, H, W) the record's input size
Outputs (all by default, or those the request names):
  "probabilities"  FP32  [N,K]  softmax of the logits (as `reslab predict`'s probabilities);
                                parameters {"classification": k}: Triton's classification
                                extension, BYTES [N,k] of "probability:index:label"
  "labels"         BYTES [N]    the most probable class's name

Triton's binary-data extension (what tritonclient sends by default): the request's JSON is the
first Inference-Header-Content-Length bytes of the body and each input with parameters
{"binary_data_size": n} takes the next n bytes (BYTES elements: a 4-byte little-endian length,
then the bytes; FP32: little-endian floats). An output asked for with {"binary_data": true} (or
every output, with the request parameter "binary_data_output") comes back the same way.
Errors are {"error": "message"} with a 4xx status (serve.http). Images are decoded, prepared and
batched exactly as for /v1/predict.
"""
from __future__ import annotations

import base64
import binascii
import json
import math
import re
from collections.abc import Awaitable, Callable
from dataclasses import dataclass
from typing import Any

import numpy as np
import torch
import torch.nn.functional as F
from fastapi import APIRouter, Header, Request
from fastapi.responses import JSONResponse, Response

from .. import __version__
from ..weights.record import Record
from .http import ApiError, counted, read_body
from .metrics import Metrics
from .options import ServeOptions
from .v2_wire import (BINARY, HEADER_LENGTH, IMAGES, LABELS, PROBABILITIES, TENSOR, VERSION,
                      InferenceRequest, InferenceResponse, Live, ModelMetadata,
                      ModelReady, Ready, ServerMetadata, Tensor, TensorMetadata,
                      error_responses, flat_data, bad, deserialize_bytes, parse_request, serialize_bytes,
                      split_body)


@dataclass(frozen=True)
class ServedModel:
    """The one model behind /v2: its name, record and runtime; `prepare` decodes and prepares
    (name, bytes) files as /v1 does, `logits` runs a prepared batch through the shared dynamic
    batcher (ApiError 503 when it is full)."""

    name: str
    record: Record
    runtime: str
    options: ServeOptions
    prepare: Callable[[list[tuple[str, bytes]]], Awaitable[torch.Tensor]]
    logits: Callable[[torch.Tensor], Awaitable[torch.Tensor]]
    metrics: Metrics
    queued: Callable[[], int]

    def metadata(self) -> ModelMetadata:
        c, h, w = self.record.preprocess.input_size
        k = self.record.num_classes
        return ModelMetadata(
            name=self.name, versions=[VERSION], platform=f"reslab_{self.runtime}",
            inputs=[TensorMetadata(name=IMAGES, datatype="BYTES", shape=[-1]),
                    TensorMetadata(name=TENSOR, datatype="FP32", shape=[-1, c, h, w])],
            outputs=[TensorMetadata(name=PROBABILITIES, datatype="FP32", shape=[-1, k]),
                     TensorMetadata(name=LABELS, datatype="BYTES", shape=[-1])])



class Inputs:
    """The request's input tensors' data: JSON `data`, or the next binary_data_size bytes of
    the binary part, in input order; every binary byte must belong to an input."""

    def __init__(self, request: InferenceRequest, binary: bytes) -> None:
        self.data: dict[str, list[Any] | bytes] = {}
        offset = 0
        for t in request.inputs:
            size = (t.parameters or {}).get("binary_data_size")
            if size is None:
                if t.data is None:
                    raise bad(f"input '{t.name}' has no data (neither 'data' nor the "
                              "binary_data_size parameter)")
                self.data[t.name] = t.data
                continue
            if isinstance(size, bool) or not isinstance(size, int) or size < 0:
                raise bad(f"input '{t.name}': binary_data_size must be a whole number >= 0, "
                          f"got {json.dumps(size)[:50]}")
            if t.data is not None:
                raise bad(f"input '{t.name}' has both 'data' and binary_data_size")
            if offset + size > len(binary):
                raise bad(f"input '{t.name}': binary_data_size {size:,} runs past the "
                          f"{len(binary):,} bytes of binary data")
            self.data[t.name] = binary[offset:offset + size]
            offset += size
        if offset != len(binary):
            raise bad(f"{len(binary) - offset:,} bytes of binary data belong to no input")


def _count(shape: list[int], name: str) -> int:
    if any(d < 0 for d in shape):
        raise bad(f"input '{name}' has a negative dimension in its shape {shape}")
    return math.prod(shape)


async def images_input(model: ServedModel, t: Tensor, data: list[Any] | bytes
                       ) -> torch.Tensor:
    """BYTES [N] (or [N, 1]) of encoded images -> the prepared batch (N, C, H, W)."""
    if len(t.shape) not in (1, 2) or (len(t.shape) == 2 and t.shape[1] != 1):
        raise bad(f"input '{IMAGES}' must have shape [N] or [N, 1] (N images), not {t.shape}")
    n = _count(t.shape, IMAGES)
    if isinstance(data, bytes):
        files = deserialize_bytes(data, IMAGES)
    else:
        try:
            files = [base64.b64decode(s, validate=True) if isinstance(s, str) else None
                     for s in flat_data(data)]
        except (binascii.Error, ValueError):
            raise bad(f"input '{IMAGES}': JSON data must be base64 strings of image files"
                      ) from None
        if None in files:
            raise bad(f"input '{IMAGES}': JSON data must be base64 strings of image files")
    if len(files) != n:
        raise bad(f"input '{IMAGES}' has {len(files)} elements but its shape {t.shape} says "
                  f"{n}")
    if not 1 <= n <= model.options.max_files:
        raise bad(f"input '{IMAGES}' holds {n} images: send 1 to {model.options.max_files}")
    return await model.prepare([(f"{IMAGES}[{i}]", f) for i, f in enumerate(files)])


def tensor_input(model: ServedModel, t: Tensor, data: list[Any] | bytes) -> torch.Tensor:
    """FP32 [N, C, H, W], (C, H, W) the record's input size, finite values -> the batch."""
    size = list(model.record.preprocess.input_size)
    if len(t.shape) != 4 or t.shape[1:] != size:
        raise bad(f"input '{TENSOR}' must have shape [N, {', '.join(map(str, size))}] (the "
                  f"model's input size), not {t.shape}")
    n = _count(t.shape, TENSOR)
    if not 1 <= t.shape[0] <= model.options.max_files:
        raise bad(f"input '{TENSOR}' holds {t.shape[0]} images: send 1 to "
                  f"{model.options.max_files}")
    if isinstance(data, bytes):
        if len(data) != 4 * n:
            raise bad(f"input '{TENSOR}': {len(data):,} bytes of binary data, but shape "
                      f"{t.shape} of FP32 takes {4 * n:,}")
        values = np.frombuffer(data, dtype="<f4")
    else:
        flat = list(flat_data(data))
        if len(flat) != n or not all(isinstance(v, (int, float)) and not isinstance(v, bool)
                                     for v in flat):
            raise bad(f"input '{TENSOR}': data must be {n:,} numbers (shape {t.shape}), got "
                      f"{len(flat):,} values")
        try:
            with np.errstate(over="ignore"):  # beyond fp32: inf, refused below
                values = np.asarray(flat, dtype=np.float32)
        except OverflowError:  # a JSON integer beyond even float64
            values = np.array([np.inf], dtype=np.float32)
    if not np.isfinite(values).all():
        raise bad(f"input '{TENSOR}' holds values that are not finite fp32 numbers")
    return torch.from_numpy(values.astype(np.float32).reshape(t.shape))


async def request_input(model: ServedModel, request: InferenceRequest, binary: bytes
                        ) -> torch.Tensor:
    if len(request.inputs) != 1:
        raise bad(f"send exactly one input ('{IMAGES}' or '{TENSOR}'), not "
                  f"{len(request.inputs)}")
    t = request.inputs[0]
    want = {IMAGES: "BYTES", TENSOR: "FP32"}
    if t.name not in want:
        raise bad(f"unknown input '{t.name[:100]}': this model takes '{IMAGES}' (BYTES, "
                  f"encoded images) or '{TENSOR}' (FP32, prepared tensors)")
    if t.datatype != want[t.name]:
        raise bad(f"input '{t.name}' has datatype {want[t.name]}, not {t.datatype[:20]}")
    data = Inputs(request, binary).data[t.name]
    if t.name == IMAGES:
        return await images_input(model, t, data)
    return tensor_input(model, t, data)


@dataclass(frozen=True)
class Wanted:
    """An output the client asked for: binary or JSON, and a classification count."""

    name: str
    binary: bool
    classification: int | None = None


def _flag(params: dict[str, Any] | None, key: str, default: bool) -> bool:
    value = (params or {}).get(key, default)
    if not isinstance(value, bool):
        raise bad(f"parameter {key} must be true or false, got {json.dumps(value)[:50]}")
    return value


def wanted_outputs(model: ServedModel, request: InferenceRequest) -> list[Wanted]:
    binary = _flag(request.parameters, "binary_data_output", False)
    if request.outputs is None:
        return [Wanted(PROBABILITIES, binary), Wanted(LABELS, binary)]
    out = []
    for o in request.outputs:
        if o.name not in (PROBABILITIES, LABELS):
            raise bad(f"unknown output '{o.name[:100]}': this model has '{PROBABILITIES}' and "
                      f"'{LABELS}'")
        k = (o.parameters or {}).get("classification")
        if k is not None:
            top = model.record.num_classes
            if isinstance(k, bool) or not isinstance(k, int) or not 1 <= k <= top:
                raise bad(f"parameter classification must be a whole number from 1 to {top} "
                          f"(the model's classes), got {json.dumps(k)[:50]}")
        out.append(Wanted(o.name, _flag(o.parameters, "binary_data", binary), k))
    return out


def output_tensors(model: ServedModel, wanted: list[Wanted], probs: torch.Tensor
                   ) -> tuple[list[Tensor], bytes]:
    """The response's output tensors and, after the JSON, their binary data."""
    names = model.record.class_names
    tensors, binary = [], []
    for w in wanted:
        if w.name == LABELS or w.classification is not None:
            if w.name == LABELS:
                items = [names[i] for i in probs.argmax(1).tolist()]
                shape = [len(items)]
            else:
                p, idx = probs.topk(w.classification, dim=1)
                items = [f"{v:f}:{i}:{names[i]}" for row_p, row_i in zip(p.tolist(), idx.tolist())
                         for v, i in zip(row_p, row_i)]
                shape = [len(probs), w.classification]
            datatype = "BYTES"
            raw = serialize_bytes([s.encode() for s in items]) if w.binary else b""
            data: list[Any] = items
        else:
            shape, datatype = list(probs.shape), "FP32"
            raw = probs.numpy().astype("<f4").tobytes() if w.binary else b""
            data = probs.flatten().tolist()
        if w.binary:
            tensors.append(Tensor(name=w.name, shape=shape, datatype=datatype,
                                  parameters={"binary_data_size": len(raw)}))
            binary.append(raw)
        else:
            tensors.append(Tensor(name=w.name, shape=shape, datatype=datatype, data=data))
    return tensors, b"".join(binary)


def answer(response: InferenceResponse, binary: bytes) -> Response:
    header = response.model_dump_json(exclude_none=True).encode()
    if not binary:
        return Response(header, media_type="application/json")
    return Response(header + binary, media_type=BINARY,
                    headers={HEADER_LENGTH: str(len(header))})


async def infer(model: ServedModel, request: Request, header_length: int | None
                ) -> Response:
    encoding = request.headers.get("content-encoding", "identity").strip().lower()
    if encoding not in ("", "identity"):
        raise ApiError(415, "unsupported_encoding", f"Content-Encoding '{encoding[:50]}' is "
                       "not supported: send the body uncompressed")
    body = await read_body(request, model.options.max_body_bytes)
    header, binary = split_body(body, header_length)
    parsed = parse_request(header)
    wanted = wanted_outputs(model, parsed)  # before the model runs: a bad ask costs nothing
    x = await request_input(model, parsed, binary)
    probs = F.softmax((await model.logits(x)).float(), dim=1)
    if not torch.isfinite(probs).all():  # e.g. fp32 inputs of 1e38
        raise ApiError(422, "not_finite", "the model's output for this input is not finite")
    tensors, raw = output_tensors(model, wanted, probs)
    return answer(InferenceResponse(model_name=model.name, model_version=VERSION,
                                    id=parsed.id, outputs=tensors), raw)


# --- the routes ---------------------------------------------------------------------------------

INFER_BODY = {"requestBody": {"required": True, "content": {
    "application/json": {"schema": {"$ref": "#/components/schemas/InferenceRequest"}},
    BINARY: {"schema": {"type": "string", "format": "binary"}}}}}
INFER_RESPONSES: dict[int | str, dict[str, Any]] = {
    200: {"model": InferenceResponse, "content": {BINARY: {"schema": {
        "type": "string", "format": "binary"}}}},
    **error_responses(400, 404, 413, 415, 422, 503)}
SAFE_NAME = re.compile(r"[^A-Za-z0-9._-]")


def router(model: ServedModel) -> APIRouter:
    """The /v2 routes for `model`."""
    r = APIRouter(prefix="/v2", tags=["v2 (Open Inference Protocol)"])

    def check(name: str, version: str | None = None) -> None:
        if name != model.name:
            raise ApiError(404, "unknown_model", f"unknown model '{name[:100]}': this server "
                           f"serves '{model.name}'")
        if version is not None and version != VERSION:
            raise ApiError(404, "unknown_version", f"model '{name}' has no version "
                           f"'{version[:20]}': its one version is '{VERSION}'")

    @r.get("/health/live")
    async def live() -> Live:
        return Live(live=True)

    @r.get("/health/ready")
    async def ready() -> Ready:
        return Ready(ready=True)

    @r.get("")
    async def server_metadata() -> ServerMetadata:
        return ServerMetadata(name="reslab", version=__version__, extensions=["binary_data",
                                                                             "classification"])

    @r.get("/models/{name}", responses=error_responses(404))
    async def model_metadata(name: str) -> ModelMetadata:
        check(name)
        return model.metadata()

    @r.get("/models/{name}/versions/{version}", responses=error_responses(404))
    async def version_metadata(name: str, version: str) -> ModelMetadata:
        check(name, version)
        return model.metadata()

    @r.get("/models/{name}/ready", responses=error_responses(404))
    async def model_ready(name: str) -> ModelReady:
        check(name)
        return ModelReady(name=name, ready=True)

    @r.get("/models/{name}/versions/{version}/ready", responses=error_responses(404))
    async def version_ready(name: str, version: str) -> ModelReady:
        check(name, version)
        return ModelReady(name=name, ready=True)

    Length = Header(None, alias=HEADER_LENGTH, ge=1, description="binary-data extension: "
                    "bytes of JSON at the start of the body")

    @r.post("/models/{name}/infer", response_class=JSONResponse, response_model=None,
            responses=INFER_RESPONSES, openapi_extra=INFER_BODY)
    async def model_infer(name: str, request: Request, header_length: int | None = Length
                          ) -> Response:
        async with counted(model.metrics, "v2", model.queued):
            check(name)
            return await infer(model, request, header_length)

    @r.post("/models/{name}/versions/{version}/infer", response_class=JSONResponse,
            response_model=None, responses=INFER_RESPONSES, openapi_extra=INFER_BODY)
    async def version_infer(name: str, version: str, request: Request,
                            header_length: int | None = Length) -> Response:
        async with counted(model.metrics, "v2", model.queued):
            check(name, version)
            return await infer(model, request, header_length)

    return r


def openapi_components() -> dict[str, Any]:
    """The request's JSON schema and the schemas it refers to, for the OpenAPI document's
    components (the infer route reads its body itself: the binary extension is not JSON)."""
    from pydantic import TypeAdapter

    schema = TypeAdapter(InferenceRequest).json_schema(
        ref_template="#/components/schemas/{model}")
    defs = schema.pop("$defs", {})
    return {**defs, "InferenceRequest": schema}


def model_name_of(path: str) -> str:
    """The v2 name of the model in a run directory or weights file: the directory's name or
    the file's stem, with characters unfit for a URL path segment replaced by '-'."""
    from pathlib import Path

    p = Path(path).resolve()
    name = SAFE_NAME.sub("-", p.name if p.is_dir() else p.stem).lstrip(".")[:128]
    return name or "model"

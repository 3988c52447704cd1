"""The Open Inference Protocol's wire format (serve.v2 serves it): its names, the JSON
objects of requests and answers (pydantic: validation and the OpenAPI schema), and Triton's
binary-data extension (the JSON header, then each binary input's bytes; BYTES elements as
a 4-byte little-endian length, then the bytes)."""
from __future__ import annotations

import struct
from collections.abc import Iterator
from typing import Any

from pydantic import BaseModel, Field, ValidationError

from .http import ApiError

VERSION = "1"
IMAGES, TENSOR = "images", "input"
PROBABILITIES, LABELS = "probabilities", "labels"
HEADER_LENGTH = "Inference-Header-Content-Length"
BINARY = "application/octet-stream"


# --- the protocol's JSON objects (validation of requests, and the OpenAPI schema) -------------

class Tensor(BaseModel):
    name: str
    shape: list[int]
    datatype: str
    parameters: dict[str, Any] | None = None
    data: list[Any] | None = None  # row-major, flat or nested


class RequestOutput(BaseModel):
    name: str
    parameters: dict[str, Any] | None = None


class InferenceRequest(BaseModel):
    id: str | None = None
    parameters: dict[str, Any] | None = None
    inputs: list[Tensor] = Field(min_length=1)
    outputs: list[RequestOutput] | None = None


class InferenceResponse(BaseModel):
    model_name: str
    model_version: str | None = None
    id: str | None = None
    parameters: dict[str, Any] | None = None
    outputs: list[Tensor]


class TensorMetadata(BaseModel):
    name: str
    datatype: str
    shape: list[int]


class ServerMetadata(BaseModel):
    name: str
    version: str
    extensions: list[str]


class ModelMetadata(BaseModel):
    name: str
    versions: list[str]
    platform: str
    inputs: list[TensorMetadata]
    outputs: list[TensorMetadata]


class Live(BaseModel):
    live: bool


class Ready(BaseModel):
    ready: bool


class ModelReady(BaseModel):
    name: str
    ready: bool


class Error(BaseModel):
    error: str


def error_responses(*statuses: int) -> dict[int | str, dict[str, Any]]:
    return {status: {"model": Error} for status in statuses}


# --- what the routes serve ---------------------------------------------------------------------
def bad(message: str, code: str = "bad_request") -> ApiError:
    return ApiError(400, code, message)


def split_body(body: bytes, header_length: int | None) -> tuple[bytes, bytes]:
    """(JSON header, binary data) of a request body: the binary-data extension's split."""
    if header_length is None:
        return body, b""
    if not 0 < header_length <= len(body):
        raise bad(f"{HEADER_LENGTH} {header_length} is not within the body's {len(body):,} "
                  "bytes")
    return body[:header_length], body[header_length:]


def parse_request(header: bytes) -> InferenceRequest:
    try:
        return InferenceRequest.model_validate_json(header)
    except ValidationError as e:
        first = e.errors()[0]
        where = ".".join(str(p) for p in first.get("loc", ()))
        what = f" at {where}" if where else ""
        raise bad(f"invalid inference request{what}: {first.get('msg')}") from None


def flat_data(data: list[Any]) -> Iterator[Any]:
    for item in data:
        if isinstance(item, list):
            yield from flat_data(item)
        else:
            yield item


def deserialize_bytes(raw: bytes, name: str) -> list[bytes]:
    """A binary BYTES tensor's elements: each a 4-byte little-endian length, then the bytes."""
    out, i = [], 0
    while i < len(raw):
        if i + 4 > len(raw):
            raise bad(f"input '{name}': binary BYTES data ends inside an element's length")
        (n,) = struct.unpack_from("<I", raw, i)
        if i + 4 + n > len(raw):
            raise bad(f"input '{name}': binary BYTES element of {n:,} bytes runs past the "
                      "data")
        out.append(raw[i + 4:i + 4 + n])
        i += 4 + n
    return out


def serialize_bytes(items: list[bytes]) -> bytes:
    return b"".join(struct.pack("<I", len(b)) + b for b in items)

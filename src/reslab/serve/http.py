"""What both APIs (/v1, reslab's own, and /v2, the Open Inference Protocol) share at the HTTP
level: an error as an exception with its status, its answer in each API's shape, request
bodies read within a limit, and each request counted in the metrics.

/v1 answers {"error": {"code", "message"}}; /v2 answers the protocol's {"error": "message"}
(what tritonclient reads). The status names the error's class in both: 400 malformed request,
404 unknown model or route, 413 body too large, 415 unsupported content type or encoding, 422
an input that cannot be used (not an image, truncated, decompression bomb, too many pixels), 503
overloaded (with Retry-After).
"""
from __future__ import annotations

import time
from collections.abc import AsyncIterator, Callable
from contextlib import asynccontextmanager

from fastapi import Request
from fastapi.responses import JSONResponse

from .metrics import Metrics


class ApiError(Exception):
    """An error answer: HTTP status, a stable code and a message naming the problem."""

    def __init__(self, status: int, code: str, message: str,
                 headers: dict[str, str] | None = None) -> None:
        super().__init__(message)
        self.status, self.code, self.message, self.headers = status, code, message, headers


def api_of(path: str) -> str:
    """"v2" for the Open Inference Protocol's routes, else "v1"."""
    return "v2" if path == "/v2" or path.startswith("/v2/") else "v1"


def error_response(path: str, status: int, code: str, message: str,
                   headers: dict[str, str] | None = None) -> JSONResponse:
    body = {"error": message} if api_of(path) == "v2" else {
        "error": {"code": code, "message": message}}
    return JSONResponse(body, status_code=status, headers=headers)


async def read_body(request: Request, limit: int) -> bytes:
    """The request body, refused (413) as soon as it is known to pass `limit` bytes: from
    Content-Length before reading, or while reading a body sent without one."""
    declared = request.headers.get("content-length")
    if declared is not None and declared.isdigit() and int(declared) > limit:
        raise ApiError(413, "body_too_large", f"request body of {int(declared):,} bytes is "
                       f"larger than the server's limit of {limit:,} bytes")
    parts, size = [], 0
    async for chunk in request.stream():
        size += len(chunk)
        if size > limit:
            raise ApiError(413, "body_too_large", f"request body is larger than the server's "
                           f"limit of {limit:,} bytes")
        parts.append(chunk)
    return b"".join(parts)


@asynccontextmanager
async def counted(metrics: Metrics, api: str, queued: Callable[[], int]
                  ) -> AsyncIterator[None]:
    """Counts the inference request run inside: its status, error cause and latency."""
    start = time.perf_counter()
    status = 200
    try:
        yield
    except ApiError as e:
        status = e.status
        metrics.errors.labels(api, e.code).inc()
        raise
    except Exception:
        status = 500
        metrics.errors.labels(api, "internal").inc()
        raise
    finally:
        metrics.requests.labels(api, str(status)).inc()
        metrics.latency.labels(api).observe(time.perf_counter() - start)
        metrics.queued.set(queued())

"""The HTTP API (FastAPI): POST /v1/predict, GET /v1/model, GET /healthz, GET /metrics, the
upload page at /, and the Open Inference Protocol's /v2 routes (serve.v2).

An upload goes the way `reslab predict` reads a file: decoded by reslab.data.images (the one
decoding path, here from bytes), prepared by deploy.predict.prepare_decoded as the run's
evaluation prepared its images, scored by the same logits function (deploy.predict.classifier:
test-time flip and translations as the record says) and ranked by deploy.predict.top_classes,
so the answer is `reslab predict --json`'s for the same file. Between preparing and ranking,
images wait in the dynamic batcher (serve.batching), the same one for /v1 and /v2.

Every error is JSON with the status that names its class (serve.http): /v1's
{"error": {"code", "message"}}, /v2's {"error": "message"}. A bad request never stops the
server.
"""
from __future__ import annotations

import asyncio
import base64
import threading
from collections.abc import Callable
from concurrent.futures import ThreadPoolExecutor
from contextlib import asynccontextmanager
from importlib import resources
from typing import Any

import torch
from fastapi import FastAPI, Request
from fastapi.exceptions import RequestValidationError
from fastapi.responses import HTMLResponse, JSONResponse, PlainTextResponse, Response
from pydantic import BaseModel
from starlette.concurrency import run_in_threadpool
from starlette.datastructures import UploadFile
from starlette.exceptions import HTTPException
from torch import nn

from ..data.images import ImageError, decode_image
from ..deploy.predict import prepare_decoded, top_classes
from .. import __version__
from ..weights.record import Record
from . import v2
from .batching import Batcher, Overloaded
from .http import ApiError, api_of, counted, error_response, read_body
from .metrics import CONTENT_TYPE_LATEST, Metrics
from .options import ServeOptions

IMAGE_STATUS = 422  # a well-formed request whose image cannot be used
# Images up to this many pixels are decoded on the event loop: well under a millisecond, less
# than the hop to a thread costs, and no crowd of decoding threads fighting the loop for the
# GIL under load (which cut throughput by half at 32 concurrent requests). Larger ones go to a
# small pool of their own.
INLINE_PIXELS = 256 * 256
DECODE_THREADS = 2


class ErrorDetail(BaseModel):
    code: str
    message: str


class Error(BaseModel):
    """/v1's error answer."""

    error: ErrorDetail


# /v1/predict reads its body itself (an image, or multipart files): documented here, so that
# the OpenAPI document (and schemathesis, which fuzzes it) knows what it takes
PREDICT_BODY = {"requestBody": {"required": True, "content": {
    "image/png": {"schema": {"type": "string", "format": "binary"}},
    "image/jpeg": {"schema": {"type": "string", "format": "binary"}},
    "multipart/form-data": {"schema": {"type": "object", "required": ["file"], "properties": {
        "file": {"type": "array", "items": {"type": "string", "format": "binary"}}}}}}}}


async def _uploads(request: Request, options: ServeOptions) -> list[tuple[str, bytes]]:
    """(name, bytes) of each image in the request: the raw body with an image/* content type,
    or every file of a multipart/form-data body."""
    ctype = request.headers.get("content-type", "")
    kind = ctype.split(";", 1)[0].strip().lower()
    if not (kind.startswith("image/") or kind == "multipart/form-data"):
        what = f"content type '{ctype}' is not an image" if ctype else "no content type"
        raise ApiError(415, "unsupported_media_type", f"{what}: send one image as the body "
                       "with its image/* content type (image/png, image/jpeg, ...), or files "
                       "as multipart/form-data")
    body = await read_body(request, options.max_body_bytes)
    if kind.startswith("image/"):
        if not body:
            raise ApiError(400, "empty_body", "the request body is empty: send an image")
        return [("body", body)]

    async def replay() -> dict[str, Any]:  # the form parser reads the body we already hold
        return {"type": "http.request", "body": body, "more_body": False}

    try:
        form = await Request(request.scope, replay).form(max_files=options.max_files,
                                                         max_fields=64)
    except HTTPException as e:  # malformed multipart, too many files or fields
        raise ApiError(400, "bad_multipart", f"cannot read the multipart body: {e.detail}"
                       ) from None
    files = [(f.filename or key, await f.read()) for key, f in form.multi_items()
             if isinstance(f, UploadFile)]
    await form.close()
    if not files:
        raise ApiError(400, "no_images", "the multipart body holds no files: send images as "
                       "file fields")
    return files


def _prepare(record: Record, files: list[tuple[str, bytes]], max_pixels: int
             ) -> torch.Tensor:
    try:
        return prepare_decoded(record, [decode_image(data, name, max_pixels)
                                        for name, data in files])
    except ImageError as e:
        raise ApiError(IMAGE_STATUS, e.kind, str(e)) from None


def _cam_data_urls(model: nn.Module, record: Record, x: torch.Tensor, classes: list[int],
                   lock: threading.Lock) -> list[str]:
    """Grad-CAM of each image for its class, drawn over the crop, as PNG data URLs."""
    from ..deploy.cam import cam_overlay, display_images, grad_cam

    with lock:  # the model's hooks and gradients are not for two requests at once
        heat = grad_cam(model, x, classes)
    from torchvision.io import encode_png
    from torchvision.transforms.v2.functional import pil_to_tensor

    urls = []
    for image, h in zip(display_images(record, x), heat):
        png = encode_png(pil_to_tensor(cam_overlay(image, h))).numpy().tobytes()
        urls.append("data:image/png;base64," + base64.b64encode(png).decode())
    return urls


def create_app(model: nn.Module, record: Record, forward: Callable[[torch.Tensor],
               torch.Tensor], options: ServeOptions, runtime: dict[str, Any],
               name: str = "model") -> FastAPI:
    """The app serving `forward` (the logits function: deploy.predict.classifier over a
    runtime's callable) for images prepared by `record`; `model` (eager, eval mode) draws the
    Grad-CAM maps; `runtime` is reported by /v1/model; `name` is the model's name on /v2
    (options.model_name, when given, wins)."""
    metrics = Metrics()
    batcher = Batcher(forward, max_batch=options.max_batch,
                      max_wait_s=options.max_wait_ms / 1000, max_queue=options.max_queue,
                      on_batch=metrics.batch)
    cam_lock = threading.Lock()
    decoders = ThreadPoolExecutor(DECODE_THREADS, thread_name_prefix="reslab-decode")

    async def prepare(files: list[tuple[str, bytes]]) -> torch.Tensor:
        cap = min(options.max_pixels, INLINE_PIXELS)
        try:
            return _prepare(record, files, cap)
        except ApiError as e:  # a larger image: decoded in the pool, with the real limit
            if e.code != "too_many_pixels" or cap == options.max_pixels:
                raise
        return await asyncio.get_running_loop().run_in_executor(
            decoders, _prepare, record, files, options.max_pixels)

    async def logits(x: torch.Tensor) -> torch.Tensor:
        try:
            return await batcher.predict(x)
        except Overloaded as e:
            raise ApiError(503, "overloaded", f"{e}; retry in {e.retry_after_s} s",
                           {"Retry-After": str(e.retry_after_s)}) from None

    def queued() -> int:
        return batcher.queued

    @asynccontextmanager
    async def lifespan(app: FastAPI):
        batcher.start()
        yield
        await batcher.stop()  # uvicorn has let the in-flight requests finish: drain the rest
        decoders.shutdown()

    app = FastAPI(title="reslab", version=__version__, lifespan=lifespan, docs_url="/docs",
                  redoc_url=None)
    app.state.batcher, app.state.metrics = batcher, metrics

    @app.exception_handler(ApiError)
    async def api_error(request: Request, e: ApiError) -> JSONResponse:
        return error_response(request.url.path, e.status, e.code, e.message, e.headers)

    @app.exception_handler(HTTPException)
    async def http_error(request: Request, e: HTTPException) -> JSONResponse:
        code = {404: "not_found", 405: "method_not_allowed"}.get(e.status_code, "http_error")
        return error_response(request.url.path, e.status_code, code, str(e.detail),
                              getattr(e, "headers", None))

    @app.exception_handler(RequestValidationError)
    async def bad_parameter(request: Request, e: RequestValidationError) -> JSONResponse:
        first = e.errors()[0]
        where = ".".join(str(p) for p in first.get("loc", ()) if p not in ("query", "header"))
        # rejected before the route runs: counted here as the routes count their own rejections
        api = api_of(request.url.path)
        metrics.errors.labels(api, "bad_parameter").inc()
        metrics.requests.labels(api, "400").inc()
        return error_response(request.url.path, 400, "bad_parameter",
                              f"invalid {where}: {first.get('msg')}")

    v1_errors: dict[int | str, dict[str, Any]] = {
        status: {"model": Error} for status in (400, 413, 415, 422, 503)}

    @app.post("/v1/predict", responses=v1_errors, openapi_extra=PREDICT_BODY)
    async def predict(request: Request, topk: int | None = None, cam: bool = False
                      ) -> JSONResponse:
        async with counted(metrics, "v1", queued):
            k = min(options.topk, len(record.class_names)) if topk is None else topk
            if not 1 <= k <= len(record.class_names):
                raise ApiError(400, "bad_parameter", f"invalid topk {k}: must be between 1 "
                               f"and {len(record.class_names)} (the model's classes)")
            files = await _uploads(request, options)
            x = await prepare(files)
            tops = top_classes(await logits(x), record.class_names, k)
            predictions = [{"file": name, "top": top} for (name, _), top in zip(files, tops)]
            if cam:
                urls = await run_in_threadpool(_cam_data_urls, model, record, x,
                                               [t[0]["index"] for t in tops], cam_lock)
                for p, url in zip(predictions, urls):
                    p["cam"] = url
            return JSONResponse({"architecture": record.architecture,
                                 "runtime": runtime["runtime"], "predictions": predictions})

    @app.get("/v1/model")
    async def model_info() -> dict[str, Any]:
        return {"architecture": record.architecture, "kwargs": dict(record.kwargs),
                "class_names": list(record.class_names),
                "preprocess": record.preprocess.to_json(), "runtime": runtime,
                "serving": options.to_json()}

    @app.get("/healthz")
    async def healthz() -> dict[str, Any]:
        return {"status": "ok", "queued": batcher.queued}

    @app.get("/metrics", response_class=PlainTextResponse)
    async def prometheus() -> Response:
        metrics.queued.set(batcher.queued)
        return Response(metrics.text(), media_type=CONTENT_TYPE_LATEST)

    app.include_router(v2.router(v2.ServedModel(
        options.model_name or name, record, runtime["runtime"], options, prepare, logits,
        metrics, queued)))

    page = resources.files(__package__).joinpath("page.html").read_text(encoding="utf-8")

    @app.get("/", response_class=HTMLResponse)
    async def index() -> str:
        return page

    def openapi() -> dict[str, Any]:
        if app.openapi_schema is None:
            schema = FastAPI.openapi(app)
            schema.setdefault("components", {}).setdefault("schemas", {}).update(
                v2.openapi_components())
        return app.openapi_schema

    app.openapi = openapi  # type: ignore[method-assign]
    return app

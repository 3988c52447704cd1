"""Running the app: the checkpoint on its runtime, a listening socket, uvicorn, and a clean
exit on SIGTERM after the in-flight requests are answered."""
from __future__ import annotations

import contextlib
import socket
from collections.abc import Callable, Iterator
from dataclasses import dataclass, replace
from pathlib import Path
from typing import Any

import torch
from torch import nn

from ..errors import UserError
from ..weights.checkpoint import Checkpoint
from ..weights.record import Record
from .app import create_app
from .options import ServeOptions


@dataclass
class Service:
    """What create_app serves: the eager model (Grad-CAM), its record, the logits function on
    the chosen runtime, and the runtime's description."""

    model: nn.Module
    record: Record
    forward: Callable[[torch.Tensor], torch.Tensor]
    runtime: dict[str, Any]
    name: str = "model"  # the model's name on /v2 unless options.model_name says

    def app(self, options: ServeOptions) -> Any:
        return create_app(self.model, self.record, self.forward, options, self.runtime,
                          self.name)


def load_service(ckpt: str | Path | Checkpoint, runtime: str = "auto", *, max_batch: int = 16,
                 flip: bool | None = None, translate: bool | None = None,
                 threads: int | None = None) -> Service:
    """The checkpoint on `runtime` (deploy.runtime), built and, for "auto", timed on a batch
    of max_batch images: the shape the server runs under load. threads: ONNX Runtime's
    intra-op threads (default: the CPUs this process may use). ckpt: a run directory, a
    weights file or the Checkpoint the caller resolved. flip, translate: the test-time views
    (deploy.predict.classifier; None: as the record says)."""
    from ..deploy.optimize import optimize_for_inference
    from ..deploy.predict import classifier
    from ..deploy.runtime import describe, runtime_of
    from ..weights.checkpoint import as_checkpoint
    from .v2 import model_name_of

    checkpoint = as_checkpoint(ckpt)
    model, record = checkpoint.load()
    example = torch.randn(max_batch, *record.preprocess.input_size,
                          generator=torch.Generator().manual_seed(0))
    # compile=False: a server's batches come in every size up to max_batch, and inductor
    # would compile each one
    fast = optimize_for_inference(model, example, runtime=runtime, compile=False,
                                  threads=threads)
    choice = getattr(fast, "choice", None)
    info = {"runtime": runtime_of(fast), "requested": runtime, "note": describe(fast),
            "seconds_per_batch": choice.seconds if choice is not None else None}
    # the record as served: its preprocess names the views this server averages (GET /v1/model)
    views = record.preprocess.tta(flip, translate)
    served = replace(record, preprocess=replace(record.preprocess, tta_flip=views.flip,
                                                tta_translate=views.translate))
    return Service(model, served, classifier(fast, served), info,
                   model_name_of(checkpoint.given))


def listen(host: str, port: int) -> socket.socket:
    """A listening TCP socket on host:port (port 0: any free port); UserError when it cannot
    be had (address in use, a name that does not resolve, no permission)."""
    from ..limits import check_int

    check_int("port", port, 0, 65535)
    try:
        infos = socket.getaddrinfo(host, port, type=socket.SOCK_STREAM)
        family, _, _, _, address = infos[0]
        sock = socket.socket(family, socket.SOCK_STREAM)
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        sock.bind(address)
        sock.listen(2048)
    except OSError as e:
        raise UserError(f"cannot listen on {host}:{port}: {e.strerror or e}") from None
    sock.set_inheritable(True)
    return sock


def _server_class() -> type:
    import uvicorn

    class Server(uvicorn.Server):
        @contextlib.contextmanager
        def capture_signals(self) -> Iterator[None]:
            # uvicorn re-raises the signal once its graceful shutdown is done, so the process
            # would die of SIGTERM (exit 143); a drained shutdown is a clean exit, 0.
            with super().capture_signals():
                yield
                self._captured_signals.clear()

    return Server


def make_server(app: Any, *, graceful_s: float = 30.0) -> Any:
    """A uvicorn server for app: no access log (metrics count requests), HTTP/1.1, graceful
    shutdown of up to graceful_s for the requests in flight."""
    import uvicorn

    config = uvicorn.Config(app, log_level="warning", access_log=False, lifespan="on",
                            timeout_graceful_shutdown=graceful_s, server_header=False)
    return _server_class()(config)


def serve(service: Service, options: ServeOptions, sock: socket.socket,
          on_ready: Callable[[str], None] | None = None) -> None:
    """Serves until SIGTERM or SIGINT, then answers what is in flight and returns."""
    server = make_server(service.app(options))
    host, port = sock.getsockname()[:2]
    if on_ready is not None:
        on_ready(f"http://{f'[{host}]' if ':' in host else host}:{port}")
    server.run(sockets=[sock])

"""`reslab serve CKPT`: an HTTP endpoint for a checkpoint. POST /v1/predict (an image as the
body with its image/* content type, or files as multipart/form-data) answers the top-k classes
as `reslab predict --json` does; GET /v1/model, /healthz, /metrics (Prometheus); an upload page
with the Grad-CAM heat map at /. Concurrent requests are batched (--max-batch, --max-wait-ms);
past --max-queue waiting images requests get 503 with Retry-After. SIGTERM or Ctrl-C answers
the requests in flight, then exits 0. Needs the serve extra: pip install 'reslab[serve]'."""
from __future__ import annotations

import argparse
import dataclasses
import sys
from typing import TYPE_CHECKING

from ..errors import UserError
from .common import add_flip_option, add_runtime_option, add_threads_option, tta_flip

if TYPE_CHECKING:
    from ..serve import ServeOptions


def add_parser(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser("serve", help="HTTP endpoint with dynamic batching and an upload page",
                       description=__doc__)
    p.add_argument("ckpt", metavar="CKPT", help="run directory or weights file")
    p.add_argument("--host", default="127.0.0.1",
                   help="address to listen on (default 127.0.0.1: this machine only)")
    p.add_argument("--port", type=int, default=8000, help="port (default 8000; 0: any free)")
    add_runtime_option(p, default="auto")
    p.add_argument("--max-batch", type=int, default=16, metavar="N",
                   help="images per model call (default 16; 1 turns batching off)")
    p.add_argument("--max-wait-ms", type=float, default=5.0, metavar="T",
                   help="how long a batch's first image waits for more (default 5 ms)")
    p.add_argument("--max-queue", type=int, default=256, metavar="Q",
                   help="images waiting at most; beyond, requests get 503 (default 256)")
    p.add_argument("--max-body-mb", type=float, default=20.0, metavar="MB",
                   help="largest request body in MiB (default 20; larger: 413)")
    p.add_argument("--max-pixels", type=int, default=40_000_000, metavar="N",
                   help="largest image in pixels, from its header (default 40,000,000)")
    p.add_argument("--topk", type=int, default=5, metavar="K",
                   help="classes per image unless the request's ?topk= says (default 5)")
    add_threads_option(p, "the model, torch and ONNX Runtime",
                       "the CPUs other programs leave free when the server starts")
    add_flip_option(p)
    p.set_defaults(func=run)


def options(args: argparse.Namespace) -> ServeOptions:
    """The validated ServeOptions of the flags."""
    from ..limits import MAX_BATCH, MAX_CLASSES, check_float, check_int
    from ..serve import ServeOptions

    check_int("--port", args.port, 0, 65535)
    check_int("--max-batch", args.max_batch, 1, MAX_BATCH)
    check_float("--max-wait-ms", args.max_wait_ms, 0, 10_000)
    check_int("--max-queue", args.max_queue, 1, 10**6)
    check_float("--max-body-mb", args.max_body_mb, 0, 4096, lo_open=True)
    check_int("--max-pixels", args.max_pixels, 1, 2**31)
    check_int("--topk", args.topk, 1, MAX_CLASSES)
    return ServeOptions(max_batch=args.max_batch, max_wait_ms=args.max_wait_ms,
                        max_queue=args.max_queue,
                        max_body_bytes=int(args.max_body_mb * 2**20),
                        max_pixels=args.max_pixels, topk=args.topk)


def run(args: argparse.Namespace) -> int:
    try:
        from ..serve import listen, load_service, serve
    except ImportError as e:
        raise UserError(f"reslab serve needs fastapi, uvicorn, python-multipart and "
                        f"prometheus_client ({e.name} is missing): pip install "
                        "'reslab[serve]'") from None
    from ..limits import MAX_THREADS, check_int

    opts = options(args)
    threads = check_int("--threads", _free_threads() if args.threads is None else args.threads,
                        1, MAX_THREADS)
    sock = listen(args.host, args.port)  # before the model: a taken port fails at once
    import torch

    torch.set_num_threads(threads)
    service = load_service(args.ckpt, args.runtime, max_batch=opts.max_batch,
                           flip=tta_flip(args),
                           threads=threads)
    if service.record.num_classes < opts.topk:
        opts = dataclasses.replace(opts, topk=service.record.num_classes)

    def ready(url: str) -> None:
        print(f"serving {service.record.architecture} ({service.runtime['note']}) at {url}",
              flush=True)
        print(f"  upload page {url}/  API {url}/v1/predict  metrics {url}/metrics",
              flush=True)

    serve(service, opts, sock, on_ready=ready)
    print("stopped: in-flight requests answered", file=sys.stderr, flush=True)
    return 0


def _free_threads() -> int:
    """The CPUs other programs leave free (reslab/threads.py): the runtime choice is timed with
    these threads, and on a busy machine more threads than free CPUs make torch look many
    times slower than it is."""
    import torch

    from ..threads import auto_threads

    auto_threads()
    return torch.get_num_threads()

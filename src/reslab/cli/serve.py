"""`reslab serve CKPT`: an HTTP endpoint for a checkpoint. POST /v1/predict (an image as the
body with its image/* content type, or files as multipart/form-data) answers the top-k classes
as `reslab predict --json` does; GET /v1/model, /healthz, /metrics (Prometheus); an upload page
with the Grad-CAM heat map at /; the Open Inference Protocol (KServe v2: health, metadata,
infer; what tritonclient speaks) under /v2/models/NAME. Concurrent requests are batched
(--max-batch, --max-wait-ms); past --max-queue waiting images requests get 503 with
Retry-After. SIGTERM or Ctrl-C answers
the requests in flight, then exits 0. Needs the serve extra: pip install 'reslab[serve]'."""
from __future__ import annotations

import argparse
import sys

from ..errors import UserError
from ..serve.options import ServeOptions
from .common import add_runtime_option, add_threads_option, add_tta_options, tta_choices

DEFAULTS = ServeOptions()


def add_parser(sub: argparse._SubParsersAction) -> None:
    d = DEFAULTS
    p = sub.add_parser("serve", help="HTTP endpoint with dynamic batching and an upload page",
                       description=__doc__)
    p.add_argument("ckpt", metavar="CKPT", help="run directory or weights file")
    p.add_argument("--host", default="127.0.0.1",
                   help="address to listen on (default 127.0.0.1: this machine only)")
    p.add_argument("--port", type=int, default=8000, help="port (default 8000; 0: any free)")
    add_runtime_option(p, default="auto")
    p.add_argument("--max-batch", type=int, default=d.max_batch, metavar="N",
                   help=f"images per model call (default {d.max_batch}; 1 turns batching off)")
    p.add_argument("--max-wait-ms", type=float, default=d.max_wait_ms, metavar="T",
                   help=f"how long a batch's first image waits for more (default "
                        f"{d.max_wait_ms:g} ms)")
    p.add_argument("--max-queue", type=int, default=d.max_queue, metavar="Q",
                   help=f"images waiting at most; beyond, requests get 503 (default "
                        f"{d.max_queue})")
    p.add_argument("--max-body-mb", type=float, default=d.max_body_mb, metavar="MB",
                   help=f"largest request body in MiB (default {d.max_body_mb:g}; larger: 413)")
    p.add_argument("--max-pixels", type=int, default=d.max_pixels, metavar="N",
                   help=f"largest image in pixels, from its header (default {d.max_pixels:,})")
    p.add_argument("--topk", type=int, default=d.topk, metavar="K",
                   help=f"classes per image unless the request's ?topk= says (default {d.topk})")
    p.add_argument("--model-name", metavar="NAME",
                   help="the model's name on the v2 protocol, /v2/models/NAME (default: the "
                        "run directory's name or the weights file's stem)")
    add_threads_option(p, "the model, torch and ONNX Runtime",
                       "the CPUs other programs leave free when the server starts")
    add_tta_options(p)
    p.set_defaults(func=run)


def options(args: argparse.Namespace) -> ServeOptions:
    """The ServeOptions of the flags (ServeOptions checks them)."""
    return ServeOptions(max_batch=args.max_batch, max_wait_ms=args.max_wait_ms,
                        max_queue=args.max_queue, max_body_mb=args.max_body_mb,
                        max_pixels=args.max_pixels, topk=args.topk,
                        model_name=args.model_name)


def run(args: argparse.Namespace) -> int:
    opts = options(args)
    try:
        from ..serve.server import listen, load_service, serve
    except ImportError as e:
        raise UserError(f"reslab serve needs fastapi, uvicorn, python-multipart and "
                        f"prometheus_client ({e.name} is missing): pip install "
                        "'reslab[serve]'") from None
    from ..limits import MAX_THREADS, check_int
    from ..weights.checkpoint import Checkpoint

    threads = check_int("--threads", _free_threads() if args.threads is None else args.threads,
                        1, MAX_THREADS)
    sock = listen(args.host, args.port)  # before the model: a taken port fails at once
    import torch

    torch.set_num_threads(threads)
    service = load_service(Checkpoint(args.ckpt), args.runtime, max_batch=opts.max_batch,
                           threads=threads, **tta_choices(args))
    name = opts.model_name or service.name

    def ready(url: str) -> None:
        print(f"serving {service.record.architecture} ({service.runtime['note']}) at {url}",
              flush=True)
        print(f"  upload page {url}/  API {url}/v1/predict  metrics {url}/metrics",
              flush=True)
        print(f"  v2 (Open Inference Protocol) {url}/v2/models/{name}", flush=True)

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

"""`reslab serve`: an HTTP endpoint for a checkpoint (FastAPI on uvicorn) with dynamic
batching, Prometheus metrics, an upload page and the Open Inference Protocol (v2). Needs the
`serve` extra: pip install 'reslab[serve]'.

The names below are imported on first use, so that `reslab.serve.options` (what the CLI's
parser reads its defaults from) does not need FastAPI."""
from __future__ import annotations

from importlib import import_module
from typing import Any

_WHERE = {"create_app": "app", "ApiError": "http", "ServeOptions": "options",
          "Service": "server", "listen": "server", "load_service": "server",
          "make_server": "server", "serve": "server"}
__all__ = sorted(_WHERE)


def __getattr__(name: str) -> Any:
    if name not in _WHERE:
        raise AttributeError(f"module {__name__!r} has no attribute {name!r}")
    return getattr(import_module(f".{_WHERE[name]}", __name__), name)

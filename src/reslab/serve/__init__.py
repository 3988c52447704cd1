"""`reslab serve`: an HTTP endpoint for a checkpoint (FastAPI on uvicorn) with dynamic
batching, Prometheus metrics and an upload page. Needs the `serve` extra:
pip install 'reslab[serve]'."""
from .app import ApiError, ServeOptions, create_app
from .server import Service, listen, load_service, make_server, serve

__all__ = ["ApiError", "ServeOptions", "Service", "create_app", "listen", "load_service",
           "make_server", "serve"]

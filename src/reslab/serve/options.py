"""ServeOptions: the server's batching, its limits on what a request may hold, and the model's
name on the v2 protocol; every field checked where the options are made, as Recipe is."""
from __future__ import annotations

from dataclasses import dataclass, fields

from ..errors import UserError
from ..limits import MAX_BATCH, MAX_CLASSES, check_float, check_int, short_text

INT_BOUNDS = {"max_batch": (1, MAX_BATCH), "max_queue": (1, 10**6),
              "max_pixels": (1, 2**31), "max_files": (1, 4096), "topk": (1, MAX_CLASSES)}
# (lo, hi, lo excluded)
FLOAT_BOUNDS = {"max_wait_ms": (0.0, 10_000.0, False), "max_body_mb": (0.0, 4096.0, True)}
NAME_CHARS = frozenset("abcdefghijklmnopqrstuvwxyzABCDEFGHIJKLMNOPQRSTUVWXYZ0123456789._-")


@dataclass(frozen=True)
class ServeOptions:
    """The server's batching and its limits on what a request may hold."""

    max_batch: int = 16            # images per model call
    max_wait_ms: float = 5.0       # how long the first image of a batch waits for company
    max_queue: int = 256           # images waiting; beyond it requests get 503
    max_body_mb: float = 20.0      # MiB in one request body; beyond it 413
    max_pixels: int = 40_000_000   # per image, from its header (PIL's own bomb guard: 179 M)
    max_files: int = 64            # images in one request (multipart files, v2 tensor rows)
    topk: int = 5
    model_name: str | None = None  # the v2 protocol's model name (None: the run's name)

    def __post_init__(self) -> None:
        for name, (lo, hi) in INT_BOUNDS.items():
            object.__setattr__(self, name, check_int(name, getattr(self, name), lo, hi))
        for name, (lo, hi, lo_open) in FLOAT_BOUNDS.items():
            object.__setattr__(self, name, check_float(name, getattr(self, name), lo, hi,
                                                       lo_open=lo_open))
        if self.model_name is not None:
            check_model_name(self.model_name)

    @property
    def max_body_bytes(self) -> int:
        return int(self.max_body_mb * 2**20)

    def to_json(self) -> dict[str, object]:
        return {f.name: getattr(self, f.name) for f in fields(self)}


def check_model_name(name: str) -> str:
    """A model name fit for a URL path segment: 1-128 letters, digits, '.', '_' or '-', not
    starting with '.'."""
    if not (isinstance(name, str) and 0 < len(name) <= 128 and set(name) <= NAME_CHARS
            and not name.startswith(".")):
        raise UserError(f"invalid model_name '{short_text(name)}': use 1-128 letters, digits, "
                        "'.', '_' or '-', not starting with '.'")
    return name

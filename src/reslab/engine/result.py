"""What fit returns: the run's numbers, written to its summary.json (docs/run-directory.md)."""
from __future__ import annotations

import json
from dataclasses import asdict, dataclass, fields
from pathlib import Path
from typing import Any

from ..io import atomic_write_text
from .rundir import RunDir

Scores = dict[str, float]  # top1, top5, loss, n (engine.evaluate)


@dataclass(frozen=True)
class FitResult:
    """A finished fit. Every field but train_seconds is a key of summary.json, in its order."""
    out: str | None  # the run directory; None without one, and on torchrun's other ranks
    model: str
    data: str
    steps: int
    epochs: float
    wall_s: float  # training seconds of this process (a resumed run: the resumed part)
    train: Scores | None  # the last epoch's running training scores
    train_eval: dict[str, Any] | None  # top1, n: eval mode on training images (the BN check)
    stopped_early: bool
    val: Scores | None
    test: Scores | None
    skipped_images: int  # unreadable images left out of the data
    skipped: list[str]  # the first 100 of them
    # Training seconds across resumes (a fresh run: wall_s). Not a key of summary.json, whose
    # keys stay as they are; the reports read these seconds from metrics.jsonl's time_s.
    train_seconds: float | None = None

    def to_json(self, indent: int | None = 2) -> str:
        """summary.json's text (without its final newline); indent None: one line."""
        obj = asdict(self)
        del obj["train_seconds"]
        return json.dumps(obj, indent=indent)

    @classmethod
    def from_json(cls, obj: dict[str, Any]) -> FitResult:
        """A FitResult from summary.json's object (KeyError or TypeError when one is not)."""
        names = {f.name for f in fields(cls)} - {"train_seconds"}
        return cls(**{name: obj[name] for name in names})

    def write(self, out: Path) -> None:
        """summary.json in the run directory out, atomically."""
        atomic_write_text(RunDir(out).summary, self.to_json() + "\n")

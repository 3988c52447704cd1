"""The names of a run directory's files (config.toml, metrics.jsonl, model.safetensors, ...):
on the ground floor, so that both the weights package (a CKPT that is a run directory means its
final weights) and the engine (which owns and locks the directory: engine.rundir) spell them the
same way, from one place."""
from __future__ import annotations

import os
from dataclasses import dataclass
from pathlib import Path

LOCK_FILE = ".reslab.lock"


@dataclass(frozen=True)
class RunFiles:
    """A run directory and the names of everything reslab writes into it: the one place those
    names are spelled. A sweep directory (degradation, paper) uses the same names for its own
    files (degradation.json, report.md). The engine's RunDir adds the stored recipe."""
    path: Path

    @property
    def config(self) -> Path:
        """The recipe the run was started with (a resumed run continues with it)."""
        return self.path / "config.toml"

    @property
    def metrics(self) -> Path:
        return self.path / "metrics.jsonl"

    @property
    def metrics_csv(self) -> Path:
        """metrics.jsonl's rows as a table (rewritten from the jsonl when a run starts)."""
        return self.path / "metrics.csv"

    @property
    def summary(self) -> Path:
        return self.path / "summary.json"

    @property
    def weights(self) -> Path:
        """The final weights: present only once the run has finished."""
        return self.path / "model.safetensors"

    @property
    def best(self) -> Path:
        return self.path / "best.safetensors"

    @property
    def state(self) -> Path:
        """The resumable training state (engine.state)."""
        return self.path / "state" / "last.pt"

    @property
    def tensorboard(self) -> Path:
        return self.path / "tensorboard"

    @property
    def report(self) -> Path:
        return self.path / "report.md"

    @property
    def report_html(self) -> Path:
        return self.path / "report.html"

    @property
    def curves(self) -> Path:
        return self.path / "curves.png"

    @property
    def responses(self) -> Path:
        return self.path / "responses.json"

    @property
    def responses_png(self) -> Path:
        return self.path / "responses.png"

    @property
    def confusion(self) -> Path:
        return self.path / "confusion.png"

    @property
    def degradation(self) -> Path:
        """A degradation sweep's result (the sweep directory's own file)."""
        return self.path / "degradation.json"

    @property
    def degradation_png(self) -> Path:
        return self.path / "degradation.png"

    @property
    def lock(self) -> Path:
        return self.path / LOCK_FILE

    def run_files(self) -> list[Path]:
        """Everything a run writes, files and the folders state/ and tensorboard/ (what
        --overwrite removes; a user's other files stay)."""
        return [self.config, self.metrics, self.summary, self.weights, self.best,
                self.state.parent, self.report, self.report_html, self.curves, self.responses,
                self.responses_png, self.confusion, self.tensorboard, self.metrics_csv]

    def present(self) -> list[str]:
        """The names of run_files() present."""
        return [p.name for p in self.run_files() if os.path.lexists(p)]

    def started(self) -> bool:
        """Whether a run was started here (its config.toml is written first)."""
        return self.config.is_file()

    def finished(self) -> bool:
        """Whether the run here has finished (its final weights are written last)."""
        return self.weights.is_file()

    def has_state(self) -> bool:
        """Whether an interrupted run here can be resumed."""
        return self.state.is_file()

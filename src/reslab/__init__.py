"""reslab: deep residual learning (He et al., 2015), exact and reproducible."""
from typing import Any

from .checkpoint import load_checkpoint
from .errors import UserError
from .models import create_model, list_models
from .record import Record

__version__ = "0.2.0"
__all__ = ["Record", "UserError", "__version__", "create_model", "list_models",
           "load_checkpoint", "train"]


def train(recipe: Any, out: Any = None, **kwargs: Any) -> dict[str, Any]:
    """Trains a recipe (reslab.engine.Recipe) into the run directory `out`, then writes its
    report (curves.png, report.md) as `reslab train` does; returns the run's summary. kwargs:
    resume, overwrite, quiet (see reslab.engine.loop.fit)."""
    from .analysis.report import write_run_report
    from .engine.loop import fit

    summary = fit(recipe, out, **kwargs)
    if summary.get("out"):
        write_run_report(summary["out"], strict=False)
    return summary

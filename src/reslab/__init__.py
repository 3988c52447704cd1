"""reslab: deep residual learning (He et al., 2015), exact and reproducible."""
from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:  # for type checkers and the API reference; at run time: __getattr__ below
    from .weights.checkpoint import load_checkpoint
    from .engine.result import FitResult
    from .errors import UserError
    from .models import create_model, list_models
    from .weights.record import Record

__version__ = "0.2.0"
__all__ = ["Record", "UserError", "__version__", "create_model", "list_models",
           "load_checkpoint", "train"]

# The public names are imported on first use (PEP 562), so `import reslab.cli` and
# `reslab --help` do not pay for importing torch.
_LAZY = {"load_checkpoint": "weights.checkpoint", "UserError": "errors", "create_model": "models",
         "list_models": "models", "Record": "weights.record"}


def __getattr__(name: str) -> Any:
    if name not in _LAZY:
        raise AttributeError(f"module 'reslab' has no attribute '{name}'")
    import importlib

    value = getattr(importlib.import_module(f".{_LAZY[name]}", __name__), name)
    globals()[name] = value
    return value


def train(recipe: Any, out: Any = None, **kwargs: Any) -> "FitResult":
    """Trains a recipe (reslab.engine.Recipe) into the run directory `out`, then writes its
    report (curves.png, report.md) as `reslab train` does; returns the run's numbers (its
    summary.json). kwargs: resume, overwrite, quiet (see reslab.engine.loop.fit)."""
    from .analysis.report import write_run_report
    from .engine.loop import fit

    result = fit(recipe, out, **kwargs)
    if result.out:  # under torchrun, rank 0 owns the run directory
        write_run_report(result.out, strict=False)
    return result

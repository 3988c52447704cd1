"""reslab: deep residual learning (He et al., 2015), exact and reproducible."""
from .engine.checkpoint import load_checkpoint
from .errors import UserError
from .models import create_model, list_models

__version__ = "0.1.0"
__all__ = ["create_model", "list_models", "load_checkpoint", "UserError", "__version__"]

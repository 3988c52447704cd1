"""The documented import path reslab.checkpoint (docs/reference/api): a re-export. The code lives in
reslab.weights.checkpoint."""
from .weights.checkpoint import *  # noqa: F403

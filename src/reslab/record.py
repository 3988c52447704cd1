"""The documented import path reslab.record (docs/reference/api): a re-export. The code lives in
reslab.weights.record."""
from .weights.record import *  # noqa: F403

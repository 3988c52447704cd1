"""The documented import path reslab.importer (docs/reference/api): a re-export. The code lives in
reslab.weights.importer."""
from .weights.importer import *  # noqa: F403

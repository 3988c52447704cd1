"""Data: datasets -> batches (docs/guides/training.md, Datasets).

`load_data(spec, ...)` returns a `Data` whose `train_batches` / `eval_batches` yield normalised
float32 (x, y) on the training device; `preprocess` prepares images for a trained model as
evaluation does; `open_image` is the one image-decoding path."""
from .augment import AUGMENTS
from .normalize import NORMALIZE
from .datasets import DATASETS
from .images import open_image, preprocess, to_channels
from .loaders import Data, load_data

__all__ = ["AUGMENTS", "DATASETS", "NORMALIZE", "Data", "load_data", "open_image", "preprocess",
           "to_channels"]

"""The names a user chooses among on the command line (augmentations, normalisations, shortcut
options, export formats), in a module that imports nothing: the parser and its `--help` are
built from them without importing torch. The modules that implement each choice import the
names from here."""
from __future__ import annotations

AUGMENTS = ("crop-flip", "crop", "flip", "none", "imagenet", "imagenet-pca")  # crop: digits
# Learned-free augmentation policies of torchvision.transforms.v2, applied per image after the
# crop and flip: RandAugment (Cubuk et al. 2020, 2 ops of magnitude 9) and TrivialAugment
# (Mueller & Hutter 2021, one op of random magnitude).
AUTO_AUGMENTS = ("none", "randaugment", "trivialaugment")
FLIPPING_AUGMENTS = ("crop-flip", "flip", "imagenet", "imagenet-pca")  # they mirror images
NORMALIZE = ("channel", "pixel")
# Imbalanced training classes (engine/balance.py): auto picks for the data, sampler draws every
# class equally often, weights weighs the loss by inverse class frequency, none does nothing.
BALANCE = ("auto", "sampler", "weights", "none")
# How an image folder's images become the model's square input (fastai's ResizeMethod): crop the
# centre after resizing the shorter side (the paper's), squish the whole image, or pad it.
RESIZES = ("crop", "squish", "pad")
MONITOR = ("auto", "top1", "balanced")  # the validation figure early stopping and best follow
SHORTCUTS = ("A", "B", "C")
STRIDE_IN = ("3x3", "1x1")
# The nonlinearity after each BN: the paper's ReLU, or the GELU of airbench94 (Hendrycks &
# Gimpel 2016), which measured +0.23 points on the fast recipe's net (models/blocks.py).
ACTIVATIONS = ("relu", "gelu")
EXPORT_FORMATS = ("onnx", "torchscript", "pt2")
RUNTIMES = ("torch", "onnxruntime", "auto")  # inference runtimes (reslab.deploy.runtime)
PAPER_BUDGETS = ("smoke", "laptop", "full")  # `reslab paper --budget` (analysis.paper.budgets)

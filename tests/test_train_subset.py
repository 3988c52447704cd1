"""`train_images`: a class-balanced subset of the training split, the same images for every
seed, recorded in the weights so `eval --split train` rebuilds it (the paper's laptop budget
trains on 10,000 of Fashion-MNIST's 60,000)."""
from __future__ import annotations

import json

import pytest
import torch

from cli_helpers import run_cli
from reslab.data import load_data
from reslab.errors import UserError
from reslab.weights.record import TrainingData


def test_the_subset_is_class_balanced_and_the_same_for_every_seed() -> None:
    full = load_data("digits")
    a = load_data("digits", train_images=500, seed=0)
    b = load_data("digits", train_images=500, seed=7, val_split=50)
    xa, ya = a._arrays["train"]
    assert len(ya) == 500
    # each class keeps its share of the split (largest remainders get the rounding)
    counts = torch.bincount(ya, minlength=10)
    share = torch.bincount(full._arrays["train"][1], minlength=10) * 500 / 1437
    assert (counts - share).abs().max() < 1 and int(counts.sum()) == 500
    # the val hold-out comes out of the subset; the subset itself ignores the run's seed
    xb, yb = b._arrays["train"]
    xv, yv = b._arrays["val"]
    assert len(yb) == 450 and len(yv) == 50
    both = torch.cat([xb, xv]).flatten(1)
    assert sorted(map(bytes, both.numpy())) == sorted(map(bytes, xa.flatten(1).numpy()))
    assert len(a._arrays["test"][1]) == len(full._arrays["test"][1])   # test split untouched
    # all of the split, and more than it, said plainly
    assert len(load_data("digits", train_images=1437)._arrays["train"][1]) == 1437
    with pytest.raises(UserError, match="train_images 5000 is more than the 1,437 training "
                                        "images of digits"):
        load_data("digits", train_images=5000)
    # fewer images than classes: some class would have none, which the net cannot learn
    with pytest.raises(UserError) as e:
        load_data("digits", train_images=5)
    assert str(e.value) == ("train_images 5 leaves class 0 (142 images), class 2 (142 images), "
                            "class 7 (143 images) and 2 more of digits without a training "
                            "image: give a larger --train-images")


def test_the_subset_is_recorded_and_rebuilt_by_eval(tmp_path, capsys) -> None:
    out = tmp_path / "run"
    rc, _ = run_cli(capsys, ["train", "--recipe", "demo", "--iters", "3", "--train-images",
                             "300", "--out", out, "--quiet"])
    assert rc == 0
    from reslab.cli import main

    assert main(["eval", str(out), "--split", "train", "--json"]) == 0
    assert json.loads(capsys.readouterr().out)["n"] == 300
    d = TrainingData("digits", None, 0, 0, 300)
    assert TrainingData.from_json(d.to_json()) == d
    assert "train_images" not in TrainingData("digits").to_json()   # old records unchanged
    with pytest.raises(UserError, match="data.train_images"):
        TrainingData.from_json({"spec": "digits", "train_images": 0})

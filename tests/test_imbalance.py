"""Imbalanced training classes (issue 28): the start-up note, --balance (sampler, loss weights,
none; auto only on imbalanced data), the balanced figures in eval, train and the report, the
lost-class warning, a class too small to hold out, and balanced data trained exactly as before."""
from __future__ import annotations

import json
import tomllib
from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image
from safetensors.torch import load_file

from cli_helpers import run_cli
from reslab.cli import main
from reslab.data.augment import epoch_generator, plan_epoch
from reslab.data.loaders import hold_out
from reslab.engine.balance import class_balance
from reslab.engine.evaluate import ClassFigures
from reslab.engine.loop import fit
from reslab.engine.recipe import load_recipe

COUNTS = (24, 8, 4)  # 6:1
TINY = {"model": "resnet20", "batch_size": 8, "lr": 0.05, "workers": 0, "device": "cpu",
        "deterministic": True, "image_size": 8}


def imbalanced_folder(root: Path, counts: tuple[int, ...] = COUNTS) -> Path:
    """train/<class>/ of 8x8 images: class c is a bright square in corner c, on noise."""
    rng = np.random.default_rng(0)
    for c, n in enumerate(counts):
        (root / "train" / f"k{c}").mkdir(parents=True)
        for i in range(n):
            img = rng.integers(0, 60, (8, 8, 3), dtype=np.uint8)
            img[(c // 2) * 4:(c // 2) * 4 + 4, (c % 2) * 4:(c % 2) * 4 + 4] = 230
            Image.fromarray(img).save(root / "train" / f"k{c}" / f"{i}.png")
    return root


def test_auto_balances_only_from_a_ratio_of_3_and_says_what_it_does() -> None:
    names = ["a", "b", "c"]
    labels = torch.tensor([0] * 30 + [1] * 10 + [2] * 12)
    b = class_balance("auto", labels, names)
    assert (b.counts, b.method, b.monitor("auto"), b.monitor("top1")) == (
        (30, 10, 12), "sampler", "balanced", "top1")
    assert b.note() == (
        "note: imbalanced training classes (3:1, largest 30 images); the rarest: b (10 images), "
        "c (12 images), a (30 images); balance auto: a class-balanced sampler (every class drawn "
        "equally often) (--balance none to train on the images as they come); the balanced "
        "accuracy (mean per-class recall) is reported beside top-1")
    near = class_balance("auto", torch.tensor([0] * 29 + [1] * 10 + [2] * 12), names)
    assert (near.method, near.note(), near.monitor("auto")) == ("none", None, "top1")
    assert near.sample_weights(labels) is None and near.loss_weights() is None
    # what each method hands the engine
    w = b.sample_weights(labels)
    assert [float(w[labels == c].sum()) for c in range(3)] == pytest.approx([1.0, 1.0, 1.0])
    weights = class_balance("weights", labels, names)
    assert weights.loss_weights().tolist() == pytest.approx([52 / 90, 52 / 30, 52 / 36])
    assert weights.sample_weights(labels) is None
    off = class_balance("none", labels, names)
    assert off.method == "none" and "balance none: nothing" in off.note()


def test_the_sampler_draws_every_class_about_equally_often() -> None:
    labels = torch.tensor([0] * 900 + [1] * 90 + [2] * 10)
    w = class_balance("auto", labels, ["a", "b", "c"]).sample_weights(labels)
    plan = plan_epoch(1000, "crop", epoch_generator(3, 0), pad=1, weights=w)
    drawn = torch.bincount(labels[plan.order], minlength=3).tolist()
    assert all(280 < n < 390 for n in drawn), drawn
    # without weights: the permutation as before (every image once)
    same = plan_epoch(1000, "crop", epoch_generator(3, 0), pad=1)
    assert sorted(same.order.tolist()) == list(range(1000))


def test_auto_trains_balanced_data_exactly_as_balance_none(tmp_path: Path) -> None:
    """Balanced data: auto leaves the recipe as it was and the run bit-identical to none."""
    base = {**TINY, "data": "synthetic:64x3x8x8:4", "iters": 6, "image_size": None}
    runs = {}
    for balance in ("auto", "none"):
        out = tmp_path / balance
        result = fit(load_recipe("fast", {**base, "balance": balance}), out, quiet=True)
        runs[balance] = (result, load_file(str(out / "model.safetensors")))
    (auto, wa), (none, wn) = runs["auto"], runs["none"]
    assert auto.test == none.test and auto.train == none.train
    assert all(torch.equal(wa[k], wn[k]) for k in wn)
    configs = {b: tomllib.loads((tmp_path / b / "config.toml").read_text()) for b in runs}
    assert configs["auto"].pop("balance") == "auto" and configs["auto"]["monitor"] == "auto"
    assert configs["none"].pop("balance") == "none" and configs["auto"] == configs["none"]


@pytest.mark.parametrize("balance", ["auto", "weights"])
def test_an_imbalanced_folder_is_said_balanced_and_scored_per_class(
        tmp_path: Path, capsys: pytest.CaptureFixture, balance: str) -> None:
    folder = imbalanced_folder(tmp_path / "f")
    out = tmp_path / "run"
    rc, err = run_cli(capsys, ["train", "--data", f"imagefolder:{folder}", "--out", out,
                               "--iters", "4", "--balance", balance,
                               *[f"--{k.replace('_', '-')}={str(v).lower()}"
                                 for k, v in TINY.items()]])
    assert rc == 0, err
    notes = [line for line in err if "imbalanced training classes" in line]
    # 4 of 36 held out, stratified: 3, 1 and none of k2's 4 (said in a note)
    assert len(notes) == 1 and "(5:1, largest 21 images)" in notes[0]
    assert "the rarest: k2 (4 images), k1 (7 images), k0 (21 images)" in notes[0]
    assert sum("class k2 (4 images) too small to hold out" in line for line in err) == 1
    assert f"balance {balance}: " + ("a class-balanced sampler" if balance == "auto"
                                     else "the loss weighted") in notes[0]
    assert f'balance = "{balance}"' in (out / "config.toml").read_text()
    rows = [json.loads(x) for x in (out / "metrics.jsonl").read_text().splitlines()]
    val = [r for r in rows if r.get("split") == "val"]
    assert val and all({"balanced", "macro_f1"} <= r.keys() for r in val)
    assert any("balanced" in line for line in err if line.startswith("epoch"))
    report = (out / "report.md").read_text()
    assert "| split | top-1 acc % | balanced acc % | macro-F1 % | top-1 err %" in report
    # eval: both figures in the text and, as the last keys, in --json
    assert main(["eval", str(out), "--split", "val", "--json"]) == 0
    ev = json.loads(capsys.readouterr().out)
    assert list(ev)[-2:] == ["balanced", "macro_f1"] and 0 <= ev["balanced"] <= 1
    assert main(["eval", str(out), "--split", "val"]) == 0
    assert "balanced accuracy" in capsys.readouterr().out


def test_class_figures_and_the_lost_class_warning() -> None:
    # 3 classes of 60 test images; class c is found 2 times of 60
    m = torch.tensor([[58, 2, 0], [3, 57, 0], [40, 18, 2]])
    f = ClassFigures.of(m)
    assert f.balanced == pytest.approx((58 / 60 + 57 / 60 + 2 / 60) / 3)
    p = [58 / 101, 57 / 77, 1.0]
    r = [58 / 60, 57 / 60, 2 / 60]
    assert f.macro_f1 == pytest.approx(sum(2 * a * b / (a + b) for a, b in zip(p, r)) / 3)
    assert f.lost_class_warning(["a", "b", "c"], 0.65) == (
        "class c has recall 0.03 (2 of 60) while top-1 is 65.0%: balanced accuracy 65.0% (if "
        "the training classes are imbalanced, see --balance)")
    two = ClassFigures.of(torch.tensor([[60, 0, 0, 0], [0, 60, 0, 0], [40, 18, 2, 0],
                                        [30, 30, 0, 0]]))
    assert two.lost_class_warning(["a", "b", "c", "d"], 0.6) == (
        "class d has recall 0.00 (0 of 60) (so do c) while top-1 is 60.0%: balanced accuracy "
        "50.8% (if the training classes are imbalanced, see --balance)")
    assert f.lost_class_warning(["a", "b", "c"], 0.45) is None  # top-1 does not look fine
    assert ClassFigures.of(torch.eye(3) * 5).lost_class_warning(["a", "b", "c"], 1.0) is None
    # a class absent from the split does not count (scikit-learn's balanced accuracy)
    assert ClassFigures.of(torch.tensor([[5, 0], [0, 0]])).balanced == 1.0


def test_a_class_too_small_to_hold_out_is_said(capsys: pytest.CaptureFixture) -> None:
    labels = torch.tensor([0] * 40 + [1] * 40 + [2] * 3)
    train, val = hold_out(labels, 8, 0, "imagefolder:f", ["a", "b", "rare"])
    assert torch.bincount(labels[val], minlength=3).tolist() == [4, 4, 0]
    err = capsys.readouterr().err
    assert err == ("note: class rare (3 images) too small to hold out any of the 8 validation "
                   "images of imagefolder:f: trained on, not validated (a larger --val-split, "
                   "or more images)\n")
    hold_out(labels, 30, 0, "imagefolder:f", ["a", "b", "rare"])
    assert capsys.readouterr().err == ""

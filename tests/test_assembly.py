"""One run assembly (reslab.engine.assembly): `reslab lr-find` starts its sweep from exactly what
`reslab train` starts training from. And one resume rule, for the library and the command line."""
from __future__ import annotations

from pathlib import Path

import pytest
import torch
from PIL import Image

from cli_helpers import clean_error
from reslab.engine import assembly, lr_find as lrf, run as run_module
from reslab.engine.recipe import load_recipe, save_recipe
from reslab.engine.rundir import RunDir, resumed_recipe
from reslab.errors import UserError
from reslab.weights.reading import open_weights

CPU = ["--workers", "0", "--device", "cpu", "--amp", "off", "--threads", "1"]
# The recipe both commands are given: its model (resnet20, shortcut A) is not the weights'
# (resnet8, shortcut B); 12 px images make adapt drop the flip and shrink the pad; the batch of
# 64 is halved for the small folder; a RandAugment-style policy and erasing on top.
RECIPE = """model = "resnet20"
data = "digits"
epochs = 1
batch_size = 64
image_size = 12
auto_augment = "trivialaugment"
erase = 0.25
adapt = true
channels_last = false
"""


@pytest.fixture(scope="module")
def weights(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A resnet8 with option-B shortcuts (not the recipe's model nor its layout), trained two
    steps on synthetic 3-channel images: its record holds their normalisation."""
    from reslab.cli import main

    out = tmp_path_factory.mktemp("weights") / "run"
    assert main(["train", "--model", "resnet8", "--shortcut", "B", "--data",
                 "synthetic:64x3x16x16:2", "--iters", "2", "--batch-size", "16", *CPU,
                 "--out", str(out), "--quiet"]) == 0
    return RunDir(out).weights


def _folder(root: Path) -> Path:
    """Two classes of 12 reddish 20x20 images: statistics far from the weights' own."""
    for c, name in enumerate(("a", "b")):
        (root / "train" / name).mkdir(parents=True)
        for i in range(12):
            colour = (200 + 4 * i, 10 * c, 30)
            Image.new("RGB", (20, 20), colour).save(root / "train" / name / f"{i}.png")
    return root


def _assembled(monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture,
               argv: list) -> assembly.Assembled:
    """What the command assembled, stopped right after the assembly."""
    seen = []

    def stop_after(*args, **kwargs):  # noqa: ANN002, ANN003, ANN202 (assemble's arguments)
        seen.append(assembly.assemble(*args, **kwargs))
        raise UserError("assembled")

    monkeypatch.setattr(run_module, "assemble", stop_after)
    monkeypatch.setattr(lrf, "assemble", stop_after)
    assert clean_error(capsys, argv) == "error: assembled"
    assert len(seen) == 1
    return seen[0]


def test_lr_find_and_train_with_weights_start_from_the_same_model_data_and_batch(
        weights, tmp_path, monkeypatch, capsys):
    folder = _folder(tmp_path / "images")
    (tmp_path / "r.toml").write_text(RECIPE)
    given = ["--recipe", tmp_path / "r.toml", "--data", f"imagefolder:{folder}", "--weights",
             weights, *CPU]
    train = _assembled(monkeypatch, capsys, ["train", *given, "--out", tmp_path / "run"])
    sweep = _assembled(monkeypatch, capsys, ["lr-find", *given, "--out", tmp_path / "lr.png"])
    assert not (tmp_path / "run").exists() and not (tmp_path / "lr.png").exists()

    # the model: the weights' architecture and layout, not the recipe's, with their values
    _, record = open_weights(str(weights))
    for start in (train, sweep):
        assert (start.recipe.model, start.recipe.shortcut) == ("resnet8", "B")
        assert start.model.block_options == train.model.block_options
    own, swept = train.model.state_dict(), sweep.model.state_dict()
    assert list(own) == list(swept)
    assert all(own[k].dtype == swept[k].dtype and torch.equal(own[k], swept[k]) for k in own)

    # the data: the weights' normalisation, the recipe's size, augmentation as adapted
    for start in (train, sweep):
        d = start.data
        assert (d.stats.mean, d.stats.std) == (list(record.preprocess.mean),
                                               list(record.preprocess.std))
        assert d.input_size == (3, 12, 12) and (d.augment, d.pad) == ("crop", 1)
        assert (d.auto_augment, d.erase) == ("trivialaugment", 0.25)
    assert train.data.class_names == sweep.data.class_names == ["a", "b"]
    assert train.data.num_examples("train") == sweep.data.num_examples("train")
    assert train.data.flip_alternate == sweep.data.flip_alternate

    # the batch: 64 halved to 8 for the folder's training images, in both
    assert train.batch_size == sweep.batch_size == 8
    assert train.notes[0] == sweep.notes[0] == (
        f"note: --weights {weights} holds a resnet8 (shortcut B): training that architecture "
        "(--model chooses another)")


def test_the_resume_rule_is_one_for_the_library_and_the_command_line(tmp_path, capsys):
    """The same field given to a resume: the same one error line from fit's rule and from
    `reslab train --resume`; machinery (threads) is taken, the rest kept as stored."""
    out = tmp_path / "run"
    out.mkdir()
    stored = load_recipe("demo", {"workers": 0})
    save_recipe(RunDir(out).config, stored)
    with pytest.raises(UserError) as library:
        resumed_recipe(RunDir(out), load_recipe("demo", {"lr": 0.5}))
    assert clean_error(capsys, ["train", "--resume", "--out", out, "--lr", "0.5"]) \
        == f"error: {library.value}" \
        == ("error: --resume continues the run with its stored config.toml; --lr cannot change "
            "it (start a new run with --overwrite or another --out)")
    machinery = load_recipe("demo", {"threads": 1, "lr": stored.lr})  # lr as stored: allowed
    assert resumed_recipe(RunDir(out), machinery) == stored.replace(threads=1,
                                                                    workers=machinery.workers)
    assert clean_error(capsys, ["train", "--resume", "--out", out, "--recipe", "demo"]) \
        == ("error: --resume continues the run with its stored config.toml; --recipe cannot "
            "change it (start a new run with --overwrite or another --out)")

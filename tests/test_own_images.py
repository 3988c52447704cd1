"""Your own images, end to end: folders without val/, defaults that fit the data,
pretrained torchvision weights from the hub cache, fine-tuning, per-class metrics, what a run
says before it starts."""
from __future__ import annotations

import json
import os
import sys
from pathlib import Path

import pytest
import torch
from safetensors.torch import load_file

from cli_helpers import clean_error, run_cli
from reslab.weights.checkpoint import load_checkpoint
from reslab.cli import build_parser, main
from reslab.data import load_data
from reslab.engine.loop import Run
from reslab.engine.recipe import load_recipe
from reslab.engine.setup import bf16_supported, build_optimizer, resolve_amp
from reslab.models import create_model

def cli(argv: list) -> int:
    return main([str(a) for a in argv])


sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "examples"))
from make_shapes import CLASSES, make_folder  # noqa: E402


@pytest.fixture(scope="module")
def folder(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return make_folder(tmp_path_factory.mktemp("own") / "photos", per_class=12)


@pytest.fixture(scope="module")
def hub(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A torch hub cache holding torchvision's resnet18 file (random weights, the real name)."""
    home = tmp_path_factory.mktemp("torch_home")
    (home / "hub" / "checkpoints").mkdir(parents=True)
    import torchvision

    torch.manual_seed(0)
    torch.save(torchvision.models.resnet18().state_dict(),
               home / "hub" / "checkpoints" / "resnet18-f37072fd.pth")
    return home


@pytest.fixture
def offline_hub(hub: Path, monkeypatch: pytest.MonkeyPatch) -> Path:
    monkeypatch.setenv("TORCH_HOME", str(hub))
    monkeypatch.setenv("RESLAB_OFFLINE", "1")
    return hub


# --- folders without val/ -------------------------------------------------------------------

def test_a_folder_without_val_holds_out_a_stratified_seeded_split(folder: Path) -> None:
    data = load_data(f"imagefolder:{folder}", val_split=None, workers=0, image_size=16)
    assert data.held_out == 4 and data.same_val_test  # 10% of 36, at least one per class
    val = data._items["val"]
    assert sorted({label for _, label in val}) == [0, 1, 2]  # every class is represented
    again = load_data(f"imagefolder:{folder}", val_split=None, workers=0, image_size=16)
    assert again._items["val"] == val  # same seed, same split
    other = load_data(f"imagefolder:{folder}", val_split=None, seed=1, workers=0, image_size=16)
    assert other._items["val"] != val
    six = load_data(f"imagefolder:{folder}", val_split=6, workers=0, image_size=16)
    assert sorted(label for _, label in six._items["val"]) == [0, 0, 1, 1, 2, 2]
    none = load_data(f"imagefolder:{folder}", val_split=0, workers=0, image_size=16)
    assert none.splits == ("train",) and none.held_out == 0


def test_train_predict_on_a_folder_without_val(folder: Path, tmp_path: Path,
                                               capsys: pytest.CaptureFixture) -> None:
    out = tmp_path / "run"
    rc, err = run_cli(capsys, ["train", "--recipe", "fast", "--model", "resnet20", "--data",
                               f"imagefolder:{folder}", "--epochs", "2", "--workers", "8",
                               "--device", "cpu", "--out", out])
    assert rc == 0, err
    start = err[0]
    assert start.startswith(f"training resnet20 (recipe fast) on imagefolder:{folder}: train 32,"
                            " val/test 4, 3 classes, 32x32x3; batch 8, 8 iterations (2 epochs)"
                            ), start
    assert f"-> {out}" in start and ("bf16" if bf16_supported("cpu") else "fp32") in start
    # --epochs was given, so only the batch (and with it the lr) fit the 32 images
    assert ("note: recipe fast adapted to the data: batch 8 (recipe 256) and lr 0.0125 (recipe "
            "0.4, scaled with the batch) for 32 training images") in err
    _, record = load_checkpoint(out)
    assert record.data.to_json() == {"spec": f"imagefolder:{folder}", "data_dir": None,
                                     "val_split": 4, "seed": 0}
    assert record.preprocess.input_size == (3, 32, 32)  # the CIFAR family's size, not 224
    assert (out / "best.safetensors").is_file()
    rows = [json.loads(x) for x in (out / "metrics.jsonl").read_text().splitlines()]
    assert {r["split"] for r in rows if "split" in r} == {"train", "val", "test"}
    assert "batch_size = 8" in (out / "config.toml").read_text()  # what ran is what resumes
    image = next((folder / "train" / "square").iterdir())
    assert cli(["predict", out, image, "--json"]) == 0
    assert json.loads(capsys.readouterr().out)["predictions"][0]["top"][0]["class"] in CLASSES


def test_val_split_0_trains_without_evaluation(folder: Path, tmp_path: Path) -> None:
    out = tmp_path / "run"
    assert cli(["train", "--recipe", "fast", "--model", "resnet20", "--data",
                f"imagefolder:{folder}", "--val-split", "0", "--epochs", "1", "--quiet",
                "--batch-size", "16", "--workers", "0", "--out", out]) == 0
    assert (out / "model.safetensors").is_file() and (out / "report.md").is_file()
    rows = [json.loads(x) for x in (out / "metrics.jsonl").read_text().splitlines()]
    assert {r.get("split") for r in rows} == {None, "train"}


def test_unreadable_files_are_one_warning_line_each_and_named_in_the_report(
        folder: Path, tmp_path: Path, capsys: pytest.CaptureFixture) -> None:
    import shutil

    root = tmp_path / "photos"
    shutil.copytree(folder, root)
    broken = root / "train" / "circle" / "broken.png"
    broken.write_bytes(b"not an image")
    out = tmp_path / "run"
    rc, err = run_cli(capsys, ["train", "--recipe", "fast", "--model", "resnet20", "--data",
                               f"imagefolder:{root}", "--epochs", "1", "--batch-size", "16",
                               "--workers", "0", "--quiet", "--out", out])
    assert rc == 0
    assert err == [f"warning: cannot read image '{broken}': cannot identify image file "
                   f"'{broken}' (skipped)"]
    summary = json.loads((out / "summary.json").read_text())
    assert summary["skipped"] == [str(broken)]
    assert f"1 unreadable image skipped ({broken})" in (out / "report.md").read_text()


def test_defaults_fit_the_data_and_the_machine() -> None:
    r = load_recipe("fast", {"data": "imagefolder:/x", "model": "resnet18"})
    assert Run._image_size(r) == 224
    assert Run._image_size(r.replace(model="resnet56")) == 32
    assert Run._image_size(r.replace(image_size=48)) == 48
    assert Run._image_size(r.replace(data="digits")) is None  # in-memory: native size
    assert Run._fit_workers(r.replace(workers=64)).workers == len(os.sched_getaffinity(0))
    assert resolve_amp("auto", torch.device("cpu")) == (
        torch.bfloat16 if bf16_supported("cpu") else None)
    assert resolve_amp("off", torch.device("cpu")) is None


# --- pretrained weights ---------------------------------------------------------------------

def test_torchvision_weights_offline_without_the_file_is_one_clear_error(
        tmp_path: Path, monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture) -> None:
    monkeypatch.setenv("TORCH_HOME", str(tmp_path / "empty"))
    monkeypatch.setenv("RESLAB_OFFLINE", "1")
    cache = tmp_path / "empty" / "hub" / "checkpoints"
    expected = ("error: pretrained weights resnet18.IMAGENET1K_V1 are not in the torch hub cache "
                "and could not be downloaded (RESLAB_OFFLINE=1): put resnet18-f37072fd.pth (from "
                "https://download.pytorch.org/models/resnet18-f37072fd.pth) in "
                f"{cache} (or set TORCH_HOME to a cache that has it)")
    assert clean_error(capsys, ["import", "torchvision:resnet18", "--out",
                                tmp_path / "r.safetensors"]) == expected
    assert clean_error(capsys, ["train", "--recipe", "finetune", "--data", "digits", "--weights",
                                "torchvision:resnet18", "--out", tmp_path / "run"]) == expected
    assert clean_error(capsys, ["import", "torchvision:resnet21", "--out", tmp_path / "x"]) == \
        "error: unknown torchvision model 'resnet21' (closest: resnet18, resnet152, resnet101)"


def test_import_torchvision_weights_brings_classes_and_preprocessing(
        offline_hub: Path, tmp_path: Path, capsys: pytest.CaptureFixture) -> None:
    out = tmp_path / "r18.safetensors"
    assert cli(["import", "torchvision:resnet18", "--out", out]) == 0
    model, record = load_checkpoint(out)
    assert record.architecture == "resnet18" and len(record.class_names) == 1000
    assert record.class_names[:2] == ("tench", "goldfish")
    pre = record.preprocess
    assert pre.mean == (0.485, 0.456, 0.406) and pre.std == (0.229, 0.224, 0.225)
    assert pre.input_size == (3, 224, 224) and pre.crop_fraction == 224 / 256
    cached = torch.load(offline_hub / "hub" / "checkpoints" / "resnet18-f37072fd.pth",
                        weights_only=True)
    assert all(torch.equal(cached[k], v) for k, v in model.state_dict().items())


def test_finetune_from_torchvision_on_own_images(
        offline_hub: Path, folder: Path, tmp_path: Path, capsys: pytest.CaptureFixture) -> None:
    out = tmp_path / "ft"
    rc, err = run_cli(capsys, ["train", "--recipe", "finetune", "--weights",
                               "torchvision:resnet18", "--data", f"imagefolder:{folder}",
                               "--image-size", "32", "--epochs", "2", "--freeze-epochs", "1",
                               "--workers", "0", "--out", out])
    assert rc == 0, err
    assert "head replaced: torchvision:resnet18 has 1000 classes, the model 3; fc is freshly " \
           "initialised for fine-tuning" in err
    assert "note: normalising with the mean/std the weights were trained with " \
           "(torchvision:resnet18)" in err
    _, record = load_checkpoint(out)
    assert record.preprocess.mean == (0.485, 0.456, 0.406)
    assert record.class_names == CLASSES
    assert cli(["eval", out, "--json"]) == 0
    result = json.loads(capsys.readouterr().out)
    assert [r["class"] for r in result["per_class"]] == list(CLASSES)
    assert sum(r["support"] for r in result["per_class"]) == result["n"] == 4


def test_freeze_epochs_trains_only_the_head(tmp_path: Path) -> None:
    """While frozen the body's weights AND its BN statistics stay exactly as loaded."""
    from reslab.engine.loop import fit

    src = tmp_path / "src.safetensors"
    torch.manual_seed(1)
    from cli_helpers import legacy_record
    from reslab.weights.record import save_weights

    save_weights(src, create_model("resnet20", num_classes=10, in_chans=1), legacy_record({
        "architecture": "resnet20", "kwargs": {"num_classes": 10, "in_chans": 1},
        "class_names": list("0123456789"), "mean": [0.5], "std": [0.5], "input_size": [1, 8, 8]}))
    r = load_recipe("finetune", {"model": "resnet20", "data": "digits", "weights": str(src),
                                 "epochs": 1, "freeze_epochs": 1, "workers": 0, "device": "cpu"})
    fit(r, tmp_path / "run", quiet=True)
    before, after = load_file(str(src)), load_file(str(tmp_path / "run" / "model.safetensors"))
    body = [k for k in before if not k.startswith("fc.") and k != "reslab.mean_image"]
    assert all(torch.equal(before[k], after[k]) for k in body if "num_batches" not in k)
    assert not torch.equal(before["fc.weight"], after["fc.weight"])
    opt = build_optimizer(r, create_model("resnet20", num_classes=10, in_chans=1))
    assert [g["head"] for g in opt.param_groups] == [False, False, True, True]


def test_grow_then_finetune_keeps_the_accuracy(tmp_path: Path, capsys: pytest.CaptureFixture
                                               ) -> None:
    """docs/guides/finetune.md: demo -> grow to resnet56 -> 2 epochs of the finetune recipe."""
    demo, grown, tuned = tmp_path / "demo", tmp_path / "r56.safetensors", tmp_path / "r56"
    assert cli(["train", "--recipe", "demo", "--out", demo, "--quiet"]) == 0
    assert cli(["grow", demo, "--to", "resnet56", "--out", grown]) == 0
    assert cli(["train", "--recipe", "finetune", "--model", "resnet56", "--data", "digits",
                "--weights", grown, "--epochs", "2", "--augment", "crop", "--pad", "1",
                "--quiet", "--out", tuned]) == 0
    capsys.readouterr()
    assert cli(["eval", tuned, "--json"]) == 0
    assert json.loads(capsys.readouterr().out)["top1"] >= 0.98


# --- saying what will happen ----------------------------------------------------------------

def test_version_and_help_with_choices_ranges_and_defaults(capsys: pytest.CaptureFixture
                                                            ) -> None:
    with pytest.raises(SystemExit):
        build_parser().parse_args(["--version"])
    assert capsys.readouterr().out.strip() == "reslab 0.2.0"
    text = build_parser()._subparsers._group_actions[0].choices["train"].format_help()
    text = " ".join(text.split())
    # the defaults of the recipe `reslab train` runs without flags: the demo
    assert ("optimizer (muon: Muon's orthogonalised steps for the conv filters, SGD for the "
            "rest, as airbench94_muon); choices: sgd, adamw, muon (default sgd from recipe "
            "demo)") in text
    assert "images per forward/backward pass: per optimizer step, unless accumulate adds up " \
           "several (clamped to the training set, with a note); range 1..65,536 (default 64 " \
           "from recipe demo)" in text
    assert "choices: auto, off, bf16, fp16 (default off from recipe demo)" in text
    assert "range [0, 1) (default 0.0, built in)" in text  # ema: not in the demo's file
    assert "recipe field lr" not in text  # the old, empty help


def test_a_forgotten_data_flag_is_said(tmp_path: Path, capsys: pytest.CaptureFixture) -> None:
    from reslab.cli.train import resolve

    args = build_parser().parse_args(["train", "--model", "resnet20", "--out", "x"])
    assert resolve(args).data == "fashion-mnist"
    assert capsys.readouterr().err.strip() == \
        "note: no --data given: training on fashion-mnist, the dataset of recipe fast"


def test_a_folder_too_small_to_hold_out_says_it_was_not_evaluated(
        tmp_path: Path, capsys: pytest.CaptureFixture) -> None:
    root = make_folder(tmp_path / "tiny", per_class=1)
    rc, err = run_cli(capsys, ["train", "--recipe", "fast", "--model", "resnet20", "--data",
                               f"imagefolder:{root}", "--epochs", "1", "--workers", "0",
                               "--out", tmp_path / "run"])
    assert rc == 0 and "nan" not in " ".join(err)
    assert err[-1].endswith("not evaluated (no validation or test images); run directory "
                            f"{tmp_path / 'run'}")


# --- how images become the input: the resize field and the start-up note ---------------------

def test_resize_crop_squish_pad() -> None:
    """A 50x20 image, left fifth red, rest green, as a 16x16 input (crop fraction 1)."""
    from PIL import Image

    from reslab.data.images import eval_geometry, pil_to_uint8

    img = Image.new("RGB", (50, 20), (0, 200, 0))
    img.paste((200, 0, 0), (0, 0, 10, 20))
    out = {how: pil_to_uint8(eval_geometry(img, (16, 16), 1.0, how)).float()
           for how in ("crop", "squish", "pad")}
    assert all(x.shape == (3, 16, 16) for x in out.values())
    assert out["crop"][0].max() < 50  # the centre cut lost the red fifth
    assert out["squish"][0, :, 0].min() > 150 and out["squish"][1, :, -1].min() > 150
    # pad: the whole image, 16x6 (6.4 rounded), centred; 5 black rows above, 5 below
    assert out["pad"][:, :5].max() == 0 and out["pad"][:, 11:].max() == 0
    assert out["pad"][0, 8, 0] > 150 and out["pad"][1, 8, -1] > 150


def test_the_preparation_note_says_what_happens_to_the_images() -> None:
    from reslab.data.loaders import preparation_note

    headers = [("RGB", (32, 32))] * 7 + [("L", (32, 32)), ("RGB", (50, 20)), ("RGB", (100, 88))]
    assert preparation_note(headers, 3, 32, 0.875, "crop") == (
        "note: training images: 1 of 10 are grayscale, converted to RGB like the others; "
        "2 of 10 are not square: resized to 37 px on the shorter side and centre-cropped to "
        "32x32 (a 50x20 image loses 65% of its width; --resize squish or pad keeps whole "
        "images)")
    assert preparation_note(headers[:7] + [("RGB", (512, 600))], 3, 32, 1.0, "pad") == (
        "note: training images: 1 of 8 are over 4x the 32 px input, downscaled (--image-size "
        "trains larger); 1 of 8 are not square: fitted inside 32x32 with black borders "
        "(--resize pad)")
    assert preparation_note([("L", (28, 28))] * 3, 1, 32, 1.0, "crop") is None


def test_resize_is_recorded_and_used_by_predict(folder: Path, tmp_path: Path,
                                                capsys: pytest.CaptureFixture) -> None:
    from PIL import Image

    from reslab.data.images import preprocess
    from reslab.deploy.predict import prepare_decoded
    from reslab.weights.record import Preprocess

    out = tmp_path / "run"
    rc, err = run_cli(capsys, ["train", "--data", f"imagefolder:{folder}", "--model", "resnet8",
                               "--image-size", "16", "--iters", "2", "--resize", "pad",
                               "--workers", "0", "--device", "cpu", "--out", out])
    assert rc == 0, err
    assert sum(line.startswith("note: training images:") for line in err) == 1
    _, record = load_checkpoint(out)
    pre = record.preprocess
    assert pre.resize == "pad" and pre.to_json()["resize"] == "pad"
    assert "resize" not in Preprocess((3, 8, 8), (0.5,) * 3, (0.2,) * 3).to_json()
    img = Image.new("RGB", (40, 10), (250, 250, 250))
    want = preprocess([img], 3, pre.input_size, pre.mean, pre.std,
                      crop_fraction=pre.crop_fraction, resize="pad")
    assert torch.equal(prepare_decoded(record, [img]), want)

"""Looking at the data and the model's mistakes: `predict` on folders and glob patterns with
--csv (timm's inference.py), `show-batch` (fastai's show_batch), `eval --top-losses` (fastai's
plot_top_losses)."""
from __future__ import annotations

import csv
import json
import shutil
import sys
from pathlib import Path

import pytest
import torch
import torch.nn.functional as F
from PIL import Image

from cli_helpers import clean_error, run_cli
from reslab.engine.tta import tta_model
from reslab.weights.checkpoint import load_checkpoint
from reslab.data import load_data

sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "examples"))
from make_shapes import CLASSES, make_folder  # noqa: E402


@pytest.fixture(scope="module")
def shapes(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """train/ (8 per class) and val/ (4 per class) of the shapes folder."""
    root = make_folder(tmp_path_factory.mktemp("shapes") / "photos", per_class=8)
    other = make_folder(tmp_path_factory.mktemp("shapes_val"), per_class=4, seed=1)
    shutil.move(other / "train", root / "val")
    return root


@pytest.fixture(scope="module")
def ckpt(shapes: Path, tmp_path_factory: pytest.TempPathFactory) -> Path:
    out = tmp_path_factory.mktemp("run") / "run"
    from reslab.cli import main

    assert main(["train", "--recipe", "fast", "--model", "resnet8", "--data",
                 f"imagefolder:{shapes}", "--image-size", "16", "--epochs", "2",
                 "--batch-size", "8", "--workers", "0", "--device", "cpu", "--quiet",
                 "--out", str(out)]) == 0
    return out


# --- predict on folders and patterns, --csv --------------------------------------------------

def _json(capsys: pytest.CaptureFixture, argv: list) -> tuple[dict, list[str]]:
    """Runs argv in-process: its JSON on stdout and its stderr lines."""
    from reslab.cli import main

    rc = main([str(a) for a in argv])
    out, err = capsys.readouterr()
    assert rc == 0, err
    return json.loads(out), err.splitlines()


def _csv(path: Path) -> list[dict[str, str]]:
    with open(path, newline="") as f:
        return list(csv.DictReader(f))


def test_predict_a_folder_writes_csv_and_agrees_with_eval(ckpt, shapes, tmp_path, capsys):
    table = tmp_path / "preds.csv"
    rc, err = run_cli(capsys, ["predict", ckpt, shapes / "val", "--csv", table, "--topk", "2",
                               "--device", "cpu"])
    assert rc == 0 and err == [f"wrote {table}"]
    rows = _csv(table)
    files = sorted(str(p) for p in (shapes / "val").rglob("*") if p.is_file())
    assert [r["file"] for r in rows] == files  # recursively, sorted
    assert list(rows[0]) == ["file", "class_1", "prob_1", "class_2", "prob_2"]
    assert all(r["class_1"] in CLASSES and 1 >= float(r["prob_1"]) >= float(r["prob_2"])
               for r in rows)
    result, _ = _json(capsys, ["eval", ckpt, "--json", "--device", "cpu"])  # test = val/
    hits = sum(r["class_1"] == Path(r["file"]).parent.name for r in rows)
    assert result["n"] == len(rows) == 12 and hits / len(rows) == result["top1"]


def test_predict_csv_dash_writes_the_csv_to_stdout(ckpt, shapes, tmp_path, capsys,
                                                  monkeypatch):
    """`--csv -` means stdout, as `-` does everywhere: the CSV goes there in place of the text
    table (a file named `-` was written); with --json, which also owns stdout, it is refused."""
    from reslab.cli import main

    monkeypatch.chdir(tmp_path)
    table = tmp_path / "preds.csv"
    argv = ["predict", ckpt, shapes / "val", "--topk", "2", "--device", "cpu"]
    assert main([str(a) for a in [*argv, "--csv", table]]) == 0
    capsys.readouterr()
    assert main([str(a) for a in [*argv, "--csv", "-"]]) == 0
    out, err = capsys.readouterr()
    assert out == table.read_text() and err == "" and not (tmp_path / "-").exists()
    assert clean_error(capsys, [*argv, "--csv", "-", "--json"]) == (
        "error: --csv - and --json both write to stdout: give --csv FILE, or one of them")


def test_predict_a_glob_pattern_and_files_keep_their_order(ckpt, shapes, tmp_path, capsys):
    pattern = str(shapes / "val" / "**" / "*.png")
    report, _ = _json(capsys, ["predict", ckpt, pattern, "--json", "--device", "cpu"])
    got = [p["file"] for p in report["predictions"]]
    assert got == sorted(str(p) for p in (shapes / "val").rglob("*.png")) and got
    one = next((shapes / "val" / "square").iterdir())
    report, _ = _json(capsys, ["predict", ckpt, one, str(shapes / "val" / "circle" / "*"),
                               "--json", "--device", "cpu"])
    got = [p["file"] for p in report["predictions"]]
    assert got == [str(one)] + sorted(str(p) for p in (shapes / "val" / "circle").iterdir())


def test_predict_paths_that_name_no_image_are_clean_errors(ckpt, tmp_path, capsys):
    empty = tmp_path / "empty"
    (empty / ".hidden").mkdir(parents=True)
    Image.new("RGB", (8, 8)).save(empty / ".hidden" / "x.png")
    (empty / "notes.txt").write_text("not an image")
    assert clean_error(capsys, ["predict", ckpt, empty]) == (
        f"error: no image files in folder '{empty}' (extensions PIL reads: .png, .jpg, ...)")
    assert clean_error(capsys, ["predict", ckpt, str(tmp_path / "*.jpg")]) == (
        f"error: no image files in pattern '{tmp_path / '*.jpg'}' (extensions PIL reads: "
        ".png, .jpg, ...)")
    line = clean_error(capsys, ["predict", ckpt, empty / "notes.txt", "--csv",
                                empty / "notes.txt" / "out.csv"])
    assert line.startswith("error: cannot write --csv") and "is not a directory" in line
    image = tmp_path / "photo" / "a.png"  # --csv over an image it reads: refused
    image.parent.mkdir()
    Image.new("RGB", (8, 8)).save(image)
    assert clean_error(capsys, ["predict", ckpt, image.parent, "--csv", image]) == (
        f"error: cannot write --csv {image}: it is the input {image}, which the output would "
        "replace; write it elsewhere")


# --- eval --top-losses -----------------------------------------------------------------------

def test_top_losses_are_the_largest_per_image_losses(ckpt, tmp_path, capsys):
    figure = tmp_path / "worst.png"
    result, err = _json(capsys, ["eval", ckpt, "--top-losses", "4", figure, "--json",
                                 "--device", "cpu"])
    assert err == [f"wrote {figure} (the 4 images of largest loss)"]
    assert Image.open(figure).size[0] > 300
    worst = result["top_losses"]
    # independently: every test image's loss, as eval prepares and scores it
    model, record = load_checkpoint(ckpt)
    pre = record.preprocess
    data = load_data(record.data.spec, stats=pre.stats(), image_size=pre.input_size[-1],
                     augment="none", workers=0)
    with torch.no_grad():
        batches = list(data.eval_batches("test", 64, "cpu"))
        # the record's views: fast's mirror and, since it adopted them, 1 px translations
        views = tta_model(model, flip=pre.tta_flip, translate=pre.tta_translate)
        logits = torch.cat([views(x) for x, _ in batches])
    y = torch.cat([y for _, y in batches])
    losses = F.cross_entropy(logits, y, reduction="none")
    order = torch.sort(losses, descending=True, stable=True).indices[:4]
    assert [w["index"] for w in worst] == order.tolist()
    assert [w["loss"] for w in worst] == pytest.approx(losses[order].tolist(), rel=1e-5)
    probs = logits.softmax(1)
    assert [w["predicted"] for w in worst] == [CLASSES[i] for i in probs[order].argmax(1)]
    assert [w["class"] for w in worst] == [CLASSES[i] for i in y[order]]
    assert [w["class_prob"] for w in worst] == pytest.approx(
        probs[order, y[order]].tolist(), rel=1e-5)


def test_top_losses_bad_options(ckpt, tmp_path, capsys):
    assert clean_error(capsys, ["eval", ckpt, "--top-losses", "4", tmp_path / "w.png",
                                "--crops", "10"]) == (
        "error: --top-losses is computed on the centre view: drop --crops 10/--scales, or "
        "evaluate twice")
    assert clean_error(capsys, ["eval", ckpt, "--top-losses", "many", tmp_path / "w.png"]) == (
        "error: invalid --top-losses N 'many': expected a number of images, e.g. "
        "--top-losses 16 worst.png")
    assert clean_error(capsys, ["eval", ckpt, "--top-losses", "0", tmp_path / "w.png"]) == (
        "error: invalid --top-losses N 0: must be between 1 and 400")


# --- show-batch ------------------------------------------------------------------------------

def test_show_batch_draws_the_first_step_as_the_loop_trains_on_it():
    from reslab.analysis.show_batch import training_images
    from reslab.engine.loop import Run, train_view
    from reslab.engine.recipe import load_recipe

    # 1,600 iterations (nothing is trained): long enough to keep progressive resizing
    r = load_recipe("fast", {"model": "resnet8", "data": "synthetic:64x1x28x28:4",
                             "batch_size": 8, "epochs": 200, "workers": 0, "device": "cpu"})
    shown = training_images(r, 10)  # two steps of 8
    assert len(shown.images) == len(shown.titles) == 10 and shown.side == 12  # 0.43 of 28
    run = Run(r, None, quiet=True)
    batches = run.data.train_batches(0, 8, run.device, seed=0)
    x, y = train_view(run, 0, *next(batches))
    assert torch.allclose(torch.stack(shown.images[:8]),
                          run.data.normalize.invert(x).clamp(0, 1))
    assert shown.titles[:8] == [run.data.class_names[i] for i in y]
    assert shown.images[9].shape == (1, 12, 12)


def test_show_batch_cli_with_mixup_titles_both_classes(tmp_path, capsys):
    from reslab.analysis.show_batch import target_title

    figure = tmp_path / "batch.png"
    rc, err = run_cli(capsys, ["show-batch", "--model", "resnet8", "--data",
                               "synthetic:64x3x16x16:4", "--mixup", "0.4", "--out", figure,
                               "--n", "6", "--workers", "0", "--device", "cpu"])
    assert rc == 0 and err[-1] == f"wrote {figure} (6 training images)"
    assert Image.open(figure).size[0] > 300
    assert target_title(torch.tensor([0.0, 0.7, 0.3, 0.0]), ["a", "b", "c", "d"]) == \
        "b 0.70 + c 0.30"
    assert target_title(torch.tensor(2), ["a", "b", "c"]) == "c"
    assert clean_error(capsys, ["show-batch", "--out", figure, "--n", "0"]) == \
        "error: invalid --n 0: must be between 1 and 256"

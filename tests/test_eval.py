"""`reslab eval`: the run's own data and statistics, 10-crop and multi-scale modes, errors."""
import json

import pytest

from reslab.cli import main
from reslab.engine.checkpoint_eval import evaluate_checkpoint
from reslab.engine.loop import fit
from reslab.engine.recipe import load_recipe


DATA = "synthetic:512x3x16x16:10"  # 4x cheaper than the default 32x32; still 128 test images


@pytest.fixture(scope="module")
def run_dir(tmp_path_factory):
    out = tmp_path_factory.mktemp("run")
    fit(load_recipe("fast", {"model": "resnet20", "data": DATA, "epochs": 2,
                             "batch_size": 32, "device": "cpu", "amp": "off",
                             "channels_last": False, "tta_flip": False}), out, quiet=True)
    return out


def test_eval_matches_the_runs_final_test_score(run_dir, capsys):
    assert main(["eval", str(run_dir), "--json", "--device", "cpu"]) == 0
    result = json.loads(capsys.readouterr().out)
    final = json.loads((run_dir / "summary.json").read_text())["test"]
    assert result["n"] == final["n"] == 128
    assert result["top1"] == pytest.approx(final["top1"])
    assert result["loss"] == pytest.approx(final["loss"], rel=1e-5)
    assert {"top1", "top5", "loss", "n"} <= result.keys()


def test_ten_crop_and_multiscale_modes_score_every_image(run_dir):
    ten = evaluate_checkpoint(run_dir, crops=10, device="cpu")
    multi = evaluate_checkpoint(run_dir, scales=[16, 20], device="cpu")
    for r in (ten, multi):
        assert r.n == 128 and 0 <= r.top1 <= r.top5 <= 1


def test_eval_writes_a_confusion_matrix_and_per_class_metrics(run_dir, tmp_path, capsys):
    png = tmp_path / "cm.png"
    assert main(["eval", str(run_dir), "--device", "cpu", "--confusion", str(png),
                 "--json"]) == 0
    result = json.loads(capsys.readouterr().out)
    assert png.stat().st_size > 1000
    cm, rows = result["confusion"], result["per_class"]
    # the JSON's layout is a contract: keys in this order (per-class and confusion: centre view)
    assert list(result) == ["ckpt", "data", "split", "crops", "scales", "flip", "translate",
                            "num_classes", "trained_augment", "top1", "top5", "loss", "n",
                            "per_class", "confusion", "runtime", "runtime_note", "balanced",
                            "macro_f1", "wrote"]
    assert list(rows[0]) == ["class", "precision", "recall", "f1", "support"]
    assert sum(map(sum, cm)) == result["n"] == 128
    for i, row in enumerate(rows):  # the per-class numbers are the matrix's
        assert row["support"] == sum(cm[i])
        assert row["recall"] == pytest.approx(cm[i][i] / max(sum(cm[i]), 1))
        predicted = sum(r[i] for r in cm)
        assert row["precision"] == pytest.approx(cm[i][i] / predicted if predicted else 0)
    assert sum(cm[i][i] for i in range(len(cm))) / 128 == pytest.approx(result["top1"])
    present = [r for r in rows if r["support"]]  # the balanced figures are scikit-learn's too
    assert result["balanced"] == pytest.approx(sum(r["recall"] for r in present) / len(present))
    assert result["macro_f1"] == pytest.approx(sum(r["f1"] for r in present) / len(present))


@pytest.mark.parametrize("args, message", [
    (["--split", "val"], f"error: split 'val' not available for {DATA} (available: train, "
                         "test; val needs --val-split in training)"),
    (["--data", "digits"], "error: digits has 1-channel images but the model takes 3"),
    (["--scales", "a,b"], "error: invalid --scales 'a,b': expected sizes like 224,256,384"),
])
def test_eval_errors(run_dir, capsys, args, message):
    code = main(["eval", str(run_dir), "--device", "cpu", *args])
    err = capsys.readouterr().err
    assert code == 2 and err.startswith(message) and len(err.strip().splitlines()) == 1

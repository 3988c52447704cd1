"""The learning-rate range test (reslab.engine.lr_find, `reslab lr-find`): the geometric sweep,
the smoothed loss, the stop rule, the suggestion, the plot, bad flags."""
from __future__ import annotations

import contextlib
import io
import json
import math
import os
import re
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from cli_helpers import clean_error, run_cli
from reslab.cli import main
from reslab.engine import lr_find as lrf
from reslab.engine.recipe import load_recipe

START, END, ITERS = 1e-6, 10.0, 60
FAST = ["--amp", "off", "--channels-last", "false", "--workers", "0", "--device", "cpu",
        "--threads", "1", "--batch-size", "32"]


def _smoothed(losses: list[float], beta: float = 0.98) -> list[float]:
    """The bias-corrected EMA written out: (1-beta) sum_j beta^(i-j) loss_j / (1-beta^(i+1))."""
    return [(1 - beta) * sum(beta ** (i - j) * losses[j] for j in range(i + 1))
            / (1 - beta ** (i + 1)) for i in range(len(losses))]


@pytest.fixture(scope="module")
def sweep(tmp_path_factory: pytest.TempPathFactory) -> tuple[dict, Path, str]:
    """One real sweep through the command line: resnet20 on 256 synthetic 16x16 images with
    4 classes, run from an empty directory (to see that nothing else is written there).
    Returns (the JSON object, the directory, stderr)."""
    root = tmp_path_factory.mktemp("lr-find")
    out, err, here = io.StringIO(), io.StringIO(), os.getcwd()
    os.chdir(root)
    try:
        with contextlib.redirect_stdout(out), contextlib.redirect_stderr(err):
            rc = main(["lr-find", "--model", "resnet20", "--data", "synthetic:256x3x16x16:4",
                       *FAST, "--start-lr", str(START), "--end-lr", str(END), "--iters",
                       str(ITERS), "--max-seconds", "0", "--out", "plot.png", "--json",
                       "--quiet"])
    finally:
        os.chdir(here)
    assert rc == 0, err.getvalue()
    return json.loads(out.getvalue()), root, err.getvalue()


def test_json_is_one_object_and_only_the_plot_is_written(sweep):
    result, root, err = sweep
    assert isinstance(result, dict) and err == ""
    assert {"suggestion", "lrs", "losses", "smoothed", "stopped", "stop_lr", "out"} <= set(result)
    assert result["out"] == "plot.png" and result["model"] == "resnet20"
    assert sorted(p.name for p in root.iterdir()) == ["plot.png"]  # no run directory, no weights
    with Image.open(root / "plot.png") as img:
        assert img.format == "PNG" and img.size[0] > 300


def test_lrs_grow_geometrically_from_start_to_end(sweep):
    result, _, _ = sweep
    lrs = result["lrs"]
    assert lrs[0] == pytest.approx(START) and result["steps"] == len(lrs) >= 10
    ratio = (END / START) ** (1 / (ITERS - 1))
    assert np.allclose(np.array(lrs[1:]) / np.array(lrs[:-1]), ratio, rtol=1e-9)
    assert lrs == lrf.sweep_lrs(START, END, ITERS)[:len(lrs)]
    assert lrf.sweep_lrs(START, END, ITERS)[-1] == pytest.approx(END)


def test_smoothed_loss_is_finite_and_bias_corrected(sweep):
    result, _, _ = sweep
    assert all(math.isfinite(v) for v in result["losses"] + result["smoothed"])
    assert result["beta"] == lrf.smoothing(ITERS) == pytest.approx(1 - 1 / 7.5)
    assert result["smoothed"] == pytest.approx(_smoothed(result["losses"], result["beta"]),
                                               rel=1e-9)


def test_it_stops_where_the_loss_blows_up_and_suggests_an_lr_below(sweep):
    result, _, _ = sweep
    smoothed = result["smoothed"]
    # an lr of 10 diverges: the sweep ends at the first smoothed loss above 4x the lowest so far
    assert result["stopped"] == "diverged" and result["stop_lr"] == result["lrs"][-1] < END
    assert smoothed[-1] > 4 * min(smoothed)
    assert all(s <= 4 * min(smoothed[:i + 1]) for i, s in enumerate(smoothed[:-1]))
    assert START <= result["suggestion"] <= result["min_loss_lr"] < result["stop_lr"]
    i = result["suggestion_index"]
    assert result["lrs"][i] == result["suggestion"] and i >= ITERS // 10


def test_steepest_descent_before_the_lowest_loss():
    """A slow decline, a steep stretch, the minimum, then a spike that partly recovers (a steeper
    descent, but past the minimum): the suggestion is the steep stretch before the minimum."""
    lrs = lrf.sweep_lrs(1e-5, 10.0, 60)
    curve = [2.0 - 0.005 * i for i in range(30)]          # slow decline, steps 0..29
    curve += [curve[-1] - 0.1 * (i + 1) for i in range(5)]  # steepest before the minimum: 30..34
    curve += [curve[-1] - 0.01 * (i + 1) for i in range(5)]  # minimum at step 39
    curve += [3.0, 3.5, 3.0, 2.0, 1.5, 1.45]                 # spike, steep partial recovery
    assert lrf.steepest(lrs, curve, skip_begin=6) in range(30, 36)
    assert lrf.steepest(lrs, [1.0, 1.1, 1.2, 1.3, 1.4], skip_begin=0) is None  # never falls
    assert lrf.steepest(lrs, curve[:8], skip_begin=6) is None  # too few steps left


def test_smoothed_loss_of_a_constant_is_that_constant():
    """The bias correction: without it the average would start at (1 - beta) * loss."""
    ema = lrf.SmoothedLoss()
    assert [ema.update(2.5) for _ in range(5)] == pytest.approx([2.5] * 5)


def _scripted(monkeypatch: pytest.MonkeyPatch, losses: list[float]) -> list[float]:
    """Replaces the training step by one that reports the given losses (checking each as the
    engine does) and records the lr it was called with."""
    seen: list[float] = []

    def step(forward, optimizer, scaler, x, y, *, check_loss, **_):
        value = losses[len(seen)]
        seen.append(optimizer.param_groups[0]["lr"])
        check_loss(value)
        return value, None

    monkeypatch.setattr(lrf, "sgd_step", step)
    return seen


RECIPE = {"model": "resnet20", "data": "synthetic:64x3x8x8:4", "batch_size": 16, "workers": 0,
          "device": "cpu", "channels_last": False}


def test_the_4x_rule_and_a_non_finite_loss(monkeypatch):
    recipe = load_recipe("demo", RECIPE)
    falling_then_rising = [2.0 - 0.03 * i for i in range(40)] + [1.0 * 1.5 ** i
                                                                  for i in range(1, 40)]
    seen = _scripted(monkeypatch, falling_then_rising)
    result = lrf.lr_find(recipe, start_lr=1e-4, end_lr=1.0, iters=79)
    smoothed = _smoothed(falling_then_rising, result["beta"])
    first = next(i for i, s in enumerate(smoothed) if s > 4 * min(smoothed[:i + 1]))
    assert result["stopped"] == "diverged" and result["steps"] == first + 1
    assert seen == result["lrs"] == lrf.sweep_lrs(1e-4, 1.0, 79)[:first + 1]

    seen = _scripted(monkeypatch, [2.0] * 20 + [float("nan")] * 5)
    result = lrf.lr_find(recipe, start_lr=1e-4, end_lr=1.0, iters=30)
    assert result["stopped"] == "non-finite loss" and result["steps"] == 20
    assert result["stop_lr"] == seen[-1] == lrf.sweep_lrs(1e-4, 1.0, 30)[20]
    assert result["suggestion"] is None  # a flat loss has no descent (lowest at its start)


@pytest.mark.parametrize("flags,says", [
    (["--start-lr", "1", "--end-lr", "0.1"], "start_lr 1 must be below end_lr 0.1"),
    (["--start-lr", "0"], "invalid start_lr 0"),
    (["--start-lr=-1e-3"], "invalid start_lr -0.001"),
    (["--start-lr", "nan"], "must be a finite number"),
    (["--end-lr", "inf"], "must be a finite number"),
    (["--end-lr", "100"], "invalid end_lr 100"),
    (["--iters", "5"], "invalid iters 5: must be between 10 and 10,000"),
    (["--iters", "20000"], "invalid iters 20000"),
    (["--iters", "ten"], "invalid int value: 'ten'"),
    (["--start-lr", "small"], "invalid float value: 'small'"),
    (["--model", "resnet21"], "unknown model 'resnet21'"),
    (["--batch-size", "0"], "invalid batch_size 0"),
    # evaluation-only fields are not lr-find's: refused, not silently ignored
    (["--tta-flip"], "unrecognized arguments: --tta-flip"),
    (["--tta-translate", "true"], "unrecognized arguments: --tta-translate true"),
])
def test_bad_flags_are_one_error_line(flags, says, tmp_path, capsys):
    argv = ["lr-find", "--model", "resnet20", "--data", "synthetic:64x3x8x8:4",
            "--out", tmp_path / "lr.png", *flags]
    assert says in clean_error(capsys, argv)
    assert list(tmp_path.iterdir()) == []


def test_out_must_be_a_file_and_data_out_are_required(tmp_path, capsys):
    base = ["lr-find", "--model", "resnet20", "--data", "synthetic:64x3x8x8:4"]
    assert "is a directory" in clean_error(capsys, [*base, "--out", tmp_path])
    assert "--out" in clean_error(capsys, base)
    assert "--data" in clean_error(capsys, ["lr-find", "--model", "resnet20", "--out", "x.png"])


def test_model_defaults_to_the_recipes_as_for_train(monkeypatch, tmp_path, capsys):
    """Without --model the sweep trains the recipe's model (train's rule), and --help says
    which; --model still chooses another."""
    import reslab.engine.lr_find as engine
    from reslab.errors import UserError

    swept = []

    def stop(recipe, **_):
        swept.append(recipe.model)
        raise UserError("stopped before the sweep")

    monkeypatch.setattr(engine, "lr_find", stop)
    base = ["lr-find", "--data", "synthetic:64x3x8x8:4", "--out", tmp_path / "lr.png"]
    for flags in ([], ["--recipe", "demo"], ["--model", "resnet8"]):
        assert clean_error(capsys, [*base, *flags]) == "error: stopped before the sweep"
    assert swept == [load_recipe("fast").model, load_recipe("demo").model, "resnet8"]
    assert swept[:2] == ["resnet9p", "resnet20"]
    monkeypatch.setenv("COLUMNS", "400")
    with pytest.raises(SystemExit):
        main(["lr-find", "--help"])
    help_line = next(line for line in capsys.readouterr().out.splitlines()
                     if line.strip().startswith("--model "))
    assert help_line.endswith("(default resnet9p from recipe fast)")


def test_no_suggestion_is_a_warning_and_the_text_says_why_it_stopped(monkeypatch, tmp_path,
                                                                     capsys):
    _scripted(monkeypatch, [2.0] * 12 + [float("inf")])
    rc, err = run_cli(capsys, ["lr-find", "--model", "resnet20", "--data",
                               "synthetic:64x3x8x8:4", *FAST[:-2], "--batch-size", "16",
                               "--iters", "20", "--out", tmp_path / "lr.png"])
    notes = [e for e in err if e.startswith("note: ")]  # the augmentation adapted to 8 px
    assert notes == ["note: recipe fast adapted to the data: augment crop (recipe crop-flip): 8 "
                     "px images are usually glyphs whose mirror image is another class "
                     "(--augment crop-flip to mirror anyway)",
                     "note: recipe fast adapted to the data: pad 1 px (recipe 2): at most 1/8 "
                     "of the 8 px side"]
    err = err[len(notes):]
    assert rc == 0 and len(err) == 1 and err[0].startswith("warning: no suggestion: the sweep "
                                                           "stopped after 12 of 20 steps")
    assert (tmp_path / "lr.png").is_file()


def test_text_output(monkeypatch, tmp_path, capsys):
    _scripted(monkeypatch, [2.0 - 0.05 * i for i in range(20)] + [float("nan")])
    assert main(["lr-find", "--model", "resnet20", "--data", "synthetic:64x3x8x8:4", *FAST[:-2],
                 "--batch-size", "16", "--iters", "30", "--start-lr", "1e-3", "--end-lr", "1",
                 "--out", str(tmp_path / "lr.png")]) == 0
    lines = capsys.readouterr().out.splitlines()
    assert re.match(r"resnet20 on synthetic:64x3x8x8:4: 20 of 30 steps in \d+\.\d s, lr 0\.001 "
                    r"to ", lines[0])
    assert lines[0].endswith(": the loss was not finite")
    assert lines[1].startswith("suggested lr: ") and lines[-1] == f"wrote {tmp_path / 'lr.png'}"


def test_an_unwritable_out_fails_before_the_sweep(monkeypatch, tmp_path, capsys):
    """--out is checked before any training: the sweep never starts."""
    import reslab.engine.lr_find as engine

    monkeypatch.setattr(engine, "lr_find", lambda *a, **k: pytest.fail("the sweep ran"))
    (tmp_path / "file").write_text("x")
    base = ["lr-find", "--model", "resnet20", "--data", "synthetic:64x3x8x8:4"]
    err = clean_error(capsys, [*base, "--out", tmp_path / "file" / "lr.png"])
    assert err == f"error: cannot write --out {tmp_path / 'file' / 'lr.png'}: " \
                  f"{tmp_path / 'file'} is not a directory"


# --- fast on small data, robust to noise, a readable plot ---------------------------------

def _noisy_curve(lrs: list[float], seed: int = 0) -> list[float]:
    """A loss that is flat (2.3) at tiny lrs, falls to 0.4 by lr 0.3, then blows up; with
    batch-to-batch noise of 0.25 (a small training set)."""
    rng = np.random.default_rng(seed)
    curve = []
    for lr in lrs:
        x = math.log10(lr)
        base = 2.3 if x < -3 else 2.3 - 1.9 * (x + 3) / 2.5 if x < -0.5 else 0.4 * 30 ** (x + 0.5)
        curve.append(float(base + rng.normal(0, 0.25)))
    return curve


@pytest.mark.parametrize("iters,seed", [(30, s) for s in range(8)] + [(100, 0)])
def test_the_suggestion_is_robust_to_noise(monkeypatch, iters, seed):
    """Never at the very start of the sweep; on the way down, 1 to 100x below the lowest
    smoothed loss's lr; for these curves inside the falling stretch. (fastai's rule with its
    0.98 smoothing suggested 5.3e-6 for seed 4, as it did on a real folder of 300 images.)"""
    lrs = lrf.sweep_lrs(1e-6, 10.0, iters)
    _scripted(monkeypatch, _noisy_curve(lrs, seed))
    result = lrf.lr_find(load_recipe("demo", RECIPE), iters=iters, max_seconds=0)
    low = result["min_loss_lr"]
    assert result["suggestion_index"] >= iters // 10
    assert low / 100 <= result["suggestion"] <= low
    assert 1e-3 <= result["suggestion"] <= 0.3


def test_small_data_gets_fewer_steps_and_a_time_bound_keeps_the_whole_range(monkeypatch):
    _scripted(monkeypatch, [2.0 - 0.001 * i for i in range(200)])
    result = lrf.lr_find(load_recipe("demo", RECIPE), max_seconds=0)  # 64 images, batch 16
    assert result["iters"] == 32 == result["steps"]  # 8 epochs of 4 steps, not 100

    now = [0.0]
    monkeypatch.setattr(lrf, "_clock", lambda: now[0])
    _scripted(monkeypatch, [2.0 - 0.001 * i for i in range(200)])
    scripted = lrf.sgd_step

    def two_seconds(*args, **kwargs):
        now[0] += 2.0
        return scripted(*args, **kwargs)

    monkeypatch.setattr(lrf, "sgd_step", two_seconds)
    result = lrf.lr_find(load_recipe("demo", RECIPE), iters=100, max_seconds=60)
    assert result["steps"] == result["iters"] == 30 and result["time_bounded"]
    assert result["lrs"][0] == pytest.approx(1e-6) and result["lrs"][-1] == pytest.approx(10.0)
    assert all(b > a for a, b in zip(result["lrs"], result["lrs"][1:]))


def test_the_plot_is_clipped_to_the_useful_range(monkeypatch, tmp_path):
    import reslab.analysis.plots as plots

    figures = []
    monkeypatch.setattr(plots, "_save", lambda fig, path: figures.append(fig) or Path(path))
    lrs = lrf.sweep_lrs(1e-6, 10.0, 60)
    losses = _noisy_curve(lrs)[:50] + [30.0, 80.0, 300.0]
    smoothed = [float(v) for v in np.convolve(losses, np.ones(3) / 3, mode="same")]
    plots.lr_find_figure({"model": "resnet20", "data": "digits", "lrs": lrs[:53],
                          "losses": losses, "smoothed": smoothed, "suggestion": lrs[30],
                          "suggestion_index": 30}, tmp_path / "lr.png")
    bottom, top = figures[0].axes[0].get_ylim()
    assert top < 4.0 and bottom < min(smoothed)


def test_max_seconds_flag(capsys, tmp_path):
    assert "invalid --max-seconds -1" in clean_error(capsys, [
        "lr-find", "--model", "resnet20", "--data", "synthetic:64x3x8x8:4", "--max-seconds",
        "-1", "--out", tmp_path / "lr.png"])


def test_an_image_folder_is_swept_at_the_size_training_uses(monkeypatch, tmp_path):
    """A CIFAR-family model on a folder of 40 px images: 32 px as in training, not 224."""
    for c in ("a", "b"):
        (tmp_path / "train" / c).mkdir(parents=True)
        for i in range(8):
            Image.new("RGB", (40, 40), (i * 20, 0, 0)).save(tmp_path / "train" / c / f"{i}.png")
    sides = []

    def step(forward, optimizer, scaler, x, y, *, check_loss, **_):
        sides.append(x.shape[-1])
        return 2.0, None

    monkeypatch.setattr(lrf, "sgd_step", step)
    recipe = load_recipe("fast", {**RECIPE, "data": f"imagefolder:{tmp_path}",
                                  "amp": "off", "progressive_from": None})
    result = lrf.lr_find(recipe, iters=10, max_seconds=0)
    assert set(sides) == {32} and result["batch_size"] == 14  # 16 clamped to the 14 kept


def test_a_machine_that_gets_slower_is_re_planned_again(monkeypatch):
    """1 s per step at first, 4 s from step 10 on (another program started): the plan shrinks
    again, and the sweep still ends at end_lr."""
    now = [0.0]
    monkeypatch.setattr(lrf, "_clock", lambda: now[0])
    _scripted(monkeypatch, [2.0 - 0.001 * i for i in range(200)])
    scripted, calls = lrf.sgd_step, []

    def slower(*args, **kwargs):
        calls.append(1)
        now[0] += 1.0 if len(calls) <= 10 else 4.0
        return scripted(*args, **kwargs)

    monkeypatch.setattr(lrf, "sgd_step", slower)
    result = lrf.lr_find(load_recipe("demo", RECIPE), iters=100, max_seconds=60)
    assert result["time_bounded"] and result["steps"] == result["iters"] < 60
    assert now[0] <= 60 + 4 * 10  # within a re-planning period of the bound
    assert result["lrs"][-1] == pytest.approx(10.0)


def test_a_coarse_time_bounded_sweep_still_finds_the_descent():
    """The smoothed curve of a real sweep on 300 Fashion-MNIST images in 3 classes, re-planned
    from 30 to 21 steps by the time bound (about 3 steps a decade): the descent is 1e-3 to 1e-2,
    not the noise dip at 2e-4 that a window narrower than the steps chose."""
    lrs = [1e-06, 1.743e-06, 3.039e-06, 6.996e-06, 1.61e-05, 3.707e-05, 8.532e-05, 0.0001964,
           0.000452, 0.00104, 0.002395, 0.005513, 0.01269, 0.02921, 0.06723, 0.1548, 0.3562,
           0.82, 1.887]
    smoothed = [1.45, 1.377, 1.38, 1.392, 1.388, 1.391, 1.415, 1.39, 1.393, 1.366, 1.326, 1.263,
                1.192, 1.265, 1.469, 1.605, 1.977, 3.643, 7.709]
    assert 1e-3 < lrs[lrf.steepest(lrs, smoothed, skip_begin=2)] < 1.2e-2


def test_the_sweep_uses_the_batch_training_would_adapt_to(monkeypatch, capsys):
    """250 images: training's fast recipe halves batch 256 to 16 (8 steps an epoch); the lr
    range test measures that batch, and says so."""
    _scripted(monkeypatch, [2.0 - 0.001 * i for i in range(200)])
    recipe = load_recipe("fast", {"model": "resnet20", "data": "synthetic:250x3x16x16:4",
                                  "workers": 0, "device": "cpu", "channels_last": False,
                                  "amp": "off"})
    result = lrf.lr_find(recipe, iters=10, max_seconds=0, quiet=False)
    assert result["batch_size"] == 16
    err = capsys.readouterr().err
    assert "note: recipe fast adapted to the data: batch 16 (recipe 256) for 250 training " \
           "images" in err and "epochs" not in err


def test_a_loss_that_rises_before_it_falls_still_gets_a_suggestion() -> None:
    """The smoothed loss starts at the first raw loss; when the loss first rises (a net at init
    on a small folder), that start is the global minimum. The minimum and the suggestion are
    looked for after the sweep's first tenth."""
    from reslab.engine.lr_find import lowest_after, steepest

    lrs = list(np.geomspace(1e-6, 1.0, 40))
    smoothed = [1.28] + [1.6 - 0.25 * min(1.0, i / 30) for i in range(1, 40)]
    assert int(np.argmin(smoothed)) == 0 and lowest_after(smoothed, 4) == 30
    best = steepest(lrs, smoothed, skip_begin=4)
    assert best is not None and 4 <= best < 30

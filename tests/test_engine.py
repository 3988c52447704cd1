"""The training loop: run directory, metrics, exact resume after SIGKILL/SIGTERM, torchrun."""
import json
import os
import re
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest
import torch
from safetensors.torch import load_file

from cli_helpers import run_cli
from helpers import StopAfter
from reslab.engine.loop import fit
from reslab.engine.recipe import load_recipe
from reslab.engine.result import FitResult

TINY = {"model": "resnet20", "data": "synthetic", "batch_size": 32, "lr": 0.05,
        "schedule": "cosine", "workers": 0, "device": "cpu", "deterministic": True}
# The same 16 steps per epoch on 4x fewer, 4x smaller images: 16x cheaper steps for the tests
# of the run's files, its epochs and its resume.
SMALL = {"data": "synthetic:128x3x16x16:10", "batch_size": 8}


def _cli(*args: str, **kw) -> subprocess.Popen:
    env = {**os.environ, "OMP_NUM_THREADS": "1", "PYTHONUNBUFFERED": "1"}
    return subprocess.Popen([sys.executable, "-m", "reslab", *args], env=env,
                            stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, **kw)


def _train_args(out: Path, iters: int, save_every: int = 0, **over: object) -> list[str]:
    args = ["train", "--recipe", "fast", "--out", str(out), "--iters", str(iters), "--quiet"]
    for k, v in {**TINY, **over}.items():
        args += [f"--{k.replace('_', '-')}", str(v).lower() if isinstance(v, bool) else str(v)]
    return args + (["--save-every", str(save_every)] if save_every else [])


def _weights(run: Path) -> dict[str, torch.Tensor]:
    return load_file(str(run / "model.safetensors"))


def test_fit_writes_the_run_directory(tmp_path):
    """fit writes the run; reslab.train (and `reslab train`) add the report."""
    import reslab

    r = load_recipe("fast", {**TINY, **SMALL, "epochs": 2})
    summary = reslab.train(r, tmp_path, quiet=True)
    for name in ("config.toml", "model.safetensors", "state/last.pt", "metrics.jsonl",
                 "curves.png", "report.md"):
        assert (tmp_path / name).is_file(), name
    rows = [json.loads(ln) for ln in (tmp_path / "metrics.jsonl").read_text().splitlines()]
    assert all("step" in row and "epoch" in row for row in rows)
    evals = [row for row in rows if "split" in row]
    assert {row["split"] for row in evals} == {"train", "test"}
    assert all({"top1", "top5", "loss"} <= row.keys() for row in evals)
    assert all({"loss", "lr", "img_s"} <= row.keys() for row in rows if "split" not in row)
    assert summary.steps == 2 * (128 // 8)
    assert rows[-1]["final"] is True and rows[-1]["top1"] == summary.test["top1"]
    # summary.json is the result's to_json, its keys in their order; from_json reads it back
    text = (tmp_path / "summary.json").read_text()
    assert list(json.loads(text)) == ["out", "model", "data", "steps", "epochs", "wall_s",
                                      "train", "train_eval", "stopped_early", "val", "test",
                                      "skipped_images", "skipped"]
    assert text == summary.to_json() + "\n"
    assert FitResult.from_json(json.loads(text)).to_json() == text.removesuffix("\n")
    # The weights were saved with the metadata eval/predict need.
    from reslab import load_checkpoint

    model, meta = load_checkpoint(tmp_path)
    assert meta.architecture == "resnet20" and meta.kwargs["num_classes"] == 10
    assert len(meta.preprocess.mean) == meta.preprocess.input_size[0]


def test_training_learns_synthetic_classes(tmp_path):
    r = load_recipe("fast", {**TINY, "data": "synthetic:512x3x16x16:10", "epochs": 3, "lr": 0.1})
    summary = fit(r, None, quiet=True)  # 16x16 images: 4x cheaper (lr 0.1 wants batches of 32)
    assert summary.test["top1"] > 0.5  # 10 classes: chance is 0.1


def test_progressive_resizing_trains_small_first(monkeypatch):
    """The model trains on 16 px (0.58 x 28), then 20, 24, and the native 28 from half-way on."""
    import reslab.engine.loop as loop

    sides: list[int] = []
    real = loop.sgd_step

    def spy(model, opt, scaler, x, y, **kw):
        sides.append(x.shape[-1])
        return real(model, opt, scaler, x, y, **kw)

    monkeypatch.setattr(loop, "sgd_step", spy)
    r = load_recipe("fast", {**TINY, "data": "synthetic:256x1x28x28:4", "iters": 16,
                             "progressive_from": 0.58, "progressive_until": 0.5})
    summary = fit(r, None, quiet=True)
    assert sides == [16, 16, 16, 20, 20, 20, 24, 24] + [28] * 8
    assert summary.test["n"] > 0


def test_progressive_resizing_keeps_the_aspect_of_non_square_images(monkeypatch):
    import reslab.engine.loop as loop

    shapes: list[tuple[int, int]] = []
    real = loop.sgd_step

    def spy(model, opt, scaler, x, y, **kw):
        shapes.append(tuple(x.shape[-2:]))
        return real(model, opt, scaler, x, y, **kw)

    monkeypatch.setattr(loop, "sgd_step", spy)
    fit(load_recipe("fast", {**TINY, "data": "synthetic:64x1x48x24:4", "iters": 4,
                             "progressive_from": 0.5, "progressive_until": 0.5}), None,
        quiet=True)
    assert shapes == [(24, 12), (32, 16), (48, 24), (48, 24)]


def test_eval_every_zero_evaluates_only_after_the_last_iteration(tmp_path):
    r = load_recipe("fast", {**TINY, **SMALL, "epochs": 3, "eval_every": 0})
    fit(r, tmp_path / "run", quiet=True)
    rows = [json.loads(line) for line in (tmp_path / "run" / "metrics.jsonl").open()]
    assert [row["epoch"] for row in rows if row.get("split") == "train"] == [1.0, 2.0, 3.0]
    tests = [row for row in rows if row.get("split") == "test"]
    assert [(row["epoch"], row.get("final", False)) for row in tests] == [(3.0, False),
                                                                          (3.0, True)]


def _wait_for(path: Path, proc: subprocess.Popen, timeout: float = 120) -> None:
    t0 = time.time()
    while not path.exists():
        assert proc.poll() is None, proc.communicate()
        assert time.time() - t0 < timeout
        time.sleep(0.01)


def test_sigkill_then_resume_is_bit_identical(tmp_path):
    iters = 48
    # the uninterrupted run beside the one to kill (they are independent)
    whole = _cli(*_train_args(tmp_path / "whole", iters, **SMALL))
    killed = _cli(*_train_args(tmp_path / "killed", iters, save_every=4, **SMALL))
    _wait_for(tmp_path / "killed" / "state" / "last.pt", killed)
    killed.send_signal(signal.SIGKILL)
    killed.wait()
    assert whole.wait() == 0, whole.communicate()
    state = torch.load(tmp_path / "killed/state/last.pt", weights_only=True)
    assert 0 < state["step"] < iters  # it was killed mid-run
    assert not (tmp_path / "killed" / "model.safetensors").exists()
    resumed = _cli("train", "--resume", "--out", str(tmp_path / "killed"), "--quiet")
    assert resumed.wait() == 0, resumed.communicate()
    a, b = _weights(tmp_path / "whole"), _weights(tmp_path / "killed")
    assert a.keys() == b.keys()
    assert all(torch.equal(a[k], b[k]) for k in a)
    # The metrics log of the resumed run has each step once.
    steps = [json.loads(ln)["step"] for ln in
             (tmp_path / "killed/metrics.jsonl").read_text().splitlines()
             if "split" not in json.loads(ln)]
    assert steps == sorted(set(steps))


def test_sigterm_saves_and_exits_cleanly(tmp_path):
    proc = _cli(*_train_args(tmp_path / "run", 400, save_every=2, **SMALL))
    _wait_for(tmp_path / "run" / "state" / "last.pt", proc)
    proc.send_signal(signal.SIGTERM)
    out, err = proc.communicate(timeout=60)
    assert proc.returncode == 143
    assert "stopped by SIGTERM at step" in err and "reslab train --resume --out" in err
    assert "Traceback" not in err


def test_resume_without_state_is_a_clean_error(tmp_path):
    from reslab.cli import main

    assert main(["train", "--resume", "--out", str(tmp_path / "none"), "--quiet"]) == 2


@pytest.mark.slow
def test_torchrun_two_cpu_processes(tmp_path):
    out = tmp_path / "ddp"
    cmd = [sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc-per-node",
           "2", "-m", "reslab", *_train_args(out, 6, **SMALL)]
    env = {**os.environ, "OMP_NUM_THREADS": "1"}
    proc = subprocess.run(cmd, env=env, capture_output=True, text=True, timeout=300)
    assert proc.returncode == 0, proc.stderr[-3000:]
    rows = [json.loads(ln) for ln in (out / "metrics.jsonl").read_text().splitlines()]
    finals = [row for row in rows if row.get("final")]
    assert len(finals) == 1 and finals[0]["n"] == 32  # every test image once, one writer
    assert (out / "model.safetensors").is_file()


def test_tensorboard_flag(tmp_path, capsys):
    """--tensorboard writes event files, or says how to install the package when it is absent."""
    from reslab.cli import main

    args = _train_args(tmp_path, 2) + ["--tensorboard"]
    try:
        import torch.utils.tensorboard  # noqa: F401
    except ImportError:
        assert main(args) == 2
        assert capsys.readouterr().err.strip() == ("error: --tensorboard needs the tensorboard "
                                                    "package: pip install tensorboard")
        return
    assert main(args) == 0
    assert list((tmp_path / "tensorboard").glob("events.out.tfevents.*"))


def test_warmup_is_checked_every_iteration_on_the_batch_errors(monkeypatch):
    """resnet110's warm-up (section 4.2) in the loop: each iteration reports its batch error,
    and the lr switches the iteration after the window's mean falls below the threshold."""
    from reslab.engine import evaluate, loop, schedule

    monkeypatch.setattr(schedule, "WARMUP_WINDOW", 3)
    errors, lrs, tallied = [], {}, []
    real_batch, real_lr, real_add = loop.on_train_batch, loop.lr_at, evaluate.Tally.add

    def spy_batch(state, r, err):
        errors.append(err)
        real_batch(state, r, err)

    def spy_lr(step, *args):
        lrs.setdefault(step, set()).add(real_lr(step, *args))  # once per param group
        return real_lr(step, *args)

    def spy_add(self, logits, y, loss_sum):  # the train tally sees every batch's logits
        tallied.append((logits.argmax(1) != y).double().mean().item())
        real_add(self, logits, y, loss_sum)

    monkeypatch.setattr(loop, "on_train_batch", spy_batch)
    monkeypatch.setattr(loop, "lr_at", spy_lr)
    monkeypatch.setattr(evaluate.Tally, "add", spy_add)
    r = load_recipe("fast", {**TINY, "schedule": "constant", "iters": 16, "lr": 0.05,
                             "tta_flip": False, "warmup_lr": 0.01, "warmup_until_error": 0.8})
    fit(r, None, quiet=True)
    train = tallied[:16]  # then the test split's evaluation batches
    ends = next(i for i in range(2, 16) if sum(train[i - 2:i + 1]) / 3 < 0.8)
    assert errors == train[:ends + 1]  # measured every iteration while warm, then no more
    assert lrs == {i: {0.01 if i <= ends else 0.05} for i in range(16)}


def test_a_resumed_runs_done_line_gives_the_training_seconds_of_the_whole_run(
        tmp_path, monkeypatch, capsys):
    """The first part is slowed down (0.2 s a step): a `done:` line counting only the resumed
    part would come out at least 0.6 s short of the training seconds metrics.jsonl logs."""
    from reslab.engine import loop, state as run_state

    out = tmp_path / "run"
    args = ["train", "--recipe", "fast", "--model", "resnet8", "--data",
            "synthetic:64x3x8x8:4", "--batch-size", "16", "--iters", "8", "--workers", "0",
            "--device", "cpu", "--out", out]
    real = loop.sgd_step

    def slow(*a, **kw):
        time.sleep(0.2)
        return real(*a, **kw)

    monkeypatch.setattr(loop, "sgd_step", slow)
    monkeypatch.setattr(run_state, "StopSignal", lambda: StopAfter(3))
    assert run_cli(capsys, args)[0] == 143
    monkeypatch.setattr(loop, "sgd_step", real)
    monkeypatch.setattr(run_state, "StopSignal", lambda: StopAfter(10**9))
    rc, err = run_cli(capsys, ["train", "--resume", "--out", out])
    assert rc == 0, err
    seconds = float(re.fullmatch(r"done: 8 iterations in ([0-9.]+) s; test top1 [0-9.]+; "
                                 rf"run directory {re.escape(str(out))}", err[-1]).group(1))
    rows = [json.loads(ln) for ln in (out / "metrics.jsonl").read_text().splitlines()]
    last_train = [row["time_s"] for row in rows if row.get("split") == "train"][-1]
    final_test = next(row["time_s"] for row in rows if row.get("final"))
    # training ends after the last epoch's train row and before the final test row (.1f, .2f)
    assert last_train - 0.06 <= seconds <= final_test + 0.06, (seconds, last_train, final_test)

"""What a timm, fastai or Lightning user expects: mixup/cutmix, RandAugment/TrivialAugment,
gradient clipping and accumulation, early stopping and metrics.csv as recipe fields; show-batch,
eval --top-losses, predict on folders and globs with --csv."""
from __future__ import annotations

import csv
import json
import sys
from pathlib import Path

import pytest
import torch
import torch.nn.functional as F
from torchvision.transforms import v2

from cli_helpers import clean_error, run_cli
from helpers import StopAfter
from reslab.data import augment as A
from reslab.data import load_data
from reslab.engine import loop
from reslab.engine import state as run_state
from reslab.engine.logging import read_csv_rows, read_metrics
from reslab.engine.loop import fit
from reslab.engine.mixing import batch_mixer, mix_batch, step_seed
from reslab.engine.recipe import Recipe, coerce, load_recipe
from reslab.engine.step import sgd_step
from reslab.errors import UserError

CPU = torch.device("cpu")
TINY = {"model": "resnet8", "data": "synthetic:128x3x16x16:4", "batch_size": 16, "lr": 0.05,
        "schedule": "cosine", "workers": 0, "device": "cpu", "deterministic": True,
        "progressive_from": None}

sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "examples"))
from make_shapes import make_folder  # noqa: E402


# --- recipe fields ---------------------------------------------------------------------------

def test_the_new_fields_default_off_and_old_configs_load_unchanged():
    r = Recipe()
    assert (r.mixup, r.cutmix, r.auto_augment, r.clip_grad_norm, r.accumulate,
            r.early_stopping) == (0.0, 0.0, "none", 0.0, 1, 0)
    old = {"model": "resnet20", "data": "digits", "batch_size": 64}  # a config.toml before them
    assert coerce(old) == Recipe(model="resnet20", data="digits", batch_size=64)
    assert coerce(old).step_batch == 64 and coerce(old | {"accumulate": 4}).step_batch == 256
    for name in ("fast", "fast-long", "paper-cifar", "paper-imagenet", "demo", "finetune"):
        r = load_recipe(name)
        assert (r.mixup, r.cutmix, r.auto_augment, r.clip_grad_norm, r.accumulate,
                r.early_stopping) == (0.0, 0.0, "none", 0.0, 1, 0), name


@pytest.mark.parametrize("values, message", [
    ({"auto_augment": "autoaugment"},
     "invalid auto_augment 'autoaugment' (choices: none, randaugment, trivialaugment)"),
    ({"mixup": -1}, "invalid mixup -1.0: must be in [0, 100]"),
    ({"cutmix": "inf"}, "invalid value for cutmix: 'inf' (a finite number)"),
    ({"accumulate": 0}, "invalid accumulate 0: must be between 1 and 1,024"),
    ({"clip_grad_norm": -0.5}, "invalid clip_grad_norm -0.5: must be in [0, 1e+09]"),
    ({"early_stopping": 3, "eval_every": 0},
     "early_stopping counts evaluations without improvement: eval_every 0 (at the end only) "
     "leaves it none; use eval_every >= 1"),
])
def test_bad_values_are_user_errors(values, message):
    with pytest.raises(UserError) as e:
        coerce(values)
    assert str(e.value) == message


# --- RandAugment / TrivialAugment in the data pipeline ---------------------------------------

@pytest.mark.parametrize("policy, transform", [("randaugment", v2.RandAugment),
                                               ("trivialaugment", v2.TrivialAugmentWide)])
def test_policies_are_torchvisions_per_image_with_seeds_from_the_epoch_plan(policy, transform):
    data = load_data("synthetic:48x3x12x12:4", pad=2, auto_augment=policy)
    plain = load_data("synthetic:48x3x12x12:4", pad=2)
    state = torch.get_rng_state()
    full = list(data.train_batches(1, 16, CPU, seed=5))
    assert torch.equal(torch.get_rng_state(), state)  # the global RNG is left alone
    plan = A.plan_epoch(48, "crop-flip", A.epoch_generator(5, 1), pad=2, auto_augment=policy)
    order, params = plan.take(16, 32)
    raw = data._arrays["train"][0]
    crops = A.crop_flip(raw[order], params["shift"], params["flip"], 2, data.normalize.fill)
    expect = []
    for image, seed in zip(crops, params["policy_seed"].tolist()):
        torch.manual_seed(seed)
        expect.append(transform()(image))
    assert torch.equal(full[1][0], data.normalize.from_uint8(torch.stack(expect)))
    assert not torch.equal(full[1][0], list(plain.train_batches(1, 16, CPU, seed=5))[1][0])
    # the order and crop/flip draws are those of a plan without the policy (drawn after them)
    base = A.plan_epoch(48, "crop-flip", A.epoch_generator(5, 1), pad=2)
    assert torch.equal(base.order, plan.order) and torch.equal(base.params["shift"],
                                                               plan.params["shift"])
    # resume and shards see the same images
    rest = list(data.train_batches(1, 16, CPU, seed=5, start_step=2))
    assert torch.equal(rest[0][0], full[2][0])
    shards = [next(data.train_batches(1, 16, CPU, seed=5, rank=r, world_size=2))[0]
              for r in range(2)]
    assert torch.equal(torch.cat(shards), full[0][0])


def test_policy_on_an_image_folder_and_a_bad_name(tmp_path):
    root = make_folder(tmp_path / "shapes", per_class=3)
    data = load_data(f"imagefolder:{root}", image_size=16, workers=0, val_split=0,
                     auto_augment="trivialaugment")
    a = next(data.train_batches(0, 6, CPU, seed=1))[0]
    assert torch.equal(a, next(data.train_batches(0, 6, CPU, seed=1))[0]) and a.shape[-1] == 16
    with pytest.raises(UserError, match=r"unknown auto-augmentation policy 'rand' \(closest"):
        load_data("synthetic", auto_augment="rand")


# --- mixup / cutmix --------------------------------------------------------------------------

def test_mixup_is_torchvisions_with_a_seed_per_step_and_smoothing_combines():
    x = torch.randn(8, 3, 8, 8)
    y = torch.arange(8) % 4
    mixer = batch_mixer(0.4, 0.0, 4)
    state = torch.get_rng_state()
    xm, target = mix_batch(mixer, x, y, seed=3, step=7)
    assert torch.equal(torch.get_rng_state(), state)
    torch.manual_seed(step_seed(3, 7))
    xe, te = v2.MixUp(alpha=0.4, num_classes=4)(x, y)
    assert torch.equal(xm, xe) and torch.equal(target, te)
    lam = float(target[0, y[0]])  # y[0] = 0 and its rolled partner y[7] = 3 differ
    assert torch.allclose(xm, lam * x + (1 - lam) * x.roll(1, 0))
    assert torch.equal(mix_batch(mixer, x, y, 3, 7)[0], xm)  # a function of (seed, step)
    assert not torch.equal(mix_batch(mixer, x, y, 3, 8)[0], xm)
    # label smoothing of mixed targets = the mix of the smoothed losses of both labels
    logits = torch.randn(8, 4)
    mixed = F.cross_entropy(logits, target, label_smoothing=0.1)
    parts = lam * F.cross_entropy(logits, y, label_smoothing=0.1) + \
        (1 - lam) * F.cross_entropy(logits, y.roll(1, 0), label_smoothing=0.1)
    assert mixed.item() == pytest.approx(parts.item(), rel=1e-6)


def test_cutmix_pastes_a_box_and_both_choose_one_per_batch():
    x = torch.zeros(4, 1, 16, 16)
    x[1:] = 1.0  # image 0 is black; CutMix pastes a box of image 3 (white) into it
    y = torch.tensor([0, 1, 2, 3])
    xm, target = mix_batch(batch_mixer(0.0, 1.0, 4), x, y, seed=0, step=1)
    white = float(xm[0].mean())
    assert 0 < white < 1 and target[0, 3].item() == pytest.approx(white)  # weight = box area
    both = batch_mixer(0.2, 1.0, 4)
    assert isinstance(both, v2.RandomChoice) and batch_mixer(0.0, 0.0, 4) is None


# --- the optimizer step: accumulation and clipping -------------------------------------------

def _linear_step(accumulate: int, clip: float = 0.0) -> tuple[float, torch.Tensor]:
    torch.manual_seed(0)
    model = torch.nn.Sequential(torch.nn.Flatten(), torch.nn.Linear(12, 3))
    opt = torch.optim.SGD(model.parameters(), lr=1.0)
    scaler = torch.amp.GradScaler("cpu", enabled=False)
    g = torch.Generator().manual_seed(1)
    x, y = torch.randn(8, 3, 2, 2, generator=g), torch.randint(0, 3, (8,), generator=g)
    before = torch.cat([p.detach().flatten().clone() for p in model.parameters()])
    loss, _ = sgd_step(model, opt, scaler, x, y, accumulate=accumulate, clip_grad_norm=clip)
    after = torch.cat([p.detach().flatten() for p in model.parameters()])
    return loss, after - before


def test_accumulation_sums_the_micro_batch_gradients_of_the_batch_mean_loss():
    loss1, step1 = _linear_step(1)
    loss4, step4 = _linear_step(4)
    assert loss4 == pytest.approx(loss1, rel=1e-6)
    assert torch.allclose(step4, step1, atol=1e-6)


def test_clipping_bounds_the_global_gradient_norm():
    _, free = _linear_step(1)
    assert free.norm() > 0.1  # lr 1: the step is the gradient
    _, clipped = _linear_step(1, clip=0.01)
    assert clipped.norm().item() == pytest.approx(0.01, rel=1e-4)
    assert torch.allclose(clipped / clipped.norm(), free / free.norm(), atol=1e-4)


def test_the_loop_steps_once_per_accumulated_batch(monkeypatch):
    calls = []
    real = loop.sgd_step

    def spy(model, opt, scaler, x, y, **kw):
        calls.append((len(x), kw["accumulate"], kw["clip_grad_norm"]))
        return real(model, opt, scaler, x, y, **kw)

    monkeypatch.setattr(loop, "sgd_step", spy)
    summary = fit(load_recipe("fast", {**TINY, "epochs": 1, "accumulate": 2,
                                       "clip_grad_norm": 2.0}), None, quiet=True)
    assert calls == [(32, 2, 2.0)] * 4  # 128 images, 16 x 2 per optimizer step
    assert summary.steps == 4 and summary.epochs == 1.0


def test_accumulation_on_a_small_training_set_shrinks_the_micro_batch(capsys):
    rc, err = run_cli(capsys, ["train", "--recipe", "fast", "--model", "resnet8", "--data",
                               "synthetic:40x3x8x8:2", "--batch-size", "32", "--accumulate",
                               "2", "--iters", "1", "--workers", "0", "--device", "cpu"])
    assert rc == 0
    assert "note: batch size 32 x accumulate 2 is larger than the 40 training images; " \
           "using 20" in err
    assert "batch 20 x 2 accumulated, 1 iteration (1 epoch)" in err[0]


# --- early stopping --------------------------------------------------------------------------

def test_early_stopping_stops_after_patience_evaluations_and_keeps_the_best(
        tmp_path, monkeypatch, capsys):
    scores = iter([0.5, 0.6, 0.6, 0.55, 0.9])  # improves, improves, then 2 without
    real = loop.Run.evaluate

    def scripted(self, split):
        result = real(self, split)
        return result if split == "test" else {**result, "top1": next(scores)}

    monkeypatch.setattr(loop.Run, "evaluate", scripted)
    out = tmp_path / "run"
    rc, err = run_cli(capsys, ["train", "--recipe", "fast", "--model", "resnet8", "--data",
                               "synthetic:96x3x8x8:4", "--val-split", "32", "--batch-size",
                               "16", "--epochs", "10", "--eval-every", "1", "--early-stopping",
                               "2", "--workers", "0", "--device", "cpu", "--out", out])
    assert rc == 0, err
    assert (f"early stopping: val top1 has not improved for 2 evaluations (best 0.6000); "
            f"stopped at epoch 4 of 10; the best weights are in {out / 'best.safetensors'}, "
            "the last in model.safetensors") in err
    summary = json.loads((out / "summary.json").read_text())
    assert summary["steps"] == 4 * 4 and summary["stopped_early"] is True
    vals = [r for r in read_metrics(out / "metrics.jsonl") if r.get("split") == "val"]
    assert [r["top1"] for r in vals] == [0.5, 0.6, 0.6, 0.55]
    assert (out / "best.safetensors").is_file() and (out / "model.safetensors").is_file()
    # resuming a stopped run does not train on: it has finished, and nothing is touched
    assert clean_error(capsys, ["train", "--resume", "--out", out, "--quiet"]) == (
        f"error: the run in {out} has finished (model.safetensors); nothing to resume")
    assert json.loads((out / "summary.json").read_text())["steps"] == 16


def test_early_stopping_needs_a_validation_split(capsys, tmp_path):
    assert clean_error(capsys, ["train", "--recipe", "fast", "--data", "synthetic:64x3x8x8:4",
                                "--model", "resnet8", "--eval-every", "1", "--early-stopping",
                                "2", "--workers", "0", "--out", tmp_path / "r"]) == (
        "error: early_stopping watches the validation top-1: synthetic:64x3x8x8:4 has no "
        "validation split (hold one out with --val-split N)")


# --- exact resume with every trick, and metrics.csv ------------------------------------------

def test_resume_with_every_trick_is_bit_identical_and_csv_matches_jsonl(tmp_path, monkeypatch):
    tricks = {**TINY, "iters": 8, "mixup": 0.2, "cutmix": 1.0, "auto_augment": "randaugment",
              "accumulate": 2, "clip_grad_norm": 1.0, "label_smoothing": 0.1, "erase": 0.5}
    r = load_recipe("fast", tricks)
    fit(r, tmp_path / "whole", quiet=True)
    monkeypatch.setattr(run_state, "StopSignal", lambda: StopAfter(3))
    with pytest.raises(run_state.Interrupted):
        fit(r, tmp_path / "cut", quiet=True)
    assert torch.load(tmp_path / "cut/state/last.pt", weights_only=True)["step"] == 3
    monkeypatch.setattr(run_state, "StopSignal", lambda: StopAfter(10**9))
    fit(None, tmp_path / "cut", resume=True, quiet=True)
    from safetensors.torch import load_file

    a, b = (load_file(str(tmp_path / d / "model.safetensors")) for d in ("whole", "cut"))
    assert a.keys() == b.keys() and all(torch.equal(a[k], b[k]) for k in a)
    for run in ("whole", "cut"):
        rows = read_metrics(tmp_path / run / "metrics.jsonl")
        assert read_csv_rows(tmp_path / run / "metrics.csv") == rows
    with open(tmp_path / "whole" / "metrics.csv") as f:
        header = next(csv.reader(f))
    assert header == ["step", "epoch", "split", "final", "loss", "lr", "img_s", "top1", "top5",
                      "n", "time_s", "balanced", "macro_f1"]


def test_csv_widens_its_header_for_a_new_key(tmp_path):
    from reslab.engine.logging import MetricsLog

    log = MetricsLog(tmp_path / "metrics.jsonl")
    log.log(step=1, loss=0.5)
    log.log(step=2, loss=0.25, grad_norm=3.0)
    assert read_csv_rows(tmp_path / "metrics.csv") == [{"step": 1, "loss": 0.5},
                                                       {"step": 2, "loss": 0.25,
                                                        "grad_norm": 3.0}]

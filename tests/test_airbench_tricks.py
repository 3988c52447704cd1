"""airbench94's techniques (Jordan 2024, arXiv 2404.00498) as recipe options, each off by
default: Dirac init, whitened first conv, the BN-bias lr multiplier, lookahead EMA with BN
momentum, 1 px translation TTA, alternating flip."""
from __future__ import annotations

import json
from pathlib import Path

import pytest
import torch
import torch.nn.functional as F
from PIL import Image
from torch import nn

from reslab.cli import main
from reslab.data import load_data
from reslab.data.augment import alternate_flips, epoch_generator, plan_epoch
from reslab.engine import loop
from reslab.engine.loop import fit
from reslab.engine.recipe import Recipe, coerce, load_recipe
from reslab.engine.run import Run
from reslab.engine.setup import EMA, base_lr, build_model, build_optimizer, set_lr
from reslab.deploy.predict import prepare_images
from reslab.engine.tta import flip_tta, translate_tta, translations
from reslab.errors import UserError
from reslab.models.init import dirac_init_, whiten_conv_
from reslab.weights.checkpoint import load_checkpoint

TINY = {"model": "resnet8", "data": "synthetic:64x1x12x12:4", "batch_size": 16, "lr": 0.05,
        "schedule": "constant", "workers": 0, "device": "cpu", "deterministic": True,
        "epochs": 1}
NEW = ("dirac_init", "whiten_stem", "bn_bias_lr", "bn_momentum", "ema_every", "lookahead",
       "tta_translate", "flip_alternate", "activation")
OFF = (False, False, 1.0, 0.1, 1, False, False, False, "relu")


def test_every_technique_is_off_by_default_and_in_the_shipped_recipes():
    assert tuple(getattr(Recipe(), k) for k in NEW) == OFF
    for name in ("fast-long", "demo", "paper-cifar"):
        assert tuple(getattr(load_recipe(name), k) for k in NEW) == OFF, name
    # fast adopted translation TTA and GELU alone (measured: docs/results/time-to-accuracy.md)
    fast = load_recipe("fast")
    on = {k: getattr(fast, k) for k in NEW if getattr(fast, k) != OFF[NEW.index(k)]}
    assert on == {"tta_translate": True, "activation": "gelu"}


def test_lookahead_needs_an_ema_and_bad_values_are_user_errors():
    with pytest.raises(UserError, match="^lookahead copies the weights' EMA back into them"):
        coerce({"lookahead": True})
    with pytest.raises(UserError, match=r"^invalid bn_bias_lr 0.0: must be in \(0, 1000\]"):
        coerce({"bn_bias_lr": 0})
    with pytest.raises(UserError, match="^invalid ema_every 0: must be between 1 and"):
        coerce({"ema_every": 0})


# --- Dirac (identity) initialisation ---------------------------------------------------------

@pytest.mark.parametrize("cin, cout, stride", [(4, 4, 1), (4, 8, 2), (8, 4, 1)])
def test_a_dirac_initialised_conv_computes_the_identity(cin, cout, stride):
    conv = nn.Conv2d(cin, cout, 3, stride=stride, padding=1, bias=False)
    x = torch.randn(2, cin, 8, 8)
    assert not torch.allclose(conv(x)[:, :min(cin, cout)], x[:, :cout, ::stride, ::stride])
    assert dirac_init_(conv) == 1
    y = conv(x)
    k = min(cin, cout)
    assert torch.equal(y[:, :k], x[:, :k, ::stride, ::stride])
    if cout > cin:  # the other output channels keep their random init
        assert y[:, cin:].abs().sum() > 0


def test_dirac_init_reaches_every_3x3_conv_of_the_recipe_model_and_only_with_the_option():
    r = coerce(TINY | {"dirac_init": True})
    model = build_model(r, 4, 1)
    convs = [m for m in model.modules() if isinstance(m, nn.Conv2d)]
    block = model.layer1[0]
    x = torch.randn(2, 16, 6, 6)
    assert torch.equal(block.conv2(x), x)
    for m in convs:
        w = m.weight
        k = min(w.shape[:2])
        assert torch.equal(w[:k, :, 1, 1], torch.eye(k, w.shape[1])), m
    plain = build_model(coerce(TINY), 4, 1)
    assert not torch.equal(plain.layer1[0].conv2(x), x)


# --- whitened first conv ---------------------------------------------------------------------

def _correlated_images(n: int, c: int, side: int = 10) -> torch.Tensor:
    """Smooth noise: neighbouring pixels (and channels) strongly correlated, as in photos."""
    g = torch.Generator().manual_seed(0)
    x = torch.randn(n, c, side + 2, side + 2, generator=g)
    x = F.avg_pool2d(x, 3, stride=1) * 3 + 0.3 * torch.randn(n, c, side, side, generator=g)
    return x + x.mean(1, keepdim=True)


@pytest.mark.parametrize("c", [1, 3])
def test_the_whitened_stem_has_an_identity_covariance_on_the_patches(c):
    images = _correlated_images(400, c)
    conv = nn.Conv2d(c, 16, 3, padding=1, bias=False)
    assert whiten_conv_(conv, images.split(100), eps=1e-8) == 8
    out = F.conv2d(images, conv.weight)  # every 3x3 patch, no padding
    flat = out.permute(1, 0, 2, 3).reshape(16, -1)
    cov = torch.cov(flat[:8])
    assert torch.allclose(cov, torch.eye(8), atol=1e-3), cov
    assert torch.equal(flat[8:], -flat[:8])  # the negatives: a ReLU after it loses nothing
    before = torch.cov(F.conv2d(images, nn.Conv2d(c, 8, 3).weight).permute(1, 0, 2, 3)
                       .reshape(8, -1))
    assert not torch.allclose(before, torch.eye(8), atol=0.1)


def test_a_run_with_whiten_stem_initialises_its_first_conv_from_the_training_images():
    plain = Run(coerce(TINY), None, quiet=True)
    run = Run(coerce(TINY | {"whiten_stem": True}), None, quiet=True)
    assert any("whitens the training images' patches (8 leading directions" in m
               for m in run.messages)  # 1 channel, 3x3: 9 directions, 16 filters -> 8 of them
    w = run.model.conv1.weight
    assert torch.equal(w[8:], -w[:8]) and not torch.equal(w, plain.model.conv1.weight)


def test_filters_beyond_twice_the_patch_dimension_keep_their_init():
    conv = nn.Conv2d(1, 20, 3, padding=1, bias=False)
    before = conv.weight.detach().clone()
    assert whiten_conv_(conv, [_correlated_images(50, 1)]) == 9  # 9 directions, 18 filters
    assert torch.equal(conv.weight[18:], before[18:])
    assert torch.equal(conv.weight[9:18], -conv.weight[:9])


# --- the BN biases' learning rate ------------------------------------------------------------

def test_the_bn_bias_group_gets_the_multiplied_lr_and_the_same_lr_times_decay():
    r = coerce(TINY | {"bn_bias_lr": 64.0, "decay_all": True, "weight_decay": 5e-4})
    model = build_model(r, 4, 1)
    opt = build_optimizer(r, model)
    bn = [m for m in model.modules() if isinstance(m, nn.BatchNorm2d)]
    group = opt.param_groups[-1]
    assert {id(p) for p in group["params"]} == {id(m.bias) for m in bn}
    assert sum(len(g["params"]) for g in opt.param_groups) == len(list(model.parameters()))
    set_lr(opt, 0.1)
    assert group["lr"] == pytest.approx(6.4) and group["weight_decay"] == pytest.approx(5e-4 / 64)
    assert [g["lr"] for g in opt.param_groups[:-1]] == [0.1, 0.1]
    assert base_lr(opt) == pytest.approx(0.1)
    assert len(build_optimizer(coerce(TINY), model).param_groups) == 2  # off: as before


def test_a_training_step_moves_the_bn_biases_by_the_multiplier():
    """First SGD step from the same weights and batch: the update is lr x gradient, so the BN
    biases move exactly 64 times as far; every other parameter moves the same."""
    moved = {}
    for mult in (1.0, 64.0):
        run = Run(coerce(TINY | {"bn_bias_lr": mult, "momentum": 0.0}), None, quiet=True)
        before = {k: v.clone() for k, v in run.model.named_parameters()}
        x, y = next(iter(run.data.train_batches(0, 16, "cpu")))
        loop._train_step(run, x, y)
        moved[mult] = {k: (v - before[k]).detach() for k, v in run.model.named_parameters()}
    for k, d in moved[1.0].items():
        ratio = 64.0 if k.endswith("bias") and "bn" in k else 1.0
        assert torch.allclose(moved[64.0][k], ratio * d, rtol=1e-4, atol=1e-9), k


# --- EMA, lookahead and BN momentum ----------------------------------------------------------

def test_lookahead_copies_the_average_back_with_airbench_decay_ramp():
    model = nn.Sequential(nn.Linear(3, 2), nn.BatchNorm1d(2))
    ema = EMA(model, 0.95, every=5, lookahead=True)
    assert ema.due(10) and not ema.due(11)
    assert ema.decay_at(50, 100) == pytest.approx(0.95 ** 5 * 0.5 ** 3)
    start = model[0].weight.detach().clone()
    with torch.no_grad():
        model[0].weight.add_(1.0)
    ema.update(model, decay=0.25)
    assert torch.allclose(model[0].weight, start + 0.75)  # lerp(start, start + 1, 0.75)
    assert torch.equal(ema.state_dict()["0.weight"], model[0].weight)
    plain = EMA(model, 0.9)
    assert plain.decay_at(50, 100) == 0.9 and plain.due(7)


def test_the_loop_updates_the_ema_every_n_steps_and_ends_epochs_on_it(monkeypatch):
    calls = []
    real = EMA.update

    def spy(self, model, decay=None):
        calls.append(decay)
        real(self, model, decay)
    monkeypatch.setattr(EMA, "update", spy)
    fit(coerce(TINY | {"ema": 0.9, "ema_every": 2, "lookahead": True, "epochs": 2,
                       "bn_momentum": 0.4}), None, quiet=True)
    total = 2 * 64 // 16
    steps = [2 * i for i in range(1, total // 2 + 1)]
    ramped = [0.9 ** 2 * (s / total) ** 3 for s in steps]
    # epochs end after steps 4 and 8: a copy-back (decay 1) follows the update of those steps
    assert calls == pytest.approx(ramped[:2] + [1.0] + ramped[2:] + [1.0])


def test_bn_momentum_reaches_every_bn_layer():
    model = build_model(coerce(TINY | {"bn_momentum": 0.4}), 4, 1)
    bns = [m for m in model.modules() if isinstance(m, nn.BatchNorm2d)]
    assert bns and {m.momentum for m in bns} == {0.4}


# --- test-time translations ------------------------------------------------------------------

def test_translations_shift_one_pixel_with_reflected_borders():
    x = torch.arange(16.0).view(1, 1, 4, 4)
    down_right, up_left = translations(x)
    dr, ul = [1, 0, 1, 2], [1, 2, 3, 2]  # rows/columns read, -1 and 4 reflected to 1 and 2
    assert torch.equal(down_right[0, 0], x[0, 0][dr][:, dr])
    assert torch.equal(up_left[0, 0], x[0, 0][ul][:, ul])


@pytest.mark.parametrize("flip", [True, False])
def test_translate_tta_weights_the_views_as_airbench(flip):
    w = torch.randn(16, 3)
    model = lambda x: x.flatten(1) @ w  # noqa: E731 (a linear model: weights are exact)
    x = torch.randn(2, 1, 4, 4)
    dr, ul = translations(x)

    def view(v):
        return 0.5 * (model(v) + model(v.flip(-1))) if flip else model(v)
    expected = 0.5 * view(x) + 0.25 * view(dr) + 0.25 * view(ul)
    assert torch.allclose(translate_tta(model, flip=flip)(x), expected, atol=1e-6)
    assert not torch.allclose(expected, view(x), atol=1e-3)


# --- the translations through the record: train, eval, predict and serve score alike --------

# fp32 (--amp off): `eval` scores in fp32, so only an fp32 run's own final evaluation can be
# reproduced to the digit; on a CPU where amp auto picks bf16 the two differ from the 4th digit.
TRANSLATED = ["train", "--model", "resnet8", "--data", "synthetic:128x1x12x12:4", "--epochs", "1",
              "--batch-size", "16", "--workers", "0", "--device", "cpu", "--deterministic",
              "--amp", "off", "--tta-flip", "--tta-translate", "true", "--quiet"]


@pytest.fixture(scope="module")
def translated(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A tiny run trained with --tta-translate (and the test-time flip): 32 test images."""
    out = tmp_path_factory.mktemp("translated")
    assert main([*TRANSLATED, "--out", str(out)]) == 0
    return out


def _eval(capsys: pytest.CaptureFixture, run: Path, *extra: str) -> dict:
    assert main(["eval", str(run), "--json", "--device", "cpu", *extra]) == 0
    return json.loads(capsys.readouterr().out)


def test_eval_scores_a_translated_run_as_its_training_did(translated, capsys):
    """The record says tta_translate, so `eval RUN` reproduces the run's own test numbers;
    --translate off is the flip alone, as computed here by hand."""
    final = json.loads((translated / "summary.json").read_text())["test"]
    model, record = load_checkpoint(translated)
    pre = record.preprocess
    assert (pre.tta_flip, pre.tta_translate) == (True, True)
    auto = _eval(capsys, translated)
    assert (auto["flip"], auto["translate"], auto["n"], final["n"]) == (True, True, 32, 32)
    assert auto["top1"] == final["top1"]
    assert auto["loss"] == pytest.approx(final["loss"], rel=1e-6)
    off = _eval(capsys, translated, "--translate", "off")
    assert (off["flip"], off["translate"]) == (True, False)
    assert off["loss"] != pytest.approx(auto["loss"], rel=1e-4)  # the views do differ
    data = load_data("synthetic:128x1x12x12:4", stats=pre.stats(), image_size=12,
                     augment="none")
    x, y = (torch.cat(t) for t in zip(*data.eval_batches("test", 256, "cpu")))
    with torch.no_grad():
        logits = flip_tta(model.eval())(x)
    assert off["top1"] == (logits.argmax(1) == y).float().mean().item()
    assert off["loss"] == pytest.approx(F.cross_entropy(logits, y).item(), rel=1e-5)
    # the text names the views it scored
    assert main(["eval", str(translated), "--device", "cpu"]) == 0
    assert "(n=32, centre view + flip + 1 px translations): top1" in capsys.readouterr().out
    assert main(["eval", str(translated), "--device", "cpu", "--flip", "off",
                 "--translate", "off"]) == 0
    assert "(n=32, centre view): top1" in capsys.readouterr().out


def test_translate_on_with_other_views_is_one_clean_error(translated, capsys):
    for extra in (["--crops", "10"], ["--scales", "12,16"]):
        assert main(["eval", str(translated), "--device", "cpu", "--translate", "on",
                     *extra]) == 2
        err = capsys.readouterr().err
        assert err == ("error: --translate on averages translations of the centre view: drop "
                       "--crops 10/--scales, or --translate on\n")


def test_predict_and_serve_score_a_translated_run_with_its_views(translated, tmp_path, capsys):
    """predict's probabilities are the softmax of translate_tta's logits (flip_tta's with
    --translate off); the server's logits function is the same."""
    g = torch.Generator().manual_seed(0)
    paths = []
    for i in range(3):
        paths.append(tmp_path / f"{i}.png")
        Image.fromarray(torch.randint(0, 256, (12, 12), generator=g, dtype=torch.uint8).numpy(),
                        "L").save(paths[-1])
    model, record = load_checkpoint(translated)
    x = prepare_images(record, paths)
    with torch.no_grad():
        views = translate_tta(model.eval(), flip=True)(x), flip_tta(model)(x)
    expected, flip_only = (F.softmax(v, 1) for v in views)
    assert not torch.allclose(expected, flip_only, atol=1e-3)
    for extra, want in (([], expected), (["--translate", "off"], flip_only)):
        assert main(["predict", str(translated), *map(str, paths), "--topk", "4", "--json",
                     "--device", "cpu", *extra]) == 0
        rows = json.loads(capsys.readouterr().out)["predictions"]
        got = torch.tensor([[t["prob"] for t in sorted(r["top"], key=lambda t: t["index"])]
                            for r in rows])
        assert torch.allclose(got, want, atol=1e-5), extra
    pytest.importorskip("fastapi")
    from reslab.serve.server import load_service

    for translate, want in ((None, views[0]), (False, views[1])):
        service = load_service(translated, "torch", max_batch=4, translate=translate, threads=1)
        with torch.no_grad():
            assert torch.allclose(service.forward(x), want, atol=1e-4), translate


# --- alternating flip ------------------------------------------------------------------------

def _flips_by_example(n: int, seed: int, epoch: int) -> torch.Tensor:
    plan = alternate_flips(plan_epoch(n, "crop-flip", epoch_generator(seed, epoch), pad=2),
                           seed, epoch)
    flips = torch.empty(n, dtype=torch.bool)
    flips[plan.order] = plan.params["flip"]
    return flips


def test_alternating_flip_mirrors_each_image_exactly_every_other_epoch():
    n = 1000
    epochs = [_flips_by_example(n, 3, e) for e in range(4)]
    for a, b in zip(epochs, epochs[1:]):
        assert torch.equal(a, ~b)
    assert torch.equal(epochs[0], epochs[2]) and 400 < int(epochs[0].sum()) < 600
    assert not torch.equal(_flips_by_example(n, 4, 0), epochs[0])  # the seed draws the bits
    plan = plan_epoch(n, "crop", epoch_generator(3, 0), pad=2)
    assert alternate_flips(plan, 3, 0) is plan  # no flips to alternate


def test_the_data_pipeline_shows_each_image_mirrored_in_the_next_epoch():
    data = load_data("synthetic:32x1x8x8:4", augment="flip", pad=0)
    data.flip_alternate = True
    seen = []
    for epoch in (0, 1):
        x, _ = next(iter(data.train_batches(epoch, 32, "cpu", seed=1)))
        order = plan_epoch(32, "flip", epoch_generator(1, epoch), pad=0).order
        by_example = torch.empty_like(x)
        by_example[order] = x
        seen.append(by_example)
    assert torch.equal(seen[1], seen[0].flip(-1))


def test_resume_with_every_airbench_technique_is_bit_identical(tmp_path, monkeypatch):
    from helpers import whole_and_resumed

    r = coerce(TINY | {"iters": 8, "dirac_init": True, "whiten_stem": True, "bn_bias_lr": 64.0,
                       "ema": 0.9, "ema_every": 2, "lookahead": True, "bn_momentum": 0.4,
                       "tta_translate": True, "tta_flip": True, "flip_alternate": True,
                       "augment": "crop-flip", "pad": 2})
    a, b = whole_and_resumed(r, tmp_path, monkeypatch)
    assert a.keys() == b.keys() and all(torch.equal(a[k], b[k]) for k in a)


def test_whitening_large_images_samples_a_grid_of_patches():
    from reslab.models.init import MAX_POSITIONS, patch_covariance

    cov, n = patch_covariance([torch.randn(3, 3, 80, 80)], (7, 7))
    assert cov.shape == (147, 147) and n == 3 * 25 * 25  # 74 x 74 positions, stride 3
    assert 74 * 74 > MAX_POSITIONS >= 25 * 25
    _, n_small = patch_covariance([torch.randn(2, 1, 12, 12)], (3, 3))
    assert n_small == 2 * 10 * 10  # every patch of small images


# --- GELU --------------------------------------------------------------------------------------

def test_a_gelu_run_records_its_activation_and_is_rebuilt_with_it(tmp_path, capsys):
    """--activation gelu reaches every nonlinearity, the record names it (a ReLU run's record
    does not: records written before it stay valid), `eval RUN` reproduces the run's test
    numbers with it, and growing it is one clear error (no exact construction exists)."""
    from cli_helpers import clean_error
    base = ["train", "--data", "synthetic:64x1x12x12:4", "--model", "resnet8", "--iters", "4",
            "--batch-size", "16", "--device", "cpu", "--amp", "off", "--quiet"]  # as TRANSLATED
    assert main([*base, "--activation", "gelu", "--out", str(tmp_path / "g")]) == 0
    model, record = load_checkpoint(tmp_path / "g")
    assert record.kwargs["activation"] == "gelu" and isinstance(model.relu, nn.GELU)
    assert {b.activation for b in model.blocks()} == {"gelu"}
    final = json.loads((tmp_path / "g" / "summary.json").read_text())["test"]
    capsys.readouterr()
    assert main(["eval", str(tmp_path / "g"), "--json", "--device", "cpu"]) == 0
    scored = json.loads(capsys.readouterr().out)
    assert scored["top1"] == final["top1"]
    assert scored["loss"] == pytest.approx(final["loss"], rel=1e-6)
    assert main([*base, "--activation", "relu", "--out", str(tmp_path / "r")]) == 0
    assert "activation" not in load_checkpoint(tmp_path / "r")[1].kwargs
    capsys.readouterr()
    assert clean_error(capsys, [*base, "--activation", "tanh", "--out", str(tmp_path / "t")]) \
        == "error: invalid activation 'tanh' (choices: relu, gelu)"
    assert clean_error(capsys, ["grow", str(tmp_path / "g"), "--to", "resnet14", "--out",
                                str(tmp_path / "g14.safetensors")]) == (
        "error: cannot grow resnet8 into resnet14: its activation is gelu, and an added block "
        "is the identity only where act(x) = x for x >= 0 (ReLU): zeroing its residual branch "
        "would still apply the activation to x (train with --activation relu for a net that "
        "grows; the fast recipe uses gelu)")
    assert not (tmp_path / "g14.safetensors").exists()

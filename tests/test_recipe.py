"""Recipes (TOML + overrides) and the schedules as functions of the iteration."""
import io
import math

import pytest
import torch

from reslab.engine.recipe import Recipe, coerce, load_recipe, recipe_names
from reslab.engine.schedule import (WARMUP_WINDOW, ScheduleState, lr_at, on_train_batch,
                                    on_val_error, train_side)
from reslab.errors import UserError


def test_named_recipes_exist_and_load():
    assert {"demo", "fast", "fast-long", "paper-cifar", "paper-imagenet"} <= set(recipe_names())
    for name in recipe_names():
        assert isinstance(load_recipe(name), Recipe)


def test_fast_recipes_are_the_measured_ones():
    """docs/results/time-to-accuracy.md's figures were measured with exactly these defaults."""
    fast = load_recipe("fast")
    assert (fast.model, fast.activation, fast.epochs, fast.progressive_from,
            fast.progressive_until, fast.eval_every, fast.tta_flip, fast.tta_translate,
            fast.label_smoothing, fast.erase) == ("resnet9p", "gelu", 15, 0.43, 0.6, 0, True,
                                                  True, 0.2, 0)
    assert (fast.optimizer, fast.lr, fast.muon_lr, fast.muon_momentum, fast.batch_size) == \
        ("muon", 0.4, 0.1, 0.6, 256)
    long = load_recipe("fast-long")
    assert (long.model, long.epochs, long.erase, long.progressive_from,
            long.eval_every) == ("resnet32", 30, 0.5, 0.43, 0)
    assert train_side(0, 100, fast, 28) == 12  # Fashion-MNIST starts at 12 px


def test_paper_cifar_is_the_papers_recipe():
    r = load_recipe("paper-cifar")
    assert (r.lr, r.momentum, r.weight_decay, r.batch_size) == (0.1, 0.9, 1e-4, 128)
    assert (r.milestones, r.iters, r.schedule, r.normalize) == ([32000, 48000], 64000, "step",
                                                                "pixel")
    assert [lr_at(s, r.iters, r) for s in (0, 31999, 32000, 47999, 48000, 63999)] == \
        pytest.approx([0.1, 0.1, 0.01, 0.01, 0.001, 0.001])


def test_paper_imagenet_recipe_and_plateau_schedule():
    r = load_recipe("paper-imagenet")
    assert (r.batch_size, r.lr, r.weight_decay, r.schedule) == (256, 0.1, 1e-4, "plateau")
    assert (r.augment, r.image_size, r.normalize) == ("imagenet-pca", 224, "pixel")  # sec. 3.4
    st = ScheduleState()
    for err in (0.5, 0.4, 0.4, 0.4, 0.4):  # improves twice, then plateaus for patience=3 epochs
        on_val_error(st, r, err)
    assert lr_at(0, 10, r, st) == pytest.approx(0.01)


def _warmup_recipe():
    return load_recipe("paper-cifar", {"model": "resnet110", "warmup_lr": 0.01,
                                       "warmup_until_error": 0.8})


def _lrs_for(errors, r, st=None, start=0):
    """The lr of each iteration when iteration i's batch error is errors[i]."""
    st = st or ScheduleState()
    lrs = []
    for i, err in enumerate(errors, start):
        lrs.append(lr_at(i, r.iters, r, st))
        on_train_batch(st, r, err)
    return lrs, st


def test_resnet110_warmup_ends_the_first_iteration_the_running_error_is_below_80_percent():
    r = _warmup_recipe()
    assert WARMUP_WINDOW == 50
    # 100 iterations at 90% error with one lucky 50% batch, then 60%: the mean of the last 50 is
    # (0.9 * (50 - k) + 0.6 k) / 50 after k iterations at 60%, below 0.8 first at k = 17.
    errors = [0.9] * 100 + [0.6] * 100
    errors[60] = 0.5
    lrs, st = _lrs_for(errors, r)
    last_warm = 100 + 17 - 1  # iteration 116 measures the 17th 60% batch; 117 runs at lr
    assert lrs[:last_warm + 1] == [0.01] * (last_warm + 1)
    assert lrs[last_warm + 1:] == [0.1] * (len(errors) - last_warm - 1)
    assert not st.warm and st.warm_errors == []
    # One batch below 80% does not end it: the window must be full and its mean below 80%.
    lrs, st = _lrs_for([0.1] * 49, r)
    assert st.warm and lrs == [0.01] * 49 and len(st.warm_errors) == 49
    on_train_batch(st, r, 0.1)
    assert not st.warm and lr_at(50, r.iters, r, st) == 0.1
    # Exactly at the threshold is not below it.
    lrs, st = _lrs_for([0.8] * 200, r)
    assert st.warm and set(lrs) == {0.01} and len(st.warm_errors) == WARMUP_WINDOW
    # Without warmup_until_error nothing is recorded.
    st = ScheduleState()
    on_train_batch(st, load_recipe("paper-cifar"), 0.1)
    assert st.warm_errors == []


def test_warmup_state_round_trips_for_an_exact_resume():
    r = _warmup_recipe()
    errors = [0.9 - 0.002 * i for i in range(200)]  # the window mean crosses 0.8 at some point
    straight, _ = _lrs_for(errors, r)
    assert 0.01 in straight and 0.1 in straight
    for cut in (30, 60, 75):  # window not full, full, and around the switch
        lrs, st = _lrs_for(errors[:cut], r)
        buf = io.BytesIO()  # as state/last.pt stores it: torch.save, weights_only loading
        torch.save({"schedule": st.to_dict()}, buf)
        buf.seek(0)
        restored = ScheduleState(**torch.load(buf, weights_only=True)["schedule"])
        assert restored == st and restored.warm_errors is not st.warm_errors
        rest, _ = _lrs_for(errors[cut:], r, restored, start=cut)
        assert lrs + rest == straight
    # A state saved before warm_errors existed still loads (and starts an empty window).
    old = {"plateau_scale": 1.0, "plateau_best": math.inf, "plateau_bad_epochs": 0, "warm": True}
    assert ScheduleState(**old).warm_errors == []


def test_cosine_and_onecycle_shapes():
    r = coerce({"schedule": "cosine", "lr": 1.0})
    assert lr_at(0, 100, r) == 1.0 and lr_at(50, 100, r) == pytest.approx(0.5)
    assert lr_at(100, 100, r) == pytest.approx(0.0, abs=1e-12)
    r = coerce({"schedule": "onecycle", "lr": 1.0})
    assert lr_at(0, 100, r) == pytest.approx(0.1) and lr_at(25, 100, r) == pytest.approx(1.0)
    assert lr_at(100, 100, r) == 0.0 and lr_at(62, 100, r) < lr_at(40, 100, r)


def test_progressive_resizing_grows_in_4px_steps_to_the_native_side():
    r = coerce({"progressive_from": 0.5, "progressive_until": 0.5})
    sides = [train_side(s, 100, r, 28) for s in range(100)]
    assert sides[0] == 14 and sides[49] == 26 and sides[50:] == [28] * 50
    assert sorted(set(sides)) == [14, 18, 22, 26, 28] and sides == sorted(sides)
    assert [train_side(s, 100, coerce({}), 28) for s in (0, 99)] == [28, 28]  # off
    assert train_side(0, 100, coerce({"progressive_from": 1}), 28) == 28  # from the native side
    assert train_side(0, 100, r, 224) == 112  # a fraction: the same recipe for large images
    assert [train_side(0, 100, r, n) for n in (8, 12)] == [8, 8]  # never below 8 px
    with pytest.raises(UserError, match="invalid progressive_from 2"):
        coerce({"progressive_from": 2})
    with pytest.raises(UserError, match="invalid progressive_from 0"):
        coerce({"progressive_from": 0})
    with pytest.raises(UserError, match="invalid progressive_until 0"):
        coerce({"progressive_until": 0})


def test_eval_every_zero_is_refused_with_the_plateau_schedule():
    assert coerce({"eval_every": 0}).eval_every == 0
    with pytest.raises(UserError, match=r"^the plateau schedule lowers the lr on evaluations: "
                                        r"eval_every 0 \(at the end only\) leaves it none"):
        coerce({"eval_every": 0, "schedule": "plateau"})


def test_linear_warmup():
    r = coerce({"schedule": "constant", "lr": 1.0, "warmup_iters": 10, "warmup_lr": 0.0})
    assert [lr_at(s, 100, r) for s in (0, 5, 10, 50)] == pytest.approx([0.0, 0.5, 1.0, 1.0])


def test_overrides_are_coerced_from_cli_strings():
    r = load_recipe("fast", {"lr": "0.05", "milestones": "100,200", "nesterov": "false",
                             "iters": "1e3", "batch_size": "64"})
    assert (r.lr, r.milestones, r.nesterov, r.iters, r.batch_size) == \
        (0.05, [100, 200], False, 1000, 64)


@pytest.mark.parametrize("values, message", [
    ({"lr": -0.1}, "invalid lr -0.1: must be in (0, 10]"),
    ({"batch_size": 0}, "invalid batch_size 0: must be between 1 and 65,536"),
    ({"epochs": -1}, "invalid epochs -1.0: must be in (0, 100000]"),
    ({"gamma": -1}, "invalid gamma -1.0: must be in (0, 1]"),
    ({"image_size": 100000}, "invalid image_size 100000: must be between 1 and 4,096"),
    ({"pad": 1000000}, "invalid pad 1000000: must be between 0 and 256"),
    ({"iters": "1e20"}, "invalid iters 100000000000000000000: must be between 1 and "
                        "1,000,000,000"),
    ({"momentum": 1.5}, "invalid momentum 1.5: must be in [0, 1)"),
    ({"model": "resnet21"}, "unknown model 'resnet21' (closest: resnet32, resnet20, resnet18)"),
    ({"batch_size": "1.5"}, "invalid value for batch_size: '1.5' (a whole number)"),
    ({"schedule": "linear"}, "invalid schedule 'linear' (choices: step, cosine, onecycle, "
                             "plateau, constant)"),
    ({"lrr": 0.1}, "unknown recipe key 'lrr' (closest: lr)"),
    ({"nesterov": "maybe"}, "invalid value for nesterov: 'maybe' (true or false)"),
    # a count, often written as a fraction (Keras' validation_split): the message says so
    ({"val_split": "1.5"}, "invalid val_split '1.5': must be a whole number of training images "
                           "between 0 and 1,000,000,000 (a count, not a fraction)"),
    ({"val_split": 0.1}, "invalid val_split 0.1: must be a whole number of training images "
                         "between 0 and 1,000,000,000 (a count, not a fraction)"),
])
def test_bad_values_are_user_errors(values, message):
    with pytest.raises(UserError) as e:
        coerce(values)
    assert str(e.value) == message


def test_unknown_recipe_name():
    with pytest.raises(UserError, match=r"unknown recipe 'fats' \(closest: fast\)"):
        load_recipe("fats")


def test_recipe_roundtrip_through_toml(tmp_path):
    from reslab.engine.recipe import read_toml, save_recipe

    r = load_recipe("paper-cifar", {"seed": 3})
    save_recipe(tmp_path / "c.toml", r)
    assert coerce(read_toml(tmp_path / "c.toml")) == r
    assert not math.isnan(r.lr)

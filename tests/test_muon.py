"""optimizer = "muon" (engine/muon.py): Muon's orthogonalised steps for the conv filters,
torch's SGD for every other parameter, in one optimizer that resumes bit for bit."""
from __future__ import annotations

import pytest
import torch
from torch import nn

from reslab.engine.muon import (LOW_PRECISION_MIN_SIDE, NS_COEFFICIENTS, MuonSGD, orthogonalize,
                               orthogonalize_flops)
from reslab.engine.recipe import coerce
from reslab.engine.setup import base_lr, build_model, build_optimizer, set_lr
from reslab.errors import UserError

TINY = {"model": "resnet8", "data": "synthetic:64x1x12x12:4", "batch_size": 16, "lr": 0.05,
        "schedule": "constant", "workers": 0, "device": "cpu", "deterministic": True,
        "amp": "off", "optimizer": "muon", "nesterov": True}


@pytest.mark.parametrize("shape", [(16, 72), (72, 16), (32, 96)])
def test_orthogonalize_brings_every_singular_value_near_one_along_the_svds_directions(shape):
    g = torch.randn(*shape, generator=torch.Generator().manual_seed(0))
    g[:, 0] *= 50  # one dominant direction, which plain SGD would follow almost alone
    o = orthogonalize(g, steps=5, dtype=torch.float32)
    assert o.shape == g.shape and o.dtype == g.dtype
    s = torch.linalg.svdvals(o)
    assert len(s) == min(shape) and 0.6 < float(s.min()) and float(s.max()) < 1.25
    u, _, vh = torch.linalg.svd(g, full_matrices=False)
    exact = u @ vh  # the polar factor U V^T that the iteration approximates
    cosine = float((o * exact).sum() / (o.norm() * exact.norm()))
    assert cosine > 0.97


@pytest.mark.parametrize("shape", [(32, 288), (288, 32), (16, 16)])
def test_the_gram_iteration_is_the_textbook_newton_schulz_loop(shape):
    """orthogonalize iterates on the s x s Gram matrix; in float64 it must give what the
    textbook loop x <- a x + (b G + c G^2) x gives, step for step."""
    a, b, c = NS_COEFFICIENTS
    g = torch.randn(*shape, dtype=torch.float64, generator=torch.Generator().manual_seed(1))
    for steps in (1, 2, 3, 5):
        x = g if shape[0] <= shape[1] else g.T
        x = x / (x.norm() + 1e-7)
        for _ in range(steps):
            gram = x @ x.T
            x = a * x + (b * gram + c * gram @ gram) @ x
        textbook = x if shape[0] <= shape[1] else x.T
        torch.testing.assert_close(orthogonalize(g, steps, torch.float64), textbook,
                                   rtol=0, atol=1e-12)


def test_small_filter_banks_iterate_in_fp32_even_where_bf16_is_native():
    """bf16 pays only for products at least LOW_PRECISION_MIN_SIDE on a side: a smaller bank's
    step is exactly the fp32 one, a larger bank's the ns_dtype one."""
    def step(rows: int, ns_dtype: torch.dtype) -> torch.Tensor:
        torch.manual_seed(0)
        w = nn.Parameter(torch.randn(rows, 160, 1, 1))
        opt = MuonSGD([{"params": [w], "orthogonalize": True}], lr=0.1, momentum=0.6,
                      nesterov=False, ns_dtype=ns_dtype)
        w.grad = torch.randn_like(w)
        opt.step()
        return w.detach()

    small, large = LOW_PRECISION_MIN_SIDE // 2, LOW_PRECISION_MIN_SIDE
    assert torch.equal(step(small, torch.bfloat16), step(small, torch.float32))
    assert not torch.equal(step(large, torch.bfloat16), step(large, torch.float32))


@pytest.mark.parametrize("shape", [(128, 1152), (1152, 128), (16, 9)])
def test_the_counted_orthogonalisation_work_is_what_torch_counts(shape):
    """benchmarks/profile_train.py counts muon's optimizer work with orthogonalize_flops."""
    from torch.utils.flop_counter import FlopCounterMode

    with FlopCounterMode(display=False) as counter:
        orthogonalize(torch.randn(*shape), steps=3, dtype=torch.float32)
    assert counter.get_total_flops() == orthogonalize_flops(*shape, steps=3)


def test_a_filter_step_rescales_then_subtracts_the_orthogonalised_nesterov_momentum():
    torch.manual_seed(0)
    w = nn.Parameter(torch.randn(8, 4, 3, 3))
    opt = MuonSGD([{"params": [w], "orthogonalize": True, "momentum": 0.6}], lr=0.1,
                  momentum=0.9, nesterov=True, ns_steps=3)
    grads = [torch.randn(8, 4, 3, 3) for _ in range(2)]
    expected, buf = w.detach().clone(), torch.zeros(8, 4, 3, 3)
    for g in grads:
        buf = 0.6 * buf + g
        step = orthogonalize((g + 0.6 * buf).reshape(8, -1), 3, torch.float32).view(8, 4, 3, 3)
        expected = expected * (8 ** 0.5 / expected.norm()) - 0.1 * step
        w.grad = g.clone()
        opt.step()
    torch.testing.assert_close(w.detach(), expected, rtol=1e-6, atol=1e-6)


def test_a_filter_group_at_lr_zero_is_left_exactly_as_it_is():
    """freeze_epochs sets the body's lr to 0: its filters must not move, rescaling included
    (the frozen body's BN runs in eval mode, where a filter's scale changes the output)."""
    w = nn.Parameter(torch.randn(8, 4, 3, 3) * 3)
    before = w.detach().clone()
    opt = MuonSGD([{"params": [w], "orthogonalize": True}], lr=0.0, momentum=0.6,
                  nesterov=True)
    w.grad = torch.randn_like(w)
    opt.step()
    assert torch.equal(w.detach(), before)


def test_every_other_parameter_takes_torchs_sgd_step_exactly():
    torch.manual_seed(0)
    a, b = nn.Linear(6, 3), nn.Linear(6, 3)
    b.load_state_dict(a.state_dict())
    ours = MuonSGD([{"params": a.parameters(), "weight_decay": 5e-4}], lr=0.2, momentum=0.9,
                   nesterov=True)
    torchs = torch.optim.SGD(b.parameters(), lr=0.2, momentum=0.9, nesterov=True,
                             weight_decay=5e-4)
    for _ in range(4):
        x = torch.randn(5, 6)
        for net, opt in ((a, ours), (b, torchs)):
            opt.zero_grad()
            net(x).square().sum().backward()
            opt.step()
    for p, q in zip(a.parameters(), b.parameters()):
        assert torch.equal(p, q)


def test_build_optimizer_gives_the_conv_filters_to_muon_at_muon_lr():
    r = coerce(TINY | {"muon_lr": 0.02, "muon_momentum": 0.5})
    model = build_model(r, num_classes=4, in_chans=1)
    opt = build_optimizer(r, model)
    assert isinstance(opt, MuonSGD)
    muon = [g for g in opt.param_groups if g["orthogonalize"]]
    assert len(muon) == 1 and muon[0]["momentum"] == 0.5
    convs = [m.weight for m in model.modules() if isinstance(m, nn.Conv2d)]
    assert {id(p) for p in muon[0]["params"]} == {id(p) for p in convs}
    others = [p for g in opt.param_groups if not g["orthogonalize"] for p in g["params"]]
    assert len(others) + len(convs) == len(list(model.parameters()))
    assert model.fc.weight in others and all(p.ndim <= 2 for p in others)
    set_lr(opt, 0.025)  # the schedule's lr: the filters' is scaled alike
    assert muon[0]["lr"] == pytest.approx(0.01) and base_lr(opt) == pytest.approx(0.025)


def test_muon_recipe_values_out_of_range_are_user_errors():
    with pytest.raises(UserError, match=r"^invalid muon_lr 0.0: must be in \(0, "):
        coerce({"muon_lr": 0})
    with pytest.raises(UserError, match=r"^invalid muon_momentum 1.0: must be in \[0, 1\)"):
        coerce({"muon_momentum": 1.0})
    with pytest.raises(UserError, match="^invalid optimizer 'lion'"):
        coerce({"optimizer": "lion"})


def test_a_muon_run_learns_and_resumes_bit_identically(tmp_path, monkeypatch):
    from helpers import whole_and_resumed

    a, b = whole_and_resumed(coerce(TINY | {"iters": 8}), tmp_path, monkeypatch)
    assert a.keys() == b.keys() and all(torch.equal(a[k], b[k]) for k in a)
    # every filter bank left at norm sqrt(out) by its last step's rescaling, less that step
    w = a["layer1.0.conv1.weight"]
    assert abs(float(w.norm()) - len(w) ** 0.5) < 0.05 * len(w) ** 0.5

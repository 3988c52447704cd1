"""The model family against the paper (Table 1, Table 6, section 3.3) and torchvision."""
from __future__ import annotations

import functools
from unittest.mock import patch

import pytest
import torch
import torch.nn.functional as F
import torchvision
from torch import nn

from reslab.errors import UserError
from reslab.models import REGISTRY, PadShortcut, create_model, get_arch, list_models

# Too big to backpropagate in a fast suite: parameters and one tiny forward only.
BIG = {"resnet152", "plain152", "resnet1202", "plain1202"}

TORCHVISION_PARAMS = {"resnet18": 11_689_512, "resnet34": 21_797_672, "resnet50": 25_557_032,
                      "resnet101": 44_549_160, "resnet152": 60_192_808}
# Table 6 (10 classes) as the paper prints it, and the exact counts behind it.
CIFAR_PARAMS = {"resnet20": (269_722, "0.27"), "resnet32": (464_154, "0.46"),
                "resnet44": (658_586, "0.66"), "resnet56": (853_018, "0.85"),
                "resnet110": (1_727_962, "1.7"), "resnet1202": (19_421_274, "19.4")}
# n = 1 and 2 of the same 6n+2 family (not in the paper), counted by hand: stem 432 + 32,
# per block two 3x3 convs + 2 BNs, option A shortcuts free, fc 64 * 10 + 10.
SHALLOW_PARAMS = {"resnet8": 75_290, "resnet14": 172_506}


def n_params(model: nn.Module) -> int:
    return sum(p.numel() for p in model.parameters())


def meta_model(name: str, **kwargs) -> nn.Module:
    """Shapes and counts only: no memory, no init time."""
    with torch.device("meta"):
        return create_model(name, **kwargs)


@functools.lru_cache(maxsize=None)
def tiny_input(name: str) -> torch.Tensor:
    # Batch 2: train-mode BN needs two values per channel where ImageNet nets reach 1x1 maps.
    size = 32 if get_arch(name).family == "imagenet" else 16
    return torch.randn(2, 3, size, size, generator=torch.Generator().manual_seed(0))


@pytest.mark.parametrize("name", list_models())
def test_forward_backward_whole_registry(name: str) -> None:
    torch.manual_seed(0)
    model = create_model(name)
    x = tiny_input(name)
    expected = (2, 1000 if get_arch(name).family == "imagenet" else 10)
    if name in BIG:
        # Train mode (batch statistics): in eval mode a freshly initialised resnet1202 has BN
        # running stats of 0/1, so 600 un-normalised residual additions overflow to inf.
        with torch.no_grad():
            out = model(x)
        assert out.shape == expected and torch.isfinite(out).all()
        return
    out = model(x)
    assert out.shape == expected and torch.isfinite(out).all()
    out.square().mean().backward()
    missing = [n for n, p in model.named_parameters() if p.grad is None]
    assert not missing, f"no gradient reaches {missing[:3]}"
    assert all(torch.isfinite(p.grad).all() for p in model.parameters())


@pytest.mark.parametrize("name,count", TORCHVISION_PARAMS.items())
def test_imagenet_param_counts_match_torchvision(name: str, count: int) -> None:
    assert n_params(meta_model(name)) == count
    with torch.device("meta"):
        assert n_params(getattr(torchvision.models, name)()) == count


@pytest.mark.parametrize("name", ["resnet18", "resnet50"])
def test_torchvision_state_dict_loads_strictly_and_outputs_match(name: str) -> None:
    torch.manual_seed(0)
    theirs = getattr(torchvision.models, name)().eval()
    for m in theirs.modules():   # non-trivial BN statistics, so eval mode is really exercised
        if isinstance(m, nn.BatchNorm2d):
            m.running_mean.uniform_(-0.5, 0.5)
            m.running_var.uniform_(0.5, 1.5)
            nn.init.uniform_(m.weight, 0.5, 1.5)
            nn.init.uniform_(m.bias, -0.5, 0.5)
    ours = create_model(name).eval()
    ours.load_state_dict(theirs.state_dict(), strict=True)
    x = torch.randn(2, 3, 64, 64)
    with torch.no_grad():
        assert (ours(x) - theirs(x)).abs().max().item() <= 1e-5


@pytest.mark.parametrize("name,expected", CIFAR_PARAMS.items())
def test_cifar_param_counts_as_table6(name: str, expected: tuple[int, str]) -> None:
    count, table6 = expected
    n = n_params(meta_model(name, num_classes=10))
    millions = n / 1e6
    assert n == count
    assert (f"{millions:.2f}" if millions < 1 else f"{millions:.1f}") == table6


@pytest.mark.parametrize("name", sorted(SHALLOW_PARAMS))
def test_shallow_cifar_nets_param_counts(name: str) -> None:
    assert n_params(meta_model(name, num_classes=10)) == SHALLOW_PARAMS[name]
    assert get_arch(name).layers == ((1, 1, 1) if name == "resnet8" else (2, 2, 2))


@pytest.mark.parametrize("depth", [18, 34, 50, 101, 152, 8, 14, 20, 32, 44, 56, 110, 1202])
def test_plain_net_has_option_a_resnet_param_count(depth: int) -> None:
    # Option A shortcuts are parameter-free, so the comparison of Fig. 4/6 is at equal size.
    assert n_params(meta_model(f"plain{depth}")) == n_params(
        meta_model(f"resnet{depth}", shortcut="A"))


def _shortcuts(model: nn.Module) -> list[nn.Module | None]:
    return [b.downsample for b in model.blocks()]


def _is_projection(m: nn.Module | None) -> bool:
    return (isinstance(m, nn.Sequential) and len(m) == 2 and isinstance(m[0], nn.Conv2d)
            and m[0].kernel_size == (1, 1) and isinstance(m[1], nn.BatchNorm2d))


@pytest.mark.parametrize("name", ["resnet18", "resnet50", "resnet20"])
def test_shortcut_options(name: str) -> None:
    """Section 3.3: A pads where shapes change, B projects there, C projects everywhere."""
    c = _shortcuts(meta_model(name, shortcut="C"))
    assert all(_is_projection(m) for m in c)
    changes = [m is not None for m in _shortcuts(meta_model(name, shortcut="B"))]
    assert all(_is_projection(m) for m in _shortcuts(meta_model(name, shortcut="B")) if m)
    a = _shortcuts(meta_model(name, shortcut="A"))
    assert [m is not None for m in a] == changes
    assert all(isinstance(m, PadShortcut) for m in a if m is not None)
    assert all(m is None for m in _shortcuts(meta_model("plain" + name[6:])))


@pytest.mark.parametrize("side", [28, 7])
def test_option_a_keeps_channels_last_gradients(side: int) -> None:
    """Option A is x[:, :, ::2, ::2] zero-padded, and its backward must hand back a
    channels-last gradient for a channels-last input: slicing's backward returns an NCHW one,
    and every element-wise backward upstream (BN, ReLU, GELU, the additions) then mixes the
    two layouts and runs up to 10x slower (resnet20 trained 3x slower with GELU, bf16)."""
    shortcut = PadShortcut(16, 32, stride=2)
    leaf = torch.randn(2, 16, side, side).contiguous(memory_format=torch.channels_last)
    leaf.requires_grad_()
    x = leaf * 1  # not a leaf: a leaf's .grad is copied into its own layout
    grads = []
    x.register_hook(grads.append)
    out = shortcut(x)
    expected = F.pad(x.detach()[:, :, ::2, ::2], (0, 0, 0, 0, 0, 16))
    assert torch.equal(out, expected)
    out.backward(torch.ones_like(out))
    assert grads[0].is_contiguous(memory_format=torch.channels_last)
    assert torch.equal(grads[0][:, :, ::2, ::2], torch.ones(2, 16, (side + 1) // 2,
                                                           (side + 1) // 2))
    assert grads[0].sum() == 2 * 16 * ((side + 1) // 2) ** 2


def test_in_chans_one() -> None:
    for name, size in (("resnet20", 16), ("resnet18", 32)):
        model = create_model(name, in_chans=1, num_classes=7).eval()
        assert model.conv1.in_channels == 1
        with torch.no_grad():
            assert model(torch.randn(2, 1, size, size)).shape == (2, 7)


@pytest.mark.parametrize("name", ["resnet18", "resnet50", "resnet20"])
def test_zero_init_residual_makes_every_branch_zero(name: str) -> None:
    torch.manual_seed(0)
    model = create_model(name, zero_init_residual=True)
    size = 32 if name != "resnet20" else 16
    inter = model.forward_intermediates(torch.randn(2, 3, size, size))
    assert len(inter.residuals) == len(model.blocks())
    assert all(torch.count_nonzero(r) == 0 for r in inter.residuals.values())
    # Without it the branches are not zero, so the test can tell the two apart.
    plain_init = create_model(name).forward_intermediates(torch.randn(2, 3, size, size))
    assert all(torch.count_nonzero(r) > 0 for r in plain_init.residuals.values())


def test_stride_in_places_the_stride() -> None:
    paper, v15 = meta_model("resnet50", stride_in="1x1"), meta_model("resnet50")
    for p_block, t_block in zip(paper.blocks(), v15.blocks()):
        s = p_block.stride
        assert p_block.conv1.stride == (s, s) and p_block.conv2.stride == (1, 1)
        assert t_block.conv1.stride == (1, 1) and t_block.conv2.stride == (s, s)
    assert sum(b.stride == 2 for b in paper.blocks()) == 3


@pytest.mark.parametrize("kwargs", [dict(shortcut="D"), dict(stride_in="2x2"),
                                    dict(num_classes=0), dict(in_chans=0)])
def test_bad_options_raise_value_error(kwargs: dict) -> None:
    with pytest.raises(ValueError):
        meta_model("resnet50", **kwargs)


def test_zero_init_on_plain_net_and_unknown_names() -> None:
    with pytest.raises(ValueError):
        meta_model("plain20", zero_init_residual=True)
    with pytest.raises(UserError, match=r"unknown model 'resnet21' \(closest: .*resnet20"):
        create_model("resnet21")
    with pytest.raises(UserError):
        list_models("mnist")


def test_registry_families() -> None:
    # 5 ImageNet, 8 CIFAR and 2 pooled depths, each residual and plain
    assert len(REGISTRY) == 30
    assert (set(list_models("imagenet")) | set(list_models("cifar")) | set(list_models("pooled"))
            == set(list_models()))
    assert all(get_arch(n).family == "cifar" for n in list_models("cifar"))
    assert list_models("pooled") == ["resnet9p", "resnet11p", "plain9p", "plain11p"]


def wide_params(width: int, blocks: int, in_chans: int = 3, classes: int = 10) -> int:
    """By hand: stem conv + BN, per block two 3x3 convs + 2 BNs (option A shortcuts free), fc."""
    w = [16 * width, 32 * width, 64 * width]
    total = in_chans * w[0] * 9 + 2 * w[0]
    cin = w[0]
    for c in w:
        for _ in range(blocks):
            total += cin * c * 9 + 2 * c + c * c * 9 + 2 * c
            cin = c
    return total + w[2] * classes + classes


@pytest.mark.parametrize("name,width,blocks", [("resnet8-w2", 2, 1), ("resnet8-w4", 4, 1),
                                               ("resnet14-w3", 3, 2), ("plain20-w2", 2, 3)])
def test_widened_cifar_nets(name: str, width: int, blocks: int) -> None:
    arch = get_arch(name)
    assert (arch.name, arch.width, arch.layers) == (name, width, (blocks,) * 3)
    assert arch.widths == (16 * width, 32 * width, 64 * width)
    assert n_params(meta_model(name, in_chans=1)) == wide_params(width, blocks, in_chans=1)
    assert name not in REGISTRY and name not in list_models()  # the listing stays the paper's


def test_widened_net_trains_and_grows_exactly() -> None:
    from reslab.models.surgery import grow, infer_arch
    model = create_model("resnet8-w2", num_classes=4, in_chans=1)
    x = torch.randn(2, 1, 12, 12, generator=torch.Generator().manual_seed(0))
    model(x).sum().backward()
    assert infer_arch(model).name == "resnet8-w2"
    deeper = grow(model.eval(), "resnet14-w2")
    assert torch.equal(deeper(x), model(x))
    with pytest.raises(UserError, match=r"cannot grow resnet8-w2 into resnet14: different "
                                        r"widths \(\(32, 64, 128\) vs \(16, 32, 64\)"):
        grow(model, "resnet14")


def pooled_cost(width: int, layers: tuple[int, ...], in_chans: int = 1, classes: int = 10,
                side: int = 28) -> tuple[int, int]:
    """(parameters, MACs) by hand: stem conv + BN; per stage a transition (3x3 conv to the
    stage's width + BN, then a 2x2 max-pool halves the side) and its blocks (two 3x3 convs + 2
    BNs each, identity shortcuts); fc."""
    w = [16 * width, 32 * width, 64 * width, 128 * width]
    params, macs = in_chans * w[0] * 9 + 2 * w[0], in_chans * w[0] * 9 * side * side
    c = w[0]
    for out, blocks in zip(w[1:], layers):
        params, macs = params + c * out * 9 + 2 * out, macs + c * out * 9 * side * side
        side //= 2
        params += blocks * 2 * (out * out * 9 + 2 * out)
        macs += blocks * 2 * out * out * 9 * side * side
        c = out
    return params + c * classes + classes, macs + c * classes


@pytest.mark.parametrize("name,width,layers", [("resnet9p", 1, (1, 0, 1)),
                                               ("resnet11p", 1, (1, 1, 1)),
                                               ("resnet9p-w4", 4, (1, 0, 1)),
                                               ("plain11p-w2", 2, (1, 1, 1))])
def test_pooled_nets_by_hand(name: str, width: int, layers: tuple) -> None:
    from reslab.analysis.macs import count_macs
    arch = get_arch(name)
    assert (arch.family, arch.layers, arch.width, arch.depth) == (
        "pooled", layers, width, 5 + 2 * sum(layers))
    model = meta_model(name, in_chans=1)
    assert (n_params(model), count_macs(model, (1, 1, 28, 28))) == pooled_cost(width, layers)


def test_resnet9p_w4_is_pages_resnet9() -> None:
    """Page's DAWNBench ResNet-9: prep 64, then 128 (+ a residual block), 256, 512 (+ a
    residual block), each halving the side; 6.57M parameters on CIFAR-10."""
    model = create_model("resnet9p-w4").eval()
    assert n_params(model) == pooled_cost(4, (1, 0, 1), in_chans=3)[0] == 6_573_130
    sides = {}
    for name, stage in model.stages():
        stage.register_forward_hook(lambda m, a, out, name=name: sides.__setitem__(
            name, tuple(out.shape[1:])))
    with torch.no_grad():
        model(torch.zeros(1, 3, 32, 32))
    assert sides == {"layer1": (128, 16, 16), "layer2": (256, 8, 8), "layer3": (512, 4, 4)}
    assert isinstance(model.avgpool, nn.AdaptiveMaxPool2d)


def test_pooled_net_grows_exactly_in_both_modes() -> None:
    from reslab.models.surgery import grow, infer_arch
    model = create_model("resnet9p", num_classes=4, in_chans=1)
    x = torch.randn(4, 1, 20, 20, generator=torch.Generator().manual_seed(0))
    model(x).sum().backward()
    assert infer_arch(model).name == "resnet9p"
    for mode in (True, False):
        deeper = grow(model.train(mode), "resnet11p")
        assert infer_arch(deeper).name == "resnet11p"
        assert torch.equal(deeper(x), model(x))
    with pytest.raises(UserError, match="cannot grow resnet9p into resnet14: different "
                                        r"families \(pooled vs cifar\)"):
        grow(model, "resnet14")


@pytest.mark.parametrize("name", ["resnet8-w1", "resnet8-w17", "resnet8-w02", "resnet18-w2",
                                  "resnet9-w2", "resnet8-w", "resnet8w2", "resnet8p-w2",
                                  "resnet9p-w1", "resnet50p"])
def test_bad_width_suffixes(name: str) -> None:
    with pytest.raises(UserError, match=f"unknown model '{name}'"):
        get_arch(name)


def test_images_too_small_for_a_pooled_net_are_one_clear_error(capsys, tmp_path) -> None:
    """The default recipe's resnet9p pools three times: 4 px images were a RuntimeError from
    max_pool2d deep in the first step; now one line and exit 2, before any training."""
    from cli_helpers import clean_error
    base = ["train", "--data", "synthetic:32x3x4x4:2", "--iters", "2", "--out", tmp_path / "r",
            "--quiet"]
    assert clean_error(capsys, base) == (
        "error: resnet9p needs images of at least 8 px (one 2x2 max-pool per stage); these are "
        "4 px: give --image-size 8 or more, or a CIFAR-family model such as --model resnet14")
    assert not (tmp_path / "r" / "model.safetensors").exists()
    assert get_arch("resnet9p-w2").min_side == 8 and get_arch("resnet1202").min_side == 1


def test_gelu_nets_swap_every_relu_and_keep_the_state_dict() -> None:
    """activation="gelu" (airbench94's nonlinearity) replaces the stem's, every block's and
    every Transition's ReLU; the parameters and their names are those of the ReLU net, so the
    same weights compute gelu where the ReLU net computes relu."""
    relu = create_model("resnet9p", num_classes=3, in_chans=1).eval()
    gelu = create_model("resnet9p", num_classes=3, in_chans=1, activation="gelu").eval()
    assert list(relu.state_dict()) == list(gelu.state_dict())
    gelu.load_state_dict(relu.state_dict())
    calls: list[str] = []
    real_relu, real_gelu = F.relu, F.gelu
    with patch.object(F, "relu", lambda x, **kw: calls.append("relu") or real_relu(x)), \
            patch.object(F, "gelu", lambda x, **kw: calls.append("gelu") or real_gelu(x)):
        x = torch.randn(2, 1, 16, 16, generator=torch.Generator().manual_seed(0))
        with torch.no_grad():
            y_gelu = gelu(x)
        assert calls == ["gelu"] * 8  # stem, 3 transitions, 2 blocks x (after conv1, merge)
        calls.clear()
        with torch.no_grad():
            y_relu = relu(x)
    assert calls == ["relu"] * 8
    assert not torch.allclose(y_gelu, y_relu)
    assert gelu.block_options["activation"] == "gelu" and isinstance(gelu.relu, nn.GELU)
    with pytest.raises(ValueError, match="activation must be one of relu, gelu, got 'tanh'"):
        create_model("resnet14", activation="tanh")


def test_a_gelu_net_does_not_grow() -> None:
    """Section 1's construction needs act(x) = x on a block's (non-negative) input: true of
    ReLU, not of GELU (gelu(1) = 0.84), so the grown net would not compute the same function."""
    from reslab.models.surgery import grow
    model = create_model("resnet9p", num_classes=4, in_chans=1, activation="gelu")
    with pytest.raises(UserError, match=r"cannot grow resnet9p into resnet11p: its activation is "
                                        r"gelu, and an added block is the identity only where "
                                        r"act\(x\) = x for x >= 0 \(ReLU\)"):
        grow(model, "resnet11p")

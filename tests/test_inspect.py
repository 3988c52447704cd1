"""Analysis (MAC counter, Table 1 summary, seed trace) and its CLI: models, summary, trace."""
from __future__ import annotations

import json
import re
from pathlib import Path

import pytest
import torch

from reslab.analysis.macs import InputTooSmall, count_macs, profile
from reslab.analysis.summary import render_summary
from reslab.analysis.trace import render_trace, trace
from reslab.cli import main
from reslab.cli.common import parse_input_shape
from reslab.errors import UserError
from reslab.models import create_model, get_arch, list_models

SEED_TRACE = (Path(__file__).parent.parent / "src" / "reslab" / "analysis" / "paper"
              / "seed_trace_resnet50.txt")  # shipped: reslab paper compares with it
LAYER = re.compile(r"layer idx (\d+) : torch\.Size\((\[.*\])\)$")


def meta_model(name: str, **kwargs):
    """Analysis reads shapes only, so the meta device gives the same numbers at no cost."""
    with torch.device("meta"):
        return create_model(name, **kwargs)


# --- the seed trace ---------------------------------------------------------------------------

def _parse(lines: list[str]) -> tuple[list[tuple[int, list[int]]], list[str], list[str]]:
    """(numbered layers with shapes, module lines, downsample shapes) of a trace."""
    layers = [(int(m[1]), json.loads(m[2])) for m in map(LAYER.match, lines) if m]
    modules = [line for line in lines if re.match(r"(conv|\dx\d conv|maxpool) : [A-Z]", line)]
    downs = [line for line in lines if line.startswith("downsample : ")]
    return layers, modules, downs


def test_trace_of_resnet50_is_the_seed_trace() -> None:
    seed = SEED_TRACE.read_text(encoding="utf-8").splitlines()
    model = create_model("resnet50")   # a real forward, as the seed ran torchvision's resnet50
    ours = render_trace(trace(model, (1, 3, 224, 224))).splitlines()
    # The seed writes "입력" ("input") and omits the fc module line before "layer idx 50".
    assert ours[0] == seed[0].replace("입력", "input")
    assert ours[-2] == "fc : Linear(in_features=2048, out_features=1000, bias=True)"
    assert ours[1:-2] + ours[-1:] == seed[1:]
    seed_layers, seed_modules, seed_downs = _parse(seed)
    assert [i for i, _ in seed_layers] == list(range(1, 51))
    assert _parse(ours) == (seed_layers, seed_modules, seed_downs)
    assert len(seed_downs) == 4
    assert seed.count("-" * 49) == 4
    assert sum(line.startswith("-" * 20 + " layer ") for line in seed) == 4


@pytest.mark.parametrize("name", list_models())
def test_trace_every_registered_model(name: str) -> None:
    arch, model = get_arch(name), meta_model(name)
    rows = trace(model, arch.default_input)
    numbered = [r for r in rows if r.index is not None]
    assert [r.index for r in numbered] == list(range(1, arch.depth + 1))
    assert numbered[-1].kind == "fc" and numbered[-1].shape == (1, model.num_classes)
    downs = [r for r in rows if r.kind == "downsample"]
    # Plain nets have no shortcuts; option A (CIFAR) pads where the shape changes: 2 stages;
    # option B projects there: layer2..4, plus layer1 of bottleneck nets (64 -> 256 channels).
    # Pooled nets change shape in their transitions, so every shortcut is an identity.
    expected = 0 if not arch.residual or arch.family == "pooled" else (
        2 if arch.family == "cifar" else 4 if arch.block.expansion == 4 else 3)
    assert len(downs) == expected
    assert sum(r.kind == "stage" for r in rows) == len(arch.layers)
    assert sum(r.kind == "end" for r in rows) == len(arch.layers)


def test_option_a_shortcut_shows_as_downsample() -> None:
    lines = render_trace(trace(meta_model("resnet20"), (1, 3, 32, 32))).splitlines()
    assert "downsample : torch.Size([1, 32, 16, 16])" in lines
    assert "downsample : torch.Size([1, 64, 8, 8])" in lines
    assert lines[0] == "input : torch.Size([1, 3, 32, 32])"


# --- MAC totals -------------------------------------------------------------------------------

@pytest.mark.parametrize("name,stride_in,gmacs", [
    ("resnet18", "1x1", 1.814), ("resnet34", "1x1", 3.664), ("resnet50", "1x1", 3.858),
    ("resnet101", "1x1", 7.570), ("resnet152", "1x1", 11.282),
    ("resnet50", "3x3", 4.089), ("resnet101", "3x3", 7.801), ("resnet152", "3x3", 11.514)])
def test_imagenet_gmacs(name: str, stride_in: str, gmacs: float) -> None:
    """Paper Table 1 (stride on the first 1x1) and torchvision's GFLOPS (stride on the 3x3)."""
    macs = count_macs(meta_model(name, stride_in=stride_in), (1, 3, 224, 224))
    assert round(macs / 1e9, 3) == gmacs


def test_resnet20_macs_by_hand() -> None:
    # 3x3 stem on 32x32x16, then per stage six 3x3 layers of (2^i*16)^2*9 MACs per pixel on maps
    # of 32/2^i: every stage's first layer reads half the channels; fc 64x10. Option A is free.
    layer = 32 * 32 * 16 * 16 * 9
    by_hand = 32 * 32 * 3 * 16 * 9 + 6 * layer + 2 * (5.5 * layer) + 64 * 10
    macs = count_macs(meta_model("resnet20"), (1, 3, 32, 32))
    assert macs == by_hand == 40_551_040
    assert round(macs / 1e6, 1) == 40.6


def test_meta_device_counts_like_a_real_forward() -> None:
    shape = (2, 3, 64, 64)
    assert count_macs(create_model("resnet18"), shape) == count_macs(meta_model("resnet18"), shape)
    # Batch scales every layer, fc included.
    assert count_macs(meta_model("resnet18"), shape) == 2 * count_macs(
        meta_model("resnet18"), (1, 3, 64, 64))


def test_profile_restores_training_mode() -> None:
    model = meta_model("resnet20")
    profile(model, (1, 3, 32, 32))
    assert model.training


def test_input_too_small() -> None:
    with pytest.raises(InputTooSmall, match="at least 32"):
        count_macs(meta_model("resnet50"), (1, 3, 8, 8))
    assert count_macs(meta_model("resnet50"), (1, 3, 32, 32)) > 0
    with pytest.raises(UserError, match="at least 4"):
        count_macs(meta_model("resnet20"), (1, 3, 2, 2))


# --- Table 1 summary --------------------------------------------------------------------------

@pytest.mark.parametrize("name", ["resnet18", "resnet50", "resnet110", "plain34"])
def test_summary_stages_add_up(name: str) -> None:
    model = meta_model(name)
    s = profile(model, get_arch(name).default_input)
    assert [r.name for r in s.stages] == ["stem", *model.stage_names, "head"]
    assert s.params == sum(p.numel() for p in model.parameters())
    assert s.macs == count_macs(model, get_arch(name).default_input)
    assert s.blocks == sum(get_arch(name).layers)


def test_summary_is_table1() -> None:
    s = {r.name: r for r in profile(meta_model("resnet50"), (1, 3, 224, 224)).stages}
    assert s["layer1"].block == "[1x1, 64; 3x3, 64; 1x1, 256] x3"
    assert s["layer4"].block == "[1x1, 512; 3x3, 512; 1x1, 2048] x3"
    assert [s[f"layer{i}"].output_shape[2] for i in range(1, 5)] == [56, 28, 14, 7]
    assert s["stem"].block == "7x7, 64, stride 2; 3x3 max pool, stride 2"
    r18 = profile(meta_model("resnet18"), (1, 3, 224, 224))
    assert r18.stages[1].block == "[3x3, 64; 3x3, 64] x2"


@pytest.mark.parametrize("name,shape,per_layer", [
    ("resnet50", (1, 3, 224, 224), 56 * 56 * 64 * 64 * 9),
    ("resnet34", (1, 3, 224, 224), 56 * 56 * 64 * 64 * 9),
    ("resnet20", (1, 3, 32, 32), 32 * 32 * 16 * 16 * 9)])
def test_cost_per_3x3_layer_is_level(name: str, shape: tuple, per_layer: int) -> None:
    """Section 3.3 / docs/notes.md: filters double as maps halve, so a 3x3 layer costs the same."""
    s = profile(meta_model(name), shape)
    assert s.level
    assert {r.macs_per_3x3 for r in s.stages if r.macs_per_3x3} == {per_layer}
    assert "in every stage" in render_summary(s)
    assert not profile(meta_model("resnet50"), (1, 3, 225, 225)).level


# --- CLI --------------------------------------------------------------------------------------

def test_cli_unknown_model(capsys: pytest.CaptureFixture) -> None:
    assert main(["summary", "resnet21"]) == 2
    err = capsys.readouterr().err
    assert err.count("\n") == 1 and err.startswith("error: unknown model 'resnet21'")
    assert re.search(r"closest: .*resnet20", err)


@pytest.mark.parametrize("argv,message", [
    (["summary", "resnet50", "--input", "1x3x2x"], "error: invalid --input '1x3x2x'"),
    (["trace", "resnet50", "--input", "1x3x8x8"],
     "error: input 1x3x8x8 is too small for resnet50"),
    (["summary", "resnet20", "--input", "1x1x32x32"], "error: --input has 1 channels"),
    (["summary", "plain20", "--zero-init-residual"], "error: zero_init_residual")])
def test_cli_bad_input(argv: list[str], message: str, capsys: pytest.CaptureFixture) -> None:
    assert main(argv) == 2
    out, err = capsys.readouterr()
    assert err.startswith(message) and err.count("\n") == 1 and out == ""


def test_parse_input_shape() -> None:
    assert parse_input_shape("1x3x224x224") == (1, 3, 224, 224)
    assert parse_input_shape("3x32x32") == (1, 3, 32, 32)
    for bad in ("", "224", "1x3x2x", "1x3x0x4", "axbxc", "1x3x4x4x4"):
        with pytest.raises(UserError, match="invalid --input"):
            parse_input_shape(bad)


def test_cli_models_json(capsys: pytest.CaptureFixture) -> None:
    assert main(["models", "--json", "--family", "cifar"]) == 0
    rows = {r["name"]: r for r in json.loads(capsys.readouterr().out)["models"]}
    assert set(rows) == set(list_models("cifar"))
    assert rows["resnet20"]["params"] == 269_722 and rows["resnet20"]["macs"] == 40_551_040
    assert rows["plain20"]["shortcut"] is None and rows["resnet20"]["depth"] == 20
    # a pooled net's blocks keep their shape: every shortcut is an identity, whatever option
    assert main(["models", "--json", "--family", "pooled"]) == 0
    rows = {r["name"]: r for r in json.loads(capsys.readouterr().out)["models"]}
    assert rows["resnet9p"]["shortcut"] == "identity" and rows["plain9p"]["shortcut"] is None
    from reslab.cli.models import FAMILIES
    from reslab.models.registry import BASE_WIDTHS
    assert FAMILIES == tuple(BASE_WIDTHS)  # every family can be listed on its own


def test_cli_models_table(capsys: pytest.CaptureFixture) -> None:
    assert main(["models", "--family", "imagenet"]) == 0
    out = capsys.readouterr().out
    assert re.search(r"resnet50 .* 25,557,032 +4\.089G", out)


def test_cli_summary_json(capsys: pytest.CaptureFixture) -> None:
    assert main(["summary", "resnet50", "--stride-in", "1x1", "--json"]) == 0
    data = json.loads(capsys.readouterr().out)
    assert data["params"] == 25_557_032 and round(data["macs"] / 1e9, 3) == 3.858
    assert sum(s["params"] for s in data["stages"]) == data["params"]
    assert sum(s["macs"] for s in data["stages"]) == data["macs"]
    assert {"name", "output_shape", "blocks", "params", "macs"} <= set(data["stages"][0])
    assert data["stages"][-2]["output_shape"] == [1, 2048, 7, 7]


def test_cli_summary_options_and_text(capsys: pytest.CaptureFixture) -> None:
    argv = ["summary", "resnet18", "--input", "3x64x64", "--in-chans", "3", "--num-classes",
            "7", "--shortcut", "C"]
    assert main(argv) == 0
    out = capsys.readouterr().out
    assert out.startswith("resnet18 at input 1x3x64x64 (num_classes=7, in_chans=3, shortcut=C)")
    assert "1x7" in out and "avg pool, 7-d fc" in out


def test_cli_trace(capsys: pytest.CaptureFixture) -> None:
    assert main(["trace", "plain20"]) == 0
    lines = capsys.readouterr().out.splitlines()
    assert lines[0] == "input : torch.Size([1, 3, 32, 32])"
    assert lines[-1] == "layer idx 20 : torch.Size([1, 10])"
    assert not any(line.startswith("downsample") for line in lines)


def test_summary_and_models_print_table1_as_before(capsys: pytest.CaptureFixture) -> None:
    """The tables' exact layout: one rule per column, numbers right-aligned, "-" for none."""
    assert main(["summary", "resnet20"]) == 0
    assert capsys.readouterr().out.splitlines()[1:4] == [
        "stage   paper    output      blocks  layout                  params    MACs  MACs/3x3",
        "------  -------  ----------  ------  ---------------------  -------  ------  --------",
        "stem    conv1    1x16x32x32       -  3x3, 16, stride 1          464  442.4K         -"]
    assert main(["models", "--family", "cifar"]) == 0
    assert capsys.readouterr().out.splitlines()[:3] == [
        "name        family  depth  block  blocks       shortcut      input          params    MACs",
        "----------  ------  -----  -----  -----------  ------------  ---------  ----------  ------",
        "resnet8     cifar       8  basic  1,1,1        A             1x3x32x32      75,290   12.2M"]

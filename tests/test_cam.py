"""Grad-CAM (reslab.deploy.cam, `reslab predict --cam`): the closed form after the last stage,
heat where the evidence is, shapes and range, the crop the model saw, the command line."""
from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest
import torch
import torch.nn.functional as F
from PIL import Image

from cli_helpers import clean_error
from helpers import randomize_bn
from reslab.data.images import eval_geometry, to_channels
from reslab.cli import main
from reslab.deploy.cam import cam_layers, cam_paths, display_images, grad_cam
from reslab.deploy.predict import prepare_images
from reslab.errors import UserError
from reslab.models import create_model
from reslab.weights.record import Record, save_weights

CLASSES = ["left", "right", "other"]


def _orthogonal(a: torch.Tensor, b: torch.Tensor) -> torch.Tensor:
    """The part of a that b lacks: a minus its projection on b (so it is 0 on b, > 0 on a)."""
    return a - (a @ b) / (b @ b) * b


def _stage_output(model: torch.nn.Module, x: torch.Tensor, layer: str) -> torch.Tensor:
    kept = []
    handle = getattr(model, layer).register_forward_hook(lambda _m, _i, out: kept.append(out))
    with torch.no_grad():
        model(x)
    handle.remove()
    return kept[0]


def test_grad_cam_after_the_last_stage_is_cam():
    """After the last stage come global average pooling and fc, so Grad-CAM's weights are
    fc's row / (h w), and the map is CAM (Zhou et al. 2016): ReLU(sum_k w_ck A_k), upsampled
    and divided by its maximum (all zeros without positive evidence). One batch, a different
    class per image."""
    torch.manual_seed(0)
    model = randomize_bn(create_model("resnet20", num_classes=5))
    x, classes = torch.randn(3, 3, 32, 32), [4, 0, 2]
    acts = _stage_output(model, x, "layer3")
    with torch.no_grad():
        cam = F.relu(torch.einsum("nk,nkhw->nhw", model.fc.weight[classes], acts))
        cam = F.interpolate(cam[:, None], size=(32, 32), mode="bilinear",
                            align_corners=False)[:, 0]
        peak = cam.amax((1, 2), keepdim=True)
        assert (peak > 0).sum() == 2  # the batch has maps with and without evidence
        cam = torch.where(peak > 0, cam / peak, 0.0)
    torch.testing.assert_close(grad_cam(model, x, classes), cam, atol=1e-5, rtol=0)
    torch.testing.assert_close(grad_cam(model, x, classes, "layer3"), cam, atol=1e-5, rtol=0)


@pytest.mark.parametrize("seed", [0, 1, 2])
def test_heat_is_where_the_evidence_for_the_class_is(seed):
    """Both halves of the image carry content (horizontal stripes left, vertical right); the fc
    weights are set so that class 0 reads the features the left half has and the right half
    lacks, class 1 the reverse. Each class's heat map lies on its own half."""
    torch.manual_seed(seed)
    model = create_model("resnet20", num_classes=2).eval()
    stripes = torch.sin(torch.arange(32.0) * torch.pi / 2).view(32, 1).expand(32, 32)
    x = torch.cat([stripes[:, :16], stripes.T[:, 16:]], 1).expand(1, 3, 32, 32).clone()
    acts = _stage_output(model, x, "layer3")[0]
    left, right = acts[..., :4].mean((1, 2)), acts[..., 4:].mean((1, 2))
    with torch.no_grad():
        model.fc.weight.copy_(torch.stack([_orthogonal(left, right), _orthogonal(right, left)]))
        model.fc.bias.zero_()
    heat = grad_cam(model, x.expand(2, -1, -1, -1), [0, 1])  # one batch, both classes
    for cls, (own, other) in enumerate(((slice(0, 16), slice(16, 32)),
                                        (slice(16, 32), slice(0, 16)))):
        assert heat[cls][:, own].mean() > 0.4
        assert heat[cls][:, own].mean() > 2.5 * heat[cls][:, other].mean()
        assert own.start <= int(heat[cls].argmax()) % 32 < own.stop


@pytest.mark.parametrize("layer", ["layer1", "layer2"])
def test_lower_stages_find_the_one_quadrant_with_content(layer):
    """Content in the top-right quadrant only, zero elsewhere (and BN at its initial identity,
    so zero input stays zero): the map at a finer stage is high there and low in the other
    three quadrants. Top-right, not a corner on the diagonal: a transposed map would fail."""
    torch.manual_seed(0)
    model = create_model("resnet20", num_classes=2).eval()
    with torch.no_grad():
        model.fc.weight.zero_()
        model.fc.weight[0] = 1.0  # class 0: all the (non-negative) features of the last stage
        model.fc.bias.zero_()
    x = torch.zeros(1, 3, 32, 32)
    x[..., :16, 16:] = torch.randn(1, 3, 16, 16)
    heat = grad_cam(model, x, [0], layer)[0]
    quadrants = {(r, c): heat[r * 16:(r + 1) * 16, c * 16:(c + 1) * 16].mean()
                 for r in (0, 1) for c in (0, 1)}
    evidence = quadrants.pop((0, 1))
    assert evidence > 0.3 and all(evidence > 2.5 * q for q in quadrants.values())
    row, col = divmod(int(heat.argmax()), 32)
    assert row < 16 <= col


@pytest.mark.parametrize("arch,size,layers", [
    ("resnet18", (48, 64), ["layer1", "layer2", "layer3", "layer4"]),
    ("resnet20", (32, 32), ["layer1", "layer2", "layer3"]),
])
def test_shapes_range_and_no_side_effects(arch, size, layers):
    torch.manual_seed(0)
    model = randomize_bn(create_model(arch, num_classes=4))
    assert cam_layers(model) == layers
    x = torch.randn(2, 3, *size)
    before = {k: v.clone() for k, v in model.state_dict().items()}
    for layer in layers:
        heat = grad_cam(model, x, torch.tensor([1, 3]), layer)
        assert heat.shape == (2, *size) and heat.dtype == torch.float32
        assert heat.min() >= 0 and heat.amax((1, 2)).tolist() == [1.0, 1.0]
        assert not heat.requires_grad
    assert not model.training and all(p.grad is None for p in model.parameters())
    assert all(torch.equal(v, before[k]) for k, v in model.state_dict().items())
    with torch.inference_mode():  # a caller inside inference mode still gets its maps
        x_inf = x.clone()
    torch.testing.assert_close(grad_cam(model, x_inf, [1, 3]), grad_cam(model, x, [1, 3]))


def test_no_positive_evidence_gives_a_zero_map():
    model = create_model("resnet20", num_classes=2).eval()
    with torch.no_grad():  # class 0 speaks against every (non-negative) feature of layer3
        model.fc.weight.fill_(-1.0)
    heat = grad_cam(model, torch.randn(1, 3, 32, 32), [0])
    assert torch.equal(heat, torch.zeros(1, 32, 32))


def test_unknown_layer_lists_the_models_layers():
    model = create_model("resnet20")
    with pytest.raises(UserError, match=r"'layer4' \(this model's layers: layer1, layer2, "
                                        r"layer3\)"):
        grad_cam(model, torch.randn(1, 3, 32, 32), [0], "layer4")


def test_cam_paths_are_distinct():
    paths = ["a/cat.jpg", "b/cat.png", "dog.png", "Cat.jpeg", "cat-2.png", "x/dog.tar.gz"]
    assert [p.name for p in cam_paths(paths, "out")] == [
        "cat.cam.png", "cat-2.cam.png", "dog.cam.png", "Cat-3.cam.png", "cat-2-2.cam.png",
        "dog.tar.cam.png"]
    assert {p.parent for p in cam_paths(paths, "out")} == {Path("out")}


# --- the crop the model saw, and the command line -------------------------------------------

def _record(normalize: str, in_chans: int = 3) -> Record:
    g = torch.Generator().manual_seed(0)
    mean_image = torch.rand(in_chans, 32, 32, generator=g) if normalize == "pixel" else None
    pre = {"normalize": normalize, "mean": [0.4] * in_chans, "std": [0.25] * in_chans,
           "input_size": [in_chans, 32, 32], "crop_fraction": 0.875, "tta_flip": False}
    return Record.from_json({"architecture": "resnet20",
                             "kwargs": {"num_classes": 3, "in_chans": in_chans},
                             "class_names": CLASSES, "preprocess": pre}, mean_image)


@pytest.fixture(scope="module")
def images(tmp_path_factory: pytest.TempPathFactory) -> list[str]:
    """Three files, two of them named cat: one per folder."""
    root = tmp_path_factory.mktemp("cam-images")
    rng = np.random.default_rng(0)
    files = [root / "a" / "cat.png", root / "b" / "cat.jpg", root / "dog.png"]
    for i, path in enumerate(files):
        path.parent.mkdir(exist_ok=True)
        Image.fromarray(rng.integers(0, 255, (40 + 8 * i, 50, 3), np.uint8)).save(path)
    return [str(p) for p in files]


@pytest.mark.parametrize("normalize,in_chans", [("channel", 3), ("pixel", 3), ("channel", 1)])
def test_the_heat_map_is_drawn_on_the_crop_the_model_saw(images, normalize, in_chans):
    """display_images inverts the normalisation of predict's batch: the centre crop of each
    file, as pixels in [0, 1] (up to float rounding)."""
    record = _record(normalize, in_chans)
    shown = display_images(record, prepare_images(record, images))
    crops = torch.stack([torch.from_numpy(np.array(eval_geometry(
        to_channels(Image.open(p), in_chans), (32, 32), 0.875))).float() / 255
        for p in images])
    crops = crops.view(len(images), 32, 32, -1).permute(0, 3, 1, 2)
    torch.testing.assert_close(shown, crops, atol=1e-5, rtol=0)


@pytest.fixture(scope="module")
def ckpt(tmp_path_factory: pytest.TempPathFactory) -> Path:
    path = tmp_path_factory.mktemp("cam-ckpt") / "model.safetensors"
    torch.manual_seed(0)
    save_weights(path, randomize_bn(create_model("resnet20", num_classes=3)), _record("channel"))
    return path


def test_cli_writes_one_heat_map_per_image(ckpt, images, tmp_path, capsys):
    out = tmp_path / "cams"
    assert main(["predict", str(ckpt), *images, "--cam", str(out), "--cam-layer", "layer2",
                 "--json", "--device", "cpu", "--batch-size", "2"]) == 0
    captured = capsys.readouterr()
    report = json.loads(captured.out)
    assert captured.err == ""
    cams = [p["cam"] for p in report["predictions"]]
    assert [Path(c).name for c in cams] == ["cat.cam.png", "cat-2.cam.png", "dog.cam.png"]
    assert sorted(p.name for p in out.iterdir()) == sorted(Path(c).name for c in cams)
    for c in cams:
        with Image.open(c) as img:
            assert img.format == "PNG" and min(img.size) > 200
    # the text output names each figure under its image; the last stage is the default
    assert main(["predict", str(ckpt), images[2], "--cam", str(out), "--device", "cpu"]) == 0
    lines = capsys.readouterr().out.splitlines()
    assert lines[0] == images[2] and lines[-1] == f"  Grad-CAM: {out / 'dog.cam.png'}"


def test_cli_unknown_layer_is_one_error_line(ckpt, images, tmp_path, capsys):
    line = clean_error(capsys, ["predict", ckpt, images[0], "--cam", tmp_path,
                                "--cam-layer", "layer4"])
    assert line == ("error: unknown Grad-CAM layer 'layer4' (this model's layers: layer1, "
                    "layer2, layer3)")
    assert list(tmp_path.iterdir()) == []


def test_cli_cam_dir_that_is_a_file(ckpt, images, tmp_path, capsys):
    target = tmp_path / "taken"
    target.write_text("a file")
    line = clean_error(capsys, ["predict", ckpt, images[0], "--cam", target])
    assert "taken" in line and "not a directory" in line
    assert target.read_text() == "a file"
    line = clean_error(capsys, ["predict", ckpt, images[0], "--cam", target / "sub"])
    assert "taken" in line


def test_cli_cam_layer_needs_cam(ckpt, images, capsys):
    assert "--cam DIR" in clean_error(capsys, ["predict", ckpt, images[0], "--cam-layer",
                                               "layer1"])

"""Deployment: evaluation modes (10-crop, multi-scale), BN folding and optimize_for_inference,
int8 quantization, export with parity, `reslab predict` on image files."""
from __future__ import annotations

import json

import numpy as np
import pytest
import torch
import torch.nn.functional as F
from hypothesis import given, settings
from hypothesis import strategies as st
from PIL import Image
from torchvision.transforms.v2 import functional as TF

from reslab import UserError, create_model
from reslab.cli import main
from reslab.deploy import export_model, fold_batchnorm, optimize_for_inference, quantize_int8
from cli_helpers import clean_error, legacy_record
from reslab.weights.record import save_weights
from reslab.models import BasicBlock, ResNet
from reslab.engine.tta import (center_crop, multiscale_logits, multiscale_probs, scales_of,
                               ten_crop, tta_logits)
from helpers import randomize_bn

CLASSES = ["airplane", "automobile", "bird", "cat", "deer", "dog", "frog", "horse", "ship",
           "truck"]




# --- evaluation modes --------------------------------------------------------------------

def test_ten_crop_geometry():
    x = torch.arange(16.0).view(1, 1, 4, 4)
    crops = ten_crop(x, 2)
    assert crops.shape == (10, 1, 1, 2, 2)
    expected = [[[0, 1], [4, 5]], [[2, 3], [6, 7]], [[8, 9], [12, 13]], [[10, 11], [14, 15]],
                [[5, 6], [9, 10]]]
    for i, e in enumerate(expected):
        assert crops[i, 0, 0].tolist() == e
        assert crops[i + 5, 0, 0].tolist() == [row[::-1] for row in e]  # horizontal flip


@settings(max_examples=25, deadline=None)
@given(h=st.integers(1, 9), w=st.integers(1, 9), size=st.integers(1, 9))
def test_crops_match_torchvision(h, w, size):
    if size > min(h, w):
        return
    x = torch.randn(2, 3, h, w)
    assert torch.equal(center_crop(x, size), TF.center_crop(x, [size, size]))
    crops = ten_crop(x, size)
    assert torch.equal(crops[:5], torch.stack(TF.five_crop(x, [size, size])))
    assert torch.equal(crops[5:], crops[:5].flip(-1))


def _linear_model() -> torch.nn.Module:
    torch.manual_seed(0)  # any size: global average pool, then a linear head
    return torch.nn.Sequential(torch.nn.Conv2d(3, 5, 3, padding=1),
                               torch.nn.AdaptiveAvgPool2d(1), torch.nn.Flatten()).eval()


def test_tta_logits_average_softmax_scores():
    model, x = _linear_model(), torch.randn(4, 3, 8, 8)
    ten = tta_logits(model, x, crops=10, crop_size=6)
    manual = torch.stack([F.softmax(model(c), 1) for c in ten_crop(x, 6)]).mean(0)
    torch.testing.assert_close(ten.exp(), manual)
    torch.testing.assert_close(tta_logits(model, x, crops=1, crop_size=6),
                               F.log_softmax(model(x[..., 1:7, 1:7]), 1))
    # cross-entropy on the result is -log of the averaged probability of the label
    y = torch.tensor([0, 1, 2, 3])
    torch.testing.assert_close(F.cross_entropy(ten, y), -manual[range(4), y].log().mean())
    with pytest.raises(ValueError):
        tta_logits(model, x, crops=5)


def test_ten_crop_of_a_whole_image_takes_the_crops_of_its_centre_square():
    """Folder images at a scale keep their aspect ratio; the 10-crop stays AlexNet's [21]:
    corners and centre of the central square (shorter side 256 -> its 256 x 256 centre)."""
    model, x = _linear_model(), torch.randn(2, 3, 8, 14)
    square = x[..., 3:11]  # offset (14 - 8) / 2
    manual = torch.stack([F.softmax(model(c), 1) for c in ten_crop(square, 6)]).mean(0)
    torch.testing.assert_close(tta_logits(model, x, crops=10, crop_size=6).exp(), manual)
    wrong = torch.stack([F.softmax(model(c), 1) for c in ten_crop(x, 6)]).mean(0)
    assert (wrong - manual).abs().max() > 1e-4  # the corners of the whole image differ


def test_multiscale_averages_whole_images_over_scales():
    model, x = _linear_model(), torch.randn(2, 3, 8, 12)
    views = scales_of(x, [4, 8, 16])
    assert [v.shape[-2:] for v in views] == [(4, 6), (8, 12), (16, 24)]
    manual = torch.stack([F.softmax(model(v), 1) for v in views]).mean(0)
    torch.testing.assert_close(multiscale_probs(model, views), manual)
    y = torch.tensor([1, 4])
    (logits, labels), = multiscale_logits(model, [[(v, y)] for v in views])
    torch.testing.assert_close(logits.exp(), manual)
    assert torch.equal(labels, y)
    with pytest.raises(ValueError, match="labels"):
        list(multiscale_logits(model, [[(views[0], y)], [(views[1], y.flip(0))]]))
    # Loaders may cut the same images into different batches: scores align per example.
    x, y = torch.randn(5, 3, 8, 12), torch.tensor([0, 1, 2, 3, 4])
    a, b = scales_of(x, [6, 10])
    manual = torch.stack([F.softmax(model(a), 1), F.softmax(model(b), 1)]).mean(0)
    got = list(multiscale_logits(model, [[(a[:2], y[:2]), (a[2:], y[2:])],
                                         [(b[:1], y[:1]), (b[1:4], y[1:4]), (b[4:], y[4:])]]))
    assert [len(t) for _, t in got] == [2, 3]
    torch.testing.assert_close(torch.cat([z for z, _ in got]).exp(), manual)
    with pytest.raises(ValueError, match="different numbers of images"):
        list(multiscale_logits(model, [[(a, y)], [(b[:4], y[:4])]]))
    with pytest.raises(ValueError, match="different numbers of images"):
        list(multiscale_logits(model, [[(a[:4], y[:4])], [(b, y)]]))


# --- optimisation and quantization ---------------------------------------------------------

@pytest.mark.parametrize("name", ["resnet20", "resnet50"])
def test_fold_batchnorm_keeps_function(name):
    model = randomize_bn(create_model(name, num_classes=10))
    x = torch.randn(2, 3, 32, 32)
    with torch.no_grad():
        ref = model(x)
        folded = fold_batchnorm(model)
        assert not any(isinstance(m, torch.nn.BatchNorm2d) for m in folded.modules())
        torch.testing.assert_close(folded(x), ref, rtol=1e-4, atol=1e-4)
        assert folded.forward_intermediates(x).logits.shape == (2, 10)  # the ResNet API works
    with pytest.raises(ValueError, match="eval"):
        fold_batchnorm(create_model("resnet20").train())


def test_optimize_for_inference_same_outputs():
    model = randomize_bn(create_model("resnet18", num_classes=10))
    x = torch.randn(3, 3, 32, 32)
    fast = optimize_for_inference(model, x, compile=False)
    assert type(fast) is type(model) and fast.optimized_with["bn_folded"]
    assert fast.conv1.weight.is_contiguous(memory_format=torch.channels_last)
    assert isinstance(model.bn1, torch.nn.BatchNorm2d)  # the original is untouched
    with torch.no_grad():
        torch.testing.assert_close(fast(x), model(x), rtol=1e-4, atol=1e-4)


def test_optimize_with_compile_same_outputs():
    # A two-stage-deep ResNet keeps inductor's compile time (the cost here) to seconds.
    torch.manual_seed(0)
    model = randomize_bn(ResNet(BasicBlock, (1, 1), widths=(4, 8), stem="cifar", num_classes=3))
    x = torch.randn(2, 3, 16, 16)
    fast = optimize_for_inference(model, x, compile=True)
    assert isinstance(fast, ResNet) and fast.optimized_with["compiled"]
    with torch.no_grad():
        torch.testing.assert_close(fast(x), model(x), rtol=1e-4, atol=1e-4)


def _trained_ish_resnet20(steps: int = 15) -> tuple[torch.nn.Module, torch.Tensor, torch.Tensor]:
    """resnet20 fitted briefly to 10 easy synthetic classes (a fixed pattern each, plus noise),
    so its logits have clear winners as a trained model's do."""
    g = torch.Generator().manual_seed(0)
    patterns = torch.randn(10, 3, 8, 8, generator=g)
    y = torch.randint(0, 10, (256,), generator=g)
    x = patterns[y] + 0.5 * torch.randn(256, 3, 8, 8, generator=g)
    torch.manual_seed(0)
    model = create_model("resnet20")
    opt = torch.optim.SGD(model.parameters(), lr=0.05, momentum=0.9)
    for step in range(steps):
        i = torch.arange(step * 32, step * 32 + 32) % 256
        opt.zero_grad()
        F.cross_entropy(model(x[i]), y[i]).backward()
        opt.step()
    return model.eval(), x, y


def test_quantize_int8_agrees_with_fp32():
    from torch._inductor.utils import run_and_get_code

    model, x, y = _trained_ish_resnet20()
    q = quantize_int8(model, [x[i:i + 64] for i in range(0, 256, 64)])
    out, code = run_and_get_code(q, x)
    with torch.no_grad():
        ref = model(x).argmax(1)
    print(f"fp32 accuracy {(ref == y).float().mean():.3f}, "
          f"int8 agreement {(out.argmax(1) == ref).float().mean():.3f}")
    assert (ref == y).float().mean() > 0.8  # the fp32 model did learn
    assert (out.argmax(1) == ref).float().mean() >= 0.9
    # inductor lowered the graph to oneDNN int8 convolutions, the shortcut addition fused into
    # the block's last one (a "binary" post-op), and an int8 classifier
    code = "\n".join(code)
    assert "onednn.qconv2d_pointwise.binary" in code
    assert "onednn.qlinear_pointwise" in code
    assert q(x[:1]).shape == (1, 10)  # another batch size: compiled for it on first use


def test_quantize_int8_without_torchao_says_how_to_install(monkeypatch):
    import builtins

    real_import = builtins.__import__

    def no_torchao(name, *args, **kwargs):
        if name.startswith("torchao"):
            raise ImportError(f"No module named '{name}'")
        return real_import(name, *args, **kwargs)

    monkeypatch.setattr(builtins, "__import__", no_torchao)
    with pytest.raises(ModuleNotFoundError, match=r"pip install 'reslab\[int8\]'"):
        quantize_int8(create_model("resnet20").eval(), [torch.randn(2, 3, 32, 32)])


# --- export -------------------------------------------------------------------------------

@pytest.fixture(scope="module")
def ckpt(tmp_path_factory) -> str:
    path = tmp_path_factory.mktemp("ckpt") / "model.safetensors"
    torch.manual_seed(0)
    meta = {"architecture": "resnet20", "kwargs": {"num_classes": 10, "in_chans": 3},
            "class_names": CLASSES, "mean": [0.49, 0.48, 0.45], "std": [0.25, 0.24, 0.26],
            "input_size": [3, 32, 32]}
    save_weights(path, randomize_bn(create_model("resnet20")), legacy_record(meta))
    return str(path)


@pytest.mark.parametrize("fmt", ["onnx", "torchscript"])
def test_cli_export_checks_parity(ckpt, tmp_path, capsys, fmt):
    out = tmp_path / f"model.{fmt}"
    assert main(["export", ckpt, "--format", fmt, "--out", str(out), "--json"]) == 0
    report = json.loads(capsys.readouterr().out)
    assert out.is_file() and report["ok"] and set(report["max_abs_diff"]) == {"1", "3"}
    assert max(report["max_abs_diff"].values()) < 1e-4


@pytest.mark.parametrize("fmt, out, suffixes, renamed", [
    ("onnx", "good.safetensors", ".onnx", "good.onnx"),
    ("pt2", "m.onnx", ".pt2", "m.pt2"),
    ("torchscript", "m.pt2", ".pt or .torchscript", "m.pt")])
def test_export_refuses_an_out_of_another_format(ckpt, tmp_path, capsys, fmt, out, suffixes,
                                                 renamed):
    """A weights file (or another format's export) is never replaced by this format's bytes."""
    target = tmp_path / out
    target.write_bytes(b"keep")
    err = clean_error(capsys, ["export", ckpt, "--format", fmt, "--out", target])
    assert err == (f"error: --out {target}: --format {fmt} writes a {suffixes} file; "
                   f"name it e.g. {tmp_path / renamed}")
    assert target.read_bytes() == b"keep"


def test_export_unknown_format(ckpt, tmp_path, capsys):
    assert main(["export", ckpt, "--format", "tflite", "--out", str(tmp_path / "m")]) == 2
    assert capsys.readouterr().err.startswith("error:")
    with pytest.raises(UserError, match="unknown export format"):
        export_model(create_model("resnet20"), {"input_size": [3, 32, 32]}, tmp_path / "m", "x")


# --- predict ----------------------------------------------------------------------------------

@pytest.fixture(scope="module")
def images(tmp_path_factory) -> list[str]:
    d = tmp_path_factory.mktemp("images")
    rng = np.random.default_rng(0)
    files = {"rgb.jpg": Image.fromarray(rng.integers(0, 255, (48, 64, 3), np.uint8)),
             "gray.png": Image.fromarray(rng.integers(0, 255, (20, 20), np.uint8)),
             "rgba.png": Image.fromarray(rng.integers(0, 255, (40, 30, 4), np.uint8), "RGBA"),
             "palette.png": Image.fromarray(rng.integers(0, 255, (9, 50, 3), np.uint8)
                                            ).convert("P")}
    for name, img in files.items():
        img.save(d / name)
    return [str(d / name) for name in files]


def test_cli_predict_any_mode(ckpt, images, capsys):
    assert main(["predict", ckpt, *images, "--topk", "3", "--json", "--device", "cpu",
                 "--batch-size", "3"]) == 0
    report = json.loads(capsys.readouterr().out)
    assert [p["file"] for p in report["predictions"]] == images
    for p in report["predictions"]:
        probs = [t["prob"] for t in p["top"]]
        assert len(probs) == 3 and probs == sorted(probs, reverse=True) and sum(probs) <= 1 + 1e-6
        assert all(t["class"] == CLASSES[t["index"]] for t in p["top"])
    assert main(["predict", str(ckpt).rsplit("/", 1)[0], images[0], "--topk", "1"]) == 0
    lines = capsys.readouterr().out.splitlines()  # the run directory works as CKPT
    assert lines[0] == images[0] and lines[1].strip().split()[1] in CLASSES


def test_cli_predict_unreadable_file(ckpt, images, tmp_path, capsys):
    """No file readable: one error (the file's own when it is the only one), no results."""
    bad = tmp_path / "broken.jpg"
    bad.write_bytes(b"not an image")
    assert main(["predict", ckpt, str(bad)]) == 2
    captured = capsys.readouterr()
    assert captured.err.startswith("error:") and "broken.jpg" in captured.err
    assert captured.out == ""
    other = tmp_path / "empty.png"
    other.write_bytes(b"")
    err = clean_error(capsys, ["predict", ckpt, bad, other, "--csv", "-"])
    assert err.startswith(f"error: none of the 2 image files could be read: cannot read image "
                          f"'{bad}': "), err


def test_cli_predict_skips_unreadable_files(ckpt, images, tmp_path, capsys):
    """One corrupt file among good ones: a warning naming it, the rest predicted (text, CSV and
    JSON, which lists it under "skipped"; a run without bad files has no such key)."""
    bad = tmp_path / "broken.jpg"
    bad.write_bytes(b"not an image")
    argv = ["predict", ckpt, images[0], str(bad), images[1], "--topk", "1", "--batch-size", "2"]
    assert main([*argv, "--csv", "-"]) == 0
    captured = capsys.readouterr()
    assert [row.split(",")[0] for row in captured.out.splitlines()] == ["file", *images[:2]]
    warning, = captured.err.splitlines()
    assert warning.startswith(f"warning: cannot read image '{bad}': ") and \
        warning.endswith(" (skipped)"), warning
    assert main(argv) == 0
    captured = capsys.readouterr()
    assert captured.out.splitlines()[::2] == images[:2] and captured.err == warning + "\n"
    assert main([*argv, "--json"]) == 0
    report = json.loads(capsys.readouterr().out)
    assert [p["file"] for p in report["predictions"]] == images[:2]
    assert report["skipped"] == [str(bad)]
    assert main([*argv[:2], images[0], "--json"]) == 0
    assert "skipped" not in json.loads(capsys.readouterr().out)

"""Inference runtimes (reslab.deploy.runtime): ONNX Runtime against PyTorch on the same
weights, "auto" choosing by measurement, `--runtime` on predict/eval with predict == eval on
the same images for each runtime, and a clean error when onnxruntime is missing."""
from __future__ import annotations

import builtins
import json
from pathlib import Path

import pytest
import torch

from cli_helpers import clean_error
from deploy_helpers import digits_checkpoint, digits_pngs
from helpers import randomize_bn
from reslab.cli import main
from reslab.deploy import optimize_for_inference
from reslab.deploy.runtime import OrtModel, check_runtime, runtime_of
from reslab.errors import UserError
from reslab.models import create_model


@pytest.fixture(scope="module")
def tiny() -> tuple[torch.nn.Module, torch.Tensor]:
    torch.manual_seed(0)
    model = randomize_bn(create_model("resnet8", num_classes=10))
    return model, torch.randn(3, 3, 16, 16, generator=torch.Generator().manual_seed(1))


def _tolerance(ref: torch.Tensor) -> float:
    # fp32 kernels of two runtimes differ by rounding, relative to the logits' size (the
    # tolerance `reslab export` checks its files with)
    return 1e-4 * max(1.0, float(ref.abs().max()))


def test_onnxruntime_matches_torch(tiny) -> None:
    model, x = tiny
    ort = optimize_for_inference(model, x, runtime="onnxruntime", threads=1)
    assert isinstance(ort, OrtModel) and runtime_of(ort) == "onnxruntime"
    assert ort.optimized_with == {"runtime": "onnxruntime", "graph_optimization": "all",
                                  "threads": 1}
    with torch.no_grad():
        for batch in (x[:1], x, x.contiguous(memory_format=torch.channels_last)):
            ref = model(batch)
            out = ort(batch)
            assert isinstance(out, torch.Tensor) and out.dtype == torch.float32
            assert out.shape == ref.shape  # the batch dimension is dynamic
            assert float((out - ref).abs().max()) <= _tolerance(ref)
            assert torch.equal(out.argmax(1), ref.argmax(1))
    torch_fast = optimize_for_inference(model, x, runtime="torch", compile=False)
    assert runtime_of(torch_fast) == "torch" and type(torch_fast) is type(model)


def test_auto_keeps_the_faster_and_says_which(tiny) -> None:
    model, x = tiny
    fast = optimize_for_inference(model, x, runtime="auto", compile=False, threads=1)
    choice = fast.choice
    assert set(choice.seconds) == {"torch", "onnxruntime"} and choice.batch == 3
    assert choice.runtime == min(choice.seconds, key=choice.seconds.get)
    assert runtime_of(fast) == choice.runtime and choice.speedup >= 1.0
    assert choice.describe().startswith(f"runtime {choice.runtime} (auto: ")
    with torch.no_grad():
        ref = model(x)
        assert float((fast(x) - ref).abs().max()) <= _tolerance(ref)


def test_runtime_names_and_devices() -> None:
    with pytest.raises(UserError, match="unknown runtime 'onnx' \\(closest: onnxruntime\\)"):
        check_runtime("onnx")
    with pytest.raises(UserError, match="the onnxruntime runtime runs on the CPU, not cuda"):
        check_runtime("onnxruntime", "cuda")
    assert check_runtime("auto", "cuda") == "torch" and check_runtime("auto") == "auto"


# --- the command line -----------------------------------------------------------------------

@pytest.fixture(scope="module")
def digits(tmp_path_factory) -> tuple[Path, list[Path], list[int]]:
    root = tmp_path_factory.mktemp("digits")
    paths, labels = digits_pngs(root)
    return digits_checkpoint(root / "model.safetensors"), paths, labels


@pytest.mark.parametrize("runtime", ["torch", "onnxruntime"])
def test_predict_equals_eval_on_each_runtime(digits, runtime, capsys) -> None:
    ckpt, paths, labels = digits
    assert main(["eval", str(ckpt), "--device", "cpu", "--json", "--runtime", runtime]) == 0
    result = json.loads(capsys.readouterr().out)
    assert main(["predict", str(ckpt), *map(str, paths), "--topk", "1", "--json",
                 "--device", "cpu", "--batch-size", "128", "--runtime", runtime]) == 0
    report = json.loads(capsys.readouterr().out)
    preds = [p["top"][0]["index"] for p in report["predictions"]]
    accuracy = sum(p == t for p, t in zip(preds, labels)) / len(labels)
    assert result["n"] == len(labels) == 360 and result["top1"] > 0.8  # the model learned
    assert accuracy == result["top1"]
    assert result["runtime"] == report["runtime"] == runtime


def test_missing_onnxruntime_is_a_clean_error(digits, capsys, monkeypatch) -> None:
    ckpt, paths, _ = digits
    real_import = builtins.__import__

    def no_ort(name, *args, **kwargs):
        if name.startswith("onnxruntime"):
            raise ImportError(f"No module named '{name}'", name=name)
        return real_import(name, *args, **kwargs)

    monkeypatch.setattr(builtins, "__import__", no_ort)
    hint = ("error: ONNX needs onnx, onnxscript and onnxruntime (onnxruntime is missing): "
            "pip install 'reslab[export]'")
    assert clean_error(capsys, ["predict", ckpt, paths[0], "--runtime", "onnxruntime"]) == hint
    assert clean_error(capsys, ["eval", ckpt, "--runtime", "onnxruntime"]) == hint


def test_runtime_flag_errors(digits, capsys) -> None:
    ckpt, paths, _ = digits
    assert clean_error(capsys, ["eval", ckpt, "--scales", "8,12", "--runtime",
                                "onnxruntime"]) == (
        "error: the multi-scale test feeds whole images of several sizes; the onnxruntime "
        "runtime takes one: use --runtime torch")
    err = clean_error(capsys, ["predict", ckpt, paths[0], "--runtime", "tensorrt"])
    assert err.startswith("error: reslab predict: argument --runtime: invalid choice: "
                          "'tensorrt'")


# --- reduced precision ----------------------------------------------------------------------

def test_reduced_precision_agrees_with_fp32_on_the_test_set(digits) -> None:
    """bf16 (PyTorch) and int8 (ONNX Runtime static quantization, QDQ per-channel, calibrated
    on training images) classify digits' 360 test images as fp32 does, nearly always."""
    from reslab.weights.checkpoint import load_checkpoint
    from reslab.data import load_data
    from reslab.deploy.precision import bf16_model, onnx_int8_model

    model, record = load_checkpoint(digits[0])
    pre = record.preprocess
    data = load_data("digits", stats=pre.stats(), image_size=8, augment="none")
    x = torch.cat([b for b, _ in data.eval_batches("test", 512, "cpu")])
    calibration = [b for b, _ in data.eval_batches("train", 128, "cpu")][:3]
    int8 = onnx_int8_model(model, calibration, threads=1)
    assert int8.optimized_with["precision"] == "int8 (QDQ, per-channel)"
    bf16 = bf16_model(model)
    with torch.no_grad():
        ref = model(x)
        for fast, at_least in ((int8, 0.97), (bf16, 0.97)):
            out = fast(x)
            assert out.dtype == torch.float32 and out.shape == ref.shape
            assert (out.argmax(1) == ref.argmax(1)).float().mean() >= at_least
            assert not torch.equal(out, ref)  # reduced precision did happen

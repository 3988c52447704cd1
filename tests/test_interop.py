"""Loading foreign checkpoints: torchvision, timm, DDP/compile training checkpoints,
safetensors; head replacement; refusal of unsafe pickles; `reslab import`."""
from __future__ import annotations

import argparse
import os

import pytest
import torch
import torchvision
from safetensors.torch import save_file

from reslab import UserError, create_model, load_checkpoint
from reslab.cli import main
from cli_helpers import legacy_record
from reslab.record import save_weights
from reslab.interop import IMAGENET_MEAN, guess_architecture, init_weights, load_state_dict_any
from helpers import randomize_bn

X = torch.randn(2, 3, 32, 32, generator=torch.Generator().manual_seed(0))




@pytest.fixture(scope="module")
def tv18() -> torch.nn.Module:
    torch.manual_seed(0)
    return randomize_bn(torchvision.models.resnet18(num_classes=10))


def _same_outputs(model: torch.nn.Module, ref: torch.nn.Module) -> None:
    with torch.no_grad():
        torch.testing.assert_close(model.eval()(X), ref(X), rtol=0, atol=0)


def _load_into_reslab(path, **kwargs) -> tuple[torch.nn.Module, list[str]]:
    model = create_model("resnet18", num_classes=kwargs.pop("num_classes", 10), **kwargs)
    return model, init_weights(model, path)


def test_torchvision_state_dict(tmp_path, tv18):
    path = tmp_path / "tv.pth"
    torch.save(tv18.state_dict(), path)
    model, messages = _load_into_reslab(path)
    assert messages == []
    _same_outputs(model, tv18)


@pytest.mark.parametrize("key,prefix", [("state_dict", "module."), ("model", "_orig_mod."),
                                        ("model_state_dict", "module._orig_mod.")])
def test_training_checkpoint_with_prefixes(tmp_path, tv18, key, prefix):
    path = tmp_path / "ckpt.pt"
    sd = {prefix + k: v for k, v in tv18.state_dict().items()}
    torch.save({key: sd, "epoch": 7, "optimizer": {"state": {}, "param_groups": []}}, path)
    model, _ = _load_into_reslab(path)
    _same_outputs(model, tv18)


def test_timm_train_checkpoint(tmp_path, tv18):
    # timm's ResNet shares torchvision's names; its train.py stores the argparse Namespace.
    path = tmp_path / "timm.pth.tar"
    torch.save({"epoch": 3, "arch": "resnet18", "state_dict": tv18.state_dict(),
                "args": argparse.Namespace(lr=0.1, model="resnet18"), "version": 2,
                "metric": 71.2}, path)
    model, _ = _load_into_reslab(path)
    _same_outputs(model, tv18)


def test_plain_safetensors_through_load_checkpoint(tmp_path, tv18):
    path = tmp_path / "model.safetensors"
    save_file({k: v.contiguous() for k, v in tv18.state_dict().items()}, str(path))
    state, meta = load_state_dict_any(path)
    assert meta is None and set(state) == set(tv18.state_dict())
    with pytest.raises(UserError, match="reslab import"):
        load_checkpoint(path)
    model, meta = load_checkpoint(path, architecture="resnet18")
    _same_outputs(model, tv18)
    assert list(meta.class_names) == [str(i) for i in range(10)]
    assert meta.preprocess.mean == IMAGENET_MEAN and meta.preprocess.input_size == (3, 224, 224)


def test_reslab_file_keeps_its_metadata(tmp_path):
    model = randomize_bn(create_model("resnet20"))
    meta = {"architecture": "resnet20", "kwargs": {"num_classes": 10},
            "class_names": list("abcdefghij"), "mean": [0.5] * 3, "std": [0.25] * 3, "input_size": [3, 32, 32]}
    save_weights(tmp_path / "r.safetensors", model, legacy_record(meta))
    _, got = load_state_dict_any(tmp_path / "r.safetensors")
    assert list(got.class_names) == meta["class_names"]
    loaded, got = load_checkpoint(tmp_path / "r.safetensors")  # unchanged path for reslab files
    _same_outputs(loaded, model)
    with pytest.raises(UserError, match="resnet20, not a resnet18"):
        load_checkpoint(tmp_path / "r.safetensors", architecture="resnet18")


def test_head_replaced_for_fine_tuning(tmp_path, tv18):
    path = tmp_path / "tv.pth"
    torch.save(tv18.state_dict(), path)
    torch.manual_seed(5)
    model, messages = _load_into_reslab(path, num_classes=3)
    assert len(messages) == 1 and "head replaced" in messages[0] and "10 classes" in messages[0]
    assert model.fc.out_features == 3
    with torch.no_grad():  # everything but the head is the checkpoint's
        torch.testing.assert_close(model.eval().forward_features(X),
                                   torch.nn.Sequential(*list(tv18.children())[:-2])(X))


def test_grayscale_stem_adapted(tmp_path, tv18):
    path = tmp_path / "tv.pth"
    torch.save(tv18.state_dict(), path)
    model, messages = _load_into_reslab(path, in_chans=1)
    assert any("stem adapted" in m for m in messages)
    torch.testing.assert_close(model.conv1.weight, tv18.conv1.weight.sum(1, keepdim=True))


def test_architecture_mismatch_names_keys(tmp_path, tv18):
    path = tmp_path / "tv.pth"
    torch.save(tv18.state_dict(), path)
    with pytest.raises(UserError) as e:
        init_weights(create_model("resnet34", num_classes=10), path)
    assert "missing layer1.2." in str(e.value) and "look like resnet18" in str(e.value)
    with pytest.raises(UserError, match=r"shape .*\[64, 64, 3, 3\]"):  # same names, other shapes
        init_weights(create_model("resnet50", num_classes=10), path)


def test_akamaster_cifar_checkpoint(tmp_path):
    ref = randomize_bn(create_model("resnet20"))
    sd = {("module." + k).replace("module.fc.", "module.linear."): v
          for k, v in ref.state_dict().items()}
    torch.save({"state_dict": sd, "best_prec1": 91.7}, tmp_path / "resnet20.th")
    model = create_model("resnet20")
    init_weights(model, tmp_path / "resnet20.th")
    _same_outputs(model, ref)
    assert guess_architecture(load_state_dict_any(tmp_path / "resnet20.th")[0]) == "resnet20"


class _Evil:
    def __init__(self, marker: str) -> None:
        self.marker = marker

    def __reduce__(self):
        return (exec, (f"open({self.marker!r}, 'w').write('pwned')",))


def test_malicious_pickle_refused(tmp_path, capsys):
    marker = tmp_path / "pwned.txt"
    path = tmp_path / "evil.pth"
    torch.save({"state_dict": {"conv1.weight": torch.zeros(1)}, "x": _Evil(str(marker))}, path)
    with pytest.raises(UserError, match=r"refusing to load .*exec.*weights_only=False"):
        load_state_dict_any(path)
    assert main(["import", str(path), "--model", "resnet18", "--out",
                 str(tmp_path / "out.safetensors")]) == 2
    err = capsys.readouterr().err
    assert err.startswith("error: refusing to load") and err.count("\n") == 1
    assert not marker.exists() and not (tmp_path / "out.safetensors").exists()


def test_pickled_module_and_garbage_refused(tmp_path, tv18):
    torch.save(tv18, tmp_path / "whole.pt")
    with pytest.raises(UserError, match="torchvision.models.resnet.ResNet"):
        load_state_dict_any(tmp_path / "whole.pt")
    (tmp_path / "junk.pth").write_bytes(os.urandom(64))
    with pytest.raises(UserError, match="cannot read"):
        load_state_dict_any(tmp_path / "junk.pth")
    torch.save({"epoch": 1}, tmp_path / "empty.pth")
    with pytest.raises(UserError, match="no state_dict.*epoch"):
        load_state_dict_any(tmp_path / "empty.pth")


def test_cli_import_roundtrip(tmp_path, tv18, capsys):
    src = tmp_path / "ckpt.pth"
    torch.save({"state_dict": {"module." + k: v for k, v in tv18.state_dict().items()}}, src)
    out = tmp_path / "imported.safetensors"
    names = tmp_path / "names.txt"
    names.write_text("\n".join(f"class{i}" for i in range(10)))
    assert main(["import", str(src), "--model", "resnet18", "--class-names", str(names),
                 "--out", str(out)]) == 0
    assert "wrote" in capsys.readouterr().out
    model, meta = load_checkpoint(out)
    _same_outputs(model, tv18)
    assert meta.architecture == "resnet18" and meta.kwargs["num_classes"] == 10
    assert meta.class_names[3] == "class3" and meta.preprocess.std[0] == pytest.approx(0.229)

"""Loading foreign checkpoints: torchvision, timm, DDP/compile training checkpoints,
safetensors; head replacement; refusal of unsafe pickles; `reslab import`."""
from __future__ import annotations

import argparse
import os

import pytest
import torch
import torch.nn.functional as F
import torchvision
from torch import nn
from safetensors.torch import save_file

from reslab import UserError, create_model, load_checkpoint
from reslab.cli import main
from cli_helpers import legacy_record
from reslab.weights.record import save_weights
from reslab.weights.layouts import IMAGENET_MEAN, guess_architecture, init_weights
from reslab.weights.reading import open_weights
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
    state, meta = open_weights(path)
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
    _, got = open_weights(tmp_path / "r.safetensors")
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


# --- foreign forward passes, written as the foreign code does them --------------------------

class _Lambda(nn.Module):
    def __init__(self, fn) -> None:
        super().__init__()
        self.fn = fn

    def forward(self, x):
        return self.fn(x)


class _AkamasterBlock(nn.Module):
    """akamaster/pytorch_resnet_cifar10 resnet.py BasicBlock, option A: the LambdaLayer pads
    planes//4 zero channels on BOTH sides of the subsampled input."""

    def __init__(self, in_planes: int, planes: int, stride: int = 1) -> None:
        super().__init__()
        self.conv1 = nn.Conv2d(in_planes, planes, 3, stride, 1, bias=False)
        self.bn1 = nn.BatchNorm2d(planes)
        self.conv2 = nn.Conv2d(planes, planes, 3, 1, 1, bias=False)
        self.bn2 = nn.BatchNorm2d(planes)
        self.shortcut = nn.Sequential()
        if stride != 1 or in_planes != planes:
            self.shortcut = _Lambda(lambda x: F.pad(x[:, :, ::2, ::2],
                                                    (0, 0, 0, 0, planes // 4, planes // 4),
                                                    "constant", 0))

    def forward(self, x):
        out = F.relu(self.bn1(self.conv1(x)))
        out = self.bn2(self.conv2(out))
        out += self.shortcut(x)
        return F.relu(out)


class _AkamasterResNet(nn.Module):
    def __init__(self, n: int = 3, num_classes: int = 10) -> None:
        super().__init__()
        self.in_planes = 16
        self.conv1 = nn.Conv2d(3, 16, 3, 1, 1, bias=False)
        self.bn1 = nn.BatchNorm2d(16)
        self.layer1 = self._layer(16, n, 1)
        self.layer2 = self._layer(32, n, 2)
        self.layer3 = self._layer(64, n, 2)
        self.linear = nn.Linear(64, num_classes)

    def _layer(self, planes: int, n: int, stride: int) -> nn.Sequential:
        layers = []
        for s in [stride] + [1] * (n - 1):
            layers.append(_AkamasterBlock(self.in_planes, planes, s))
            self.in_planes = planes
        return nn.Sequential(*layers)

    def forward(self, x):
        out = F.relu(self.bn1(self.conv1(x)))
        out = self.layer3(self.layer2(self.layer1(out)))
        out = F.avg_pool2d(out, out.size()[3])
        return self.linear(out.view(out.size(0), -1))


class _TimmBasicBlock(nn.Module):
    """timm's resnet.py BasicBlock (default options: no drop-block, anti-aliasing or SE)."""

    def __init__(self, inplanes: int, planes: int, stride: int = 1, downsample=None) -> None:
        super().__init__()
        self.conv1 = nn.Conv2d(inplanes, planes, 3, stride, 1, bias=False)
        self.bn1 = nn.BatchNorm2d(planes)
        self.drop_block = nn.Identity()
        self.act1 = nn.ReLU(inplace=True)
        self.aa = nn.Identity()
        self.conv2 = nn.Conv2d(planes, planes, 3, 1, 1, bias=False)
        self.bn2 = nn.BatchNorm2d(planes)
        self.se = None
        self.act2 = nn.ReLU(inplace=True)
        self.downsample = downsample

    def forward(self, x):
        shortcut = x
        x = self.aa(self.act1(self.drop_block(self.bn1(self.conv1(x)))))
        x = self.bn2(self.conv2(x))
        if self.downsample is not None:
            shortcut = self.downsample(shortcut)
        x += shortcut
        return self.act2(x)


class _TimmResNet18(nn.Module):
    def __init__(self, num_classes: int = 10) -> None:
        super().__init__()
        self.conv1 = nn.Conv2d(3, 64, 7, 2, 3, bias=False)
        self.bn1 = nn.BatchNorm2d(64)
        self.act1 = nn.ReLU(inplace=True)
        self.maxpool = nn.MaxPool2d(3, 2, 1)
        inplanes, stages = 64, []
        for i, planes in enumerate((64, 128, 256, 512)):
            stride = 1 if i == 0 else 2
            down = None
            if stride != 1 or inplanes != planes:
                down = nn.Sequential(nn.Conv2d(inplanes, planes, 1, stride, bias=False),
                                     nn.BatchNorm2d(planes))
            stages.append(nn.Sequential(_TimmBasicBlock(inplanes, planes, stride, down),
                                        _TimmBasicBlock(planes, planes)))
            inplanes = planes
        self.layer1, self.layer2, self.layer3, self.layer4 = stages
        self.global_pool = nn.AdaptiveAvgPool2d(1)
        self.fc = nn.Linear(512, num_classes)

    def forward(self, x):
        x = self.maxpool(self.act1(self.bn1(self.conv1(x))))
        x = self.layer4(self.layer3(self.layer2(self.layer1(x))))
        return self.fc(self.global_pool(x).flatten(1))


def _cli(*argv) -> int:
    return main([str(a) for a in argv])


def _foreign(layout: str) -> tuple[nn.Module, dict, str]:
    """(the foreign module with random weights, what its training script saves, architecture)."""
    torch.manual_seed(1)
    if layout == "akamaster":  # its trainer saves a DataParallel model's state_dict
        net = randomize_bn(_AkamasterResNet())
        sd = {"module." + k: v for k, v in net.state_dict().items()}
        return net, {"epoch": 200, "state_dict": sd, "best_prec1": 91.7}, "resnet20"
    if layout == "timm":  # timm's train.py: the args Namespace beside the weights
        net = randomize_bn(_TimmResNet18())
        return net, {"epoch": 3, "arch": "resnet18", "state_dict": net.state_dict(),
                     "args": argparse.Namespace(lr=0.1), "version": 2}, "resnet18"
    net = randomize_bn(torchvision.models.resnet18(num_classes=10))
    if layout == "torchvision":
        return net, net.state_dict(), "resnet18"
    sd = {"module._orig_mod." + k: v for k, v in net.state_dict().items()}  # DDP + compile
    return net, {"model_state_dict": sd, "optimizer": {"state": {}, "param_groups": []}}, \
        "resnet18"


@pytest.mark.parametrize("layout", ["torchvision", "timm", "akamaster", "wrapped"])
def test_an_imported_checkpoint_computes_what_its_own_code_computes(layout, tmp_path, capsys):
    """Each advertised layout against its own forward pass: the same logits after `reslab
    import`, through the record alone (so eval, predict and export build the same net)."""
    net, saved, arch = _foreign(layout)
    torch.save(saved, tmp_path / "foreign.pth")
    out = tmp_path / "imported.safetensors"
    assert _cli("import", tmp_path / "foreign.pth", "--model", arch, "--out", out) == 0
    model, record = load_checkpoint(out)
    with torch.no_grad():
        torch.testing.assert_close(model(X), net.eval()(X), rtol=1e-5, atol=1e-5)
    assert record.kwargs.get("pad_sides", "after") == ("both" if layout == "akamaster"
                                                       else "after")
    capsys.readouterr()
    if layout == "akamaster":  # read directly too, and never loaded into another padding
        direct, _ = load_checkpoint(tmp_path / "foreign.pth", architecture=arch)
        with torch.no_grad():
            torch.testing.assert_close(direct(X), net(X), rtol=1e-5, atol=1e-5)
        assert guess_architecture(open_weights(tmp_path / "foreign.pth")[0]) == "resnet20"
        with pytest.raises(UserError, match=r"pads option-A shortcuts .* both sides .*would "
                                            r"shift the channels"):
            init_weights(create_model("resnet20"), tmp_path / "foreign.pth")
        init_weights(create_model("resnet20", pad_sides="both"), tmp_path / "foreign.pth")


def test_pad_sides_reaches_export_and_grow(tmp_path, capsys):
    net, saved, arch = _foreign("akamaster")
    torch.save(saved, tmp_path / "a.th")
    assert _cli("import", tmp_path / "a.th", "--model", arch, "--out",
                tmp_path / "a.safetensors") == 0
    assert _cli("grow", tmp_path / "a.safetensors", "--to", "resnet32", "--out",
                tmp_path / "g.safetensors") == 0
    grown, record = load_checkpoint(tmp_path / "g.safetensors")
    assert record.kwargs["pad_sides"] == "both"
    assert _cli("export", tmp_path / "a.safetensors", "--format", "torchscript", "--out",
                tmp_path / "a.pt") == 0
    scripted = torch.jit.load(str(tmp_path / "a.pt"))
    with torch.no_grad():
        torch.testing.assert_close(grown(X), net.eval()(X), rtol=1e-5, atol=1e-5)
        torch.testing.assert_close(scripted(X), net(X), rtol=1e-5, atol=1e-5)
    capsys.readouterr()


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
        open_weights(path)
    assert main(["import", str(path), "--model", "resnet18", "--out",
                 str(tmp_path / "out.safetensors")]) == 2
    err = capsys.readouterr().err
    assert err.startswith("error: refusing to load") and err.count("\n") == 1
    assert not marker.exists() and not (tmp_path / "out.safetensors").exists()


@pytest.mark.parametrize("name", ["notes.txt", "model.onnx"])
@pytest.mark.parametrize("command", ["eval", "predict", "export"])
def test_a_file_that_is_not_weights_says_so_first(name, command, tmp_path, capsys):
    """A text file or an ONNX export as the model: what it is not, not a missing architecture
    (issue 28: "pass architecture=NAME" named no flag, and the real cause came after import)."""
    path = tmp_path / name
    path.write_bytes(b"\x08\x07\x12\x07pytorch" if name.endswith(".onnx") else b"epochs = 3\n")
    argv = {"eval": ["eval", path], "predict": ["predict", path, path],
            "export": ["export", path, "--out", tmp_path / "m.onnx"]}[command]
    assert main([str(a) for a in argv]) == 2
    err = capsys.readouterr().err
    assert err.startswith(f"error: cannot read {path}: it is neither a safetensors file nor a "
                          "PyTorch checkpoint") and err.count("\n") == 1, err
    assert ("an ONNX export" in err) == name.endswith(".onnx")
    assert "architecture=NAME" not in err


def test_pickled_module_and_garbage_refused(tmp_path, tv18):
    torch.save(tv18, tmp_path / "whole.pt")
    with pytest.raises(UserError, match="torchvision.models.resnet.ResNet"):
        open_weights(tmp_path / "whole.pt")
    (tmp_path / "junk.pth").write_bytes(os.urandom(64))
    with pytest.raises(UserError, match="cannot read"):
        open_weights(tmp_path / "junk.pth")
    not_weights = f"cannot read {tmp_path / 'notes.txt'}: it is neither a safetensors file " \
        "nor a PyTorch checkpoint"
    (tmp_path / "notes.txt").write_text("epochs = 3\nmy notes\n")
    with pytest.raises(UserError) as caught:  # what the file is not, no exception's name
        open_weights(tmp_path / "notes.txt")
    assert str(caught.value) == not_weights
    with pytest.raises(UserError, match="it is neither a safetensors file nor a PyTorch "
                                        "checkpoint"):  # torch's reason may follow
        open_weights(tmp_path / "junk.pth")
    torch.save({"epoch": 1}, tmp_path / "empty.pth")
    with pytest.raises(UserError, match="no state_dict.*epoch"):
        open_weights(tmp_path / "empty.pth")


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


def test_import_weights_is_what_reslab_import_runs(tmp_path, tv18, capsys):
    """The library call behind `reslab import`, usable without the command line: the same file
    (tensors and metadata), and a typed result saying what it wrote."""
    from reslab.weights.importer import ImportedWeights, import_weights

    src = tmp_path / "ckpt.pth"
    torch.save({"state_dict": {"module." + k: v for k, v in tv18.state_dict().items()}}, src)
    names = [f"class{i}" for i in range(10)]
    (tmp_path / "names.txt").write_text("\n".join(names))
    assert main(["import", str(src), "--model", "resnet18", "--class-names",
                 str(tmp_path / "names.txt"), "--mean", "0.5,0.4,0.3", "--input-size", "64",
                 "--out", str(tmp_path / "cli.safetensors")]) == 0
    assert capsys.readouterr().out == (f"wrote {tmp_path / 'cli.safetensors'}: resnet18, "
                                       "10 classes, 3 input channels, 11,181,642 params\n")
    done = import_weights(src, tmp_path / "lib.safetensors", "resnet18", class_names=names,
                          mean=(0.5, 0.4, 0.3), input_size=64)
    assert isinstance(done, ImportedWeights) and done.path == tmp_path / "lib.safetensors"
    assert (done.architecture, done.num_classes, done.in_chans, done.params, done.messages) == \
        ("resnet18", 10, 3, 11_181_642, ())
    (meta, tensors), (cli_meta, cli_tensors) = (_contents(done.path),
                                                 _contents(tmp_path / "cli.safetensors"))
    assert meta == cli_meta and tensors.keys() == cli_tensors.keys()
    assert all(torch.equal(tensors[k], cli_tensors[k]) for k in tensors)
    assert done.record.class_names == tuple(names) and \
        done.record.preprocess.input_size == (3, 64, 64)
    with pytest.raises(UserError, match="--model is required"):
        import_weights(src, tmp_path / "x.safetensors")
    with pytest.raises(ValueError, match="--class-names gives 2 names but the model has 10"):
        import_weights(src, tmp_path / "x.safetensors", "resnet18", class_names=["a", "b"])


def _contents(path) -> tuple[dict, dict]:
    """(metadata, tensors) of a safetensors file (its header's key order is not fixed)."""
    from safetensors import safe_open

    with safe_open(str(path), "pt") as f:
        return f.metadata(), {k: f.get_tensor(k) for k in f.keys()}

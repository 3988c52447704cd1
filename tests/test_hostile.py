"""Files a user brings, and signals: no silent wrong result, nothing left behind.

Each class of hostile or careless input gets exit 2 with one clear `error:` line (or, where the
input is fine, the right result): weights of a dtype reslab never writes, normalisation
statistics out of bounds, damaged training states, recipe values of the wrong type, bad CIFAR
labels, image folders with empty or oddly named classes, outputs that are FIFOs or the input
itself; a SIGTERM or SIGINT never leaves a temporary file or a running sweep member behind; and
a weights file is read once per command.
"""
from __future__ import annotations

import json
import os
import pickle
import shutil
import signal
import stat
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image
from safetensors import safe_open
from safetensors.torch import load_file, save_file

import reslab.io
from cli_helpers import clean_error, resumable_copy, run_cli, tree_digest
from reslab.engine.recipe import coerce, load_recipe, read_toml, save_recipe
from reslab.errors import UserError
from reslab.io import atomic_write_text, check_writable
from reslab.models import create_model

TINY = {"model": "resnet8", "data": "synthetic:64x3x8x8:4", "batch_size": 16, "iters": 4,
        "lr": 0.05, "workers": 0, "device": "cpu", "deterministic": True}
FOLDER_TRAIN = ["--model", "resnet8", "--image-size", "8", "--iters", "1", "--batch-size", "4",
                "--workers", "0", "--device", "cpu", "--quiet"]


def cli(*argv: object) -> list[str]:
    return [str(a) for a in argv]


@pytest.fixture(scope="module")
def run(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A finished 4-step run of a resnet8 on 8x8 RGB images (its weights, state, metrics),
    trained from RUN/../tiny.toml."""
    from reslab.cli import main

    recipe = tmp_path_factory.mktemp("run") / "tiny.toml"
    save_recipe(recipe, coerce(TINY))
    assert main(cli("train", "--recipe", recipe, "--out", recipe.parent / "run", "--quiet")) == 0
    return recipe.parent / "run"


def forge(src: Path, dst: Path, tensors=None, record=None) -> Path:
    """A copy of the reslab file src with tensors and/or its record JSON changed."""
    state = load_file(str(src))
    with safe_open(str(src), framework="pt") as f:
        raw = dict(f.metadata())
    if tensors is not None:
        tensors(state)
    if record is not None:
        obj = json.loads(raw["record"])
        record(obj)
        raw["record"] = json.dumps(obj)
    save_file(state, str(dst), metadata=raw)
    return dst


def copy_run(run: Path, tmp_path: Path) -> Path:
    dst = tmp_path / "run"
    shutil.copytree(run, dst)
    return dst


# --- records, weights and state: one set of bounds ------------------------------------------

@pytest.mark.parametrize("dtype", [torch.int8, torch.bool])
def test_weights_of_a_dtype_reslab_never_writes_are_refused(dtype, run, tmp_path, capsys):
    bad = forge(run / "model.safetensors", tmp_path / "bad.safetensors",
                tensors=lambda s: s.update({"fc.weight": s["fc.weight"].to(dtype)}))
    err = clean_error(capsys, cli("eval", bad, "--device", "cpu"))
    name = str(dtype).removeprefix("torch.")
    assert f"tensor fc.weight has dtype {name}, which reslab never writes" in err, err


def test_negative_bn_variances_are_refused(run, tmp_path, capsys):
    """They pass every shape and finiteness check and give NaN scores (the square root)."""
    bad = forge(run / "model.safetensors", tmp_path / "bad.safetensors",
                tensors=lambda s: s["layer1.0.bn1.running_var"].mul_(-1))
    err = clean_error(capsys, cli("eval", bad, "--device", "cpu"))
    assert "layer1.0.bn1.running_var holds negative variances" in err, err


@pytest.mark.parametrize("field, value, says", [
    ("mean", [1e30] * 3, "invalid mean value 1e+30: must be in [-10, 10]"),
    ("std", [1e-30] * 3, "invalid std value 1e-30: below 1e-06"),
])
def test_every_record_has_the_same_statistics_bounds(field, value, says, run, tmp_path, capsys):
    bad = forge(run / "model.safetensors", tmp_path / "bad.safetensors",
                record=lambda r: r["preprocess"].update({field: value}))
    err = clean_error(capsys, cli("eval", bad, "--device", "cpu"))
    assert "invalid checkpoint metadata" in err and says in err, err
    # the same bound where a record is made: `reslab import --std`
    err = clean_error(capsys, cli("import", run / "model.safetensors", "--model", "resnet8",
                                  f"--{field}", ",".join(map(str, value)),
                                  "--out", tmp_path / "i.safetensors"))
    assert says.replace(f"invalid {field}", f"invalid --{field}") in err, err
    assert not (tmp_path / "i.safetensors").exists()


def test_imported_weights_are_checked_before_they_are_written(tmp_path, capsys, monkeypatch):
    """A damaged torch hub cache file: refused by `import`, not written for `predict` to find."""
    import torchvision
    from torchvision.models import ResNet18_Weights

    monkeypatch.setenv("TORCH_HOME", str(tmp_path / "torch"))
    monkeypatch.setenv("RESLAB_OFFLINE", "1")
    cache = tmp_path / "torch" / "hub" / "checkpoints" / Path(ResNet18_Weights.DEFAULT.url).name
    cache.parent.mkdir(parents=True)
    state = torchvision.models.resnet18().state_dict()
    state["layer3.0.conv1.weight"][0, 0, 0, 0] = float("nan")
    torch.save(state, cache)
    out = tmp_path / "r18.safetensors"
    err = clean_error(capsys, cli("import", "torchvision:resnet18", "--out", out))
    assert "holds non-finite weights (NaN or Inf), first in layer3.0.conv1.weight" in err, err
    cache.write_bytes(cache.read_bytes()[:100_000])  # a download cut short
    err = clean_error(capsys, cli("import", "torchvision:resnet18", "--out", out))
    assert err.startswith(f"error: cannot read {cache}"), err
    assert not out.exists()


BAD_STATES = {
    "negative step": (lambda s: s.update(step=-5), "step -5 is not a whole number"),
    "infinite step": (lambda s: s.update(step=float("inf")), "step inf is not a whole number"),
    "boolean step": (lambda s: s.update(step=True), "step True is not a whole number"),
    "nan best_val": (lambda s: s.update(best_val=float("nan")), "best_val nan is not a finite"),
    "another architecture": (lambda s: s.update(model=create_model("resnet14", num_classes=4)
                                                .state_dict()),
                             "its weights are of another architecture than the run's "
                             "(unexpected layer1.1."),
    "int8 weights": (lambda s: s["model"].update({"fc.weight": s["model"]["fc.weight"].to(
        torch.int8)}), "tensor fc.weight has dtype int8"),
}


@pytest.mark.parametrize("case", list(BAD_STATES))
def test_a_bad_state_is_refused_before_the_run_is_touched(case, run, tmp_path, capsys):
    out = resumable_copy(run, tmp_path / "run")
    state = torch.load(out / "state" / "last.pt", weights_only=True)
    change, says = BAD_STATES[case]
    change(state)
    torch.save(state, out / "state" / "last.pt")
    before = tree_digest(out)
    err = clean_error(capsys, cli("train", "--resume", "--out", out, "--quiet"))
    assert err.startswith(f"error: cannot resume from {out / 'state' / 'last.pt'}: ") and \
        says in err, err
    assert tree_digest(out) == before  # metrics.jsonl above all: not truncated


def test_recipe_values_have_exactly_their_type(tmp_path, capsys):
    toml = tmp_path / "r.toml"
    toml.write_text('model = "resnet8"\ntta_flip = 2\n')
    assert clean_error(capsys, cli("train", "--recipe", toml, "--out", tmp_path / "o")) == \
        "error: invalid value for tta_flip: 2 (true or false)"
    # integers never go through a float (which rounds 9007199254740993 to ...992)
    toml.write_text('model = "resnet8"\n')
    r = load_recipe(str(toml), {"seed": "9007199254740993"})
    assert r.seed == 9007199254740993
    save_recipe(tmp_path / "c.toml", r)
    assert read_toml(tmp_path / "c.toml")["seed"] == 9007199254740993
    toml.write_text(f"seed = {2**63 - 1}\n")  # the largest seed is a seed
    assert load_recipe(str(toml)).seed == 2**63 - 1
    assert clean_error(capsys, cli("train", "--seed", "9223372036854775809", "--out",
                                   tmp_path / "o")) == (
        "error: invalid seed 9223372036854775809: must be between 0 and "
        "9,223,372,036,854,775,807")
    with pytest.raises(UserError, match=r"^invalid value for lr: True \(a finite number\)$"):
        coerce({"lr": True})


# --- datasets at the door -------------------------------------------------------------------

def cifar_dir(root: Path, labels) -> Path:
    """A CIFAR-10 batches folder of 2 images per batch, the first batch's labels as given."""
    folder = root / "cifar-10-batches-py"
    folder.mkdir(parents=True)
    data = np.zeros((2, 3072), np.uint8)
    for i, name in enumerate([f"data_batch_{i}" for i in range(1, 6)] + ["test_batch"]):
        with open(folder / name, "wb") as f:
            pickle.dump({"data": data, "labels": labels if i == 0 else [0, 1]}, f)
    with open(folder / "batches.meta", "wb") as f:
        pickle.dump({"label_names": [f"c{i}" for i in range(10)]}, f)
    return root


@pytest.mark.parametrize("labels, says", [
    (None, "labels must be one class index per image (1-D), got an array of shape []"),
    ([0, -1], "label -1 is not a class of the 10 (0..9)"),
    ([0, 10], "label 10 is not a class of the 10 (0..9)"),
    (np.zeros((2, 1), np.int64), "labels must be one class index per image (1-D), got an "
                                 "array of shape [2, 1]"),
    (["a", "b"], "labels must be whole numbers, found a"),
    ([0], "1 labels for 2 images"),
])
def test_cifar_labels_are_checked(labels, says, tmp_path, capsys):
    root = cifar_dir(tmp_path / "c", labels)
    err = clean_error(capsys, cli("train", "--data", "cifar10", "--data-dir", root, "--model",
                                  "resnet8", "--iters", "1", "--out", tmp_path / "o"))
    assert "data_batch_1' (labels): " + says in err, err


def image_folder(root: Path, classes: dict[str, int], mode: str = "RGB") -> Path:
    for i, (name, n) in enumerate(classes.items()):
        (root / "train" / name).mkdir(parents=True)
        for j in range(n):
            Image.new(mode, (8, 8), 40 * i + 10 * j).save(root / "train" / name / f"{j}.png")
    return root


def test_an_empty_class_folder_is_dropped_and_named(tmp_path, capsys):
    folder = image_folder(tmp_path / "f", {"a": 3, "b": 3, "empty": 0})
    for junk in ("junk.png", "junk.jpg"):
        (folder / "train" / "b" / junk).write_text("not an image")
    rc, err = run_cli(capsys, cli("train", "--data", f"imagefolder:{folder}", *FOLDER_TRAIN,
                                  "--val-split", "0", "--out", tmp_path / "o"))
    assert rc == 0, err
    assert any("class folder 'empty'" in e and "dropped, 2 classes remain" in e for e in err), err
    assert any(e.startswith("warning: skipped 2 unreadable files of 8 in") for e in err), err
    record = json.loads(safe_open(str(tmp_path / "o" / "model.safetensors"), "pt")
                        .metadata()["record"])
    assert record["class_names"] == ["a", "b"]
    lone = image_folder(tmp_path / "g", {"a": 2, "b": 0})
    err = clean_error(capsys, cli("train", "--data", f"imagefolder:{lone}", *FOLDER_TRAIN,
                                  "--out", tmp_path / "o2"))
    assert "has readable images in 1 class folder only (empty: 'b'); a classifier needs 2" in err


def test_a_folder_of_undecodable_images_is_a_clear_error(tmp_path, capsys):
    folder = image_folder(tmp_path / "f", {"a": 2, "b": 2})
    for png in (folder / "train").rglob("*.png"):  # headers intact, pixels cut off
        noise = Image.effect_noise((64, 64), 50).convert("RGB")
        noise.save(png)
        png.write_bytes(png.read_bytes()[:200])
    err = clean_error(capsys, cli("train", "--data", f"imagefolder:{folder}", *FOLDER_TRAIN[:-3],
                                  "--workers", "1", "--quiet", "--out", tmp_path / "o"))
    assert "could be decoded (truncated or damaged files)" in err and "DataLoader" not in err, err


def test_odd_class_names(tmp_path, capsys):
    ok = image_folder(tmp_path / "ok", {"a b": 2, "café": 2})
    rc, err = run_cli(capsys, cli("train", "--data", f"imagefolder:{ok}", *FOLDER_TRAIN,
                                  "--val-split", "0", "--out", tmp_path / "o"))
    assert rc == 0, err
    bad = image_folder(tmp_path / "bad", {"x\ny": 2, "z": 2})
    err = clean_error(capsys, cli("train", "--data", f"imagefolder:{bad}", *FOLDER_TRAIN,
                                  "--out", tmp_path / "o2"))
    assert "class folder 'x\\ny'" in err and "control character" in err, err


def test_rgb_weights_fine_tune_on_a_grayscale_folder(run, tmp_path, capsys):
    gray = image_folder(tmp_path / "g", {"a": 2, "b": 2}, mode="L")
    rc, err = run_cli(capsys, cli("train", "--data", f"imagefolder:{gray}", "--weights",
                                  run / "model.safetensors", *FOLDER_TRAIN, "--val-split", "0",
                                  "--out", tmp_path / "o"))
    assert rc == 0, err
    record = json.loads(safe_open(str(tmp_path / "o" / "model.safetensors"), "pt")
                        .metadata()["record"])
    assert record["kwargs"]["in_chans"] == 1 and len(record["preprocess"]["mean"]) == 1


# --- outputs: never a non-regular file, never the input ---------------------------------------

def test_an_output_never_replaces_a_fifo_or_a_device(run, tmp_path, capsys):
    fifo = tmp_path / "out.onnx"
    os.mkfifo(fifo)
    err = clean_error(capsys, cli("export", run, "--out", fifo))
    assert "it is not a regular file (a FIFO, device or socket)" in err, err
    assert stat.S_ISFIFO(fifo.stat().st_mode)
    for where in (fifo, os.devnull):  # refused before anything is written
        with pytest.raises(UserError, match="not a regular file"):
            check_writable(where, "--out")
    with pytest.raises(UserError, match="not a regular file"):
        atomic_write_text(fifo, "x")
    assert stat.S_ISFIFO(fifo.stat().st_mode)


@pytest.mark.parametrize("command", ["export", "grow", "import", "eval --confusion"])
def test_an_output_never_replaces_its_own_input(command, run, tmp_path, capsys):
    ckpt = shutil.copy(run / "model.safetensors", tmp_path / "m.safetensors")
    before = tree_digest(tmp_path)
    argv = {"export": ["export", ckpt, "--format", "torchscript", "--out", ckpt],
            "grow": ["grow", ckpt, "--to", "resnet14", "--out", ckpt],
            "import": ["import", ckpt, "--model", "resnet8", "--out", ckpt],
            "eval --confusion": ["eval", ckpt, "--confusion", ckpt]}[command]
    err = clean_error(capsys, cli(*argv))
    assert "it is the input" in err or "is the file being imported" in err, err
    assert tree_digest(tmp_path) == before


# --- messages that name the problem -----------------------------------------------------------

def test_messages_name_the_problem(run, tmp_path, capsys):
    blob = bytearray((run / "model.safetensors").read_bytes())
    blob[:8] = (10**12).to_bytes(8, "little")  # a header length beyond the file
    (tmp_path / "h.safetensors").write_bytes(blob)
    err = clean_error(capsys, cli("eval", tmp_path / "h.safetensors", "--device", "cpu"))
    assert "it is not a readable safetensors file (its header is damaged" in err, err
    err = clean_error(capsys, cli("report", run, "--out", "/"))
    assert err == "error: cannot write report /: it is a directory (name a file in it)", err
    out = resumable_copy(run, tmp_path / "run")
    (out / "metrics.jsonl").write_bytes(b'{"step": 1}\n\xff\xfe\n')
    err = clean_error(capsys, cli("train", "--resume", "--out", out, "--quiet"))
    assert f"metrics file {out / 'metrics.jsonl'} is not UTF-8 text" in err, err
    huge = {"k" * 1_000_000: torch.zeros(1), **create_model("resnet8").state_dict()}
    torch.save(huge, tmp_path / "huge.pth")
    err = clean_error(capsys, cli("import", tmp_path / "huge.pth", "--model", "resnet8",
                                  "--out", tmp_path / "i.safetensors"))
    assert len(err) < 1000 and "(1,000,000 characters)" in err, err


# --- signals: nothing left behind -------------------------------------------------------------

# Runs the CLI with os.fsync blocked: every atomic write then waits with its temporary file
# complete on disk, which says so on stdout; the test sends the signal there.
DRIVER = """
import os, sys, time
def blocked(fd):
    print("TMP", flush=True)
    time.sleep(120)
os.fsync = blocked
import PIL.Image
PIL.Image.MAX_IMAGE_PIXELS = int(os.environ.get("MAX_PIXELS", PIL.Image.MAX_IMAGE_PIXELS))
from reslab.cli import main
sys.exit(main(sys.argv[1:]))
"""


def driver(*argv: object, env: dict | None = None) -> subprocess.Popen:
    env = {**os.environ, "OMP_NUM_THREADS": "1", "PYTHONUNBUFFERED": "1", **(env or {})}
    return subprocess.Popen([sys.executable, "-c", DRIVER, *map(str, argv)], env=env,
                            stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)


@pytest.mark.parametrize("argv, sig", [
    (["export", "{run}", "--format", "onnx", "--out", "{tmp}/r.onnx"], signal.SIGTERM),
    (["export", "{run}", "--format", "pt2", "--out", "{tmp}/r.pt2"], signal.SIGINT),
    (["eval", "{run}", "--device", "cpu", "--confusion", "{tmp}/c.png"], signal.SIGTERM),
])
def test_a_signal_during_a_write_leaves_no_temporary_file(argv, sig, run, tmp_path):
    proc = driver(*(a.format(run=run, tmp=tmp_path) for a in argv))
    try:
        assert proc.stdout.readline().strip() == "TMP", proc.communicate()
        assert list(tmp_path.glob(".*.tmp")), "the write is under way"
        proc.send_signal(sig)
        _, err = proc.communicate(timeout=60)
    finally:
        proc.kill()
    assert proc.returncode == (143 if sig == signal.SIGTERM else 130), err
    assert err.strip().splitlines()[-1] in ("error: terminated (SIGTERM)", "error: interrupted")
    assert not any(line.startswith(("W", "Traceback")) for line in err.splitlines()), err
    assert sorted(tmp_path.iterdir()) == []  # neither the temporary file nor half an output


def test_raw_library_warnings_do_not_reach_stderr(run, tmp_path):
    """A 64x64 image above a lowered decompression-bomb limit and one with damaged EXIF data:
    at most one `warning:` line each, never Python's warning with its source line."""
    Image.new("RGB", (64, 64), (10, 200, 30)).save(tmp_path / "big.png")
    exif = Image.Exif()
    exif[0x0112] = 3
    Image.new("RGB", (16, 16), (10, 200, 30)).save(tmp_path / "e.jpg", exif=exif.tobytes())
    data = bytearray((tmp_path / "e.jpg").read_bytes())
    start = data.find(b"Exif") + 20
    data[start:start + 10] = b"\xff" * 10
    (tmp_path / "e.jpg").write_bytes(data)
    proc = subprocess.run([sys.executable, "-c", DRIVER.replace("os.fsync = blocked", ""),
                           "predict", str(run), str(tmp_path / "big.png"),
                           str(tmp_path / "e.jpg"), "--device", "cpu"],
                          env={**os.environ, "MAX_PIXELS": "3000", "OMP_NUM_THREADS": "1"},
                          capture_output=True, text=True, timeout=120)
    assert proc.returncode == 0, proc.stderr
    lines = proc.stderr.splitlines()
    assert all(line.startswith("warning: image '") for line in lines), lines
    assert sum("e.jpg" in line for line in lines) == 1, lines


def test_a_sigterm_stops_the_members_of_a_parallel_sweep(tmp_path):
    long = tmp_path / "long.toml"
    save_recipe(long, coerce({**TINY, "iters": 100_000, "save_every": 0, "eval_every": 0}))
    out = tmp_path / "sweep"
    proc = subprocess.Popen([sys.executable, "-m", "reslab", "degradation", "--data",
                             TINY["data"], "--depths", "8", "--jobs", "2", "--recipe", str(long),
                             "--out", str(out), "--quiet"],
                            env={**os.environ, "OMP_NUM_THREADS": "1"},
                            stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    pids: list[int] = []
    try:
        locks = [out / m / ".reslab.lock" for m in ("plain8", "resnet8")]
        t0 = time.time()
        while len(pids) < 2:
            assert proc.poll() is None and time.time() - t0 < 120, proc.communicate()
            pids = [int(text) for text in (_read(lock) for lock in locks) if text]
            time.sleep(0.05)
        # both members are training: each has logged its step 20 (a fixed wait is too short
        # where a member is still importing and building its run)
        metrics = [out / m / "metrics.jsonl" for m in ("plain8", "resnet8")]
        while not all(_read(path) for path in metrics):
            assert proc.poll() is None and time.time() - t0 < 120, proc.communicate()
            time.sleep(0.05)
        proc.send_signal(signal.SIGTERM)
        _, err = proc.communicate(timeout=120)
        assert proc.returncode == 143, err
        assert not [pid for pid in pids if _alive(pid)], "members outlived the sweep"
        assert all((out / m / "state" / "last.pt").is_file() for m in ("plain8", "resnet8"))
    finally:
        proc.kill()
        for pid in pids:  # only the members this test started
            if _alive(pid):
                os.kill(pid, signal.SIGKILL)


def _read(path: Path) -> str:
    try:
        return path.read_text().strip()
    except OSError:
        return ""


def _alive(pid: int) -> bool:
    try:
        with open(f"/proc/{pid}/status") as f:
            return "State:\tZ" not in f.read()
    except OSError:
        return False


# --- one read of each weights file ------------------------------------------------------------

@pytest.fixture
def reads(monkeypatch: pytest.MonkeyPatch) -> dict[str, int]:
    """Counts the full reads of every weights file: each reader in reslab.io, wrapped in every
    module that imported it."""
    counts: dict[str, int] = {}
    for name in ("load_safetensors", "torch_load_safe"):
        real = getattr(reslab.io, name)

        def counting(path, *args, _real=real, **kwargs):
            counts[Path(path).name] = counts.get(Path(path).name, 0) + 1
            return _real(path, *args, **kwargs)

        for module in list(sys.modules.values()):
            if getattr(module, name, None) is real and module.__name__.startswith("reslab"):
                monkeypatch.setattr(module, name, counting)
    return counts


def test_a_weights_file_is_read_once_per_command(run, tmp_path, reads, capsys):
    recipe = run.parent / "tiny.toml"
    weights = shutil.copy(run / "model.safetensors", tmp_path / "w.safetensors")
    torch.save({"state_dict": {"module." + k: v for k, v in
                               create_model("resnet8").state_dict().items()}}, tmp_path / "f.pth")
    plain = tmp_path / "plain.safetensors"
    save_file(create_model("resnet8").state_dict(), str(plain))
    commands = {
        "w.safetensors": [["eval", weights, "--device", "cpu"],
                          ["export", weights, "--format", "torchscript", "--out",
                           tmp_path / "m.pt"],
                          ["train", "--recipe", recipe, "--weights", weights, "--iters", "1",
                           "--out", tmp_path / "ft", "--quiet"]],
        "f.pth": [["import", tmp_path / "f.pth", "--model", "resnet8", "--out",
                   tmp_path / "i.safetensors"]],
        "plain.safetensors": [["import", plain, "--model", "resnet8", "--out",
                               tmp_path / "j.safetensors"]],
    }
    for name, argvs in commands.items():
        for argv in argvs:
            reads.clear()
            rc, err = run_cli(capsys, cli(*argv))
            assert rc == 0, (argv, err)
            assert reads.get(name) == 1, (argv, reads)

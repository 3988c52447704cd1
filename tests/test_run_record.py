"""The run record: one validated checkpoint record that owns preprocessing, a run
directory with an owner and a lock, OS errors and sizes as clean errors, damaged run files."""
from __future__ import annotations

import errno
import gzip
import json
import os
import shutil
import subprocess
import sys
import tomllib
from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image
from safetensors.torch import load_file, save_file

from cli_helpers import clean_error, resumable_copy, run_cli, tree_digest
from reslab import io as rio
from reslab import limits
from reslab.weights.checkpoint import load_checkpoint
from reslab.cli import main
from reslab.data import datasets, load_data
from reslab.errors import UserError
from reslab.models import create_model
from reslab.rundir_names import LOCK_FILE
from reslab.weights.reading import open_weights
from reslab.weights.record import FORMAT, MEAN_IMAGE_KEY, Record, TrainingData, save_weights

def cli(argv: list) -> int:
    return main([str(a) for a in argv])


TRAIN = ["train", "--recipe", "demo", "--data", "digits", "--epochs", "1", "--workers", "0",
         "--device", "cpu", "--quiet"]


@pytest.fixture(scope="module")
def runs(tmp_path_factory: pytest.TempPathFactory) -> dict[str, Path]:
    """Two short digits runs, per-pixel and per-channel normalisation; the second also with
    test-time flip, so the record's flag is exercised."""
    root = tmp_path_factory.mktemp("runs")
    out = {}
    for norm, extra in (("pixel", []), ("channel", ["--tta-flip"])):
        assert cli([*TRAIN, "--normalize", norm, "--out", root / norm, *extra]) == 0
        out[norm] = root / norm
    return out


@pytest.fixture(scope="module")
def test_pngs(tmp_path_factory: pytest.TempPathFactory) -> tuple[list[Path], list[int]]:
    """digits' test split written as 8-bit grayscale PNG files (lossless)."""
    folder = tmp_path_factory.mktemp("pngs")
    x, y = datasets.digits().test
    paths = []
    for i in range(len(y)):
        path = folder / f"{i:03d}.png"
        Image.fromarray(x[i, 0].numpy(), "L").save(path)
        paths.append(path)
    return paths, y.tolist()


def _eval(capsys: pytest.CaptureFixture, ckpt: Path, *extra: str) -> dict:
    rc = cli(["eval", str(ckpt), "--device", "cpu", "--json", *extra])
    out = capsys.readouterr().out
    assert rc == 0, out
    return json.loads(out)


def _predict(capsys: pytest.CaptureFixture, ckpt: Path, paths: list[Path]) -> list[int]:
    rc = cli(["predict", str(ckpt), *map(str, paths), "--topk", "1", "--json",
               "--device", "cpu", "--batch-size", "128"])
    out = capsys.readouterr().out
    assert rc == 0, out
    return [r["top"][0]["index"] for r in json.loads(out)["predictions"]]


@pytest.mark.parametrize("norm", ["pixel", "channel"])
def test_predict_on_image_files_equals_eval_on_the_split(
        norm: str, runs: dict, test_pngs: tuple, tmp_path: Path,
        capsys: pytest.CaptureFixture) -> None:
    """The same images through `predict` (PNG files) and `eval` (the split in memory) get the
    same answers, also with the weights file copied out of its run directory."""
    paths, labels = test_pngs
    copy = tmp_path / "elsewhere" / "model.safetensors"
    copy.parent.mkdir()
    shutil.copy(runs[norm] / "model.safetensors", copy)
    for ckpt in (runs[norm] / "model.safetensors", copy):
        result = _eval(capsys, ckpt)
        preds = _predict(capsys, ckpt, paths)
        accuracy = sum(p == t for p, t in zip(preds, labels)) / len(labels)
        assert result["n"] == len(labels) == 360
        assert accuracy == result["top1"], (ckpt, accuracy, result["top1"])
        assert result["flip"] == (norm == "channel")  # as the run's numbers were computed
    # and per image: predict's answers are the model's argmax on eval's batches
    model, record = load_checkpoint(copy)
    pre = record.preprocess
    data = load_data("digits", stats=pre.stats(), image_size=pre.input_size[-1],
                     augment="none")
    with torch.no_grad():
        logits = torch.cat([(model(x) + model(x.flip(3))) / 2 if pre.tta_flip else model(x)
                            for x, _ in data.eval_batches("test", 128, "cpu")])
    assert logits.argmax(1).tolist() == preds


def test_the_record_holds_the_preprocessing(runs: dict) -> None:
    state, record = open_weights(runs["pixel"] / "model.safetensors")
    pre = record.preprocess
    assert record.architecture == "resnet20" and record.class_names == tuple("0123456789")
    assert pre.normalize == "pixel" and pre.input_size == (1, 8, 8) and pre.crop_fraction == 1.0
    assert pre.mean_image is not None and pre.mean_image.shape == (1, 8, 8)
    assert record.data.to_json() == {"spec": "digits", "data_dir": None, "val_split": 0,
                                     "seed": 0}
    assert MEAN_IMAGE_KEY not in state
    # the mean image is the training split's, exactly as the loader measures it
    expected = load_data("digits", normalize="pixel").mean_image
    assert torch.allclose(pre.mean_image, expected)
    _, channel = open_weights(runs["channel"] / "model.safetensors")
    assert channel.preprocess.mean_image is None and channel.preprocess.tta_flip is True


def test_tta_translate_is_recorded_when_set_and_false_in_older_records() -> None:
    """Records written before tta_translate (no key) read as without it, and so do the records
    of runs without it, which stay as they were; with it, the record round-trips it."""
    old = Record.from_json(json.loads(json.dumps(GOOD)))
    assert old.preprocess.tta_translate is False and "tta_translate" not in old.to_json()[
        "preprocess"]
    assert old.preprocess.tta() == (False, False)
    obj = json.loads(json.dumps(GOOD))
    obj["preprocess"] |= {"tta_flip": True, "tta_translate": True}
    new = Record.from_json(obj)
    assert new.preprocess.tta_translate is True
    assert new.to_json()["preprocess"]["tta_translate"] is True
    assert Record.from_json(new.to_json()) == new
    assert new.preprocess.tta() == (True, True)  # eval/predict/serve's auto: the record's views
    assert new.preprocess.tta(translate=False) == (True, False)
    assert new.preprocess.tta(flip=False, translate=None) == (False, True)


# --- hostile metadata ---------------------------------------------------------------------

def _forge(src: Path, dst: Path, change) -> Path:
    """A copy of the reslab file src whose record JSON went through change(obj)."""
    from safetensors import safe_open

    tensors = load_file(str(src))
    with safe_open(str(src), framework="pt") as f:
        raw = dict(f.metadata())
    obj = json.loads(raw["record"])
    change(obj)
    raw["record"] = json.dumps(obj)
    save_file(tensors, str(dst), metadata=raw)
    return dst


def _set(path: list, value):
    def change(obj: dict) -> None:
        for key in path[:-1]:
            obj = obj[key]
        obj[path[-1]] = value
    return change


BAD_RECORDS = {
    "short class_names": (["class_names"], ["a", "b"],
                          "class_names has 2 names but the model has 10 classes"),
    "class_names not a list": (["class_names"], "0123456789",
                               "class_names must be a list of strings"),
    "input_size zero": (["preprocess", "input_size"], [1, 0, 0],
                        "height and width must be between 1 and 4096"),
    "input_size channels": (["preprocess", "input_size"], [5, 8, 8],
                            "input_size [5, 8, 8] has 5 channels but the model takes 1"),
    "input_size huge": (["preprocess", "input_size"], [1, 100000, 100000],
                        "height and width must be between 1 and 4096"),
    "mean length": (["preprocess", "mean"], [0.1, 0.2],
                    "mean must be a list of 1 numbers (one per input channel)"),
    "std zero": (["preprocess", "std"], [0.0], "std must be positive, got [0.0]"),
    "std nan": (["preprocess", "std"], [float("nan")], "std must hold finite numbers"),
    "num_classes huge": (["kwargs", "num_classes"], 10**20,
                         "invalid num_classes 100000000000000000000"),
    "unknown architecture": (["architecture"], "resnet21", "unknown architecture \"resnet21\""),
    "normalize": (["preprocess", "normalize"], "pixels", "normalize \"pixels\" is not one of"),
    "tta_flip": (["preprocess", "tta_flip"], "yes", "tta_flip must be true or false"),
    "tta_translate": (["preprocess", "tta_translate"], 1,
                      "tta_translate must be true or false, got 1"),
    "kwargs": (["kwargs", "widen"], 2, "kwargs has unknown options widen"),
}


@pytest.mark.parametrize("case", sorted(BAD_RECORDS))
@pytest.mark.parametrize("command", ["eval", "predict", "grow", "export", "responses"])
def test_a_forged_record_is_one_clean_error(case: str, command: str, runs: dict,
                                            test_pngs: tuple, tmp_path: Path,
                                            capsys: pytest.CaptureFixture) -> None:
    path, value, message = BAD_RECORDS[case]
    bad = _forge(runs["pixel"] / "model.safetensors", tmp_path / "bad.safetensors",
                 _set(path, value))
    argv = {"eval": ["eval", bad, "--device", "cpu"],
            "predict": ["predict", bad, test_pngs[0][0], "--device", "cpu"],
            "grow": ["grow", bad, "--to", "resnet32", "--out", tmp_path / "g.safetensors"],
            "export": ["export", bad, "--format", "torchscript", "--out", tmp_path / "m.pt"],
            "responses": ["responses", bad, "--data", "digits", "--device", "cpu"]}[command]
    err = clean_error(capsys, argv)
    assert f"{bad}: invalid checkpoint metadata" in err and message in err, err
    assert sorted(p.name for p in tmp_path.iterdir()) == ["bad.safetensors"]  # nothing written


def test_a_pixel_record_without_its_mean_image_is_refused(runs: dict, tmp_path: Path,
                                                          capsys: pytest.CaptureFixture) -> None:
    src = runs["pixel"] / "model.safetensors"
    tensors = load_file(str(src))
    tensors.pop(MEAN_IMAGE_KEY)
    from safetensors import safe_open

    with safe_open(str(src), framework="pt") as f:
        save_file(tensors, str(tmp_path / "m.safetensors"), metadata=f.metadata())
    err = clean_error(capsys, ["eval", tmp_path / "m.safetensors"])
    assert "normalize is \"pixel\" but the file has no reslab.mean_image tensor" in err


@pytest.mark.parametrize("command", ["eval", "predict"])
def test_every_reader_bounds_the_mean_image_as_import_bounds_a_mean(
        command: str, runs: dict, test_pngs: tuple, tmp_path: Path,
        capsys: pytest.CaptureFixture) -> None:
    """predict once accepted a per-pixel mean of 1e30 where `import --mean` refuses one outside
    [-10, 10] (issue 28): the record's reader (every command's) bounds both alike."""
    src = runs["pixel"] / "model.safetensors"
    tensors = load_file(str(src))
    tensors[MEAN_IMAGE_KEY] = tensors[MEAN_IMAGE_KEY].clone()
    tensors[MEAN_IMAGE_KEY][0, 3, 3] = 1e30
    from safetensors import safe_open

    with safe_open(str(src), framework="pt") as f:
        save_file(tensors, str(tmp_path / "m.safetensors"), metadata=f.metadata())
    bad = tmp_path / "m.safetensors"
    argv = {"eval": ["eval", bad, "--device", "cpu"],
            "predict": ["predict", bad, test_pngs[0][0], "--device", "cpu"]}[command]
    err = clean_error(capsys, argv)
    assert "reslab.mean_image holds values outside [-10, 10] (largest 1e+30)" in err, err


def test_first_format_files_load_or_say_how_to_convert(tmp_path: Path,
                                                       capsys: pytest.CaptureFixture) -> None:
    """reslab-1 (flat metadata): per-channel files load as before; per-pixel ones lack the
    mean image and are refused with the command that converts them, which works."""
    model = create_model("resnet20", num_classes=10, in_chans=1)
    flat = {"architecture": "resnet20", "kwargs": {"num_classes": 10, "in_chans": 1},
            "class_names": list("0123456789"), "mean": [0.3], "std": [0.2],
            "input_size": [1, 8, 8], "crop_fraction": 1.0}

    def write(path: Path, **extra: object) -> Path:
        meta = {"format": "reslab-1", **{k: json.dumps(v) for k, v in {**flat, **extra}.items()}}
        save_file({k: v.contiguous() for k, v in model.state_dict().items()}, str(path),
                  metadata=meta)
        return path

    _, record = load_checkpoint(write(tmp_path / "old.safetensors"))
    assert record.preprocess.mean == (0.3,) and record.data is None
    old_pixel = write(tmp_path / "old_pixel.safetensors", normalize="pixel")
    err = clean_error(capsys, ["eval", old_pixel, "--data", "digits"])
    assert "format reslab-1" in err and "reslab import FILE --model ARCH --mean M --std S" in err
    assert cli(["import", old_pixel, "--model", "resnet20", "--mean", "0.3", "--std", "0.2",
                 "--input-size", "8", "--out", tmp_path / "new.safetensors"]) == 0
    capsys.readouterr()
    assert _eval(capsys, tmp_path / "new.safetensors", "--data", "digits")["n"] == 360


@pytest.mark.parametrize("argv, message", [
    (["--input-size", "-5"], "invalid --input-size -5: must be between 1 and 4,096"),
    (["--input-size", "100000"], "invalid --input-size 100000: must be between 1 and 4,096"),
    (["--std", "0"], "invalid --std value 0.0: must be in (0, 10]"),
    (["--mean", "nan"], "invalid --mean value nan: must be a finite number"),
    (["--std", "1,1"], "--std needs 1 values (one per input channel)"),
])
def test_import_refuses_nonsense_values(argv: list, message: str, runs: dict, tmp_path: Path,
                                        capsys: pytest.CaptureFixture) -> None:
    err = clean_error(capsys, ["import", runs["channel"] / "model.safetensors", "--model",
                               "resnet20", *argv, "--out", tmp_path / "x.safetensors"])
    assert err == f"error: {message}"
    assert not (tmp_path / "x.safetensors").exists()


def test_the_record_round_trips_and_is_format_2(runs: dict, tmp_path: Path) -> None:
    model, record = load_checkpoint(runs["pixel"])
    save_weights(tmp_path / "again.safetensors", model, record)
    _, again = open_weights(tmp_path / "again.safetensors")
    assert again == record and torch.equal(again.preprocess.mean_image,
                                           record.preprocess.mean_image)
    from safetensors import safe_open

    with safe_open(str(tmp_path / "again.safetensors"), framework="pt") as f:
        assert f.metadata()["format"] == FORMAT


def test_a_widened_net_round_trips_through_its_record(runs: dict, tmp_path: Path) -> None:
    """The record names a widened net ("resnet8-w2") and every reader rebuilds it."""
    _, record = load_checkpoint(runs["pixel"])
    model = create_model("resnet8-w2", num_classes=record.num_classes, in_chans=record.in_chans)
    save_weights(tmp_path / "wide.safetensors", model, record.replace(architecture="resnet8-w2"))
    again, _ = load_checkpoint(tmp_path / "wide.safetensors")
    assert again.conv1.out_channels == 32 and again.fc.in_features == 128
    assert all(torch.equal(a, b) for a, b in zip(again.state_dict().values(),
                                                 model.state_dict().values()))


def test_the_records_metadata_text_round_trips_exactly(runs: dict, tmp_path: Path) -> None:
    """A record read and written again is the same text, byte for byte: a trained run's (its
    training data read as TrainingData) and one with every data field set."""
    from safetensors import safe_open

    with safe_open(str(runs["channel"] / "model.safetensors"), framework="pt") as f:
        text = f.metadata()["record"]
    model, record = load_checkpoint(runs["channel"])
    assert record.data == TrainingData("digits", None, 0, 0)
    assert json.dumps(record.to_json()) == text
    save_weights(tmp_path / "again.safetensors", model, record)
    with safe_open(str(tmp_path / "again.safetensors"), framework="pt") as f:
        assert f.metadata()["record"] == text
    obj = {**json.loads(text),
           "data": {"spec": "imagefolder:/x", "data_dir": "/d", "val_split": 7, "seed": 3}}
    assert json.dumps(Record.from_json(obj).to_json()) == json.dumps(obj)


# --- the run directory: an owner and a lock ------------------------------------------------

def test_a_new_run_into_an_existing_run_is_refused(runs: dict, tmp_path: Path,
                                                   capsys: pytest.CaptureFixture) -> None:
    out = tmp_path / "run"
    shutil.copytree(runs["channel"], out)
    before = tree_digest(out)
    err = clean_error(capsys, [*TRAIN, "--model", "resnet32", "--out", out])
    assert err.startswith(f"error: {out} already holds a run (config.toml, metrics.jsonl, "
                          "summary.json, model.safetensors, ...); continue it with --resume, "
                          "start afresh with --overwrite")
    assert tree_digest(out) == before
    err = clean_error(capsys, [*TRAIN, "--out", out, "--resume", "--overwrite"])
    assert "give one of them" in err


def test_a_new_run_that_fails_at_once_leaves_no_directory(tmp_path: Path,
                                                         capsys: pytest.CaptureFixture) -> None:
    """The run directory it created goes when nothing was written; one the user made stays."""
    bad = ["train", "--data", f"imagefolder:{tmp_path / 'nowhere'}", "--epochs", "1", "--quiet"]
    out = tmp_path / "runs" / "new"
    assert "nowhere" in clean_error(capsys, [*bad, "--out", out])
    assert not out.exists()
    mine = tmp_path / "mine"
    mine.mkdir()
    assert "nowhere" in clean_error(capsys, [*bad, "--out", mine])
    assert mine.is_dir() and list(mine.iterdir()) == []


def test_overwrite_removes_the_old_runs_files_only(runs: dict, tmp_path: Path,
                                                   capsys: pytest.CaptureFixture) -> None:
    out = tmp_path / "run"
    shutil.copytree(runs["channel"], out)
    (out / "best.safetensors").write_bytes((out / "model.safetensors").read_bytes())
    (out / "responses.json").write_text('{"old": [1.0]}')
    (out / "notes.txt").write_text("mine")
    assert cli([*TRAIN, "--model", "resnet32", "--epochs", "0.05", "--out", out,
                 "--overwrite"]) == 0
    assert not (out / "best.safetensors").exists() and not (out / "responses.json").exists()
    assert (out / "notes.txt").read_text() == "mine"
    _, record = load_checkpoint(out)  # the run directory now serves the new model
    assert record.architecture == "resnet32"
    assert not (out / LOCK_FILE).exists()


def test_a_locked_run_directory_is_refused_and_a_stale_lock_taken_over(
        tmp_path: Path, capsys: pytest.CaptureFixture) -> None:
    out = tmp_path / "run"
    holder = subprocess.Popen([sys.executable, "-c", (
        "import sys, time; from pathlib import Path; from reslab.engine.rundir import RunLock\n"
        f"with RunLock(Path({str(out)!r})):\n    print('locked', flush=True); time.sleep(60)")],
        stdout=subprocess.PIPE, text=True)
    try:
        assert holder.stdout.readline().strip() == "locked"
        err = clean_error(capsys, [*TRAIN, "--out", out])
        assert err == (f"error: run directory {out} is in use by process {holder.pid} (another "
                       "reslab run writes there); wait for it to finish or choose another --out")
        assert not (out / "config.toml").exists()
    finally:
        holder.kill()
        holder.wait()
    # the holder died without cleaning up: its lock file stays, the kernel's lock does not
    assert (out / LOCK_FILE).read_text().strip() == str(holder.pid)
    assert cli([*TRAIN, "--epochs", "0.05", "--out", out]) == 0
    assert (out / "model.safetensors").is_file() and not (out / LOCK_FILE).exists()


def test_two_trainings_into_one_directory_cannot_both_run(tmp_path: Path) -> None:
    out = tmp_path / "run"
    argv = [sys.executable, "-m", "reslab", *TRAIN, "--epochs", "2", "--out", str(out)]
    env = {**os.environ, "OMP_NUM_THREADS": "1"}
    procs = [subprocess.Popen(argv, stderr=subprocess.PIPE, text=True, env=env)
             for _ in range(2)]
    results = [(p.wait(timeout=300), p.stderr.read()) for p in procs]
    codes = sorted(rc for rc, _ in results)
    assert codes == [0, 2], results
    loser = next(err for rc, err in results if rc == 2).strip().splitlines()
    assert len(loser) == 1 and ("is in use by process" in loser[0]
                                or "already holds a run" in loser[0]), loser
    rows = [json.loads(line) for line in (out / "metrics.jsonl").read_text().splitlines()]
    steps = [r["step"] for r in rows if "split" not in r]
    assert steps == sorted(steps)  # one writer: no interleaved lines


# --- paths and operating-system errors ----------------------------------------------------

def test_out_that_is_a_file_or_under_a_file(tmp_path: Path, capsys: pytest.CaptureFixture) -> None:
    file = tmp_path / "file"
    file.write_text("x")
    assert clean_error(capsys, [*TRAIN, "--out", file]) == \
        f"error: run directory {file} exists and is not a directory"
    err = clean_error(capsys, [*TRAIN, "--out", file / "run"])
    assert str(file / "run") in err and "not a directory" in err
    assert file.read_text() == "x"


def test_fifos_are_refused_without_blocking(runs: dict, tmp_path: Path,
                                            capsys: pytest.CaptureFixture) -> None:
    fifo = tmp_path / "pipe.png"
    os.mkfifo(fifo)
    assert clean_error(capsys, ["predict", runs["channel"], fifo]) == \
        f"error: image {fifo} is not a regular file (a FIFO, socket or device)"
    recipe = tmp_path / "recipe.toml"
    os.mkfifo(recipe)
    assert clean_error(capsys, ["train", "--recipe", recipe, "--out", tmp_path / "r"]) == \
        f"error: recipe {recipe} is not a regular file (a FIFO, socket or device)"
    weights = tmp_path / "w.safetensors"
    os.mkfifo(weights)
    assert "is not a regular file" in clean_error(capsys, ["eval", weights])
    # a folder is read for its image files: FIFOs named .png are not among them
    assert clean_error(capsys, ["predict", runs["channel"], tmp_path]) == (
        f"error: no image files in folder '{tmp_path}' (extensions PIL reads: .png, .jpg, ...)")


@pytest.mark.parametrize("code, reason", [
    (errno.EACCES, "permission denied"), (errno.EROFS, "read-only file system"),
    (errno.ENOSPC, "No space left on device"), (errno.EFBIG, "file too large"),
])
def test_os_errors_on_writes_are_clean_and_keep_the_old_file(
        code: int, reason: str, runs: dict, tmp_path: Path, monkeypatch: pytest.MonkeyPatch,
        capsys: pytest.CaptureFixture) -> None:
    target = tmp_path / "grown.safetensors"
    target.write_bytes(b"the previous file")

    def fail(*args: object, **kwargs: object) -> None:
        raise OSError(code, os.strerror(code))

    monkeypatch.setattr(rio.os, "replace", fail)
    err = clean_error(capsys, ["grow", runs["channel"], "--to", "resnet32", "--out", target])
    assert err == f"error: cannot write checkpoint {target}: {rio._HINTS[code]}"
    assert reason in err and target.read_bytes() == b"the previous file"
    assert [p.name for p in tmp_path.iterdir()] == ["grown.safetensors"]  # no temporary left


def test_a_read_only_file_system_is_a_clean_error(runs: dict, tmp_path: Path,
                                                  capsys: pytest.CaptureFixture) -> None:
    ro = tmp_path / "ro"
    ro.mkdir()
    mount = subprocess.run(["mount", "-t", "tmpfs", "-o", "ro,size=1m", "tmpfs", str(ro)],
                           capture_output=True, text=True) if shutil.which("mount") else None
    if mount is None or mount.returncode != 0:
        pytest.skip("cannot mount a read-only tmpfs here")
    try:
        err = clean_error(capsys, ["grow", runs["channel"], "--to", "resnet32", "--out",
                                   ro / "g.safetensors"])
        assert "read-only file system" in err
        err = clean_error(capsys, [*TRAIN, "--out", ro / "run"])
        assert str(ro / "run") in err and "read-only file system" in err
    finally:
        subprocess.run(["umount", "-l", str(ro)], check=True)


def test_a_file_size_limit_is_a_clean_error(runs: dict, tmp_path: Path) -> None:
    """ulimit -f: the kernel would kill the writer with SIGXFSZ; reslab gets EFBIG instead."""
    import resource

    out = tmp_path / "grown.safetensors"
    proc = subprocess.run(
        [sys.executable, "-m", "reslab", "grow", str(runs["channel"]), "--to", "resnet56",
         "--out", str(out)], capture_output=True, text=True,
        env={**os.environ, "PYTHONDONTWRITEBYTECODE": "1"},
        preexec_fn=lambda: resource.setrlimit(resource.RLIMIT_FSIZE, (100_000, 100_000)))
    assert proc.returncode == 2, proc.stderr
    assert proc.stderr.strip() == (f"error: cannot write checkpoint {out}: file too large for "
                                   "this system's file-size limit (ulimit -f)")
    assert not out.exists() and list(tmp_path.iterdir()) == []


# --- sizes ------------------------------------------------------------------------------------

@pytest.mark.parametrize("argv, message", [
    ([*TRAIN, "--image-size", "100000"], "invalid image_size 100000: must be between 1 and 4,096"),
    ([*TRAIN, "--pad", "1000000"], "invalid pad 1000000: must be between 0 and 256"),
    ([*TRAIN, "--gamma", "-1"], "invalid gamma -1.0: must be in (0, 1]"),
    (["summary", "resnet20", "--num-classes", str(10**20)],
     "invalid --num-classes 100000000000000000000: must be between 1 and 100,000"),
    (["summary", "resnet20", "--input", "1x3x100000x100000"],
     "invalid --input '1x3x100000x100000': height and width must be between 1 and 4,096"),
])
def test_sizes_are_bounded(argv: list, message: str | None, tmp_path: Path,
                           capsys: pytest.CaptureFixture) -> None:
    err = clean_error(capsys, [*argv, "--out", tmp_path / "r"] if argv[0] == "train" else argv)
    if message is not None:
        assert err == f"error: {message}"


def test_eval_scales_are_bounded(runs: dict, capsys: pytest.CaptureFixture) -> None:
    assert clean_error(capsys, ["eval", runs["channel"], "--scales", "100000"]) == \
        "error: invalid scale 100000: must be between 1 and 4,096"


def test_in_memory_data_is_bounded_before_resizing() -> None:
    with pytest.raises(UserError, match=r"image size 4096 would make digits 28\.1 GiB in memory, more than the 4 GiB"):
        load_data("digits", image_size=4096)


def test_a_gzip_bomb_is_refused(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """An idx .gz that inflates past the limit is stopped after reading the limit (here made
    small: the real one is 2 GiB, far above Fashion-MNIST's 47 MB)."""
    monkeypatch.setattr(datasets, "MAX_FILE_BYTES", 10_000)
    header = b"\x00\x00\x08\x03" + np.array([100, 28, 28], ">u4").tobytes()
    bomb = tmp_path / "train-images-idx3-ubyte.gz"
    bomb.write_bytes(gzip.compress(header + bytes(100 * 28 * 28)))
    with pytest.raises(UserError, match="holds more than 10,000 bytes"):
        datasets.read_idx(bomb)
    forged = tmp_path / "forged-idx3-ubyte"
    forged.write_bytes(b"\x00\x00\x08\x03" + np.array([2**32 - 1] * 3, ">u4").tobytes())
    with pytest.raises(UserError, match="does not match its header"):
        datasets.read_idx(forged)


def test_every_limit_is_stated_in_one_module() -> None:
    assert limits.MAX_IMAGE_SIDE == 4096 and limits.MAX_CLASSES == 100_000
    with pytest.raises(UserError, match=r"invalid x 5: must be between 0 and 4"):
        limits.check_int("x", 5, 0, 4)
    with pytest.raises(UserError, match=r"invalid y inf: must be a finite number"):
        limits.check_float("y", float("inf"), 0, 1)
    # inference batches of a huge resolution shrink to fit the memory budget
    assert limits.fit_batch(256, (1, 8, 8)) == 256
    assert limits.fit_batch(256, (3, 4096, 4096)) == 1
    assert limits.fit_batch(256, (3, 1024, 1024)) == 2**26 // (3 * 1024 * 1024) == 21


# --- damaged run files --------------------------------------------------------------------

@pytest.mark.parametrize("damage, message", [
    (lambda d: (d / "metrics.jsonl").write_text('[1, 2]\n"text"\n{"step": Infinity}\n'
                                                 '{"step": 5, "split": "test"}\n'), None),
    (lambda d: (d / "responses.json").write_text("[1, 2, 3]"),
     "responses file {d}/responses.json is damaged"),
    (lambda d: (d / "responses.json").write_text('{"m": [1, "x"]}'),
     "responses file {d}/responses.json is damaged"),
    (lambda d: (d / "degradation.json").write_text('{"runs": 5}'),
     "degradation file {d}/degradation.json is damaged"),
    (lambda d: (d / "summary.json").write_text("not json"),
     "summary {d}/summary.json is damaged: not JSON"),
])
def test_damaged_run_files_are_clean_errors(damage, message: str | None, runs: dict,
                                            tmp_path: Path, capsys: pytest.CaptureFixture
                                            ) -> None:
    run = tmp_path / "run"
    shutil.copytree(runs["channel"], run)
    damage(run)
    if message is None:  # damaged rows are skipped: the report still renders
        assert cli(["report", run]) == 0
        assert (run / "report.html").is_file()
        return
    assert clean_error(capsys, ["report", run]).startswith("error: " + message.format(d=run))


def test_eval_ignores_a_damaged_config(runs: dict, tmp_path: Path,
                                       capsys: pytest.CaptureFixture) -> None:
    """eval reads the checkpoint's record, never config.toml."""
    run = tmp_path / "run"
    shutil.copytree(runs["channel"], run)
    expected = _eval(capsys, runs["channel"])["top1"]
    (run / "config.toml").write_text('data = 5\nimage_size = "big"\nnormalize = [1]\n')
    assert _eval(capsys, run)["top1"] == expected


def test_eval_on_other_classes_warns(runs: dict, capsys: pytest.CaptureFixture) -> None:
    rc, err = run_cli(capsys, ["eval", runs["channel"], "--data", "synthetic:64x1x8x8:10"])
    assert rc == 0
    assert err == ["warning: synthetic:64x1x8x8:10's classes (class0, class1, class2, class3, ...) are not "
                   "the ones the model was trained on (0, 1, 2, 3, ...); scoring by class index"]


def test_io_maps_every_user_errno(tmp_path: Path) -> None:
    for code in (errno.EACCES, errno.EROFS, errno.ENOSPC, errno.EDQUOT, errno.EFBIG,
                 errno.ENOTDIR, errno.EISDIR):
        err = rio.path_error(OSError(code, "x"), tmp_path / "f", "write")
        assert err is not None and str(err).startswith(f"cannot write {tmp_path / 'f'}: ")
    assert rio.path_error(OSError(errno.EIO, "x"), "f", "write") is None  # a real fault
    wrapped = RuntimeError("safetensors: (os error 28)")
    assert rio.os_errno(wrapped) == errno.ENOSPC


# --- any record a file can hold: a valid Record or one clean error -------------------------

from hypothesis import HealthCheck, given, settings  # noqa: E402
from hypothesis import strategies as st  # noqa: E402


JSON = st.recursive(st.none() | st.booleans() | st.integers(-2**70, 2**70)
                    | st.floats(allow_subnormal=False) | st.text(max_size=8),
                    lambda inner: st.lists(inner, max_size=4)
                    | st.dictionaries(st.text(max_size=8), inner, max_size=4), max_leaves=12)
PATHS = [["architecture"], ["kwargs"], ["kwargs", "num_classes"], ["kwargs", "in_chans"],
         ["kwargs", "shortcut"], ["class_names"], ["preprocess"], ["preprocess", "input_size"],
         ["preprocess", "mean"], ["preprocess", "std"], ["preprocess", "normalize"],
         ["preprocess", "crop_fraction"], ["preprocess", "tta_flip"],
         ["preprocess", "tta_translate"], ["data"],
         ["data", "val_split"], ["data", "seed"], ["extra"]]
GOOD = {"architecture": "resnet20", "kwargs": {"num_classes": 3, "in_chans": 1},
        "class_names": ["a", "b", "c"],
        "preprocess": {"normalize": "channel", "mean": [0.5], "std": [0.25],
                       "input_size": [1, 8, 8], "crop_fraction": 1.0, "tta_flip": False},
        "data": {"spec": "digits", "data_dir": None, "val_split": 0, "seed": 0}, "extra": {}}


@settings(max_examples=300, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(st.lists(st.tuples(st.sampled_from(PATHS), JSON), min_size=1, max_size=3),
       st.booleans())
def test_any_record_is_valid_or_one_clean_error(changes: list, mean_image: bool) -> None:
    obj = json.loads(json.dumps(GOOD))
    for path, value in changes:
        target = obj
        for key in path[:-1]:
            if not isinstance(target.get(key), dict):
                target[key] = {}
            target = target[key]
        target[path[-1]] = value
    image = torch.rand(1, 8, 8) if mean_image else None
    try:
        record = Record.from_json(obj, image)
    except UserError as e:
        assert str(e).startswith("record: invalid checkpoint metadata: ") and "\n" not in str(e)
        return
    # what passed validation is usable: the model builds and its sizes agree
    model = record.build_model()
    assert model.fc.out_features == len(record.class_names) == record.num_classes
    assert record.preprocess.input_size[0] == record.in_chans == len(record.preprocess.std)
    assert min(record.preprocess.std) > 0


def test_non_finite_weights_are_refused(runs: dict, tmp_path: Path,
                                        capsys: pytest.CaptureFixture) -> None:
    from safetensors import safe_open

    src = runs["channel"] / "model.safetensors"
    tensors = load_file(str(src))
    tensors["layer2.0.conv1.weight"][0, 0, 0, 0] = float("inf")
    with safe_open(str(src), framework="pt") as f:
        save_file(tensors, str(tmp_path / "inf.safetensors"), metadata=f.metadata())
    assert clean_error(capsys, ["eval", tmp_path / "inf.safetensors"]) == (
        f"error: {tmp_path / 'inf.safetensors'} holds non-finite weights (NaN or Inf), first "
        "in layer2.0.conv1.weight")


@pytest.mark.parametrize("spec", ["synthetic:100000000x3x32x32", "synthetic:64x4x8x8:4",
                                  "synthetic:64x3x100000x8"])
def test_synthetic_sizes_are_bounded(spec: str, tmp_path: Path,
                                     capsys: pytest.CaptureFixture) -> None:
    err = clean_error(capsys, ["train", "--data", spec, "--out", tmp_path / "run"])
    assert err.startswith(f"error: synthetic spec '{spec[10:]}' is too large")


@pytest.mark.parametrize("argv", [
    ["eval", "{run}", "--confusion", "{bad}"],
    ["export", "{run}", "--out", "{bad}"],
    ["responses", "{run}", "--data", "digits", "--out", "{bad}"],
])
def test_an_output_under_a_file_fails_before_the_work(argv, runs: dict, tmp_path: Path,
                                                      capsys: pytest.CaptureFixture) -> None:
    """Outputs are checked first: the error names the output, not a failure after the work."""
    (tmp_path / "file").write_text("keep")
    bad = tmp_path / "file" / "out.png"
    argv = [a.format(run=runs["channel"], bad=bad) for a in argv]
    err = clean_error(capsys, argv)
    assert err.startswith("error: cannot write ") and f"{bad}: {tmp_path / 'file'} is not a " \
        "directory" in err, err
    assert (tmp_path / "file").read_text() == "keep"


def test_claim_names_and_clears_every_run_file_from_rundir(tmp_path: Path) -> None:
    """RunDir owns the names: "new" refuses a directory holding any of them (metrics.csv
    included), "overwrite" removes exactly those and leaves the user's files."""
    from reslab.engine.rundir import RunDir, claim

    out = tmp_path / "run"
    out.mkdir()
    (out / "metrics.csv").write_text("step\n1\n")
    (out / "notes.txt").write_text("mine")
    with pytest.raises(UserError, match=r"already holds a run \(metrics.csv\)"):
        claim(out, "new")
    claim(out, "overwrite")
    assert sorted(p.name for p in out.iterdir()) == ["notes.txt"]
    assert [p.relative_to(out).as_posix() for p in RunDir(out).run_files()] == [
        "config.toml", "metrics.jsonl", "summary.json", "model.safetensors", "best.safetensors",
        "state", "report.md", "report.html", "curves.png", "responses.json", "responses.png",
        "confusion.png", "tensorboard", "metrics.csv"]


def test_a_resume_refuses_recipe_flags_and_takes_machinery_ones(
        runs: dict, tmp_path: Path, capsys: pytest.CaptureFixture) -> None:
    """A resumed run continues with its stored config.toml: a recipe flag given with --resume
    would be ignored, so it is an error; where and how fast it runs may change."""
    out = resumable_copy(runs["channel"], tmp_path / "run")
    before = tree_digest(out)
    err = clean_error(capsys, ["train", "--resume", "--out", out, "--iters", "600",
                               "--lr", "0.5"])
    assert err == ("error: --resume continues the run with its stored config.toml; --iters, "
                   "--lr cannot change it (start a new run with --overwrite or another --out)")
    err = clean_error(capsys, ["train", "--resume", "--out", out, "--recipe", "fast"])
    assert "; --recipe cannot change it (" in err
    assert tree_digest(out) == before
    rc, err = run_cli(capsys, ["train", "--resume", "--out", out, "--device", "cpu",
                               "--workers", "0", "--threads", "2"])
    assert rc == 0, err
    assert err[0].startswith("resuming ") and "cpu, 2 threads" in err[0], err[0]
    assert (out / "model.safetensors").is_file()
    assert tomllib.loads((out / "config.toml").read_text()) == tomllib.loads(
        (runs["channel"] / "config.toml").read_text())  # the stored recipe stays as it was


def test_the_library_refuses_a_resume_with_another_recipe(runs: dict, tmp_path: Path) -> None:
    import reslab
    from reslab.engine.recipe import load_recipe

    out = resumable_copy(runs["channel"], tmp_path / "run")
    before = tree_digest(out)
    stored = load_recipe(str(out / "config.toml"))
    with pytest.raises(UserError, match=r"; --iters cannot change it \("):
        reslab.train(load_recipe(str(out / "config.toml"), {"iters": 600}), out, resume=True,
                     quiet=True)
    assert tree_digest(out) == before
    reslab.train(stored.replace(threads=1), out, resume=True, quiet=True)  # its own recipe
    assert (out / "model.safetensors").is_file()


def test_resuming_a_finished_run_is_refused_and_touches_nothing(
        runs: dict, tmp_path: Path, capsys: pytest.CaptureFixture) -> None:
    out = tmp_path / "run"
    shutil.copytree(runs["channel"], out)
    before = tree_digest(out)
    err = clean_error(capsys, ["train", "--resume", "--out", out])
    assert err == (f"error: the run in {out} has finished (model.safetensors); nothing to "
                   "resume")
    assert tree_digest(out) == before and not (out / LOCK_FILE).exists()

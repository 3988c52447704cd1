"""Reliability and security: nothing pickled ever runs, a crash at any moment leaves a
resumable run, a full disk or a diverging loss stops cleanly, and bad input of every kind is
one `error:` line with exit code 2."""
from __future__ import annotations

import ast
import builtins
import dataclasses
import errno
import functools
import io
import json
import os
import pickle
import re
import shutil
import signal
import struct
import subprocess
import sys
import time
from collections.abc import Callable, Iterator
from pathlib import Path

import numpy as np
import pytest
import tomli_w
import torch
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from PIL import Image
from safetensors.torch import load_file, save as safetensors_bytes

import reslab
from cli_helpers import clean_error
from reslab.cli import build_parser, main
from reslab.cli import train as train_cli
from reslab.data import datasets
from cli_helpers import legacy_record
from reslab.weights.checkpoint import load_checkpoint
from reslab.engine.state import load_state
from reslab.weights.record import save_weights
from reslab.engine.logging import MetricsLog, read_metrics
from reslab.engine.recipe import Recipe, coerce, load_recipe, save_recipe
from reslab.errors import UserError
from reslab.weights.reading import open_weights
from reslab.models import create_model

# A tiny, fully specified run (independent of the shipped recipes, which evolve): 16 steps per
# epoch on 128 synthetic 16x16 images in batches of 8, a state every 4 steps.
ITERS, SAVE_EVERY = 40, 4
RECIPE = {"model": "resnet20", "data": "synthetic:128x3x16x16:10", "batch_size": 8,
          "iters": ITERS, "lr": 0.05, "schedule": "cosine", "workers": 0, "device": "cpu",
          "deterministic": True, "save_every": SAVE_EVERY}
FUZZ = settings(max_examples=60, deadline=None,
                suppress_health_check=[HealthCheck.too_slow, HealthCheck.data_too_large])


# --- helpers -------------------------------------------------------------------------------

def train_argv(recipe: Path, out: Path, *extra: object) -> list[str]:
    return ["train", "--recipe", str(recipe), "--out", str(out), "--quiet",
            *(str(e) for e in extra)]


def popen(*args: str, env: dict[str, str] | None = None) -> subprocess.Popen:
    env = {**os.environ, "OMP_NUM_THREADS": "1", "PYTHONUNBUFFERED": "1", **(env or {})}
    return subprocess.Popen([sys.executable, *args], env=env, stdout=subprocess.PIPE,
                            stderr=subprocess.PIPE, text=True)


def wait_for(path: Path, proc: subprocess.Popen, timeout: float = 180) -> None:
    t0 = time.time()
    while not path.exists():
        assert proc.poll() is None, proc.communicate()
        assert time.time() - t0 < timeout, f"{path} never appeared"
        time.sleep(0.01)


def assert_same_weights(a: Path, b: Path) -> None:
    wa, wb = load_file(str(a / "model.safetensors")), load_file(str(b / "model.safetensors"))
    assert wa.keys() == wb.keys()
    assert all(torch.equal(wa[k], wb[k]) for k in wa), "resumed weights differ"


def r20_meta() -> dict:
    """reslab metadata of a resnet20 for 32x32 RGB images in 10 classes."""
    return {"architecture": "resnet20", "kwargs": {"num_classes": 10, "in_chans": 3},
            "class_names": [str(i) for i in range(10)], "mean": [0.5] * 3, "std": [0.5] * 3,
            "input_size": [3, 32, 32]}


# Every command that reads a checkpoint, as a function of (checkpoint, tmp dir, files, recipe).
READERS: dict[str, Callable[[Path, Path, dict, Path], list]] = {
    "eval": lambda c, tmp, f, r: ["eval", c, "--data", "synthetic", "--device", "cpu"],
    "predict": lambda c, tmp, f, r: ["predict", c, f["red.png"], "--device", "cpu"],
    "grow": lambda c, tmp, f, r: ["grow", c, "--to", "resnet56", "--out", tmp / "g.st"],
    "export": lambda c, tmp, f, r: ["export", c, "--out", tmp / "m.onnx"],
    "import": lambda c, tmp, f, r: ["import", c, "--model", "resnet20", "--out", tmp / "i.st"],
    "train --weights": lambda c, tmp, f, r: train_argv(r, tmp / "run", "--iters", 1,
                                                       "--weights", c),
}


@pytest.fixture(scope="module")
def recipe(tmp_path_factory: pytest.TempPathFactory) -> Path:
    path = tmp_path_factory.mktemp("recipe") / "tiny.toml"
    save_recipe(path, coerce(RECIPE))
    return path


@pytest.fixture(scope="module")
def reference(tmp_path_factory: pytest.TempPathFactory, recipe: Path) -> Path:
    """One uninterrupted run: every kill/resume test must end with exactly its weights."""
    out = tmp_path_factory.mktemp("reference") / "run"
    assert main(train_argv(recipe, out)) == 0
    return out


@pytest.fixture(scope="module")
def files(tmp_path_factory: pytest.TempPathFactory) -> dict[str, Path]:
    """Good and bad inputs: checkpoints (reslab, torchvision-style .pth, damaged), images."""
    d = tmp_path_factory.mktemp("files")
    good = d / "r20.safetensors"
    save_weights(good, create_model("resnet20", num_classes=10), legacy_record(r20_meta()))
    pth = d / "r18.pth"
    torch.save(create_model("resnet18", num_classes=10).state_dict(), pth)
    # resnet32 tensors under resnet20 metadata: a checkpoint of another architecture
    other = d / "other-arch.safetensors"
    save_weights(other, create_model("resnet32", num_classes=10), legacy_record(r20_meta()))
    blob, zipped = good.read_bytes(), pth.read_bytes()
    noise = np.random.default_rng(0).bytes(4096)
    damaged = {"truncated.safetensors": blob[:len(blob) // 2], "random.safetensors": noise,
               "truncated.pth": zipped[:len(zipped) // 2], "random.pth": noise, "empty.pth": b""}
    for name, data in damaged.items():
        (d / name).write_bytes(data)
    Image.new("RGB", (32, 32), (200, 30, 30)).save(d / "red.png")
    png = io.BytesIO()  # noise: a plain image compresses so well that half cuts only metadata
    Image.effect_noise((64, 64), 50).convert("RGB").save(png, format="PNG")
    (d / "truncated.png").write_bytes(png.getvalue()[:png.tell() // 2])
    (d / "notes.png").write_text("not an image\n")
    (d / "noise.jpg").write_bytes(noise)
    return {p.name: p for p in d.iterdir()}


# --- 1. safe loading: a planted pickle payload never runs ---------------------------------

class Payload:
    """Unpickling this creates `marker`: a stand-in for what a malicious checkpoint runs."""

    def __init__(self, marker: Path) -> None:
        self.marker = marker

    def __reduce__(self) -> tuple:
        return builtins.open, (str(self.marker), "w")


def plant(path: Path, fmt: str, marker: Path) -> Path:
    """A checkpoint-looking file whose unpickling would create marker."""
    obj = {"state_dict": {"fc.weight": torch.zeros(10, 64)}, "args": Payload(marker)}
    if fmt == "zip":  # torch.save's format since 1.6
        torch.save(obj, path)
    elif fmt == "legacy":  # torch.save's pre-1.6 format (a sequence of pickles)
        torch.save(obj, path, _use_new_zipfile_serialization=False)
    else:  # a bare pickle of the payload: "pickle2" or "pickle5" (the protocol)
        path.write_bytes(pickle.dumps(Payload(marker), protocol=int(fmt[-1])))
    return path


PAYLOAD_FORMATS = ("zip", "legacy", "pickle2", "pickle5")
# Each command given the poisoned file, and what its error must say. Commands that unpickle say
# why they refuse (and how to convert a trusted file); the ones that need reslab metadata say
# to import the file first (which then refuses).
REFUSE = r"refusing to load .*unpickling it needs io\.open.*"
NEEDS_IMPORT = r"has no reslab metadata.*reslab import"
POISONED = {"eval": NEEDS_IMPORT, "predict": NEEDS_IMPORT, "grow": NEEDS_IMPORT,
            "export": NEEDS_IMPORT, "import": REFUSE + "convert it once",
            "train --weights": REFUSE + "convert it once",
            "train --resume": r"refusing to load training state .*needs io\.open.*"
                              r"not written by reslab"}
assert set(POISONED) == set(READERS) | {"train --resume"}


def test_the_payload_is_live(tmp_path: Path) -> None:
    """Guards the tests below: loading the planted file the unsafe way does run it."""
    marker = tmp_path / "pwned"
    torch.load(plant(tmp_path / "p.pt", "zip", marker), weights_only=False)
    assert marker.exists()


@pytest.mark.parametrize("fmt", PAYLOAD_FORMATS)
@pytest.mark.parametrize("command", list(POISONED))
def test_a_pickle_payload_never_runs(command: str, fmt: str, tmp_path: Path, files: dict,
                                     recipe: Path, capsys: pytest.CaptureFixture) -> None:
    marker = tmp_path / "pwned"
    if command == "train --resume":  # a poisoned state in an otherwise valid run directory
        run = tmp_path / "run"
        save_recipe(run / "config.toml", coerce(RECIPE))
        (run / "state").mkdir()
        path = plant(run / "state" / "last.pt", fmt, marker)
    else:
        path = plant(tmp_path / ("weights.pt" if fmt == "zip" else "weights.pth"), fmt, marker)
    expected = POISONED[command]
    if fmt == "pickle5" and expected != NEEDS_IMPORT:
        # torch's restricted unpickler stops at protocol 5's framing, before any reference
        expected = rf"{expected}|cannot (read|load training state) .*Unsupported operand"
    argv = (["train", "--resume", "--out", path.parent.parent, "--quiet"]
            if command == "train --resume" else READERS[command](path, tmp_path, files, recipe))
    err = clean_error(capsys, argv)
    assert not marker.exists(), "the pickled payload ran"
    assert re.search(expected, err), err


def test_a_payload_is_refused_by_a_real_process(tmp_path: Path) -> None:
    """The same as a user sees it: one line on stderr, no traceback, no warning, nothing run."""
    marker = tmp_path / "pwned"
    path = plant(tmp_path / "weights.pth", "zip", marker)
    proc = popen("-m", "reslab", "import", str(path), "--model", "resnet20",
                 "--out", str(tmp_path / "i.safetensors"))
    _, err = proc.communicate(timeout=120)
    assert proc.returncode == 2 and not marker.exists()
    assert len(err.splitlines()) == 1 and err.startswith("error: refusing to load"), err


@functools.cache
def _sources() -> list[tuple[str, ast.Module]]:
    """(path relative to the package, syntax tree) of every reslab source file."""
    root = Path(reslab.__file__).parent
    return [(str(f.relative_to(root)), ast.parse(f.read_text()))
            for f in sorted(root.rglob("*.py"))]


def _calls(tree: ast.AST) -> list[tuple[ast.Call, str]]:
    return [(n, ast.unparse(n.func)) for n in ast.walk(tree) if isinstance(n, ast.Call)]


def test_every_unpickling_in_the_sources_is_restricted() -> None:
    """torch.load only with weights_only=True; no bare pickle.load; every custom Unpickler
    restricts find_class; torch.jit/export.load only re-read the file export just wrote."""
    loads = 0
    for file, tree in _sources():
        for node, name in _calls(tree):
            where = f"{file}:{node.lineno}: {name}"
            if name == "torch.load":
                loads += 1
                flag = {k.arg: k.value for k in node.keywords}.get("weights_only")
                assert isinstance(flag, ast.Constant) and flag.value is True, where
            assert not re.fullmatch(r"(c?pickle|_pickle|dill|joblib|marshal)\.loads?", name), \
                f"{where} runs whatever the file says"
            if name in ("torch.jit.load", "torch.export.load"):
                assert file == os.path.join("deploy", "export.py"), where
        for node in ast.walk(tree):
            if isinstance(node, ast.ClassDef) and any("Unpickler" in ast.unparse(b)
                                                      for b in node.bases):
                assert any(isinstance(f, ast.FunctionDef) and f.name == "find_class"
                           for f in node.body), f"{file}: {node.name} must restrict globals"
    assert loads, "the scan found no torch.load: is it still looking at the sources?"


# Writes that are not atomic, on purpose. metrics.jsonl is append-only, one fsynced line per
# row: a kill leaves at most a torn last line, which read_metrics and a resume drop.
APPEND_ONLY = {(os.path.join("engine", "logging.py"), "open")}
# reslab's own savers named like raw writers (they write through atomic_write).
OWN_SAVERS = {"run_state.save"}
WRITE = re.compile(r"(^|\.)(save|savefig|save_file|write_text|write_bytes|dump|to_csv)$")


def _open_mode(node: ast.Call, name: str) -> str:
    """The mode of an open(path, mode) or path.open(mode) call ("r" when not a constant)."""
    if name != "open" and not name.endswith(".open") or name == "os.open":
        return ""
    pos = 1 if name == "open" else 0
    mode = {k.arg: k.value for k in node.keywords}.get(
        "mode", node.args[pos] if len(node.args) > pos else None)
    return str(mode.value) if isinstance(mode, ast.Constant) else "r"


def test_every_file_write_in_the_sources_is_atomic() -> None:
    """Each write call sits inside the function handed to checkpoint.atomic_write (temporary
    file, fsync, rename), or is an allowed append-only log."""
    offenders = []
    for file, tree in _sources():
        atomic = [n for n, name in _calls(tree) if name.endswith("atomic_write")]
        named = {a.id for n in atomic for a in n.args if isinstance(a, ast.Name)}
        spans = [(n.lineno, n.end_lineno) for n in ast.walk(tree)
                 if (isinstance(n, ast.Lambda) and any(n in c.args for c in atomic))
                 or (isinstance(n, ast.FunctionDef) and n.name in named)]
        for node, name in _calls(tree):
            writes = (WRITE.search(name) and name not in OWN_SAVERS) \
                or set(_open_mode(node, name)) & set("wax+")
            inside = any(lo <= node.lineno <= hi for lo, hi in spans)
            if writes and not inside and (file, name) not in APPEND_ONLY:
                offenders.append(f"{file}:{node.lineno}: {name}")
    assert not offenders, ("write these through reslab.io.atomic_write (or add "
                           f"an append-only log to APPEND_ONLY with the reason): {offenders}")


# --- 2. crash safety -------------------------------------------------------------------------

# Runs the CLI, but the K-th write of state/last.pt stops half-way (the temporary file cut to
# half its size) and waits to be killed: a SIGKILL in the middle of a checkpoint write.
HANG_IN_SAVE = """
import os, sys, time
from pathlib import Path
from reslab import io as checkpoint
from reslab.cli import main

real, count = checkpoint.atomic_write, 0

def atomic_write(path, write, what="file"):
    def half_then_hang(tmp):
        global count
        write(tmp)
        count += 1
        if count == int(os.environ["HANG_AT"]):
            os.truncate(tmp, os.path.getsize(tmp) // 2)
            Path(os.environ["HANG_FLAG"]).touch()
            time.sleep(600)
    real(path, half_then_hang if Path(path).name == "last.pt" else write, what)

checkpoint.atomic_write = atomic_write
sys.exit(main(sys.argv[1:]))
"""


@pytest.mark.parametrize("kill_in_save", [2, 5, 9])
def test_sigkill_mid_checkpoint_then_resume_is_bit_identical(
        kill_in_save: int, tmp_path: Path, recipe: Path, reference: Path) -> None:
    """Killed while writing its K-th state (steps 8, 20, 36: within the first epoch, after an
    epoch end, in the last epoch), the run keeps state K-1 and resumes to the same weights."""
    out, flag = tmp_path / "run", tmp_path / "hanging"
    proc = popen("-c", HANG_IN_SAVE, *train_argv(recipe, out),
                 env={"HANG_AT": str(kill_in_save), "HANG_FLAG": str(flag)})
    wait_for(flag, proc)
    proc.send_signal(signal.SIGKILL)
    proc.wait()
    assert list((out / "state").glob(".last.pt.*.tmp")), "not killed mid-write"
    assert load_state(out / "state" / "last.pt")["step"] == (kill_in_save - 1) * SAVE_EVERY
    assert not (out / "model.safetensors").exists()
    assert main(["train", "--resume", "--out", str(out), "--quiet"]) == 0
    assert_same_weights(reference, out)
    steps = [row["step"] for row in read_metrics(out / "metrics.jsonl") if "split" not in row]
    assert steps == sorted(set(steps))  # each logged step once


def test_sigint_saves_exits_cleanly_and_resumes_bit_identically(
        tmp_path: Path, recipe: Path, reference: Path) -> None:
    """Ctrl-C: the state of the current step is saved, one line says how to continue."""
    out = tmp_path / "run"
    proc = popen("-m", "reslab", *train_argv(recipe, out))
    wait_for(out / "state" / "last.pt", proc)
    proc.send_signal(signal.SIGINT)
    _, err = proc.communicate(timeout=120)
    stopped = re.fullmatch(r"stopped by SIGINT at step (\d+); state saved\. Continue with: "
                           r"reslab train --resume --out \S+\n", err)
    assert proc.returncode == 130 and stopped, err
    step = int(stopped.group(1))
    if step == ITERS:  # too late: the run had finished its last step
        pytest.skip("the interrupt arrived after the last step")
    assert load_state(out / "state" / "last.pt")["step"] == step
    assert main(["train", "--resume", "--out", str(out), "--quiet"]) == 0
    assert_same_weights(reference, out)


@pytest.mark.parametrize("save_every,kept", [(1, "the last good state is kept in state/"),
                                             (0, "no state was saved before it")])
def test_a_diverging_loss_stops_with_the_step_and_keeps_the_last_state(
        save_every: int, kept: str, tmp_path: Path, recipe: Path,
        capsys: pytest.CaptureFixture, monkeypatch: pytest.MonkeyPatch) -> None:
    """The loss turns NaN at step 6 (a forced divergence: the recipe bounds keep real learning
    rates far below what reliably diverges in 8 steps)."""
    real, calls = torch.nn.functional.cross_entropy, []

    def diverging(*args: object, **kwargs: object) -> torch.Tensor:
        calls.append(1)
        loss = real(*args, **kwargs)
        return loss * float("nan") if len(calls) >= 6 else loss

    monkeypatch.setattr(torch.nn.functional, "cross_entropy", diverging)
    out = tmp_path / "run"
    err = clean_error(capsys, train_argv(recipe, out, "--iters", 8,
                                         "--save-every", save_every))
    found = re.fullmatch(rf"error: loss is (nan|inf) at step (\d+); {kept} "
                         r"\(hint: lower --lr, or --amp off\)", err)
    assert found, err
    if save_every:  # the state before the diverging step, loadable into the model
        state = load_state(out / "state" / "last.pt")
        assert state["step"] == int(found.group(2)) - 1
        create_model("resnet20", num_classes=10).load_state_dict(state["model"])


# Safe to unpickle but not a state reslab can resume: (name, change to the reference state).
MALFORMED: dict[str, Callable[[dict], object]] = {
    "not a dict": lambda s: [s],
    "missing step": lambda s: {k: v for k, v in s.items() if k != "step"},
    "weights of another net": lambda s: {**s, "model": create_model("resnet32").state_dict()},
    "step not a number": lambda s: {**s, "step": "ten"},
    "rng not tensors": lambda s: {**s, "rng": {**s["rng"], "numpy": "seed"}},
    "rng too short": lambda s: {**s, "rng": {**s["rng"], "python": []}},
}


@pytest.mark.parametrize("case", list(MALFORMED))
def test_a_malformed_state_is_a_clean_error(case: str, tmp_path: Path, reference: Path,
                                            capsys: pytest.CaptureFixture) -> None:
    run = tmp_path / "run"
    (run / "state").mkdir(parents=True)
    shutil.copy(reference / "config.toml", run / "config.toml")
    state = load_state(reference / "state" / "last.pt")
    torch.save(MALFORMED[case](state), run / "state" / "last.pt")
    err = clean_error(capsys, ["train", "--resume", "--out", run, "--quiet"])
    assert err.startswith(f"error: cannot resume from {run / 'state' / 'last.pt'}: "), err


def test_metrics_log_drops_a_torn_last_line(tmp_path: Path) -> None:
    """metrics.jsonl is append-only (fsync per line): a kill mid-line leaves a torn last line,
    which readers skip and a resumed run removes."""
    path = tmp_path / "metrics.jsonl"
    log = MetricsLog(path)
    for step in (1, 2, 3):
        log.log(step=step, epoch=step / 16, loss=2.0)
    with open(path, "a") as f:
        f.write('{"step": 4, "epoch": 0.2')
    assert [row["step"] for row in read_metrics(path)] == [1, 2, 3]
    MetricsLog(path, resume_step=2)
    assert [json.loads(ln)["step"] for ln in path.read_text().splitlines()] == [1, 2]


@pytest.fixture(params=["tmpfs", "simulated"])
def full_disk(request: pytest.FixtureRequest, tmp_path: Path, reference: Path,
              monkeypatch: pytest.MonkeyPatch) -> Iterator[Path]:
    """A folder whose disk fills up at the run's second state save: a real small tmpfs with
    room for one state and a half (skipped where mounting is not permitted), and a simulated
    one where torch.save raises ENOSPC half-way through its second call."""
    disk = tmp_path / "disk"
    disk.mkdir()
    if request.param == "simulated":
        real, calls = torch.save, []

        def save(obj: object, f: io.BufferedWriter, *args: object, **kwargs: object) -> None:
            calls.append(f)
            if len(calls) < 2:
                return real(obj, f, *args, **kwargs)
            f.write(b"\0" * 1000)
            raise OSError(errno.ENOSPC, os.strerror(errno.ENOSPC))

        monkeypatch.setattr(torch, "save", save)
        yield disk
        return
    size = (reference / "state" / "last.pt").stat().st_size * 3 // 2
    mount = subprocess.run(["mount", "-t", "tmpfs", "-o", f"size={size}", "tmpfs", str(disk)],
                           capture_output=True, text=True) if shutil.which("mount") else None
    if mount is None or mount.returncode != 0:
        pytest.skip(f"cannot mount a tmpfs here: {mount and mount.stderr.strip()}")
    try:
        yield disk
    finally:
        subprocess.run(["umount", "-l", str(disk)], check=True)


def test_a_full_disk_keeps_the_previous_checkpoint(full_disk: Path, recipe: Path,
                                                   capsys: pytest.CaptureFixture) -> None:
    out = full_disk / "run"
    err = clean_error(capsys, train_argv(recipe, out))
    target = out / "state" / "last.pt"
    assert err == (f"error: cannot write training state {target}: No space left on device "
                   "(free space or write somewhere else)")
    assert load_state(target)["step"] == SAVE_EVERY  # the first state, intact
    assert not list(target.parent.glob(".*.tmp"))  # the partial file is gone


# --- 3. bad input: exit 2, one error line ------------------------------------------------------

DAMAGED = ("truncated.safetensors", "random.safetensors", "truncated.pth", "random.pth",
           "empty.pth")


@pytest.mark.parametrize("damaged", DAMAGED)
@pytest.mark.parametrize("command", list(READERS))
def test_a_damaged_checkpoint_is_a_clean_error(command: str, damaged: str, tmp_path: Path,
                                               files: dict, recipe: Path,
                                               capsys: pytest.CaptureFixture) -> None:
    path = files[damaged]
    err = clean_error(capsys, READERS[command](path, tmp_path, files, recipe))
    assert str(path) in err  # names the file


# (argv as a function of (tmp dir, files, recipe), what the error says)
BAD_INPUT: dict[str, tuple[Callable[[Path, dict, Path], list], str]] = {
    "unknown model": (lambda t, f, r: train_argv(r, t / "o", "--model", "resnet21"),
                      r"unknown model 'resnet21' \(closest: .*resnet20"),
    "unknown dataset": (lambda t, f, r: train_argv(r, t / "o", "--data", "mnist2"),
                        r"unknown dataset 'mnist2'"),
    "unknown recipe": (lambda t, f, r: ["train", "--recipe", "fastest", "--out", t / "o"],
                       r"unknown recipe 'fastest'"),
    "unknown recipe key": (lambda t, f, r: ["train", "--recipe", _toml(t, "colour = 'red'"),
                                            "--out", t / "o"], r"unknown recipe key 'colour'"),
    "recipe not TOML": (lambda t, f, r: ["train", "--recipe", _toml(t, "lr = = 1"),
                                         "--out", t / "o"], r"invalid TOML in .*x\.toml"),
    "negative lr": (lambda t, f, r: train_argv(r, t / "o", "--lr", "-0.1"),
                    r"invalid lr -0\.1: must be in \(0, 10\]"),
    "zero batch": (lambda t, f, r: train_argv(r, t / "o", "--batch-size", 0),
                   r"invalid batch_size 0: must be between 1 and 65,536"),
    "negative epochs": (lambda t, f, r: train_argv(r, t / "o", "--epochs", "-2"),
                        r"invalid epochs -2\.0: must be in \(0, 100000\]"),
    "infinite lr": (lambda t, f, r: train_argv(r, t / "o", "--lr", "inf"),
                    r"invalid value for lr: 'inf' \(a finite number\)"),
    "imagefolder missing": (lambda t, f, r: train_argv(r, t / "o", "--data",
                                                       f"imagefolder:{t / 'nowhere'}"),
                            r"image folder '.*nowhere' not found"),
    "imagefolder empty": (lambda t, f, r: train_argv(r, t / "o", "--data",
                                                     f"imagefolder:{_dir(t, 'empty')}"),
                          r"has no train/ subfolder"),
    "imagefolder no classes": (lambda t, f, r: train_argv(r, t / "o", "--data",
                                                          f"imagefolder:{_dir(t, 'a/train')}"),
                               r"has no class subfolders"),
    "imagefolder no images": (lambda t, f, r: train_argv(r, t / "o", "--data",
                                                         f"imagefolder:{_dir(t, 'b/train/cat')}"),
                              r"no readable images in"),
    "another architecture": (lambda t, f, r: ["eval", f["other-arch.safetensors"], "--data",
                                              "synthetic", "--device", "cpu"],
                             r"does not match resnet20"),
    "import as another architecture": (lambda t, f, r: ["import", f["r18.pth"], "--model",
                                                        "resnet20", "--out", t / "i.st"],
                                       r"does not match resnet20 \(its keys look like resnet18\)"),
    "weights of another architecture": (lambda t, f, r: train_argv(r, t / "o", "--iters", 1,
                                                                   "--weights", f["r18.pth"]),
                                        r"does not match the model \(its keys look like resnet18"),
    "eval with other channels": (lambda t, f, r: ["eval", f["r20.safetensors"], "--data",
                                                  "digits", "--device", "cpu"],
                                 r"digits has 1-channel images but the model takes 3"),
    "predict a text file": (lambda t, f, r: ["predict", f["r20.safetensors"], f["notes.png"]],
                            r"cannot read image '.*notes\.png'"),
    "predict random bytes": (lambda t, f, r: ["predict", f["r20.safetensors"], f["noise.jpg"]],
                             r"cannot read image '.*noise\.jpg'"),
    "predict a truncated image": (lambda t, f, r: ["predict", f["r20.safetensors"],
                                                   f["truncated.png"]],
                                  r"cannot read image '.*truncated\.png'"),
    "predict a missing image": (lambda t, f, r: ["predict", f["r20.safetensors"], t / "no.png"],
                                r"image '.*no\.png' not found"),
    "summary input too small": (lambda t, f, r: ["summary", "resnet50", "--input", "1x3x8x8"],
                                r"input 1x3x8x8 is too small for resnet50"),
    "trace input too small": (lambda t, f, r: ["trace", "resnet50", "--input", "1x3x8x8"],
                              r"input 1x3x8x8 is too small for resnet50"),
    # resnet50 shrinks 8x8 digits to 1x1 maps: fine in batches, not for one image (torch's text)
    "batch norm sees one value": (lambda t, f, r: train_argv(r, t / "o", "--model", "resnet50",
                                                             "--data", "digits", "--iters", 1,
                                                             "--batch-size", 1),
                                  r"more than 1 value per channel"),
    "grow across families": (lambda t, f, r: ["grow", f["r20.safetensors"], "--to", "resnet18",
                                              "--out", t / "g.st"], r"different families"),
    "grow shallower": (lambda t, f, r: ["grow", f["r20.safetensors"], "--to", "resnet20",
                                        "--out", t / "g.st"], r"the target must be deeper"),
    "grow residual into plain": (lambda t, f, r: ["grow", f["r20.safetensors"], "--to",
                                                  "plain56", "--out", t / "g.st"],
                                 r"a residual net grows only into a residual net"),
    "grow into an unknown model": (lambda t, f, r: ["grow", f["r20.safetensors"], "--to",
                                                    "resnet57", "--out", t / "g.st"],
                                   r"unknown model 'resnet57'"),
    "unknown export format": (lambda t, f, r: ["export", f["r20.safetensors"], "--format",
                                               "tflite", "--out", t / "m"],
                              r"invalid choice: 'tflite'"),
}


def _toml(tmp: Path, text: str) -> Path:
    path = tmp / "x.toml"
    path.write_text(text + "\n")
    return path


def _dir(tmp: Path, rel: str) -> Path:
    """Creates tmp/rel; returns its top folder (the image folder root)."""
    (tmp / rel).mkdir(parents=True, exist_ok=True)
    return tmp / Path(rel).parts[0]


@pytest.mark.parametrize("case", list(BAD_INPUT))
def test_bad_input_is_a_clean_error(case: str, tmp_path: Path, files: dict, recipe: Path,
                                    capsys: pytest.CaptureFixture) -> None:
    make_argv, expected = BAD_INPUT[case]
    err = clean_error(capsys, make_argv(tmp_path, files, recipe))
    assert re.search(expected, err), err


@pytest.mark.parametrize("dataset,says", [("fashion-mnist", "Fashion-MNIST not found"),
                                          ("cifar10", "CIFAR-10 not found")])
def test_an_empty_data_dir_without_a_system_copy_is_a_clean_error(
        dataset: str, says: str, tmp_path: Path, recipe: Path, monkeypatch: pytest.MonkeyPatch,
        capsys: pytest.CaptureFixture) -> None:
    """No files in --data-dir, no Debian copy, no network: says where it looked."""
    def offline(*args: object) -> None:
        raise OSError("network is unreachable")

    monkeypatch.setattr(datasets, "SYSTEM_FASHION_DIR", tmp_path / "absent")
    monkeypatch.setattr(datasets, "_download", offline)
    empty = tmp_path / "data"
    empty.mkdir()
    err = clean_error(capsys, train_argv(recipe, tmp_path / "o", "--data", dataset,
                                         "--data-dir", empty))
    assert says in err and str(empty) in err and "network is unreachable" in err


# --- property-based: only UserError comes out ------------------------------------------------

FIELDS = [f.name for f in dataclasses.fields(Recipe)]
# No subnormal floats: the session flushes denormals (conftest), so they cannot be represented.
FLOATS = st.floats(allow_subnormal=False)
VALUES = st.one_of(st.none(), st.booleans(), st.integers(), FLOATS, st.text(max_size=12),
                   st.sampled_from(["inf", "-inf", "nan", "1e999", "none", "-1", "0", "1.5",
                                    "true", "3x3", "cosine", "1,2,x"]),
                   st.lists(st.one_of(st.integers(), st.text(max_size=4)), max_size=3))


@FUZZ
@given(st.dictionaries(st.one_of(st.sampled_from(FIELDS), st.text(max_size=10)), VALUES,
                       max_size=5))
def test_coerce_raises_only_user_errors(values: dict) -> None:
    try:
        recipe = coerce(values)
    except UserError:
        return
    assert recipe.lr > 0 and recipe.batch_size > 0 and recipe.epochs > 0


TOML_VALUES = st.recursive(
    st.one_of(st.booleans(), st.integers(-2**63, 2**63 - 1), FLOATS, st.text(max_size=8)),
    lambda inner: st.lists(inner, max_size=3) | st.dictionaries(st.text(max_size=5), inner,
                                                                max_size=3), max_leaves=6)


@FUZZ
@given(st.one_of(
    st.dictionaries(st.one_of(st.sampled_from(FIELDS), st.text(max_size=8)), TOML_VALUES,
                    max_size=5).map(lambda d: tomli_w.dumps(d).encode()),
    st.text(max_size=80).map(str.encode), st.binary(max_size=80)))
def test_load_recipe_raises_only_user_errors(tmp_path_factory: pytest.TempPathFactory,
                                             text: bytes) -> None:
    path = tmp_path_factory.getbasetemp() / "fuzz.toml"
    path.write_bytes(text)
    try:
        load_recipe(str(path))
    except UserError:
        pass


NUMBERS = st.one_of(st.text(max_size=10), FLOATS.map(str), st.integers().map(str),
                    st.from_regex(r"-?[0-9]{0,3}\.?[0-9]{0,3}(e-?[0-9]{1,4})?", fullmatch=True),
                    st.sampled_from(["inf", "nan", "-0", "1_000", " 3 ", "0x10", "1e999"]))


@FUZZ
@given(st.sampled_from(["--lr", "--batch-size", "--epochs", "--iters"]), NUMBERS)
def test_train_value_parsing_raises_only_user_errors(flag: str, value: str) -> None:
    """Parsing and resolving `reslab train` flags (nothing trains)."""
    try:
        args = build_parser().parse_args(["train", "--model", "resnet20", "--data", "synthetic",
                                          f"{flag}={value}"])
        recipe = train_cli.resolve(args)
    except UserError:
        return
    value = getattr(recipe, flag[2:].replace("-", "_"))
    assert value is None or value > 0  # `none` is the field's default for --iters


def _seeds() -> list[bytes]:
    """Small valid files to damage: reslab safetensors, torch zip and legacy pickles."""
    tensors = {"fc.weight": torch.zeros(2, 4), "fc.bias": torch.zeros(2)}
    meta = {"format": "reslab-1", "architecture": '"resnet20"', "kwargs": '{"num_classes": 2}'}
    out = [safetensors_bytes(tensors, metadata=meta)]
    for zipped in (True, False):
        buf = io.BytesIO()
        torch.save({"state_dict": tensors, "epoch": 3}, buf,
                   _use_new_zipfile_serialization=zipped)
        out.append(buf.getvalue())
    return out


SEEDS = _seeds()
# Small integers only: a metadata num_classes of millions would build a huge (valid) model.
JSON = st.recursive(st.one_of(st.none(), st.booleans(), st.integers(-9, 999), st.text(max_size=6)),
                    lambda inner: st.lists(inner, max_size=3)
                    | st.dictionaries(st.text(max_size=6), inner, max_size=3), max_leaves=8)


@st.composite
def checkpoint_bytes(draw: st.DrawFn) -> bytes:
    """Random bytes; a valid small checkpoint truncated or with bytes overwritten; or a
    safetensors frame around a random JSON header (tensor entries, reslab metadata)."""
    kind = draw(st.sampled_from(["random", "truncated", "mutated", "header"]))
    if kind == "random":
        return draw(st.binary(max_size=256))
    seed = draw(st.sampled_from(SEEDS))
    if kind == "truncated":
        return seed[:draw(st.integers(0, len(seed) - 1))]
    if kind == "mutated":
        data = bytearray(seed)
        for _ in range(draw(st.integers(1, 6))):
            data[draw(st.integers(0, len(data) - 1))] = draw(st.integers(0, 255))
        return bytes(data)
    entry = st.fixed_dictionaries({
        "dtype": st.sampled_from(["F32", "F16", "I64", "BOOL", "U8", "XYZ"]),
        "shape": st.lists(st.integers(-1, 4), max_size=3),
        "data_offsets": st.lists(st.integers(-1, 64), min_size=2, max_size=2)})
    header = draw(st.dictionaries(st.sampled_from(["fc.weight", "conv1.weight", "x"]), entry,
                                  max_size=2))
    metadata = draw(st.dictionaries(st.sampled_from(["architecture", "kwargs", "format", "mean"]),
                                    JSON.map(json.dumps), max_size=3))
    if metadata:
        header["__metadata__"] = metadata
    raw = json.dumps(header).encode()
    return struct.pack("<Q", len(raw)) + raw + draw(st.binary(max_size=64))


LOADERS = {"load_checkpoint": load_checkpoint,
           "open_weights": open_weights, "load_state": load_state}


@pytest.mark.parametrize("loader", list(LOADERS))
def test_checkpoint_loaders_raise_only_user_errors(loader: str,
                                                   tmp_path_factory: pytest.TempPathFactory
                                                   ) -> None:
    folder = tmp_path_factory.mktemp(f"fuzz-{loader}")

    @FUZZ
    @given(checkpoint_bytes(), st.sampled_from([".safetensors", ".pth", ".pt"]))
    def check(data: bytes, suffix: str) -> None:
        path = folder / f"ckpt{suffix}"
        path.write_bytes(data)
        try:
            LOADERS[loader](path)
        except UserError:
            pass

    check()

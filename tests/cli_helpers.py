"""Running the command line in the test process, and the exit-2 contract."""
from __future__ import annotations

import hashlib
import shutil
import warnings
from pathlib import Path

import pytest

from reslab.cli import main
from reslab.weights.record import Record


def run_cli(capsys: pytest.CaptureFixture, argv: list) -> tuple[int, list[str]]:
    """main(argv) in this process: (exit code, stderr lines). Warnings count as stderr lines,
    where a real process prints them (library deprecation notes aside, hidden there too)."""
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        for quiet in (DeprecationWarning, PendingDeprecationWarning, ResourceWarning):
            warnings.simplefilter("ignore", quiet)
        rc = main([str(a) for a in argv])
    err = capsys.readouterr().err.splitlines()
    return rc, [f"warning: {w.message}" for w in caught] + err


def clean_error(capsys: pytest.CaptureFixture, argv: list) -> str:
    """Runs argv, asserts exit 2 with exactly one `error:` line on stderr; returns that line."""
    rc, err = run_cli(capsys, argv)
    assert rc == 2 and len(err) == 1 and err[0].startswith("error: "), (rc, err)
    return err[0]


def resumable_copy(run: Path, dst: Path) -> Path:
    """dst: a copy of the finished run as it was before its final weights (what a run killed
    then leaves), for resumes: a finished run is not resumed."""
    shutil.copytree(run, dst)
    (dst / "model.safetensors").unlink()
    return dst


def tree_digest(root: Path) -> dict[str, str]:
    """{relative path: sha256} of every file under root: "no good file changed" in one ==."""
    return {str(p.relative_to(root)): hashlib.sha256(p.read_bytes()).hexdigest()
            for p in sorted(root.rglob("*")) if p.is_file()}


def legacy_record(meta: dict) -> Record:
    """A Record from the flat metadata of reslab's first format (architecture, kwargs,
    class_names, mean, std, input_size; per-channel normalisation)."""
    pre = {k: meta[k] for k in ("input_size", "mean", "std", "crop_fraction", "tta_flip")
           if k in meta}
    return Record.from_json({"architecture": meta["architecture"], "kwargs": meta["kwargs"],
                             "class_names": meta["class_names"], "preprocess": pre})

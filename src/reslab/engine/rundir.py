"""The run directory has one owner: a new run does not silently mix with an old one, and two
processes never write the same run.

- `claim(out, mode)`: "new" refuses a directory that already holds a run's files, "resume" needs
  the saved state, "overwrite" removes the old run's files (only those: a user's other files in
  the directory stay) and starts afresh.
- `RunLock`: an exclusive `flock` on OUT/.reslab.lock, holding the owner's pid. The kernel drops
  the lock when its process dies, however it dies, so a stale lock file from a killed run is
  simply taken over; a live holder is named in the error.
"""
from __future__ import annotations

import fcntl
import os
import shutil
from collections.abc import Iterable
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING

from ..errors import UserError
from ..io import ensure_dir, path_error
from ..rundir_names import RunFiles

if TYPE_CHECKING:
    from .recipe import Recipe

MODES = ("new", "resume", "overwrite")


@dataclass(frozen=True)
class RunDir(RunFiles):
    """A run directory as the engine sees it: its files' names (RunFiles) and its stored
    recipe."""

    def stored_recipe(self) -> Recipe:
        """The config.toml of the run here (UserError when missing or malformed)."""
        from .recipe import coerce, read_toml

        return coerce(read_toml(self.config))


def resumed_recipe(run: RunDir, r: Recipe | None) -> Recipe:
    """The recipe a resume of `run` continues with: its stored config.toml, with r's machinery
    (recipe.RUNS_ON: where and how fast it runs) when r is given. A field r.given sets to
    another value is refused (check_resume): the run's state belongs to the stored recipe."""
    from .recipe import RUNS_ON

    stored = run.stored_recipe()
    if r is None:
        return stored
    check_resume(r.given, stored, r)
    return stored.replace(**{n: getattr(r, n) for n in RUNS_ON})


def check_resume(given: Iterable[str], stored: Recipe | None = None, r: Recipe | None = None,
                 *, recipe_named: bool = False) -> None:
    """The resume rule, for the library (fit(resume=True)) and `reslab train --resume` alike: a
    resumed run continues with its stored config.toml, so of the recipe fields given only its
    machinery may be set; another that would change the stored recipe is refused, naming the
    flags (recipe.changed_fields; without stored and r every one given counts, as the command
    line refuses a recipe flag before any run is read). recipe_named: --recipe was given,
    another recipe in any case."""
    from .recipe import changed_fields

    changed = (["recipe"] if recipe_named else []) + changed_fields(given, stored, r)
    if changed:
        flags = ", ".join("--" + n.replace("_", "-") for n in changed)
        raise UserError(f"--resume continues the run with its stored "
                        f"{RunDir(Path()).config.name}; {flags} cannot change it (start a new "
                        "run with --overwrite or another --out)")


def claim(out: Path, mode: str) -> None:
    """Checks (and for "overwrite" clears) out for a run started in `mode`; call it while
    holding the RunLock."""
    if mode not in MODES:
        raise ValueError(f"mode must be one of {MODES}, got {mode!r}")
    run = RunDir(out)
    found = run.present()
    if mode == "resume":
        if run.finished():  # a resume would only write its final files and rows again
            raise UserError(f"the run in {out} has finished ({run.weights.name}); nothing to "
                            "resume")
        if not run.has_state():
            raise UserError(f"nothing to resume in {out}: no state/last.pt (start the run "
                            "without --resume)")
        return
    if found and mode == "new":
        raise UserError(f"{out} already holds a run ({', '.join(found[:4])}"
                        f"{', ...' if len(found) > 4 else ''}); continue it with --resume, "
                        "start afresh with --overwrite (deletes those files), or choose "
                        "another --out")
    for name in found:  # overwrite
        path = out / name
        try:
            if path.is_dir() and not path.is_symlink():
                shutil.rmtree(path)
            else:
                path.unlink()
        except OSError as e:
            raise path_error(e, path, "remove the old run's") or e from None


class RunLock:
    """`with RunLock(out):` holds out's lock (see the module docstring)."""

    def __init__(self, out: Path) -> None:
        self.out, self.path, self.fd = out, RunDir(out).lock, -1
        self.created = False

    def __enter__(self) -> RunLock:
        self.created = not self.out.exists()
        ensure_dir(self.out, "run directory")
        while True:
            try:
                fd = os.open(self.path, os.O_RDWR | os.O_CREAT | os.O_NOFOLLOW, 0o644)
            except OSError as e:
                raise path_error(e, self.path, "lock the run directory with") or e from None
            try:
                fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
            except BlockingIOError:
                holder = os.pread(fd, 32, 0).decode(errors="replace").strip() or "?"
                os.close(fd)
                raise UserError(f"run directory {self.out} is in use by process {holder} "
                                "(another reslab run writes there); wait for it to finish or "
                                "choose another --out") from None
            try:  # the holder may have removed the file between our open and our lock
                same = os.fstat(fd).st_ino == os.stat(self.path).st_ino
            except FileNotFoundError:
                same = False
            if same:
                break
            os.close(fd)
        os.ftruncate(fd, 0)
        os.pwrite(fd, f"{os.getpid()}\n".encode(), 0)
        self.fd = fd
        return self

    def __exit__(self, *exc: object) -> None:
        if self.fd >= 0:
            try:
                self.path.unlink()
            except OSError:
                pass
            os.close(self.fd)
            self.fd = -1
        if self.created:  # a run that failed before writing anything leaves no directory
            try:
                self.out.rmdir()
            except OSError:
                pass  # not empty: the run's files stay

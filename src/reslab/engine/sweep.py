"""Sweeps run by the engine: the members of a sweep (reslab degradation, reslab paper) trained
into their run directories, here or each in its own `reslab train` process, and the one decision
of how a member starts in its directory: new, skipped when finished, resumed when interrupted,
afresh when it died before its first state; never over another recipe's run. The analyses read
the runs; this module runs them.
"""
from __future__ import annotations

import signal
import subprocess
import sys
import tempfile
import threading
from collections.abc import Callable, Sequence
from concurrent.futures import ThreadPoolExecutor
from dataclasses import fields
from pathlib import Path
from typing import Literal

from ..errors import UserError
from ..models import get_arch
from ..text import plural
from .recipe import Recipe, changed_fields, save_recipe
from .rundir import RunDir


def config_diff(r: Recipe, run_dir: Path, ignore: Sequence[str] = ()) -> list[str]:
    """The recipe fields where run_dir/config.toml differs from r (machinery and `ignore`
    ignored)."""
    run = RunDir(run_dir)
    try:
        stored = run.stored_recipe()
    except UserError as e:
        return [f"unreadable {run.config.name} ({e})"]
    stored, r = _resolved(stored), _resolved(r)
    names = [f.name for f in fields(Recipe) if f.name not in ignore]
    return [f"{n} {getattr(stored, n)!r} != {getattr(r, n)!r}"
            for n in changed_fields(names, stored, r)]


def _resolved(r: Recipe) -> Recipe:
    """Fields whose default means the same as a value: val_split None is 0 (no hold-out) for
    every dataset but image folders without val/ (configs written before None existed say 0)."""
    if r.val_split is None and not r.data.startswith("imagefolder:"):
        return r.replace(val_split=0)
    return r


def check_reusable(r: Recipe, run_dir: Path, ignore: Sequence[str] = ()) -> bool:
    """Whether run_dir holds a run of r; UserError when it holds one of another config (a run
    directory is never overwritten). ignore: fields that may differ (reslab paper's initial
    weights, whose path moves with DIR while the run directory's name fixes them)."""
    if not RunDir(run_dir).started():
        return False
    diff = config_diff(r, run_dir, ignore)
    if diff:
        raise UserError(f"{run_dir} holds a run with another config ({'; '.join(diff)}); "
                        "use another --out or remove it")
    return True


# What a member's run directory asks for: "new" (nothing there), "skip" (finished), "resume"
# (interrupted with a saved state) or "afresh" (this recipe's run, dead before its first state:
# its files are replaced).
Start = Literal["new", "skip", "resume", "afresh"]


def member_start(r: Recipe, run_dir: Path, ignore: Sequence[str] = ()) -> Start:
    """How the member r starts in run_dir; UserError when run_dir holds another recipe's run
    (check_reusable)."""
    run = RunDir(run_dir)
    if not check_reusable(r, run_dir, ignore):
        return "new"
    if run.finished():
        return "skip"
    return "resume" if run.has_state() else "afresh"


def _silent(_msg: str) -> None:
    pass


def train_or_reuse(r: Recipe, run_dir: Path, *, quiet: bool = False,
                   say: Callable[[str], None] = _silent, ignore: Sequence[str] = ()) -> str:
    """Trains r into run_dir, in this process, unless it is finished there: "skipped",
    "resumed" or "trained".

    A directory holding this recipe's run that died before its first saved state is started
    afresh (its files are replaced); one holding another recipe's run is refused."""
    from .loop import fit

    start = member_start(r, run_dir, ignore)
    if start == "skip":
        say(f"{r.model}: finished in {run_dir}, skipped")
        return "skipped"
    if start == "resume":
        say(f"{r.model}: resuming the interrupted run in {run_dir}")
        fit(r, run_dir, resume=True, quiet=quiet)
    else:
        say(f"{r.model}: training into {run_dir}")
        fit(r, run_dir, overwrite=start == "afresh", quiet=quiet)
    return "resumed" if start == "resume" else "trained"


def train_in_subprocess(r: Recipe, run_dir: Path, tmp: Path, say: Callable[[str], None],
                        members: Members, name: str | None = None,
                        ignore: Sequence[str] = ()) -> tuple[int, str]:
    """Trains r into run_dir in its own `reslab train` process (started by `members`, which
    can stop it) unless it is finished there: (exit code, last stderr line). A finished run is
    skipped, an interrupted one resumed, one dead before its first state started afresh; tmp
    holds the recipe file it is given."""
    name = name or r.model
    threads = plural(r.threads, "thread")
    start = member_start(r, run_dir, ignore)
    if start == "skip":
        say(f"{name}: finished in {run_dir}, skipped")
        return 0, ""
    if start == "resume":
        say(f"{name}: resuming the interrupted run in {run_dir} ({threads})")
        argv = ["--resume"]
    else:
        say(f"{name}: training into {run_dir} ({threads})")
        save_recipe(tmp / f"{name}.toml", r)
        argv = ["--recipe", str(tmp / f"{name}.toml")]
        if start == "afresh":
            argv.append("--overwrite")  # this recipe's run, dead before its first state
    with members.start([sys.executable, "-m", "reslab", "train", *argv, "--out",
                        str(run_dir), "--quiet"]) as proc:
        _, err = proc.communicate()
    lines = [ln for ln in err.splitlines() if ln.strip()]
    return proc.returncode, lines[-1] if lines else ""


def raise_for_exit(name: str, rc: int, line: str) -> None:
    """A member process's exit as the sweep's: Interrupted for Ctrl-C/SIGTERM (its state is
    saved), UserError with its error line for a failure."""
    if rc in (130, 143):
        from .state import Interrupted

        raise Interrupted("SIGINT" if rc == 130 else "SIGTERM", 0)
    if rc != 0:
        raise UserError(f"{name}: {line.removeprefix('error: ') or f'exit {rc}'}")


def train_in_parallel(recipes: dict[str, Recipe], out: Path, jobs: int,
                      say: Callable[[str], None]) -> None:
    """Trains the members `jobs` at a time, each in its own `reslab train` process with
    CPUs // jobs threads (small nets on a CPU use the cores better as separate processes than
    as threads of one: the paper-size convolutions are too small to split well), deepest first
    so the longest runs start at once. Finished members are skipped and interrupted ones
    resumed, exactly as in a sequential sweep; a member that fails stops the sweep with its
    error; a SIGINT or SIGTERM to the sweep is passed to every member, which saves its state,
    and the sweep exits when they have."""
    from ..data.loaders import available_cpus

    threads = max(1, available_cpus() // jobs)

    def one(model: str, tmp: Path) -> tuple[str, int, str]:
        r = recipes[model].replace(threads=threads)
        return (model, *train_in_subprocess(r, out / model, tmp, say, members, model))

    order = sorted(recipes, key=lambda name: -get_arch(recipes[name].model).depth)
    members = Members()
    with tempfile.TemporaryDirectory() as tmp, ThreadPoolExecutor(jobs) as pool:
        try:
            results = list(pool.map(lambda m: one(m, Path(tmp)), order))
        except BaseException as e:  # SIGTERM/SIGINT (or an error) here: stop every member
            members.stop(signal.SIGINT if isinstance(e, KeyboardInterrupt) else signal.SIGTERM)
            raise
    for model, rc, line in results:
        raise_for_exit(model, rc, line)


class Members:
    """The member trainings of a parallel sweep. Each runs in its own session, so a signal
    reaches it once, from `stop` when the sweep is stopped (a Ctrl-C in the terminal would
    otherwise reach it too, and a second signal makes a training stop without saving)."""

    def __init__(self) -> None:
        self.procs: list[subprocess.Popen] = []
        self.stopping = False
        self.lock = threading.Lock()

    def start(self, argv: list[str]) -> subprocess.Popen:
        with self.lock:
            if self.stopping:
                raise UserError("the sweep is stopping")
            proc = subprocess.Popen(argv, stderr=subprocess.PIPE, text=True,
                                    start_new_session=True)
            self.procs.append(proc)
            return proc

    def stop(self, sig: int) -> None:
        """Sends sig to every running member (each saves its state) and waits for them."""
        with self.lock:
            self.stopping = True
            procs = list(self.procs)
        for proc in procs:
            if proc.poll() is None:
                proc.send_signal(sig)
        for proc in procs:
            try:
                proc.wait(timeout=120)
            except subprocess.TimeoutExpired:
                proc.kill()
                proc.wait()

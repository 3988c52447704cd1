"""Runs a plan's members: training runs (in parallel with jobs > 1) and the analyses that read
them, each as soon as what it needs is done, with progress (members done / total, ETA).

Incremental: a training member is a run directory named by its recipe's digest, skipped when
finished and resumed when interrupted (as `reslab degradation` does); an analysis member is
DIR/members/<name>.json with a key made of the digests of the files it reads, redone only when
one of them changed. So a second call redoes nothing, and a changed budget or dataset trains
only the members whose recipe changed.
"""
from __future__ import annotations

import dataclasses
import fnmatch
import hashlib
import json
import signal
import tempfile
import time
from collections.abc import Callable
from concurrent.futures import FIRST_COMPLETED, Future, ThreadPoolExecutor, wait
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from ...engine.rundir import RunDir
from ...engine.sweep import (Members, check_reusable, raise_for_exit, train_in_subprocess,
                             train_or_reuse)
from ...errors import UserError
from ...io import atomic_write_text
from . import measure
from .budgets import PaperDir, Plan, TrainMember, weights_for

ANALYSIS_VERSION = 1  # bump when an analysis changes what it writes: every one is redone


@dataclass
class Step:
    """An analysis member: runs in this process once `needs` are done."""

    name: str
    needs: tuple[str, ...]
    run: Callable[[], dict[str, Any]]
    inputs: Callable[[], list[Path]] = lambda: []   # files whose digests make its key


@dataclass
class Progress:
    total: int
    say: Callable[[str], None]
    started: float = field(default_factory=time.perf_counter)
    done: int = 0
    work_total: float = 0.0
    work_done: float = 0.0          # cost of the members trained in this call
    work_skipped: float = 0.0       # cost of the members found finished

    def finished(self, name: str, status: str, cost: float = 0.0) -> None:
        self.done += 1
        if status == "skipped":
            self.work_skipped += cost
        else:
            self.work_done += cost
        left = self.work_total - self.work_done - self.work_skipped
        elapsed = time.perf_counter() - self.started
        eta = ""
        if self.work_done > 0 and left > 0:
            eta = f", ETA {_duration(elapsed / self.work_done * left)}"
        share = 100 * (self.work_done + self.work_skipped) / max(self.work_total, 1e-9)
        self.say(f"[{self.done}/{self.total}] {name}: {status} ({share:.0f}% of the training "
                 f"work done, {_duration(elapsed)} elapsed{eta})")


def _duration(s: float) -> str:
    return f"{s:.0f} s" if s < 120 else f"{s / 60:.0f} min" if s < 7200 else f"{s / 3600:.1f} h"


def _digest(path: Path) -> str:
    h = hashlib.sha1()
    with open(path, "rb") as f:
        for chunk in iter(lambda: f.read(1 << 20), b""):
            h.update(chunk)
    return h.hexdigest()


def member_file(out: Path, name: str) -> Path:
    return PaperDir(out).member(name)


def read_member(out: Path, name: str) -> dict[str, Any] | None:
    """An analysis member's result, None when it was not run (or is unreadable)."""
    try:
        obj = json.loads(member_file(out, name).read_text())
    except (OSError, ValueError):
        return None
    return obj.get("result") if isinstance(obj, dict) else None


def _key(step: Step) -> str:
    members = PaperDir(Path()).members.name
    files = {path.name if path.parent.name == members else f"{path.parent.name}/{path.name}":
             _digest(path) for path in step.inputs()}
    blob = json.dumps({"step": step.name, "version": ANALYSIS_VERSION, "files": files},
                      sort_keys=True)
    return hashlib.sha1(blob.encode()).hexdigest()


def step_done(out: Path, step: Step) -> bool:
    """Whether the analysis' result in DIR is of the files it reads now."""
    try:
        return json.loads(member_file(out, step.name).read_text()).get("key") == _key(step)
    except (OSError, ValueError, AttributeError):
        return False


def _run_step(out: Path, step: Step) -> str:
    if step_done(out, step):
        return "skipped"
    result = step.run()
    atomic_write_text(member_file(out, step.name),
                      json.dumps({"key": _key(step), "result": result}, indent=1) + "\n")
    return "done"


# A run's initial weights are a file under DIR (or DIR's runs): its path moves with DIR, while
# the run directory's name (the digest of the rest of the recipe) already fixes which it is.
MOVES_WITH_DIR = ("weights",)


def _trained(m: TrainMember, out: Path) -> bool:
    return check_reusable(m.recipe, m.run_dir(out), MOVES_WITH_DIR) and \
        RunDir(m.run_dir(out)).finished()


def steps(plan: Plan, out: Path, members: list[TrainMember]) -> list[Step]:
    """The analyses of the plan whose training members are all in `members`."""
    have = {m.name for m in members}

    def runs(role: str) -> list[TrainMember]:
        return [m for m in members if m.role == role]

    def metrics(ms: list[TrainMember]) -> Callable[[], list[Path]]:
        return lambda: [RunDir(m.run_dir(out)).metrics for m in ms]

    sweep = runs("sweep")
    out_steps = [Step("tables", (), measure.tables), Step("trace", (), measure.trace_compare)]
    if sweep:
        out_steps.append(Step("degradation", tuple(m.name for m in sweep),
                              lambda: measure.degradation(plan, out), metrics(sweep)))
    shown = sweep + runs("warmup")[:1]
    if sweep and not plan.imagenet:
        out_steps.append(Step("responses", tuple(m.name for m in shown),
                              lambda: measure.responses(plan, out), metrics(shown)))
    grown, continued = runs("grown"), runs("continued")
    source = plan.member(f"resnet{plan.budget.grow[0]}-s{plan.budget.seeds[0]}")
    if not plan.imagenet and source is not None and source.name in have:
        out_steps.append(Step("grow", (source.name,), lambda: measure.grow_step(plan, out),
                              metrics([source])))
        if grown and continued:
            deep = plan.member(f"resnet{plan.budget.grow[1]}-s{plan.budget.seeds[0]}")
            used = [source, *grown, *continued] + ([deep] if deep and deep.name in have else [])
            out_steps.append(Step("identity", ("grow", *(m.name for m in used)),
                                  lambda: measure.identity(plan, out), metrics(used)))
    shortcut = runs("shortcut")
    if shortcut:
        a = [m for m in sweep if m.recipe.model == shortcut[0].recipe.model]
        out_steps.append(Step("shortcuts", tuple(m.name for m in shortcut + a),
                              lambda: measure.shortcuts(plan, out), metrics(shortcut + a)))
    if runs("warmup"):
        out_steps.append(Step("warmup", tuple(m.name for m in runs("warmup")),
                              lambda: measure.warmup(plan, out), metrics(runs("warmup"))))
    if members:
        out_steps.append(Step("convergence", tuple(m.name for m in members),
                              lambda: measure.convergence(plan, out), metrics(members)))
    return out_steps


def select(plan: Plan, only: list[str] | None) -> list[TrainMember]:
    """The plan's training members, or those matching one of the `only` patterns (globs)."""
    if not only:
        return list(plan.members)
    chosen = [m for m in plan.members if any(fnmatch.fnmatch(m.name, pat) for pat in only)]
    if not chosen:
        raise UserError(f"--only {' '.join(only)} matches no member of the plan (members: "
                        f"{', '.join(m.name for m in plan.members)})")
    return chosen


def threads_per_member(jobs: int) -> int:
    """The CPU threads of each of `jobs` member processes: the CPUs this process may use, split
    evenly. On a GPU too: each member's Python loop, batching and augmentation run on its CPUs,
    so members sharing one GPU still need a core each. More members than CPUs is refused: they
    would share cores and stall each other's multi-threaded ops (reslab.threads)."""
    from ...data.loaders import available_cpus

    cpus = available_cpus()
    if jobs > cpus:
        raise UserError(f"--jobs {jobs} is more than the {cpus} CPUs this process may use: "
                        f"each member needs one at least (give --jobs {cpus} or fewer)")
    return cpus // jobs


def run_members(plan: Plan, out: Path, *, jobs: int = 1, only: list[str] | None = None,
                say: Callable[[str], None] = lambda _m: None) -> None:
    """Trains and analyses every member not finished yet; see the module docstring."""
    threads = threads_per_member(jobs) if jobs > 1 else 0
    members = [weights_for(m, out, plan) for m in select(plan, only)]
    for m in members:  # refuse before training anything, not halfway through
        check_reusable(m.recipe, m.run_dir(out), MOVES_WITH_DIR)
    plan = dataclasses.replace(plan, members=tuple(members))  # the analyses read these runs only
    all_steps = steps(plan, out, members)
    known = {m.name for m in members} | {s.name for s in all_steps}
    for m in members:
        missing = [n for n in m.needs if n not in known]
        if missing:
            raise UserError(f"{m.name} needs {', '.join(missing)}, which --only leaves out")
    if plan.schedule_note:  # said once the plan is accepted (bad input is one error line)
        say(plan.schedule_note)
    progress = Progress(len(members) + len(all_steps), say)
    progress.work_total = sum(m.cost for m in members)
    done: set[str] = set()
    pending = sorted(members, key=lambda m: -m.cost)   # longest first: they set the end
    waiting = list(all_steps)
    running: dict[Future, TrainMember] = {}
    processes = Members()   # the member processes, each in its own session (stopped by us)

    def run_ready_steps() -> None:
        for step in [s for s in waiting if set(s.needs) <= done]:
            waiting.remove(step)
            t0 = time.perf_counter()
            status = _run_step(out, step)
            done.add(step.name)
            progress.finished(step.name, status if status == "skipped"
                              else f"measured in {time.perf_counter() - t0:.1f} s")

    with tempfile.TemporaryDirectory() as tmp, ThreadPoolExecutor(max(1, jobs)) as pool:
        try:
            while pending or running or waiting:
                if jobs == 1:
                    run_ready_steps()
                ready = [m for m in pending if set(m.needs) <= done]
                if jobs == 1 and ready:
                    m = ready[0]
                    pending.remove(m)
                    finished = _trained(m, out)
                    if not finished:
                        train_or_reuse(m.recipe, m.run_dir(out), quiet=True, say=say,
                                       ignore=MOVES_WITH_DIR)
                    done.add(m.name)
                    progress.finished(m.name, "skipped" if finished else "trained", m.cost)
                    continue
                for m in ready[:max(0, jobs - len(running))]:
                    pending.remove(m)
                    if _trained(m, out):
                        done.add(m.name)
                        progress.finished(m.name, "skipped", m.cost)
                        continue
                    # every member on the plan's device (cuda: GPU 0 in each process, all on
                    # one GPU), with its share of the CPUs
                    r = m.recipe.replace(threads=threads)
                    running[pool.submit(train_in_subprocess, r, m.run_dir(out), Path(tmp),
                                        say, processes, m.name, MOVES_WITH_DIR)] = m
                if jobs > 1:  # with the pool full: the analyses run while members train
                    ran = len(waiting)
                    run_ready_steps()
                    if len(waiting) < ran:
                        continue  # a step may have made members ready (grow)
                if not running:
                    if waiting and not pending:
                        blocked = ", ".join(s.name for s in waiting)
                        raise UserError(f"members {blocked} need runs that are not in the plan")
                    if pending and not [m for m in pending if set(m.needs) <= done] and \
                            not [s for s in waiting if set(s.needs) <= done]:
                        raise UserError("the plan's members wait on each other")
                    continue
                finished_now, _ = wait(running, return_when=FIRST_COMPLETED)
                for fut in finished_now:
                    m = running.pop(fut)
                    rc, line = fut.result()
                    raise_for_exit(m.name, rc, line)
                    done.add(m.name)
                    progress.finished(m.name, "trained", m.cost)
        except BaseException as e:  # Ctrl-C, SIGTERM or a failed member: stop the others
            processes.stop(signal.SIGINT if isinstance(e, KeyboardInterrupt) else signal.SIGTERM)
            for fut in running:  # each saved its state and exited
                fut.exception()
            raise

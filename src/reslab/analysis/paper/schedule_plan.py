"""`reslab paper --plan FILE`: the plan's training runs as commands for a scheduler the user
already has (a SLURM job array, Kubernetes jobs, a shell loop), trained nowhere here.

Each training member becomes one `reslab train --recipe DIR/plan/<name>.toml --out <its run
directory>` (`torchrun --standalone --nproc-per-node G -m reslab train ...` with G GPUs), the
run directory named exactly as the runner names it (TrainMember.run_dir: the member's name and
its recipe's digest), so a later `reslab paper` call over the same DIR finds the finished runs,
skips them and only measures and writes the page. The commands are grouped in stages by
dependency: a stage's commands are independent of each other and need only earlier stages. An
analysis a member needs (the grow step that builds the grown net's initial weights) is a
`reslab paper ... --only <the runs it reads>` call in the stage before that member.

Paths are written as DIR was given: a relative DIR gives commands to run from the directory
the plan was made in, and no absolute path of this machine goes into the plan.
"""
from __future__ import annotations

import os
import shlex
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path

from ...engine.recipe import save_recipe
from ...engine.sweep import member_start
from ...errors import UserError
from ...io import atomic_write_text
from ...limits import check_int
from .budgets import Plan, TrainMember, weights_for
from .runner import MOVES_WITH_DIR, step_done, steps

# GPUs per run where --gpus is not given: the paper trained ImageNet on 8 GPUs; a CIFAR net at
# batch 128 uses a small part of one.
IMAGENET_GPUS = 8
MAX_GPUS = 64


@dataclass(frozen=True)
class Command:
    """One line of the plan: a training member's run or an analysis it needs."""

    name: str
    stage: int                # 1, 2, ...: runs once every earlier stage has finished
    argv: tuple[str, ...]

    @property
    def line(self) -> str:
        return shlex.join(self.argv)


@dataclass(frozen=True)
class Schedule:
    """What --plan writes: the commands in stages, the members already finished in DIR (left
    out) and the call that collects the page afterwards."""

    commands: tuple[Command, ...]
    finished: tuple[str, ...]
    collect: tuple[str, ...]
    gpus: int

    @property
    def stages(self) -> list[list[Command]]:
        last = max((c.stage for c in self.commands), default=0)
        every = [[c for c in self.commands if c.stage == s] for s in range(1, last + 1)]
        return [cmds for cmds in every if cmds]   # a stage finished already is no stage


def plan_dir(out: Path) -> Path:
    """Where --plan writes the members' recipe files."""
    return out / "plan"


def gpus_per_run(plan: Plan, gpus: int | None) -> int:
    """--gpus, checked against the batch (torchrun splits the global batch evenly), or the
    default: 8 for ImageNet (the paper's), 1 for the CIFAR family."""
    g = (IMAGENET_GPUS if plan.imagenet else 1) if gpus is None else \
        check_int("--gpus", gpus, 1, MAX_GPUS)
    batch = plan.base.batch_size
    if batch % g:
        raise UserError(f"--gpus {g} does not divide the batch of {batch} images (torchrun "
                        "splits the batch evenly over the GPUs)")
    return g


def _as_given(path: str, out: Path) -> str:
    """An initial-weights path (weights_for resolves it) written as DIR was given."""
    return path if out.is_absolute() else os.path.relpath(path)


def _train_argv(m: TrainMember, out: Path, gpus: int) -> tuple[str, ...] | None:
    """The member's command as the runner would start it (engine.sweep.train_in_subprocess):
    a new run from its recipe file, an interrupted one resumed, one dead before its first
    state started afresh; None when it is finished in DIR."""
    run = m.run_dir(out)
    start = member_start(m.recipe, run, MOVES_WITH_DIR)
    if start == "skip":
        return None
    recipe = plan_dir(out) / f"{m.name}.toml"
    args = ["--resume"] if start == "resume" else ["--recipe", str(recipe)]
    if start == "afresh":
        args.append("--overwrite")
    launch = (["torchrun", "--standalone", "--nproc-per-node", str(gpus), "-m", "reslab"]
              if gpus > 1 else ["reslab"])
    return (*launch, "train", *args, "--out", str(run))


def schedule(plan: Plan, out: Path, paper_argv: Sequence[str], collect: Sequence[str],
             gpus: int | None = None) -> Schedule:
    """The plan's commands (see the module docstring). paper_argv: `reslab paper` with the
    options that fix the plan (budget, DIR, data, iterations), for the analysis steps;
    collect: the call that makes the page afterwards. Refuses, like the runner, a DIR holding
    runs of other recipes."""
    g = gpus_per_run(plan, gpus)
    members = {m.name: weights_for(m, out, plan) for m in plan.members}
    analyses = {s.name: s for s in steps(plan, out, list(members.values()))}
    stage: dict[str, int] = {}

    def stage_of(name: str) -> int:
        if name not in stage:
            needs = members[name].needs if name in members else analyses[name].needs
            stage[name] = 1 + max((stage_of(n) for n in needs), default=0)
        return stage[name]

    def runs_read(name: str) -> list[str]:
        """The training members an analysis reads, through the analyses it needs."""
        return [n for need in analyses[name].needs
                for n in ([need] if need in members else runs_read(need))]

    commands, finished, waiting = [], [], []
    for m in sorted(members.values(), key=lambda m: -m.cost):   # longest first, as the runner
        argv = _train_argv(m, out, g)
        if argv is None:
            finished.append(m.name)
        else:
            commands.append(Command(m.name, stage_of(m.name), argv))
            waiting.append(m)
    # the analyses a run still to train needs, unless their result is in DIR already
    wanted = sorted({n for m in waiting for n in m.needs
                     if n in analyses and not step_done(out, analyses[n])})
    commands += [Command(name, stage_of(name), (*paper_argv, "--only",
                                                *dict.fromkeys(runs_read(name)), "--quiet"))
                 for name in wanted]
    # an analysis first in its stage (it is short, and the next stage waits on it), then the
    # runs longest first (the sort is stable)
    commands.sort(key=lambda c: (c.stage, c.name in members))
    return Schedule(tuple(commands), tuple(finished), tuple(collect), g)


def write_plan(plan: Plan, out: Path, file: Path, paper_argv: Sequence[str],
               collect: Sequence[str], gpus: int | None = None) -> Schedule:
    """Writes every member's recipe under DIR/plan/ and the shell script to `file` (see
    `schedule`); trains nothing."""
    s = schedule(plan, out, paper_argv, collect, gpus)
    for m in plan.members:
        if m.name in s.finished:
            continue
        weighted = weights_for(m, out, plan)
        r = weighted.recipe
        if r.weights:
            r = r.replace(weights=_as_given(r.weights, out))
        save_recipe(plan_dir(out) / f"{m.name}.toml", r)
    atomic_write_text(file, script(plan, out, s))
    file.chmod(0o755)
    return s


def script(plan: Plan, out: Path, s: Schedule) -> str:
    """The plan as a POSIX shell script: one command a line, a comment before each stage."""
    collect = shlex.join(s.collect)
    where = ("" if out.is_absolute() else
             "# Run every command from the directory `reslab paper --plan` ran in: the paths "
             "are relative to it.\n")
    lines = ["#!/bin/sh",
             f"# Written by `{collect} --plan FILE`: {len(plan.members)} training runs of budget "
             f"{plan.budget.name} on {plan.data}, in {len(s.stages)} stages",
             f"# ({s.gpus} GPU{'s' if s.gpus > 1 else ''} per run).",
             where.rstrip("\n"),
             "# A stage's commands are independent (a job array); start a stage when every "
             "command of the one before it has finished.",
             "# A run stopped part way (preempted, killed) continues with: reslab train "
             "--resume --out <its --out>.",
             "# Afterwards the page, from the finished runs (nothing is trained again):",
             f"#   {collect}",
             "set -e"]
    for name in s.finished:
        run = plan.member(name)
        assert run is not None
        lines.append(f"# {name}: finished in {run.run_dir(out)}, left out")
    for i, cmds in enumerate(s.stages, 1):
        what = ", ".join(dict.fromkeys(_role(plan, c.name) for c in cmds))
        lines.append(f"# stage {i}: {len(cmds)} command{'s' if len(cmds) > 1 else ''} "
                     f"({what})")
        lines += [c.line for c in cmds]
    lines += ["# collect: analyses and the page", collect]
    return "\n".join(line for line in lines if line) + "\n"


def _role(plan: Plan, name: str) -> str:
    m = plan.member(name)
    return m.role if m is not None else f"the {name} step"

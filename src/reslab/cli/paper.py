"""`reslab paper --budget smoke|laptop|full --out DIR`: the paper's claims rerun on this machine.

Trains and measures every member of the budget's plan (the Fig. 6 sweep over seeds, the layer
responses, the identity construction, the shortcut options, resnet110's warm-up where the budget
has it, Table 1/6 and the notes' trace) into DIR, then writes DIR/paper.md and a self-contained
DIR/paper.html saying which claims hold, with the numbers (--lang ko: DIR/paper.ko.md and
DIR/paper.ko.html beside them). Run the same command again to reuse
finished members and resume interrupted ones; a changed budget or dataset trains only the
members it changes. See docs/guides/paper.md.
"""
from __future__ import annotations

import argparse
import re
import shlex
import sys
from pathlib import Path
from typing import TYPE_CHECKING

from ..errors import UserError
from .common import add_data_option, add_device_option, add_out_option

if TYPE_CHECKING:
    from ..analysis.paper import Plan

LANGS = ("en", "ko")


def add_parser(sub: argparse._SubParsersAction) -> None:
    from ..choices import PAPER_BUDGETS

    p = sub.add_parser("paper", help="rerun every claim of the paper at a budget; one page "
                       "with the verdicts", description=__doc__)
    p.add_argument("--budget", required=True, choices=PAPER_BUDGETS,
                   help="smoke: seconds on digits; laptop: ~30 min on 2 cores with "
                        "Fashion-MNIST; full: the paper's schedules (a GPU)")
    add_out_option(p, "where the runs and the page go", metavar="DIR", required=True)
    add_data_option(p, "the budget's: digits, fashion-mnist, cifar10; imagefolder:PATH with "
                       "--budget full runs the ImageNet plan")
    p.add_argument("--data-dir", help="where the dataset files are")
    p.add_argument("--jobs", type=int, default=1, metavar="N",
                   help="train N members at a time (with --device cuda: all on that GPU), "
                        "each a process with CPUs/N threads; N at most the CPUs")
    p.add_argument("--lang", choices=LANGS, default="en", help="language of the page")
    add_device_option(p)
    p.add_argument("--iters", type=int, metavar="N",
                   help="every run N iterations instead of the budget's (milestones scaled)")
    p.add_argument("--only", nargs="+", metavar="GLOB",
                   help="train only the members matching these names (e.g. 'resnet20-*')")
    p.add_argument("--plan", metavar="FILE",
                   help="train nothing: write FILE, a shell script with every run's command "
                        "(reslab train, torchrun with --gpus > 1) in stages, for a scheduler; "
                        "recipes under DIR/plan/. Then `reslab paper` over DIR makes the page")
    p.add_argument("--gpus", type=int, metavar="G",
                   help="with --plan: GPUs per run (default 1; ImageNet 8, as the paper)")
    p.add_argument("--quiet", action="store_true", help="no progress output")
    p.set_defaults(func=run)


def run(args: argparse.Namespace) -> int:
    from ..analysis.paper import PaperDir, plan, run_paper
    from ..engine.setup import select_device
    from ..engine.state import Interrupted
    from ..io import check_writable
    from ..limits import MAX_ITERS, check_int

    jobs = check_int("--jobs", args.jobs, 1, 64)
    iters = check_int("--iters", args.iters, 1, MAX_ITERS) if args.iters is not None else None
    if args.gpus is not None and not args.plan:
        raise UserError("--gpus sets the GPUs per run of a --plan; without --plan, --device "
                        "cuda --jobs N trains N runs at a time on one GPU")
    if args.plan:  # the runs go elsewhere: the device is named, not looked for here
        device = _planned_device(args.device)
    else:
        chosen = select_device(args.device)  # one error line when the device is absent
        device = str(chosen) if args.device == "auto" else args.device
    p = plan(args.budget, args.data, data_dir=args.data_dir, iters=iters, device=device)
    if args.plan:
        return _write_plan(p, args)
    check_writable(PaperDir(Path(args.out)).page_md(args.lang), "--out")

    def say(msg: str) -> None:
        if not args.quiet:
            print(msg, file=sys.stderr, flush=True)

    try:
        md, page = run_paper(p, args.out, jobs=jobs, lang=args.lang, only=args.only,
                             argv=["reslab", "paper", *_shown_argv(args)], say=say)
    except Interrupted as e:
        print(f"stopped by {e.signame}; finished members are kept and interrupted ones saved "
              "their state. Run the same command again to continue", file=sys.stderr)
        return e.exit_code
    print(f"wrote {md} and {page}")
    return 0


def _write_plan(p: Plan, args: argparse.Namespace) -> int:
    """--plan FILE: the members listed, their commands written for a scheduler."""
    from ..analysis.paper.budgets import recipe_digest
    from ..analysis.paper.schedule_plan import plan_dir, write_plan
    from ..io import check_writable

    if args.only:
        raise UserError("--plan writes every member's command, in stages: run the lines of "
                        "FILE you want instead of --only")
    out = Path(args.out)
    check_writable(args.plan, "--plan")
    check_writable(plan_dir(out) / f"{p.members[0].name}.toml", "--out")
    paper = ["reslab", "paper", *_budget_argv(args)]
    s = write_plan(p, out, Path(args.plan), paper,
                   paper + (["--lang", args.lang] if args.lang != "en" else []), args.gpus)
    print(f"budget {p.budget.name} on {p.data}: {len(p.members)} training runs; "
          f"expected: {p.budget.expected}")
    if p.schedule_note:
        print(p.schedule_note)
    for m in p.members:
        r = m.recipe
        print(f"  {m.name:<24} {m.role:<9} {r.model} seed {r.seed}, {r.iters:,} iterations"
              if r.iters else f"  {m.name:<24} {m.role:<9} {r.model} seed {r.seed}",
              f"[{recipe_digest(r)}]")
    left = f"; {len(s.finished)} finished in {out}, left out" if s.finished else ""
    print(f"wrote {args.plan}: {len(s.commands)} commands in {len(s.stages)} stages"
          f"{left}; recipes in {plan_dir(out)}/. Then: {shlex.join(s.collect)}")
    return 0


def _planned_device(name: str) -> str:
    """--device with --plan: its name is checked, not whether this machine has it."""
    if name in ("auto", "cpu", "cuda", "mps") or re.fullmatch(r"cuda:\d+", name):
        return name
    raise UserError(f"invalid device '{name}' (choices: auto, cpu, cuda, cuda:N, mps)")


def _budget_argv(args: argparse.Namespace) -> list[str]:
    """The options that fix the plan's members: budget, DIR (as given), data, iterations."""
    out = ["--budget", args.budget, "--out", args.out]
    for flag, value in (("--data", args.data), ("--data-dir", args.data_dir),
                        ("--iters", args.iters)):
        if value is not None:
            out += [flag, str(value)]
    return out


def _shown_argv(args: argparse.Namespace) -> list[str]:
    """The command as the page shows it: the options given, --out as given (relative paths
    stay relative: no absolute path of this machine goes on the page unless typed)."""
    out = _budget_argv(args)
    if args.jobs != 1:
        out += ["--jobs", str(args.jobs)]
    if args.lang != "en":
        out += ["--lang", args.lang]
    if args.only:
        out += ["--only", *args.only]
    return out

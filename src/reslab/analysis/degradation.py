"""The degradation experiment: Fig. 1 and Fig. 6 (section 4.2) on the CIFAR family.

For each depth 6n+2 it trains plainN and resnetN with the same recipe and budget, each in
OUT/<model>/ (a normal run directory; reslab.engine.sweep runs them), then writes
OUT/degradation.json (docs/run-directory.md) and OUT/degradation.png. The paper's finding:
deeper plain nets have HIGHER training error (so it is not overfitting), deeper ResNets lower.
Re-running the command skips finished runs and resumes interrupted ones, so a long sweep
survives being stopped.
"""
from __future__ import annotations

import json
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any

from ..io import atomic_write_text
from ..engine.logging import read_metrics
from ..engine.recipe import Recipe
from ..engine.rundir import RunDir
from ..engine.sweep import check_reusable, train_in_parallel, train_or_reuse
from ..errors import UserError
from ..text import plural
from ..models import REGISTRY, get_arch
from .report import training_seconds, write_run_report
from .sweep_result import CurvePoint, DegradationResult, SeedStats, Spread, SweepMember


def cifar_depths() -> list[int]:
    return sorted({a.depth for a in REGISTRY.values() if a.family == "cifar"})


def sweep_members(depths: Sequence[int], seeds: Sequence[int],
                  seeds_depths: Sequence[int] | None = None) -> list[tuple[str, int, str]]:
    """(model, seed, run directory name) of every member, in training order: plainN and resnetN
    for each depth, with every seed for the depths in seeds_depths (default all) and the first
    seed for the others. The first seed's runs are named by the model alone (plain20), further
    seeds' runs plain20-seed1, ..., so a sweep can add seeds to the runs it already has."""
    models = sweep_models(depths)
    if not seeds:
        raise UserError("give at least one seed")
    repeat = set(depths if seeds_depths is None else seeds_depths)
    if not repeat <= set(depths):
        raise UserError(f"--seeds-depths {sorted(repeat - set(depths))} are not among the "
                        f"sweep's depths {list(depths)}")
    members = []
    for model in models:
        for i, seed in enumerate(dict.fromkeys(seeds)):
            if i and get_arch(model).depth not in repeat:
                break
            members.append((model, seed, model if i == 0 else f"{model}-seed{seed}"))
    return members


def sweep_models(depths: Sequence[int]) -> list[str]:
    """plainN and resnetN for each depth, in the order they are trained."""
    allowed = cifar_depths()
    bad = [d for d in depths if d not in allowed]
    if bad:
        raise UserError(f"depth {bad[0]} is not a CIFAR-family depth 6n+2 "
                        f"(choices: {', '.join(map(str, allowed))})")
    if not depths:
        raise UserError("give at least one depth")
    return [f"{kind}{d}" for d in dict.fromkeys(depths) for kind in ("plain", "resnet")]


def _error(row: dict[str, Any] | None) -> float | None:
    return None if row is None else 1.0 - float(row["top1"])


def summarize_run(model: str, run_dir: Path, seed: int | None = None,
                  run: str | None = None) -> SweepMember:
    """One entry of degradation.json's runs, read back from run_dir/metrics.jsonl (seed and
    run: the member's seed and run name, set by the sweep).

    curve: one point per evaluation, train_error the running error over that epoch's training
    batches (the paper's thin curves), test_error the per-epoch test evaluation (val when the
    run holds out a validation split, since test is then evaluated only at the end).
    """
    path = RunDir(run_dir).metrics
    if not path.is_file():
        raise UserError(f"{run_dir} has no {path.name}")
    rows = [r for r in read_metrics(path) if "split" not in r or "top1" in r]
    train = {r["step"]: r for r in rows if r.get("split") == "train"}
    evals = ([r for r in rows if r.get("split") == "test" and not r.get("final")]
             or [r for r in rows if r.get("split") == "val"])
    finals = [r for r in rows if r.get("split") == "test" and r.get("final")]
    by_step = {r["step"]: r for r in evals}
    if not by_step and finals:
        by_step = {finals[-1]["step"]: finals[-1]}
    # train_error_every logs the training error between evaluations too: those points have no
    # test error (None), so Fig. 6's thin curves get every point the run logged.
    steps = sorted(by_step.keys() | (train.keys() if by_step else set()))
    arch = get_arch(model)
    last_train = train[max(train)] if train else None
    last_test = finals[-1] if finals else (by_step[max(by_step)] if by_step else None)
    per_epoch = next((r["step"] / r["epoch"] for r in rows
                      if r.get("epoch") and r.get("step")), None)
    return SweepMember(model, arch.depth, arch.residual,
                       max((r["step"] for r in rows), default=0), training_seconds(rows),
                       _error(last_train), _error(last_test),
                       tuple(CurvePoint(s, _error(train.get(s)), _error(by_step.get(s)))
                             for s in steps), seed, run,
                       None if per_epoch is None else round(per_epoch, 3))


def budget(runs: Sequence[SweepMember], epochs: float | None = None) -> str:
    """"14,040 iterations (30 epochs) per run; 5.1 h of training in all": the sweep's cost."""
    iters = max((r.iterations or 0 for r in runs), default=0)
    secs = sum(r.train_seconds or 0 for r in runs)
    per = f" ({plural(epochs, 'epoch', fmt='.3g')})" if epochs else ""
    return f"{plural(iters, 'iteration')}{per} per run; {secs / 3600:.2f} h of training in all"


def run_degradation(data: str, depths: Sequence[int], out: str | Path, recipe: Recipe, *,
                    quiet: bool = False, say: Callable[[str], None] | None = None,
                    jobs: int = 1, seeds: Sequence[int] | None = None,
                    seeds_depths: Sequence[int] | None = None,
                    notes: Sequence[str] = ()) -> DegradationResult:
    """Trains the sweep (Fig. 6) and writes OUT/degradation.json and OUT/degradation.png.
    jobs > 1: members trained that many at a time (engine.sweep.train_in_parallel). seeds:
    repeat the runs (of seeds_depths, default all) with these seeds; the spread over seeds is
    reported.
    notes: lines said once the sweep is accepted, before training."""
    out = Path(out)
    say = say or (lambda _msg: None)
    base = recipe.replace(data=data)
    members = sweep_members(depths, seeds or [base.seed], seeds_depths)
    recipes = {name: base.replace(model=model, seed=seed) for model, seed, name in members}
    for name, r in recipes.items():  # refuse before training anything, not halfway through
        check_reusable(r, out / name)
    for line in notes:
        say(line)
    shared = {k: v for k, v in base.to_dict().items() if k not in ("model", "seed")}
    if jobs > 1:
        train_in_parallel(recipes, out, jobs, say)
    runs: list[SweepMember] = []
    epochs = None
    result = DegradationResult(data, shared)
    for i, (name, r) in enumerate(recipes.items(), 1):
        if jobs == 1:
            say(f"[{i}/{len(recipes)}] {name}")
            train_or_reuse(r, out / name, quiet=quiet, say=say)
            write_run_report(out / name, strict=False)
        runs.append(summarize_run(r.model, out / name, r.seed, name))
        summary = _read_summary(out / name)
        if summary.get("steps") and summary.get("epochs"):
            epochs = summary["epochs"]
        result = DegradationResult(data, shared, tuple(runs), seed_spread(runs), epochs,
                                   budget(runs, epochs))
        write_results(result, out)  # after every run: a long sweep shows its results so far
    return result


def seed_spread(runs: Sequence[SweepMember]) -> dict[str, Spread]:
    """For each model run with two or more seeds: mean and (sample) std of its final training
    and test errors, and the seeds (Table 6 reports resnet110 as best of 5 and mean +- std)."""
    import statistics

    by_model: dict[str, list[SweepMember]] = {}
    for r in runs:
        by_model.setdefault(r.model, []).append(r)
    spread = {}
    for model, rs in by_model.items():
        if len(rs) < 2:
            continue
        stats = []
        for which in ("train", "test"):
            vals = [e for e in (r.final_error(which) for r in rs) if e is not None]
            stats.append(SeedStats(statistics.fmean(vals), statistics.stdev(vals), min(vals),
                                   max(vals)) if len(vals) >= 2 else None)
        spread[model] = Spread(tuple(r.seed for r in rs), *stats)
    return spread


def _read_summary(run_dir: Path) -> dict[str, Any]:
    try:
        obj = json.loads(RunDir(run_dir).summary.read_text())
    except (OSError, ValueError):
        return {}
    return obj if isinstance(obj, dict) else {}


def write_results(result: DegradationResult, out: Path) -> None:
    from .plots import degradation_figure

    out.mkdir(parents=True, exist_ok=True)
    sweep = RunDir(out)
    atomic_write_text(sweep.degradation, json.dumps(result.to_json(), indent=2) + "\n")
    degradation_figure(result.first_seeds(), sweep.degradation_png,
                       title=f"plain vs ResNet on {result.dataset} (Fig. 6)")

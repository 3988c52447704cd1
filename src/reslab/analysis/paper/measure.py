"""The analyses of `reslab paper`: each reads finished runs (or builds models) and returns what
it measured as plain JSON, which the page reads back. Nothing here judges: claims.py and
verdicts.py do.
"""
from __future__ import annotations

import functools
import statistics
from importlib import resources
from pathlib import Path
from typing import Any

import torch

from ...engine.rundir import RunDir
from ...models import create_model
from ..degradation import seed_spread, summarize_run
from ..sweep_result import DegradationResult
from .budgets import PaperDir, Plan, TrainMember

IMAGENET_MODELS = ("resnet18", "resnet34", "resnet50", "resnet101", "resnet152")
CIFAR_MODELS = ("resnet20", "resnet32", "resnet44", "resnet56", "resnet110", "resnet1202")
# The published numbers the measurements are put beside (docs/paper-numbers.md).
PAPER_GMACS = {"resnet18": 1.8, "resnet34": 3.6, "resnet50": 3.8, "resnet101": 7.6,
               "resnet152": 11.3}
TORCHVISION = {"resnet18": (1.814, 11_689_512), "resnet34": (3.664, 21_797_672),
               "resnet50": (4.089, 25_557_032), "resnet101": (7.801, 44_549_160),
               "resnet152": (11.514, 60_192_808)}
PAPER_PARAMS_M = {"resnet20": "0.27", "resnet32": "0.46", "resnet44": "0.66", "resnet56": "0.85",
                  "resnet110": "1.7", "resnet1202": "19.4"}


def _meta(name: str, **kw: Any) -> torch.nn.Module:
    with torch.device("meta"):
        return create_model(name, **kw)


@functools.cache  # pure: the same models every time (tests build several pages)
def _params(name: str, **kw: Any) -> int:
    return sum(p.numel() for p in _meta(name, **kw).parameters())


@functools.cache  # pure, and only written out as JSON: built once per process (as _params)
def tables() -> dict[str, Any]:
    """Table 1 (per stage, stride on the first 1x1 as the paper and on the 3x3 as torchvision),
    Table 6's parameter counts, the per-3x3-layer cost by stage (Q3), resnet50's projection
    shortcuts and a Conv2d's parameters (the notes' code questions)."""
    from ..macs import profile

    table1 = {}
    for name in IMAGENET_MODELS:
        for stride_in in ("1x1", "3x3"):
            s = profile(_meta(name, stride_in=stride_in), (1, 3, 224, 224))
            table1[f"{name}/{stride_in}"] = {
                "model": name, "stride_in": stride_in, "macs": s.macs, "params": s.params,
                "paper_gmacs": PAPER_GMACS[name], "torchvision_gmacs": TORCHVISION[name][0],
                "torchvision_params": TORCHVISION[name][1], "level_3x3_cost": s.level,
                "stages": [{"name": r.name, "paper_name": r.paper_name,
                            "output": list(r.output_shape), "block": r.block, "macs": r.macs,
                            "params": r.params, "macs_per_3x3": r.macs_per_3x3}
                           for r in s.stages]}
    table6 = {}
    for name in CIFAR_MODELS:
        table6[name] = {"params": _params(name), "paper_params_m": PAPER_PARAMS_M[name],
                        "plain_params": _params(name.replace("resnet", "plain"))}
    s = profile(_meta("resnet20"), (1, 3, 32, 32))  # the CIFAR family's per-3x3 cost
    table6["resnet20"].update(per_3x3=[r.macs_per_3x3 for r in s.stages
                                       if r.macs_per_3x3 is not None], level_3x3_cost=s.level)
    net = _meta("resnet50", stride_in="3x3")
    downsample = []
    for i in range(1, 5):
        first = getattr(net, f"layer{i}")[0]
        conv = first.downsample[0]
        downsample.append({"stage": f"layer{i}", "module": repr(conv),
                           "kernel": list(conv.kernel_size), "stride": list(conv.stride),
                           "in": conv.in_channels, "out": conv.out_channels,
                           "main_strides": [list(c.stride) for c in
                                            (first.conv1, first.conv2, first.conv3)]})
    conv = torch.nn.Conv2d(4, 6, kernel_size=(3, 3), stride=(1, 1), padding=(1, 1), bias=False)
    out = conv(torch.zeros(1, 4, 8, 8))
    conv2d = {"module": repr(conv), "in_channels": conv.in_channels,
              "out_channels": conv.out_channels, "kernel_size": list(conv.kernel_size),
              "stride": list(conv.stride), "padding": list(conv.padding),
              "dilation": list(conv.dilation), "groups": conv.groups, "bias": conv.bias is not None,
              "padding_mode": conv.padding_mode, "weight_shape": list(conv.weight.shape),
              "params": conv.weight.numel(), "input": [1, 4, 8, 8], "output": list(out.shape)}
    return {"table1": table1, "table6": table6, "downsample": downsample, "conv2d": conv2d}


def seed_trace_lines() -> list[str]:
    """The study notes' resnet50 trace ("3. 출력 차원 분석"; docs/notes.md, "The layer-by-layer
    trace"), shipped with reslab."""
    text = resources.files(__package__).joinpath("seed_trace_resnet50.txt").read_text("utf-8")
    return text.splitlines()


@functools.cache
def trace_compare() -> dict[str, Any]:
    """reslab's trace of torchvision's resnet50 beside the notes', line for line. The notes
    write "입력" for "input" and print no module line for the fc layer."""
    from ..trace import render_trace, trace

    ours = render_trace(trace(_meta("resnet50"), (1, 3, 224, 224))).splitlines()
    notes = seed_trace_lines()
    fc = [i for i, line in enumerate(ours) if line.startswith("fc : ")]
    comparable = [line for i, line in enumerate(ours) if i not in fc]
    theirs = [notes[0].replace("입력", "input"), *notes[1:]]
    mismatches = [{"line": i + 1, "notes": a, "reslab": b}
                  for i, (a, b) in enumerate(zip(theirs, comparable)) if a != b]
    return {"notes_lines": len(notes), "reslab_lines": len(ours), "compared": len(theirs),
            "equal": sum(a == b for a, b in zip(theirs, comparable)),
            "length_equal": len(theirs) == len(comparable), "mismatches": mismatches[:10],
            "skipped": [ours[i] for i in fc], "weighted_layers":
                sum(line.startswith("layer idx ") for line in notes),
            "downsample_lines": sum(line.startswith("downsample : ") for line in notes),
            "excerpt": notes[:14]}


def _label(m: TrainMember, first_seed: int) -> str:
    """plain20 for the first seed, plain20-seed1 for another (degradation.json's run names)."""
    model = m.recipe.model
    return model if m.recipe.seed == first_seed else f"{model}-seed{m.recipe.seed}"


def degradation(p: Plan, out: Path) -> dict[str, Any]:
    """Fig. 6: degradation.json's content for the sweep members, every seed."""
    from ..degradation import budget

    first = p.budget.seeds[0]
    runs = [summarize_run(m.recipe.model, m.run_dir(out), m.recipe.seed, _label(m, first))
            for m in p.by_role("sweep")]
    shared = {k: v for k, v in p.base.to_dict().items()
              if k not in ("model", "seed", "data_dir", "weights", "device", "threads")}
    return DegradationResult(p.data, shared, tuple(runs), seed_spread(runs),
                             budget=budget(runs)).to_json()


def _loaded(m: TrainMember, out: Path, device: str = "cpu") -> tuple[Any, Any]:
    from ...weights.checkpoint import load_checkpoint

    return load_checkpoint(m.run_dir(out), device)


def responses(p: Plan, out: Path) -> dict[str, Any]:
    """Fig. 7 on the test split for every sweep member (and resnet110's first warm-up run), and
    ||F(x)|| / ||x|| per block of every ResNet (the notes' first question)."""
    from ..responses import PreparedData, layer_responses, residual_ratios, take_images

    first = p.budget.seeds[0]
    members = p.by_role("sweep") + p.by_role("warmup")[:1]
    prepared = PreparedData(p.data, p.data_dir)
    stds, ratios = {}, {}
    for m in members:
        label = _label(m, first)
        model, record = _loaded(m, out)
        stds[label] = layer_responses(model, take_images(
            prepared.batches(label, model, record, "test", 256, "cpu"), p.budget.response_images))
        if model.block_options["residual"]:
            ratios[label] = residual_ratios(model, take_images(
                prepared.batches(label, model, record, "test", 256, "cpu"),
                p.budget.ratio_images))
    n = prepared.for_record(record).num_examples("test")
    return {"split": "test", "images": min(n, p.budget.response_images or n),
            "ratio_images": min(n, p.budget.ratio_images), "stds": stds, "ratios": ratios}


def grow_step(p: Plan, out: Path) -> dict[str, Any]:
    """Section 1's construction: the first seed's shallow ResNet grown into the deeper one."""
    from ...weights.grow import grow_checkpoint

    small, big = (f"resnet{d}" for d in p.budget.grow)
    source = p.member(f"{small}-s{p.budget.seeds[0]}")
    assert source is not None
    target = PaperDir(out).grown(big)
    g = grow_checkpoint(source.run_dir(out), big, target)
    return {"from": g.source, "to": g.target, "copied_blocks": g.copied_blocks,
            "added_blocks": g.added_blocks, "max_abs_logit_diff_random": g.max_abs_logit_diff}


@torch.no_grad()
def _train_split(models: dict[str, tuple[Any, Any]], data: str, data_dir: str | None,
                 reference: tuple[str, str], max_images: int | None) -> dict[str, Any]:
    """Every model's error on the training split (its first max_images, None: all; eval mode,
    unaugmented, as each was trained), and how the two `reference` models' logits and
    predictions compare."""
    from ..responses import PreparedData

    prepared = PreparedData(data, data_dir)
    wrong = dict.fromkeys(models, 0)
    n, gap, same = 0, 0.0, 0
    streams = {k: _limited(prepared.batches(k, m, r, "train", 500, "cpu"), max_images)
               for k, (m, r) in models.items()}
    for batches in zip(*streams.values()):
        logits = {}
        for key, (x, y) in zip(models, batches):
            logits[key] = models[key][0].eval()(x)
            wrong[key] += int((logits[key].argmax(1) != y).sum())
        a, b = (logits[k] for k in reference)
        gap = max(gap, float((a - b).abs().max()))
        same += int((a.argmax(1) == b.argmax(1)).sum())
        n += len(batches[0][1])
    return {"images": n, "wrong": wrong, "error": {k: v / n for k, v in wrong.items()},
            "max_abs_logit_diff": gap, "same_predictions": same}


def _limited(batches: Any, max_images: int | None) -> Any:
    """(x, y) batches stopping after max_images (None: all)."""
    left = max_images
    for x, y in batches:
        if left is not None:
            if left <= 0:
                return
            x, y, left = x[:left], y[:left], left - len(x[:left])
        yield x, y


def identity(p: Plan, out: Path) -> dict[str, Any]:
    """The construction measured on the training set: the shallow net, the grown net as built,
    the grown net and the shallow net after equal further training, the deep net trained from
    scratch."""
    from ...weights.checkpoint import load_checkpoint

    small, big = (f"resnet{d}" for d in p.budget.grow)
    seed = p.budget.seeds[0]
    runs = {"shallow": p.member(f"{small}-s{seed}"), "deep_scratch": p.member(f"{big}-s{seed}"),
            "grown_trained": p.member(f"{big}-grown-s{seed}"),
            "shallow_continued": p.member(f"{small}-continued-s{seed}")}
    models = {k: _loaded(m, out) for k, m in runs.items() if m is not None}
    models["grown"] = load_checkpoint(PaperDir(out).grown(big))
    order = ["shallow", "grown", "shallow_continued", "grown_trained", "deep_scratch"]
    models = {k: models[k] for k in order if k in models}
    result = _train_split(models, p.data, p.data_dir, ("shallow", "grown"),
                          p.budget.identity_images)
    more = p.member(f"{big}-grown-s{seed}")
    result.update({"small": small, "big": big, "seed": seed,
                   "further_iters": more.recipe.iters if more else None,
                   "further_lr": more.recipe.lr if more else None})
    return result


def shortcuts(p: Plan, out: Path) -> dict[str, Any]:
    """Options A (the sweep's runs), B and C at one depth: final errors per seed, parameters."""
    sweep = [m for m in p.by_role("sweep")
             if m.recipe.model.startswith("resnet") and m.recipe.shortcut in (None, "A")]
    model = p.by_role("shortcut")[0].recipe.model
    options: dict[str, Any] = {}
    for opt in ("A", "B", "C"):
        members = ([m for m in sweep if m.recipe.model == model] if opt == "A"
                   else [m for m in p.by_role("shortcut") if m.recipe.shortcut == opt])
        runs = [summarize_run(model, m.run_dir(out)) for m in members]
        kw = {"shortcut": opt, **({"stride_in": p.base.stride_in} if p.imagenet else {})}
        options[opt] = {"seeds": [m.recipe.seed for m in members],
                        "train_error": [r.final_train_error for r in runs],
                        "test_error": [r.final_test_error for r in runs],
                        "params": _params(model, **kw)}
    return {"model": model, "options": options}


def convergence(p: Plan, out: Path) -> dict[str, Any]:
    """The convergence gate's reading (analysis.convergence) of every training member, by
    member name: its training-error curve after its last lr drop (the whole run for the
    constant-lr further training of the grown net and its control)."""
    from ..claims import member_convergence

    readings, runs = {}, {}
    for m in p.members:
        run = summarize_run(m.recipe.model, m.run_dir(out), m.recipe.seed, m.name)
        readings[m.name] = member_convergence(run, m.recipe.milestones).to_json()
        # what each member cost and its curve: the page's cost table and convergence figure
        runs[m.name] = {"role": m.role, "iterations": run.iterations,
                        "seconds": run.train_seconds, "final_lr_from": max(m.recipe.milestones,
                                                                           default=0),
                        "final_train_error": run.final_train_error,
                        "final_test_error": run.final_test_error,
                        "curve": [[q.step, q.train_error] for q in run.curve
                                  if q.train_error is not None]}
    return {"members": readings, "runs": runs}


def warmup(p: Plan, out: Path) -> dict[str, Any]:
    """resnet110 (section 4.2): where its warm-up at lr 0.01 ended (the first logged step at
    the full lr; steps are logged every 20 iterations), and its final errors."""
    from ...engine.logging import read_metrics

    seeds = []
    for m in p.by_role("warmup"):
        rows = read_metrics(RunDir(m.run_dir(out)).metrics)
        ends = [r["step"] for r in rows if "split" not in r and r.get("lr") == m.recipe.lr]
        run = summarize_run(m.recipe.model, m.run_dir(out))
        seeds.append({"seed": m.recipe.seed, "warmup_end": min(ends) if ends else None,
                      "final_train_error": run.final_train_error,
                      "final_test_error": run.final_test_error})
    test = [s["final_test_error"] for s in seeds if s["final_test_error"] is not None]
    return {"seeds": seeds, "mean_test_error": statistics.fmean(test) if test else None,
            "std_test_error": statistics.stdev(test) if len(test) > 1 else None,
            "best_test_error": min(test) if test else None}

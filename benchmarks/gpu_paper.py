"""How fast the `full` budget of `reslab paper` trains on one GPU, and what it then costs.

    python benchmarks/gpu_paper.py                      # one GPU: about 5 minutes, at most 10
    python benchmarks/gpu_paper.py --tiny --device cpu --out /tmp/gpu-paper.json   # (tests)

1. Steps: iterations/s of the engine's training step (reslab.bench.training_step, i.e.
   engine.step.sgd_step with SGD momentum) for resnet20, resnet56 and resnet110 at batch 128 on
   random 32x32x3 input, in five variants: fp32 NCHW, fp32 channels-last (what the `full`
   budget trains: the paper-cifar recipe, fp32), bf16 channels-last, and both channels-last
   variants under torch.compile. Variants of a net are timed in interleaved rounds, best round.
2. Member: one member of the `full` plan (default resnet110-s0, the longest), its own recipe,
   trained by a `reslab train` process on synthetic data in CIFAR-10's file format (random
   32x32 pixels; 50,000 training and 10,000 test images, so the per-epoch evaluations cost what they
   will) for two epochs (780 iterations). Whole-process and training seconds, and the 64k
   iterations extrapolated from them (labelled as such: not measured).
3. Together (--together J ...): J copies of that member at once on the same device, as
   `reslab paper --device cuda --jobs J` runs them: the aggregate iterations/s.
4. The `full` budget's expected time: every member of the plan, its iterations times the step
   time of its depth (of the variant the budget trains, interpolated linearly between the
   measured depths) times the member's overhead (its measured time per iteration over its bare
   step's), one member at a time, and divided by the best measured speed-up of --jobs J. Every
   hour of it is extrapolated, and says so.

Writes docs/results/gpu-paper.json (or --out): the environment, the device's name, every number
above. A part that would not fit the --budget-s (default 540 s) is skipped and says so.
"""
from __future__ import annotations

import argparse
import json
import pickle
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

import numpy as np
import torch

from common import PYTHON, ROOT, cpu_name, prepare, print_table, save_results
from reslab.analysis.paper import plan
from reslab.bench import training_step
from reslab.engine.recipe import save_recipe
from reslab.engine.rundir import RunDir
from reslab.engine.setup import bf16_supported, select_device
from reslab.models import create_model, get_arch
from reslab.timing import time_steps

T0 = time.perf_counter()
PAPER_ITERS = 64_000
# name -> (channels_last, bf16, compiled)
VARIANTS = {"fp32 NCHW": (False, False, False),
            "fp32 channels-last": (True, False, False),
            "bf16 channels-last": (True, True, False),
            "fp32 channels-last compiled": (True, False, True),
            "bf16 channels-last compiled": (True, True, True)}
BUDGET_VARIANT = "fp32 channels-last"   # the paper-cifar recipe: amp off, channels-last
# The sizes of a real run and of --tiny (the test suite: seconds on a CPU).
SIZES = {"full": dict(models=("resnet20", "resnet56", "resnet110"), batch=128, side=32,
                      train_images=50_000, test_images=10_000, epochs=2, together=(2, 4),
                      timed_iters=None, rounds=3),
         "tiny": dict(models=("resnet8", "resnet14"), batch=4, side=8, train_images=40,
                      test_images=20, epochs=2, together=(2,), timed_iters=2,
                      rounds=1)}


def parse_args() -> argparse.Namespace:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--device", default="cuda", help="cuda (default), cuda:N or cpu")
    p.add_argument("--tiny", action="store_true",
                   help="tiny nets, batches and data (the test suite runs it on the CPU)")
    p.add_argument("--member", default="resnet110-s0",
                   help="the `full` plan's member trained on synthetic data")
    p.add_argument("--together", type=int, nargs="*", metavar="J",
                   help="copies of the member trained at once (default 2 4; none: skip)")
    p.add_argument("--no-compile", action="store_true", help="skip the compiled variants")
    p.add_argument("--compile-backend", default=None,
                   help="torch.compile backend (default inductor; --tiny: eager, no C++ build)")
    p.add_argument("--budget-s", type=float, default=540.0,
                   help="parts that would start after this share of it are skipped")
    p.add_argument("--out", type=Path, help="result file (default docs/results/gpu-paper.json)")
    return p.parse_args()


def left(budget_s: float) -> float:
    return budget_s - (time.perf_counter() - T0)


def device_name(dev: torch.device) -> str:
    return torch.cuda.get_device_name(dev) if dev.type == "cuda" else cpu_name()


def time_nets(models: tuple[str, ...], batch: int, side: int, dev: torch.device,
              variants: list[str], iters: int | None, rounds: int,
              backend: str | None = None) -> list[dict[str, Any]]:
    """Iterations/s of these variants of each net (the compiled ones with torch.compile's
    `backend`). iters: calls per round (None: as many as fill 0.3 s)."""
    rows = []
    for name in models:
        torch.manual_seed(0)
        g = torch.Generator().manual_seed(0)
        x = torch.randn(batch, 3, side, side, generator=g).to(dev)
        y = torch.randint(0, 10, (batch,), generator=g).to(dev)
        steps = {}
        for variant in variants:
            cl, bf16, compiled = VARIANTS[variant]
            model = create_model(name, num_classes=10).to(dev)
            if compiled:  # the wrapper trains the model's own parameters
                model = torch.compile(model, backend=backend)
            steps[variant] = training_step(model, x, y, channels_last=cl,
                                           amp_dtype=torch.bfloat16 if bf16 else None)
        seconds = time_steps(steps, iters=iters, device=dev, rounds=rounds, target_s=0.3)
        rows += [{"model": name, "depth": get_arch(name).depth, "variant": v,
                  "it_s": round(1 / s, 2), "ms_per_it": round(1e3 * s, 3)}
                 for v, s in seconds.items()]
    return rows


def cifar_files(root: Path, train_images: int, test_images: int) -> Path:
    """Random 32x32 images in CIFAR-10's python format (5 training batches, a test batch)."""
    folder = root / "cifar-10-batches-py"
    folder.mkdir(parents=True)
    rng = np.random.default_rng(0)
    per = train_images // 5
    for name, n in [(f"data_batch_{i}", per) for i in range(1, 6)] + [("test_batch",
                                                                      test_images)]:
        with open(folder / name, "wb") as f:
            pickle.dump({"data": rng.integers(0, 256, (n, 3 * 32 * 32), dtype=np.uint8),
                         "labels": [int(v) for v in rng.integers(0, 10, n)]}, f)
    with open(folder / "batches.meta", "wb") as f:
        pickle.dump({"label_names": [f"class{i}" for i in range(10)]}, f)
    return root


def member_recipe(name: str, data_dir: Path, iters: int, dev: torch.device,
                  batch: int, tiny: bool) -> Any:
    """The `full` plan's member `name` with its own recipe, `iters` long, on data_dir."""
    p = plan("full", "cifar10", data_dir=str(data_dir), device=str(dev))
    m = p.member(name)
    if m is None:
        sys.exit(f"error: {name} is not a member of the full plan "
                 f"({', '.join(x.name for x in p.members)})")
    r = m.recipe.replace(iters=iters, milestones=[], save_every=0)
    if tiny:  # the tiny net and images of --tiny
        r = r.replace(model="resnet8", batch_size=batch, pad=1)
    return r


def train_members(recipe: Any, root: Path, copies: int) -> dict[str, Any]:
    """`copies` `reslab train` processes of the recipe at once: wall seconds, and each run's
    training seconds (summary.json)."""
    from reslab.data.loaders import available_cpus

    path = root / "member.toml"  # each process its share of the CPUs, as --jobs gives
    save_recipe(path, recipe.replace(threads=max(1, available_cpus() // copies)))
    outs = [root / f"run-{copies}-{i}" for i in range(copies)]
    t0 = time.perf_counter()
    procs = [subprocess.Popen([PYTHON, "-m", "reslab", "train", "--recipe", str(path), "--out",
                               str(out), "--quiet"], cwd=ROOT) for out in outs]
    codes = [proc.wait() for proc in procs]
    wall = time.perf_counter() - t0
    if any(codes):
        raise RuntimeError(f"reslab train exited {codes}")
    train_s = [json.loads(RunDir(out).summary.read_text())["wall_s"] for out in outs]
    return {"processes": copies, "iterations_each": recipe.iters, "wall_s": round(wall, 2),
            "train_s": [round(s, 2) for s in train_s],
            "aggregate_it_s": round(copies * recipe.iters / wall, 2)}


def step_seconds(rows: list[dict[str, Any]]) -> tuple[list[int], list[float]]:
    """(depths, seconds per iteration) of the budget's variant, by depth: a depth between two
    measured ones is interpolated linearly (the step's time grows with the number of blocks)."""
    pts = sorted((r["depth"], r["ms_per_it"] / 1e3) for r in rows
                 if r["variant"] == BUDGET_VARIANT and r["ms_per_it"])
    return [d for d, _ in pts], [s for _, s in pts]


def full_budget(by_depth: tuple[list[int], list[float]], overhead: float,
                speedup: float) -> dict[str, Any]:
    """Part 4: the full plan's hours, one member at a time and with the best --jobs measured."""
    p = plan("full", "cifar10")
    seconds = sum((m.recipe.iters or PAPER_ITERS) * overhead
                  * float(np.interp(get_arch(m.recipe.model).depth, *by_depth))
                  for m in p.members)
    return {"runs": len(p.members), "hours_one_at_a_time": round(seconds / 3600, 2),
            "hours_with_jobs": round(seconds / 3600 / speedup, 2),
            "jobs_speedup": round(speedup, 3),
            "how": "extrapolated, not measured: the sum over the plan's members of iterations x "
                   "the bare step's seconds at its depth (interpolated between the measured "
                   "depths) x the member's overhead over its bare step, / the best --jobs "
                   "speed-up measured"}


def measure_member(args: argparse.Namespace, size: dict[str, Any], dev: torch.device,
                   steps: list[dict[str, Any]], together: tuple[int, ...]) -> dict[str, Any]:
    """Parts 2 and 3: the member alone, then `together` copies of it at once."""
    with tempfile.TemporaryDirectory() as tmp:
        root = Path(tmp)
        data = cifar_files(root / "data", size["train_images"], size["test_images"])
        iters = size["epochs"] * (size["train_images"] // size["batch"])
        recipe = member_recipe(args.member, data, iters, dev, size["batch"], args.tiny)
        one = train_members(recipe, root, 1)
        per_it = one["train_s"][0] / iters
        startup = one["wall_s"] - one["train_s"][0]
        bare = next((r["ms_per_it"] / 1e3 for r in steps if r["model"] == recipe.model
                     and r["variant"] == BUDGET_VARIANT), None)
        member = {**one, "model": recipe.model, "s_per_it": round(per_it, 5),
                  "startup_s": round(startup, 2),
                  "overhead_vs_bare_step": round(per_it / bare, 3) if bare else None,
                  "extrapolated_64k_h": round((startup + PAPER_ITERS * per_it) / 3600, 3),
                  "note": f"{iters} iterations measured; 64k extrapolated, not measured"}
        runs = []
        for j in together:
            if left(args.budget_s) < 1.5 * j * one["wall_s"]:
                runs.append({"processes": j, "note": "not measured (time budget)"})
                continue
            r = train_members(recipe, root, j)
            r["speedup_vs_one"] = round(r["aggregate_it_s"] / one["aggregate_it_s"], 3)
            runs.append(r)
    return {"member": member, "together": runs}


def compiled_steps(steps: list[dict[str, Any]], timed: dict[str, Any], backend: str | None,
                   budget_s: float) -> list[dict[str, Any]]:
    """Part 1's compiled variants, net by net while the budget has room for the next one's
    compilation (guessed from the last net's, in proportion to depth), appended to `steps`;
    returns the (model, variant)s not measured and why."""
    compiled = [v for v, (_, _, c) in VARIANTS.items() if c]
    skipped, last = [], None   # last: (depth, seconds) of the previous net's compiled timing
    for name in timed["models"]:
        depth = get_arch(name).depth
        guess = last[1] * depth / last[0] if last else 0.4 * budget_s
        why = ("--no-compile" if backend is None else
               "time budget" if left(budget_s) < guess else None)
        if why:
            skipped += [{"model": name, "variant": v, "note": f"not measured ({why})"}
                        for v in compiled]
            continue
        t0 = time.perf_counter()
        steps += time_nets(**{**timed, "models": (name,)}, variants=compiled, backend=backend)
        last = (depth, time.perf_counter() - t0)
    return skipped


def main() -> None:
    args = parse_args()
    prepare(args)
    size = SIZES["tiny" if args.tiny else "full"]
    dev = select_device(args.device)
    backend = None if args.no_compile else (args.compile_backend
                                            or ("eager" if args.tiny else "inductor"))
    together = size["together"] if args.together is None else tuple(args.together)
    setup = {"device": str(dev), "device_name": device_name(dev), "tiny": args.tiny,
             "batch": size["batch"], "input": f"3x{size['side']}x{size['side']}",
             "bf16_native": bf16_supported(dev), "compile_backend": backend,
             "member": args.member, "synthetic_data": "random 32x32 pixels in CIFAR-10's "
             f"format, {size['train_images']:,} training and {size['test_images']:,} test "
             "images"}
    print(f"{setup['device_name']} ({dev}); torch {torch.__version__}", flush=True)
    timed = dict(models=size["models"], batch=size["batch"], side=size["side"], dev=dev,
                 iters=size["timed_iters"], rounds=size["rounds"])
    # Part 1's eager variants, parts 2-3, then the compiled variants (the least predictable
    # time) while the budget has room for them, then part 4.
    steps = time_nets(variants=[v for v, (_, _, c) in VARIANTS.items() if not c], **timed)
    results: dict[str, Any] = {**measure_member(args, size, dev, steps, together)}
    results["steps"] = steps
    results["steps_not_measured"] = compiled_steps(steps, timed, backend, args.budget_s)
    print_table("training steps (iterations/s, best of interleaved rounds)", steps,
                [("model", "model", ""), ("variant", "variant", ""), ("it_s", "it/s", ".1f"),
                 ("ms_per_it", "ms/it", ".2f")])
    speedups = [r["speedup_vs_one"] for r in results["together"] if "speedup_vs_one" in r]
    overhead = results["member"]["overhead_vs_bare_step"]
    if overhead:
        results["full_budget"] = fb = full_budget(step_seconds(steps), overhead,
                                                  max([1.0, *speedups]))
        print(f"\nfull budget ({fb['runs']} runs), extrapolated: {fb['hours_one_at_a_time']} h "
              f"one at a time, {fb['hours_with_jobs']} h with the best --jobs "
              f"(x{fb['jobs_speedup']})")
    save_results("gpu-paper", setup, results, out=args.out,
                 seconds=round(time.perf_counter() - T0, 1))


if __name__ == "__main__":
    main()

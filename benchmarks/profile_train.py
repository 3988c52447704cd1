"""Where the time goes in `reslab train` on the CPU: the `fast` recipe's model (resnet9p since
2026-12-07, resnet14 in the earliest committed profiles; any with --model) on Fashion-MNIST at its
native 28 px, the recipe's batch (256) and settings
(channels-last, and the precision its `amp = "auto"` picks here: bf16 on CPUs that run it
natively, else fp32) against fp32 NCHW.

    python benchmarks/profile_train.py [--model resnet20] [--iters 30] [--profile-iters 8]

For each setting (their iterations alternated, so that other load hits both alike): the
training step of reslab.engine.loop (same data pipeline, model, optimizer, schedule and loss)
split by timers into data (batched augmentation on in-memory tensors), forward (with the
loss), backward, optimizer (zero_grad, step) and bookkeeping (loss.item, the running accuracy
tally). Then torch.profiler over a few steps groups the operators' own time by kind
(convolutions, batch norm, casts and copies, ...); the time outside operators is the Python
overhead. One pass over the 10,000 test images times an evaluation, and the once-per-process
costs (imports, loading and decompressing the dataset) are timed too. Prints tables and writes
docs/results/training-speed-profile.json.

The hardware limit: each phase's achieved GFLOP/s against this machine's measured peak in the
setting's precision (common.measure_peaks: the best of the fp32 GEMMs and a large 3x3
convolution; bf16 too where it runs natively). The work counted: forward 2 x the model's
conv/fc MACs (reslab.analysis.macs), backward twice the forward (the input and the weight
gradients; BN, ReLU and additions not counted, as the paper counts), the optimizer 8 flops per
parameter (weight decay, momentum, Nesterov, update) and, under muon, the Newton-Schulz
products of each filter bank (engine.muon.orthogonalize_flops); data and bookkeeping count
none: their time is all overhead measured against the peak.
"""
from __future__ import annotations

import argparse
import math
import os
import re
import statistics
import time
from pathlib import Path

T_START = time.perf_counter()  # before the heavy imports: they are part of a run's start-up
os.environ.setdefault("KINETO_LOG_LEVEL", "5")  # the profiler's start/stop chatter on stderr

import torch  # noqa: E402
import torch.nn.functional as F  # noqa: E402
from torch.profiler import ProfilerActivity, profile  # noqa: E402

from common import (RESULTS, Peak, add_threads_option, measure_peaks,  # noqa: E402
                    prepare, print_table, save_results)
from reslab.analysis.macs import count_macs  # noqa: E402
from reslab.data import load_data  # noqa: E402
from reslab.engine.evaluate import Tally, evaluate  # noqa: E402
from reslab.engine.muon import orthogonalize_flops  # noqa: E402
from reslab.engine.recipe import Recipe, load_recipe  # noqa: E402
from reslab.engine.schedule import ScheduleState, lr_at  # noqa: E402
from reslab.engine.setup import (build_model, build_optimizer, resolve_amp,  # noqa: E402
                                 select_device, set_lr)

PHASES = ("data", "forward", "backward", "optimizer", "bookkeeping")
OPTIMIZER_FLOPS_PER_PARAM = 8  # SGD: + wd * p, momentum buffer, Nesterov look-ahead, update
# Operator kinds: the first pattern (re.search on the op's name, any case) that matches wins.
KINDS = (("conv backward", r"convolution_backward"),
         ("conv forward", r"convolution|conv2d"),
         ("batch norm", r"batch_norm"),
         ("relu", r"relu|threshold_backward|clamp_min"),
         ("optimizer", r"_foreach|sgd"),
         ("casts and copies", r"^aten::(to|_to_copy|copy_|contiguous|clone)$"),
         ("loss, pool, fc", r"cross_entropy|softmax|nll_loss|avg_pool|"
                            r"^aten::(mean|linear|addmm|mm|t)$"),
         # add: the residual sum; add_: mostly autograd summing the gradients of the two
         # paths where the shortcut branches off
         ("residual adds, option-A pad", r"^aten::(add|add_|pad|constant_pad_nd|slice|cat)$"),
         ("allocation, views", r"^aten::(empty\w*|view|reshape|as_strided|expand|transpose|"
                               r"permute|zero_|zeros|fill_|zeros_like|empty_like)$"))

def settings(device: torch.device) -> dict[str, dict[str, object]]:
    """The fast recipe's setting (channels-last, amp as "auto" resolves here) and fp32 NCHW."""
    bf16 = resolve_amp("auto", device) is torch.bfloat16
    return {f"channels_last + {'bf16' if bf16 else 'fp32'} (fast)":
            {"channels_last": True, "amp": "bf16" if bf16 else "off"},
            "fp32 NCHW": {"channels_last": False, "amp": "off"}}


def phase_gflop(r: Recipe, data, batch: int) -> dict[str, float]:
    """The counted work of each phase of one iteration, in GFLOP (see the module docstring)."""
    model = build_model(r, len(data.class_names), data.in_chans)
    forward = 2 * count_macs(model, (batch, *data.input_size)) / 1e9
    params = sum(p.numel() for p in model.parameters())
    optimizer = OPTIMIZER_FLOPS_PER_PARAM * params
    if r.optimizer == "muon":  # + the Newton-Schulz products of each filter bank
        optimizer += sum(orthogonalize_flops(len(p), p[0].numel())
                         for p in model.parameters() if p.ndim > 2)
    work = {"data": 0.0, "forward": forward, "backward": 2 * forward,
            "optimizer": optimizer / 1e9, "bookkeeping": 0.0}
    return work | {"total": sum(work.values())}


def against_peak(rows: list[dict[str, object]], work: dict[str, float], peak: Peak) -> None:
    """Adds each phase's GFLOP, achieved GFLOP/s and share of the peak to its row."""
    for row in rows:
        gflop = work[row["phase"]]
        rate = gflop / (row["ms_median"] / 1e3) if row["ms_median"] else 0.0
        row.update(gflop=round(gflop, 4), gflop_s=round(rate, 2),
                   of_peak=round(rate / peak.gflop_s, 4))


def parse_args() -> argparse.Namespace:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--model", help="architecture (default: the fast recipe's)")
    p.add_argument("--iters", type=int, default=30, help="timed iterations per setting")
    p.add_argument("--warmup", type=int, default=5, help="untimed first iterations")
    p.add_argument("--profile-iters", type=int, default=8)
    p.add_argument("--batch-size", type=int, help="default: the fast recipe's")
    p.add_argument("--no-eval", action="store_true", help="skip the test-set evaluation pass")
    add_threads_option(p)
    p.add_argument("--out", type=Path, default=RESULTS / "training-speed-profile.json")
    return p.parse_args()


class Trainer:
    """The loop's training step (reslab.engine.loop._train_step), phase by phase."""

    def __init__(self, r: Recipe, data, device: torch.device) -> None:
        self.r, self.data, self.device = r, data, device
        torch.manual_seed(r.seed)
        self.model = build_model(r, len(data.class_names), data.in_chans).to(device)
        if r.channels_last:
            self.model.to(memory_format=torch.channels_last)
        self.opt = build_optimizer(r, self.model)
        self.amp = {"bf16": torch.bfloat16, "fp16": torch.float16}.get(r.amp)
        self.scaler = torch.amp.GradScaler(device.type, enabled=self.amp is torch.float16)
        self.sched, self.tally, self.step_no = ScheduleState(), Tally(device), 0
        self.total = 1000
        self.batches = data.train_batches(0, r.batch_size, device, seed=r.seed)

    def next_batch(self) -> tuple[torch.Tensor, torch.Tensor]:
        x, y = next(self.batches)
        if self.r.channels_last:
            x = x.contiguous(memory_format=torch.channels_last)
        return x, y

    def forward(self, x: torch.Tensor, y: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        set_lr(self.opt, lr_at(self.step_no, self.total, self.r, self.sched))
        self.model.train()
        with torch.autocast(self.device.type, dtype=self.amp or torch.bfloat16,
                            enabled=self.amp is not None):
            logits = self.model(x)
            loss = F.cross_entropy(logits.float(), y, label_smoothing=self.r.label_smoothing)
        return logits, loss

    def backward(self, loss: torch.Tensor) -> None:
        self.opt.zero_grad(set_to_none=True)
        self.scaler.scale(loss).backward()

    def update(self) -> None:
        self.scaler.step(self.opt)
        self.scaler.update()
        self.step_no += 1

    def bookkeeping(self, logits: torch.Tensor, y: torch.Tensor, loss: torch.Tensor) -> float:
        value = loss.item()
        if not math.isfinite(value):
            raise SystemExit(f"loss is {value}")
        with torch.no_grad():
            self.tally.add(logits.detach().float(), y, loss.detach() * len(y))
        return value

    def step(self, x: torch.Tensor, y: torch.Tensor) -> None:
        logits, loss = self.forward(x, y)
        self.bookkeeping(logits, y, loss)
        self.backward(loss)
        self.update()


def timed_iteration(t: Trainer, times: dict[str, list[float]]) -> None:
    """One iteration, its phases' seconds appended to `times` (the loop's order: the loss is
    read before backward)."""
    clock = time.perf_counter
    t0 = clock()
    x, y = t.next_batch()
    t1 = clock()
    logits, loss = t.forward(x, y)
    t2 = clock()
    t.bookkeeping(logits, y, loss)
    t3 = clock()
    t.backward(loss)
    t4 = clock()
    t.update()
    t5 = clock()
    for phase, seconds in (("data", t1 - t0), ("forward", t2 - t1), ("bookkeeping", t3 - t2),
                           ("backward", t4 - t3), ("optimizer", t5 - t4), ("total", t5 - t0)):
        times[phase].append(seconds)


def timed_iterations(trainers: dict[str, Trainer], iters: int, warmup: int
                     ) -> dict[str, dict[str, list[float]]]:
    """Seconds per phase per iteration of each trainer, the trainers' iterations alternated so
    that other processes' load falls on all of them alike."""
    for t in trainers.values():
        for _ in range(warmup):  # oneDNN builds its kernels on the first iterations
            t.step(*t.next_batch())
    times = {name: {p: [] for p in PHASES + ("total",)} for name in trainers}
    for _ in range(iters):
        for name, t in trainers.items():
            timed_iteration(t, times[name])
    return times


def kind_of(name: str) -> str:
    return next((kind for kind, pattern in KINDS if re.search(pattern, name, re.IGNORECASE)),
                "other ops")


def op_breakdown(t: Trainer, iters: int) -> dict[str, object]:
    """Operators' own (self) CPU time by kind over `iters` steps, batches prepared beforehand
    (the data phase is timed separately)."""
    batches = [t.next_batch() for _ in range(iters)]
    start = time.perf_counter()
    with profile(activities=[ProfilerActivity.CPU]) as prof:
        for x, y in batches:
            t.step(x, y)
    wall_us = (time.perf_counter() - start) * 1e6
    kinds: dict[str, float] = {}
    ops = []
    for e in prof.key_averages():
        us = e.self_cpu_time_total
        if us <= 0:
            continue
        kinds[kind_of(e.key)] = kinds.get(kind_of(e.key), 0.0) + us
        ops.append((us, e.key))
    in_ops = sum(kinds.values())
    ops.sort(reverse=True)
    return {"by_kind": [{"kind": k, "ms_per_iter": round(v / iters / 1e3, 2),
                         "share": round(v / in_ops, 4)}
                        for k, v in sorted(kinds.items(), key=lambda kv: -kv[1])],
            "top_ops": [{"op": name, "ms_per_iter": round(us / iters / 1e3, 2),
                         "share": round(us / in_ops, 4)} for us, name in ops[:12]],
            "ops_share_of_wall": round(in_ops / wall_us, 4),
            "note": "self CPU time of the operators on the main thread; the rest of the "
                    "profiled wall time (ops_share_of_wall below 1) is Python and dispatch "
                    "outside operators, plus the profiler's own overhead"}


def summarize(times: dict[str, list[float]], batch: int) -> list[dict[str, object]]:
    """Per phase: median and mean ms per iteration, and the share of the sum of the medians
    (medians: the least disturbed by other processes on a shared machine)."""
    med = {k: statistics.median(v) for k, v in times.items()}
    phase_sum = sum(med[p] for p in PHASES)
    rows = [{"phase": p, "ms_median": round(1e3 * med[p], 2),
             "ms_mean": round(1e3 * statistics.fmean(times[p]), 2),
             "share": round(med[p] / phase_sum, 4)} for p in PHASES + ("total",)]
    rows[-1]["share"] = 1.0
    rows[-1]["img_s"] = round(batch / med["total"], 1)
    return rows


def main() -> None:
    args = parse_args()
    prepare(args)
    device = select_device("cpu")
    base = load_recipe("fast", {"model": args.model} | (
        {"batch_size": args.batch_size} if args.batch_size else {}))
    args.batch_size = base.batch_size
    imports_s = time.perf_counter() - T_START
    t = time.perf_counter()
    data = load_data(base.data, data_dir=base.data_dir, seed=base.seed, normalize=base.normalize,
                     augment=base.augment, pad=base.pad, workers=base.workers)
    load_s = time.perf_counter() - t
    print(f"start-up: imports {imports_s:.1f} s, loading {data} {load_s:.1f} s", flush=True)
    peaks = measure_peaks()
    changes = settings(device)
    trainers = {name: Trainer(base.replace(**change), data, device)
                for name, change in changes.items()}
    print(f"{' and '.join(trainers)}: {args.warmup} + {args.iters} alternated iterations ...",
          flush=True)
    times = timed_iterations(trainers, args.iters, args.warmup)
    results = {}
    for name, trainer in trainers.items():
        print(f"{name}: {args.profile_iters} profiled iterations ...", flush=True)
        phases = summarize(times[name], args.batch_size)
        peak = peaks["bf16" if trainer.amp is torch.bfloat16 else "fp32"]
        against_peak(phases, phase_gflop(trainer.r, data, args.batch_size), peak)
        ops = op_breakdown(trainer, args.profile_iters)
        entry = {"phases": phases, "ops": ops, "peak": peak.__dict__}
        if not args.no_eval:
            t = time.perf_counter()
            evaluate(trainer.model, data.eval_batches("test", max(256, args.batch_size), device),
                     device=device, autocast_dtype=trainer.amp)
            entry["test_eval_s"] = round(time.perf_counter() - t, 2)
        results[name] = entry
        print_table(f"{name}: per iteration, batch {args.batch_size} "
                    f"({phases[-1]['img_s']} img/s; {peak.precision} peak "
                    f"{peak.gflop_s:.1f} GFLOP/s)", phases,
                    (("phase", "phase", ""), ("ms_median", "ms median", ".1f"),
                     ("ms_mean", "ms mean", ".1f"), ("share", "share", ".1%"),
                     ("gflop", "GFLOP", ".3f"), ("gflop_s", "GFLOP/s", ".1f"),
                     ("of_peak", "of peak", ".1%")))
        print_table(f"{name}: operators' own time by kind ({ops['ops_share_of_wall']:.1%} of "
                    "the profiled wall time is inside operators, the rest is Python)",
                    ops["by_kind"],
                    (("kind", "kind", ""), ("ms_per_iter", "ms/iter", ".1f"),
                     ("share", "share", ".1%")), machine=False)
        if "test_eval_s" in entry:
            print(f"one test-set evaluation (10,000 images): {entry['test_eval_s']:.1f} s "
                  "(the fast recipe's test-time flip doubles it)")
    fast_name, fp32_name = changes
    fast, fp32 = (results[k]["phases"][-1]["ms_median"] for k in changes)
    print(f"\n{fast_name} vs {fp32_name}: {fp32 / fast:.2f}x per iteration (medians)")
    setup = {"model": base.model, "data": base.data, "batch_size": args.batch_size,
             "iters": args.iters, "warmup": args.warmup, "profile_iters": args.profile_iters,
             "recipe": f"fast (lr schedule, {base.optimizer}, label smoothing, crop-flip pad 2)",
             "settings": changes, "device": "cpu",
             "work": "forward 2 x conv/fc MACs, backward 2 x forward, optimizer "
                     f"{OPTIMIZER_FLOPS_PER_PARAM} flops per parameter (muon: + the "
                     "Newton-Schulz products of each filter bank); data and bookkeeping none"}
    save_results("profile_train", setup, results, out=args.out,
                 peaks={k: p.__dict__ for k, p in peaks.items()},
                 startup={"imports_s": round(imports_s, 2), "load_data_s": round(load_s, 2)},
                 speedup_fast_vs_fp32=round(fp32 / fast, 3))


if __name__ == "__main__":
    main()

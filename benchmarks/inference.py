"""CPU inference throughput, side by side in one process, all with the same weights:
torchvision eager and torchvision channels-last (the conventional ways) vs reslab eager,
reslab.deploy.optimize_for_inference (BN folded, channels-last, torch.compile when it helps) and
quantize_int8; resnet18 and resnet50, batch 1 and 16, 224 px, fp32 (the int8 row: int8).

    python benchmarks/inference.py [--models resnet18 resnet50] [--batches 1 16] [--rounds 3]

Prints a table (img/s, speed-up over torchvision eager, achieved GFLOP/s = 2 * MACs * img/s,
and its share of the machine's measured fp32 matmul peak) and writes
docs/results/inference.json. Each variant warms up, gets as many batches per round as fill
--target-s seconds, and keeps its best of --rounds interleaved rounds.
"""
from __future__ import annotations

import argparse
import copy
import time
from pathlib import Path

import torch

from common import (RESULTS, add_threads_option, measure_peak, prepare, print_table,
                    save_results)
from reslab import create_model
from reslab.analysis.macs import count_macs
from reslab.deploy import optimize_for_inference, quantize_int8
from reslab.bench import Step, inference_step, time_steps, torchvision_twin

BASELINE = "torchvision eager"
COLUMNS = (("model", "model", ""), ("batch", "batch", "d"), ("variant", "variant", ""),
           ("img_s", "img/s", ".1f"), ("ms_per_batch", "ms/batch", ".1f"),
           ("vs_torchvision", "vs tv", ".2f"), ("gflop_s", "GFLOP/s", ".1f"),
           ("peak_share", "% peak", ".1%"))


def parse_args() -> argparse.Namespace:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--models", nargs="+", default=["resnet18", "resnet50"])
    p.add_argument("--batches", nargs="+", type=int, default=[1, 16])
    p.add_argument("--size", type=int, default=224)
    p.add_argument("--rounds", type=int, default=3)
    p.add_argument("--target-s", type=float, default=0.5,
                   help="seconds of timed batches per variant per round")
    p.add_argument("--compile", default="auto", choices=("auto", "on", "off"),
                   help="torch.compile in optimize_for_inference (auto: keep it if faster)")
    p.add_argument("--no-int8", action="store_true")
    add_threads_option(p)
    p.add_argument("--out", type=Path, default=RESULTS / "inference.json")
    return p.parse_args()


def check_agreement(variants: dict[str, Step]) -> dict[str, dict[str, float]]:
    """Each variant's outputs against torchvision eager's: the rewrites must keep the function
    (fp32 rounding for the optimized model, a little more for int8)."""
    with torch.inference_mode():
        ref = variants[BASELINE]()
        out = {}
        for name, fn in variants.items():
            y = fn()
            out[name] = {"max_abs_diff": (y - ref).abs().max().item(),
                         "argmax_agreement": (y.argmax(1) == ref.argmax(1)).float().mean().item()}
    return out


def variants_for(name: str, batch: int, args: argparse.Namespace,
                 int8: torch.nn.Module | None) -> dict[str, Step]:
    torch.manual_seed(0)
    ours = create_model(name).eval()
    tv = torchvision_twin(ours, name)
    if tv is None:
        raise SystemExit(f"torchvision has no {name}: this benchmark compares ImageNet models")
    tv = tv.eval()
    tv_cl = copy.deepcopy(tv).to(memory_format=torch.channels_last)
    x = torch.randn(batch, 3, args.size, args.size, generator=torch.Generator().manual_seed(0))
    t = time.perf_counter()
    fast = optimize_for_inference(ours, x, compile={"auto": "auto", "on": True,
                                                    "off": False}[args.compile])
    print(f"  optimize_for_inference: {time.perf_counter() - t:.0f} s "
          f"({fast.optimized_with})", flush=True)
    label = "fold+CL" + ("+compile" if fast.optimized_with["compiled"] else "")
    variants = {BASELINE: inference_step(tv, x),
                "torchvision channels_last": inference_step(tv_cl, x, channels_last=True),
                "reslab eager": inference_step(ours, x),
                f"reslab optimized ({label})": inference_step(fast, x)}
    if int8 is not None:
        variants["reslab int8 (PT2E, x86 inductor)"] = inference_step(int8, x)
    return variants


def main() -> None:
    args = parse_args()
    prepare(args)
    peaks = [measure_peak()]
    rows, agreement = [], {}
    for name in args.models:
        macs = count_macs(create_model(name).eval(), (1, 3, args.size, args.size))
        int8 = None
        if not args.no_int8:
            t = time.perf_counter()
            torch.manual_seed(0)  # the same weights as variants_for's models
            calib = [torch.randn(4, 3, args.size, args.size,
                                 generator=torch.Generator().manual_seed(i)) for i in (1, 2)]
            int8 = quantize_int8(create_model(name).eval(), calib)
            print(f"{name}: quantize_int8 {time.perf_counter() - t:.0f} s", flush=True)
        for batch in args.batches:
            print(f"{name}, batch {batch}:", flush=True)
            variants = variants_for(name, batch, args, int8)
            agreement[f"{name}/b{batch}"] = check_agreement(variants)
            seconds = time_steps(variants, rounds=args.rounds, target_s=args.target_s)
            base = seconds[BASELINE]
            for variant, s in seconds.items():
                rows.append({"model": name, "batch": batch, "variant": variant,
                             "img_s": round(batch / s, 2), "ms_per_batch": round(1e3 * s, 2),
                             "vs_torchvision": round(base / s, 3),
                             "gflop_s": round(2 * macs * batch / s / 1e9, 2)})
    # The peak again at the end: the best of both is the least disturbed by other load.
    peaks.append(measure_peak())
    peak = max(v for p in peaks for v in p.values())
    for r in rows:  # int8 rows too, against the fp32 peak: how far past fp32 int8 gets
        r["peak_share"] = round(r["gflop_s"] / peak, 4)
    print_table(f"Inference, {args.size}px fp32 (int8 row: int8); fp32 matmul peak "
                f"{peak:.1f} GFLOP/s", rows, COLUMNS)
    setup = {"models": args.models, "batches": args.batches, "input": [3, args.size, args.size],
             "dtype": "float32 (int8 rows: int8 weights and activations)", "device": "cpu",
             "rounds": args.rounds, "target_s_per_round": args.target_s,
             "compile": args.compile, "fp32_matmul_peak_gflop_s": round(peak, 1),
             "peak_measurements_gflop_s": [{k: round(v, 1) for k, v in p.items()}
                                           for p in peaks],
             "peak": "the best fp32 2048x2048 GEMM rate of torch.matmul (MKL) and oneDNN, "
                     "measured before and after the models",
             "gflop_s": "2 * MACs per image (reslab.analysis.macs) * img/s",
             "timing": "best round per variant, rounds interleaved, warmed up first",
             "weights": "random, identical in every variant (torchvision loads reslab's)"}
    save_results("inference", setup, rows, out=args.out, agreement=agreement)


if __name__ == "__main__":
    main()

"""CPU inference throughput, side by side in one process: torchvision's eager model, reslab's
eager model, reslab.deploy.optimize_for_inference (BN folded, channels-last, torch.compile when
it helps) and quantize_int8, all with the same weights.

    python benchmarks/inference.py [--model resnet50] [--batch-size 16] [--size 224]

Prints a table (img/s, speed-up over torchvision eager) and writes docs/results/inference.json.
Variants are timed in interleaved rounds and each keeps its best round, so a burst of load
from other processes hurts every variant alike instead of one.
"""
from __future__ import annotations

import argparse
import json
import platform
import time
from collections.abc import Callable
from pathlib import Path

import torch
import torchvision

from reslab import create_model
from reslab.deploy import optimize_for_inference, quantize_int8

ROOT = Path(__file__).resolve().parents[1]


def parse_args() -> argparse.Namespace:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--model", default="resnet50")
    p.add_argument("--batch-size", type=int, default=16)
    p.add_argument("--size", type=int, default=224)
    p.add_argument("--iters", type=int, default=3, help="timed batches per round")
    p.add_argument("--rounds", type=int, default=2)
    p.add_argument("--compile", default="auto", choices=("auto", "on", "off"))
    p.add_argument("--no-int8", action="store_true")
    p.add_argument("--out", type=Path, default=ROOT / "docs" / "results" / "inference.json")
    return p.parse_args()


def cpu_name() -> str:
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return platform.processor() or platform.machine()


def seconds_per_batch(fn: Callable[[torch.Tensor], torch.Tensor], x: torch.Tensor,
                      iters: int) -> float:
    with torch.inference_mode():
        start = time.perf_counter()
        for _ in range(iters):
            fn(x)
        return (time.perf_counter() - start) / iters


def build_variants(args: argparse.Namespace, x: torch.Tensor
                   ) -> dict[str, Callable[[torch.Tensor], torch.Tensor]]:
    torch.manual_seed(0)
    ours = create_model(args.model).eval()
    # Same architecture, same names (torchvision layout): the same weights load strictly.
    tv = getattr(torchvision.models, args.model)().eval()
    tv.load_state_dict(ours.state_dict())
    compile_mode = {"auto": "auto", "on": True, "off": False}[args.compile]
    variants = {"torchvision eager": tv, "reslab eager": ours}
    t = time.perf_counter()
    fast = optimize_for_inference(ours, x, compile=compile_mode)
    label = "+compile" if fast.optimized_with["compiled"] else ""
    print(f"optimize_for_inference: {time.perf_counter() - t:.0f} s "
          f"({fast.optimized_with})", flush=True)
    variants[f"reslab optimized (fold+CL{label})"] = fast
    if not args.no_int8:
        t = time.perf_counter()
        calib = [torch.randn(x.shape, generator=torch.Generator().manual_seed(i)) for i in (1, 2)]
        variants["reslab int8 (FX, x86)"] = quantize_int8(ours, calib)
        print(f"quantize_int8: {time.perf_counter() - t:.0f} s", flush=True)
    with torch.inference_mode():
        ref = tv(x)
        for name, fn in variants.items():
            out = fn(x)  # also the warm-up: kernel selection, weight packing, compilation
            diff = (out - ref).abs().max().item()
            agree = (out.argmax(1) == ref.argmax(1)).float().mean().item()
            print(f"  {name}: max abs diff vs torchvision {diff:.2e}, argmax agreement "
                  f"{agree:.0%}", flush=True)
    return variants


def main() -> None:
    args = parse_args()
    x = torch.randn(args.batch_size, 3, args.size, args.size,
                    generator=torch.Generator().manual_seed(0))
    variants = build_variants(args, x)
    best = {name: float("inf") for name in variants}
    for _ in range(args.rounds):
        for name, fn in variants.items():
            best[name] = min(best[name], seconds_per_batch(fn, x, args.iters))
    base = args.batch_size / best["torchvision eager"]
    rows = [{"variant": name, "img_s": round(args.batch_size / s, 2),
             "ms_per_batch": round(1000 * s, 1),
             "speedup_vs_torchvision": round(args.batch_size / s / base, 2)}
            for name, s in best.items()]
    setup = {"model": args.model, "batch_size": args.batch_size,
             "input": [3, args.size, args.size], "dtype": "float32 (int8 row: int8)",
             "device": "cpu", "cpu": cpu_name(), "threads": torch.get_num_threads(),
             "torch": torch.__version__, "torchvision": torchvision.__version__,
             "iters_per_round": args.iters, "rounds": args.rounds,
             "timing": "best round per variant, rounds interleaved"}
    print(f"\n{args.model}, batch {args.batch_size}, {args.size}px, {setup['cpu']}, "
          f"{setup['threads']} threads, torch {torch.__version__}")
    print(f"{'variant':<38} {'img/s':>8} {'ms/batch':>9} {'vs tv':>6}")
    for r in rows:
        print(f"{r['variant']:<38} {r['img_s']:>8.1f} {r['ms_per_batch']:>9.1f} "
              f"{r['speedup_vs_torchvision']:>5.2f}x")
    args.out.parent.mkdir(parents=True, exist_ok=True)
    args.out.write_text(json.dumps({"setup": setup, "results": rows}, indent=2) + "\n")
    print(f"wrote {args.out}")


if __name__ == "__main__":
    main()

"""`reslab bench MODEL`: inference and training throughput on this machine, side by side with
the conventional way (torchvision's same architecture; reslab eager NCHW for the CIFAR family,
which torchvision lacks)."""
from __future__ import annotations

import argparse
import sys

from ..errors import UserError
from ..limits import MAX_THREADS, check_int
from ..text import format_table, plural
from .common import (add_batch_size_option, add_device_option, add_json_option,
                     add_runtime_option, add_threads_option, parse_input_shape, print_json)

COLUMNS = (("variant", "variant", ""), ("img_s", "img/s", ".1f"),
           ("ms_per_batch", "ms/batch", ".1f"), ("vs_baseline", "vs baseline", ".2f"))
PRECISION = (("variant", "variant", ""), ("img_s", "img/s", ".1f"),
             ("ms_per_batch", "ms/batch", ".1f"), ("vs_torch_fp32", "vs torch fp32", ".2f"),
             ("vs_ort_fp32", "vs ORT fp32", ".2f"), ("top1_agreement", "top-1 agree", ".2%"),
             ("note", "note", ""))


def add_parser(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser("bench", help="throughput side by side with torchvision",
                       description=__doc__)
    p.add_argument("model", metavar="MODEL", help="architecture name (see `reslab models`)")
    add_batch_size_option(p, None, "N of --input, else 16 ImageNet family, 128 CIFAR")
    p.add_argument("--input", metavar="[Nx]CxHxW",
                   help="input shape (default: 3x224x224 ImageNet family, 3x32x32 CIFAR)")
    p.add_argument("--iters", type=int, metavar="N",
                   help="timed batches per round (default: as many as fill ~0.5 s)")
    p.add_argument("--rounds", type=int, default=2, metavar="N",
                   help="interleaved rounds; each variant keeps its best (default 2)")
    p.add_argument("--compile", choices=("off", "auto", "on"), default="off",
                   help="torch.compile in the optimized inference variant: off (default; "
                        "compiling takes a minute), on, or auto (keep it if faster)")
    add_threads_option(p, "torch", "torch's choice, one per core")
    add_device_option(p)
    add_runtime_option(p)
    p.add_argument("--precision", action="store_true",
                   help="also time bf16 (where the CPU has it natively) and int8 (PT2E and ONNX "
                        "Runtime QDQ) against both fp32 runtimes, with top-1 agreement")
    add_json_option(p)
    p.set_defaults(func=run)


def _shape(text: str | None) -> tuple[int, ...] | None:
    if text is None:
        return None
    dims = [d for d in text.lower().replace(" ", "").split("x") if d]
    if len(dims) == 3:  # CxHxW: parse_input_shape adds the batch dimension
        return parse_input_shape(text)[1:]
    return parse_input_shape(text)


def run(args: argparse.Namespace) -> int:
    from ..bench import bench_model

    for flag, value in (("--batch-size", args.batch_size), ("--iters", args.iters),
                        ("--rounds", args.rounds), ("--threads", args.threads)):
        if value is not None and value < 1:
            raise UserError(f"{flag} must be >= 1, got {value}")
    if args.threads is not None:
        check_int("--threads", args.threads, 1, MAX_THREADS)
    if args.threads:
        import torch

        torch.set_num_threads(args.threads)
    if not args.json:
        print(f"timing {args.model} (warm-up, then {args.rounds} interleaved rounds)...",
              file=sys.stderr, flush=True)
    result = bench_model(args.model, batch_size=args.batch_size, input_shape=_shape(args.input),
                         iters=args.iters, rounds=args.rounds, device=args.device,
                         compile={"off": False, "on": True, "auto": "auto"}[args.compile],
                         runtime=args.runtime, precision=args.precision)
    if args.json:
        print_json(result.to_json())
        return 0
    env = result.environment
    print(f"{result.model} on {result.device} ({env.get('gpu', env['cpu'])}, "
          f"{plural(env['threads'], 'thread')}, torch {env['torch']}), input "
          f"{'x'.join(map(str, result.input))}")
    print(f"baseline: {result.baseline}\n")
    for phase, rows in (("inference", result.inference), ("training", result.training)):
        print(f"{phase}:")
        print(format_table([r.to_json() for r in rows], COLUMNS) + "\n")
    if result.precision is not None:
        print("reduced precision (agreement: with fp32 on the timed batch; random weights):")
        print(format_table([r.to_json() for r in result.precision], PRECISION) + "\n")
    print(f"reslab vs baseline: inference {result.inference_speedup:.2f}x "
          f"({result.chosen}), training {result.training_speedup:.2f}x")
    return 0

"""How fast can fp32 batch-1 inference get on this CPU? The convolutions' floor, measured.

    python benchmarks/batch1_ceiling.py [--models resnet18 resnet50] [--size 224] [--threads N]

For each model at batch 1: torchvision's eager model end to end, and every one of its
convolutions alone (the same shapes, run through PyTorch's oneDNN kernels in both memory
formats, bias added as after BN folding, the faster format kept). The sum of those best
convolution times is what an ideal runtime would still spend if BN, ReLU, the additions,
pooling, layout changes and framework overhead cost nothing: eager / floor is the largest
speed-up any fp32 rewrite that keeps direct convolutions (folding, fusion, compilation,
prepacking) can reach. Also reports the convolutions' achieved GFLOP/s. Writes
docs/results/inference-batch1-ceiling.json.
"""
from __future__ import annotations

import argparse
from pathlib import Path

import torch
import torch.nn.functional as F
from torch import nn

from common import RESULTS, add_threads_option, prepare, print_table, save_results
from reslab import create_model
from reslab.bench import inference_step, time_steps, torchvision_twin

COLUMNS = (("model", "model", ""), ("eager_ms", "torchvision eager ms", ".2f"),
           ("conv_floor_ms", "convolutions alone ms", ".2f"),
           ("conv_gflop_s", "their GFLOP/s", ".0f"), ("ceiling", "ceiling (eager/floor)", ".2f"),
           ("share_cl", "convs faster in NHWC", ""))


def conv_calls(model: nn.Module, x: torch.Tensor) -> list[tuple[nn.Conv2d, torch.Size]]:
    """Every convolution the model runs on x, with the shape of its input."""
    calls: list[tuple[nn.Conv2d, torch.Size]] = []
    hooks = [m.register_forward_pre_hook(lambda mod, args: calls.append((mod, args[0].shape)))
             for m in model.modules() if isinstance(m, nn.Conv2d)]
    with torch.inference_mode():
        model(x)
    for h in hooks:
        h.remove()
    return calls


def best_conv_seconds(conv: nn.Conv2d, shape: torch.Size, target_s: float) -> tuple[float, str]:
    """The faster of NCHW and NHWC for this convolution alone (bias included)."""
    w = conv.weight.detach()
    bias = torch.zeros(w.shape[0])
    x = torch.randn(shape)
    cl = torch.channels_last
    xs, ws = {"NCHW": x, "NHWC": x.contiguous(memory_format=cl)}, \
        {"NCHW": w, "NHWC": w.contiguous(memory_format=cl)}

    def step(fmt: str):
        def run() -> torch.Tensor:
            with torch.inference_mode():
                return F.conv2d(xs[fmt], ws[fmt], bias, conv.stride, conv.padding,
                                conv.dilation, conv.groups)
        return run
    secs = time_steps({fmt: step(fmt) for fmt in xs}, rounds=3, target_s=target_s)
    fmt = min(secs, key=secs.get)
    return secs[fmt], fmt


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--models", nargs="+", default=["resnet18", "resnet50"])
    p.add_argument("--size", type=int, default=224)
    p.add_argument("--target-s", type=float, default=0.05,
                   help="seconds per round for each convolution")
    add_threads_option(p)
    p.add_argument("--out", type=Path, default=RESULTS / "inference-batch1-ceiling.json")
    args = p.parse_args()
    prepare(args)
    rows = []
    for name in args.models:
        torch.manual_seed(0)
        tv = torchvision_twin(create_model(name).eval(), name).eval()
        x = torch.randn(1, 3, args.size, args.size)
        eager = time_steps({"eager": inference_step(tv, x)}, rounds=3, target_s=1.0)["eager"]
        floor, flops, nhwc, cache = 0.0, 0.0, 0, {}
        calls = conv_calls(tv, x)
        for conv, shape in calls:
            key = (tuple(conv.weight.shape), tuple(shape), conv.stride, conv.padding)
            if key not in cache:
                cache[key] = best_conv_seconds(conv, shape, args.target_s)
            secs, fmt = cache[key]
            floor += secs
            nhwc += fmt == "NHWC"
            out_hw = (shape[-2] + 2 * conv.padding[0] - conv.kernel_size[0]) // conv.stride[0] + 1
            out_w = (shape[-1] + 2 * conv.padding[1] - conv.kernel_size[1]) // conv.stride[1] + 1
            flops += 2 * conv.weight.numel() * out_hw * out_w
        rows.append({"model": name, "eager_ms": 1e3 * eager, "conv_floor_ms": 1e3 * floor,
                     "conv_gflop_s": flops / floor / 1e9, "ceiling": eager / floor,
                     "share_cl": f"{nhwc} of {len(calls)}", "conv_gflop": flops / 1e9})
        print(f"{name}: eager {1e3 * eager:.1f} ms, convolutions alone {1e3 * floor:.1f} ms",
              flush=True)
    print_table(f"fp32 batch 1, {args.size} px: the convolutions' floor", rows, COLUMNS)
    save_results("batch1_ceiling", {"models": args.models, "input": [1, 3, args.size, args.size],
                                    "floor": "sum over the model's convolutions of the faster "
                                             "of NCHW/NHWC oneDNN F.conv2d alone, best of 3 "
                                             "rounds"}, rows, out=args.out)


if __name__ == "__main__":
    main()

"""CPU inference runtimes side by side in one process, same weights: torchvision eager, reslab's
PyTorch path (optimize_for_inference runtime="torch": BN folded, channels-last), ONNX Runtime's
default session on reslab's ONNX export (what a user gets without tuning), and reslab's chosen
runtime (runtime="auto": both timed on the batch, the faster kept); resnet18 and resnet50 at
224 px, batch 1 and 16, fp32. Then, with --ckpt, reduced precision on a trained model: bf16,
int8 PT2E and int8 ONNX Runtime (QDQ) against both fp32 runtimes, speed at --precision-batch
and top-1 agreement with fp32 on the checkpoint's whole test split.

    python benchmarks/runtime.py [--models resnet18 resnet50] [--batches 1 16] [--rounds 5]
                                 [--ckpt runs/fmnist-resnet20] [--out docs/results/inference-runtimes.json]
    python benchmarks/runtime.py --auto-vs-ort --out docs/results/inference-auto.json

--auto-vs-ort times only the two that issue 29's criterion compares: runtime="auto" against
ONNX Runtime's default session (auto >= 0.95x of it), both with the same intra-op threads.

Times are medians of interleaved rounds in rotating order (each round: as many calls as fill
--target-s), reslab.deploy.runtime.median_seconds, the timing runtime="auto" chooses by.
"""
from __future__ import annotations

import argparse
import statistics
import time
from pathlib import Path

import torch

from common import RESULTS, add_threads_option, prepare, print_table, save_results
from reslab import create_model
from reslab.bench import inference_step, precision_rows, torchvision_twin
from reslab.deploy import optimize_for_inference
from reslab.deploy.export import onnx_program
from reslab.deploy.runtime import median_seconds

COLUMNS = (("model", "model", ""), ("batch", "batch", "d"), ("variant", "variant", ""),
           ("ms_per_batch", "ms/batch", ".1f"), ("img_s", "img/s", ".1f"),
           ("vs_torchvision", "vs tv eager", ".2f"), ("vs_ort_default", "vs ORT default", ".2f"))
PRECISION = (("variant", "variant", ""), ("ms_per_batch", "ms/batch", ".2f"),
             ("img_s", "img/s", ".1f"), ("vs_torch_fp32", "vs torch fp32", ".2f"),
             ("vs_ort_fp32", "vs ORT fp32", ".2f"), ("top1_agreement", "top-1 agree", ".2%"),
             ("note", "note", ""))
TV, TORCH, ORT, CHOSEN = ("torchvision eager", "reslab torch (fold+CL)",
                          "ONNX Runtime default session", "reslab chosen (auto)")


def parse_args() -> argparse.Namespace:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--models", nargs="+", default=["resnet18", "resnet50"])
    p.add_argument("--batches", nargs="+", type=int, default=[1, 16])
    p.add_argument("--size", type=int, default=224)
    p.add_argument("--rounds", type=int, default=5)
    p.add_argument("--target-s", type=float, default=0.4)
    p.add_argument("--ckpt", type=Path, help="trained checkpoint for the reduced-precision "
                   "table (agreement on its test split)")
    p.add_argument("--precision-batch", type=int, default=16)
    p.add_argument("--auto-vs-ort", action="store_true", help="only reslab's choice (auto) "
                   "and ONNX Runtime's default session")
    add_threads_option(p)
    p.add_argument("--out", type=Path, default=RESULTS / "inference-runtimes.json")
    return p.parse_args()


def ort_default(model: torch.nn.Module, x: torch.Tensor, threads: int):
    """ONNX Runtime as a user would start it: InferenceSession with default options, and the
    intra-op threads every variant gets (ONNX Runtime's own default is every core, torch's
    --threads may be fewer: not the same threads)."""
    import onnxruntime as ort

    options = ort.SessionOptions()
    options.intra_op_num_threads = threads
    session = ort.InferenceSession(onnx_program(model, x).model_proto.SerializeToString(),
                                   options, providers=["CPUExecutionProvider"])
    return lambda z: torch.from_numpy(session.run(None, {"input": z.numpy()})[0])


def fp32_rows(name: str, batch: int, args: argparse.Namespace) -> tuple[list[dict], dict]:
    torch.manual_seed(0)
    ours = create_model(name).eval()
    tv = torchvision_twin(ours, name).eval()
    x = torch.randn(batch, 3, args.size, args.size, generator=torch.Generator().manual_seed(0))
    start = time.perf_counter()
    threads = torch.get_num_threads()  # every runtime gets the same threads
    chosen = optimize_for_inference(ours, x, runtime="auto", compile=False, threads=threads)
    print(f"  auto chose: {chosen.choice.describe()} ({time.perf_counter() - start:.0f} s)",
          flush=True)
    steps = {ORT: inference_step(ort_default(ours, x, threads), x),
             CHOSEN: inference_step(chosen, x)}
    if not args.auto_vs_ort:
        steps = {TV: inference_step(tv, x),
                 TORCH: inference_step(optimize_for_inference(ours, x, runtime="torch",
                                                              compile=False), x), **steps}
    with torch.inference_mode():
        ref = tv(x)
        diffs = {k: float((fn() - ref).abs().max()) for k, fn in steps.items()}
    # the runtime choice's own timing: interleaved, order rotated each round, median round
    seconds = median_seconds(steps, rounds=args.rounds, target_s=args.target_s)
    rows = [{"model": name, "batch": batch, "variant": k, "ms_per_batch": round(1e3 * s, 2),
             "img_s": round(batch / s, 2),
             "vs_torchvision": round(seconds[TV] / s, 3) if TV in seconds else None,
             "vs_ort_default": round(seconds[ORT] / s, 3), "max_abs_diff_vs_tv": diffs[k]}
            for k, s in seconds.items()]
    return rows, {"runtime": chosen.choice.runtime, "seconds": chosen.choice.seconds}


def reduced_precision(ckpt: Path, batch: int, args: argparse.Namespace) -> dict:
    from reslab.weights.checkpoint import load_checkpoint
    from reslab.data import load_data

    model, record = load_checkpoint(ckpt)
    pre, spec = record.preprocess, record.data.spec
    data = load_data(spec, stats=pre.stats(), image_size=pre.input_size[-1],
                     normalize=pre.normalize, augment="none", crop_fraction=pre.crop_fraction)
    test = [b for b, _ in data.eval_batches("test", batch, "cpu")]
    test = [b for b in test if len(b) == batch]  # one shape: PT2E compiles per batch size
    calibration = [b for b, _ in data.eval_batches("train", 64, "cpu")][:8]  # 512 images
    x = test[0]
    fp32 = {"torch": optimize_for_inference(model, x, runtime="torch", compile=False),
            "onnxruntime": optimize_for_inference(model, x, runtime="onnxruntime",
                                                  threads=torch.get_num_threads())}
    rows = [r.to_json() for r in precision_rows(
        model, x, fp32, agreement=test, calibration=calibration, rounds=args.rounds,
        target_s=args.target_s, statistic=statistics.median)]
    return {"checkpoint": f"{record.architecture} trained on {spec} ({ckpt.name})",
            "architecture": record.architecture, "data": spec, "batch": batch,
            "test_images": sum(len(b) for b in test), "calibration_images": 512,
            "rows": rows}


def main() -> None:
    args = parse_args()
    prepare(args)
    rows, chosen = [], {}
    for name in args.models:
        for batch in args.batches:
            print(f"{name}, batch {batch}:", flush=True)
            r, c = fp32_rows(name, batch, args)
            rows += r
            chosen[f"{name}/b{batch}"] = c
    if rows:
        print_table(f"fp32 inference at {args.size} px, medians of {args.rounds} rounds",
                    rows, COLUMNS)
    precision = None
    if args.ckpt is not None:
        precision = reduced_precision(args.ckpt, args.precision_batch, args)
        print_table(f"Reduced precision, {precision['checkpoint']}, batch {precision['batch']}"
                    f", agreement on {precision['test_images']} test images",
                    precision["rows"], PRECISION)
    setup = {"models": args.models, "batches": args.batches, "input": [3, args.size, args.size],
             "rounds": args.rounds, "target_s_per_round": args.target_s,
             "threads": torch.get_num_threads(),
             "timing": "median of interleaved rounds, warmed up first",
             "weights": "random, identical in every variant (torchvision loads reslab's)",
             "ort_default": "onnxruntime.InferenceSession(model) with default SessionOptions",
             "reslab_torch": "optimize_for_inference(runtime='torch', compile=False)",
             "reslab_chosen": "optimize_for_inference(runtime='auto', compile=False)"}
    save_results("inference-runtimes", setup, rows, out=args.out, auto_choices=chosen,
                 precision=precision)


if __name__ == "__main__":
    main()

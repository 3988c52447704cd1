"""int8 post-training quantization of a trained model: accuracy change and speed vs fp32 eager.

    python benchmarks/int8_accuracy.py RUN_DIR [--calibration-batches 8] [--threads 1]

Scores the checkpoint in fp32 (eager), in int8 through reslab.deploy.quantize_int8 (PT2E:
torchao's x86 inductor quantizer, compiled by inductor) and, side by side as the reference it
replaced, in int8 through PyTorch's deprecated FX graph mode (x86 qconfig); all calibrated on the
same training images prepared as for evaluation, scored on the whole test split and timed on the
same batch, interleaved. Writes docs/results/inference-int8-accuracy.json. Goals: at most 0.5
point of top-1 lost, and PT2E at least as fast as FX.
"""
from __future__ import annotations

import argparse
import copy
import itertools
import sys
import time
import warnings
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).resolve().parent))
from common import (RESULTS, add_threads_option, prepare, print_table,  # noqa: E402
                    save_results, shown_path)

from reslab.data import load_data  # noqa: E402
from reslab.deploy import quantize_int8  # noqa: E402
from reslab.bench import time_steps  # noqa: E402
from reslab.weights.checkpoint import load_checkpoint  # noqa: E402
from reslab.engine.evaluate import evaluate  # noqa: E402


def quantize_fx(model: torch.nn.Module, calib: list[torch.Tensor]) -> torch.nn.Module:
    """The path quantize_int8 used before PT2E (FX graph mode, x86 qconfig), kept here only as
    the reference it is measured against."""
    from torch.ao.quantization import get_default_qconfig_mapping
    from torch.ao.quantization.quantize_fx import convert_fx, prepare_fx

    torch.backends.quantized.engine = "x86"
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        prepared = prepare_fx(copy.deepcopy(model).eval(), get_default_qconfig_mapping("x86"),
                              example_inputs=(calib[0],))
        with torch.no_grad():
            for x in calib:
                prepared(x)
        return convert_fx(prepared)


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawTextHelpFormatter)
    p.add_argument("run", help="a run directory or weights file (its record names the dataset)")
    p.add_argument("--calibration-batches", type=int, default=8)
    p.add_argument("--batch-size", type=int, default=128)
    add_threads_option(p)
    p.add_argument("--out", type=Path, default=RESULTS / "inference-int8-accuracy.json")
    args = p.parse_args()
    prepare(args)
    model, record = load_checkpoint(args.run)
    trained, pre = record.data, record.preprocess
    if trained is None:
        raise SystemExit(f"{args.run} does not say what it was trained on")
    data = load_data(trained.spec, data_dir=trained.data_dir,
                     image_size=pre.input_size[-1], normalize=pre.normalize, stats=pre.stats(),
                     crop_fraction=pre.crop_fraction)
    calib = [x for x, _ in itertools.islice(
        data.eval_batches("train", args.batch_size, "cpu"), args.calibration_batches)]
    t = time.perf_counter()
    pt2e = quantize_int8(model, calib)
    x, _ = next(iter(data.eval_batches("test", args.batch_size, "cpu")))
    pt2e(x)  # inductor compiles here
    print(f"PT2E quantize + compile: {time.perf_counter() - t:.1f} s", flush=True)
    models = {"fp32 eager": model, "int8 FX (deprecated)": quantize_fx(model, calib),
              "int8 PT2E (quantize_int8)": pt2e}
    scores = {name: evaluate(m, data.eval_batches("test", args.batch_size, "cpu"))
              for name, m in models.items()}
    with torch.no_grad():
        secs = time_steps({name: (lambda m=m: m(x)) for name, m in models.items()}, rounds=3)
    rows = [{"variant": name, "top1": scores[name]["top1"], "img_s": len(x) / secs[name],
             "speedup": secs["fp32 eager"] / secs[name]} for name in scores]
    print_table(f"int8 vs fp32 on {trained.spec} test ({record.architecture}, batch "
                f"{args.batch_size})", rows,
                [("variant", "variant", ""), ("top1", "top-1", ".4f"), ("img_s", "img/s", ".0f"),
                 ("speedup", "vs fp32", ".2f")])
    drop = 100 * (scores["fp32 eager"]["top1"] - scores["int8 PT2E (quantize_int8)"]["top1"])
    print(f"top-1 change (PT2E): {-drop:+.2f} points; PT2E vs FX speed: "
          f"{secs['int8 FX (deprecated)'] / secs['int8 PT2E (quantize_int8)']:.2f}x")
    save_results("int8_accuracy", {"run": shown_path(Path(args.run)),
                                   "architecture": record.architecture, "data": trained.spec,
                                   "batch_size": args.batch_size,
                                   "calibration_batches": args.calibration_batches},
                 rows, out=args.out, top1_points_lost=round(drop, 3))


if __name__ == "__main__":
    main()

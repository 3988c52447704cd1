"""int8 post-training quantization of a trained model: accuracy change and speed vs fp32 eager.

    python benchmarks/int8_accuracy.py RUN_DIR [--calibration-batches 8] [--threads 1]

Scores the checkpoint in fp32 (eager) and int8 (reslab.deploy.quantize_int8, calibrated on
training images prepared as for evaluation) on the whole test split, and times both on the same
batch interleaved. Writes docs/results/int8_accuracy.json. Goal (issue 5): at least 2x fp32
eager, at most 0.5 point of top-1 lost.
"""
from __future__ import annotations

import argparse
import itertools
import sys
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).resolve().parent))
from common import add_threads_option, prepare, print_table, save_results  # noqa: E402

from reslab.data import load_data  # noqa: E402
from reslab.deploy import quantize_int8  # noqa: E402
from reslab.bench import time_steps  # noqa: E402
from reslab.checkpoint import load_checkpoint  # noqa: E402
from reslab.engine.evaluate import evaluate  # noqa: E402


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawTextHelpFormatter)
    p.add_argument("run", help="a run directory or weights file (its record names the dataset)")
    p.add_argument("--calibration-batches", type=int, default=8)
    p.add_argument("--batch-size", type=int, default=128)
    add_threads_option(p)
    args = p.parse_args()
    prepare(args)
    model, record = load_checkpoint(args.run)
    trained, pre = record.data or {}, record.preprocess
    if not trained:
        raise SystemExit(f"{args.run} does not say what it was trained on")
    data = load_data(trained["spec"], data_dir=trained.get("data_dir"),
                     image_size=pre.input_size[-1], normalize=pre.normalize, stats=pre.stats(),
                     crop_fraction=pre.crop_fraction)
    calib = (x for x, _ in itertools.islice(
        data.eval_batches("train", args.batch_size, "cpu"), args.calibration_batches))
    int8 = quantize_int8(model, calib)
    scores = {name: evaluate(m, data.eval_batches("test", args.batch_size, "cpu"))
              for name, m in (("fp32 eager", model), ("int8", int8))}
    x, _ = next(iter(data.eval_batches("test", args.batch_size, "cpu")))
    with torch.no_grad():
        secs = time_steps({"fp32 eager": lambda: model(x), "int8": lambda: int8(x)}, rounds=3)
    rows = [{"variant": name, "top1": scores[name]["top1"], "img_s": len(x) / secs[name],
             "speedup": secs["fp32 eager"] / secs[name]} for name in scores]
    print_table(f"int8 vs fp32 on {trained['spec']} test ({record.architecture}, batch "
                f"{args.batch_size})", rows,
                [("variant", "variant", ""), ("top1", "top-1", ".4f"), ("img_s", "img/s", ".0f"),
                 ("speedup", "vs fp32", ".2f")])
    drop = 100 * (scores["fp32 eager"]["top1"] - scores["int8"]["top1"])
    print(f"top-1 change: {-drop:+.2f} points")
    save_results("int8_accuracy", {"run": str(args.run), "architecture": record.architecture,
                                   "data": trained["spec"], "batch_size": args.batch_size,
                                   "calibration_batches": args.calibration_batches},
                 rows, top1_points_lost=round(drop, 3))


if __name__ == "__main__":
    main()

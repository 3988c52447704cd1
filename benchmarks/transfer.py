"""Transfer on data available here: does starting from trained weights beat training from scratch
on a small image folder?

1. Source: a resnet20 trained on Fashion-MNIST classes 0-4 (T-shirt, Trouser, Pullover, Dress,
   Coat), --source-per-class images each, written as an image folder.
2. Target: classes 5-9 (Sandal, Shirt, Sneaker, Bag, Ankle boot) with --target-per-class
   training images each (an image folder with train/ and, as val/, all 5,000 test images of
   those classes).
3. The same resnet20 on the target folder: fine-tuned from the source weights (`finetune`
   recipe, batch 32) and trained from scratch (`fast` recipe at batch 32), the same number of
   epochs; test accuracy on the 5,000 test images and training time.

    python benchmarks/transfer.py [--target-per-class 100] [--epochs 30] [--keep DIR]
"""
from __future__ import annotations

import argparse
import json
import sys
import tempfile
from pathlib import Path

import numpy as np
from PIL import Image

sys.path.insert(0, str(Path(__file__).resolve().parent))
from common import PYTHON, add_threads_option, prepare, run_timed, save_results  # noqa: E402

from reslab.data.datasets import fashion_mnist  # noqa: E402


def write_folder(root: Path, split: str, x: np.ndarray, y: np.ndarray, classes: list[int],
                 names: list[str], per_class: int | None, seed: int) -> int:
    """PNG files root/split/<class name>/<i>.png of up to per_class images of each class."""
    rng = np.random.default_rng(seed)
    n = 0
    for c in classes:
        idx = np.flatnonzero(y == c)
        if per_class is not None:
            idx = rng.choice(idx, per_class, replace=False)
        folder = root / split / names[c].replace("/", "-")
        folder.mkdir(parents=True, exist_ok=True)
        for i in idx:
            Image.fromarray(x[i, 0]).save(folder / f"{i}.png")
        n += len(idx)
    return n


def train(out: Path, *args: str) -> tuple[float | None, dict]:
    """Trains into out, or (with --keep, after an interrupted benchmark) reuses a finished run
    there: (whole-process seconds or None when reused, the run's summary)."""
    wall = None
    if not (out / "summary.json").is_file():
        wall, _ = run_timed([PYTHON, "-m", "reslab", "train", "--quiet", "--out", str(out),
                             "--overwrite", *args])
    return wall, json.loads((out / "summary.json").read_text())


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawTextHelpFormatter)
    p.add_argument("--source-per-class", type=int, default=2000)
    p.add_argument("--source-epochs", type=float, default=4)
    p.add_argument("--target-per-class", type=int, default=100)
    p.add_argument("--epochs", type=float, default=30, help="target training epochs (both)")
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--keep", type=Path, help="keep the folders and runs here")
    add_threads_option(p)
    args = p.parse_args()
    prepare(args)
    root = args.keep or Path(tempfile.mkdtemp(prefix="reslab-transfer-"))
    src = fashion_mnist()
    (xtr, ytr), (xte, yte) = src.train, src.test
    xtr, ytr, xte, yte = xtr.numpy(), ytr.numpy(), xte.numpy(), yte.numpy()
    names = src.class_names
    for split, x, y, per in (("train", xtr, ytr, args.source_per_class), ("val", xte, yte, None)):
        write_folder(root / "source", split, x, y, [0, 1, 2, 3, 4], names, per, args.seed)
    n_train = write_folder(root / "target", "train", xtr, ytr, [5, 6, 7, 8, 9], names,
                           args.target_per_class, args.seed)
    n_test = write_folder(root / "target", "val", xte, yte, [5, 6, 7, 8, 9], names, None,
                          args.seed)
    threads = ["--threads", str(args.threads)] if args.threads else []
    common = ["--model", "resnet20", "--seed", str(args.seed), "--workers", "2", *threads]
    _, src_sum = train(root / "runs" / "source", "--recipe", "fast", "--data",
                              f"imagefolder:{root / 'source'}", "--epochs",
                              str(args.source_epochs), *common)
    target = ["--data", f"imagefolder:{root / 'target'}", "--epochs", str(args.epochs), *common]
    rows = []
    for name, run, extra in (
            ("fine-tuned from the source", "finetuned",
             ["--recipe", "finetune", "--weights", str(root / "runs" / "source")]),
            ("from scratch", "scratch", ["--recipe", "fast", "--batch-size", "32"])):
        wall, summary = train(root / "runs" / run, *target, *extra)
        curve = [[round(r["epoch"], 2), r["top1"], r["time_s"]]
                 for r in map(json.loads, (root / "runs" / run / "metrics.jsonl").open())
                 if r.get("split") == "val"]
        rows.append({"variant": name, "test_top1": summary["test"]["top1"],
                     "curve_epoch_top1_seconds": curve,
                     "train_s": summary["wall_s"],
                     "process_s": round(wall, 1) if wall is not None else None})
        print(f"{name}: test top-1 {summary['test']['top1']:.4f} on {n_test} images, "
              f"{summary['wall_s']:.0f} s of training", flush=True)
    save_results("transfer", {
        "source": {"classes": names[:5], "train_images": 5 * args.source_per_class,
                   "epochs": args.source_epochs, "recipe": "fast",
                   "test_top1": src_sum["test"]["top1"], "train_s": src_sum["wall_s"]},
        "target": {"classes": names[5:], "train_images": n_train, "test_images": n_test,
                   "epochs": args.epochs},
        "model": "resnet20", "seed": args.seed,
        "commands": "benchmarks/transfer.py " + " ".join(sys.argv[1:])}, rows)


if __name__ == "__main__":
    main()

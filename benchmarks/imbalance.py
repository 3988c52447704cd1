"""What `--balance` should do on imbalanced folders: the default command (`reslab train --data
imagefolder:DIR`) with --balance none, sampler and weights, on folders of Fashion-MNIST images
with imbalanced classes, scored on a balanced set of fresh images.

    python benchmarks/imbalance.py [--only NAME ...] [--seeds 0 1 2] [--methods none sampler weights]
                                   [--side 16] [--threads 1]

Each folder: DIR/train/<class>/ with the profile's counts (largest first; which Fashion-MNIST
classes get which count is drawn per seed), no val/ (reslab holds out 10%, stratified), and
TEST/val/<class>/ with TEST_PER_CLASS other images of every class. Each row: the balanced test
set's top-1 (= its balanced accuracy, as every class has the same count), macro-F1, the rarest
class's recall, the lowest recall of any class, iterations and seconds. Writes
docs/results/imbalance.json.
"""
from __future__ import annotations

import argparse
import json
import tempfile
from dataclasses import asdict, dataclass
from pathlib import Path

import numpy as np
from PIL import Image

from common import PYTHON, print_table, run_timed, save_results
from small_folders import source_images

TEST_PER_CLASS = 50


@dataclass(frozen=True)
class Profile:
    name: str
    counts: tuple[int, ...]  # training images per class, largest first


PROFILES = (Profile("3c-10to1", (300, 150, 30)),
            Profile("4c-33to1", (400, 120, 40, 12)),
            Profile("5c-20to1", (240, 120, 60, 30, 12)),
            Profile("10c-5to1", (150,) * 5 + (30,) * 5))


def make(profile: Profile, x: np.ndarray, y: np.ndarray, root: Path, seed: int, side: int
         ) -> tuple[Path, Path]:
    rng = np.random.default_rng(seed)
    classes = rng.permutation(10)[:len(profile.counts)]
    out, test = root / f"{profile.name}-{seed}", root / f"{profile.name}-{seed}-test"
    for c, count in zip(classes, profile.counts):
        picked = rng.choice(np.flatnonzero(y == c), count + TEST_PER_CLASS, replace=False)
        for split, base, ids in (("train", out, picked[:count]), ("val", test, picked[count:])):
            d = base / split / f"class{c}"
            d.mkdir(parents=True)
            for i in ids:
                Image.fromarray(x[i]).resize((side, side), Image.BILINEAR).save(d / f"{i}.png")
    (test / "train").symlink_to(out / "train")
    return out, test


def train(path: Path, test: Path, out: Path, method: str, seed: int, args: argparse.Namespace
          ) -> dict:
    """The default command with --balance method (and the images' own side, seed, threads)."""
    wall, stdout = run_timed([PYTHON, "-m", "reslab", "train", "--data", f"imagefolder:{path}",
                              "--out", str(out), "--json", "--balance", method,
                              "--image-size", str(args.side), "--seed", str(seed),
                              "--threads", str(args.threads)])
    summary = json.loads(stdout)
    _, scored = run_timed([PYTHON, "-m", "reslab", "eval", str(out), "--data",
                           f"imagefolder:{test}", "--split", "test", "--json"])
    ev = json.loads(scored)
    recalls = {c["class"]: c["recall"] for c in ev["per_class"]}
    rarest = min(recalls, key=lambda name: len(list((path / "train" / name).iterdir())))
    return {"test_top1": ev["top1"], "balanced": ev["balanced"], "macro_f1": ev["macro_f1"],
            "rarest_recall": recalls[rarest], "min_recall": min(recalls.values()),
            "val_top1": summary["val"]["top1"] if summary["val"] else None,
            "iters": summary["steps"], "wall_s": wall}


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--only", nargs="*", help="profile names to run (default: all)")
    p.add_argument("--seeds", nargs="*", type=int, default=[0, 1, 2])
    p.add_argument("--methods", nargs="*", default=["none", "sampler", "weights"])
    p.add_argument("--side", type=int, default=16,
                   help="image side in px, trained at that side (16: a quarter of 32's cost)")
    p.add_argument("--threads", type=int, default=1)
    p.add_argument("--rows", type=Path,
                   help="no training: tabulate and save the rows printed by earlier runs "
                        "(one JSON object a line), e.g. runs split over several invocations")
    args = p.parse_args()
    rows = []
    if args.rows:
        rows = [json.loads(line) for line in args.rows.read_text().splitlines()
                if line.startswith("{")]
        args.rows = args.rows.name
    x, y = source_images("fashion-mnist")
    with tempfile.TemporaryDirectory() as tmp:
        for profile in PROFILES:
            if args.rows or (args.only and profile.name not in args.only):
                continue
            for seed in args.seeds:
                path, test = make(profile, x, y, Path(tmp), seed, args.side)
                for method in args.methods:
                    row = asdict(profile) | {"seed": seed, "balance": method} | train(
                        path, test, Path(tmp) / "run" / f"{profile.name}-{seed}-{method}",
                        method, seed, args)
                    print(json.dumps(row), flush=True)
                    rows.append(row)
    print_table("--balance on imbalanced folders (reslab train --data imagefolder:DIR)",
                rows, [("name", "folder", ""), ("seed", "seed", "d"), ("balance", "balance", ""),
                       ("balanced", "balanced test top1", ".3f"),
                       ("macro_f1", "macro-F1", ".3f"),
                       ("rarest_recall", "rarest class recall", ".3f"),
                       ("min_recall", "lowest recall", ".3f"),
                       ("iters", "iterations", "d"), ("wall_s", "seconds", ".0f")])
    save_results("imbalance", vars(args), rows)


if __name__ == "__main__":
    main()

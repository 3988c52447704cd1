"""The default command on small folders of real images: `reslab train --data imagefolder:DIR`
with nothing else, on folders of 30 to 3,000 images, 2 to 10 classes and sides of 8 to 256 px.

    python benchmarks/small_folders.py [--only NAME ...] [--source fashion-mnist|digits]
        [--seeds 0 1 2] [--train-args '--activation relu --epochs 19'] [--out FILE]

The images are Fashion-MNIST training images (Debian's dataset-fashion-mnist, else
scikit-learn's 8x8 digits with --source digits) resized to each folder's side and saved as PNG
in DIR/train/<class>/, with no val/ (reslab holds out 10%). Each row: the held-out top-1 (10%: 3 images of
a 30-image folder), the top-1 on 100 fresh images per class (`reslab eval`), the
eval-mode top-1 on the training images (reslab's BN check), chance, the adapted batch and
iterations, and the whole-process seconds. --seeds trains each folder once per seed (the
folder's images stay the same: a seed changes the training, not the data), so a difference of a
few fresh images between two recipes can be told from one seed's noise; --train-args adds
`reslab train` flags (e.g. an earlier recipe's values, for a paired comparison). Writes
docs/results/first-contact-small-folders.json (or --out).
"""
from __future__ import annotations

import argparse
import gzip
import json
import shlex
import tempfile
from dataclasses import asdict, dataclass
from pathlib import Path

import numpy as np
from PIL import Image

from common import PYTHON, print_table, run_timed, save_results

FASHION = Path("/usr/share/datasets/fashion-mnist")


@dataclass(frozen=True)
class Folder:
    name: str
    images: int
    classes: int
    side: int


FOLDERS = (Folder("30-3c-8px", 30, 3, 8), Folder("30-2c-256px", 30, 2, 256),
           Folder("300-3c-28px", 300, 3, 28), Folder("300-10c-64px", 300, 10, 64),
           Folder("3000-10c-32px", 3000, 10, 32), Folder("3000-5c-128px", 3000, 5, 128))


def source_images(source: str) -> tuple[np.ndarray, np.ndarray]:
    if source == "digits":
        from sklearn.datasets import load_digits

        d = load_digits()
        return (d.images * 255 / 16).astype(np.uint8), d.target
    x = np.frombuffer(gzip.open(FASHION / "train-images-idx3-ubyte.gz").read(), np.uint8,
                      offset=16).reshape(-1, 28, 28)
    y = np.frombuffer(gzip.open(FASHION / "train-labels-idx1-ubyte.gz").read(), np.uint8,
                      offset=8)
    return x, y


TEST_PER_CLASS = 100  # fresh images per class: the held-out 10% of 30 images is 3 images


def make(folder: Folder, x: np.ndarray, y: np.ndarray, root: Path, seed: int = 0
         ) -> tuple[Path, Path]:
    """DIR/train/<class>/ with the folder's images, and TEST/val/<class>/ with other images of
    the same classes (TEST/train links to DIR/train, so TEST is a folder reslab can read)."""
    rng = np.random.default_rng(seed)
    out, test = root / folder.name, root / f"{folder.name}-test"
    for c in range(folder.classes):
        per = folder.images // folder.classes
        picked = rng.choice(np.flatnonzero(y == c), per + TEST_PER_CLASS, replace=False)
        for split, base, ids in (("train", out, picked[:per]), ("val", test, picked[per:])):
            d = base / split / f"class{c}"
            d.mkdir(parents=True)
            for i in ids:
                Image.fromarray(x[i]).resize((folder.side, folder.side), Image.BILINEAR).save(
                    d / f"{i}.png")
    (test / "train").symlink_to(out / "train")
    return out, test


def train(path: Path, test: Path, out: Path, seed: int, extra: list[str]) -> dict:
    wall, stdout = run_timed([PYTHON, "-m", "reslab", "train", "--data", f"imagefolder:{path}",
                              "--out", str(out), "--json", "--seed", str(seed), *extra])
    summary = json.loads(stdout)
    config = (out / "config.toml").read_text()
    batch = int(config.split("batch_size = ")[1].split()[0])
    _, scored = run_timed([PYTHON, "-m", "reslab", "eval", str(out), "--data",
                           f"imagefolder:{test}", "--split", "test", "--json"])
    return {"val_top1": summary["test"]["top1"], "val_n": summary["test"]["n"],
            "test_top1": json.loads(scored)["top1"],
            "train_eval_top1": summary["train_eval"]["top1"],
            "batch": batch, "iters": summary["steps"], "wall_s": wall}


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--only", nargs="*", help="folder names to run (default: all)")
    p.add_argument("--source", choices=("fashion-mnist", "digits"), default="fashion-mnist")
    p.add_argument("--seeds", nargs="+", type=int, default=[0], help="training seeds")
    p.add_argument("--train-args", default="", help="extra `reslab train` flags")
    p.add_argument("--out", type=Path, help="results file (default: docs/results/...)")
    args = p.parse_args()
    x, y = source_images(args.source)
    rows = []
    with tempfile.TemporaryDirectory() as tmp:
        for folder in FOLDERS:
            if args.only and folder.name not in args.only:
                continue
            path, test = make(folder, x, y, Path(tmp))
            for seed in args.seeds:
                row = asdict(folder) | {"seed": seed, "chance": 1 / folder.classes} | train(
                    path, test, Path(tmp) / "run" / f"{folder.name}-{seed}", seed,
                    shlex.split(args.train_args))
                print(json.dumps(row), flush=True)
                rows.append(row)
    print_table("the default command on small folders (reslab train --data imagefolder:DIR)",
                rows, [("name", "folder", ""), ("seed", "seed", "d"), ("chance", "chance", ".2f"),
                       ("val_top1", "held-out top1", ".3f"), ("val_n", "held out", "d"),
                       ("test_top1", f"top1 on {TEST_PER_CLASS}/class fresh", ".3f"),
                       ("train_eval_top1", "eval-mode train top1", ".3f"),
                       ("batch", "batch", "d"), ("iters", "iterations", "d"),
                       ("wall_s", "seconds", ".0f")])
    setup = {k: v for k, v in vars(args).items() if k != "out"}  # no path of this machine
    save_results("first-contact-small-folders", setup, rows, out=args.out)


if __name__ == "__main__":
    main()

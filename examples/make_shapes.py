"""A small image folder to try reslab on your-own-images workflows without downloading anything:
three classes (circle, square, stripes) drawn on noise, as JPEG and PNG files of mixed sizes and
modes (RGB, L, RGBA, P), in PATH/train/<class>/ with no val/ folder.

    python examples/make_shapes.py PATH [--per-class 40] [--seed 0]
"""
from __future__ import annotations

import argparse
from pathlib import Path

import numpy as np
from PIL import Image

CLASSES = ("circle", "square", "stripes")
MODES = ("RGB", "L", "RGBA", "P")


def draw(kind: str, size: tuple[int, int], rng: np.random.Generator) -> np.ndarray:
    """An RGB image whose class is visible at any scale: a disc, a block, or stripes."""
    w, h = size
    yy, xx = np.mgrid[0:h, 0:w] / max(h, w)
    cx, cy = rng.uniform(0.35, 0.65, 2)
    if kind == "circle":
        mask = (xx - cx) ** 2 + (yy - cy) ** 2 < 0.06
    elif kind == "square":
        mask = (abs(xx - cx) < 0.22) & (abs(yy - cy) < 0.22)
    else:
        mask = (xx * 8).astype(int) % 2 == 0
    img = rng.integers(0, 60, (h, w, 3))
    img[mask] = [220, 200, 40] if kind != "stripes" else [40, 200, 220]
    return img.astype(np.uint8)


def make_folder(root: Path, per_class: int = 40, seed: int = 0) -> Path:
    rng = np.random.default_rng(seed)
    for c in CLASSES:
        (root / "train" / c).mkdir(parents=True, exist_ok=True)
        for i in range(per_class):
            size = (int(rng.integers(24, 96)), int(rng.integers(24, 96)))
            img = Image.fromarray(draw(c, size, rng)).convert(MODES[i % 4])
            ext = ".jpg" if img.mode in ("RGB", "L") and i % 3 == 0 else ".png"
            img.save(root / "train" / c / f"{c}{i:02d}{ext}")
    return root


if __name__ == "__main__":
    p = argparse.ArgumentParser(description=__doc__,
                                formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("path", type=Path)
    p.add_argument("--per-class", type=int, default=40)
    p.add_argument("--seed", type=int, default=0)
    a = p.parse_args()
    print(f"wrote {make_folder(a.path, a.per_class, a.seed)}")

"""Counts in words for what reslab prints: "1 iteration", "2 iterations", "1.5 epochs"."""
from __future__ import annotations


def plural(n: float, word: str, many: str | None = None, fmt: str = ",") -> str:
    """n and word, in the plural unless n is exactly 1. many: the plural when it is not word
    + "s" ("es" after s or x: "classes"; give "batches" yourself). fmt: how n is written
    (default with thousands separators; ".3g" for fractional epochs)."""
    if many is None:
        many = word + ("es" if word.endswith(("s", "x")) else "s")
    return f"{n:{fmt}} {word if n == 1 else many}"

"""Text that reslab prints: counts in words ("1 iteration", "2 iterations", "1.5 epochs") and
plain-text tables."""
from __future__ import annotations

from collections.abc import Mapping, Sequence
from typing import Any


def plural(n: float, word: str, many: str | None = None, fmt: str = ",") -> str:
    """n and word, in the plural unless n is exactly 1. many: the plural when it is not word
    + "s" ("es" after s or x: "classes"; give "batches" yourself). fmt: how n is written
    (default with thousands separators; ".3g" for fractional epochs)."""
    if many is None:
        many = word + ("es" if word.endswith(("s", "x")) else "s")
    return f"{n:{fmt}} {word if n == 1 else many}"


# (row key, header, format spec): a column of `format_table`. A column with a spec is
# right-aligned: numbers formatted with it, text as it is (">" right-aligns text such as "4.089G").
Column = tuple[str, str, str]


def format_table(rows: Sequence[Mapping[str, Any]], columns: Sequence[Column], *,
                 rule: str = "line") -> str:
    """A plain-text table, two spaces between columns: text left-aligned, columns with a format
    spec right-aligned, missing values "-". rule: the line under the headers, "line" one rule
    as wide as the header line, "columns" one rule per column."""
    def cell(row: Mapping[str, Any], key: str, spec: str) -> str:
        value = row.get(key)
        if value is None:
            return "-"
        return format(value, spec) if spec and isinstance(value, (int, float)) else str(value)

    cells = [[cell(r, key, spec) for key, _, spec in columns] for r in rows]
    widths = [max([len(h)] + [len(c[i]) for c in cells]) for i, (_, h, _) in enumerate(columns)]
    right = [bool(spec) for _, _, spec in columns]

    def line(values: Sequence[str]) -> str:
        return "  ".join(v.rjust(w) if r else v.ljust(w)
                         for v, w, r in zip(values, widths, right)).rstrip()

    head = line([h for _, h, _ in columns])
    under = "-" * len(head) if rule == "line" else line(["-" * w for w in widths])
    return "\n".join([head, under] + [line(c) for c in cells])

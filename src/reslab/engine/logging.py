"""Progress on the terminal (a bar) or in logs (plain periodic lines), metrics.jsonl and the
same rows as metrics.csv (for spreadsheets and pandas, as Lightning's CSVLogger)."""
from __future__ import annotations

import csv
import io
import json
import math
import os
import sys
import time
from pathlib import Path
from typing import Any

from .rundir import RunDir


class Progress:
    """A tqdm bar on a terminal; a plain line every `every_s` seconds otherwise; nothing if quiet."""

    def __init__(self, total: int, initial: int = 0, *, quiet: bool = False,
                 every_s: float = 10.0, desc: str = "train") -> None:
        self.total, self.step, self.quiet, self.every_s = total, initial, quiet, every_s
        self.start, self.last_print = time.perf_counter(), 0.0
        self.initial = initial
        self.bar = None
        if not quiet and sys.stderr.isatty():
            from tqdm import tqdm

            self.bar = tqdm(total=total, initial=initial, desc=desc, unit="it",
                            dynamic_ncols=True, file=sys.stderr)

    def update(self, step: int, **stats: float) -> None:
        if self.quiet:
            return
        done, self.step = step - self.step, step
        text = {k: (f"{v:.4g}" if isinstance(v, float) else v) for k, v in stats.items()}
        if self.bar is not None:
            self.bar.update(done)
            self.bar.set_postfix(text, refresh=False)
            return
        now = time.perf_counter() - self.start
        if now - self.last_print >= self.every_s or step == self.total:
            self.last_print = now
            rate = (step - self.initial) / max(now, 1e-9)
            eta = (self.total - step) / rate if rate > 0 else float("inf")
            fields = " ".join(f"{k}={v}" for k, v in text.items())
            print(f"step {step}/{self.total} {fields} eta {_hms(eta)}", file=sys.stderr,
                  flush=True)

    def replan(self, total: int) -> None:
        """The run will take total steps, not the number it started with."""
        self.total = total
        if self.bar is not None:
            self.bar.total = total
            self.bar.refresh()

    def write(self, line: str) -> None:
        if self.quiet:
            return
        if self.bar is not None:
            self.bar.write(line, file=sys.stderr)
        else:
            print(line, file=sys.stderr, flush=True)

    def close(self) -> None:
        if self.bar is not None:
            self.bar.close()


def _hms(seconds: float) -> str:
    if seconds == float("inf"):
        return "?"
    m, s = divmod(int(seconds), 60)
    h, m = divmod(m, 60)
    return f"{h}:{m:02d}:{s:02d}" if h else f"{m}:{s:02d}"


class MetricsLog:
    """Appends one JSON object per line to metrics.jsonl (flushed and fsynced per write, so a
    killed run keeps every line it reported), and the same row to metrics.csv beside it. A
    resumed run first drops lines past its step."""

    def __init__(self, path: Path | None, resume_step: int | None = None,
                 tensorboard: bool = False) -> None:
        self.path, self.tb = path, None
        if path is None:
            return
        if tensorboard:
            self.tb = _tensorboard_writer(RunDir(path.parent).tensorboard)
        if resume_step is not None and path.exists():
            from ..io import atomic_write_text, read_text
            from ..limits import MAX_FILE_BYTES

            kept = [ln for ln in read_text(path, "metrics file", MAX_FILE_BYTES).splitlines()
                    if ln.strip() and _step_of(ln) <= resume_step]

            atomic_write_text(path, "".join(ln + "\n" for ln in kept))
        elif path.exists():
            path.unlink()
        self.csv = CsvLog(RunDir(path.parent).metrics_csv, [json.loads(ln) for ln in
                                                    path.read_text().splitlines() if ln.strip()]
                          if path.exists() else [])

    def log(self, **row: Any) -> None:
        if self.path is None:
            return
        with open(self.path, "a") as f:
            f.write(json.dumps(row) + "\n")
            f.flush()
            os.fsync(f.fileno())
        self.csv.append(row)
        if self.tb is not None:
            prefix = row.get("split", "train_step")
            for key in ("loss", "lr", "img_s", "top1", "top5"):
                if key in row:
                    self.tb.add_scalar(f"{prefix}/{key}", row[key], row["step"])
            self.tb.flush()


CSV_COLUMNS = ("step", "epoch", "split", "final", "loss", "lr", "img_s", "top1", "top5", "n",
               "time_s", "balanced", "macro_f1")  # the keys the loop logs; others widen it


class CsvLog:
    """metrics.csv: one row per metrics.jsonl row, the columns CSV_COLUMNS (then any other key
    in order of appearance); a key a row lacks is an empty cell. Started from `rows` (the
    jsonl's rows a resumed run keeps), so it is exactly the jsonl as a table."""

    def __init__(self, path: Path, rows: list[dict[str, Any]]) -> None:
        self.path, self.columns = path, list(CSV_COLUMNS)
        for row in rows:
            self._widen(row)
        self._rewrite(rows)

    def _widen(self, row: dict[str, Any]) -> bool:
        extra = [k for k in row if k not in self.columns]
        self.columns += extra
        return bool(extra)

    def _rewrite(self, rows: list[dict[str, Any]]) -> None:
        from ..io import atomic_write_text

        buf = io.StringIO()
        writer = csv.DictWriter(buf, self.columns, lineterminator="\n")
        writer.writeheader()
        writer.writerows(rows)
        atomic_write_text(self.path, buf.getvalue())

    def append(self, row: dict[str, Any]) -> None:
        if self._widen(row):  # a new key: the header grows, the old rows get empty cells
            self._rewrite(read_csv_rows(self.path) + [row])
            return
        with open(self.path, "a", newline="") as f:
            csv.DictWriter(f, self.columns, lineterminator="\n").writerow(row)
            f.flush()
            os.fsync(f.fileno())


def read_csv_rows(path: Path) -> list[dict[str, Any]]:
    """metrics.csv's rows as dicts of the cells that are set, numbers as numbers (the jsonl's
    rows back)."""
    with open(path, newline="") as f:
        return [{k: _cell(v) for k, v in row.items() if v != ""} for row in csv.DictReader(f)]


def _cell(text: str) -> Any:
    if text in ("True", "False"):
        return text == "True"
    for kind in (int, float):
        try:
            return kind(text)
        except ValueError:
            pass
    return text


def _tensorboard_writer(logdir: Path) -> Any:
    try:
        from torch.utils.tensorboard import SummaryWriter
    except ImportError:
        from ..errors import UserError

        raise UserError("--tensorboard needs the tensorboard package: "
                        "pip install tensorboard") from None
    return SummaryWriter(str(logdir))


def _step_of(line: str) -> int:
    try:
        return int(json.loads(line)["step"])
    except (ValueError, KeyError, TypeError, OverflowError):  # OverflowError: Infinity
        return 1 << 62


def read_metrics(path: str | Path) -> list[dict[str, Any]]:
    """The well-formed rows of a metrics.jsonl: JSON objects whose "step" is a finite number
    and whose metrics are finite numbers. Torn last lines of a killed run and damaged rows are
    skipped; a file that cannot be read is a UserError."""
    from ..io import read_text
    from ..limits import MAX_FILE_BYTES

    rows = []
    for line in read_text(path, "metrics file", MAX_FILE_BYTES).splitlines():
        try:
            row = json.loads(line)
        except json.JSONDecodeError:
            continue
        if isinstance(row, dict) and _finite(row.get("step")) and all(
                _finite(row[k]) for k in NUMERIC if k in row):
            rows.append(row)
    return rows


NUMERIC = ("epoch", "loss", "lr", "img_s", "top1", "top5", "n", "time_s")


def _finite(value: Any) -> bool:
    return (isinstance(value, (int, float)) and not isinstance(value, bool)
            and math.isfinite(value))

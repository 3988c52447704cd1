"""Run reports: Markdown (report.md, beside its PNGs) and a self-contained HTML page.

A report is built once as a list of blocks (heading, paragraph, table, image) and rendered to
both formats, so the two never disagree and no Markdown library is needed. The engine calls
`write_run_report` at the end of every run; `reslab report` combines one or more run
directories, including degradation sweeps (degradation.json) and layer responses
(responses.json).
"""
from __future__ import annotations

import base64
import html
import json
import os
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from ..io import atomic_write_text, check_writable, read_text
from ..limits import MAX_FILE_BYTES
from ..engine.logging import read_metrics
from ..engine.recipe import read_toml
from ..engine.rundir import RunDir
from ..errors import UserError, warn
from ..text import plural
from .sweep_result import DegradationResult, finite_number

# The published numbers ours are put beside (docs/paper-numbers.md), as top-1
# errors (fractions) keyed by dataset, then model ("*": any model on that dataset).
PAPER_REFERENCE: dict[str, dict[str, tuple[float, str]]] = {
    "cifar10": {m: (e / 100, "paper Table 6, CIFAR-10 test error") for m, e in {
        "resnet20": 8.75, "resnet32": 7.51, "resnet44": 7.17, "resnet56": 6.97,
        "resnet110": 6.43, "resnet1202": 7.93}.items()},
    "fashion-mnist": {"*": (1 - 0.949, "Fashion-MNIST benchmark, ResNet18 (accuracy 0.949)")},
    "imagenet": {m: (e / 100, "paper Tables 2-4, ImageNet val 10-crop top-1 error") for m, e in {
        "plain18": 27.94, "plain34": 28.54, "resnet18": 27.88, "resnet34": 24.52,
        "resnet50": 22.85, "resnet101": 21.75, "resnet152": 21.43}.items()},
}


def paper_reference(model: str, data: str) -> tuple[float, str] | None:
    """(published top-1 error, source) for this model on this dataset, if the paper has one."""
    key = "imagenet" if "imagenet" in data.lower() else data
    table = PAPER_REFERENCE.get(key, {})
    return table.get(model) or table.get("*")


@dataclass
class Doc:
    """Report blocks, rendered to Markdown or HTML. Images are paths to PNG files."""

    blocks: list[tuple[str, Any]] = field(default_factory=list)

    def heading(self, level: int, text: str) -> None:
        self.blocks.append(("h", (level, text)))

    def para(self, text: str) -> None:
        self.blocks.append(("p", text))

    def table(self, header: list[str], rows: list[list[Any]]) -> None:
        self.blocks.append(("table", (header, [[str(c) for c in r] for r in rows])))

    def image(self, path: Path, alt: str) -> None:
        self.blocks.append(("img", (Path(path), alt)))

    def code(self, lines: list[str]) -> None:
        """Lines shown as they are (a trace, a command)."""
        self.blocks.append(("pre", list(lines)))

    def markdown(self, base: Path) -> str:
        """Markdown with image links relative to the directory `base` the file is written to."""
        out = []
        for kind, value in self.blocks:
            if kind == "h":
                out.append(f"{'#' * value[0]} {value[1]}")
            elif kind == "p":
                out.append(value)
            elif kind == "pre":
                out.append("```\n" + "\n".join(value) + "\n```")
            elif kind == "table":
                header, rows = value
                lines = [header, ["---"] * len(header), *rows]
                out.append("\n".join("| " + " | ".join(c.replace("|", "\\|") for c in r) + " |"
                                     for r in lines))
            else:
                rel = Path(os.path.relpath(value[0].resolve(), base.resolve())).as_posix()
                out.append(f"![{value[1]}]({rel})")
        return "\n\n".join(out) + "\n"

    def html(self, title: str) -> str:
        """One HTML page with the images embedded as base64 data URIs."""
        esc = html.escape
        body = []
        for kind, value in self.blocks:
            if kind == "h":
                body.append(f"<h{value[0]}>{esc(value[1])}</h{value[0]}>")
            elif kind == "p":
                body.append(f"<p>{_inline(value)}</p>")
            elif kind == "pre":
                body.append(f"<pre>{esc(chr(10).join(value))}</pre>")
            elif kind == "table":
                header, rows = value
                head = "".join(f"<th>{_inline(c)}</th>" for c in header)
                cells = "".join("<tr>" + "".join(f"<td>{_inline(c)}</td>" for c in r) + "</tr>"
                                for r in rows)
                body.append(f"<table><tr>{head}</tr>{cells}</table>")
            elif value[0].is_file():
                data = base64.b64encode(value[0].read_bytes()).decode("ascii")
                body.append(f'<img alt="{esc(value[1])}" src="data:image/png;base64,{data}">')
        return (f"<!DOCTYPE html>\n<html><head><meta charset=\"utf-8\"><title>{esc(title)}"
                f"</title><style>{_CSS}</style></head><body>\n" + "\n".join(body)
                + "\n</body></html>\n")


def _inline(text: str) -> str:
    """Escaped text with the Markdown the reports use inline: `code`, **bold**, *italic*."""
    import re

    out = html.escape(text)
    out = re.sub(r"`([^`]+)`", r"<code>\1</code>", out)
    out = re.sub(r"\*\*([^*]+)\*\*", r"<strong>\1</strong>", out)
    return re.sub(r"(?<![\w*])\*([^*\s][^*]*)\*(?![\w*])", r"<em>\1</em>", out)


_CSS = ("body{font-family:system-ui,\"Noto Sans CJK KR\",\"Malgun Gothic\",\"Apple SD Gothic Neo\","
        "sans-serif;"
        "max-width:1100px;margin:2em auto;padding:0 1em}"
        "table{border-collapse:collapse;margin:1em 0}td,th{border:1px solid #ccc;"
        "padding:3px 8px;text-align:left}img{max-width:100%}"
        "pre{background:#f6f6f6;padding:.6em;overflow-x:auto}")


def percent(v: float | None) -> str:
    """An error or accuracy fraction as a percentage with 2 decimals ("-" when missing)."""
    return "-" if v is None else f"{100 * v:.2f}"


def results_table(result: DegradationResult) -> list[list[str]]:
    """Rows [model, seed, depth, final train error %, final test error %] for text and
    reports (the seed labels each repeat of a model)."""
    return [[r.model, "-" if r.seed is None else str(r.seed), str(r.depth),
             percent(r.final_train_error), percent(r.final_test_error)]
            for r in result.runs]


SPLITS = ("train", "val", "test")


def read_json(path: Path, what: str) -> Any:
    """A run's JSON file; UserError naming it when unreadable or not JSON."""
    try:
        return json.loads(read_text(path, what, MAX_FILE_BYTES))
    except json.JSONDecodeError as e:
        raise UserError(f"{what} {path} is damaged: not JSON ({e.msg} at line {e.lineno})") \
            from None


def read_responses(path: Path) -> dict[str, list[float]]:
    """responses.json: {model label: [std per layer]}; UserError when it is not that."""
    obj = read_json(path, "responses file")
    if not (isinstance(obj, dict) and obj and all(
            isinstance(k, str) and isinstance(v, list) and v and all(map(finite_number, v))
            for k, v in obj.items())):
        raise UserError(f"responses file {path} is damaged: expected "
                        "{\"model\": [std per layer, ...]} with finite numbers")
    return obj


def read_degradation(path: Path) -> DegradationResult:
    """degradation.json (see reslab.analysis.sweep_result); UserError when it is not that."""
    return DegradationResult.from_json(read_json(path, "degradation file"), path)


def final_metrics(rows: list[dict[str, Any]]) -> dict[str, dict[str, Any]]:
    """The last evaluation row of each split; for test the final one (after training)."""
    last: dict[str, dict[str, Any]] = {}
    for r in rows:
        split = r.get("split")
        if not isinstance(split, str) or "top1" not in r or "loss" not in r:
            continue
        if split == "test" and last.get("test", {}).get("final") and not r.get("final"):
            continue
        last[split] = r
    return dict(sorted(last.items(), key=lambda kv: SPLITS.index(kv[0])
                       if kv[0] in SPLITS else len(SPLITS)))


def _metrics_row(split: str, r: dict[str, Any], balanced: bool) -> list[Any]:
    """A split's row; with balanced, its balanced accuracy and macro-F1 after top-1."""
    top5 = percent(1 - r["top5"]) if "top5" in r else "-"
    figures = ([percent(r["balanced"]) if finite_number(r.get("balanced")) else "-",
                percent(r["macro_f1"]) if finite_number(r.get("macro_f1")) else "-"]
               if balanced else [])
    return [split, percent(r["top1"]), *figures, percent(1 - r["top1"]), top5,
            f"{r['loss']:.4f}", r.get("n", "-")]


def _read_config(run_dir: Path) -> dict[str, Any]:
    path = RunDir(run_dir).config
    return read_toml(path) if path.is_file() else {}


def training_seconds(rows: list[dict[str, Any]]) -> float | None:
    """Training seconds of a run: its last timed evaluation row (resumes included), the number
    degradation.json's train_seconds and every report give."""
    times = [r["time_s"] for r in rows if finite_number(r.get("time_s"))]
    return max(times) if times else None


def _run_line(model: str, data: str, rows: list[dict[str, Any]], run_dir: Path) -> str:
    """"resnet20 on cifar10, 64000 iterations in 1234.0 s of training." plus skipped images
    (summary.json)."""
    path = RunDir(run_dir).summary
    summary = read_json(path, "summary") if path.is_file() else {}
    if not isinstance(summary, dict):
        summary = {}
    skipped = summary.get("skipped_images")
    line = f"{model} on {data}, {plural(max((r['step'] for r in rows), default=0), 'iteration')}"
    seconds = training_seconds(rows)
    if seconds is not None:
        line += f" in {seconds:.1f} s of training"
    if isinstance(skipped, int) and skipped:
        names = [str(n) for n in summary.get("skipped") or [] if isinstance(n, str)]
        shown = f" ({', '.join(names[:10])}{', ...' if len(names) > 10 else ''})" if names else ""
        line += f"; {plural(skipped, 'unreadable image')} skipped{shown}"
    return line + "."


def _run_section(doc: Doc, run_dir: Path) -> dict[str, Any]:
    """Final metrics beside the paper's, and the curves. Returns a one-line summary."""
    config, run = _read_config(run_dir), RunDir(run_dir)
    rows = read_metrics(run.metrics)
    model, data = str(config.get("model", "?")), str(config.get("data", "?"))
    last = final_metrics(rows)
    steps = max((r["step"] for r in rows), default=0)
    doc.para(_run_line(model, data, rows, run_dir))
    # runs that logged the class-balanced figures (since issue 28) show them beside top-1
    balanced = any("balanced" in r for r in last.values())
    figures = ["balanced acc %", "macro-F1 %"] if balanced else []
    doc.table(["split", "top-1 acc %", *figures, "top-1 err %", "top-5 err %", "loss",
               "images"], [_metrics_row(split, r, balanced) for split, r in last.items()])
    ref = paper_reference(model, data)
    test = last.get("test")
    if ref is not None:
        ours = percent(1 - test["top1"]) if test else "-"
        doc.table(["", "top-1 error %"], [[ref[1], percent(ref[0])], ["this run (test)", ours]])
    if run.curves.is_file():
        doc.image(run.curves, "loss and error curves")
    return {"run": run_dir.resolve().name, "model": model, "data": data, "steps": steps,
            "test_error": percent(1 - test["top1"]) if test else "-",
            "paper_error": percent(ref[0]) if ref else "-"}


def _responses_section(doc: Doc, run_dir: Path, level: int) -> None:
    """Fig. 7 for the models in run_dir/responses.json."""
    from .plots import responses_figure

    run = RunDir(run_dir)
    responses = read_responses(run.responses)
    png = run.responses_png
    responses_figure(responses, png)  # redrawn: responses.json may be newer than the figure
    doc.heading(level + 1, "Layer responses (Fig. 7)")
    doc.para("Std of each 3x3 layer's output after BN, before the addition/ReLU.")
    doc.table(["model", "layers", "mean std", "max std"],
              [[k, len(v), f"{sum(v) / max(len(v), 1):.4f}", f"{max(v, default=0):.4f}"]
               for k, v in responses.items()])
    doc.image(png, "layer responses")


def _degradation_section(doc: Doc, run_dir: Path, level: int) -> None:
    """Fig. 6: the sweep's table and figure (redrawn if missing)."""
    from .plots import degradation_figure

    run = RunDir(run_dir)
    result = read_degradation(run.degradation)
    if not run.degradation_png.is_file():
        degradation_figure(result.runs, run.degradation_png,
                           title=f"plain vs ResNet on {result.dataset} (Fig. 6)")
    doc.heading(level + 1, "Degradation: plain vs ResNet (Fig. 6)")
    doc.para(f"Dataset {result.dataset}; every run with the same recipe and budget. "
             "The paper: deeper plain nets have higher training error, deeper ResNets lower.")
    doc.table(["model", "seed", "depth", "final train error %", "final test error %"],
              results_table(result))
    doc.image(run.degradation_png, "degradation curves")
    from .claims import paper_claims, responses_by_model

    responses = (responses_by_model(read_responses(run.responses))
                 if run.responses.is_file() else None)
    doc.heading(level + 1, "The paper's claims, checked")
    doc.table(["claim (section 4.2, Fig. 6 and 7)", "here", "evidence"],
              [[c.text, c.verdict, c.evidence] for c in paper_claims(result, responses)])


def add_run(doc: Doc, run_dir: Path, level: int = 1) -> dict[str, Any] | None:
    """Appends everything run_dir holds; the run summary when it is a training run."""
    run = RunDir(run_dir)
    if not any(p.is_file() for p in (run.metrics, run.responses, run.degradation)):
        raise UserError(f"{run_dir} is not a run directory (no {run.metrics.name}, "
                        f"{run.degradation.name} or {run.responses.name})")
    doc.heading(level, run_dir.resolve().name)
    summary = _run_section(doc, run_dir) if run.metrics.is_file() else None
    if run.responses.is_file():
        _responses_section(doc, run_dir, level)
    if run.degradation.is_file():
        _degradation_section(doc, run_dir, level)
    config = _read_config(run_dir)
    if config:
        doc.heading(level + 1, "Config")
        doc.table(["key", "value"], [[k, v if isinstance(v, str) else json.dumps(v)]
                                     for k, v in sorted(config.items())])
    return summary


def draw_curves(run_dir: Path) -> None:
    from .plots import curves_figure

    run = RunDir(run_dir)
    if run.metrics.is_file():
        curves_figure(read_metrics(run.metrics), run.curves, title=run_dir.resolve().name)


def write_run_report(run_dir: str | Path, *, strict: bool = True) -> None:
    """The run's curves.png and report.md (written by `reslab train` and `reslab.train` after
    every run). strict=False: a failure is one warning line (the weights are saved already; a
    figure must not fail the run)."""
    run_dir = Path(run_dir)
    try:
        draw_curves(run_dir)
        doc = Doc()
        add_run(doc, run_dir)
        atomic_write_text(RunDir(run_dir).report, doc.markdown(run_dir))
    except Exception as e:  # noqa: BLE001
        if strict:
            raise
        warn(f"could not write the run report: {str(e).splitlines()[0] if str(e) else e!r}")


def write_report(run_dirs: list[str | Path], out: str | Path | None = None) -> tuple[Path, Path]:
    """Markdown and HTML report of one or more run directories; returns (md, html) paths.

    out: FILE.md or FILE.html (the other one beside it); default RUN/report.md for one run,
    ./report.md for several.
    """
    dirs = [Path(d) for d in run_dirs]
    for d in dirs:
        if not d.is_dir():
            raise UserError(f"not a directory: {d}")
    out = Path(out) if out else (RunDir(dirs[0]).report if len(dirs) == 1
                                 else RunDir(Path()).report)
    check_writable(out, "report")
    md, page = out.with_suffix(".md"), out.with_suffix(".html")
    for path in (md, page):
        check_writable(path, "report")
    sections, summaries = Doc(), []
    for d in dirs:
        draw_curves(d)
        summaries.append(add_run(sections, d, level=1 if len(dirs) == 1 else 2))
    doc = Doc()
    runs = [s for s in summaries if s]
    if len(dirs) > 1:
        doc.heading(1, "reslab report")
    if len(runs) > 1:
        doc.table(["run", "model", "data", "iterations", "test top-1 err %", "paper %"],
                  [list(s.values()) for s in runs])
    doc.blocks += sections.blocks
    md.parent.mkdir(parents=True, exist_ok=True)
    atomic_write_text(md, doc.markdown(md.parent))
    atomic_write_text(page, doc.html(md.stem if len(dirs) > 1 else dirs[0].resolve().name))
    return md, page

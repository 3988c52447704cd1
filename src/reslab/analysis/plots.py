"""Every figure reslab draws; the only module that imports matplotlib.

matplotlib is imported inside the functions (keeps `import reslab` fast) and used through its
object API (Figure + the Agg canvas): no pyplot global state, no backend switch, safe in threads
and headless. Figures are written atomically like every other run file.
"""
from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path
from typing import TYPE_CHECKING, Any

from ..io import atomic_write

if TYPE_CHECKING:
    from .sweep_result import SweepMember


def _figure(ncols: int, width: float = 5.0, height: float = 3.6) -> tuple[Any, list[Any]]:
    from matplotlib.figure import Figure

    fig = Figure(figsize=(width * ncols, height), layout="constrained")
    return fig, [fig.add_subplot(1, ncols, i + 1) for i in range(ncols)]


def _wrap(text: str, fig: Any, fontsize: float = 12.0) -> str:
    """text broken into lines that fit the figure's width: matplotlib cuts a title longer than
    its figure off at the edges (a run directory's path in a narrow confusion matrix)."""
    import textwrap

    chars = max(16, int(fig.get_figwidth() * 72 / (0.62 * fontsize)))  # ~0.6 em per character
    return "\n".join(textwrap.wrap(text, chars)) or text


def _suptitle(fig: Any, text: str | None, fontsize: float = 12.0) -> None:
    if text:
        fig.suptitle(_wrap(text, fig, fontsize), fontsize=fontsize)


def _save(fig: Any, path: str | Path) -> Path:
    from matplotlib.backends.backend_agg import FigureCanvasAgg

    FigureCanvasAgg(fig)
    atomic_write(path, lambda tmp: fig.savefig(tmp, format="png", dpi=110))
    return Path(path)


def curves_figure(rows: Sequence[dict[str, Any]], path: str | Path,
                  title: str | None = None) -> Path:
    """Loss and error (%) against the iteration, from a run's metrics.jsonl rows.

    Training loss is drawn thin; evaluation rows per split ("train" running error over the
    epoch, as the paper's training curves, "val", "test") as lines with markers.
    """
    fig, (loss_ax, err_ax) = _figure(2)
    steps = [r["step"] for r in rows if "split" not in r and "loss" in r]
    if steps:
        loss_ax.plot(steps, [r["loss"] for r in rows if "split" not in r and "loss" in r],
                     lw=0.8, color="0.6", label="train (batch)")
    for i, split in enumerate(("train", "val", "test")):
        evals = [r for r in rows if r.get("split") == split and not r.get("final")
                 and "loss" in r and "top1" in r]
        if not evals:
            continue
        x = [r["step"] for r in evals]
        style = dict(color=f"C{i}", marker="o", ms=3, label=split)
        loss_ax.plot(x, [r["loss"] for r in evals], **style)
        err_ax.plot(x, [100 * (1 - r["top1"]) for r in evals],
                    ls="--" if split == "train" else "-", **style)
    loss_ax.set(xlabel="iteration", ylabel="loss", title="loss")
    err_ax.set(xlabel="iteration", ylabel="top-1 error (%)", title="error")
    for ax in (loss_ax, err_ax):
        ax.grid(alpha=0.3)
        if ax.get_legend_handles_labels()[0]:
            ax.legend()
    _suptitle(fig, title)
    return _save(fig, path)


def degradation_figure(runs: Sequence[SweepMember], path: str | Path,
                       title: str | None = None) -> Path:
    """Fig. 6: plain nets (left) and ResNets (right); dashed training error, bold test error,
    one colour per depth. runs: degradation.json's runs."""
    fig, axes = _figure(2)
    depths = sorted({r.depth for r in runs})
    colour = {d: f"C{i % 10}" for i, d in enumerate(depths)}
    for ax, residual, name in ((axes[0], False, "plain"), (axes[1], True, "ResNet")):
        for run in sorted((r for r in runs if r.residual == residual), key=lambda r: r.depth):
            c = colour[run.depth]
            for key, style in (("train_error", {"ls": "--", "lw": 1}),
                               ("test_error", {"lw": 2.2, "label": f"{name}-{run.depth}"})):
                # Each series its own points: training errors may be logged between tests.
                points = [(p.step, getattr(p, key)) for p in run.curve
                          if getattr(p, key) is not None]
                dots = {"marker": "o", "ms": 3} if len(points) < 30 else {}  # short: visible
                ax.plot([s for s, _ in points], [_pct(e) for _, e in points], color=c,
                        **style, **dots)
        ax.set(xlabel="iteration", ylabel="error (%)", title=name)
        ax.grid(alpha=0.3)
        if ax.get_legend_handles_labels()[0]:
            ax.legend(title="bold: test, dashed: train", fontsize="small")
    top = _error_axis_top(runs)
    for ax in axes:  # one scale for both panels, so plain and ResNet compare at a glance
        ax.set_ylim(0, top)
    _suptitle(fig, title)
    return _save(fig, path)


def convergence_figure(runs: dict[str, tuple[Sequence[tuple[int, float]], int, int]],
                       path: str | Path, title: str | None = None) -> Path:
    """The convergence gate's evidence: each run's training error over its last lr phase, the
    span the gate judges drawn bold. runs: {label: (curve of (step, error), the step the last
    lr phase starts at, the first step of the judged span)}."""
    from matplotlib import colormaps

    fig, (ax,) = _figure(1, width=8.0, height=4.4)
    colours = colormaps["tab20"].colors
    for i, (label, (curve, phase, judged)) in enumerate(runs.items()):
        c = colours[i % len(colours)]
        # x: iterations since the last lr drop, so runs of other lengths line up
        late = [(s - phase, e) for s, e in curve if s > phase]
        ax.plot([s for s, _ in late], [_pct(e) for _, e in late], color=c, lw=0.8, alpha=0.6)
        span = [(s, e) for s, e in late if s > judged - phase]
        ax.plot([s for s, _ in span], [_pct(e) for _, e in span], color=c, lw=2, label=label)
    ax.set(xlabel="iterations since the last lr drop", ylabel="training error (%)")
    ax.grid(alpha=0.3)
    if ax.get_legend_handles_labels()[0]:
        ax.legend(fontsize="x-small", ncols=2, title="bold: the span judged")
    _suptitle(fig, title)
    return _save(fig, path)


def _error_axis_top(runs: Sequence[SweepMember]) -> float:
    """The error axis' upper end: 2.5x the largest final error (the paper's Fig. 6 clips its
    first iterations the same way, at 20%), so the converged differences are not squeezed
    under the first epochs' 50%; never above the largest error shown."""
    errors = [_pct(e) for r in runs for p in r.curve for e in (p.train_error, p.test_error)
              if e is not None]
    finals = [_pct(e) for r in runs for e in (r.final_train_error, r.final_test_error)
              if e is not None]
    if not errors:
        return 100.0
    return min(max(errors), max(2.5 * max(finals, default=0.0), 5.0)) * 1.02


def _pct(v: float | None) -> float:
    return float("nan") if v is None else 100 * v


def responses_figure(responses: dict[str, Sequence[float]], path: str | Path,
                     title: str | None = None) -> Path:
    """Fig. 7: the std of each 3x3 layer's response, in layer order (left) and sorted in
    descending order (right), one line per model."""
    fig, (left, right) = _figure(2)
    for label, stds in responses.items():
        # Plain nets dashed, ResNets solid, so the two kinds read apart as in Fig. 7.
        style = {"marker": ".", "lw": 1, "label": label,
                 "ls": "--" if label.startswith("plain") else "-"}
        x = range(1, len(stds) + 1)
        left.plot(x, stds, **style)
        right.plot(x, sorted(stds, reverse=True), **style)
    left.set(xlabel="layer index (original)", ylabel="std", title="layer responses")
    right.set(xlabel="layer index (sorted by magnitude)", ylabel="std", title="sorted")
    for ax in (left, right):
        ax.grid(alpha=0.3)
        if responses:
            ax.legend(fontsize="small")
    _suptitle(fig, title)
    return _save(fig, path)


def plot_confusion(cm: Any, class_names: Sequence[str], path: str | Path,
                   title: str = "confusion matrix") -> Path:
    """Confusion matrix (rows: true class, columns: predicted), counts written in the cells."""
    counts = [[int(v) for v in row] for row in (cm.tolist() if hasattr(cm, "tolist") else cm)]
    k = len(class_names)
    fig, (ax,) = _figure(1, width=max(4.0, 0.5 * k + 2), height=max(3.6, 0.5 * k + 1.5))
    ax.imshow(counts, cmap="Blues")
    ax.set_xticks(range(k), class_names, rotation=45, ha="right", fontsize=8)
    ax.set_yticks(range(k), class_names, fontsize=8)
    ax.set(xlabel="predicted class", ylabel="true class", title=_wrap(title, fig))
    top = max(max(row) for row in counts) or 1
    if k <= 30:
        for i, row in enumerate(counts):
            for j, v in enumerate(row):
                ax.text(j, i, str(v), ha="center", va="center", fontsize=7,
                        color="white" if v > top / 2 else "black")
    return _save(fig, path)


def cam_figure(image: Any, heat: Any, path: str | Path, title: str) -> Path:
    """Grad-CAM (reslab.deploy.cam): the crop the model saw (C, H, W in [0, 1]) on the left and
    the heat map (H, W in [0, 1]) over it on the right, drawn large: every input pixel a square
    (nearest), the heat map smooth (bilinear) with its colour bar."""
    pixels = image.permute(1, 2, 0).numpy()
    gray = pixels.shape[2] == 1
    shown = pixels[..., 0] if gray else pixels
    fig, (left, right) = _figure(2, width=3.6, height=3.4)
    for ax in (left, right):
        ax.imshow(shown, cmap="gray" if gray else None, vmin=0, vmax=1, interpolation="nearest")
        ax.set_axis_off()
    overlay = right.imshow(heat.numpy(), cmap="jet", alpha=0.45, vmin=0, vmax=1,
                           interpolation="bilinear")
    fig.colorbar(overlay, ax=right, fraction=0.046, shrink=0.9)
    left.set_title("as the model saw it", fontsize=9)
    right.set_title("Grad-CAM", fontsize=9)
    _suptitle(fig, title, fontsize=10)
    return _save(fig, path)


def lr_find_figure(result: dict[str, Any], path: str | Path) -> Path:
    """The learning-rate range test (reslab.engine.lr_find): loss per step (thin) and its
    smoothed curve against the lr on a log axis, the suggestion marked. The y axis shows the
    smoothed loss from its start down to its minimum, with a margin: the last steps' blow-up
    (up to 4x the minimum, and single losses far beyond) runs off the top instead of squashing
    the useful part."""
    fig, (ax,) = _figure(1, width=6.0, height=4.0)
    lrs, smoothed = result["lrs"], result["smoothed"]
    ax.plot(lrs, result["losses"], lw=0.6, color="0.7", label="loss per step")
    ax.plot(lrs, smoothed, lw=1.8, color="C0", label="smoothed loss")
    if result.get("suggestion") is not None:
        i = result["suggestion_index"]
        ax.axvline(lrs[i], color="C3", ls="--", lw=1)
        ax.plot([lrs[i]], [smoothed[i]], "o", color="C3",
                label=f"suggestion {lrs[i]:.3g} (steepest descent)")
    if smoothed:
        lowest = min(range(len(smoothed)), key=smoothed.__getitem__)
        low, high = smoothed[lowest], max(smoothed[:lowest + 1])
        span = max(high - low, 0.05 * abs(high), 1e-6)
        ax.set_ylim(low - 0.15 * span, high + 0.25 * span)
    ax.set_xscale("log")
    ax.set(xlabel="learning rate (log scale)", ylabel="training loss",
           title=_wrap(f"lr range test: {result['model']} on {result['data']}", fig))
    ax.grid(alpha=0.3, which="both")
    ax.legend(fontsize="small")
    return _save(fig, path)


def ratios_figure(ratios: dict[str, Sequence[float]], path: str | Path,
                  title: str | None = None) -> Path:
    """||F(x)|| / ||x|| of every residual block in forward order, one line per ResNet (the
    residual branch's size against the identity it is added to; docs/notes.md, "What the layer
    responses show")."""
    fig, (ax,) = _figure(1, width=6.5, height=3.8)
    for label, values in ratios.items():
        ax.plot(range(1, len(values) + 1), values, marker=".", lw=1, label=label)
    ax.set(xlabel="residual block (forward order)", ylabel="||F(x)|| / ||x||",
           title=title or "residual function against its input")
    ax.set_ylim(bottom=0)
    ax.grid(alpha=0.3)
    if ratios:
        ax.legend(fontsize="small")
    return _save(fig, path)


def bars_figure(groups: dict[str, Sequence[float]], path: str | Path, *, ylabel: str,
                title: str) -> Path:
    """One bar per group at the mean of its values (in %, e.g. errors), each value a dot and
    the range a line, so one seed and several read alike."""
    fig, (ax,) = _figure(1, width=max(4.0, 1.1 * len(groups) + 2), height=3.6)
    for i, (label, values) in enumerate(groups.items()):
        vals = [100 * v for v in values]
        if not vals:
            continue
        ax.bar(i, sum(vals) / len(vals), color=f"C{i % 10}", alpha=0.6)
        ax.plot([i] * len(vals), vals, "k.", ms=6)
        if len(vals) > 1:
            ax.plot([i, i], [min(vals), max(vals)], "k-", lw=1)
    ax.set_xticks(range(len(groups)), list(groups), rotation=15, ha="right", fontsize=8)
    ax.set(ylabel=ylabel, title=title)
    ax.grid(alpha=0.3, axis="y")
    return _save(fig, path)


def image_grid_figure(images: Any, titles: Sequence[str], path: str | Path,
                      title: str) -> Path:
    """Images (N, C, H, W in [0, 1]; 1 channel drawn gray) in a near-square grid, each with its
    title under the figure's: `reslab show-batch` (fastai's show_batch) and `eval --top-losses`
    (fastai's plot_top_losses)."""
    import math

    from matplotlib.figure import Figure

    n = len(images)
    cols = max(1, math.ceil(math.sqrt(n)))
    rows = max(1, math.ceil(n / cols))
    lines = max((t.count("\n") + 1 for t in titles), default=1)
    fig = Figure(figsize=(1.9 * cols, (1.9 + 0.16 * lines) * rows + 0.5), layout="constrained")
    for i in range(rows * cols):
        ax = fig.add_subplot(rows, cols, i + 1)
        ax.set_axis_off()
        if i >= n:
            continue
        pixels = images[i].permute(1, 2, 0).clamp(0, 1).numpy()
        gray = pixels.shape[2] == 1
        ax.imshow(pixels[..., 0] if gray else pixels, cmap="gray" if gray else None, vmin=0,
                  vmax=1, interpolation="nearest")
        ax.set_title(titles[i], fontsize=7)
    fig.suptitle(title, fontsize=10)
    return _save(fig, path)

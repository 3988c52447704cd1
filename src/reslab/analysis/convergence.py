"""The convergence gate: had a run's training error stopped moving at its last learning rate?

A claim about trained networks (Fig. 6's orderings, Fig. 7, the shortcut options, the further
training of a grown net, the notes' questions) says something only about runs that finished
learning what their schedule lets them learn. The criterion, stated once here and on the page:

- the judged span is the final lr phase after its first SETTLE_FRACTION (the drop that follows
  the lr change settles there);
- it must be long enough to tell: at least MIN_POINTS training-error points and MIN_EPOCHS
  epochs (else "too short to tell");
- a least-squares line through its points gives how much the training error moved across the
  span (`moved`, the slope times the span) and the standard error of that movement from the
  points' scatter around the line (`se`);
- the run has converged within a tolerance when |moved| <= tolerance, and the fit can resolve
  that tolerance: 2 se <= tolerance (else "too noisy to tell": the points scatter too much to
  say whether it moved by as much as the tolerance).

The tolerance is set by the claim, below the smallest effect it compares: half the gap of an
ordering of training or test errors, and DEFAULT_TOLERANCE for a claim that compares no errors
(responses, the notes' questions). A claim that compares the mean of several seeds is read on
the mean of their curves (`pooled`), whose scatter is a mean's, at the claim's tolerance; each
seed must still be flat within DEFAULT_TOLERANCE (claims.checks).
"""
from __future__ import annotations

import dataclasses
import math
import statistics
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

SETTLE_FRACTION = 0.25   # of the final phase, left out: the error drops right after the lr does
MIN_POINTS = 6           # training-error points in the judged span
MIN_EPOCHS = 1.0         # epochs in the judged span: enough images to average over
# 2 points of training error, for claims that compare no errors (and the most any claim
# allows): a laptop's running training error (augmented batches, ~2,000 images a point)
# scatters by about a point, so a finer tolerance needs far longer final phases to resolve.
DEFAULT_TOLERANCE = 0.02

FLAT, MOVING, TOO_SHORT, TOO_NOISY = "flat", "still moving", "too short to tell", \
    "too noisy to tell"


@dataclass(frozen=True)
class Convergence:
    """What the training-error curve of one run says about its final lr phase."""

    label: str
    start: int                 # first step of the judged span (after the settling part)
    end: int                   # its last point's step
    points: int                # training-error points in the span
    epochs: float | None       # the span in epochs (None: the epoch length is unknown)
    moved: float | None        # fitted change of the training error across the span
    se: float | None           # standard error of `moved`

    @property
    def long_enough(self) -> bool:
        return self.points >= MIN_POINTS and (self.epochs is None or self.epochs >= MIN_EPOCHS)

    def status(self, tolerance: float) -> str:
        """FLAT, MOVING, TOO_SHORT or TOO_NOISY at this tolerance (a fraction, 0.01 = 1 point)."""
        if not self.long_enough or self.moved is None or self.se is None:
            return TOO_SHORT
        if abs(self.moved) > tolerance:
            return MOVING
        if 2 * self.se > tolerance:
            return TOO_NOISY
        return FLAT

    def converged(self, tolerance: float) -> bool:
        return self.status(tolerance) == FLAT

    def to_json(self) -> dict[str, Any]:
        return dataclasses.asdict(self)

    @classmethod
    def from_json(cls, obj: Any) -> Convergence:
        """A reading written by to_json; ValueError when obj is not one."""
        if not isinstance(obj, dict) or set(obj) != {f.name for f in dataclasses.fields(cls)}:
            raise ValueError("convergence reading")
        if not (isinstance(obj["label"], str)
                and all(isinstance(obj[k], int) for k in ("start", "end", "points"))
                and all(obj[k] is None or isinstance(obj[k], (int, float))
                        for k in ("epochs", "moved", "se"))):
            raise ValueError("convergence reading")
        return cls(**obj)

    def describe(self, tolerance: float) -> str:
        """"plain20-s0: moved +0.31 points (s.e. 0.20) over steps 705-940 (12 points, 3.0
        epochs); tolerance 1.50 points: flat"."""
        epochs = "" if self.epochs is None else f", {self.epochs:.1f} epochs"
        span = (f"steps {self.start}-{self.end} ({self.points} "
                f"point{'' if self.points == 1 else 's'}{epochs})")
        if self.status(tolerance) == TOO_SHORT or self.moved is None or self.se is None:
            return (f"{self.label}: {span}; at least {MIN_POINTS} points and "
                    f"{MIN_EPOCHS:g} epoch needed: {TOO_SHORT}")
        sign = "+" if self.moved >= 0 else ""
        return (f"{self.label}: moved {sign}{100 * self.moved:.2f} points (s.e. "
                f"{100 * self.se:.2f}) over {span}; tolerance {100 * tolerance:.2f} points: "
                f"{self.status(tolerance)}")


def convergence(label: str, curve: Sequence[tuple[int, float]], final_lr_from: int,
                steps_per_epoch: float | None) -> Convergence:
    """The judged span of a run's curve ((step, training error) points, in step order) whose
    last lr phase starts after step final_lr_from."""
    last = max((s for s, _ in curve), default=final_lr_from)
    start = final_lr_from + SETTLE_FRACTION * (last - final_lr_from)
    span = [(s, e) for s, e in curve if s > start]
    first = round(start)
    end = span[-1][0] if span else last
    epochs = (end - first) / steps_per_epoch if steps_per_epoch else None
    moved = se = None
    if len(span) >= 3:
        xs, ys = [float(s) for s, _ in span], [e for _, e in span]
        slope, intercept = statistics.linear_regression(xs, ys)
        width = end - first
        residuals = [y - (slope * x + intercept) for x, y in zip(xs, ys)]
        sxx = sum((x - statistics.fmean(xs)) ** 2 for x in xs)
        spread = math.sqrt(sum(r * r for r in residuals) / (len(span) - 2)) if sxx else 0.0
        moved = slope * width
        se = spread / math.sqrt(sxx) * width if sxx else math.inf
    return Convergence(label, first, end, len(span), epochs, moved, se)


def pooled(label: str, runs: Sequence[Convergence]) -> Convergence | None:
    """The reading of the mean curve of runs judged over the same span (the seeds of one net,
    whose mean a claim compares): the fitted movement of a mean curve is the mean of the runs'
    (least squares is linear in the errors), and its standard error that of a mean of
    independent runs, sqrt(sum of se^2) / k. None for fewer than two runs, different spans, or
    a run too short to fit."""
    spans = {(r.start, r.end, r.points, r.epochs) for r in runs}
    if len(runs) < 2 or len(spans) != 1:
        return None
    moved = [r.moved for r in runs if r.moved is not None]
    se = [r.se for r in runs if r.se is not None]
    if len(moved) != len(runs) or len(se) != len(runs):
        return None
    k, first = len(runs), runs[0]
    return Convergence(f"{label} (mean of {k} runs)", first.start, first.end, first.points,
                       first.epochs, statistics.fmean(moved),
                       math.sqrt(sum(s * s for s in se)) / k)

"""The paper's claims about depth (section 4.2, Fig. 6 and Fig. 7), judged against a sweep.

Each claim is an ordering of two measured quantities (a final training or test error from
degradation.json, a mean layer response from responses.json), each averaged over the seeds it
was run with. The verdict compares the gap with the seeds' noise, the standard error of the
difference of the two means (both sides' seeds, not one side's):

- holds: the gap points the paper's way by more than NOISE_SE standard errors;
- does not hold: it points the other way by more than that;
- not judged: the gap is within the noise, a side has fewer than two seeds (its noise is
  unknown), or a number is missing (not measured at this budget).

Nothing is tuned here: this only reads what the runs did.
"""
from __future__ import annotations

import math
import statistics
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from itertools import combinations

from .sweep_result import CurvePoint, DegradationResult, SweepMember

HOLDS, FAILS, NOT_JUDGED = "holds", "does not hold", "not judged"
NOISE_SE = 2.0   # a gap beyond two standard errors of the difference is not seed noise


@dataclass(frozen=True)
class Stat:
    """One side of a comparison: its label and the value of each seed's run."""

    label: str
    values: tuple[float, ...]

    @property
    def mean(self) -> float:
        return statistics.fmean(self.values)

    @property
    def std(self) -> float | None:
        return statistics.stdev(self.values) if len(self.values) >= 2 else None


@dataclass(frozen=True)
class Claim:
    """A claim of the paper, its verdict here and the numbers behind it."""

    text: str
    verdict: str                         # HOLDS, FAILS or NOT_JUDGED
    evidence: str
    gap: float | None = None             # the measured gap, in the paper's direction
    noise: float | None = None           # NOISE_SE standard errors of that gap
    notes: tuple[str, ...] = field(default=())

    @property
    def holds(self) -> bool | None:
        return {HOLDS: True, FAILS: False}.get(self.verdict)


def pct(v: float) -> str:
    return f"{100 * v:.2f}%"


def points(v: float) -> str:
    return f"{100 * v:.2f} points"


def _side(s: Stat, fmt: Callable[[float], str]) -> str:
    if len(s.values) == 1:
        return f"{s.label} {fmt(s.mean)} (1 seed)"
    return f"{s.label} {fmt(s.mean)} (mean of {len(s.values)} seeds, std {fmt(s.std or 0)})"


def noise_of(a: Stat, b: Stat) -> float | None:
    """NOISE_SE standard errors of mean(b) - mean(a); None when a side has one seed."""
    if a.std is None or b.std is None:
        return None
    return NOISE_SE * math.sqrt(a.std ** 2 / len(a.values) + b.std ** 2 / len(b.values))


def ordering(text: str, lower: Stat | None, higher: Stat | None,
             fmt: Callable[[float], str] = pct, gap_fmt: Callable[[float], str] = points,
             noise: float | None = None, at_most: bool = False) -> Claim:
    """The claim "`lower` is below `higher`", judged against the seeds' noise (noise_of, or
    `noise` when given: a scale measured elsewhere, for sides run with one seed). at_most:
    the claim is "`lower` is no higher than `higher`", which a gap within the noise fits."""
    if lower is None or higher is None or not lower.values or not higher.values:
        return Claim(text, NOT_JUDGED, "not measured at this budget")
    gap = higher.mean - lower.mean
    noise = noise_of(lower, higher) if noise is None else noise
    evidence = f"{_side(lower, fmt)} vs {_side(higher, fmt)}"
    if noise is None:
        return Claim(text, NOT_JUDGED, f"{evidence}; gap {gap_fmt(gap)}, noise unknown (a "
                     "side has one seed)", gap)
    evidence += f"; gap {gap_fmt(gap)}, noise {gap_fmt(noise)} ({NOISE_SE:g} s.e.)"
    if abs(gap) <= noise:
        return Claim(text, HOLDS if at_most else NOT_JUDGED,
                     f"{evidence}: within the seeds' noise", gap, noise)
    return Claim(text, HOLDS if gap > 0 else FAILS, evidence, gap, noise)


def run_stats(result: DegradationResult, which: str) -> dict[str, Stat]:
    """{model: Stat of its final `which` ("train" or "test") error over its seeds} from
    degradation.json's runs (every seed)."""
    values: dict[str, list[float]] = {}
    for r in result.runs:
        error = r.final_error(which)
        if error is not None:
            values.setdefault(r.model, []).append(float(error))
    return {m: Stat(m, tuple(v)) for m, v in values.items()}


def _depths(result: DegradationResult, residual: bool) -> dict[int, str]:
    return {r.depth: r.model for r in result.runs if r.residual == residual}


def error_claims(result: DegradationResult) -> list[Claim]:
    """Fig. 6: deeper plain nets train worse; deeper ResNets train (and test) better; at every
    depth the ResNet trains better than the plain net. Every seed counts."""
    train, test = run_stats(result, "train"), run_stats(result, "test")
    plain, res = _depths(result, False), _depths(result, True)
    claims = []
    for d1, d2 in combinations(sorted(plain), 2):
        a, b = plain[d1], plain[d2]
        claims.append(ordering(f"plain-{d2} has a higher training error than plain-{d1} "
                               "(degradation)", train.get(a), train.get(b)))
    for d1, d2 in combinations(sorted(res), 2):
        a, b = res[d1], res[d2]
        for stats, what in ((train, "training"), (test, "test")):
            claims.append(ordering(f"{b} has a lower {what} error than {a}", stats.get(b),
                                   stats.get(a)))
    for d in sorted(set(plain) & set(res)):
        claims.append(ordering(f"{res[d]} has a lower training error than {plain[d]}",
                               train.get(res[d]), train.get(plain[d])))
    return claims


def _mean_response(stds: Sequence[float]) -> float:
    return statistics.fmean(stds)


def response_claims(responses: dict[str, list[list[float]]]) -> list[Claim]:
    """Fig. 7: ResNets respond less than plain nets of the same depth, deeper ResNets less than
    shallower ones; on the mean std over the 3x3 layers and layer by layer. responses: {model:
    [stds in layer order, one list per seed]}."""
    fmt = "{:.3f}".format
    means = {m: Stat(m, tuple(_mean_response(s) for s in runs)) for m, runs in responses.items()
             if runs}
    res = sorted((int(k[6:]), k) for k in means if k.startswith("resnet") and k[6:].isdigit())
    claims = []
    for depth, name in res:
        plain = f"plain{depth}"
        if plain in means:
            claims.append(ordering(f"{name}'s responses are smaller than {plain}'s (mean over "
                                   "layers)", means[name], means[plain], fmt, fmt))
            claims.append(layerwise(f"{name}'s responses are smaller than {plain}'s, layer by "
                                    "layer", responses[name], responses[plain]))
    for (d1, a), (d2, b) in combinations(res, 2):
        claims.append(ordering(f"{b}'s responses are smaller than {a}'s (mean over layers)",
                               means[b], means[a], fmt, fmt))
        claims.append(layerwise(f"{b}'s responses are smaller than {a}'s, layer by layer "
                                "(sorted by magnitude)", responses[b], responses[a],
                                sort=True))
    return claims


def _at(curve: Sequence[float], i: int, n: int) -> float:
    """curve's value at the relative position of i among n (curves of other lengths)."""
    return curve[round(i * (len(curve) - 1) / max(1, n - 1))]


def layerwise(text: str, smaller: list[list[float]], larger: list[list[float]],
              sort: bool = False) -> Claim:
    """The ordering at each layer (seed means; sorted curves compared at the same relative
    position when the depths differ): holds when it holds beyond the seeds' noise at more than
    half the layers, does not hold when it is reversed beyond the noise at more than half."""
    def prep(runs: list[list[float]]) -> list[list[float]]:
        return [sorted(r, reverse=True) if sort else list(r) for r in runs]

    a, b = prep(smaller), prep(larger)
    n = min(len(a[0]), len(b[0]))
    won = lost = 0
    for i in range(n):
        sa = Stat("a", tuple(_at(r, i, n) for r in a))
        sb = Stat("b", tuple(_at(r, i, n) for r in b))
        c = ordering("", sa, sb, noise=0.0 if len(a) < 2 or len(b) < 2 else None)
        won += c.verdict == HOLDS
        lost += c.verdict == FAILS
    seeds = min(len(a), len(b))
    how = "beyond the seeds' noise" if seeds >= 2 else "(1 seed: no noise estimate)"
    evidence = (f"smaller at {won} of {n} layers, larger at {lost}, {how}")
    if seeds < 2:
        return Claim(text, NOT_JUDGED, evidence)
    verdict = HOLDS if won > n / 2 else FAILS if lost > n / 2 else NOT_JUDGED
    return Claim(text, verdict, evidence)


def final_phase(run: SweepMember, milestones: Sequence[int]) -> list[CurvePoint]:
    """The run's curve points with a training error after its last lr drop."""
    start = max(milestones) if milestones else 0
    return [p for p in run.curve if p.step > start and p.train_error is not None]


def flattened(run: SweepMember, milestones: Sequence[int], effect: float) -> Claim:
    """Whether a run's training error had flattened at its last learning rate: the least-squares
    slope over the whole final phase, times the phase's length (how much the error still moved
    across it), is smaller than half the effect it is used to interpret (the smallest gap of the
    Fig. 6 comparisons the run is part of). Needs three points in the phase."""
    curve = final_phase(run, milestones)
    text = f"{run.label}'s training error flattened at the last lr"
    if len(curve) < 3:
        return Claim(text, NOT_JUDGED, f"{len(curve)} training-error point(s) after the last "
                     "lr drop; 3 needed")
    start = max(milestones) if milestones else 0
    steps = [p.step for p in curve]
    slope, _ = statistics.linear_regression(steps, [p.train_error or 0.0 for p in curve])
    moved = slope * (steps[-1] - start)
    tolerance = effect / 2
    evidence = (f"slope over steps {start}-{steps[-1]} ({len(curve)} points): "
                f"{'+' if moved >= 0 else ''}{100 * moved:.2f} points across the phase; "
                f"tolerance {points(tolerance)} (half the smallest gap it is compared by)")
    return Claim(text, HOLDS if abs(moved) < tolerance else FAILS, evidence)


DEFAULT_EFFECT = 0.005   # 0.5 points: a run compared with nothing is held to this


def smallest_effects(result: DegradationResult) -> dict[str, float]:
    """{model: the smallest |gap| of mean final training errors among the Fig. 6 pairs it is
    part of} (every pair error_claims judges)."""
    train = run_stats(result, "train")
    plain, res = _depths(result, False), _depths(result, True)
    pairs = [(plain[a], plain[b]) for a, b in combinations(sorted(plain), 2)]
    pairs += [(res[a], res[b]) for a, b in combinations(sorted(res), 2)]
    pairs += [(plain[d], res[d]) for d in set(plain) & set(res)]
    effect: dict[str, float] = {}
    for a, b in pairs:
        if a in train and b in train:
            gap = abs(train[a].mean - train[b].mean)
            for m in (a, b):
                effect[m] = min(effect.get(m, math.inf), gap)
    return effect


def flatness_claims(result: DegradationResult) -> list[Claim]:
    """flattened() for every member of the sweep, every seed."""
    effects = smallest_effects(result)
    return [flattened(r, result.milestones, effects.get(r.model, DEFAULT_EFFECT)
                      or DEFAULT_EFFECT) for r in result.runs]


def paper_claims(result: DegradationResult,
                 responses: dict[str, list[list[float]]] | None = None) -> list[Claim]:
    """Every check: the runs' flattening first (a claim on unconverged runs says little), then
    Fig. 6's error orderings, then Fig. 7's response orderings."""
    return flatness_claims(result) + error_claims(result) + response_claims(responses or {})


def responses_by_model(responses: dict[str, list[float]]) -> dict[str, list[list[float]]]:
    """responses.json ({label: stds}, labels "plain20", "plain20-seed1", ...) grouped by model."""
    out: dict[str, list[list[float]]] = {}
    for label, stds in responses.items():
        out.setdefault(label.split("-seed")[0], []).append(list(stds))
    return out

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

from .convergence import (DEFAULT_TOLERANCE, FLAT, MOVING, Convergence, convergence, pooled)
from .sweep_result import DegradationResult, SweepMember

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
    sides: tuple[str, ...] = ()          # the labels of what it compares (the convergence gate)

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
    sides = (lower.label, higher.label)
    gap = higher.mean - lower.mean
    noise = noise_of(lower, higher) if noise is None else noise
    evidence = f"{_side(lower, fmt)} vs {_side(higher, fmt)}"
    if noise is None:
        return Claim(text, NOT_JUDGED, f"{evidence}; gap {gap_fmt(gap)}, noise unknown (a "
                     "side has one seed)", gap, sides=sides)
    evidence += f"; gap {gap_fmt(gap)}, noise {gap_fmt(noise)} ({NOISE_SE:g} s.e.)"
    if abs(gap) <= noise:
        return Claim(text, HOLDS if at_most else NOT_JUDGED,
                     f"{evidence}: within the seeds' noise", gap, noise, sides=sides)
    return Claim(text, HOLDS if gap > 0 else FAILS, evidence, gap, noise, sides=sides)


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
                                    "layer", responses[name], responses[plain],
                                    sides=(name, plain)))
    for (d1, a), (d2, b) in combinations(res, 2):
        claims.append(ordering(f"{b}'s responses are smaller than {a}'s (mean over layers)",
                               means[b], means[a], fmt, fmt))
        claims.append(layerwise(f"{b}'s responses are smaller than {a}'s, layer by layer "
                                "(sorted by magnitude)", responses[b], responses[a],
                                sort=True, sides=(b, a)))
    return claims


def _at(curve: Sequence[float], i: int, n: int) -> float:
    """curve's value at the relative position of i among n (curves of other lengths)."""
    return curve[round(i * (len(curve) - 1) / max(1, n - 1))]


def layerwise(text: str, smaller: list[list[float]], larger: list[list[float]],
              sort: bool = False, sides: tuple[str, ...] = ()) -> Claim:
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
        return Claim(text, NOT_JUDGED, evidence, sides=sides)
    verdict = HOLDS if won > n / 2 else FAILS if lost > n / 2 else NOT_JUDGED
    return Claim(text, verdict, evidence, sides=sides)


def member_convergence(run: SweepMember, milestones: Sequence[int]) -> Convergence:
    """The convergence gate's reading of one run (analysis.convergence): its training-error
    curve after the last lr drop (the whole run when there is none)."""
    curve = [(p.step, p.train_error) for p in run.curve if p.train_error is not None]
    return convergence(run.label, curve, max(milestones, default=0), run.steps_per_epoch)


def tolerance_for(claim: Claim, errors: bool) -> float:
    """How far a member of `claim` may still move for the claim to be judged: below the effect
    it compares, half the gap of an ordering of errors (errors: the gap is in error units), at
    most DEFAULT_TOLERANCE."""
    if errors and claim.gap is not None:
        return min(DEFAULT_TOLERANCE, abs(claim.gap) / 2)
    return DEFAULT_TOLERANCE


def checks(claim: Claim, members: dict[str, list[Convergence]],
           errors: bool) -> list[tuple[Convergence, float]]:
    """What the gate reads for a claim, each reading at its tolerance. A side run with several
    seeds over the same span is read as the mean of its seeds (what the claim compares) at the
    claim's tolerance, and each seed at DEFAULT_TOLERANCE (every run must have finished
    training); a side with one run is read at the claim's tolerance."""
    tolerance = tolerance_for(claim, errors)
    out: list[tuple[Convergence, float]] = []
    for side in claim.sides:
        runs = members.get(side, [])
        mean = pooled(side, runs)
        if mean is None:
            out += [(r, tolerance) for r in runs]
        else:
            out += [(r, DEFAULT_TOLERANCE) for r in runs] + [(mean, tolerance)]
    return out


def gate(claims: Sequence[Claim], members: dict[str, list[Convergence]],
         errors: bool) -> list[Claim]:
    """The claims with every verdict on a member that had not converged turned into "not
    judged", naming that member and its numbers. members: {a claim side's label: the
    convergence of each of its runs}; a side with no reading is not judged either."""
    out = []
    for c in claims:
        if c.verdict == NOT_JUDGED or not c.sides:
            out.append(c)
            continue
        unread = [side for side in c.sides if not members.get(side)]
        failed = [(r, tol) for r, tol in checks(c, members, errors) if not r.converged(tol)]
        if unread:
            out.append(Claim(c.text, NOT_JUDGED, f"not judged: no training curve of "
                             f"{', '.join(unread)} to check its convergence; {c.evidence}",
                             c.gap, c.noise, c.notes, c.sides))
        elif failed:
            why = "; ".join(r.describe(tol) for r, tol in failed)
            out.append(Claim(c.text, NOT_JUDGED, f"not judged: {failed[0][0].label} had not "
                             f"converged ({why}); {c.evidence}", c.gap, c.noise, c.notes,
                             c.sides))
        else:
            out.append(c)
    return out


def checked(claims: Sequence[tuple[Sequence[Claim], bool]],
            members: dict[str, list[Convergence]]) -> dict[str, tuple[Convergence, float]]:
    """{label: (reading, the tolerance of the most demanding judged claim that reads it)} for
    every reading the gate checks (runs and the means of seeds); claims: (claims, errors)
    groups. A run no judged claim reads is not in it (DEFAULT_TOLERANCE applies)."""
    out: dict[str, tuple[Convergence, float]] = {}
    for group, errors in claims:
        for c in group:
            if c.verdict == NOT_JUDGED:
                continue
            for r, tol in checks(c, members, errors):
                if r.label not in out or tol < out[r.label][1]:
                    out[r.label] = (r, tol)
    return out


def convergence_claims(runs: Sequence[Convergence],
                       read: dict[str, tuple[Convergence, float]] | None = None) -> list[Claim]:
    """One row per run, then one per mean of seeds the gate read (`read`, from checked): "had
    converged at its last lr" holds (flat within its tolerance), does not hold (still moving),
    or is not judged (too short or too noisy to tell)."""
    read = read or {}
    labels = {r.label for r in runs}
    rows = []
    for r in [*runs, *(m for m, _ in read.values() if m.label not in labels)]:
        tol = read[r.label][1] if r.label in read else DEFAULT_TOLERANCE
        status = r.status(tol)
        verdict = HOLDS if status == FLAT else FAILS if status == MOVING else NOT_JUDGED
        rows.append(Claim(f"{r.label}'s training error had converged at its last lr", verdict,
                          r.describe(tol), sides=(r.label,)))
    return rows


def by_model(result: DegradationResult) -> dict[str, list[Convergence]]:
    """{model: the convergence of each of its runs} for a sweep."""
    out: dict[str, list[Convergence]] = {}
    for r in result.runs:
        out.setdefault(r.model, []).append(member_convergence(r, result.milestones))
    return out


def paper_claims(result: DegradationResult,
                 responses: dict[str, list[list[float]]] | None = None) -> list[Claim]:
    """Every check: each run's convergence first (a claim on unconverged runs says nothing),
    then Fig. 6's error orderings and Fig. 7's response orderings, each judged only on runs
    that had converged (gate)."""
    members = by_model(result)
    errors, resp = error_claims(result), response_claims(responses or {})
    runs = [r for rs in members.values() for r in rs]
    return (convergence_claims(runs, checked([(errors, True), (resp, False)], members))
            + gate(errors, members, errors=True) + gate(resp, members, errors=False))


def responses_by_model(responses: dict[str, list[float]]) -> dict[str, list[list[float]]]:
    """responses.json ({label: stds}, labels "plain20", "plain20-seed1", ...) grouped by model."""
    out: dict[str, list[list[float]]] = {}
    for label, stds in responses.items():
        out.setdefault(label.split("-seed")[0], []).append(list(stds))
    return out

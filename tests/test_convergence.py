"""The convergence gate (reslab.analysis.convergence, claims.gate) on constructed curves: a
claim about trained networks is judged only on runs whose training error had stopped moving at
their last lr, and says which run had not, with its numbers."""
from __future__ import annotations

import pytest

from reslab.analysis.claims import (FAILS, HOLDS, NOT_JUDGED, Stat, checked,
                                    convergence_claims, gate, ordering)
from reslab.analysis.convergence import (FLAT, MOVING, TOO_NOISY, TOO_SHORT, Convergence,
                                         convergence, pooled)

STEPS = range(110, 310, 10)   # 20 points after the last lr drop at step 100; run ends at 300


def curve(error) -> list[tuple[int, float]]:
    return [(s, error(s)) for s in STEPS]


def test_a_flat_curve_has_converged() -> None:
    c = convergence("plain20-s0", curve(lambda s: 0.05), 100, steps_per_epoch=20)
    # The first quarter of the final phase (steps 100-150) settles and is left out.
    assert (c.start, c.end, c.points, c.epochs) == (150, 300, 15, 7.5)
    assert c.moved == pytest.approx(0.0) and c.se == pytest.approx(0.0)
    assert c.status(0.01) == FLAT and c.converged(0.001)
    assert c.describe(0.01) == ("plain20-s0: moved +0.00 points (s.e. 0.00) over steps 150-300 "
                                "(15 points, 7.5 epochs); tolerance 1.00 points: flat")


def test_a_noisy_flat_curve_has_converged() -> None:
    # +-0.3 points of sampling noise around 5%, no trend.
    c = convergence("r", curve(lambda s: 0.05 + (0.003 if s % 20 else -0.003)), 100, 20)
    assert abs(c.moved) < 0.001 and 2 * c.se < 0.01
    assert c.status(0.01) == FLAT


def test_a_falling_curve_has_not_converged() -> None:
    # Down 0.02 points per step: 3 points across the judged span (steps 150-300).
    c = convergence("r", curve(lambda s: 0.10 - 0.0002 * (s - 100)), 100, 20)
    assert c.moved == pytest.approx(-0.03)
    assert c.status(0.01) == MOVING and not c.converged(0.01)
    assert c.converged(0.04)   # a claim comparing an 8-point gap tolerates it
    assert "moved -3.00 points (s.e. 0.00)" in c.describe(0.01)
    assert c.describe(0.01).endswith("tolerance 1.00 points: still moving")


def test_too_short_or_too_noisy_to_tell() -> None:
    few = convergence("r", [(s, 0.05) for s in (110, 200, 250, 300)], 100, 20)
    assert few.points == 3 and few.status(0.05) == TOO_SHORT
    assert few.describe(0.05).endswith("at least 6 points and 1 epoch needed: too short to tell")
    # 15 points, but 0.15 of an epoch: too few images to average over.
    short = convergence("r", curve(lambda s: 0.05), 100, steps_per_epoch=1000)
    assert short.epochs == pytest.approx(0.15) and short.status(0.05) == TOO_SHORT
    assert convergence("r", [], 100, 20).status(0.05) == TOO_SHORT
    # +-3 points of scatter: the fit cannot resolve a 1-point tolerance.
    noisy = convergence("r", curve(lambda s: 0.05 + (0.03 if s % 20 else -0.03)), 100, 20)
    assert abs(noisy.moved) < 0.01 and noisy.status(0.01) == TOO_NOISY
    assert noisy.status(0.2) == FLAT


def test_a_run_without_lr_drops_is_judged_over_its_whole_length() -> None:
    c = convergence("grown", [(s, 0.05) for s in range(10, 110, 10)], 0, 5)
    assert (c.start, c.points) == (25, 8)


def test_the_gate_turns_a_verdict_on_an_unconverged_run_into_not_judged() -> None:
    flat = convergence("plain20-s0", curve(lambda s: 0.05), 100, 20)
    falling = convergence("plain56-s0", curve(lambda s: 0.12 - 0.0002 * (s - 100)), 100, 20)
    claim = ordering("plain-56 has a higher training error than plain-20",
                     Stat("plain20", (0.05, 0.051)), Stat("plain56", (0.09, 0.091)))
    assert claim.verdict == HOLDS and claim.sides == ("plain20", "plain56")
    # A 4-point gap tolerates 2 points (half of it, and the cap); plain56 moved 3.
    judged, = gate([claim], {"plain20": [flat], "plain56": [falling]}, errors=True)
    assert judged.verdict == NOT_JUDGED
    assert judged.evidence.startswith("not judged: plain56-s0 had not converged (plain56-s0: "
                                      "moved -3.00 points")
    assert judged.evidence.endswith(claim.evidence)   # the numbers stay
    # Both flat: judged as before.
    assert gate([claim], {"plain20": [flat], "plain56": [flat]}, errors=True) == [claim]
    # A side with no curve at all is not judged either.
    assert gate([claim], {"plain20": [flat]}, errors=True)[0].verdict == NOT_JUDGED
    # A verdict within the noise stays as it was.
    within = ordering("x", Stat("plain20", (0.05, 0.06)), Stat("plain56", (0.055, 0.065)))
    assert gate([within], {"plain56": [falling]}, errors=True) == [within]


def test_the_tolerance_is_below_the_effect_the_claim_compares() -> None:
    # Moved 0.6 points: fine for a 4-point gap (tolerance 2 points), not for a 1-point gap
    # (tolerance 0.5 point).
    slow = convergence("resnet20-s0", curve(lambda s: 0.05 - 0.00004 * (s - 100)), 100, 20)
    assert slow.moved == pytest.approx(-0.006)
    flat = convergence("plain20-s0", curve(lambda s: 0.06), 100, 20)
    members = {"resnet20": [slow], "plain20": [flat]}
    big = ordering("r < p", Stat("resnet20", (0.02, 0.021)), Stat("plain20", (0.06, 0.061)))
    small = ordering("r < p", Stat("resnet20", (0.05, 0.051)), Stat("plain20", (0.06, 0.061)))
    assert gate([big], members, errors=True)[0].verdict == HOLDS
    assert gate([small], members, errors=True)[0].verdict == NOT_JUDGED
    # Responses are not errors: the default tolerance (2 points) applies.
    resp = ordering("r < p", Stat("resnet20", (0.5, 0.51)), Stat("plain20", (0.6, 0.61)))
    assert gate([resp], members, errors=False)[0].verdict == HOLDS


def test_each_run_gets_a_row_at_its_tolerance() -> None:
    flat = convergence("a", curve(lambda s: 0.05), 100, 20)
    falling = convergence("b", curve(lambda s: 0.10 - 0.0002 * (s - 100)), 100, 20)
    few = convergence("c", [(300, 0.05)], 100, 20)
    rows = convergence_claims([flat, falling, few], {"b": (falling, 0.05)})
    assert [r.verdict for r in rows] == [HOLDS, HOLDS, NOT_JUDGED]
    assert rows[0].text == "a's training error had converged at its last lr"
    assert convergence_claims([falling])[0].verdict == FAILS


def test_a_reading_round_trips_and_a_damaged_one_is_refused() -> None:
    c = convergence("a", curve(lambda s: 0.05), 100, 20)
    assert Convergence.from_json(c.to_json()) == c
    for bad in ({}, {**c.to_json(), "points": "3"}, {**c.to_json(), "extra": 1}, [1]):
        with pytest.raises(ValueError):
            Convergence.from_json(bad)


def _noisy(label: str, level: float, phase: int) -> Convergence:
    """+-0.6 points of scatter around `level`, no trend (a laptop run's running error)."""
    return convergence(label, curve(lambda s: level + (0.006 if (s // 10 + phase) % 2 else
                                                       -0.006)), 100, 20)


def test_the_mean_of_the_seeds_is_read_at_the_claims_tolerance() -> None:
    # Each seed scatters too much to resolve a 1-point tolerance on its own; the claim compares
    # the means of two seeds, and their mean curve resolves it.
    runs = [_noisy(f"resnet20-s{i}", 0.12, i) for i in range(2)]
    assert all(r.status(0.0102) == TOO_NOISY and r.status(0.02) == FLAT for r in runs)
    mean = pooled("resnet20", runs)
    assert mean is not None and mean.label == "resnet20 (mean of 2 runs)"
    assert mean.moved == pytest.approx((runs[0].moved + runs[1].moved) / 2)
    assert mean.se == pytest.approx((runs[0].se ** 2 + runs[1].se ** 2) ** 0.5 / 2)
    assert (mean.start, mean.end, mean.points) == (runs[0].start, runs[0].end, runs[0].points)
    claim = ordering("r < p", Stat("resnet20", (0.120, 0.121)), Stat("plain20", (0.1404, 0.1414)))
    others = [_noisy(f"plain20-s{i}", 0.14, i) for i in range(2)]
    members = {"resnet20": runs, "plain20": others}
    assert gate([claim], members, errors=True)[0].verdict == HOLDS
    # What the gate read: each seed at the default 2 points, each mean at the claim's.
    read = checked([(([claim]), True)], members)
    assert {label: round(100 * tol, 2) for label, (_, tol) in read.items()} == {
        "resnet20-s0": 2.0, "resnet20-s1": 2.0, "resnet20 (mean of 2 runs)": 1.02,
        "plain20-s0": 2.0, "plain20-s1": 2.0, "plain20 (mean of 2 runs)": 1.02}
    # A seed still moving beyond 2 points is not hidden by the mean.
    falling = convergence("resnet20-s1", curve(lambda s: 0.16 - 0.0002 * (s - 100)), 100, 20)
    judged, = gate([claim], {"resnet20": [runs[0], falling], "plain20": others}, errors=True)
    assert judged.verdict == NOT_JUDGED
    assert judged.evidence.startswith("not judged: resnet20-s1 had not converged")
    # A mean that moved more than the claim's tolerance is not judged either.
    slow = [convergence(f"resnet20-s{i}", curve(lambda s: 0.13 - 0.00008 * (s - 100)), 100, 20)
            for i in range(2)]
    judged, = gate([claim], {"resnet20": slow, "plain20": others}, errors=True)
    assert judged.evidence.startswith("not judged: resnet20 (mean of 2 runs) had not converged")


def test_runs_over_different_spans_are_not_pooled() -> None:
    a = convergence("a", curve(lambda s: 0.05), 100, 20)
    b = convergence("b", [(s, 0.05) for s in range(110, 410, 10)], 100, 20)
    assert pooled("x", [a, b]) is None and pooled("x", [a]) is None

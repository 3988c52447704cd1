"""The paper's claims about depth (section 4.2, Fig. 6 and Fig. 7), checked against a sweep.

Each claim is an ordering of two numbers from degradation.json (final training or test error)
or responses.json (mean std of the 3x3 layers' responses); the check says whether it holds, with
the numbers, and, where seeds were repeated, whether the gap is within two standard deviations
of the seed-to-seed spread (then it is noise, whichever way it points). Nothing is tuned here:
this only reads what the runs did.
"""
from __future__ import annotations

from itertools import combinations
from typing import Any

Claim = dict[str, Any]


def _pct(v: float) -> str:
    return f"{100 * v:.2f}%"


def _by_depth(result: dict[str, Any], residual: bool) -> dict[int, dict[str, Any]]:
    """The first seed's run of each depth (the runs the figure shows)."""
    runs = {}
    for r in result["runs"]:
        if r["residual"] == residual and r.get("run", r["model"]) == r["model"]:
            runs.setdefault(r["depth"], r)
    return runs


def _noise(result: dict[str, Any], key: str, *models: str) -> float | None:
    stds = [result.get("spread", {}).get(m, {}).get(key, {}).get("std") for m in models]
    stds = [s for s in stds if s is not None]
    return 2 * max(stds) if stds else None


def _claim(text: str, lower: tuple[str, float | None], higher: tuple[str, float | None],
           noise: float | None, fmt=_pct) -> Claim:
    """"`lower` is below `higher`": holds / does not / cannot tell (a number missing)."""
    (a, va), (b, vb) = lower, higher
    if va is None or vb is None:
        return {"claim": text, "holds": None, "evidence": "not measured"}
    holds = va < vb
    evidence = f"{a} {fmt(va)} vs {b} {fmt(vb)}"
    within = noise is not None and abs(vb - va) <= noise
    if within:
        evidence += f" (gap within 2 std of the seeds, {fmt(noise)}: noise)"
    return {"claim": text, "holds": holds, "evidence": evidence, "within_noise": within}


def error_claims(result: dict[str, Any]) -> list[Claim]:
    """Fig. 6: deeper plain nets train worse; deeper ResNets train (and test) better; at every
    depth the ResNet trains better than the plain net."""
    plain, res = _by_depth(result, False), _by_depth(result, True)
    claims = []
    for d1, d2 in combinations(sorted(plain), 2):
        a, b = plain[d1], plain[d2]
        claims.append(_claim(f"plain-{d2} has a higher training error than plain-{d1} "
                             "(degradation)", (a["model"], a["final_train_error"]),
                             (b["model"], b["final_train_error"]),
                             _noise(result, "final_train_error", a["model"], b["model"])))
    for d1, d2 in combinations(sorted(res), 2):
        a, b = res[d1], res[d2]
        for key, what in (("final_train_error", "training"), ("final_test_error", "test")):
            claims.append(_claim(f"resnet{d2} has a lower {what} error than resnet{d1}",
                                 (b["model"], b[key]), (a["model"], a[key]),
                                 _noise(result, key, a["model"], b["model"])))
    for d in sorted(set(plain) & set(res)):
        p, r = plain[d], res[d]
        claims.append(_claim(f"resnet{d} has a lower training error than plain{d}",
                             (r["model"], r["final_train_error"]),
                             (p["model"], p["final_train_error"]),
                             _noise(result, "final_train_error", p["model"], r["model"])))
    return claims


def response_claims(responses: dict[str, list[float]]) -> list[Claim]:
    """Fig. 7: ResNets respond less than plain nets of the same depth, deeper ResNets less than
    shallower ones (mean std over the 3x3 layers)."""
    mean = {k: sum(v) / len(v) for k, v in responses.items() if v}
    fmt = "{:.3f}".format
    claims = []
    res = sorted((int(k[6:]), k) for k in mean if k.startswith("resnet") and k[6:].isdigit())
    for depth, name in res:
        if f"plain{depth}" in mean:
            claims.append(_claim(f"resnet{depth}'s responses are smaller than plain{depth}'s",
                                 (name, mean[name]), (f"plain{depth}", mean[f"plain{depth}"]),
                                 None, fmt))
    for (d1, a), (d2, b) in combinations(res, 2):
        claims.append(_claim(f"resnet{d2}'s responses are smaller than resnet{d1}'s",
                             (b, mean[b]), (a, mean[a]), None, fmt))
    return claims


def flattened(run: dict[str, Any], milestones: list[int], tolerance: float = 0.005) -> Claim:
    """Whether a run's training error had flattened at its last learning rate: over the last
    half of the final lr phase it changed by less than `tolerance` (0.5 points). Needs three
    evaluations in that phase: two points close together say nothing about a trend."""
    start = max(milestones) if milestones else 0
    curve = [p for p in run["curve"] if p["step"] > start and p["train_error"] is not None]
    text = f"{run.get('run', run['model'])}'s training error flattened at the last lr"
    if len(curve) < 3:
        return {"claim": text, "holds": None,
                "evidence": f"{len(curve)} evaluation(s) after the last milestone; 3 needed"}
    half = [p for p in curve if p["step"] >= (start + curve[-1]["step"]) / 2] or curve[-2:]
    if len(half) < 2:
        half = curve[-2:]
    change = half[-1]["train_error"] - half[0]["train_error"]
    return {"claim": text, "holds": abs(change) < tolerance,
            "evidence": f"{_pct(half[0]['train_error'])} at step {half[0]['step']} -> "
                        f"{_pct(half[-1]['train_error'])} at step {half[-1]['step']}"}


def paper_claims(result: dict[str, Any], responses: dict[str, list[float]] | None = None
                 ) -> list[Claim]:
    """Every check: the runs' flattening first (a claim on unconverged runs says little), then
    Fig. 6's error orderings, then Fig. 7's response orderings."""
    milestones = list(result.get("recipe", {}).get("milestones") or [])
    firsts = [r for r in result["runs"] if r.get("run", r["model"]) == r["model"]]
    return ([flattened(r, milestones) for r in firsts] + error_claims(result)
            + response_claims(responses or {}))


def verdict(c: Claim) -> str:
    return {True: "holds", False: "does not hold", None: "not measured"}[c["holds"]]

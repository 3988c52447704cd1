"""The verdicts of the page: each of the paper's claims judged on what the members measured
(DIR/members/*.json), with the numbers behind it. Orderings go through claims.ordering, so
every one is judged against the seeds' noise the same way (holds / does not hold / not
judged); exact facts (Table 1, Table 6, the trace) hold or not.
"""
from __future__ import annotations

import math
from typing import Any

from ..claims import (FAILS, HOLDS, NOISE_SE, NOT_JUDGED, Claim, Stat, error_claims, ordering,
                      response_claims, responses_by_model)
from ..sweep_result import DegradationResult


def not_run(text: str, why: str) -> Claim:
    return Claim(text, NOT_JUDGED, why)


def table1_claims(t: dict[str, Any]) -> list[Claim]:
    """Table 1's FLOPs (multiply-adds) with the stride on the first 1x1 (the paper), to the
    paper's precision (one unit of its last digit, 0.1e9); the torchvision variant (stride on
    the 3x3) exactly as torchvision's metadata (3 decimals of GMACs, every parameter)."""
    claims = []
    for name in ("resnet18", "resnet34", "resnet50", "resnet101", "resnet152"):
        paper, tv = t["table1"][f"{name}/1x1"], t["table1"][f"{name}/3x3"]
        ours = paper["macs"] / 1e9
        claims.append(Claim(f"{name}: {paper['paper_gmacs']}e9 FLOPs (Table 1)",
                            HOLDS if abs(ours - paper["paper_gmacs"]) < 0.1 else FAILS,
                            f"{paper['macs']:,} multiply-adds = {ours:.3f}e9 with the stride "
                            f"on the first 1x1 (paper: {paper['paper_gmacs']}e9)"))
        exact = round(tv["macs"] / 1e9, 3) == tv["torchvision_gmacs"] and \
            tv["params"] == tv["torchvision_params"]
        claims.append(Claim(f"{name} (torchvision's stride on the 3x3): "
                            f"{tv['torchvision_gmacs']} GMACs, {tv['torchvision_params']:,} "
                            "parameters", HOLDS if exact else FAILS,
                            f"{tv['macs'] / 1e9:.3f} GMACs, {tv['params']:,} parameters"))
    return claims


def table6_claims(t: dict[str, Any]) -> list[Claim]:
    """Table 6's parameter counts to its printed digits; plain nets (option A) the same."""
    claims = []
    for name, row in t["table6"].items():
        paper = row["paper_params_m"]
        digits = len(paper.split(".")[1]) if "." in paper else 0
        ours = f"{row['params'] / 1e6:.{digits}f}"
        same = row["plain_params"] == row["params"]
        claims.append(Claim(f"{name}: {paper}M parameters (Table 6), plain net the same",
                            HOLDS if ours == paper and same else FAILS,
                            f"{row['params']:,} parameters ({ours}M); "
                            f"{name.replace('resnet', 'plain')} {row['plain_params']:,}"))
    return claims


def trace_claim(tr: dict[str, Any]) -> Claim:
    ok = tr["equal"] == tr["compared"] and tr["length_equal"]
    evidence = (f"{tr['equal']} of the notes' {tr['compared']} lines equal "
                f"({tr['weighted_layers']} numbered layers, {tr['downsample_lines']} downsample "
                "lines; the notes print no module line for the fc layer)")
    if tr["mismatches"]:
        first = tr["mismatches"][0]
        evidence += f"; first difference at line {first['line']}: {first['reslab']!r}"
    return Claim("reslab's trace of resnet50 is the notes' trace, line for line",
                 HOLDS if ok else FAILS, evidence)


def channel_claims(t: dict[str, Any]) -> list[Claim]:
    """Section 3.3: filters double when the map halves, so a 3x3 layer costs the same in every
    stage."""
    claims = []
    for key, label in (("resnet34/3x3", "resnet34"), ("resnet50/1x1", "resnet50")):
        row = t["table1"][key]
        per = [s["macs_per_3x3"] for s in row["stages"] if s["macs_per_3x3"] is not None]
        claims.append(Claim(f"{label}: one 3x3 layer costs the same in every stage",
                            HOLDS if len(set(per)) == 1 else FAILS,
                            ", ".join(f"{s['paper_name']} {s['macs_per_3x3'] / 1e6:.1f}M MACs"
                                      for s in row["stages"] if s["macs_per_3x3"])))
    row = t["table6"]["resnet20"]
    claims.append(Claim("resnet20 (CIFAR, 16/32/64 filters on 32/16/8 maps): the same",
                        HOLDS if row["level_3x3_cost"] else FAILS,
                        ", ".join(f"{m / 1e6:.2f}M" for m in row["per_3x3"]) + " MACs"))
    return claims


def fig6_claims(deg: DegradationResult | None) -> list[Claim]:
    """Fig. 6's orderings, before the convergence gate."""
    if deg is None:
        return [not_run("Fig. 6: deeper plain nets train worse, ResNets do not",
                        "the sweep was not run")]
    return error_claims(deg)


def fig7_claims(resp: dict[str, Any] | None) -> list[Claim]:
    """Fig. 7's orderings, before the convergence gate."""
    if resp is None:
        return [not_run("Fig. 7: ResNets have smaller responses than plain nets",
                        "the responses were not measured")]
    return response_claims(responses_by_model(resp["stds"]))


def identity_claims(idn: dict[str, Any] | None) -> list[Claim]:
    """Section 1's construction, measured on the training set, and what further training of
    the grown net does against the same training of the shallow net (the control). That
    further training runs one seed of each: its noise is unknown, so it is not judged (the
    sweep's seed-to-seed spread is another experiment's)."""
    if idn is None:
        return [not_run("a net grown by identity blocks has its shallower net's training error",
                        "not run at this budget")]
    small, big, err, wrong = idn["small"], idn["big"], idn["error"], idn["wrong"]
    n = idn["images"]
    exact = wrong["grown"] == wrong["shallow"] and idn["same_predictions"] == n
    claims = [Claim(f"the grown {big} (identity blocks added to the trained {small}) has "
                    f"exactly {small}'s training error", HOLDS if exact else FAILS,
                    f"{small} {100 * err['shallow']:.2f}% ({wrong['shallow']:,} of {n:,} "
                    f"training images wrong), grown {big} {100 * err['grown']:.2f}% "
                    f"({wrong['grown']:,}); same prediction on {idn['same_predictions']:,} of "
                    f"{n:,}; max |logit difference| {idn['max_abs_logit_diff']:.2g}")]
    if "grown_trained" in err and "shallow_continued" in err:
        claims.append(ordering(
            f"after {idn['further_iters']} further iterations at lr {idn['further_lr']:g}, the "
            f"grown {big} has a training error no higher than {small} trained as long",
            Stat(f"grown {big}", (err["grown_trained"],)),
            Stat(f"{small} continued", (err["shallow_continued"],)), at_most=True))
    return claims


def shortcut_claims(sc: dict[str, Any] | None) -> list[Claim]:
    """Table 3's question (ImageNet resnet34: A 25.03, B 24.52, C 24.19 top-1 error), here."""
    if sc is None:
        return [not_run("shortcut options: B is better than A, C slightly better than B",
                        "not run at this budget")]
    opts, model = sc["options"], sc["model"]

    def stat(o: str, key: str) -> Stat | None:
        vals = tuple(v for v in opts[o][key] if v is not None)
        return Stat(f"{o}", vals) if vals else None

    def compare(text: str, lower: Stat | None, higher: Stat | None, a: Stat | None) -> Claim:
        # An option run with one seed borrows option A's seed-to-seed spread (the same net
        # and recipe but for the shortcuts): 2 s.e. of the difference with that per-seed std.
        noise = None
        if lower and higher and a and a.std is not None and \
                min(len(lower.values), len(higher.values)) < 2:
            noise = NOISE_SE * a.std * math.sqrt(1 / len(lower.values) + 1 / len(higher.values))
        c = ordering(text, lower, higher, noise=noise)
        if noise is not None:
            c = Claim(c.text, c.verdict, c.evidence + " (per-seed noise from option A's "
                      f"{len(a.values)} seeds)", c.gap, c.noise)
        return c

    claims = []
    for key, what in (("test_error", "test"), ("train_error", "training")):
        a = stat("A", key)
        claims.append(compare(f"{model} with option B has a lower {what} error than with A",
                              stat("B", key), a, a))
        claims.append(compare(f"{model} with option C has a lower {what} error than with B",
                              stat("C", key), stat("B", key), a))
    return claims


def warmup_claims(wu: dict[str, Any] | None, deg: DegradationResult | None) -> list[Claim]:
    """Section 4.2's resnet110: lr 0.01 until the training error is below 80% (about 400
    iterations), then 0.1; Table 6: 6.43% best of 5, 6.61 +- 0.16."""
    if wu is None:
        return [not_run("resnet110's warm-up ends at about 400 iterations; resnet110 is better "
                        "than resnet56", "resnet110 is not trained at this budget")]
    ends = [s["warmup_end"] for s in wu["seeds"] if s["warmup_end"] is not None]
    claims = []
    if ends:
        mean = sum(ends) / len(ends)
        claims.append(Claim("resnet110's warm-up (lr 0.01 until the training error is below "
                            "80%) ends at about 400 iterations",
                            HOLDS if 200 <= mean <= 800 else FAILS,
                            f"ended at iterations {', '.join(map(str, ends))} (logged every 20)",
                            sides=("resnet110",)))
    test = tuple(s["final_test_error"] for s in wu["seeds"] if s["final_test_error"] is not None)
    if deg is not None and test:
        r56 = tuple(r.final_test_error for r in deg.runs if r.model == "resnet56"
                    and r.final_test_error is not None)
        claims.append(ordering("resnet110 has a lower test error than resnet56 (Table 6)",
                               Stat("resnet110", test), Stat("resnet56", r56) if r56 else None))
    return claims


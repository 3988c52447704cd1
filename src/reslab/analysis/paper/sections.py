"""The page's claim sections, in the order they appear: each states a claim of the paper, its
verdicts with the numbers (verdicts.py), this budget's deviations from the paper next to it, and
the tables and figures of what the members measured.
"""
from __future__ import annotations

import statistics

from ..claims import convergence_claims, gate
from ..convergence import DEFAULT_TOLERANCE, MIN_EPOCHS, MIN_POINTS, SETTLE_FRACTION
from . import verdicts as v
from .parts import PageParts, pct

# The sections' titles, English and Korean (the summary at the top lists them too).
TITLES = {
    "tables": ("Table 1 and Table 6: FLOPs and parameters, exact",
               "Table 1, Table 6: FLOPs와 parameter 수, 정확히"),
    "trace": ("The notes' resnet50 trace", "노트의 resnet50 trace"),
    "fig6": ("Fig. 6: degradation of plain nets, removed by residual learning",
             "Fig. 6: plain net의 degradation과 residual learning"),
    "convergence": ("The convergence gate: had each run converged?",
                    "수렴 관문: 각 run이 수렴했나?"),
    "fig7": ("Fig. 7: layer responses, ResNet vs plain and deeper vs shallower",
             "Fig. 7: layer response, ResNet vs plain, 깊은 net vs 얕은 net"),
    "identity": ("The identity construction (section 1), on the training set",
                 "Identity 구성 (section 1), training set에서"),
    "channels": ("Why channels double when maps halve (section 3.3)",
                 "map이 절반이 될 때 channel을 두 배로 (section 3.3)"),
    "shortcuts": ("Shortcut options A/B/C (Table 3's question)",
                  "Shortcut option A/B/C (Table 3의 질문)"),
    "warmup": ("resnet110 and its warm-up (section 4.2)", "resnet110과 warm-up (section 4.2)"),
}


def tables(page: PageParts) -> None:
    t, tab = page.t, page.m["tables"]
    if tab is None:
        return
    claims = v.table1_claims(tab) + v.table6_claims(tab)
    page.section(t(*TITLES["tables"]), claims,
                 t("none: counted on the models' forward (multiply-adds of conv and fc "
                   "layers, the paper's FLOPs). torchvision's resnet50-152 (v1.5) put the "
                   "stride on the 3x3 conv; the paper on the first 1x1: both are counted.",
                   "없음: model의 forward에서 셈 (conv, fc의 multiply-add, 논문의 FLOPs). "
                   "torchvision의 resnet50-152 (v1.5)는 stride를 3x3 conv에, 논문은 첫 1x1에 "
                   "둔다: 둘 다 셈."))
    rows = []
    for key in ("resnet34/3x3", "resnet50/1x1", "resnet50/3x3"):
        row = tab["table1"][key]
        rows.append([f"{row['model']} ({t('stride on', 'stride')} {row['stride_in']})"]
                    + [f"{s['macs'] / 1e9:.3f}" for s in row["stages"]]
                    + [f"{row['macs'] / 1e9:.3f}"])
    stages = [s["paper_name"] for s in tab["table1"]["resnet50/1x1"]["stages"]]
    page.doc.table([t("GMACs per stage", "stage별 GMACs"), *stages, "total"], rows)


def trace(page: PageParts) -> None:
    tr = page.m["trace"]
    if tr is None:
        return
    t = page.t
    page.section(t(*TITLES["trace"]), [v.trace_claim(tr)])
    page.doc.para(t("The notes' first lines (`reslab trace resnet50` prints the same, "
                    "with `input` for `입력`):",
                    "노트의 첫 줄들 (`reslab trace resnet50`도 같게 출력, `입력` 대신 "
                    "`input`):"))
    page.doc.code(tr["excerpt"])


def fig6(page: PageParts) -> None:
    from ..plots import degradation_figure

    t, deg = page.t, page.deg
    orderings = gate(v.fig6_claims(deg), page.sides("sweep"), errors=True)
    r = page.p.base
    every = r.train_error_every
    dev = page.schedule_deviation()
    if every:
        # the last point averages the iterations since the one before: fewer when the run's
        # length is not a multiple of the interval
        last = (r.iters % every or every) if r.iters else every
        short = "" if last == every else t(
            f" (the final one over its last {last} iterations, {last * r.batch_size:,} images: "
            "noisier)", f" (최종값은 마지막 {last} iteration, image {last * r.batch_size:,}장: "
            "noise가 더 큼)")
        dev += " " + t(f"Training errors are running errors over the last {every} "
                       f"iterations ({every * r.batch_size:,} augmented images, as the "
                       f"paper's thin curves){short}, so a final one carries sampling noise "
                       "of about a point; the seeds' spread includes it.",
                       f"training error는 마지막 {every} iteration (augmentation된 image "
                       f"{every * r.batch_size:,}장)의 running error (논문의 가는 곡선처럼)"
                       f"{short}라서 최종값에 1 point 정도의 sampling noise가 있고, seed 간 "
                       "spread에 포함된다.")
    page.section(t(*TITLES["fig6"]), orderings, dev)
    if deg is None:
        return
    png = degradation_figure(deg.first_seeds(), page.dir.figure("fig6"),
                             title=f"plain vs ResNet on {deg.dataset} (Fig. 6, seed "
                                   f"{page.p.budget.seeds[0]})")
    page.doc.image(png, "Fig. 6")
    page.doc.table(["run", "seed", t("final train error %", "최종 train error %"),
                    t("final test error %", "최종 test error %"),
                    t("training s", "학습 초")],
                   [[r.run, r.seed, pct(r.final_train_error), pct(r.final_test_error),
                     f"{r.train_seconds:.0f}" if r.train_seconds else "-"]
                    for r in deg.runs])


def convergence(page: PageParts) -> None:
    """Every training member's reading of the gate, then the means of seeds it read, each at
    the tolerance of the most demanding claim that reads it."""
    t = page.t
    readings = page.runs(list(page.p.members))
    if not readings:
        return
    tol = f"{100 * DEFAULT_TOLERANCE:g}"
    page.section(t(*TITLES["convergence"]), convergence_claims(readings, page.checked()),
                 t(f"the paper does not state a criterion. reslab's: a line fitted through the "
                   f"training-error points of the final lr phase (after its first "
                   f"{SETTLE_FRACTION:.0%}, where the error drops after the lr does) must "
                   f"move by at most the tolerance across it, with 2 standard errors of that "
                   f"movement within the tolerance too, over at least {MIN_POINTS} points and "
                   f"{MIN_EPOCHS:g} epoch. The tolerance is below the effect a claim compares: "
                   f"half the gap of an ordering of errors, at most {tol} points. Where a claim "
                   f"compares the mean of several seeds, the mean of their curves is read at "
                   f"the claim's tolerance (its standard error is a mean's) and each seed at "
                   f"{tol} points. A claim on a run that fails it is not judged.",
                   f"논문에는 기준이 없다. reslab의 기준: 마지막 lr 구간 (lr이 떨어진 뒤 error가 "
                   f"떨어지는 처음 {SETTLE_FRACTION:.0%} 제외)의 training error 점에 맞춘 직선이 "
                   f"구간 전체에서 tolerance 이하로 움직이고, 그 움직임의 standard error 2배도 "
                   f"tolerance 이내이며, 점 {MIN_POINTS}개와 {MIN_EPOCHS:g} epoch 이상. "
                   f"tolerance는 주장이 비교하는 효과보다 작다: error 순서는 차이의 절반, 최대 "
                   f"{tol} point. 주장이 여러 seed의 평균을 비교하면 그 곡선들의 평균을 주장의 "
                   f"tolerance로 (standard error는 평균의 것), 각 seed는 {tol} point로 읽는다. "
                   "이를 통과하지 못한 run에 대한 주장은 판정하지 않는다."))
    from ..plots import convergence_figure

    runs = page.m["convergence"].get("runs", {})
    page.doc.table([t("run", "run"), t("role", "역할"), t("iterations", "iteration"),
                    t("training s", "학습 초"), t("final train error %", "최종 train error %"),
                    t("final test error %", "최종 test error %")],
                   [[name, r["role"], r["iterations"],
                     f"{r['seconds']:.0f}" if r["seconds"] else "-",
                     pct(r["final_train_error"]), pct(r["final_test_error"])]
                    for name, r in runs.items()])
    judged = {c.label: c.start for c in readings}
    png = convergence_figure({name: (r["curve"], r["final_lr_from"], judged[name])
                              for name, r in runs.items() if name in judged},
                             page.dir.figure("convergence"),
                             title="training error at the last lr (the convergence gate)")
    page.doc.image(png, t("convergence", "수렴"))


def fig7(page: PageParts) -> None:
    from ..plots import ratios_figure, responses_figure

    t, resp = page.t, page.m["responses"]
    dev = None
    if resp:
        dev = t(f"measured on {resp['images']:,} {resp['split']} images of {page.p.data} "
                "(the paper: the CIFAR-10 test set), after the training above.",
                f"{page.p.data}의 {resp['split']} image {resp['images']:,}장에서 측정 (논문: "
                "CIFAR-10 test set), 위의 학습 뒤.")
    page.section(t(*TITLES["fig7"]), gate(v.fig7_claims(resp), page.sides("sweep"),
                                          errors=False), dev)
    if resp is None:
        return
    from ..claims import responses_by_model

    rows = []
    for model, runs in responses_by_model(resp["stds"]).items():
        means = [statistics.fmean(r) for r in runs]
        spread = f" ± {statistics.stdev(means):.3f}" if len(means) > 1 else ""
        rows.append([model, len(runs), len(runs[0]),
                     f"{statistics.fmean(means):.3f}{spread}",
                     f"{statistics.fmean(max(r) for r in runs):.3f}"])
    page.doc.table([t("model", "model"), "seeds", t("3x3 layers", "3x3 layer 수"),
                    t("mean std (± over seeds)", "평균 std (seed 간 ±)"),
                    t("max std", "최대 std")], rows)
    firsts = {k: s for k, s in resp["stds"].items() if "-seed" not in k}
    page.doc.image(responses_figure(firsts, page.dir.figure("fig7"),
                                    title="std of each 3x3 layer's response (Fig. 7)"),
                   "Fig. 7")
    if resp["ratios"]:
        ratios = {k: r for k, r in resp["ratios"].items() if "-seed" not in k}
        ratios_figure(ratios, page.dir.figure("ratios"))


def identity(page: PageParts) -> None:
    from ..plots import bars_figure

    t, idn = page.t, page.m["identity"]
    dev = None
    if idn:
        dev = t(f"one seed ({idn['seed']}); the further training is {idn['further_iters']} "
                f"iterations at the last lr {idn['further_lr']:g} for both nets (the "
                f"shallow net's is the control); errors in eval mode on {idn['images']:,} "
                "unaugmented training images (the first of the training split).",
                f"seed 1개 ({idn['seed']}); 추가 학습은 두 net 모두 마지막 lr "
                f"{idn['further_lr']:g}로 {idn['further_iters']} iteration (얕은 net은 "
                f"대조군); error는 eval mode, augmentation 없는 training image "
                f"{idn['images']:,}장 (training split의 앞부분)에서.")
    page.section(t(*TITLES["identity"]), gate(v.identity_claims(idn), page.sides("identity"),
                                              errors=True), dev)
    if idn is None:
        return
    names = {"shallow": idn["small"], "grown": f"grown {idn['big']}",
             "shallow_continued": f"{idn['small']} +{idn['further_iters']}",
             "grown_trained": f"grown {idn['big']} +{idn['further_iters']}",
             "deep_scratch": f"{idn['big']} (scratch)"}
    page.doc.table([t("net", "net"), t("training error %", "training error %"),
                    t("wrong", "오답")],
                   [[names[k], pct(e), idn["wrong"][k]] for k, e in idn["error"].items()])
    page.doc.image(bars_figure({names[k]: [e] for k, e in idn["error"].items()},
                               page.dir.figure("identity"),
                               ylabel="training error (%)",
                               title="identity construction, training set"),
                   t("identity construction", "identity 구성"))


def channels(page: PageParts) -> None:
    t, tab = page.t, page.m["tables"]
    if tab is None:
        return
    page.section(t(*TITLES["channels"]), v.channel_claims(tab))


def shortcuts(page: PageParts) -> None:
    from ..plots import bars_figure

    t, sc = page.t, page.m["shortcuts"]
    claims = gate(v.shortcut_claims(sc), page.sides("shortcuts"), errors=True)
    dev = None
    if sc:
        seeds = ", ".join(f"{o} {len(d['seeds'])}" for o, d in sc["options"].items())
        dev = t(f"{sc['model']} on {page.p.data}, seeds per option: {seeds} (the "
                "paper's Table 3: resnet34 on ImageNet, top-1 error A 25.03, B 24.52, C "
                "24.19). reslab's CIFAR nets use option A by default, as the paper; its "
                "ImageNet nets default to B (the paper's choice for resnet50/101/152), and "
                "Table 2's resnet18/34 used A: `--shortcut A` (the full budget's ImageNet "
                "plan does).",
                f"{page.p.data}에서 {sc['model']}, option별 seed 수: {seeds} (논문 Table 3: "
                "ImageNet resnet34, top-1 error A 25.03, B 24.52, C 24.19). reslab의 CIFAR "
                "net은 논문처럼 기본 option A; ImageNet net은 기본 B (논문의 resnet50/101/152 "
                "선택)이고, Table 2의 resnet18/34는 A: `--shortcut A` (full budget의 ImageNet "
                "계획은 A를 씀).")
    page.section(t(*TITLES["shortcuts"]), claims, dev)
    if sc is None:
        return
    opts = sc["options"]
    page.doc.table(["option", t("parameters", "parameter"), "seeds",
                    t("test error % per seed", "seed별 test error %"),
                    t("train error % per seed", "seed별 train error %")],
                   [[o, f"{d['params']:,}", " ".join(map(str, d["seeds"])),
                     " ".join(pct(e) for e in d["test_error"]),
                     " ".join(pct(e) for e in d["train_error"])] for o, d in opts.items()])
    page.doc.image(bars_figure({o: [e for e in d["test_error"] if e is not None]
                                for o, d in opts.items()}, page.dir.figure("shortcuts"),
                               ylabel="test error (%)",
                               title=f"shortcut options, {sc['model']}"),
                   t("shortcut options", "shortcut option"))


def warmup(page: PageParts) -> None:
    t = page.t
    page.section(t(*TITLES["warmup"]), gate(v.warmup_claims(page.m["warmup"], page.deg),
                                            page.sides("warmup"), errors=True))


SECTIONS = (tables, trace, fig6, convergence, fig7, identity, channels, shortcuts, warmup)

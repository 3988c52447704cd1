"""The page: DIR/paper.md and a self-contained DIR/paper.html (figures inline), in English or
Korean, built only from what the members wrote (DIR/members/*.json, DIR/calls.json): every
number on it is read from those files, none is typed here (the paper's own numbers come with
the members too). DIR/paper.json holds the verdicts for scripts.

Each section states a claim of the paper, its verdicts with the numbers, and the deviations of
this budget from the paper next to it; a last part answers the notes' questions.
"""
from __future__ import annotations

import json
import re
import statistics
from collections.abc import Sequence
from pathlib import Path
from typing import Any

from ...io import atomic_write_text
from ..claims import FAILS, HOLDS, NOT_JUDGED, Claim
from ..report import Doc
from ..sweep_result import DegradationResult
from . import verdicts as v
from .budgets import PaperDir, Plan
from .runner import member_file, read_member


class Lang:
    """Picks the English or Korean text of each string, written side by side at its use."""

    def __init__(self, lang: str) -> None:
        self.lang = lang

    def __call__(self, en: str, ko: str) -> str:
        return ko if self.lang == "ko" else en

    def verdict(self, verdict: str) -> str:
        return {HOLDS: self("holds", "성립"), FAILS: self("does not hold", "성립하지 않음"),
                NOT_JUDGED: self("not judged", "판정하지 않음")}[verdict]

    def claim(self, text: str) -> str:
        return _translate(text, KO_CLAIMS) if self.lang == "ko" else text

    def evidence(self, text: str) -> str:
        return _translate(text, KO_EVIDENCE) if self.lang == "ko" else text


def _translate(text: str, table: Sequence[tuple[str, str]]) -> str:
    for pattern, repl in table:
        text = re.sub(pattern, repl, text)
    return text


# Claim texts of claims.py / verdicts.py in Korean (their numbers kept).
KO_CLAIMS = (
    (r"^plain-(\d+) has a higher training error than plain-(\d+) \(degradation\)$",
     r"plain-\1의 training error가 plain-\2보다 높다 (degradation)"),
    (r"^(\S+) has a lower (training|test) error than (\S+)$",
     lambda m: f"{m[1]}의 {m[2]} error가 {m[3]}보다 낮다"),
    (r"^(\S+)'s responses are smaller than (\S+)'s \(mean over layers\)$",
     r"\1의 response(std)가 \2보다 작다 (layer 평균)"),
    (r"^(\S+)'s responses are smaller than (\S+)'s, layer by layer \(sorted by magnitude\)$",
     r"\1의 response가 \2보다 작다, layer별 (크기순 정렬)"),
    (r"^(\S+)'s responses are smaller than (\S+)'s, layer by layer$",
     r"\1의 response가 \2보다 작다, layer별"),
    (r"^(\S+)'s training error flattened at the last lr$",
     r"\1의 training error가 마지막 lr에서 평탄해졌다"),
    (r"^(\S+) with option (\w) has a lower (training|test) error than with (\w)$",
     lambda m: f"{m[1]}: option {m[2]}의 {m[3]} error가 option {m[4]}보다 낮다"),
    (r"^the grown (\S+) \(identity blocks added to the trained (\S+)\) has exactly \S+ "
     r"training error$", r"\2에 identity block을 더해 만든 \1의 training error는 \2와 정확히 같다"),
    (r"^after (\d+) further iterations at lr (\S+), the grown (\S+) has a training error no "
     r"higher than (\S+) trained as long$",
     r"lr \2로 \1 iteration 더 학습한 뒤, grown \3의 training error는 같은 만큼 학습한 \4보다 "
     r"높지 않다"),
    (r"^(\S+): one 3x3 layer costs the same in every stage$",
     r"\1: 3x3 layer 하나의 연산량이 모든 stage에서 같다"),
    (r"^resnet20 \(CIFAR, 16/32/64 filters on 32/16/8 maps\): the same$",
     r"resnet20 (CIFAR, 32/16/8 map에 16/32/64 filter): 마찬가지"),
    (r"^reslab's trace of resnet50 is the notes' trace, line for line$",
     r"reslab의 resnet50 trace가 노트의 trace와 한 줄씩 같다"),
    (r"^(\S+): (\S+)e9 FLOPs \(Table 1\)$", r"\1: \2e9 FLOPs (Table 1)"),
    (r"^(\S+) \(torchvision's stride on the 3x3\): (.*)$",
     r"\1 (torchvision: stride가 3x3에): \2"),
    (r"^(\S+): (\S+)M parameters \(Table 6\), plain net the same$",
     r"\1: parameter \2M (Table 6), plain net도 같음"),
    (r"^resnet110's warm-up .*$", "resnet110의 warm-up(training error 80% 미만까지 lr 0.01)은 "
     "약 400 iteration에서 끝난다"),
    (r"^resnet110 has a lower test error than resnet56 \(Table 6\)$",
     "resnet110의 test error가 resnet56보다 낮다 (Table 6)"),
)
KO_EVIDENCE = (
    (r"not measured at this budget", "이 budget에서는 측정하지 않음"),
    (r"\(mean of (\d+) seeds, std ([^)]*)\)", r"(seed \1개 평균, std \2)"),
    (r"\(1 seed\)", "(seed 1개)"),
    (r"; gap ([^,]*), noise ([^(]*) \((\S+) s\.e\.\)", r"; 차이 \1, noise \2(\3 s.e.)"),
    (r": within the seeds' noise", ": seed noise 이내"),
    (r"noise unknown \(a side has one seed\)", "noise 모름 (한쪽이 seed 1개)"),
    (r"smaller at (\d+) of (\d+) layers, larger at (\d+), beyond the seeds' noise",
     r"\2개 layer 중 \1개에서 작고 \3개에서 큼 (seed noise 밖에서)"),
    (r"training-error point\(s\) after the last lr drop; 3 needed",
     "개의 training error 점 (마지막 lr 감소 뒤); 3개 필요"),
    (r"points across the phase", "points (구간 전체 변화)"),
    (r"half the smallest gap it is compared by", "비교되는 가장 작은 차이의 절반"),
    (r"training images wrong", "개 training image 오답"),
    (r"same prediction on", "같은 예측:"),
    (r"max \|logit difference\|", "최대 |logit 차이|"),
    (r"not run at this budget", "이 budget에서는 실행하지 않음"),
    (r"is not trained at this budget", "은 이 budget에서 학습하지 않음"),
    (r"the sweep was not run", "sweep을 실행하지 않음"),
    (r"points", "points"),
)


def _verdict_table(doc: Doc, lang: Lang, claims: list[Claim]) -> None:
    doc.table([lang("claim", "주장"), lang("here", "결과"), lang("evidence", "근거")],
              [[lang.claim(c.text), lang.verdict(c.verdict), lang.evidence(c.evidence)]
               for c in claims])


def _count(claims: list[Claim]) -> dict[str, int]:
    return {k: sum(c.verdict == k for c in claims) for k in (HOLDS, FAILS, NOT_JUDGED)}


def _pct(x: float | None) -> str:
    return "-" if x is None else f"{100 * x:.2f}"


class Page:
    """One page of one DIR: the members' results and the text around them."""

    def __init__(self, p: Plan, out: Path, lang: str) -> None:
        self.p, self.out, self.t = p, out, Lang(lang)
        self.m = {name: read_member(out, name) for name in
                  ("tables", "trace", "degradation", "responses", "grow", "identity",
                   "shortcuts", "warmup")}
        deg = self.m["degradation"]
        self.deg = (None if deg is None
                    else DegradationResult.from_json(deg, member_file(out, "degradation")))
        self.dir = PaperDir(out)
        self.figures = self.dir.figures
        self.figures.mkdir(parents=True, exist_ok=True)
        self.doc = Doc()
        self.sections: list[tuple[str, list[Claim]]] = []
        try:
            self.calls = json.loads(self.dir.calls.read_text())
        except (OSError, ValueError):
            self.calls = []

    # --- the parts of the page, in order -------------------------------------------------

    def build(self) -> Doc:
        t, p = self.t, self.p
        self.doc.heading(1, t(f"Deep Residual Learning, rerun: the {p.budget.name} budget on "
                              f"{p.data}", f"Deep Residual Learning 재현: {p.data}에서 "
                              f"{p.budget.name} budget"))
        self._header()
        body = Doc()
        self.doc, top = body, self.doc
        self._tables()
        self._trace()
        self._fig6()
        self._fig7()
        self._identity()
        self._channels()
        self._shortcuts()
        self._warmup()
        self._questions()
        self.doc = top
        self._summary()
        self.doc.blocks += body.blocks
        return self.doc

    def _header(self) -> None:
        t, p, doc = self.t, self.p, self.doc
        doc.para(t("He, Zhang, Ren and Sun, *Deep Residual Learning for Image Recognition* "
                   "(2015): every claim this machine can check, rerun by one command. Each "
                   "verdict is read from the runs' files: **holds**, **does not hold** (the "
                   "measured gap points the other way by more than the seeds' noise, two "
                   "standard errors of the difference), or **not judged** (within the noise, "
                   "one seed, or not run at this budget).",
                   "He, Zhang, Ren, Sun, *Deep Residual Learning for Image Recognition* "
                   "(2015): 이 기계에서 확인할 수 있는 모든 주장을 명령 하나로 다시 실행했다. "
                   "판정은 run 파일에서 읽는다: **성립**, **성립하지 않음** (측정된 차이가 "
                   "seed noise, 즉 차이의 standard error 2배보다 크게 반대 방향), "
                   "**판정하지 않음** (noise 이내, seed 1개, 또는 이 budget에서 실행 안 함)."))
        calls = self.calls
        finished = [c for c in calls if c.get("status") == "finished"]
        machine = calls[-1].get("machine", "-") if calls else "-"
        seconds = sum(c.get("seconds", 0) for c in calls)
        rows = [[t("budget", "budget"), f"{p.budget.name} ({p.budget.expected})"],
                [t("data", "data"), p.data],
                [t("machine", "기계"), machine],
                [t("time taken", "걸린 시간"),
                 t(f"{seconds / 60:.1f} min of wall time over {len(calls)} call(s) of the "
                   f"command ({len(finished)} finished)",
                   f"명령 {len(calls)}번 호출 ({len(finished)}번 완료), wall time "
                   f"{seconds / 60:.1f}분")]]
        if self.deg:
            rows.append([t("training (Fig. 6 sweep)", "학습 (Fig. 6 sweep)"), self.deg.budget])
        doc.table([t("what", "항목"), t("this page", "이 페이지")], rows)
        doc.heading(2, t("Commands", "명령"))
        shown = list(dict.fromkeys(" ".join(c["argv"]) for c in calls)) or ["-"]
        doc.para(t("The calls that made this page (a second call reuses finished members):",
                   "이 페이지를 만든 호출 (두 번째 호출은 끝난 member를 재사용):"))
        doc.code(shown)
        doc.para(t(f"Budgets: `smoke` ({_budget_text('smoke')}), `laptop` "
                   f"({_budget_text('laptop')}), `full` ({_budget_text('full')}); for a GPU: "
                   "`reslab paper --budget full --data cifar10 --jobs 4 --device cuda --out "
                   "runs/paper-full`, and `--data imagefolder:PATH` for the ImageNet plan.",
                   f"Budget: `smoke` ({_budget_text('smoke')}), `laptop` "
                   f"({_budget_text('laptop')}), `full` ({_budget_text('full')}); GPU에서는 "
                   "`reslab paper --budget full --data cifar10 --jobs 4 --device cuda --out "
                   "runs/paper-full`, ImageNet 계획은 `--data imagefolder:PATH`."))
        doc.heading(2, t("Deviations of this budget from the paper", "이 budget이 논문과 다른 점"))
        doc.para(self._schedule_deviation())

    def _schedule_deviation(self) -> str:
        t, p, r = self.t, self.p, self.p.base
        length = (f"{r.iters:,}" if r.iters else t("the recipe's", "recipe의"))
        ms = ", ".join(f"{m:,}" for m in r.milestones) or "-"
        return t(f"{p.data} instead of CIFAR-10{' (ImageNet plan)' if p.imagenet else ''}; "
                 f"every run {length} iterations at batch {r.batch_size} (the paper: 64k), lr "
                 f"{r.lr:g} divided by 10 at {ms} (the paper's 32k and 48k in proportion); "
                 "trained on all training images and evaluated on the test split (the paper "
                 f"chose its schedule on a 45k/5k split); {self._precision('en')}, "
                 "channels-last memory (the same arithmetic).",
                 f"CIFAR-10 대신 {p.data}; 모든 run은 batch {r.batch_size}로 {length} "
                 f"iteration (논문: 64k), lr {r.lr:g}을 {ms}에서 10으로 나눔 (논문의 32k, "
                 "48k를 비례 축소); 모든 training image로 학습하고 test split으로 평가 (논문은 "
                 f"45k/5k split에서 schedule을 정함); {self._precision('ko')}, "
                 "channels-last 메모리 (계산은 같음).")

    def _precision(self, lang: str) -> str:
        if self.p.base.amp == "off":
            return "fp32 as the paper (`amp = \"off\"`)" if lang == "en" else \
                "논문처럼 fp32 (`amp = \"off\"`)"
        if lang == "en":
            return (f"`amp = \"{self.p.base.amp}\"` (bf16 autocast where the CPU or GPU runs it "
                    "natively, else fp32; the paper trained in fp32) to fit the budget")
        return (f"budget에 맞추려고 `amp = \"{self.p.base.amp}\"` (CPU/GPU가 bf16을 native로 "
                "실행하면 bf16 autocast, 아니면 fp32; 논문은 fp32)")

    def _summary(self) -> None:
        t = self.t
        self.doc.heading(2, t("Verdicts at a glance", "판정 요약"))
        rows = []
        for title, claims in self.sections:
            n = _count(claims)
            rows.append([title, n[HOLDS], n[FAILS], n[NOT_JUDGED]])
        self.doc.table([t("claim group", "주장 묶음"), t("holds", "성립"),
                        t("does not hold", "성립하지 않음"), t("not judged", "판정하지 않음")],
                       rows)

    def _section(self, title: str, claims: list[Claim], deviation: str | None = None) -> None:
        self.sections.append((title, claims))
        self.doc.heading(2, title)
        _verdict_table(self.doc, self.t, claims)
        if deviation:
            self.doc.para(f"*{self.t('Deviations', '논문과 다른 점')}:* {deviation}")

    def _tables(self) -> None:
        t, tab = self.t, self.m["tables"]
        if tab is None:
            return
        claims = v.table1_claims(tab) + v.table6_claims(tab)
        self._section(t("Table 1 and Table 6: FLOPs and parameters, exact",
                        "Table 1, Table 6: FLOPs와 parameter 수, 정확히"), claims,
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
        self.doc.table([t("GMACs per stage", "stage별 GMACs"), *stages, "total"], rows)

    def _trace(self) -> None:
        tr = self.m["trace"]
        if tr is None:
            return
        t = self.t
        self._section(t("The notes' resnet50 trace", "노트의 resnet50 trace"),
                      [v.trace_claim(tr)])
        self.doc.para(t("The notes' first lines (`reslab trace resnet50` prints the same, "
                        "with `input` for `입력`):",
                        "노트의 첫 줄들 (`reslab trace resnet50`도 같게 출력, `입력` 대신 "
                        "`input`):"))
        self.doc.code(tr["excerpt"])

    def _fig6(self) -> None:
        from ..plots import degradation_figure

        t, deg = self.t, self.deg
        flat, orderings = v.fig6_claims(deg)
        r = self.p.base
        every = r.train_error_every
        dev = self._schedule_deviation()
        if every:
            dev += " " + t(f"Training errors are running errors over the last {every} "
                           f"iterations ({every * r.batch_size:,} augmented images, as the "
                           "paper's thin curves), so a final one carries sampling noise of "
                           "about a point; the seeds' spread includes it.",
                           f"training error는 마지막 {every} iteration (augmentation된 image "
                           f"{every * r.batch_size:,}장)의 running error (논문의 가는 곡선처럼)라서 "
                           "최종값에 1 point 정도의 sampling noise가 있고, seed 간 spread에 "
                           "포함된다.")
        if flat and all(c.verdict != HOLDS for c in flat):
            dev += " " + t("No run had flattened at its last lr (see the flatness rows): the "
                           "orderings are those of short training, not of converged nets.",
                           "마지막 lr에서 평탄해진 run이 없다 (평탄 여부 행 참고): 이 순서는 "
                           "수렴한 net이 아니라 짧은 학습의 결과다.")
        self._section(t("Fig. 6: degradation of plain nets, removed by residual learning",
                        "Fig. 6: plain net의 degradation과 residual learning"), orderings, dev)
        if deg is None:
            return
        png = degradation_figure(deg.first_seeds(), self.dir.figure("fig6"),
                                 title=f"plain vs ResNet on {deg.dataset} (Fig. 6, seed "
                                       f"{self.p.budget.seeds[0]})")
        self.doc.image(png, "Fig. 6")
        self.doc.table(["run", "seed", t("final train error %", "최종 train error %"),
                        t("final test error %", "최종 test error %"),
                        t("training s", "학습 초")],
                       [[r.run, r.seed, _pct(r.final_train_error), _pct(r.final_test_error),
                         f"{r.train_seconds:.0f}" if r.train_seconds else "-"]
                        for r in deg.runs])
        self.sections.append((t("Fig. 6: flatness at the last lr", "Fig. 6: 마지막 lr에서 평탄"),
                              flat))
        self.doc.heading(3, t("Had each run flattened at its last lr?",
                              "각 run이 마지막 lr에서 평탄해졌나?"))
        _verdict_table(self.doc, self.t, flat)

    def _fig7(self) -> None:
        from ..plots import ratios_figure, responses_figure

        t, resp = self.t, self.m["responses"]
        claims = v.fig7_claims(resp)
        dev = None
        if resp:
            dev = t(f"measured on {resp['images']:,} {resp['split']} images of {self.p.data} "
                    "(the paper: the CIFAR-10 test set), after the short training above.",
                    f"{self.p.data}의 {resp['split']} image {resp['images']:,}장에서 측정 (논문: "
                    "CIFAR-10 test set), 위의 짧은 학습 뒤.")
        self._section(t("Fig. 7: layer responses, ResNet vs plain and deeper vs shallower",
                        "Fig. 7: layer response, ResNet vs plain, 깊은 net vs 얕은 net"),
                      claims, dev)
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
        self.doc.table([t("model", "model"), "seeds", t("3x3 layers", "3x3 layer 수"),
                        t("mean std (± over seeds)", "평균 std (seed 간 ±)"),
                        t("max std", "최대 std")], rows)
        firsts = {k: s for k, s in resp["stds"].items() if "-seed" not in k}
        self.doc.image(responses_figure(firsts, self.dir.figure("fig7"),
                                        title="std of each 3x3 layer's response (Fig. 7)"),
                       "Fig. 7")
        if resp["ratios"]:
            ratios = {k: r for k, r in resp["ratios"].items() if "-seed" not in k}
            ratios_figure(ratios, self.dir.figure("ratios"))

    def _identity(self) -> None:
        from ..plots import bars_figure

        t, idn = self.t, self.m["identity"]
        claims = v.identity_claims(idn, self.deg)
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
        self._section(t("The identity construction (section 1), on the training set",
                        "Identity 구성 (section 1), training set에서"), claims, dev)
        if idn is None:
            return
        names = {"shallow": idn["small"], "grown": f"grown {idn['big']}",
                 "shallow_continued": f"{idn['small']} +{idn['further_iters']}",
                 "grown_trained": f"grown {idn['big']} +{idn['further_iters']}",
                 "deep_scratch": f"{idn['big']} (scratch)"}
        self.doc.table([t("net", "net"), t("training error %", "training error %"),
                        t("wrong", "오답")],
                       [[names[k], _pct(e), idn["wrong"][k]] for k, e in idn["error"].items()])
        self.doc.image(bars_figure({names[k]: [e] for k, e in idn["error"].items()},
                                   self.dir.figure("identity"),
                                   ylabel="training error (%)",
                                   title="identity construction, training set"),
                       t("identity construction", "identity 구성"))

    def _channels(self) -> None:
        t, tab = self.t, self.m["tables"]
        if tab is None:
            return
        self._section(t("Why channels double when maps halve (section 3.3)",
                        "map이 절반이 될 때 channel을 두 배로 (section 3.3)"),
                      v.channel_claims(tab))

    def _shortcuts(self) -> None:
        from ..plots import bars_figure

        t, sc = self.t, self.m["shortcuts"]
        claims = v.shortcut_claims(sc)
        dev = None
        if sc:
            seeds = ", ".join(f"{o} {len(d['seeds'])}" for o, d in sc["options"].items())
            dev = t(f"{sc['model']} on {self.p.data}, seeds per option: {seeds} (the "
                    "paper's Table 3: resnet34 on ImageNet, top-1 error A 25.03, B 24.52, C "
                    "24.19). reslab's CIFAR nets use option A by default, as the paper; its "
                    "ImageNet nets default to B (the paper's choice for resnet50/101/152), and "
                    "Table 2's resnet18/34 used A: `--shortcut A` (the full budget's ImageNet "
                    "plan does).",
                    f"{self.p.data}에서 {sc['model']}, option별 seed 수: {seeds} (논문 Table 3: "
                    "ImageNet resnet34, top-1 error A 25.03, B 24.52, C 24.19). reslab의 CIFAR "
                    "net은 논문처럼 기본 option A; ImageNet net은 기본 B (논문의 resnet50/101/152 "
                    "선택)이고, Table 2의 resnet18/34는 A: `--shortcut A` (full budget의 ImageNet "
                    "계획은 A를 씀).")
        self._section(t("Shortcut options A/B/C (Table 3's question)",
                        "Shortcut option A/B/C (Table 3의 질문)"), claims, dev)
        if sc is None:
            return
        opts = sc["options"]
        self.doc.table(["option", t("parameters", "parameter"), "seeds",
                        t("test error % per seed", "seed별 test error %"),
                        t("train error % per seed", "seed별 train error %")],
                       [[o, f"{d['params']:,}", " ".join(map(str, d["seeds"])),
                         " ".join(_pct(e) for e in d["test_error"]),
                         " ".join(_pct(e) for e in d["train_error"])] for o, d in opts.items()])
        self.doc.image(bars_figure({o: [e for e in d["test_error"] if e is not None]
                                    for o, d in opts.items()}, self.dir.figure("shortcuts"),
                                   ylabel="test error (%)",
                                   title=f"shortcut options, {sc['model']}"),
                       t("shortcut options", "shortcut option"))

    def _warmup(self) -> None:
        t = self.t
        self._section(t("resnet110 and its warm-up (section 4.2)", "resnet110과 warm-up "
                        "(section 4.2)"), v.warmup_claims(self.m["warmup"], self.deg))

    # --- the notes' questions ------------------------------------------------------------

    def _questions(self) -> None:
        t, doc = self.t, self.doc
        doc.heading(2, t("The notes' questions, answered with this run's numbers",
                         "노트의 질문: 이 run의 숫자로 답하기"))
        self._q11()
        self._q12()
        self._q2()
        self._q3()
        self._q_downsample()
        self._q_conv2d()

    def _q11(self) -> None:
        t, doc, resp = self.t, self.doc, self.m["responses"]
        doc.heading(3, t("Q&A 1.1: why does a small std mean the residual function is near "
                         "zero?", "Q&A 1.1: std가 작다는 것이 왜 residual function이 0에 "
                         "가깝다는 뜻인가?"))
        if not resp or not resp["ratios"]:
            doc.para(t("Not measured at this budget.", "이 budget에서는 측정하지 않음."))
            return
        doc.para(t("A ResNet block computes x + F(x). The response of its last 3x3 layer, after "
                   "BN and before the addition, *is* F(x), and BN centres it, so its std is the "
                   "size of F(x). Measured directly, ||F(x)|| / ||x|| per block (mean over "
                   f"{resp['ratio_images']:,} test images):",
                   "ResNet block은 x + F(x)를 계산한다. 마지막 3x3 layer의 response (BN 뒤, "
                   "덧셈 전)가 곧 F(x)이고 BN이 평균을 0으로 맞추므로, 그 std가 F(x)의 크기다. "
                   f"직접 잰 block별 ||F(x)|| / ||x|| (test image {resp['ratio_images']:,}장 "
                   "평균):"))
        rows = []
        for label, r in resp["ratios"].items():
            rows.append([label, len(r), f"{statistics.fmean(r):.3f}", f"{min(r):.3f}",
                         f"{max(r):.3f}", f"{r[-1]:.3f}"])
        doc.table(["ResNet", t("blocks", "block 수"), t("mean", "평균"), "min", "max",
                   t("last block", "마지막 block")], rows)
        doc.image(self.dir.figure("ratios"), "||F(x)|| / ||x||")
        means = {k: statistics.fmean(r) for k, r in resp["ratios"].items()}
        small = [k for k, m in means.items() if m < 1]
        text = t(f"In {len(small)} of {len(means)} ResNets the residual branch is on average "
                 "smaller than the identity it is added to (ratio below 1).",
                 f"ResNet {len(means)}개 중 {len(small)}개에서 residual branch가 평균적으로 "
                 "더해지는 identity보다 작다 (비율 1 미만).")
        if len(small) > len(means) / 2:
            text += " " + t("Each block then changes its input by a fraction of it, which is "
                            "what small responses in Fig. 7 mean: the notes' sketch holds in "
                            "the form x_(i+1) = x_i + F_i(x_i) with ||F_i|| small against "
                            "||x_i|| (F_i is small, not a constant C_i: BN centres it).",
                            "그러면 각 block은 입력을 그 일부만큼만 바꾸며, 이것이 Fig. 7의 작은 "
                            "response의 뜻이다: 노트의 식은 x_(i+1) = x_i + F_i(x_i), ||F_i||가 "
                            "||x_i||보다 작은 형태로 성립한다 (F_i는 상수 C_i가 아니라 작은 값: "
                            "BN이 평균을 0으로 맞춤).")
        else:
            text += " " + t("So at this budget the residual functions are not small against "
                            "their inputs: the nets are far from converged, and the notes' "
                            "reading of Fig. 7 cannot be confirmed here.",
                            "즉 이 budget에서는 residual function이 입력에 비해 작지 않다: net이 "
                            "수렴과 거리가 멀어, 노트의 Fig. 7 해석을 여기서 확인할 수 없다.")
        doc.para(text)

    def _q12(self) -> None:
        t, doc, resp = self.t, self.doc, self.m["responses"]
        doc.heading(3, t("Q&A 1.2: why is the last layer's std larger?",
                         "Q&A 1.2: 왜 마지막 layer의 std가 더 큰가?"))
        if not resp:
            doc.para(t("Not measured at this budget.", "이 budget에서는 측정하지 않음."))
            return
        rows, larger = [], 0
        for label, s in resp["stds"].items():
            if "-seed" in label:
                continue
            med = statistics.median(s[:-1])
            rank = sorted(s, reverse=True).index(s[-1]) + 1
            larger += s[-1] > med
            rows.append([label, f"{s[-1]:.3f}", f"{med:.3f}", f"{s[-1] / med:.2f}",
                         f"{rank} / {len(s)}"])
        doc.table([t("model", "model"), t("last 3x3 layer std", "마지막 3x3 layer std"),
                   t("median of the others", "나머지의 median"), t("ratio", "비율"),
                   t("rank (1 = largest)", "순위 (1 = 최대)")], rows)
        ratio_line = ""
        if resp["ratios"]:
            lasts = [f"{k} {r[-1]:.2f} vs {statistics.fmean(r[:-1]):.2f}"
                     for k, r in resp["ratios"].items() if "-seed" not in k and len(r) > 1]
            ratio_line = t(" The last block's ||F(x)|| / ||x|| against the mean of the others: "
                           + "; ".join(lasts) + ".",
                           " 마지막 block의 ||F(x)|| / ||x||와 나머지 평균: "
                           + "; ".join(lasts) + ".")
        text = t(f"Measured: the last 3x3 layer's std is above the median of the other "
                 f"layers in {larger} of {len(rows)} nets." + ratio_line,
                 f"측정: 마지막 3x3 layer의 std가 나머지 layer의 median보다 큰 net은 "
                 f"{len(rows)}개 중 {larger}개." + ratio_line)
        if larger > len(rows) / 2:
            text += " " + t("The last layer feeds the average pool and the classifier "
                            "directly; its output has to separate the classes rather than "
                            "refine a representation, so a large response there fits the "
                            "notes' guess. The data show that it is larger, not why.",
                            "마지막 layer는 average pool과 classifier로 바로 이어지며 표현을 "
                            "다듬기보다 class를 나누어야 하므로, 큰 response는 노트의 추측과 "
                            "맞는다. 데이터는 더 크다는 것을 보여줄 뿐 이유는 보여주지 않는다.")
        else:
            text += " " + t("Here the last layer is not the larger one in most nets: the "
                            "notes' observation does not hold on these runs.",
                            "여기서는 대부분의 net에서 마지막 layer가 더 크지 않다: 노트의 관찰이 "
                            "이 run에서는 성립하지 않는다.")
        doc.para(text)

    def _q2(self) -> None:
        t, doc, idn = self.t, self.doc, self.m["identity"]
        doc.heading(3, t("Q2: why argue with identity mappings?",
                         "Q2: 왜 identity mapping으로 설명하는가?"))
        if not idn:
            doc.para(t("Not measured at this budget.", "이 budget에서는 측정하지 않음."))
            return
        e, n = idn["error"], idn["images"]
        line = t(f"The construction exists and is exact: {idn['small']} trained, then grown "
                 f"into {idn['big']} by identity blocks, misclassifies {idn['wrong']['grown']:,} "
                 f"of {n:,} training images, as {idn['small']} does ({idn['wrong']['shallow']:,}"
                 f"); so a deeper net *can* have no higher training error.",
                 f"구성은 존재하고 정확하다: 학습한 {idn['small']}에 identity block을 더한 "
                 f"{idn['big']}는 training image {n:,}장 중 {idn['wrong']['grown']:,}장을 틀려 "
                 f"{idn['small']}({idn['wrong']['shallow']:,}장)와 같다. 즉 깊은 net의 training "
                 "error가 더 높을 *필요는* 없다.")
        if "deep_scratch" in e:
            line += " " + t(f"The {idn['big']} trained from scratch by the same solver ends at "
                            f"{_pct(e['deep_scratch'])}% against {idn['small']}'s "
                            f"{_pct(e['shallow'])}%: what SGD finds, not what exists.",
                            f"같은 solver로 처음부터 학습한 {idn['big']}는 "
                            f"{_pct(e['deep_scratch'])}%, {idn['small']}는 {_pct(e['shallow'])}"
                            "%: 존재하는 해가 아니라 SGD가 찾는 해의 차이다.")
        if "grown_trained" in e:
            line += " " + t(f"Trained further, the grown net reaches {_pct(e['grown_trained'])}%"
                            f" and the shallow net {_pct(e.get('shallow_continued'))}%.",
                            f"더 학습하면 grown net은 {_pct(e['grown_trained'])}%, 얕은 net은 "
                            f"{_pct(e.get('shallow_continued'))}%.")
        doc.para(line)

    def _q3(self) -> None:
        t, doc, tab = self.t, self.doc, self.m["tables"]
        doc.heading(3, t("Q3: why do channels grow as the resolution shrinks?",
                         "Q3: 왜 해상도를 줄이면서 채널을 키우는가?"))
        if not tab:
            return
        row = tab["table1"]["resnet34/3x3"]
        stages = [s for s in row["stages"] if s["macs_per_3x3"]]
        doc.table([t("stage", "stage"), t("output", "출력"), t("MACs of one 3x3 layer",
                                                               "3x3 layer 하나의 MACs")],
                  [[s["paper_name"], "x".join(map(str, s["output"][1:])),
                    f"{s['macs_per_3x3']:,}"] for s in stages])
        a, b = stages[0], stages[1]
        doc.para(t(f"A 3x3 layer costs H x W x C_in x C_out x 9 multiply-adds. Halving the map "
                   f"divides H x W by 4, doubling the channels multiplies C_in x C_out by 4: "
                   f"{a['macs_per_3x3']:,} in {a['paper_name']} and {b['macs_per_3x3']:,} in "
                   f"{b['paper_name']} (resnet34, measured). Section 3.3: 'if the feature map "
                   "size is halved, the number of filters is doubled so as to preserve the time "
                   "complexity per layer'. Without the doubling a stage would cost a quarter of "
                   "the previous one and hold half the features per position.",
                   f"3x3 layer 하나는 H x W x C_in x C_out x 9번의 multiply-add. map을 절반으로 "
                   f"하면 H x W가 1/4, channel을 두 배로 하면 C_in x C_out이 4배: "
                   f"{a['paper_name']}에서 {a['macs_per_3x3']:,}, {b['paper_name']}에서 "
                   f"{b['macs_per_3x3']:,} (resnet34, 측정). Section 3.3: 'feature map 크기가 "
                   "절반이 되면 layer당 time complexity를 유지하도록 filter 수를 두 배로'. 두 배로 "
                   "하지 않으면 stage마다 연산이 1/4로 줄고 위치당 feature도 절반이다."))

    def _q_downsample(self) -> None:
        t, doc, tab = self.t, self.doc, self.m["tables"]
        doc.heading(3, t("Bottleneck / downsample: kernel and stride of the shortcut "
                         "projection", "Bottleneck / downsample: shortcut projection의 kernel과 "
                         "stride"))
        if not tab:
            return
        doc.table([t("stage", "stage"), "downsample", t("main path strides (1x1, 3x3, 1x1)",
                                                        "main path stride (1x1, 3x3, 1x1)")],
                  [[d["stage"], d["module"], ", ".join(f"{s[0]}" for s in d["main_strides"])]
                   for d in tab["downsample"]])
        first, second = tab["downsample"][0], tab["downsample"][1]
        doc.para(t(f"In torchvision's resnet50 (as the notes traced it) the projection is a "
                   f"{first['kernel'][0]}x{first['kernel'][1]} conv in every stage. In "
                   f"{first['stage']} its stride is {first['stride'][0]}: it only matches the "
                   f"channels ({first['in']} -> {first['out']}), the map stays 56x56. From "
                   f"{second['stage']} on its stride is {second['stride'][0]}, the same as the "
                   "block's main path (there on the 3x3 conv; the paper puts it on the first "
                   "1x1), so both paths halve the map and the sum lines up. So yes: the "
                   "shortcut's stride equals the main path's total stride, and its kernel is "
                   "1x1 (it only needs to change channels and subsample).",
                   f"torchvision resnet50 (노트가 trace한 것)에서 projection은 모든 stage에서 "
                   f"{first['kernel'][0]}x{first['kernel'][1]} conv다. {first['stage']}에서는 "
                   f"stride {first['stride'][0]}: channel만 맞추고 ({first['in']} -> "
                   f"{first['out']}) map은 56x56 그대로. {second['stage']}부터는 stride "
                   f"{second['stride'][0]}로 block의 main path와 같다 (torchvision은 3x3 conv에, "
                   "논문은 첫 1x1에 둠). 두 경로가 모두 map을 절반으로 줄여 합이 맞는다. 즉 "
                   "shortcut의 stride는 main path 전체의 stride와 같고, kernel은 1x1이다 "
                   "(channel을 바꾸고 subsample만 하면 되므로)."))

    def _q_conv2d(self) -> None:
        t, doc, tab = self.t, self.doc, self.m["tables"]
        doc.heading(3, t("Conv2d's parameters", "Conv2d의 parameter"))
        if not tab:
            return
        c = tab["conv2d"]
        doc.table([t("argument", "인자"), t("value", "값")],
                  [[k, json.dumps(c[k])] for k in ("in_channels", "out_channels", "kernel_size",
                                                   "stride", "padding", "dilation", "groups",
                                                   "bias", "padding_mode")])
        doc.para(t(f"`{c['module']}` has a weight of shape {c['weight_shape']} (out, in, kh, "
                   f"kw): {c['params']} parameters, no bias. On an input of shape "
                   f"{c['input']} it gives {c['output']}: padding 1 keeps a 3x3 kernel's map "
                   "size at stride 1.",
                   f"`{c['module']}`의 weight shape은 {c['weight_shape']} (out, in, kh, kw): "
                   f"parameter {c['params']}개, bias 없음. 입력 {c['input']}에 대해 출력 "
                   f"{c['output']}: stride 1에서 padding 1이 3x3 kernel의 map 크기를 유지한다."))

    def verdicts_json(self) -> dict[str, Any]:
        return {"budget": self.p.budget.name, "data": self.p.data,
                "sections": [{"title": title, "claims": [
                    {"claim": c.text, "verdict": c.verdict, "evidence": c.evidence}
                    for c in claims]} for title, claims in self.sections]}


def _budget_text(name: str) -> str:
    from .budgets import BUDGETS

    b = BUDGETS[name]
    return f"{b.data}, {b.expected}"


def write_page(p: Plan, out: Path, lang: str = "en") -> tuple[Path, Path]:
    """DIR/paper.md, DIR/paper.html (figures inline) and DIR/paper.json from DIR's members."""
    page = Page(p, out, lang)
    doc = page.build()
    paper = PaperDir(out)
    md, html = paper.page_md, paper.page_html
    atomic_write_text(md, doc.markdown(out))
    atomic_write_text(html, doc.html(f"reslab paper: {p.budget.name} on {p.data}"))
    atomic_write_text(paper.verdicts, json.dumps(page.verdicts_json(), indent=1) + "\n")
    return md, html

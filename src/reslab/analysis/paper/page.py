"""The page: DIR/paper.md and a self-contained DIR/paper.html (figures inline), in English or
Korean, built only from what the members wrote (DIR/members/*.json, DIR/calls.json): every
number on it is read from those files, none is typed here (the paper's own numbers come with
the members too). DIR/paper.json holds the verdicts for scripts.

The page is its header (what ran, how, and how the budget deviates from the paper), the verdicts
at a glance, the claim sections (sections.py) and the notes' questions (questions.py); lang.py
holds the Korean beside the English.
"""
from __future__ import annotations

import json
from pathlib import Path
from typing import Any

from ...io import atomic_write_text
from ..claims import FAILS, HOLDS, NOT_JUDGED
from ..report import Doc
from .budgets import PaperDir, Plan
from .parts import PageParts
from .questions import questions
from .sections import SECTIONS


class Page(PageParts):
    """One page of one DIR: the members' results and the text around them."""

    def build(self) -> Doc:
        t, p = self.t, self.p
        self.doc.heading(1, t(f"Deep Residual Learning, rerun: the {p.budget.name} budget on "
                              f"{p.data}", f"Deep Residual Learning 재현: {p.data}에서 "
                              f"{p.budget.name} budget"))
        self._header()
        body = Doc()  # the sections first: the summary above them counts their verdicts
        self.doc, top = body, self.doc
        for section in SECTIONS:
            section(self)
        questions(self)
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
                   "one seed, a run that had not converged, or not run at this budget). A claim "
                   "about trained networks is judged only on runs that passed the convergence "
                   "gate (its section states the criterion).",
                   "He, Zhang, Ren, Sun, *Deep Residual Learning for Image Recognition* "
                   "(2015): 이 기계에서 확인할 수 있는 모든 주장을 명령 하나로 다시 실행했다. "
                   "판정은 run 파일에서 읽는다: **성립**, **성립하지 않음** (측정된 차이가 "
                   "seed noise, 즉 차이의 standard error 2배보다 크게 반대 방향), "
                   "**판정하지 않음** (noise 이내, seed 1개, 수렴하지 않은 run, 또는 이 budget에서 "
                   "실행 안 함). 학습된 network에 대한 주장은 수렴 관문을 통과한 run에서만 "
                   "판정한다 (그 section에 기준이 있다)."))
        calls = self.calls
        finished = [c for c in calls if c.get("status") == "finished"]
        # the machine (and its load) of the call that did the most work: the one that trained
        machine = max(calls, key=lambda c: c.get("seconds", 0)).get("machine", "-") \
            if calls else "-"
        seconds = sum(c.get("seconds", 0) for c in calls)
        cpu = sum(c.get("cpu_seconds", 0) for c in calls)
        rows = [[t("budget", "budget"), f"{p.budget.name} ({p.budget.expected})"],
                [t("data", "data"), p.data],
                [t("machine", "기계"), machine],
                [t("time taken", "걸린 시간"),
                 t(f"{seconds / 60:.1f} min of wall time, {cpu:,.0f} CPU seconds, over "
                   f"{len(calls)} call(s) of the command ({len(finished)} finished)",
                   f"명령 {len(calls)}번 호출 ({len(finished)}번 완료), wall time "
                   f"{seconds / 60:.1f}분, CPU {cpu:,.0f}초")]]
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
        doc.para(self.schedule_deviation())

    def _summary(self) -> None:
        t = self.t
        self.doc.heading(2, t("Verdicts at a glance", "판정 요약"))
        kinds = (HOLDS, FAILS, NOT_JUDGED)
        self.doc.table([t("claim group", "주장 묶음"), *map(t.verdict, kinds)],
                       [[title, *(sum(c.verdict == k for c in claims) for k in kinds)]
                        for title, claims in self.sections])

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
    """DIR/paper.md, DIR/paper.html (figures inline; paper.LANG.md and .html for another
    language, beside the English page) and DIR/paper.json from DIR's members."""
    page = Page(p, out, lang)
    doc = page.build()
    paper = PaperDir(out)
    md, html = paper.page_md(lang), paper.page_html(lang)
    atomic_write_text(md, doc.markdown(out))
    atomic_write_text(html, doc.html(f"reslab paper: {p.budget.name} on {p.data}"))
    atomic_write_text(paper.verdicts, json.dumps(page.verdicts_json(), indent=1) + "\n")
    return md, html

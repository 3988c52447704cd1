"""What every part of the page works with: the plan, the members' results read back from DIR,
the language, the document being written and the claim sections written so far; and the
deviations of the budget's schedule from the paper's, which the header and Fig. 6 both state.
"""
from __future__ import annotations

import json
from pathlib import Path
from typing import Any

from ..claims import Claim, checked
from ..convergence import Convergence
from ..report import Doc
from ..sweep_result import DegradationResult
from .budgets import PaperDir, Plan, TrainMember
from .lang import Lang, verdict_table
from ...errors import UserError
from .runner import member_file, read_member

MEMBERS = ("tables", "trace", "degradation", "responses", "grow", "identity", "shortcuts",
           "warmup", "convergence")


def pct(x: float | None) -> str:
    return "-" if x is None else f"{100 * x:.2f}"


class PageParts:
    """One page of one DIR: the members' results and the text around them."""

    def __init__(self, p: Plan, out: Path, lang: str) -> None:
        self.p, self.out, self.t = p, out, Lang(lang)
        self.m: dict[str, Any] = {name: read_member(out, name) for name in MEMBERS}
        deg = self.m["degradation"]
        self.deg = (None if deg is None
                    else DegradationResult.from_json(deg, member_file(out, "degradation")))
        conv = self.m["convergence"]
        try:
            self.readings: dict[str, Convergence] = {} if conv is None else {
                name: Convergence.from_json(r) for name, r in conv["members"].items()}
        except (ValueError, TypeError, KeyError, AttributeError):
            raise UserError(f"{member_file(out, 'convergence')} is damaged: delete it and run "
                            "the command again to measure it anew") from None
        self.dir = PaperDir(out)
        self.dir.figures.mkdir(parents=True, exist_ok=True)
        self.doc = Doc()
        self.sections: list[tuple[str, list[Claim]]] = []
        try:
            self.calls = json.loads(self.dir.calls.read_text())
        except (OSError, ValueError):
            self.calls = []

    def runs(self, members: list[TrainMember]) -> list[Convergence]:
        """The convergence readings of these training members (those measured)."""
        return [self.readings[m.name] for m in members if m.name in self.readings]

    def sides(self, what: str) -> dict[str, list[Convergence]]:
        """{a claim side's label: the readings of its runs} for the claims of `what`: "sweep"
        (Fig. 6, Fig. 7: by model), "shortcuts" (by option), "identity" (the grown net and its
        control, as verdicts.identity_claims labels them) or "warmup"."""
        p, sweep = self.p, self.p.by_role("sweep")

        def models(role: str, model: str) -> list[Convergence]:
            return self.runs([m for m in p.by_role(role) if m.recipe.model == model])

        if what == "sweep":
            return {m: models("sweep", m) for m in dict.fromkeys(x.recipe.model for x in sweep)}
        if what == "shortcuts":
            opts = p.by_role("shortcut")
            if not opts:
                return {}
            out = {"A": models("sweep", opts[0].recipe.model)}
            for o in ("B", "C"):
                out[o] = self.runs([m for m in opts if m.recipe.shortcut == o])
            return out
        if what == "identity":
            small, big = (f"resnet{d}" for d in p.budget.grow)
            return {f"grown {big}": self.runs(p.by_role("grown")),
                    f"{small} continued": self.runs(p.by_role("continued"))}
        return {"resnet110": self.runs(p.by_role("warmup")),
                "resnet56": models("sweep", "resnet56")}

    def checked(self) -> dict[str, tuple[Convergence, float]]:
        """{label: (reading, tolerance)} of every reading the gate checks (training members and
        means of seeds) at the tolerance of the most demanding claim that reads it."""
        from . import verdicts as v

        groups = [(v.fig6_claims(self.deg), True, "sweep"),
                  (v.fig7_claims(self.m["responses"]), False, "sweep"),
                  (v.identity_claims(self.m["identity"]), True, "identity"),
                  (v.shortcut_claims(self.m["shortcuts"]), True, "shortcuts"),
                  (v.warmup_claims(self.m["warmup"], self.deg), True, "warmup")]
        out: dict[str, tuple[Convergence, float]] = {}
        for claims, errors, what in groups:
            for label, (r, tol) in checked([(claims, errors)], self.sides(what)).items():
                if label not in out or tol < out[label][1]:
                    out[label] = (r, tol)
        return out

    def section(self, title: str, claims: list[Claim], deviation: str | None = None) -> None:
        """A claim section: its heading, its verdicts (counted in the summary) and how this
        budget deviates from the paper there."""
        self.sections.append((title, claims))
        self.doc.heading(2, title)
        verdict_table(self.doc, self.t, claims)
        if deviation:
            self.doc.para(f"*{self.t('Deviations', '논문과 다른 점')}:* {deviation}")

    def schedule_deviation(self) -> str:
        """The budget's schedule, data and arithmetic against the paper's."""
        t, p, r = self.t, self.p, self.p.base
        length = (f"{r.iters:,}" if r.iters else t("the recipe's", "recipe의"))
        ms = ", ".join(f"{m:,}" for m in r.milestones) or "-"
        images = (t("all training images", "모든 training image") if r.train_images is None
                  else t(f"a class-balanced {r.train_images:,} of the training images (the "
                         "same for every seed)", f"class별로 고르게 뽑은 training image "
                         f"{r.train_images:,}장 (모든 seed에 같음)"))
        size = "" if r.image_size is None else t(
            f" resized to {r.image_size} px (crop padding {r.pad} px; the paper: 32 px, pad 4)",
            f" ({r.image_size} px로 resize, crop padding {r.pad} px; 논문: 32 px, pad 4)")
        return t(f"{p.data} instead of CIFAR-10{' (ImageNet plan)' if p.imagenet else ''}; "
                 f"every run {length} iterations at batch {r.batch_size} (the paper: 64k), lr "
                 f"{r.lr:g} divided by 10 at {ms} ({self._milestones()}); "
                 f"trained on {images}{size} and evaluated on the test split (the paper "
                 f"chose its schedule on a 45k/5k split); {self.precision()}, "
                 "channels-last memory (the same arithmetic).",
                 f"CIFAR-10 대신 {p.data}; 모든 run은 batch {r.batch_size}로 {length} "
                 f"iteration (논문: 64k), lr {r.lr:g}을 {ms}에서 10으로 나눔 "
                 f"({self._milestones()}); {images}{size}로 학습하고 test split으로 평가 (논문은 "
                 f"45k/5k split에서 schedule을 정함); {self.precision()}, "
                 "channels-last 메모리 (계산은 같음).") + self._sizing()

    def _last_phase(self) -> tuple[int, int, int] | None:
        """(the run its lr drops are in proportion to, the last phase's iterations, the share
        the paper's schedule gives it) when the budget sets a longer last phase, else None."""
        r, ms = self.p.base, self.p.budget.milestones
        if not ms or not r.iters:
            return None
        # the paper: 32k and 48k of 64k, so the second drop sits at 3/4 of the run
        proportional = round(ms[-1] * 4 / 3)
        return proportional, r.iters - ms[-1], proportional - ms[-1]

    def _milestones(self) -> str:
        """Where the lr drops sit against the paper's schedule, in the page's language."""
        t, last = self.t, self._last_phase()
        if last is None:
            return t("the paper's 32k and 48k in proportion", "논문의 32k, 48k를 비례 축소")
        run, phase, share = last
        return t(f"the paper's 32k and 48k of 64k in proportion to a {run:,}-iteration run; "
                 f"the last phase is then {phase:,} iterations, {phase / share:.1f}x the "
                 "paper's share, so that the convergence gate's span holds enough images to "
                 "resolve about a point",
                 f"논문의 64k 중 32k, 48k를 {run:,} iteration run에 비례 축소; 마지막 구간은 "
                 f"{phase:,} iteration으로 논문 비율의 {phase / share:.1f}배라서 수렴 관문의 "
                 "구간이 약 1 point를 가릴 만큼 image를 담는다")

    def _sizing(self) -> str:
        """How the budget was sized, where it says (laptop: from cost and convergence alone)."""
        en, ko = self.p.budget.sizing
        return " " + self.t(en, ko) if en else ""

    def precision(self) -> str:
        """The arithmetic the runs used, against the paper's fp32."""
        amp = self.p.base.amp
        if amp == "off":
            return self.t("fp32 as the paper (`amp = \"off\"`)", "논문처럼 fp32 (`amp = \"off\"`)")
        return self.t(f"`amp = \"{amp}\"` (bf16 autocast where the CPU or GPU runs it natively, "
                      "else fp32; the paper trained in fp32) to fit the budget",
                      f"budget에 맞추려고 `amp = \"{amp}\"` (CPU/GPU가 bf16을 native로 실행하면 "
                      "bf16 autocast, 아니면 fp32; 논문은 fp32)")

"""The page's two languages: English as written, Korean beside it at each use (Lang), the Korean
of the claims and evidence that claims.py and verdicts.py write in English (as data: patterns
and their translations), and the verdict table every section shows.
"""
from __future__ import annotations

import re
from collections.abc import Sequence

from ..claims import FAILS, HOLDS, NOT_JUDGED, Claim
from ..report import Doc


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
        return translate(text, KO_CLAIMS) if self.lang == "ko" else text

    def evidence(self, text: str) -> str:
        return translate(text, KO_EVIDENCE) if self.lang == "ko" else text


def translate(text: str, table: Sequence[tuple[str, str]]) -> str:
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
    (r"^(.+?)'s training error had converged at its last lr$",
     r"\1의 training error가 마지막 lr에서 수렴했다"),
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
    (r"; gap ([^,]*), noise unknown", r"; 차이 \1, noise unknown"),
    (r"noise unknown \(a side has one seed\)", "noise 모름 (한쪽이 seed 1개)"),
    (r"smaller at (\d+) of (\d+) layers, larger at (\d+), beyond the seeds' noise",
     r"\2개 layer 중 \1개에서 작고 \3개에서 큼 (seed noise 밖에서)"),
    (r"^not judged: (.+?) had not converged ", r"판정하지 않음: \1이 수렴하지 않음 "),
    (r"\(mean of (\d+) runs\)", r"(run \1개 평균)"),
    (r"not judged: no training curve of ([^;]*) to check its convergence",
     r"판정하지 않음: 수렴을 확인할 \1의 training curve 없음"),
    (r"moved ([-+]?[\d.]+) points \(s\.e\. ([\d.]+)\) over steps (\d+)-(\d+) \((\d+) points"
     r"(?:, ([\d.]+) epochs)?\)",
     lambda m: f"step {m[3]}-{m[4]} (점 {m[5]}개" + (f", {m[6]} epoch" if m[6] else "")
     + f")에서 {m[1]} points 움직임 (s.e. {m[2]})"),
    (r"tolerance ([\d.]+) points: flat", r"tolerance \1 points: 평탄"),
    (r"tolerance ([\d.]+) points: still moving", r"tolerance \1 points: 아직 움직임"),
    (r"tolerance ([\d.]+) points: too noisy to tell",
     r"tolerance \1 points: noise가 커서 알 수 없음"),
    (r"at least (\d+) points and (\S+) epoch needed: too short to tell",
     r"점 \1개와 \2 epoch 이상 필요: 너무 짧아 알 수 없음"),
    (r"training images wrong", "개 training image 오답"),
    (r"same prediction on", "같은 예측:"),
    (r"max \|logit difference\|", "최대 |logit 차이|"),
    (r"not run at this budget", "이 budget에서는 실행하지 않음"),
    (r"is not trained at this budget", "은 이 budget에서 학습하지 않음"),
    (r"the sweep was not run", "sweep을 실행하지 않음"),
    (r"points", "points"),
)


def verdict_table(doc: Doc, lang: Lang, claims: list[Claim]) -> None:
    """Each claim: what the paper says (its number), the verdict here and this run's numbers."""
    from .said import paper_said

    doc.table([lang("claim", "주장"), lang("the paper", "논문"), lang("here", "결과"),
               lang("this run's numbers", "이 run의 숫자")],
              [[lang.claim(c.text), paper_said(c.text, lang.lang), lang.verdict(c.verdict),
                lang.evidence(c.evidence)] for c in claims])

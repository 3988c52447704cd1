"""What the paper itself says for each claim the page judges, in both languages: its number
(Table 6's test errors, Table 3's options) or, where it gives only a figure, what the figure
shows. The page puts it beside this run's number and the verdict (lang.verdict_table). Data
only: (pattern of the claim's English text, English, Korean), the first match wins.
"""
from __future__ import annotations

import re

# Table 6: CIFAR-10 test error %, by depth (resnet110: best of 5; mean 6.61 +- 0.16).
TABLE6_TEST = {20: "8.75", 32: "7.51", 44: "7.17", 56: "6.97", 110: "6.43", 1202: "7.93"}


def _table6(m: re.Match) -> tuple[str, str]:
    a, b = int(m[1]), int(m[2])
    if a in TABLE6_TEST and b in TABLE6_TEST:
        return (f"Table 6 (CIFAR-10): resnet{a} {TABLE6_TEST[a]}% vs resnet{b} "
                f"{TABLE6_TEST[b]}% test error",
                f"Table 6 (CIFAR-10): test error resnet{a} {TABLE6_TEST[a]}%, resnet{b} "
                f"{TABLE6_TEST[b]}%")
    return ("Table 6: deeper ResNets up to 110 layers have lower test errors",
            "Table 6: 110 layer까지 깊은 ResNet일수록 test error가 낮다")


SAID = (
    (r"^plain-\d+ has a higher training error than plain-\d+",
     "Fig. 6 (left): plain-56 above plain-20 in training error throughout training "
     "(CIFAR-10); Table 2: plain-34 28.54% vs plain-18 27.94% top-1 error (ImageNet)",
     "Fig. 6 (왼쪽): 학습 내내 plain-56의 training error가 plain-20보다 높다 (CIFAR-10); "
     "Table 2: top-1 error plain-34 28.54%, plain-18 27.94% (ImageNet)"),
    (r"^resnet\d+ has a lower training error than resnet\d+$",
     "Fig. 6 (right): resnet56 below resnet44, resnet32 and resnet20 in training error",
     "Fig. 6 (오른쪽): resnet56의 training error가 resnet44, resnet32, resnet20보다 낮다"),
    (r"^resnet(\d+) has a lower test error than resnet(\d+)", _table6),
    (r"^resnet\d+ has a lower training error than plain\d+$",
     "Fig. 6: at every depth the ResNet's training error is below the plain net's",
     "Fig. 6: 모든 깊이에서 ResNet의 training error가 plain net보다 낮다"),
    (r"^resnet\d+'s responses are smaller than plain\d+'s",
     "Fig. 7: ResNets' responses are generally smaller than their plain counterparts'",
     "Fig. 7: ResNet의 response는 대체로 plain net보다 작다"),
    (r"^resnet\d+'s responses are smaller than resnet\d+'s",
     "Fig. 7: the deeper ResNet has smaller responses (resnet20 > resnet56 > resnet110)",
     "Fig. 7: 깊은 ResNet일수록 response가 작다 (resnet20 > resnet56 > resnet110)"),
    (r"had converged at its last lr$",
     "Fig. 6: 64k iterations, lr divided by 10 at 32k and 48k; every curve ends flat",
     "Fig. 6: 64k iteration, 32k와 48k에서 lr을 10으로 나눔; 모든 곡선이 평탄하게 끝난다"),
    (r"with option B has a lower test error than with A$",
     "Table 3 (ImageNet resnet34, top-1 error): A 25.03%, B 24.52%",
     "Table 3 (ImageNet resnet34, top-1 error): A 25.03%, B 24.52%"),
    (r"with option C has a lower test error than with B$",
     "Table 3 (ImageNet resnet34, top-1 error): B 24.52%, C 24.19%",
     "Table 3 (ImageNet resnet34, top-1 error): B 24.52%, C 24.19%"),
    (r"with option \w has a lower training error than with \w$",
     "Table 3 gives test errors only (B and C slightly better than A)",
     "Table 3은 test error만 제시 (B, C가 A보다 조금 낫다)"),
    (r"^the grown \S+ \(identity blocks",
     "Section 1: a deeper model built by adding identity layers has no higher training error "
     "(an argument, no number)",
     "Section 1: identity layer를 더해 만든 깊은 model의 training error는 더 높지 않다 "
     "(논증, 숫자 없음)"),
    (r"^after \d+ further iterations",
     "Section 1: solvers may fail to find that solution; the paper does not train a grown net",
     "Section 1: solver가 그 해를 찾지 못할 수 있다; 논문은 grown net을 학습하지 않음"),
    (r"^resnet110's warm-up",
     "Section 4.2: lr 0.01 until the training error is below 80% (about 400 iterations)",
     "Section 4.2: training error가 80% 미만이 될 때까지 lr 0.01 (약 400 iteration)"),
    (r"^resnet110 has a lower test error than resnet56",
     "Table 6: resnet110 6.43% (best of 5; 6.61 +- 0.16) vs resnet56 6.97%",
     "Table 6: resnet110 6.43% (5번 중 최고; 6.61 +- 0.16), resnet56 6.97%"),
    (r"FLOPs \(Table 1\)$|: .* GMACs, .* parameters$", "Table 1", "Table 1"),
    (r"\(Table 6\), plain net the same$", "Table 6", "Table 6"),
    (r"trace of resnet50", "the study notes' trace", "스터디 노트의 trace"),
    (r"one 3x3 layer costs the same|^resnet20 \(CIFAR",
     "Section 3.3: filters double when the map halves, keeping the cost per layer",
     "Section 3.3: map이 절반이 되면 filter를 두 배로, layer당 연산량 유지"),
)


def paper_said(text: str, lang: str) -> str:
    """What the paper says for the claim `text` (English), in `lang` ("en" or "ko")."""
    for row in SAID:
        m = re.search(row[0], text)
        if m:
            if callable(row[1]):
                en, ko = row[1](m)
            else:
                en, ko = row[1], row[2]
            return ko if lang == "ko" else en
    return "-"

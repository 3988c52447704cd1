"""The page's last part: the notes' questions, each answered with this run's numbers. A question
is data (its heading in both languages, the member whose result answers it, the answer); the
frame around every answer (its heading, "not measured" when its member did not run) is
written once, in `questions`.
"""
from __future__ import annotations

import json
import statistics
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

from ..convergence import DEFAULT_TOLERANCE
from .parts import PageParts, pct

NOT_MEASURED = ("Not measured at this budget.", "이 budget에서는 측정하지 않음.")

# What a measurement means: (when most nets show the notes' observation, when they do not),
# each in English and Korean.
MEANING = {
    "small residuals": ((
        "Each block then changes its input by a fraction of it, which is what small responses "
        "in Fig. 7 mean: the notes' sketch holds in the form x_(i+1) = x_i + F_i(x_i) with "
        "||F_i|| small against ||x_i|| (F_i is small, not a constant C_i: BN centres it).",
        "그러면 각 block은 입력을 그 일부만큼만 바꾸며, 이것이 Fig. 7의 작은 response의 "
        "뜻이다: 노트의 식은 x_(i+1) = x_i + F_i(x_i), ||F_i||가 ||x_i||보다 작은 형태로 "
        "성립한다 (F_i는 상수 C_i가 아니라 작은 값: BN이 평균을 0으로 맞춤)."), (
        "So on these converged runs the residual functions are not small against their "
        "inputs: the notes' reading of Fig. 7 does not hold here.",
        "즉 수렴한 이 run에서는 residual function이 입력에 비해 작지 않다: 노트의 Fig. 7 "
        "해석이 여기서는 성립하지 않는다.")),
    "large last layer": ((
        "The last layer feeds the average pool and the classifier directly; its output has to "
        "separate the classes rather than refine a representation, so a large response there "
        "fits the notes' guess. The data show that it is larger, not why.",
        "마지막 layer는 average pool과 classifier로 바로 이어지며 표현을 다듬기보다 class를 "
        "나누어야 하므로, 큰 response는 노트의 추측과 맞는다. 데이터는 더 크다는 것을 보여줄 뿐 "
        "이유는 보여주지 않는다."), (
        "Here the last layer is not the larger one in most nets: the notes' observation does "
        "not hold on these runs.",
        "여기서는 대부분의 net에서 마지막 layer가 더 크지 않다: 노트의 관찰이 이 run에서는 "
        "성립하지 않는다.")),
}


def _conclude(page: PageParts, measured: str, most: bool, fits: tuple[str, str],
              does_not: tuple[str, str], residual_only: bool = False) -> None:
    """The answer's paragraph: what was measured, then what it means when most nets show the
    notes' observation (`fits`) or not (`does_not`), in the page's language; no meaning when
    a net it was measured on had not converged (the convergence gate, at its default
    tolerance): the responses of a net still learning say nothing about trained ones.
    residual_only: the answer measured ResNets only, so only their convergence counts."""
    shown = [m for m in page.p.by_role("sweep") + page.p.by_role("warmup")[:1]
             if not residual_only or m.recipe.model.startswith("resnet")]
    readings = page.runs(shown)
    failed = [r for r in readings if not r.converged(DEFAULT_TOLERANCE)]
    if failed or len(readings) < len(shown):
        why = (failed[0].describe(DEFAULT_TOLERANCE) if failed
               else page.t("no convergence reading of every net", "일부 net의 수렴 측정 없음"))
        page.doc.para(measured + " " + page.t(
            f"Not judged: a net had not converged ({why}), and the responses of a net still "
            "learning say nothing about trained ones.",
            f"판정하지 않음: 수렴하지 않은 net이 있다 ({why}). 아직 학습 중인 net의 response는 "
            "학습이 끝난 net에 대해 아무것도 말해 주지 않는다."))
        return
    page.doc.para(measured + " " + page.t(*(fits if most else does_not)))


def _q11(page: PageParts, resp: dict[str, Any]) -> None:
    t, doc = page.t, page.doc
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
    doc.image(page.dir.figure("ratios"), "||F(x)|| / ||x||")
    means = {k: statistics.fmean(r) for k, r in resp["ratios"].items()}
    small = [k for k, m in means.items() if m < 1]
    text = t(f"In {len(small)} of {len(means)} ResNets the residual branch is on average "
             "smaller than the identity it is added to (ratio below 1).",
             f"ResNet {len(means)}개 중 {len(small)}개에서 residual branch가 평균적으로 "
             "더해지는 identity보다 작다 (비율 1 미만).")
    _conclude(page, text, len(small) > len(means) / 2, *MEANING["small residuals"],
              residual_only=True)


def _q12(page: PageParts, resp: dict[str, Any]) -> None:
    t, doc = page.t, page.doc
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
    _conclude(page, text, larger > len(rows) / 2, *MEANING["large last layer"])


def _q2(page: PageParts, idn: dict[str, Any]) -> None:
    t, doc = page.t, page.doc
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
                        f"{pct(e['deep_scratch'])}% against {idn['small']}'s "
                        f"{pct(e['shallow'])}%: what SGD finds, not what exists.",
                        f"같은 solver로 처음부터 학습한 {idn['big']}는 "
                        f"{pct(e['deep_scratch'])}%, {idn['small']}는 {pct(e['shallow'])}"
                        "%: 존재하는 해가 아니라 SGD가 찾는 해의 차이다.")
    if "grown_trained" in e:
        line += " " + t(f"Trained further, the grown net reaches {pct(e['grown_trained'])}%"
                        f" and the shallow net {pct(e.get('shallow_continued'))}%.",
                        f"더 학습하면 grown net은 {pct(e['grown_trained'])}%, 얕은 net은 "
                        f"{pct(e.get('shallow_continued'))}%.")
    doc.para(line)


def _q3(page: PageParts, tab: dict[str, Any]) -> None:
    t, doc = page.t, page.doc
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


def _q_downsample(page: PageParts, tab: dict[str, Any]) -> None:
    t, doc = page.t, page.doc
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


def _q_conv2d(page: PageParts, tab: dict[str, Any]) -> None:
    t, doc = page.t, page.doc
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


@dataclass(frozen=True)
class Question:
    """One of the notes' questions, its heading in both languages and how it is answered."""

    en: str
    ko: str
    member: str                                         # whose result answers it
    answer: Callable[[PageParts, dict[str, Any]], None]
    measured: Callable[[dict[str, Any]], bool] = bool   # whether that result can answer it
    say_missing: bool = True                            # say "not measured" when it cannot


QUESTIONS = (
    Question("Q&A 1.1: why does a small std mean the residual function is near zero?",
             "Q&A 1.1: std가 작다는 것이 왜 residual function이 0에 가깝다는 뜻인가?",
             "responses", _q11, measured=lambda resp: bool(resp["ratios"])),
    Question("Q&A 1.2: why is the last layer's std larger?",
             "Q&A 1.2: 왜 마지막 layer의 std가 더 큰가?", "responses", _q12),
    Question("Q2: why argue with identity mappings?", "Q2: 왜 identity mapping으로 설명하는가?",
             "identity", _q2),
    Question("Q3: why do channels grow as the resolution shrinks?",
             "Q3: 왜 해상도를 줄이면서 채널을 키우는가?", "tables", _q3, say_missing=False),
    Question("Bottleneck / downsample: kernel and stride of the shortcut projection",
             "Bottleneck / downsample: shortcut projection의 kernel과 stride", "tables",
             _q_downsample, say_missing=False),
    Question("Conv2d's parameters", "Conv2d의 parameter", "tables", _q_conv2d,
             say_missing=False),
)


def questions(page: PageParts) -> None:
    """Every question of QUESTIONS under one heading."""
    t, doc = page.t, page.doc
    doc.heading(2, t("The notes' questions, answered with this run's numbers",
                     "노트의 질문: 이 run의 숫자로 답하기"))
    for q in QUESTIONS:
        doc.heading(3, t(q.en, q.ko))
        result = page.m[q.member]
        if result and q.measured(result):
            q.answer(page, result)
        elif q.say_missing:
            doc.para(t(*NOT_MEASURED))

"""runtime="auto"'s timing (deploy.runtime.choose_faster): the median of interleaved rounds
decides, so one lucky round does not win the choice; the candidates are timed on the batch
given; the ONNX Runtime candidate is a plain session (ONNX Runtime's default options, the
threads asked for)."""
from __future__ import annotations

import time

import torch

from reslab.deploy.runtime import choose_faster


def _sleeper(seconds_of_call):
    calls = []

    def fn(x: torch.Tensor) -> torch.Tensor:
        time.sleep(seconds_of_call(len(calls)))
        calls.append(1)
        return x
    return fn


def test_the_median_round_decides_not_the_best() -> None:
    """"lucky" takes 1 ms in its first timed round and 12 ms otherwise; "steady" 4 ms always.
    The best round would pick lucky; the median picks steady."""
    x = torch.zeros(2, 1, 4, 4)
    # calls 0-1 warm up and calibrate (12 ms: 2 calls fill the 20 ms round), 2-3 round one
    lucky = _sleeper(lambda i: 0.001 if i in (2, 3) else 0.012)
    steady = _sleeper(lambda i: 0.004)
    choice = choose_faster({"lucky": lucky, "steady": steady}, x, target_s=0.02, rounds=5)
    assert choice.runtime == "steady" and choice.batch == 2
    assert set(choice.seconds) == {"lucky", "steady"}
    assert choice.seconds["lucky"] > 0.011 and 0.0035 < choice.seconds["steady"] < 0.011


def test_the_onnxruntime_candidate_is_a_plain_session() -> None:
    from reslab.deploy.runtime import onnxruntime_model
    from reslab.models import create_model

    model = create_model("resnet8", num_classes=3, in_chans=1).eval()
    ort = onnxruntime_model(model, torch.zeros(1, 1, 8, 8), threads=1)
    options = ort.session.get_session_options()
    import onnxruntime

    default = onnxruntime.SessionOptions()
    assert options.intra_op_num_threads == 1 and ort.optimized_with["threads"] == 1
    for name in ("graph_optimization_level", "inter_op_num_threads", "execution_mode",
                 "enable_cpu_mem_arena", "enable_mem_pattern"):
        assert getattr(options, name) == getattr(default, name), name

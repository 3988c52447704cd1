"""`reslab bench` and the measurement helpers behind it and benchmarks/ (tiny sizes: the
numbers are not checked, only the contract)."""
from __future__ import annotations

import importlib
import json
from pathlib import Path

import numpy as np
import pytest

from reslab.cli import main
from reslab.bench import environment
from reslab.text import format_table

ROW_KEYS = {"variant", "img_s", "ms_per_batch", "vs_baseline"}


def _bench(capsys: pytest.CaptureFixture, *argv: str) -> dict:
    assert main(["bench", *argv, "--json"]) == 0
    out = capsys.readouterr().out
    return json.loads(out)  # exactly one JSON object on stdout


def test_bench_cifar_model_json(capsys: pytest.CaptureFixture) -> None:
    r = _bench(capsys, "resnet20", "--batch-size", "2", "--iters", "1")
    assert {"model", "device", "input", "batch_size", "baseline", "inference", "training",
            "speedup", "environment", "macs_per_image"} <= r.keys()
    assert r["model"] == "resnet20" and r["input"] == [2, 3, 32, 32]
    assert list(r) == ["model", "family", "device", "input", "batch_size", "iters", "rounds",
                       "macs_per_image", "baseline", "inference", "training", "runtime",
                       "speedup", "timing", "environment"]  # the JSON's layout, in order
    assert list(r["inference"][0]) == ["variant", "img_s", "ms_per_batch", "vs_baseline",
                                       "gflop_s"]
    assert "torchvision has no resnet20" in r["baseline"]  # the conventional stand-in is named
    assert len(r["inference"]) == 2 and len(r["training"]) == 2
    for row in r["inference"] + r["training"]:
        assert ROW_KEYS <= row.keys() and row["img_s"] > 0
    assert r["inference"][0]["vs_baseline"] == 1.0 and r["inference"][0]["gflop_s"] > 0
    assert {"reslab", "torch", "cpu", "threads", "date"} <= r["environment"].keys()


def test_bench_imagenet_model_against_torchvision(capsys: pytest.CaptureFixture) -> None:
    r = _bench(capsys, "resnet18", "--input", "2x3x64x64", "--iters", "1", "--rounds", "1")
    assert r["baseline"].startswith("torchvision.models.resnet18")
    assert [row["variant"] for row in r["inference"]][:2] == ["torchvision eager",
                                                              "reslab eager"]
    assert len(r["training"]) == 3


def test_bench_bad_input_is_a_usage_error(capsys: pytest.CaptureFixture) -> None:
    assert main(["bench", "resnet99", "--json"]) == 2
    assert main(["bench", "resnet20", "--iters", "0"]) == 2
    assert capsys.readouterr().err.startswith("error:")


def test_bench_sizes_are_bounded(capsys: pytest.CaptureFixture) -> None:
    assert main(["bench", "resnet20", "--batch-size", str(10**9)]) == 2
    assert capsys.readouterr().err.strip().splitlines()[-1] == \
        "error: invalid batch size 1000000000: must be between 1 and 65,536"
    assert main(["bench", "resnet50", "--batch-size", "60000"]) == 2
    assert "more than the 134,217,728 limit" in capsys.readouterr().err


def test_helpers() -> None:
    table = format_table([{"a": "x", "b": 1.234}, {"a": "long name"}],
                         [("a", "name", ""), ("b", "value", ".1f")])
    lines = table.splitlines()
    assert lines[0].split() == ["name", "value"] and lines[2].endswith("1.2")
    assert lines[3].endswith("-")  # a missing value
    assert environment()["threads"] >= 1


def test_time_to_accuracy_reads_a_run(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """benchmarks/time_to_accuracy.py: the first timed test evaluation at or above each target;
    a target never reached reports the best evaluation instead."""
    monkeypatch.syspath_prepend(str(Path(__file__).resolve().parents[1] / "benchmarks"))
    tta = importlib.import_module("time_to_accuracy")
    rows = [{"step": 20, "epoch": 0.5, "loss": 1.0, "lr": 0.1, "img_s": 900.0},
            {"step": 40, "epoch": 1.0, "split": "train", "time_s": 9.0, "top1": 0.8},
            {"step": 40, "epoch": 1.0, "split": "test", "time_s": 10.0, "top1": 0.91},
            {"step": 80, "epoch": 2.0, "split": "test", "time_s": 20.0, "top1": 0.945},
            {"step": 120, "epoch": 3.0, "split": "test", "time_s": 30.0, "top1": 0.944},
            {"step": 120, "epoch": 3.0, "split": "test", "final": True, "top1": 0.944}]
    (tmp_path / "metrics.jsonl").write_text("".join(json.dumps(r) + "\n" for r in rows)
                                            + '{"step": 140, "epo')  # a run still writing
    r = tta.time_to_accuracy(tta.read_metrics(tmp_path), [0.94, 0.95])
    assert r["evaluations"] == 3 and r["final_test_top1"] == 0.944
    hit, miss = r["targets"]
    assert hit["reached"] == "yes" and hit["time_s"] == 20.0 and hit["step"] == 80
    assert miss["reached"].startswith("not reached") and miss["top1"] == 0.945  # the best


def test_bench_runtime_auto_adds_onnxruntime_and_names_the_faster(
        capsys: pytest.CaptureFixture) -> None:
    r = _bench(capsys, "resnet8", "--input", "2x3x16x16", "--iters", "1", "--rounds", "1",
               "--runtime", "auto")
    rows = {row["variant"]: row for row in r["inference"]}
    torch_row = next(v for v in rows if v.startswith("reslab optimized"))
    ort_row = "onnxruntime (reslab's ONNX export)"
    assert ort_row in rows and len(rows) == 3
    faster = min((torch_row, ort_row), key=lambda v: rows[v]["ms_per_batch"])
    assert r["runtime"] == {"requested": "auto", "variant": faster,
                            "runtime": "torch" if faster == torch_row else "onnxruntime"}
    assert r["speedup"]["inference"] == rows[faster]["vs_baseline"]


BENCHMARKS = Path(__file__).resolve().parents[1] / "benchmarks"


def _benchmark(monkeypatch: pytest.MonkeyPatch, name: str):
    monkeypatch.syspath_prepend(str(BENCHMARKS))
    return importlib.import_module(name)


def test_peer_airbench_pieces_are_airbenchs(monkeypatch: pytest.MonkeyPatch) -> None:
    """The port's lr schedule (0.2 -> 1 at 23% -> 0.07), its whitening layer (unit second
    moment on the patches) and its net at 28 px (1 px before the head, as at 32 px)."""
    import torch
    import torch.nn.functional as F

    peer = _benchmark(monkeypatch, "peer_airbench")
    f = peer.triangle(100, start=0.2, end=0.07, peak=0.23)
    assert len(f) == 101 and f[0] == 0.2 and f[23] == 1.0 and f[100] == pytest.approx(0.07)
    assert f[10] == pytest.approx(0.2 + 0.8 * 10 / 23)
    h = peer.Hyper(base_width=4)
    net = peer.make_net(h, 1, 10)
    images = torch.randn(64, 1, 12, 12).cumsum(-1)  # correlated neighbours
    peer.init_whitening(net[0], images)
    out = F.conv2d(images, net[0].weight).permute(1, 0, 2, 3).reshape(8, -1)
    moment = out[:4] @ out[:4].T / out.shape[1]
    assert torch.allclose(moment, torch.eye(4), atol=0.02) and torch.equal(out[4:], -out[:4])
    assert net[:-3](torch.randn(2, 1, 28, 28)).shape == (2, 16, 1, 1)


def test_peer_comparison_reports_the_ratio_and_who_dominates(
        monkeypatch: pytest.MonkeyPatch) -> None:
    tta = _benchmark(monkeypatch, "time_to_accuracy")
    runs = [tta.SideRun("reslab", 0, 0.93, 100.0, []), tta.SideRun("reslab", 1, 0.95, 120.0, []),
            tta.SideRun("peer", 0, 0.94, 330.0, []), tta.SideRun("peer", 1, 0.94, 330.0, [])]
    r = tta.compare(runs)
    mine, peer = r["rows"]
    assert (mine["top1_mean"], mine["top1_min"], mine["train_s_mean"]) == \
        pytest.approx((0.94, 0.93, 110.0))
    assert r["time_ratio_peer_over_reslab"] == 3.0 and r["reslab_dominates"] is True
    slower = runs[:2] + [tta.SideRun("peer", 0, 0.94, 100.0, [])]
    assert tta.compare(slower)["reslab_dominates"] is False  # 110 s > 100 s


def test_time_to_accuracy_peer_runs_both_side_by_side_end_to_end(tmp_path: Path) -> None:
    """--peer --tiny: `reslab train` and peer_airbench.py at once, one thread each, the same
    precision; both curves, the ratio, the JSON and the plot."""
    import subprocess
    import sys

    out = tmp_path / "peer.json"
    subprocess.run([sys.executable, str(BENCHMARKS / "time_to_accuracy.py"), "--peer", "--tiny",
                    "--out", str(out)], check=True, capture_output=True, text=True)
    r = json.loads(out.read_text())
    runs = {run["runner"]: run for run in r["runs"]}
    assert set(runs) == {"reslab", "peer"} and out.with_suffix(".png").stat().st_size > 1000
    assert [p["epoch"] for p in runs["peer"]["curve"]] == [1.0, 2.0, 2.0]
    assert runs["peer"]["curve"][-1]["tta"] is True
    assert [p["epoch"] for p in runs["reslab"]["curve"]][:2] == [1.0, 2.0]
    assert r["time_ratio_peer_over_reslab"] == round(
        runs["peer"]["train_s"] / runs["reslab"]["train_s"], 3)
    cmds = r["setup"]["commands"]
    assert "--threads 1" in cmds["reslab"] and "--threads 1" in cmds["peer"]
    # results files carry no path of the machine that wrote them
    assert cmds["peer"].startswith("benchmarks/peer_airbench.py --seed 0 --threads 1")
    assert str(BENCHMARKS.parent) not in out.read_text()
    precision = r["setup"]["precision"]
    assert f"--amp {precision}" in cmds["reslab"] and f"--amp {precision}" in cmds["peer"]


def test_each_removal_variant_changes_the_fast_recipe(monkeypatch: pytest.MonkeyPatch) -> None:
    """A removal whose flags are already the recipe's values measures nothing (batch-256 became
    one when `fast` moved to batch 256): each must resolve to another recipe than `whole`."""
    import dataclasses
    import shlex

    from reslab.cli import build_parser
    from reslab.cli.train import resolve

    abl = _benchmark(monkeypatch, "ablation")

    def learnt(flags: str) -> dict:
        argv = ["train", "--recipe", "fast", "--quiet", *shlex.split(flags)]
        r = dataclasses.asdict(resolve(build_parser(argv).parse_args(argv)))
        return {k: v for k, v in r.items() if k != "given"}

    whole = learnt("")
    for name in abl.GROUPS["removals"]:
        if name != "whole":
            assert learnt(abl.VARIANTS[name]) != whole, name
    assert learnt(abl.VARIANTS["sgd"])["optimizer"] == "sgd"


def test_each_airbench_ablation_variant_sets_its_recipe_fields(
        monkeypatch: pytest.MonkeyPatch) -> None:
    """benchmarks/ablation.py: every +X variant's flags parse to the `fast` recipe with X's
    fields set (a mistyped flag or value would fail here, not an hour into a study)."""
    import shlex

    from reslab.cli import build_parser
    from reslab.cli.train import resolve

    abl = _benchmark(monkeypatch, "ablation")
    expected = {"+whiten-stem": {"whiten_stem": True}, "+dirac-init": {"dirac_init": True},
                "+bn-bias-lr": {"bn_bias_lr": 64.0},
                "+lookahead": {"ema": 0.95, "ema_every": 5, "lookahead": True,
                               "bn_momentum": 0.4},
                "+tta-translate": {"tta_translate": True},
                "+flip-alternate": {"flip_alternate": True}}
    assert abl.GROUPS["airbench"] == ["whole", *expected, "+airbench-all"]
    expected["+airbench-all"] = {k: v for fields in list(expected.values()) for k, v in
                                 fields.items()}
    for name, fields in expected.items():
        argv = ["train", "--recipe", "fast", "--quiet", *shlex.split(abl.VARIANTS[name])]
        r = resolve(build_parser(argv).parse_args(argv))
        assert {k: getattr(r, k) for k in fields} == fields, name


def test_small_folders_trains_each_folder_once_per_seed_with_the_given_flags(
        monkeypatch: pytest.MonkeyPatch, tmp_path: Path, capsys: pytest.CaptureFixture) -> None:
    """benchmarks/small_folders.py --seeds/--train-args: one row per (folder, seed), the
    folder's images made once (a seed changes the training, not the data), the flags split as
    a shell would; the results go to --out."""
    sf = _benchmark(monkeypatch, "small_folders")
    made, trained = [], []
    labels = np.repeat(np.arange(3, dtype=np.uint8), 60)
    monkeypatch.setattr(sf, "source_images",
                        lambda source: (np.zeros((180, 28, 28), np.uint8), labels))
    monkeypatch.setattr(sf, "make", lambda folder, *a: made.append(folder.name) or (
        tmp_path / folder.name, tmp_path / "test"))
    monkeypatch.setattr(sf, "train", lambda path, test, out, seed, extra: trained.append(
        (path.name, out.name, seed, extra)) or {"test_top1": 0.5})
    monkeypatch.setattr("sys.argv", ["small_folders.py", "--only", "30-3c-8px", "--seeds", "0",
                                     "2", "--train-args", "--activation relu --lr '0.1'",
                                     "--out", str(tmp_path / "r.json")])
    sf.main()
    assert made == ["30-3c-8px"]
    flags = ["--activation", "relu", "--lr", "0.1"]
    assert trained == [("30-3c-8px", "30-3c-8px-0", 0, flags),
                       ("30-3c-8px", "30-3c-8px-2", 2, flags)]
    rows = json.loads((tmp_path / "r.json").read_text())["results"]
    assert [(r["name"], r["seed"], r["test_top1"]) for r in rows] == [("30-3c-8px", 0, 0.5),
                                                                        ("30-3c-8px", 2, 0.5)]


def test_training_benchmark_gives_reslab_the_peers_model(monkeypatch: pytest.MonkeyPatch,
                                                         tmp_path: Path) -> None:
    """benchmarks/training.py times the same work on both sides: reslab's default flags turn the
    `fast` recipe into the peer's model (resnet20 with ReLU, native size, one view) and
    optimizer, whatever the recipe's own net, activation and optimizer are (the GELU recipe once
    made reslab's side slower)."""
    import shlex
    import sys

    from reslab.cli import build_parser
    from reslab.cli.train import resolve

    training = _benchmark(monkeypatch, "training")
    monkeypatch.setattr(sys, "argv", ["training.py"])
    reslab_cmd = training.commands(training.parse_args(), tmp_path, 0)["reslab"]
    argv = reslab_cmd[reslab_cmd.index("train"):]
    r = resolve(build_parser(argv).parse_args(argv))
    assert (r.model, r.activation, r.progressive_from, r.tta_flip, r.tta_translate) == (
        "resnet20", "relu", 1.0, False, False)
    # and the peer's optimizer: SGD at its lr and batch (the recipe's is muon at 0.4, batch 256)
    assert (r.optimizer, r.lr, r.batch_size, r.nesterov) == ("sgd", 0.2, 128, True)
    assert "--iters" in shlex.join(reslab_cmd)
    # the results file records the commands with no path of this machine
    peer = training.shown_command(training.commands(training.parse_args(), tmp_path, 0)["peer"])
    assert peer.startswith("benchmarks/peer_torchvision_train.py --iters 300 ")


def test_results_files_record_paths_without_the_machines(monkeypatch: pytest.MonkeyPatch,
                                                         tmp_path: Path) -> None:
    """A path a benchmark records is relative to the repository inside it, and only its name
    outside (a temporary run directory, a --keep folder elsewhere); command lines alike."""
    common = _benchmark(monkeypatch, "common")
    assert common.shown_path(common.ROOT / "docs" / "results") == "docs/results"
    assert common.shown_path(tmp_path / "run") == "run"
    assert common.shown_path(Path("runs/fast")) == "runs/fast"
    assert common.shown_command(["python", "-m", "reslab", "train", "--out",
                                 str(tmp_path / "run"), "--seed", "1"]) == \
        "-m reslab train --out run --seed 1"
    tta = _benchmark(monkeypatch, "time_to_accuracy")
    monkeypatch.setattr(tta, "read_metrics", lambda run: [])
    monkeypatch.setattr(tta, "run_config", lambda run: {})
    out = tmp_path / "tta.json"
    monkeypatch.setattr("sys.argv", ["time_to_accuracy.py", "--from-run", str(tmp_path / "r"),
                                     "--out", str(out)])
    tta.main()
    assert json.loads(out.read_text())["setup"]["run"] == "r"
    assert str(tmp_path) not in out.read_text()

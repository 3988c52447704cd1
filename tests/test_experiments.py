"""The paper's experiments: growing a net by construction (section 1), layer responses (Fig. 7),
the degradation sweep (Fig. 6) and run reports."""
from __future__ import annotations

import json
import re
import shutil
from pathlib import Path

import pytest
import torch

from reslab.analysis.responses import layer_responses, response_layers
from reslab.cli import main
from cli_helpers import legacy_record
from reslab.weights.checkpoint import load_checkpoint
from reslab.weights.record import save_weights
from reslab.errors import UserError
from reslab.models import create_model
from reslab.models.surgery import grow
from helpers import randomize_bn




META = {"architecture": "resnet20", "kwargs": {"num_classes": 4, "in_chans": 3},
        "class_names": ["a", "b", "c", "d"], "mean": [0.5] * 3, "std": [0.25] * 3,
        "input_size": [3, 16, 16]}


@pytest.fixture
def resnet20_ckpt(tmp_path: Path) -> Path:
    torch.manual_seed(0)
    path = tmp_path / "r20.safetensors"
    save_weights(path, randomize_bn(create_model("resnet20", num_classes=4)),
                 legacy_record(META))
    return path


# --- grow: section 1's construction -------------------------------------------------------

@pytest.mark.parametrize("small, big, size, kw", [
    ("resnet20", "resnet56", 16, {}),
    ("resnet18", "resnet34", 64, {}),
    ("resnet50", "resnet101", 64, {}),
    ("resnet20", "resnet32", 16, {"shortcut": "B"}),  # projections only where shapes change
])
def test_grow_computes_the_same_function(small: str, big: str, size: int, kw: dict) -> None:
    torch.manual_seed(0)
    model = randomize_bn(create_model(small, num_classes=10, **kw))
    deeper = grow(model, big)
    assert len(deeper.blocks()) > len(model.blocks()) and not deeper.training
    x = torch.randn(2, 3, size, size)
    with torch.no_grad():
        expected, got = model(x), deeper(x)
    assert expected.abs().max() > 0.1  # a non-trivial function
    torch.testing.assert_close(got, expected, atol=1e-5, rtol=0)


def test_grown_residual_blocks_are_the_identity_in_training_too() -> None:
    torch.manual_seed(0)
    model = randomize_bn(create_model("resnet20")).train()
    deeper = grow(model, "resnet32")
    added = deeper.layer2[3]
    x = torch.rand(4, 32, 8, 8)  # a block input is post-ReLU
    assert added.training and torch.equal(added(x), x)
    # Only the last BN is zeroed: the other layers keep He init so training moves them.
    assert torch.equal(added.bn2.weight, torch.zeros(32)) and added.conv1.weight.std() > 0.01
    assert torch.equal(deeper.layer2[2].conv1.weight, model.layer2[2].conv1.weight)


@pytest.mark.parametrize("small, big, kw", [
    ("resnet20", "resnet56", {}),
    ("resnet20", "resnet32", {"shortcut": "B"}),
    ("resnet18", "resnet34", {}),
])
def test_grown_net_computes_the_same_function_in_training_mode(small: str, big: str,
                                                               kw: dict) -> None:
    """Batch statistics too: the copied layers see the same inputs, the added blocks pass them."""
    torch.manual_seed(0)
    model = randomize_bn(create_model(small, num_classes=10, **kw)).train()
    deeper = grow(model, big)
    assert deeper.training
    x = torch.randn(4, 3, 32, 32)
    with torch.no_grad():
        expected, got = model(x), deeper(x)
    assert expected.abs().max() > 0.1
    torch.testing.assert_close(got, expected, atol=1e-5, rtol=0)


def test_grow_refuses_option_c_whose_projection_is_not_the_identity_in_training() -> None:
    with torch.device("meta"):
        model = create_model("resnet20", shortcut="C")
    reason = ("with shortcut C every added block has a projection shortcut (1x1 conv + BN) whose "
              "BN is the identity only with running statistics; in training mode it normalises "
              "each batch, so the block is not the identity (options A and B have identity "
              "shortcuts)")
    for kw in ({}, {"shortcut": "C"}):
        with pytest.raises(UserError) as e:
            grow(model, "resnet32", **kw)
        assert str(e.value) == f"cannot grow resnet20 into resnet32: {reason}"
    # The reason, shown: a dirac 1x1 conv + a BN that is the identity with its running statistics
    # copies x in eval mode, not in train mode (per-channel batch mean 0 instead of x's).
    proj = torch.nn.Sequential(torch.nn.Conv2d(4, 4, 1, bias=False), torch.nn.BatchNorm2d(4))
    with torch.no_grad():
        torch.nn.init.dirac_(proj[0].weight)
        proj[1].running_var.fill_(1 - proj[1].eps)
    x = torch.rand(8, 4, 5, 5) + 1.0  # a post-ReLU block input, positive
    with torch.no_grad():
        torch.testing.assert_close(proj.eval()(x), x)
        y = proj.train()(x)
    assert (y - x).abs().max() > 0.5
    torch.testing.assert_close(y.mean((0, 2, 3)), torch.zeros(4), atol=1e-5, rtol=0)


@pytest.mark.parametrize("small, big, kw, reason", [
    ("resnet20", "resnet34", {}, "different families (cifar vs imagenet) have different stems "
     "and stage widths"),
    ("resnet56", "resnet20", {}, "the target must be deeper, with at least as many blocks in "
     "every stage ((9, 9, 9) -> (3, 3, 3))"),
    ("resnet20", "resnet20", {}, "the target must be deeper, with at least as many blocks in "
     "every stage ((3, 3, 3) -> (3, 3, 3))"),
    ("resnet18", "resnet50", {}, "different block types (basic vs bottleneck), so the trained "
     "blocks cannot be copied"),
    ("plain20", "plain32", {}, "a plain net has no shortcuts, so an added block cannot be made "
     "the identity by zeroing its residual branch (section 1's construction needs F(x) + x)"),
    ("plain20", "resnet32", {}, "a plain net has no shortcuts"),
    ("resnet20", "plain32", {}, "a residual net grows only into a residual net (removing "
     "shortcuts changes the function of the copied blocks)"),
    ("resnet20", "resnet56", {"shortcut": "B"}, "shortcut B differs from the trained net's A "
     "(the copied blocks would compute another function)"),
])
def test_grow_refusals(small: str, big: str, kw: dict, reason: str) -> None:
    with torch.device("meta"):  # refusals look only at the structure
        model = create_model(small)
    with pytest.raises(UserError, match=re.escape(f"cannot grow {small} into {big}: {reason}")):
        grow(model, big, **kw)


def test_grow_cli_writes_a_loadable_checkpoint(resnet20_ckpt: Path, tmp_path: Path,
                                               capsys: pytest.CaptureFixture) -> None:
    out = tmp_path / "r44.safetensors"
    assert main(["grow", str(resnet20_ckpt), "--to", "resnet44", "--out", str(out),
                 "--json"]) == 0
    summary = json.loads(capsys.readouterr().out)
    assert summary["copied_blocks"] == 9 and summary["added_blocks"] == 12
    assert summary["max_abs_logit_diff"] <= 1e-5
    grown, meta = load_checkpoint(out)
    small, _ = load_checkpoint(resnet20_ckpt)
    assert meta.architecture == "resnet44" and len(grown.blocks()) == 21
    assert list(meta.class_names) == META["class_names"]
    pre = meta.preprocess
    assert (list(pre.mean), list(pre.std), list(pre.input_size)) == \
        (META["mean"], META["std"], META["input_size"])
    # `reslab train --weights CKPT2` initialises through weights.layouts.init_weights: same function.
    from reslab.weights.layouts import init_weights

    fresh = create_model("resnet44", num_classes=4)
    init_weights(fresh, str(out))
    x = torch.randn(3, 3, 16, 16)
    with torch.no_grad():
        torch.testing.assert_close(grown(x), small(x), atol=1e-5, rtol=0)
        torch.testing.assert_close(fresh.eval()(x), small(x), atol=1e-5, rtol=0)


def test_grow_is_seeded(resnet20_ckpt: Path, tmp_path: Path) -> None:
    """The added blocks' He-initialised layers are drawn from --seed (default 0): the same
    command writes the same tensors and record (not the same bytes: safetensors writes its
    metadata keys in a per-process hash order); another seed, other draws."""
    outs = [tmp_path / f"{name}.safetensors" for name in ("a", "b", "c")]
    for out, extra in zip(outs, ([], [], ["--seed", "1"])):
        torch.manual_seed(len(extra) + hash(out.name) % 1000)  # the global RNG must not matter
        assert main(["grow", str(resnet20_ckpt), "--to", "resnet32", "--out", str(out),
                     *extra]) == 0
    a, b, c = (load_checkpoint(out)[0].state_dict() for out in outs)
    added = "layer1.4.conv1.weight"  # resnet20 has 3 blocks per stage; resnet32 adds 4.3, 4.4
    assert all(torch.equal(a[k], b[k]) for k in a) and a.keys() == b.keys()
    assert load_checkpoint(outs[0])[1] == load_checkpoint(outs[1])[1]
    assert load_checkpoint(outs[2])[1].extra["grown_from"]["seed"] == 1
    assert not torch.equal(a[added], c[added])
    assert all(torch.equal(a[k], c[k]) for k in a if not k.startswith(("layer1.3", "layer1.4",
               "layer2.3", "layer2.4", "layer3.3", "layer3.4")))


def test_grow_cli_refusal_exits_2(resnet20_ckpt: Path, tmp_path: Path,
                                  capsys: pytest.CaptureFixture) -> None:
    out = tmp_path / "x.safetensors"
    assert main(["grow", str(resnet20_ckpt), "--to", "resnet50", "--out", str(out)]) == 2
    err = capsys.readouterr().err
    assert err.startswith("error: cannot grow resnet20 into resnet50: different families")
    assert err.count("\n") == 1 and not out.exists()
    assert main(["grow", str(resnet20_ckpt), "--to", "resnet32", "--out", str(out),
                 "--seed", "-1"]) == 2
    err = capsys.readouterr().err
    assert err.startswith("error: invalid --seed -1: must be between 0 and") and err.count("\n") == 1 and not out.exists()


# --- layer responses: Fig. 7 --------------------------------------------------------------

@pytest.mark.parametrize("name, count", [("resnet20", 19), ("plain20", 19), ("resnet56", 55),
                                         ("resnet18", 16), ("resnet50", 16)])
def test_one_response_per_3x3_layer(name: str, count: int) -> None:
    with torch.device("meta"):
        assert len(response_layers(create_model(name))) == count


def test_responses_are_the_pooled_std_of_each_bn_output() -> None:
    torch.manual_seed(0)
    model = randomize_bn(create_model("resnet20"))
    batches = [torch.randn(3, 3, 16, 16), (torch.randn(5, 3, 16, 16), torch.zeros(5))]
    stds = layer_responses(model, batches)
    assert len(stds) == 19 and all(s > 0 for s in stds)
    # Block layer1.1's second layer: its response is the residual branch F(x).
    with torch.no_grad():
        branch = torch.cat([model.forward_intermediates(b if torch.is_tensor(b) else b[0])
                            .residuals["layer1.1"] for b in batches])
    assert stds[4] == pytest.approx(branch.double().std(unbiased=False).item(), rel=1e-6)


def test_response_of_a_zeroed_branch_is_zero() -> None:
    torch.manual_seed(0)
    deeper = grow(randomize_bn(create_model("resnet20")), "resnet32")
    stds = layer_responses(deeper, [torch.randn(4, 3, 16, 16)])
    # layer1 blocks 3 and 4 were added: their second 3x3 layers are responses 8 and 10.
    layers = response_layers(deeper)
    for block in list(deeper.layer1)[3:]:
        assert stds[layers.index(block.bn2)] == 0.0
    assert stds[layers.index(deeper.layer1[2].bn2)] > 0


# --- degradation: Fig. 6 ------------------------------------------------------------------

DATA = "synthetic:64x3x8x8:4"
BUDGET = ["--data", DATA, "--depths", "20", "--iters", "4", "--batch-size", "16",
          "--device", "cpu", "--workers", "0", "--seed", "0"]


@pytest.fixture(scope="module")
def sweep(tmp_path_factory: pytest.TempPathFactory) -> Path:
    out = tmp_path_factory.mktemp("sweep") / "deg"
    assert main(["degradation", *BUDGET, "--out", str(out), "--quiet"]) == 0
    return out


def check_schema(result: dict) -> None:
    """degradation.json as reslab.analysis.degradation documents it."""
    assert result["dataset"] == DATA and isinstance(result["recipe"], dict)
    assert [r["model"] for r in result["runs"]] == ["plain20", "resnet20"]
    for run in result["runs"]:
        assert set(run) == {"model", "run", "seed", "depth", "residual", "iterations",
                            "train_seconds", "final_train_error", "final_test_error", "curve",
                            "steps_per_epoch"}
        assert run["depth"] == 20 and run["residual"] == run["model"].startswith("resnet")
        assert 0 <= run["final_train_error"] <= 1 and 0 <= run["final_test_error"] <= 1
        assert run["curve"] and all(set(p) == {"step", "train_error", "test_error"}
                                    and 0 <= p["train_error"] <= 1 and 0 <= p["test_error"] <= 1
                                    for p in run["curve"])
        assert run["curve"][-1]["step"] == 4


def test_degradation_writes_json_png_and_run_reports(sweep: Path) -> None:
    check_schema(json.loads((sweep / "degradation.json").read_text()))
    assert (sweep / "degradation.png").read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    for model in ("plain20", "resnet20"):  # the engine's write_run_report ran at each run end
        assert (sweep / model / "report.md").is_file() and (sweep / model / "curves.png").is_file()


def test_degradation_rerun_skips_finished_runs(sweep: Path, capsys: pytest.CaptureFixture) -> None:
    weights = {m: (sweep / m / "model.safetensors").stat().st_mtime_ns
               for m in ("plain20", "resnet20")}
    assert main(["degradation", *BUDGET, "--out", str(sweep), "--json"]) == 0
    captured = capsys.readouterr()
    result = json.loads(captured.out)
    check_schema(result)
    assert result == json.loads((sweep / "degradation.json").read_text())
    assert f"plain20: finished in {sweep / 'plain20'}, skipped" in captured.err
    assert "resnet20: finished" in captured.err and "training into" not in captured.err
    assert weights == {m: (sweep / m / "model.safetensors").stat().st_mtime_ns for m in weights}


def test_degradation_resumes_an_interrupted_run(sweep: Path, tmp_path: Path,
                                                capsys: pytest.CaptureFixture) -> None:
    out = tmp_path / "deg"
    shutil.copytree(sweep, out)
    (out / "resnet20" / "model.safetensors").unlink()  # killed after its last saved state
    assert main(["degradation", *BUDGET, "--out", str(out)]) == 0
    err = capsys.readouterr().err
    assert "resnet20: resuming the interrupted run" in err and "plain20: finished" in err
    assert (out / "resnet20" / "model.safetensors").is_file()


def test_degradation_never_overwrites_another_config(sweep: Path,
                                                     capsys: pytest.CaptureFixture) -> None:
    assert main(["degradation", *BUDGET, "--lr", "0.05", "--out", str(sweep)]) == 2
    err = capsys.readouterr().err
    assert err.startswith(f"error: {sweep / 'plain20'} holds a run with another config "
                          "(lr 0.1 != 0.05); use another --out or remove it")


def test_degradation_rejects_non_cifar_depths(tmp_path: Path,
                                              capsys: pytest.CaptureFixture) -> None:
    assert main(["degradation", "--data", DATA, "--depths", "20", "18", "--out",
                 str(tmp_path / "d")]) == 2
    assert capsys.readouterr().err == ("error: depth 18 is not a CIFAR-family depth 6n+2 "
                                       "(choices: 8, 14, 20, 32, 44, 56, 110, 1202)\n")
    assert not (tmp_path / "d").exists()


# --- responses CLI and reports ------------------------------------------------------------

def test_responses_cli_json_figure_and_run_files(sweep: Path, tmp_path: Path,
                                                capsys: pytest.CaptureFixture) -> None:
    runs = [tmp_path / m for m in ("plain20", "resnet20")]
    for run in runs:
        shutil.copytree(sweep / run.name, run)
    png = tmp_path / "fig7.png"
    assert main(["responses", *map(str, runs), "--data", DATA, "--max-images", "8",
                 "--out", str(png), "--json"]) == 0
    result = json.loads(capsys.readouterr().out)
    assert list(result) == ["plain20", "resnet20"]
    assert all(len(v) == 19 and all(s > 0 for s in v) for v in result.values())
    assert png.read_bytes()[:4] == b"\x89PNG"
    assert json.loads((runs[1] / "responses.json").read_text()) == {"resnet20": result["resnet20"]}
    # Two checkpoints of one architecture are told apart by their run names.
    assert main(["responses", str(runs[0]), str(runs[0] / "model.safetensors"), "--data", DATA,
                 "--max-images", "4", "--json"]) == 0
    assert list(json.loads(capsys.readouterr().out)) == ["plain20", "plain20-2"]


def test_report_cli_writes_markdown_and_self_contained_html(sweep: Path, tmp_path: Path,
                                                           capsys: pytest.CaptureFixture) -> None:
    out = tmp_path / "rep" / "all.html"
    assert main(["report", str(sweep), str(sweep / "plain20"), str(sweep / "resnet20"),
                 "--out", str(out)]) == 0
    md = out.with_suffix(".md")
    assert capsys.readouterr().out == f"wrote {md} and {out}\n"
    text = md.read_text()
    assert "Degradation: plain vs ResNet (Fig. 6)" in text and "| plain20 | 0 | 20 |" in text
    for link in re.findall(r"!\[[^]]*\]\(([^)]+)\)", text):  # relative links that resolve
        assert (md.parent / link).is_file()
    page = out.read_text()
    assert page.count("data:image/png;base64,") == 3 and "<table>" in page
    assert not re.search(r'src="(?!data:)', page)


def write_run(run: Path, model: str, data: str, test_top1: float) -> None:
    run.mkdir(parents=True)
    (run / "config.toml").write_text(f'model = "{model}"\ndata = "{data}"\nlr = 0.1\n')
    rows = [{"step": 20, "epoch": 0.5, "loss": 2.0, "lr": 0.1, "img_s": 100.0},
            {"step": 40, "epoch": 1.0, "split": "train", "top1": 0.5, "top5": 0.9, "loss": 1.5},
            {"step": 40, "epoch": 1.0, "split": "test", "top1": 0.6, "top5": 0.95, "loss": 1.2},
            {"step": 40, "epoch": 1.0, "split": "test", "final": True, "top1": test_top1,
             "top5": 0.95, "loss": 1.2, "n": 100}]
    (run / "metrics.jsonl").write_text("".join(json.dumps(r) + "\n" for r in rows))


@pytest.mark.parametrize("model, data, paper", [
    ("resnet56", "cifar10", "| paper Table 6, CIFAR-10 test error | 6.97 |"),
    ("resnet20", "fashion-mnist", "| Fashion-MNIST benchmark, ResNet18 (accuracy 0.949) | 5.10 |"),
    ("resnet20", "digits", None),
])
def test_run_report_puts_the_papers_numbers_beside_ours(tmp_path: Path, model: str, data: str,
                                                        paper: str | None) -> None:
    from reslab.analysis.report import write_run_report

    write_run(tmp_path / "run", model, data, test_top1=0.9)
    write_run_report(tmp_path / "run")
    text = (tmp_path / "run" / "report.md").read_text()
    assert (tmp_path / "run" / "curves.png").is_file() and "![loss and error curves](curves.png)" in text
    assert "| test | 90.00 | 10.00 | 5.00 | 1.2000 | 100 |" in text  # the final test row wins
    if paper:
        assert paper in text and "| this run (test) | 10.00 |" in text
    else:
        assert "paper" not in text


def test_report_of_a_non_run_directory_exits_2(tmp_path: Path,
                                               capsys: pytest.CaptureFixture) -> None:
    assert main(["report", str(tmp_path)]) == 2
    assert "is not a run directory" in capsys.readouterr().err


def test_degradation_trains_members_in_parallel_as_sequentially(
        sweep: Path, tmp_path: Path, capsys: pytest.CaptureFixture) -> None:
    """--jobs 2: the members in two processes give the same numbers as one after another
    (deterministic recipe), a finished member is skipped and a dead one started afresh."""
    out = tmp_path / "deg"
    assert main(["degradation", *BUDGET, "--deterministic", "--jobs", "2", "--out",
                 str(out)]) == 0
    err = capsys.readouterr().err
    assert "plain20: training into" in err and "(1 thread)" in err
    seq = tmp_path / "seq"
    assert main(["degradation", *BUDGET, "--deterministic", "--out", str(seq), "--quiet"]) == 0
    par, one = (json.loads((d / "degradation.json").read_text()) for d in (out, seq))
    assert [r["final_train_error"] for r in par["runs"]] == \
        [r["final_train_error"] for r in one["runs"]]
    (out / "plain20" / "model.safetensors").unlink()
    shutil.rmtree(out / "plain20" / "state")  # died before its first state
    assert main(["degradation", *BUDGET, "--deterministic", "--jobs", "2", "--out",
                 str(out)]) == 0
    err = capsys.readouterr().err
    assert f"resnet20: finished in {out / 'resnet20'}, skipped" in err
    assert "plain20: training into" in err and (out / "plain20" / "model.safetensors").is_file()


def test_degradation_repeats_seeds_and_reports_their_spread(sweep: Path, tmp_path: Path,
                                                            capsys: pytest.CaptureFixture) -> None:
    """--seeds 0 1 2: the seed-0 runs already in DIR are reused, seeds 1 and 2 are added as
    <model>-seed<S>, and degradation.json's spread holds mean/std/min/max over the seeds."""
    out = tmp_path / "deg"
    shutil.copytree(sweep, out)
    assert main(["degradation", *BUDGET, "--seeds", "0", "1", "2", "--out", str(out),
                 "--json"]) == 0
    captured = capsys.readouterr()
    result = json.loads(captured.out)
    assert "plain20: finished" in captured.err  # seed 0 reused
    assert [(r["run"], r["seed"]) for r in result["runs"]] == [
        ("plain20", 0), ("plain20-seed1", 1), ("plain20-seed2", 2),
        ("resnet20", 0), ("resnet20-seed1", 1), ("resnet20-seed2", 2)]
    import statistics

    for model in ("plain20", "resnet20"):
        errs = [r["final_train_error"] for r in result["runs"] if r["model"] == model]
        got = result["spread"][model]
        assert got["seeds"] == [0, 1, 2]
        assert got["final_train_error"]["mean"] == pytest.approx(statistics.fmean(errs))
        assert got["final_train_error"]["std"] == pytest.approx(statistics.stdev(errs))
    assert main(["degradation", *BUDGET, "--depths", "20", "--seeds", "0", "1",
                 "--seeds-depths", "56", "--out", str(tmp_path / "x")]) == 2
    assert "--seeds-depths [56] are not among the sweep's depths [20]" in capsys.readouterr().err


def test_the_papers_claims_are_checked_with_their_numbers() -> None:
    from reslab.analysis.claims import paper_claims
    from reslab.analysis.sweep_result import DegradationResult

    def run(model, depth, res, train, test, seed=0, run=None):
        curve = [{"step": s, "train_error": train + 0.01 * (s < 80), "test_error": test}
                 for s in range(60, 101, 2)]
        return {"model": model, "depth": depth, "residual": res, "final_train_error": train,
                "final_test_error": test, "curve": curve, "seed": seed, "run": run or model,
                "steps_per_epoch": 5}

    result = {"dataset": "d", "recipe": {"milestones": [50, 75]}, "runs": [
        run("plain20", 20, False, 0.10, 0.11), run("plain20", 20, False, 0.11, 0.11, 1,
                                                    "plain20-seed1"),
        run("resnet20", 20, True, 0.08, 0.09), run("resnet20", 20, True, 0.07, 0.09, 1,
                                                    "resnet20-seed1"),
        run("plain56", 56, False, 0.15, 0.16), run("plain56", 56, False, 0.16, 0.16, 1,
                                                    "plain56-seed1"),
        run("resnet56", 56, True, 0.085, 0.085)]}
    claims = {c.text: c for c in paper_claims(DegradationResult.from_json(result, "d.json"),
                                              {"plain20": [[1.0, 1.0], [1.0, 1.1]],
                                               "resnet20": [[0.5, 0.7], [0.5, 0.6]]})}
    degradation = claims["plain-56 has a higher training error than plain-20 (degradation)"]
    assert degradation.verdict == "holds" and degradation.evidence.startswith(
        "plain20 10.50% (mean of 2 seeds, std 0.71%) vs plain56 15.50% (mean of 2 seeds")
    # resnet56 has one seed: its noise is unknown, so the ordering is not judged.
    deeper = claims["resnet56 has a lower training error than resnet20"]
    assert deeper.verdict == "not judged" and "noise unknown" in deeper.evidence
    assert claims["resnet20 has a lower training error than plain20"].verdict == "holds"
    assert claims["resnet20's responses are smaller than plain20's (mean over layers)"
                  ].verdict == "holds"
    # Every member passes the convergence gate, every seed: flat after the lr drop at 75; and
    # so does the mean of the seeds of each side with two (plain20, resnet20, plain56).
    gated = [c for t, c in claims.items() if t.endswith("had converged at its last lr")]
    assert len(gated) == 10 and all(c.verdict == "holds" for c in gated)
    # A seed is held to the default 2 points; the mean of its side's seeds to half the
    # smallest gap it is judged in: resnet20 vs plain20, 3 points.
    assert claims["plain20-seed1's training error had converged at its last lr"].evidence == (
        "plain20-seed1: moved +0.00 points (s.e. 0.00) over steps 81-100 (10 points, 3.8 "
        "epochs); tolerance 2.00 points: flat")
    assert claims["plain20 (mean of 2 runs)'s training error had converged at its last lr"
                  ].evidence == ("plain20 (mean of 2 runs): moved +0.00 points (s.e. 0.00) over "
                                 "steps 81-100 (10 points, 3.8 epochs); tolerance 1.50 points: "
                                 "flat")
    # resnet56 has one seed: it is read alone, at the tolerance of its claims.
    assert "resnet56 (mean" not in " ".join(claims)
    # A member still falling: the orderings it is part of are not judged, with its numbers.
    result["runs"][4]["curve"] = [{"step": s, "train_error": 0.30 - 0.002 * s}
                                  for s in range(60, 101, 2)]
    claims = {c.text: c for c in paper_claims(DegradationResult.from_json(result, "d.json"))}
    degradation = claims["plain-56 has a higher training error than plain-20 (degradation)"]
    assert degradation.verdict == "not judged" and degradation.evidence.startswith(
        "not judged: plain56 had not converged (plain56: moved -3.80 points")
    assert claims["plain56's training error had converged at its last lr"].verdict == \
        "does not hold"


def test_fig6_error_axis_clips_the_first_epochs_like_the_paper() -> None:
    """Both panels share an axis up to 2.5x the largest final error (never above the data),
    so converged gaps of a point are visible under first epochs at 50%."""
    from reslab.analysis.plots import _error_axis_top
    from reslab.analysis.sweep_result import SweepMember

    def run(errors, final):
        return SweepMember.from_json({
            "model": "plain20", "depth": 20, "residual": False,
            "curve": [{"step": i, "train_error": e, "test_error": e} for i, e in
                      enumerate(errors)], "final_train_error": final, "final_test_error": final})

    assert _error_axis_top([run([0.5, 0.1], 0.08), run([0.4, 0.06], 0.05)]) == \
        pytest.approx(20.0 * 1.02)
    assert _error_axis_top([run([0.12, 0.1], 0.1)]) == pytest.approx(12.0 * 1.02)
    assert _error_axis_top([run([0.01], 0.01)]) == pytest.approx(1.0 * 1.02)
    assert _error_axis_top([]) == 100.0

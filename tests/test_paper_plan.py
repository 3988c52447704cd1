"""`reslab paper` made ready for a GPU and for a scheduler, tested on the CPU: `--plan FILE`
(the members' own commands in stages) -> the commands run by hand -> a later call collects the
page without training; `--device cuda --jobs N` (every member process on the one GPU with its
share of the CPUs, refused when CUDA or the CPUs are not there); benchmarks/gpu_paper.py at
tiny sizes."""
from __future__ import annotations

import importlib
import json
import shlex
import subprocess
import sys
import tomllib
from pathlib import Path

import pytest
import torch

from cli_helpers import clean_error, run_cli
from reslab.analysis.paper import plan
from reslab.cli import main

SMOKE = ["paper", "--budget", "smoke", "--device", "cpu"]


def _commands(script: str) -> list[str]:
    return [line for line in script.splitlines()
            if line and not line.startswith("#") and line != "set -e"]


def test_plan_then_the_commands_by_hand_then_a_call_that_only_collects(
        tmp_path: Path, capsys: pytest.CaptureFixture, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.chdir(tmp_path)   # DIR given relative: the plan's paths stay relative
    rc, err = run_cli(capsys, [*SMOKE, "--out", "d", "--plan", "plan.sh"])
    assert rc == 0, err
    script = Path("plan.sh").read_text()
    assert script.startswith("#!/bin/sh\n") and not list(Path("d").glob("runs/*"))
    assert [line for line in script.splitlines() if line.startswith("# stage")] == [
        "# stage 1: 12 commands (sweep, shortcut)",
        "# stage 2: 2 commands (the grow step, continued)",
        "# stage 3: 1 command (grown)"]
    commands = _commands(script)
    members = {m.name: m for m in plan("smoke", device="cpu").members}
    # Each member's own command, its --out the run directory the runner names (recipe digest).
    assert sorted(c for c in commands if c.startswith("reslab train")) == sorted(
        f"reslab train --recipe d/plan/{name}.toml --out {m.run_dir(Path('d'))}"
        for name, m in members.items())
    assert commands[12:] == [
        "reslab paper --budget smoke --out d --only resnet8-s0 --quiet",
        f"reslab train --recipe d/plan/resnet8-continued-s0.toml --out "
        f"{members['resnet8-continued-s0'].run_dir(Path('d'))}",
        f"reslab train --recipe d/plan/resnet14-grown-s0.toml --out "
        f"{members['resnet14-grown-s0'].run_dir(Path('d'))}",
        "reslab paper --budget smoke --out d"]
    grown = tomllib.loads(Path("d/plan/resnet14-grown-s0.toml").read_text())
    assert grown["weights"] == "d/members/grown-resnet14.safetensors" and grown["iters"] == 10
    assert str(tmp_path) not in script + "".join(p.read_text() for p in Path("d/plan").iterdir())

    # Stage 1 by hand: one command through a real process, the others in this one (faster).
    stage1, rest = commands[:12], commands[12:-1]
    first = shlex.split(stage1[0])
    subprocess.run([sys.executable, "-m", "reslab", *first[1:], "--quiet"], check=True)
    for line in stage1[1:]:
        assert main([*shlex.split(line)[1:], "--quiet"]) == 0
    # Planned again halfway: the finished runs are left out, the rest is as before.
    rc, err = run_cli(capsys, [*SMOKE, "--out", "d", "--plan", "again.sh"])
    again = Path("again.sh").read_text()
    assert rc == 0 and _commands(again) == commands[12:]
    assert again.count(", left out\n") == 12
    assert [line for line in again.splitlines() if line.startswith("# stage")] == [
        "# stage 1: 2 commands (the grow step, continued)", "# stage 2: 1 command (grown)"]
    for line in rest:
        assert main([*shlex.split(line)[1:], "--quiet"]) == 0
    weights = {p: p.stat().st_mtime_ns for p in Path("d").glob("runs/*/model.safetensors")}
    assert len(weights) == 14

    # The collecting call trains nothing: every training member is found finished.
    rc, err = run_cli(capsys, shlex.split(commands[-1])[1:])
    assert rc == 0, err
    done = {line.split(": ")[0].split("] ")[1]: line.split(": ")[1].split(" (")[0]
            for line in err if line.startswith("[")}
    assert {done[name] for name in members} == {"skipped"} and done["grow"] == "skipped"
    assert weights == {p: p.stat().st_mtime_ns for p in weights}
    claims = json.loads(Path("d/paper.json").read_text())["sections"]
    assert "Fig. 6" in Path("d/paper.md").read_text() and len(claims) > 5


def test_the_full_plan_in_stages_and_imagenet_runs_under_torchrun(
        tmp_path: Path, capsys: pytest.CaptureFixture) -> None:
    out, file = tmp_path / "full", tmp_path / "full.sh"
    # cuda is named for the runs elsewhere: this machine needs no GPU to write the plan
    rc = main(["paper", "--budget", "full", "--out", str(out), "--plan", str(file),
               "--device", "cuda"])
    listing = capsys.readouterr().out.splitlines()
    assert rc == 0 and listing[0].startswith("budget full on cifar10: 37 training runs;")
    assert listing[-1].startswith(f"wrote {file}: 38 commands in 3 stages; recipes in ")
    script = file.read_text()
    assert [line for line in script.splitlines() if line.startswith("# stage")] == [
        "# stage 1: 35 commands (warmup, sweep, shortcut)",
        "# stage 2: 2 commands (the grow step, continued)",
        "# stage 3: 1 command (grown)"]
    commands = _commands(script)
    assert commands[0].startswith(f"reslab train --recipe {out}/plan/resnet110-s")  # longest
    assert f"--out {out} --only resnet20-s0 --quiet" in commands[35]
    recipe = tomllib.loads((out / "plan" / "resnet110-s4.toml").read_text())
    assert recipe["device"] == "cuda" and recipe["iters"] == 64000 and recipe["amp"] == "off"

    imagenet = ["paper", "--budget", "full", "--data", "imagefolder:/nowhere", "--out",
                str(tmp_path / "in"), "--plan", str(tmp_path / "in.sh")]
    assert main(imagenet) == 0
    commands = _commands((tmp_path / "in.sh").read_text())
    assert len(commands) == 7 and all(
        c.startswith("torchrun --standalone --nproc-per-node 8 -m reslab train --recipe ")
        for c in commands[:6])
    assert main([*imagenet, "--gpus", "4"]) == 0
    assert "--nproc-per-node 4 " in (tmp_path / "in.sh").read_text()
    capsys.readouterr()
    assert clean_error(capsys, [*imagenet, "--gpus", "3"]) == (
        "error: --gpus 3 does not divide the batch of 256 images (torchrun splits the batch "
        "evenly over the GPUs)")
    assert clean_error(capsys, [*SMOKE, "--out", tmp_path / "x", "--gpus", "2"]).startswith(
        "error: --gpus sets the GPUs per run of a --plan")
    smoke = [*SMOKE, "--out", tmp_path / "x", "--plan", tmp_path / "p.sh"]
    assert clean_error(capsys, [*smoke, "--device", "tpu"]) == (
        "error: invalid device 'tpu' (choices: auto, cpu, cuda, cuda:N, mps)")
    assert clean_error(capsys, [*smoke, "--only", "plain8-*"]).startswith(
        "error: --plan writes every member's command")
    assert main([*map(str, smoke), "--lang", "ko"]) == 0   # collected: the Korean page
    assert (tmp_path / "p.sh").read_text().endswith(
        f"\nreslab paper --budget smoke --out {tmp_path / 'x'} --lang ko\n")


@pytest.mark.skipif(torch.cuda.is_available(), reason="tests the refusal without CUDA")
def test_cuda_without_a_gpu_and_more_jobs_than_cpus_are_refused(
        tmp_path: Path, capsys: pytest.CaptureFixture, monkeypatch: pytest.MonkeyPatch) -> None:
    argv = ["paper", "--budget", "smoke", "--out", tmp_path / "x"]
    assert clean_error(capsys, [*argv, "--device", "cuda", "--jobs", "2"]) == \
        "error: device 'cuda' requested but CUDA is not available"
    monkeypatch.setattr("reslab.data.loaders.available_cpus", lambda: 2)
    assert clean_error(capsys, [*argv, "--device", "cpu", "--jobs", "3"]) == (
        "error: --jobs 3 is more than the 2 CPUs this process may use: each member needs one "
        "at least (give --jobs 2 or fewer)")
    assert not (tmp_path / "x" / "runs").exists()


def test_device_cuda_jobs_2_runs_members_side_by_side_on_one_gpu(
        tmp_path: Path, capsys: pytest.CaptureFixture, monkeypatch: pytest.MonkeyPatch) -> None:
    """`--device cuda --jobs 2` on 2 CPUs as far as a machine without a GPU can run it: every
    member process is given device cuda (GPU 0 in each: one GPU) and 1 thread; each is then
    trained on the CPU, two at a time, the grown net after the grow step."""
    from reslab.analysis.paper import runner
    from reslab.engine import setup

    monkeypatch.setattr("reslab.data.loaders.available_cpus", lambda: 2)
    monkeypatch.setattr(setup, "select_device", lambda name="auto", local_rank=0:
                        torch.device("cuda" if name == "cuda" else "cpu"))
    given, real = [], runner.train_in_subprocess

    def on_the_cpu(r, *rest):  # noqa: ANN001, ANN202 (train_in_subprocess's arguments)
        given.append((rest[4], r.device, r.threads))
        return real(r.replace(device="cpu"), *rest)

    monkeypatch.setattr(runner, "train_in_subprocess", on_the_cpu)
    only = ["plain8-s0", "resnet8-s0", "resnet14-grown-s0"]   # two at once, then the grown
    rc, err = run_cli(capsys, ["paper", "--budget", "smoke", "--device", "cuda", "--jobs", "2",
                               "--out", tmp_path / "j", "--only", *only])
    assert rc == 0, err
    assert sorted(given) == [(name, "cuda", 1) for name in sorted(only)]
    progress = [line for line in err if line.startswith("[")]
    assert len(progress) == 3 + 6 and sum(": trained (" in line for line in progress) == 3
    order = [line.split(": ")[0].split("] ")[1] for line in progress]
    assert order.index("grow") > order.index("resnet8-s0")
    assert order.index("resnet14-grown-s0") > order.index("grow")
    assert (tmp_path / "j" / "paper.md").is_file()


def test_gpu_benchmark_runs_end_to_end_at_tiny_sizes(
        tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.syspath_prepend(str(Path(__file__).resolve().parents[1] / "benchmarks"))
    bench = importlib.import_module("gpu_paper")
    out = tmp_path / "gpu.json"
    monkeypatch.setattr(sys, "argv", ["gpu_paper.py", "--tiny", "--device", "cpu",
                                      "--together", "--out", str(out)])
    bench.main()
    r = json.loads(out.read_text())
    assert r["setup"]["device_name"] and r["setup"]["device"] == "cpu"
    assert [(s["model"], s["variant"]) for s in r["results"]["steps"]] == [
        (m, v) for c in (False, True) for m in ("resnet8", "resnet14")
        for v, flags in bench.VARIANTS.items() if flags[2] == c]
    assert all(s["it_s"] > 0 for s in r["results"]["steps"])
    member = r["results"]["member"]
    assert member["iterations_each"] == 20 and member["model"] == "resnet8"
    assert member["note"] == "20 iterations measured; 64k extrapolated, not measured"
    full = r["results"]["full_budget"]
    assert full["runs"] == 37 and full["hours_one_at_a_time"] > 0
    assert full["how"].startswith("extrapolated, not measured")

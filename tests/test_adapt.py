"""First contact: recipes fitted to the data they get, the eval-mode (BN statistics) check, and
intra-op threads chosen from the CPUs that are free."""
from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest

from cli_helpers import run_cli
from reslab.engine.adapt import DataFacts, adapt
from reslab.engine.calibration import BNCheck
from reslab.engine.recipe import load_recipe
from reslab.threads import _Sample, auto_note, free_cpus, free_threads, others_load

sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "examples"))
from make_shapes import make_folder  # noqa: E402


# --- adaptation -----------------------------------------------------------------------------

def test_fast_on_a_small_folder_gets_a_batch_length_and_no_resizing_that_fit() -> None:
    r, notes = adapt(load_recipe("fast"), DataFacts(train_images=270, side=32))
    assert (r.batch_size, r.lr, r.epochs, r.progressive_from) == (32, 0.05, 50.0, None)
    assert (r.augment, r.pad) == ("crop-flip", 2)  # 32 px: mirroring and 2 px shifts suit
    assert notes == [
        "note: recipe fast adapted to the data: batch 32 (recipe 256) and lr 0.05 (recipe 0.4, "
        "scaled with the batch) for 270 training images",
        "note: recipe fast adapted to the data: 50 epochs (recipe 15): 15 epochs of 8 steps "
        "would be 120 optimizer steps, fewer than the 400 a net needs to train and its BN statistics "
        "to settle",
        "note: recipe fast adapted to the data: no progressive resizing: it pays on long runs, "
        "and 400 iterations are fewer than 1,500"]


def test_fast_on_fashion_mnist_is_unchanged() -> None:
    r = load_recipe("fast")
    assert adapt(r, DataFacts(train_images=60_000, side=28)) == (r, [])


def test_finetune_on_8px_digits_neither_mirrors_nor_pads_4px() -> None:
    r, notes = adapt(load_recipe("finetune"), DataFacts(train_images=1437, side=8))
    assert (r.augment, r.pad, r.batch_size, r.epochs) == ("crop", 1, 32, 10.0)
    assert notes[-2:] == [
        "note: recipe finetune adapted to the data: augment crop (recipe crop-flip): 8 px images"
        " are usually glyphs whose mirror image is another class (--augment crop-flip to mirror "
        "anyway)",
        "note: recipe finetune adapted to the data: pad 1 px (recipe 4): at most 1/8 of the "
        "8 px side"]


def test_no_mirror_in_training_means_no_mirror_in_evaluation() -> None:
    """fast on 8 px digits: augment crop and, with it, no test-time flip (issue 28: train
    reported 96.39% with it where eval --flip off gave 98.89%); a given tta_flip is kept."""
    r, notes = adapt(load_recipe("fast", {"data": "digits"}), DataFacts(1437, side=8))
    assert (r.augment, r.tta_flip) == ("crop", False)
    assert ("note: recipe fast adapted to the data: no test-time flip (recipe tta_flip true): "
            "augment crop does not mirror, so the net never saw a mirrored image (--tta-flip "
            "true to average one in anyway)") in notes
    kept, _ = adapt(load_recipe("fast", {"data": "digits", "tta_flip": "true"}), DataFacts(1437, 8))
    assert (kept.augment, kept.tta_flip) == ("crop", True)
    mirrored, _ = adapt(load_recipe("fast", {"augment": "crop-flip"}), DataFacts(1437, 8))
    assert mirrored.tta_flip is True


def test_train_eval_and_predict_agree_on_no_mirror(tmp_path: Path,
                                                   capsys: pytest.CaptureFixture) -> None:
    """The record carries tta_flip false: eval's default is eval --flip off, and so is the test
    top-1 train reports. (--amp off: eval runs fp32, and amp auto would evaluate the run's own
    test pass in bf16 on CPUs that have it, a different rounding of a near-chance net.)"""
    from reslab.cli import main

    out = tmp_path / "run"
    assert main(["train", "--recipe", "fast", "--data", "digits", "--model", "resnet8",
                 "--iters", "3", "--workers", "0", "--device", "cpu", "--out", str(out),
                 "--amp", "off", "--json", "--quiet"]) == 0
    summary = json.loads(capsys.readouterr().out)
    scores = []
    for flip in ([], ["--flip", "off"]):
        assert main(["eval", str(out), "--json", "--device", "cpu", *flip]) == 0
        ev = json.loads(capsys.readouterr().out)
        scores.append((ev["flip"], ev["top1"]))
    assert scores[0] == scores[1] == (False, summary["test"]["top1"])


def test_finetune_without_weights_says_it_trains_from_scratch() -> None:
    from reslab.engine.adapt import from_scratch_note

    line = from_scratch_note(load_recipe("finetune"), 224)
    assert line.startswith("warning: recipe finetune without --weights trains resnet18 from "
                           "scratch, with its small fine-tuning lr, at 224 px")
    assert "--weights torchvision:resnet18" in line and "leave out --recipe" in line
    given = load_recipe("finetune", {"weights": "torchvision:resnet18"})
    assert from_scratch_note(given, 224) is None
    assert from_scratch_note(load_recipe("fast"), 32) is None


def test_fields_the_user_gave_are_kept_and_recorded() -> None:
    r = load_recipe("fast", {"epochs": "20", "batch_size": "32", "augment": None})
    assert r.given == ["batch_size", "epochs"]
    adapted, notes = adapt(r, DataFacts(train_images=270, side=8))
    assert (adapted.batch_size, adapted.epochs, adapted.lr) == (32, 20.0, 0.4)
    assert adapted.augment == "crop" and adapted.progressive_from is None  # not given: fitted
    assert adapted.given == ["batch_size", "epochs"]
    assert adapt(load_recipe("fast", {"augment": "crop-flip", "pad": 4}),
                 DataFacts(1000, 8))[0].pad == 4


def test_the_paper_recipes_do_not_adapt() -> None:
    r = load_recipe("paper-cifar")
    assert not r.adapt and adapt(r, DataFacts(train_images=100, side=8)) == (r, [])


def test_adaptation_is_idempotent_and_resume_keeps_the_stored_recipe() -> None:
    once, _ = adapt(load_recipe("fast"), DataFacts(270, 32))
    assert adapt(once, DataFacts(270, 32)) == (once, [])


# --- the eval-mode check ----------------------------------------------------------------------

def test_bn_check_flags_a_model_at_chance_in_eval_mode_only() -> None:
    assert BNCheck(0.85, 0.33, 270, 1 / 3).broken
    assert not BNCheck(0.85, 0.80, 270, 1 / 3).broken   # ordinary augmentation gap
    assert not BNCheck(0.40, 0.10, 270, 1 / 3).broken   # not trained yet: nothing to say


@pytest.fixture(scope="module")
def shapes(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return make_folder(tmp_path_factory.mktemp("adapt") / "shapes", per_class=12)


def test_eval_mode_collapse_is_caught_and_bn_recalibrate_fixes_it(
        shapes: Path, tmp_path: Path, capsys: pytest.CaptureFixture) -> None:
    """The fast recipe as it was (no adaptation, ReLU, SGD at lr 0.2): 9 steps of batch 32 on 32 images; train-mode
    accuracy 87.5%, eval mode near chance. The check says so; recalibrating BN recovers it."""
    argv = ["train", "--model", "resnet8", "--data", f"imagefolder:{shapes}", "--image-size",
            "16", "--workers", "0", "--device", "cpu", "--adapt", "false", "--epochs", "9",
            "--label-smoothing", "0.1", "--activation", "relu", "--optimizer", "sgd", "--lr", "0.2",
            "--json", "--out"]
    rc, err = run_cli(capsys, [*argv, tmp_path / "a"])
    summary = json.loads((tmp_path / "a" / "summary.json").read_text())
    assert rc == 0 and summary["steps"] == 9
    warning = [line for line in err if line.startswith("warning: in eval mode")]
    assert warning == [
        f"warning: in eval mode the model scores {summary['train_eval']['top1']:.1%} on 32 of "
        f"its own training images against {summary['train']['top1']:.1%} in training: its BN "
        "running statistics do not match its weights (too few iterations for them to settle, "
        "or training images of another size); rerun with --bn-recalibrate (recomputes the BN "
        "statistics after training), or train longer (--epochs)"]
    assert summary["train"]["top1"] - summary["train_eval"]["top1"] > 0.2
    rc, err = run_cli(capsys, [*argv, tmp_path / "b", "--bn-recalibrate"])
    fixed = json.loads((tmp_path / "b" / "summary.json").read_text())
    assert rc == 0 and "BN running statistics recomputed on 32 training images" in err
    assert not [line for line in err if line.startswith("warning: in eval mode")]
    assert fixed["train_eval"]["top1"] >= summary["train"]["top1"] - 0.1


def test_the_default_command_on_a_tiny_set_ends_well_above_chance(
        tmp_path: Path, capsys: pytest.CaptureFixture) -> None:
    rc, err = run_cli(capsys, ["train", "--model", "resnet8", "--data", "synthetic:48x1x8x8:3",
                               "--device", "cpu", "--out", tmp_path / "r"])
    summary = json.loads((tmp_path / "r" / "summary.json").read_text())
    assert rc == 0 and summary["steps"] >= 400, err
    assert summary["test"]["top1"] >= 0.9 and summary["train_eval"]["top1"] >= 0.9
    assert not [line for line in err if line.startswith("warning:")]


# --- threads ----------------------------------------------------------------------------------

def test_free_threads_leaves_the_cpus_others_use() -> None:
    assert free_threads(0.1, 2) == 2
    assert free_threads(0.5, 2) == 1    # half a CPU taken: a thread there stalls every op
    assert free_threads(1.0, 2) == 1
    assert free_threads(3.5, 2) == 1    # never fewer than one
    assert free_threads(1.0, 8) == 7
    assert [free_cpus(3.5, 2), free_cpus(1.0, 2), free_cpus(0.1, 2)] == [0, 1, 2]
    # the note says how many CPUs are free, and when the thread is only the floor
    assert auto_note(1, 0, 2) == "1 thread (auto: 0 of 2 CPUs free; at least 1)"
    assert auto_note(1, 1, 2) == "1 thread (auto: 1 of 2 CPUs free)"
    assert auto_note(4, 4, 4) == "4 threads (auto: 4 of 4 CPUs free)"
    # others = all the busy time minus this process's own
    assert others_load(_Sample(10.0, 1.0, 100.0), _Sample(13.0, 2.0, 101.0)) == 2.0


# The three starts in one process (each torch import on the busy CPUs costs seconds): a start
# is the thread count torch begins with and the OMP_NUM_THREADS the governor reads.
CHOOSE = ("import os, torch; os.sched_setaffinity(0, {cpus})\n"
          "from reslab.threads import ThreadGovernor\n"
          "for n, omp in ((2, ''), (2, '2'), (1, '')):\n"
          "    os.environ['OMP_NUM_THREADS'] = omp\n"
          "    torch.set_num_threads(n)\n"
          "    g = ThreadGovernor()\n"
          "    print(torch.get_num_threads(), g.describe())")


@pytest.mark.skipif(not hasattr(os, "sched_getaffinity") or len(os.sched_getaffinity(0)) < 2
                    or not Path("/proc/stat").exists(), reason="needs 2 CPUs and /proc/stat")
def test_on_a_busy_machine_the_default_is_one_thread_and_an_explicit_count_is_kept() -> None:
    cpus = sorted(os.sched_getaffinity(0))[:2]
    spin = [subprocess.Popen([sys.executable, "-c", f"import os; os.sched_setaffinity(0, {{{c}}})"
                              "\nwhile True: pass"]) for c in cpus]
    try:
        chosen = subprocess.run([sys.executable, "-c", CHOOSE.format(cpus=set(cpus))],
                                capture_output=True, text=True, check=True).stdout
        assert chosen.splitlines() == [
            "1 1 thread (auto: 0 of 2 CPUs free; at least 1)",
            "2 2 threads",   # the user's choice (OMP_NUM_THREADS=2)
            "1 1 thread"]    # set in the process
    finally:
        for p in spin:
            p.kill()
            p.wait()


def test_weights_statistics_of_one_channel_are_named_in_the_singular() -> None:
    from reslab.data.loaders import _stats_for
    from reslab.data.normalize import Stats
    from reslab.errors import UserError

    with pytest.raises(UserError) as caught:
        _stats_for(Stats([0.5], [0.2]), 3, "imagefolder:photos")
    assert str(caught.value) == ("imagefolder:photos has 3-channel images but the weights' "
                                 "statistics are for 1 channel")


def test_a_recipe_file_with_a_given_of_the_wrong_type_is_one_clear_error(tmp_path: Path) -> None:
    from reslab.errors import UserError

    (tmp_path / "r.toml").write_text("given = false\n")
    with pytest.raises(UserError,
                       match=r"^invalid value for given: False \(names, comma-separated\)$"):
        load_recipe(str(tmp_path / "r.toml"))
    (tmp_path / "r.toml").write_text('given = ["epochs", "nope"]\n')
    with pytest.raises(UserError, match="unknown recipe field in given 'nope'"):
        load_recipe(str(tmp_path / "r.toml"))


def test_deterministic_says_why_it_fixes_the_thread_count() -> None:
    import torch

    from reslab.threads import ThreadGovernor

    before = torch.get_num_threads()
    try:
        g = ThreadGovernor(0, deterministic=True)
        assert not g.active and g.describe().endswith(
            "fixed by --deterministic (a count that followed the load would change the order "
            "of the kernels' sums between reruns)")
        assert ThreadGovernor(1).describe() == "1 thread"
    finally:
        torch.set_num_threads(before)

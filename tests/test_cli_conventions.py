"""The command line a new user meets (docs/guides/cli.md): help that shows the defaults in force
and where they come from, no abbreviations, errors that name the subcommand and suggest a flag,
quiet closed pipes, a fast `--help`, plural forms, announced outputs, readable figures, and the
fine-tuning, --freeze-epochs, top-5 and 10-crop notes."""
from __future__ import annotations

import argparse
import os
import subprocess
import sys
import time
from pathlib import Path

import pytest

from cli_helpers import clean_error, run_cli
from reslab.cli import build_parser, main

SRC = str(Path(__file__).resolve().parent.parent / "src")
CPU = ["--device", "cpu", "--amp", "off", "--channels-last", "false", "--workers", "0",
       "--threads", "1"]
# 3 classes of 8x8 images; trained without flips (augment crop), so a 10-crop test mirrors
# images the net never saw mirrored.
TINY_DATA = "synthetic:48x3x8x8:3"


def _env() -> dict[str, str]:
    return {**os.environ, "PYTHONPATH": SRC + os.pathsep + os.environ.get("PYTHONPATH", ""),
            "OMP_NUM_THREADS": "1", "COLUMNS": "200"}


def _reslab(*args: str) -> list[str]:
    return [sys.executable, "-m", "reslab", *args]


def _help(capsys, monkeypatch, argv: list[str]) -> str:
    monkeypatch.setenv("COLUMNS", "400")  # one line per flag: the assertions read whole helps
    with pytest.raises(SystemExit) as e:
        main(argv)
    assert e.value.code == 0
    return capsys.readouterr().out


def _flag_line(text: str, flag: str) -> str:
    """A flag's entry in a help text, as one line (a long flag's help starts below it)."""
    lines = text.splitlines()
    i = next(i for i, line in enumerate(lines) if line.strip().startswith(flag + " "))
    entry = [lines[i]]
    for line in lines[i + 1:]:
        if not line.startswith("   ") or line.lstrip().startswith("-"):
            break
        entry.append(line.strip())
    return " ".join(entry)


@pytest.fixture(scope="module")
def tiny_run(tmp_path_factory) -> Path:
    """resnet20 (ReLU), shortcut B, on 3 classes of 8x8 images, 2 iterations, trained without
    flips."""
    out = tmp_path_factory.mktemp("tiny") / "run"
    assert main(["train", "--model", "resnet20", "--shortcut", "B", "--data", TINY_DATA,
                 "--iters", "2", "--batch-size", "16", "--augment", "crop", "--pad", "1",
                 "--tta-flip", "false", "--activation", "relu", *CPU, "--out", str(out),
                 "--quiet"]) == 0
    return out


# --- help --------------------------------------------------------------------------------

def test_help_shows_the_default_of_the_recipe_in_use(capsys, monkeypatch):
    text = _help(capsys, monkeypatch, ["train", "--recipe", "fast", "--help"])
    assert _flag_line(text, "--epochs").endswith("(default 15 from recipe fast)")
    assert _flag_line(text, "--model").endswith("(default resnet9p from recipe fast)")
    # a field the recipe file leaves alone: the built-in default
    assert _flag_line(text, "--seed").endswith("(default 0, built in)")
    # without --recipe: the recipe the command would use
    demo = _help(capsys, monkeypatch, ["train", "--help"])
    assert _flag_line(demo, "--epochs").endswith("(default 15 from recipe demo)")
    fast = _help(capsys, monkeypatch, ["train", "--data", "digits", "--help"])
    assert _flag_line(fast, "--epochs").endswith("(default 15 from recipe fast)")
    # --help before the flags it depends on, and the = form
    late = _help(capsys, monkeypatch, ["train", "--help", "--recipe=paper-cifar"])
    assert _flag_line(late, "--iters").endswith("(default 64000 from recipe paper-cifar)")
    sweep = _help(capsys, monkeypatch, ["degradation", "--help"])
    assert _flag_line(sweep, "--milestones").endswith(
        "(default 32000,48000 from recipe paper-cifar)")


def test_help_of_a_recipe_that_does_not_load_shows_the_built_in_defaults(capsys, monkeypatch):
    text = _help(capsys, monkeypatch, ["train", "--recipe", "nosuch", "--help"])
    assert _flag_line(text, "--epochs").endswith("(default 1.0, built in)")


def _all_parsers(parser: argparse.ArgumentParser):
    yield parser
    for action in parser._actions:
        if isinstance(action, argparse._SubParsersAction):
            for sub in action.choices.values():
                yield from _all_parsers(sub)


def test_every_flag_of_every_subcommand_has_help_and_no_abbreviations():
    parsers = list(_all_parsers(build_parser()))
    assert len(parsers) > 10
    missing = [f"{p.prog} {'/'.join(a.option_strings) or a.dest}" for p in parsers
               for a in p._actions if not a.help or a.help == argparse.SUPPRESS]
    assert missing == []
    assert [p.prog for p in parsers if p.allow_abbrev] == []


def test_the_shared_flags_are_defined_once_in_cli_common():
    """--json, --out, --device, --batch-size, --flip, --data and --threads come from the helpers
    of reslab.cli.common (which tag their actions) in every subcommand, never from a copy."""
    import re

    from reslab.cli.common import SHARED_FLAGS, SHARED_TAG

    shared = [(p.prog, flag, getattr(a, SHARED_TAG, False)) for p in _all_parsers(build_parser())
              for a in p._actions for flag in a.option_strings if flag in SHARED_FLAGS]
    assert len(shared) > 40 and {flag for _, flag, _ in shared} == set(SHARED_FLAGS)
    assert [f"{prog} {flag}" for prog, flag, tagged in shared if not tagged] == []
    cli = Path(SRC) / "reslab" / "cli"
    spelled = re.compile(r"""add_argument\(\s*["'](%s)["']""" % "|".join(SHARED_FLAGS))
    copies = [f"{f.name}: {m.group(1)}" for f in sorted(cli.glob("*.py")) if f.name != "common.py"
              for m in spelled.finditer(f.read_text())]
    assert copies == []


# --- usage errors ------------------------------------------------------------------------

def test_no_abbreviations_and_errors_name_the_subcommand_and_the_closest_flag(capsys):
    assert clean_error(capsys, ["train", "--epoch", "2"]) == \
        "error: reslab train: unrecognized arguments: --epoch 2 (did you mean --epochs?)"
    assert clean_error(capsys, ["eval", "run", "--crop=10"]) == \
        "error: reslab eval: unrecognized arguments: --crop=10 (did you mean --crops?)"
    assert clean_error(capsys, ["models", "--zzz"]) == \
        "error: reslab models: unrecognized arguments: --zzz"
    # an abbreviation names the flags it begins (difflib alone would pick --help for --ep)
    assert clean_error(capsys, ["train", "--ep", "1"]) == \
        "error: reslab train: unrecognized arguments: --ep 1 (did you mean --epochs?)"
    assert clean_error(capsys, ["eval", "run", "--to", "3"]) == \
        "error: reslab eval: unrecognized arguments: --to 3 (did you mean --top-losses?)"
    # other tools' names for reslab's flags (Keras, PyTorch examples, timm, YOLO)
    assert clean_error(capsys, ["train", "--learning-rate", "0.1"]) == \
        "error: reslab train: unrecognized arguments: --learning-rate 0.1 (did you mean --lr?)"
    assert clean_error(capsys, ["train", "--imgsz=64", "--num-epochs", "3"]) == (
        "error: reslab train: unrecognized arguments: --imgsz=64 --num-epochs 3 (did you mean "
        "--image-size, --epochs?)")
    assert clean_error(capsys, ["trian"]).startswith(
        "error: reslab: argument COMMAND: invalid choice: 'trian' (did you mean train?")
    assert clean_error(capsys, ["eval", "run", "--split", "tset"]) == (
        "error: reslab eval: argument --split: invalid choice: 'tset' (did you mean test? "
        "choose from 'test', 'val', 'train')")


def test_the_parsers_torch_free_choices_are_the_implementations():
    from reslab.analysis.paper.budgets import BUDGETS
    from reslab.choices import PAPER_BUDGETS, RUNTIMES
    from reslab.deploy.runtime import RUNTIMES as IMPLEMENTED

    assert tuple(BUDGETS) == PAPER_BUDGETS and RUNTIMES == IMPLEMENTED


def test_help_and_usage_errors_do_not_import_torch_and_take_well_under_a_second():
    probe = ("import sys\n"
             "from reslab.cli import build_parser, main\n"
             "for argv in (['--help'], ['train', '--recipe', 'fast', '--help'], ['lr-find', "
             "'--help'], ['degradation', '--help'], ['train', '--epoch', '2'], ['export']):\n"
             "    try:\n"
             "        main(argv)\n"
             "    except SystemExit:\n"
             "        pass\n"
             "print(sorted(m for m in sys.modules if m == 'torch' or m.startswith('torch.')"
             " or m in ('numpy', 'matplotlib')))\n")
    done = subprocess.run([sys.executable, "-c", probe], env=_env(), capture_output=True,
                          text=True, timeout=120)
    assert done.returncode == 0, done.stderr
    assert done.stdout.strip().splitlines()[-1] == "[]"
    best = 10.0
    for _ in range(3):  # the best of three: a shared machine
        t0 = time.perf_counter()
        done = subprocess.run(_reslab("--help"), env=_env(), capture_output=True, timeout=60)
        best = min(best, time.perf_counter() - t0)
        assert done.returncode == 0
    assert best < 1.0, f"reslab --help took {best:.2f} s"


# --- closed pipes ------------------------------------------------------------------------

def test_a_pipe_closed_while_a_command_prints_ends_it_quietly(monkeypatch, capsys):
    """A table longer than stdout's buffer breaks the pipe inside the command (`reslab models
    | head -1` did: a BrokenPipeError traceback)."""
    import reslab.cli.models as models

    def long_table(args):
        raise BrokenPipeError(32, "Broken pipe")

    monkeypatch.setattr(models, "run", long_table)  # add_parser sets func=run at parse time
    assert main(["models"]) == 141
    assert capsys.readouterr().err == ""


def test_eval_into_a_closed_pipe(tiny_run):
    """The result is written when Python flushes stdout, after the command returned."""
    proc = subprocess.Popen(_reslab("eval", str(tiny_run), "--device", "cpu"), env=_env(),
                            stdout=subprocess.PIPE, stderr=subprocess.PIPE)
    proc.stdout.close()
    err = proc.stderr.read().decode()
    assert proc.wait(timeout=120) == 141 and "Traceback" not in err and "Exception" not in err


# --- plurals, notes, outputs -------------------------------------------------------------

def test_plural():
    from reslab.text import plural

    assert [plural(n, "iteration") for n in (0, 1, 2, 1200)] == \
        ["0 iterations", "1 iteration", "2 iterations", "1,200 iterations"]
    assert plural(1.0, "epoch", fmt=".3g") == "1 epoch" and plural(1.5, "epoch", fmt=".3g") == \
        "1.5 epochs"
    assert plural(1, "class", "classes") == "1 class" and plural(3, "class") == "3 classes"


def test_one_iteration_of_one_epoch_in_singular(tmp_path, capsys):
    rc, err = run_cli(capsys, ["train", "--model", "resnet20", "--data", "synthetic:40x3x8x8:2",
                               "--iters", "1", "--batch-size", "32", *CPU,
                               "--out", tmp_path / "run"])
    assert rc == 0
    start = next(line for line in err if line.startswith("training resnet20"))
    assert "2 classes" in start and "batch 32, 1 iteration (1 epoch);" in start
    assert "1 thread," in start
    assert any(line.startswith("done: 1 iteration in ") for line in err)


def test_freeze_epochs_says_when_the_head_only_phase_starts_and_ends(tmp_path, capsys):
    rc, err = run_cli(capsys, ["train", "--model", "resnet20", "--data", "synthetic:64x3x8x8:2",
                               "--epochs", "2", "--freeze-epochs", "1", "--batch-size", "32",
                               *CPU, "--out", tmp_path / "run"])
    assert rc == 0
    assert "note: head-only phase: iterations 1-2 (1 epoch) train only the classifier (fc)" \
        in err
    assert "note: head-only phase over after iteration 2: training every layer" in err


def test_eval_text_has_no_top5_for_3_classes_and_announces_the_confusion_png(tiny_run, tmp_path,
                                                                            capsys):
    png = tmp_path / "cm.png"
    assert main(["eval", str(tiny_run), "--device", "cpu", "--confusion", str(png)]) == 0
    out = capsys.readouterr().out.splitlines()
    assert "top1 " in out[0] and "top5" not in out[0] and "loss " in out[0]
    assert out[-1] == f"wrote {png}" and png.stat().st_size > 1000


def test_ten_crops_warn_when_the_run_was_trained_without_flips(tiny_run, capsys):
    assert main(["eval", str(tiny_run), "--device", "cpu", "--crops", "10"]) == 0
    out, err = capsys.readouterr()
    assert err.splitlines() == [
        "warning: --crops 10 also scores mirrored views, but this run was trained without "
        "flips (augment crop): mirrored images may score lower; --crops 1 --flip off scores "
        "the images as trained"]
    assert "10-crop with mirrored views" in out


def _capture_figure(monkeypatch):
    import reslab.analysis.plots as plots

    figures = []
    monkeypatch.setattr(plots, "_save", lambda fig, path: figures.append(fig) or Path(path))
    return figures


def _inside(fig) -> bool:
    """Every text of the drawn figure lies inside the figure's canvas."""
    from matplotlib.backends.backend_agg import FigureCanvasAgg

    FigureCanvasAgg(fig).draw()
    renderer, box = fig.canvas.get_renderer(), fig.bbox
    texts = [t for t in fig.findobj(lambda a: hasattr(a, "get_text")) if t.get_text()
             and t.get_visible()]
    return all(box.x0 - 1 <= b.x0 and b.x1 <= box.x1 + 1 and box.y0 - 1 <= b.y0
               and b.y1 <= box.y1 + 1 for b in (t.get_window_extent(renderer) for t in texts))


def test_confusion_title_is_not_cut_off(monkeypatch, tmp_path):
    from reslab.analysis.plots import plot_confusion

    figures = _capture_figure(monkeypatch)
    plot_confusion([[3, 1, 0], [0, 4, 0], [1, 0, 5]], ["a", "b", "c"], tmp_path / "cm.png",
                   title="runs/my-first-image-folder-run on imagefolder:/home/me/photos test "
                         "(top-1 85.71%)")
    assert _inside(figures[0])


# --- fine-tuning from a run --------------------------------------------------------------

def test_finetune_takes_the_architecture_from_the_runs_record(tiny_run, tmp_path, capsys):
    out = tmp_path / "ft"
    rc, err = run_cli(capsys, ["train", "--recipe", "finetune", "--weights", tiny_run,
                               "--data", TINY_DATA, "--iters", "1", "--batch-size", "16",
                               *CPU, "--out", out])
    assert rc == 0, err
    assert f"note: --weights {tiny_run} holds a resnet20 (shortcut B): training that " \
           "architecture (--model chooses another)" in err
    config = (out / "config.toml").read_text()
    assert 'model = "resnet20"' in config and 'shortcut = "B"' in config


def test_finetune_with_a_conflicting_model_names_both_and_the_fix(tiny_run, capsys):
    err = clean_error(capsys, ["train", "--recipe", "finetune", "--weights", tiny_run,
                               "--model", "resnet32", "--data", TINY_DATA, *CPU])
    assert err == (f"error: --weights {tiny_run} holds resnet20 weights, not resnet32: "
                   "give --model resnet20 (or leave --model out)")


def test_make_demo_ends_by_saying_how_to_run_reslab():
    root = Path(SRC).parent
    demo = (root / "Makefile").read_text().split("\ndemo:", 1)[1].split("\n\n", 1)[0]
    assert demo.splitlines()[-1].strip() == "@$(MAKE) -s --no-print-directory how-to-run"
    said = subprocess.run(["make", "-s", "--no-print-directory", "how-to-run"], cwd=root,
                          capture_output=True, text=True, timeout=60)
    assert said.returncode == 0 and said.stdout.splitlines() == [
        "reslab is installed in .venv/, not on your PATH. Run it as",
        "  .venv/bin/reslab --help",
        "or activate the environment once per shell:",
        "  source .venv/bin/activate   # then: reslab --help"]

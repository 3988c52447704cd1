"""degradation.json as dataclasses: written, read back and written again it is the same text;
the files committed under docs/results/ (older formats too) still read; a malformed one is one
error naming the file. And the one decision of how a sweep member starts in its directory."""
from __future__ import annotations

import json
from pathlib import Path

import pytest

from reslab.analysis.degradation import seed_spread
from reslab.analysis.report import read_degradation
from reslab.analysis.sweep_result import CurvePoint, DegradationResult, SweepMember
from reslab.engine.sweep import member_start
from reslab.errors import UserError

RESULTS = Path(__file__).resolve().parent.parent / "docs" / "results"


def _member(model: str, seed: int, train: float, run: str) -> SweepMember:
    curve = (CurvePoint(5, 0.5, None), CurvePoint(10, train, 0.25))
    return SweepMember(model, 8, model.startswith("resnet"), 10, 1.5, train, 0.25, curve, seed,
                       run)


def test_a_result_written_and_read_back_is_the_same_text(tmp_path: Path) -> None:
    from reslab.analysis.degradation import budget, write_results

    runs = (_member("plain8", 0, 0.125, "plain8"), _member("plain8", 1, 0.5, "plain8-seed1"),
            _member("resnet8", 0, 0.0, "resnet8"))
    result = DegradationResult("digits", {"lr": 0.1, "milestones": [4, 6]}, runs,
                               seed_spread(runs), 1.0, budget(runs, 1.0))
    write_results(result, tmp_path)
    text = (tmp_path / "degradation.json").read_text()
    back = read_degradation(tmp_path / "degradation.json")
    assert back == result and json.dumps(back.to_json(), indent=2) + "\n" == text
    # The keys in the order the file has always had them; an int stays an int.
    assert list(json.loads(text)) == ["dataset", "recipe", "runs", "spread", "epochs_per_run",
                                      "budget"]
    assert '"final_train_error": 0,' not in text and '"final_train_error": 0.0,' in text
    assert back.spread["plain8"].final_train_error.std == pytest.approx(0.265165, abs=1e-6)
    assert back.budget == "10 iterations (1 epoch) per run; 0.00 h of training in all"


def test_the_committed_results_still_read() -> None:
    path = RESULTS / "degradation-fmnist-30ep" / "degradation.json"
    text = path.read_text()
    result = read_degradation(path)
    assert json.dumps(result.to_json(), indent=2) + "\n" == text
    assert [r.label for r in result.first_seeds()] == ["plain20", "resnet20", "plain56",
                                                       "resnet56"]
    old = read_degradation(RESULTS / "archive" / "degradation-fmnist-6ep" / "degradation.json")
    assert old.spread == {} and old.budget is None  # before seeds and budgets
    assert [(r.label, r.seed, r.iterations) for r in old.runs][0] == ("plain20", None, None)


@pytest.mark.parametrize("damage", [
    lambda o: o.pop("dataset"),
    lambda o: o["runs"][0].update(depth="20"),
    lambda o: o["runs"][0].update(residual=None),
    lambda o: o["runs"][0]["curve"][0].update(train_error="x"),
    lambda o: o["spread"]["plain20"]["final_train_error"].update(std=None),
    lambda o: o.update(budget=5),
])
def test_a_malformed_result_is_one_error_naming_the_file(damage, tmp_path: Path) -> None:
    obj = json.loads((RESULTS / "degradation-fmnist-30ep" / "degradation.json").read_text())
    damage(obj)
    path = tmp_path / "degradation.json"
    path.write_text(json.dumps(obj))
    with pytest.raises(UserError, match=f"^degradation file {path} is damaged: expected "):
        read_degradation(path)


def test_a_member_starts_new_skips_resumes_or_starts_afresh(tmp_path: Path) -> None:
    from reslab.engine.recipe import load_recipe, save_recipe
    from reslab.engine.rundir import RunDir

    r = load_recipe("paper-cifar", {"model": "resnet8", "data": "digits"})
    run = RunDir(tmp_path / "resnet8")
    assert member_start(r, run.path) == "new"
    run.path.mkdir()
    save_recipe(run.config, r)
    assert member_start(r, run.path) == "afresh"   # dead before its first state
    run.state.parent.mkdir()
    run.state.write_bytes(b"")
    assert member_start(r, run.path) == "resume"
    run.weights.write_bytes(b"")
    assert member_start(r, run.path) == "skip"
    with pytest.raises(UserError, match="holds a run with another config"):
        member_start(r.replace(lr=0.05), run.path)

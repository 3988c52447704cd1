"""degradation.json as dataclasses: a sweep's members (`SweepMember`, one entry of `runs`), the
spread over their seeds (`Spread`) and the whole result (`DegradationResult`), each with the one
to_json that writes it and the one from_json that reads it back (docs/run-directory.md).

to_json gives the keys in the order the file has always had them, so a result written, read and
written again is the same text; from_json accepts the older files too (docs/results/archive:
no seeds, no spread, no budget) and refuses a malformed one with one UserError naming the file.
"""
from __future__ import annotations

import math
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from ..errors import UserError


def finite_number(v: Any) -> bool:
    """A finite int or float (not a bool): what a number in a results file must be."""
    return isinstance(v, (int, float)) and not isinstance(v, bool) and math.isfinite(v)


@dataclass(frozen=True)
class CurvePoint:
    """One evaluation of a member: the running training error over that epoch and the test (or
    val) error; either is None where the run logged only the other."""

    step: int
    train_error: float | None
    test_error: float | None

    def to_json(self) -> dict[str, Any]:
        return {"step": self.step, "train_error": self.train_error, "test_error": self.test_error}

    @classmethod
    def from_json(cls, obj: Any) -> CurvePoint:
        if not (isinstance(obj, dict) and finite_number(obj.get("step")) and all(
                obj.get(k) is None or finite_number(obj.get(k))
                for k in ("train_error", "test_error"))):
            raise ValueError("curve point")
        return cls(obj["step"], obj.get("train_error"), obj.get("test_error"))


@dataclass(frozen=True)
class SweepMember:
    """One member run of a sweep, read back from its metrics.jsonl. run: its directory's name
    (plain20, plain20-seed1); files older than seeds have neither seed nor run."""

    model: str
    depth: int
    residual: bool
    iterations: int | None
    train_seconds: float | None
    final_train_error: float | None
    final_test_error: float | None
    curve: tuple[CurvePoint, ...]
    seed: int | None = None
    run: str | None = None
    steps_per_epoch: float | None = None   # None in files older than the convergence gate

    @property
    def label(self) -> str:
        """The run's name: plain20 for the first seed, plain20-seed1 for another."""
        return self.run or self.model

    @property
    def first_seed(self) -> bool:
        """Whether this is the first seed's run (named by the model alone)."""
        return self.label == self.model

    def final_error(self, which: str) -> float | None:
        """final_train_error ("train") or final_test_error ("test")."""
        return self.final_train_error if which == "train" else self.final_test_error

    def to_json(self) -> dict[str, Any]:
        return {"model": self.model, "depth": self.depth, "residual": self.residual,
                "iterations": self.iterations, "train_seconds": self.train_seconds,
                "final_train_error": self.final_train_error,
                "final_test_error": self.final_test_error,
                "curve": [p.to_json() for p in self.curve], "seed": self.seed, "run": self.run,
                **({} if self.steps_per_epoch is None
                   else {"steps_per_epoch": self.steps_per_epoch})}

    @classmethod
    def from_json(cls, obj: Any) -> SweepMember:
        if not (isinstance(obj, dict) and isinstance(obj.get("model"), str)
                and isinstance(obj.get("depth"), int) and isinstance(obj.get("residual"), bool)
                and all(obj.get(k) is None or finite_number(obj.get(k))
                        for k in ("final_train_error", "final_test_error", "iterations",
                                  "train_seconds"))
                and isinstance(obj.get("curve", []), list)
                and (obj.get("seed") is None or isinstance(obj.get("seed"), int))
                and (obj.get("steps_per_epoch") is None
                     or (finite_number(obj["steps_per_epoch"]) and obj["steps_per_epoch"] > 0))
                and (obj.get("run") is None or isinstance(obj.get("run"), str))):
            raise ValueError("run")
        return cls(obj["model"], obj["depth"], obj["residual"],
                   obj.get("iterations"), obj.get("train_seconds"), obj.get("final_train_error"),
                   obj.get("final_test_error"),
                   tuple(CurvePoint.from_json(p) for p in obj.get("curve", [])),
                   obj.get("seed"), obj.get("run"), obj.get("steps_per_epoch"))


@dataclass(frozen=True)
class SeedStats:
    """Mean, sample std, min and max of one final error over a model's seeds."""

    mean: float
    std: float
    min: float
    max: float

    def to_json(self) -> dict[str, float]:
        return {"mean": self.mean, "std": self.std, "min": self.min, "max": self.max}

    @classmethod
    def from_json(cls, obj: Any) -> SeedStats:
        if not (isinstance(obj, dict) and all(finite_number(obj.get(k))
                                              for k in ("mean", "std", "min", "max"))):
            raise ValueError("spread")
        return cls(obj["mean"], obj["std"], obj["min"], obj["max"])


@dataclass(frozen=True)
class Spread:
    """A model run with two or more seeds: its seeds and the stats of each final error measured
    on two or more of them (None otherwise)."""

    seeds: tuple[int | None, ...]
    final_train_error: SeedStats | None = None
    final_test_error: SeedStats | None = None

    def to_json(self) -> dict[str, Any]:
        out: dict[str, Any] = {"seeds": list(self.seeds)}
        for key, stats in (("final_train_error", self.final_train_error),
                           ("final_test_error", self.final_test_error)):
            if stats is not None:
                out[key] = stats.to_json()
        return out

    @classmethod
    def from_json(cls, obj: Any) -> Spread:
        if not (isinstance(obj, dict) and isinstance(obj.get("seeds", []), list)
                and all(s is None or isinstance(s, int) for s in obj.get("seeds", []))):
            raise ValueError("spread")
        stats = [None if obj.get(k) is None else SeedStats.from_json(obj[k])
                 for k in ("final_train_error", "final_test_error")]
        return cls(tuple(obj.get("seeds", [])), *stats)


@dataclass(frozen=True)
class DegradationResult:
    """degradation.json: the dataset, the recipe every member shares (its fields but model and
    seed, as Recipe.to_dict writes them), the members in training order, the spread over seeds
    by model, the epochs per run (when the recipe counts epochs) and the cost in words."""

    dataset: str
    recipe: dict[str, Any]
    runs: tuple[SweepMember, ...] = ()
    spread: dict[str, Spread] = field(default_factory=dict)
    epochs_per_run: float | None = None
    budget: str | None = None

    @property
    def milestones(self) -> list[int]:
        """The shared recipe's lr milestones ([] when it has none)."""
        return list(self.recipe.get("milestones") or [])

    def first_seeds(self) -> list[SweepMember]:
        """The first seed's run of every model (what Fig. 6 draws)."""
        return [r for r in self.runs if r.first_seed]

    def to_json(self) -> dict[str, Any]:
        out: dict[str, Any] = {"dataset": self.dataset, "recipe": self.recipe,
                               "runs": [r.to_json() for r in self.runs],
                               "spread": {m: s.to_json() for m, s in self.spread.items()}}
        if self.epochs_per_run is not None:
            out["epochs_per_run"] = self.epochs_per_run
        if self.budget is not None:
            out["budget"] = self.budget
        return out

    @classmethod
    def from_json(cls, obj: Any, path: Path | str) -> DegradationResult:
        """The result in obj (read from path); UserError naming path when it is not one."""
        try:
            if not (isinstance(obj, dict) and isinstance(obj.get("dataset"), str)
                    and isinstance(obj.get("runs"), list)
                    and isinstance(obj.get("recipe", {}), dict)
                    and isinstance(obj.get("spread", {}), dict)
                    and (obj.get("epochs_per_run") is None or finite_number(obj["epochs_per_run"]))
                    and (obj.get("budget") is None or isinstance(obj["budget"], str))):
                raise ValueError("top level")
            return cls(obj["dataset"], obj.get("recipe", {}),
                       tuple(SweepMember.from_json(r) for r in obj["runs"]),
                       {m: Spread.from_json(s) for m, s in obj.get("spread", {}).items()},
                       obj.get("epochs_per_run"), obj.get("budget"))
        except ValueError:
            raise UserError(f"degradation file {path} is damaged: expected {{\"dataset\", "
                            "\"runs\": [{\"model\", \"depth\", \"final_train_error\", ...}]}") \
                from None

"""The resumable training state in RUN/state/: everything that makes a resumed run continue
bit-identically (weights, optimizer, schedule, step, every RNG), saved as plain tensors and
containers so torch.load(weights_only=True) reads it; and the signals that ask for a save."""
from __future__ import annotations

import math
import random
import signal
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Protocol

import numpy as np
import torch

from ..errors import UserError
from ..io import save_torch, torch_load_safe, unpickle_failure
from .evaluate import Tally
from .rundir import RunDir
from .schedule import ScheduleState


@dataclass
class RunProgress:
    """How far a run has come: what the state holds besides the weights and the optimizer."""
    schedule: ScheduleState
    train_tally: Tally  # training hits and loss since the last train row of metrics.jsonl
    step: int = 0
    best_val: float = -1.0  # the best validation top-1 so far (best.safetensors holds it)
    bad_evals: int = 0  # evaluations since the best validation top-1 (early stopping)
    elapsed_before: float = 0.0  # training seconds of the processes before this resume
    started: float = field(default_factory=time.perf_counter)  # when this process began

    def elapsed(self) -> float:
        """Seconds of training so far, across resumes (for time-to-accuracy)."""
        return self.elapsed_before + time.perf_counter() - self.started


class Run(Protocol):
    """What the state is saved from and restored into (engine.run.Run)."""
    model: torch.nn.Module
    optimizer: torch.optim.Optimizer
    scaler: torch.amp.GradScaler
    ema: Any
    progress: RunProgress


def save_state(path: str | Path, state: dict[str, Any]) -> None:
    """Resumable training state (tensors, numbers, strings, lists, dicts only: weights_only-safe)."""
    save_torch(path, state, "training state")


def load_state(path: str | Path) -> dict[str, Any]:
    """Loads a state written by save_state, never executing pickled code."""
    try:
        state = torch_load_safe(path)
    except UserError:
        raise
    except FileNotFoundError:
        raise UserError(f"no saved training state at {path}") from None
    except Exception as e:  # noqa: BLE001 - any unpickling failure is a bad file
        needs, reason = unpickle_failure(e)
        if needs:
            raise UserError(
                f"refusing to load training state {path}: unpickling it needs {needs}, and a "
                "pickle that references code can run it; reslab writes its states as tensors "
                "and plain values only, so this file was not written by reslab (start the run "
                "afresh without --resume)") from None
        raise UserError(f"cannot load training state {path}: {reason}") from None
    if not isinstance(state, dict):
        raise UserError(f"cannot resume from {path}: it holds a {type(state).__name__}, "
                        "not a reslab training state")
    return state


def _rng_state() -> dict[str, Any]:
    np_state = np.random.get_state()
    state = {"torch": torch.get_rng_state(), "python": list(random.getstate()[1]),
             "python_pos": random.getstate()[2],
             "numpy": torch.from_numpy(np_state[1].astype(np.int64)), "numpy_pos": np_state[2]}
    if torch.cuda.is_available():
        state["cuda"] = torch.cuda.get_rng_state_all()
    return state


def _set_rng_state(s: dict[str, Any]) -> None:
    torch.set_rng_state(s["torch"])
    random.setstate((3, tuple(s["python"]), s["python_pos"]))
    np.random.set_state(("MT19937", s["numpy"].numpy().astype(np.uint32), s["numpy_pos"]))
    if "cuda" in s and torch.cuda.is_available():
        torch.cuda.set_rng_state_all(s["cuda"])


def save(run: Run, out: Path) -> None:
    """Writes state/last.pt atomically: a kill at any moment leaves the previous one intact."""
    p = run.progress
    save_state(RunDir(out).state, {
        "step": p.step,
        "model": run.model.state_dict(),
        "optimizer": run.optimizer.state_dict(),
        "scaler": run.scaler.state_dict(),
        "ema": run.ema.state_dict() if run.ema is not None else None,
        "schedule": p.schedule.to_dict(),
        "best_val": p.best_val,
        "bad_evals": p.bad_evals,
        "elapsed": p.elapsed(),
        "train_tally": p.train_tally.state(),
        "rng": _rng_state(),
    })


def restore(run: Run, out: Path) -> None:
    """Restores run from out's state, checked whole first: nothing of the run (metrics.jsonl
    included, which a resume trims to the state's step) is touched before it is known good."""
    path = RunDir(out).state
    s = load_state(path)
    check_state(s, run.model, out)
    # A kill during a save leaves its temporary file behind (the real file is intact).
    for stale in path.parent.glob(f".{path.name}.*.tmp"):
        stale.unlink(missing_ok=True)
    p = run.progress
    try:
        run.model.load_state_dict(s["model"])
        run.optimizer.load_state_dict(s["optimizer"])
        run.scaler.load_state_dict(s["scaler"])
        if run.ema is not None and s["ema"] is not None:
            run.ema.load_state_dict(s["ema"])
        p.schedule = ScheduleState(**s["schedule"])
        p.step, p.best_val = int(s["step"]), float(s["best_val"])
        p.bad_evals = int(s.get("bad_evals", 0))  # absent from states before early stopping
        p.elapsed_before = float(s["elapsed"])
        p.train_tally.load(s["train_tally"])
        _set_rng_state(s["rng"])
    except (KeyError, IndexError, AttributeError, RuntimeError, ValueError, TypeError) as e:
        raise_bad_state(out, e)  # AttributeError: e.g. a string where a tensor belongs


def check_state(s: dict[str, Any], model: torch.nn.Module, out: Path) -> None:
    """The counters are numbers of the right kind and range, the weights are the model's
    (names, shapes, dtypes reslab writes, finite): a UserError saying which is not."""
    from ..limits import MAX_ITERS, short_text
    from ..errors import InvalidRecord
    from ..weights.tensors import check_tensors

    def bad(message: str) -> UserError:
        return UserError(f"cannot resume from {RunDir(out).state}: {message}; the state is "
                         "damaged or not this run's (start afresh with --overwrite)")

    step = s.get("step")
    if isinstance(step, bool) or not isinstance(step, int) or not 0 <= step <= MAX_ITERS:
        raise bad(f"step {short_text(step)} is not a whole number between 0 and {MAX_ITERS:,}")
    for key, lo, hi in (("best_val", -1.0, 1.0), ("elapsed", 0.0, math.inf)):
        value = s.get(key)
        if (isinstance(value, bool) or not isinstance(value, (int, float))
                or not math.isfinite(value) or not lo <= value <= hi):
            raise bad(f"{key} {short_text(value)} is not a finite number in [{lo:g}, {hi:g}]")
    weights = s.get("model")
    if not isinstance(weights, dict):
        raise bad("it holds no model weights")
    try:
        check_tensors(weights, "its weights")
    except InvalidRecord as e:
        raise bad(str(e)) from None
    own = model.state_dict()
    missing = [k for k in own if k not in weights]
    unexpected = [k for k in weights if k not in own]
    shapes = [k for k in own if k in weights and tuple(weights[k].shape) != tuple(own[k].shape)]
    if missing or unexpected or shapes:
        first = ([f"missing {k}" for k in missing[:2]] + [f"unexpected {k}" for k in unexpected[:2]]
                 + [f"{k} of shape {list(weights[k].shape)}, the model's {list(own[k].shape)}"
                    for k in shapes[:2]])
        raise bad("its weights are of another architecture than the run's "
                  f"({'; '.join(short_text(f) for f in first)})")


def raise_bad_state(out: Path, e: Exception) -> None:
    raise UserError(f"cannot resume from {RunDir(out).state}: "
                    f"{str(e).splitlines()[0] if str(e) else type(e).__name__}") from None


class Interrupted(Exception):
    """SIGINT/SIGTERM arrived: the state was saved and the run stops cleanly."""

    def __init__(self, signame: str | None, step: int) -> None:
        super().__init__(f"{signame or 'signal'} at step {step}")
        self.signame, self.step, self.out = signame, step, None

    def with_out(self, out: Path | None) -> Interrupted:
        self.out = out
        return self

    @property
    def exit_code(self) -> int:
        return 143 if self.signame == "SIGTERM" else 130


class StopSignal:
    """Turns SIGINT/SIGTERM into a flag the loop checks after each step (then saves and exits)."""

    def __init__(self) -> None:
        self.requested, self.signame = False, None
        self._old = {}
        for sig in (signal.SIGINT, signal.SIGTERM):
            try:
                self._old[sig] = signal.signal(sig, self._handle)
            except ValueError:  # not the main thread: leave signals alone
                pass

    def _handle(self, signum: int, frame: Any) -> None:
        if self.requested:  # a second Ctrl-C: stop now
            raise KeyboardInterrupt
        self.requested, self.signame = True, signal.Signals(signum).name

    def restore(self) -> None:
        for sig, old in self._old.items():
            signal.signal(sig, old)

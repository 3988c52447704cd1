"""Helpers shared by test modules (imported as `helpers`: pytest puts tests/ on sys.path)."""
import torch


def randomize_bn(model: torch.nn.Module, seed: int = 0) -> torch.nn.Module:
    """Non-trivial BN scales, shifts and running statistics, as after training, so a wrongly
    loaded or folded BN shows in the outputs. Returns the model in eval mode."""
    g = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for m in model.modules():
            if isinstance(m, torch.nn.BatchNorm2d):
                m.weight.copy_(torch.rand(m.weight.shape, generator=g) + 0.5)
                m.bias.copy_(0.2 * torch.randn(m.bias.shape, generator=g))
                m.running_mean.copy_(0.2 * torch.randn(m.running_mean.shape, generator=g))
                m.running_var.copy_(torch.rand(m.running_var.shape, generator=g) + 0.5)
    return model.eval()


class StopAfter:
    """StopSignal stand-in that asks for a stop after `n` steps (as SIGTERM would)."""

    def __init__(self, n: int) -> None:
        self.n, self.signame = n, "SIGTERM"

    @property
    def requested(self) -> bool:
        self.n -= 1
        return self.n == 0

    def restore(self) -> None:
        pass


def whole_and_resumed(r, tmp_path, monkeypatch, stop_at: int = 3) -> tuple[dict, dict]:
    """The final weights of recipe `r` trained in one go (tmp_path/whole) and stopped after
    `stop_at` steps, as by SIGTERM, then resumed (tmp_path/cut): bit-identical when resume is
    exact."""
    from safetensors.torch import load_file

    from reslab.engine import state as run_state
    from reslab.engine.loop import fit

    fit(r, tmp_path / "whole", quiet=True)
    monkeypatch.setattr(run_state, "StopSignal", lambda: StopAfter(stop_at))
    try:
        fit(r, tmp_path / "cut", quiet=True)
    except run_state.Interrupted:
        pass
    else:
        raise AssertionError(f"the run was not stopped after {stop_at} steps")
    monkeypatch.setattr(run_state, "StopSignal", lambda: StopAfter(10**9))
    fit(None, tmp_path / "cut", resume=True, quiet=True)
    whole, cut = (load_file(str(tmp_path / d / "model.safetensors")) for d in ("whole", "cut"))
    return whole, cut

"""The pieces a run is assembled from: device, seeds, model, optimizer, EMA."""
from __future__ import annotations

import os
import random
from typing import Any

import numpy as np
import torch
from torch import nn

from ..errors import UserError
from ..models import create_model, get_arch
from ..models.init import dirac_init_
from ..weights.record import Record
from .muon import MuonSGD
from .recipe import Recipe


def select_device(name: str = "auto", local_rank: int = 0) -> torch.device:
    """`auto` picks cuda, then mps, then cpu; `cuda` under torchrun means cuda:LOCAL_RANK."""
    # Subnormal floats (deep plain nets' vanishing signals) are 10-20x slower on x86 CPUs.
    torch.set_flush_denormal(True)
    if name == "auto":
        if torch.cuda.is_available():
            name = "cuda"
        elif getattr(torch.backends, "mps", None) and torch.backends.mps.is_available():
            name = "mps"
        else:
            name = "cpu"
    if name.startswith("cuda"):
        if not torch.cuda.is_available():
            raise UserError(f"device '{name}' requested but CUDA is not available")
        if name == "cuda":
            name = f"cuda:{local_rank}"
    elif name == "mps" and not torch.backends.mps.is_available():
        raise UserError("device 'mps' requested but MPS is not available")
    elif name != "cpu" and not name.startswith(("cuda", "mps")):
        raise UserError(f"invalid device '{name}' (choices: auto, cpu, cuda, cuda:N, mps)")
    return torch.device(name)


def bf16_supported(device: str | torch.device) -> bool:
    """Whether bf16 autocast runs natively (CPUs with AVX512-BF16/AMX, Ampere+ GPUs); where it
    is emulated it is slower than fp32, so the fast training variant then stays fp32."""
    device = torch.device(device)
    if device.type == "cuda":
        return torch.cuda.is_bf16_supported()
    if device.type == "cpu":
        return bool(torch.backends.mkldnn.is_available()
                    and torch.ops.mkldnn._is_mkldnn_bf16_supported())
    return False


def resolve_amp(amp: str, device: torch.device) -> torch.dtype | None:
    """The autocast dtype of a recipe's amp: "auto" is bf16 where it runs natively, else fp32."""
    if amp == "auto":
        return torch.bfloat16 if bf16_supported(device) else None
    return {"bf16": torch.bfloat16, "fp16": torch.float16}.get(amp)


def seed_everything(seed: int, deterministic: bool) -> None:
    random.seed(seed)
    np.random.seed(seed % 2**32)
    torch.manual_seed(seed)
    if deterministic:
        # Bit-exact reruns: no nondeterministic kernels, no autotuned algorithm choice.
        os.environ.setdefault("CUBLAS_WORKSPACE_CONFIG", ":4096:8")
        torch.use_deterministic_algorithms(True, warn_only=True)
        torch.backends.cudnn.benchmark = False
    elif torch.cuda.is_available():
        torch.backends.cudnn.benchmark = True


def build_model(r: Recipe, num_classes: int, in_chans: int,
                layout: dict[str, Any] | None = None) -> nn.Module:
    """The recipe's model; layout: options the initial weights need (weights.layouts.layout_kwargs).
    dirac_init and bn_momentum change its initial weights and BN momentum, not its
    architecture (so not its record)."""
    model = create_model(r.model, num_classes=num_classes, in_chans=in_chans,
                         **r.model_kwargs(), **(layout or {}))
    if r.dirac_init:
        dirac_init_(model)
    for m in model.modules():
        if isinstance(m, nn.modules.batchnorm._BatchNorm):
            m.momentum = r.bn_momentum
    return model


def build_optimizer(r: Recipe, model: nn.Module) -> torch.optim.Optimizer:
    """SGD as section 3.4 (or AdamW). Unless decay_all (the paper), weight decay applies to
    conv/fc weights only: decaying BN scales and biases only fights the normalisation.
    With freeze_epochs the classifier (fc) gets groups of its own, marked "head", so the loop can
    train it alone first."""
    split = r.freeze_epochs > 0
    # (head, decay) -> params; always the body's two groups, in this order (saved states of
    # earlier runs hold two groups), then the head's when it is split off.
    keys = [(False, True), (False, False)] + ([(True, True), (True, False)] if split else [])
    params: dict[tuple[bool, bool], list[nn.Parameter]] = {k: [] for k in keys}
    bn_biases = set()
    if r.bn_bias_lr != 1.0:  # airbench94's BN-bias group: a larger lr, the same lr x decay
        bn_biases = {id(m.bias) for m in model.modules()
                     if isinstance(m, nn.modules.batchnorm._BatchNorm) and m.bias is not None}
    # muon: the conv filters (every weight of more than 2 dims) take Muon's step (engine/muon.py)
    filters = [p for p in model.parameters() if p.ndim > 2] if r.optimizer == "muon" else []
    special = bn_biases | {id(p) for p in filters}
    for name, p in model.named_parameters():
        if id(p) not in special:
            params[(split and name.startswith("fc."), p.ndim > 1 or r.decay_all)].append(p)
    groups = [{"params": params[k], "weight_decay": r.weight_decay if k[1] else 0.0,
               "head": k[0]} for k in keys]
    if bn_biases:
        groups.append({"params": [p for p in model.parameters() if id(p) in bn_biases],
                       "weight_decay": r.weight_decay / r.bn_bias_lr if r.decay_all else 0.0,
                       "head": False, "lr_scale": r.bn_bias_lr})
    if r.optimizer == "adamw":
        return torch.optim.AdamW(groups, lr=r.lr)
    if r.optimizer == "muon":
        groups.append({"params": filters, "orthogonalize": True, "head": False,
                       "momentum": r.muon_momentum, "lr_scale": r.muon_lr / r.lr})
        device = next(model.parameters()).device
        return MuonSGD(groups, lr=r.lr, momentum=r.momentum, nesterov=r.nesterov,
                       ns_dtype=torch.bfloat16 if bf16_supported(device) else torch.float32)
    return torch.optim.SGD(groups, lr=r.lr, momentum=r.momentum, nesterov=r.nesterov)


def set_lr(optimizer: torch.optim.Optimizer, lr: float, head_only: bool = False) -> None:
    """Every group's lr for this step: `lr` times the group's "lr_scale" (the BN biases' under
    bn_bias_lr); 0 for the body's groups when only the head trains (freeze_epochs)."""
    for group in optimizer.param_groups:
        frozen = head_only and not group.get("head")
        group["lr"] = 0.0 if frozen else lr * group.get("lr_scale", 1.0)


def base_lr(optimizer: torch.optim.Optimizer) -> float:
    """The step's lr as the schedule gave it (set_lr's `lr`), whatever the groups' scales."""
    return max(g["lr"] / g.get("lr_scale", 1.0) for g in optimizer.param_groups)


class EMA:
    """Exponential moving average of the weights (floating buffers such as the BN running
    statistics averaged alike, others copied), evaluated in place of them. With `lookahead`
    (airbench94) the average is copied back into the model at each update."""

    def __init__(self, model: nn.Module, decay: float, *, every: int = 1,
                 lookahead: bool = False) -> None:
        self.decay, self.every, self.lookahead = decay, every, lookahead
        self.shadow = {k: v.detach().clone() for k, v in model.state_dict().items()}

    def decay_at(self, step: int, total: int) -> float:
        """The decay of an update after `step` of `total` steps: decay ** every (the updates
        are `every` steps apart), ramped by (step / total) ** 3 under lookahead, as airbench94
        (move fast early, average strongly at the end)."""
        rho = self.decay ** self.every
        return rho * (step / total) ** 3 if self.lookahead else rho

    def due(self, step: int) -> bool:
        return step % self.every == 0

    @torch.no_grad()
    def update(self, model: nn.Module, decay: float | None = None) -> None:
        decay = self.decay if decay is None else decay
        for k, v in model.state_dict().items():
            if v.dtype.is_floating_point:
                self.shadow[k].lerp_(v, 1 - decay)
                if self.lookahead:
                    v.copy_(self.shadow[k])
            else:
                self.shadow[k].copy_(v)

    def state_dict(self) -> dict[str, torch.Tensor]:
        return self.shadow

    def load_state_dict(self, state: dict[str, torch.Tensor]) -> None:
        for k, v in state.items():
            self.shadow[k].copy_(v)


def architecture_from_weights(r: Recipe, record: Record | None) -> tuple[Recipe, list[str]]:
    """Fine-tuning trains the architecture the --weights record names (with its shortcut and
    stride options) unless the user gave --model, --shortcut or --stride-in (Recipe.given); a
    given --model of another architecture cannot load them: an error naming both and the fix.
    A foreign file has no record: the recipe's model loads it or says why not."""
    if record is None:
        return r, []
    arch, kwargs = record.architecture, record.kwargs
    if "model" in r.given and r.model != arch:
        raise UserError(f"--weights {r.weights} holds {arch} weights, not {r.model}: "
                        f"give --model {arch} (or leave --model out)")
    model = r.model if "model" in r.given else arch
    # The recipe's effective options (shortcut None: the family's default), so that a recipe
    # already training this layout is left exactly as it is (its stored config unchanged).
    current = {"shortcut": r.shortcut or get_arch(model).default_shortcut,
               "stride_in": r.stride_in}
    changes = {k: kwargs[k] for k in ("shortcut", "stride_in")
               if k in kwargs and k not in r.given and kwargs[k] != current[k]}
    if model != r.model:
        changes["model"] = model
    if not changes:
        return r, []
    notes = []
    if "model" not in r.given and arch != r.model:
        shortcut = f" (shortcut {kwargs['shortcut']})" if "shortcut" in kwargs else ""
        notes.append(f"note: --weights {r.weights} holds a {arch}{shortcut}: training that "
                     "architecture (--model chooses another)")
    return r.replace(**changes), notes

"""The tensors of a weights file: the dtypes and values reslab accepts, checked for every file
it reads or writes, and loaded into a model only when they match it (a file's metadata is
checked by reslab.weights.record)."""
from __future__ import annotations

import torch
from torch import nn

from ..errors import InvalidRecord
from ..limits import short_text

# Tensor dtypes a weights file may hold: what reslab and the usual trainers write. (Here, not
# in reslab.limits, which the command line's parser imports without torch.)
FLOAT_DTYPES = (torch.float32, torch.bfloat16, torch.float16, torch.float64)
INT_DTYPES = (torch.int64,)


def check_tensors(state: dict[str, torch.Tensor], where: str) -> None:
    """Every tensor of a weights file is of a dtype reslab writes (float32/bf16/fp16 weights,
    int64 counters such as BN's num_batches_tracked; float64 from other trainers) and finite:
    an int8 or bool fc.weight would load by casting and give numbers that look fine."""
    for key, value in state.items():
        if not isinstance(value, torch.Tensor):
            raise InvalidRecord(f"{where}: {short_text(key)} is not a tensor")
        if value.dtype not in FLOAT_DTYPES + INT_DTYPES:
            raise InvalidRecord(
                f"{where}: tensor {short_text(key)} has dtype {str(value.dtype).removeprefix('torch.')}, "
                "which reslab never writes (weights are float32, bfloat16 or float16, counters "
                "int64); the file is damaged or not a model's weights")
        if value.layout != torch.strided or value.is_meta:
            raise InvalidRecord(f"{where}: tensor {short_text(key)} is a {value.layout} or meta "
                                "tensor, not weights")
        if value.dtype.is_floating_point and not bool(torch.isfinite(value).all()):
            raise InvalidRecord(f"{where} holds non-finite weights (NaN or Inf), first in "
                                f"{short_text(key)}")
        if key.endswith("running_var") and bool((value < 0).any()):  # sqrt of it: NaN scores
            raise InvalidRecord(f"{where}: {short_text(key)} holds negative variances")


def load_into(model: nn.Module, state: dict[str, torch.Tensor], architecture: str,
              where: str) -> nn.Module:
    """Loads state into model strictly: every tensor checked (check_tensors: NaN or infinite
    weights would only give NaN scores, silently), of the model's kind (floating where the
    model's is floating) and shape."""
    check_tensors(state, where)
    own = model.state_dict()
    problems = ([f"missing {k}" for k in own if k not in state]
                + [f"unexpected {k}" for k in state if k not in own]
                + [f"{k} has shape {list(state[k].shape)}, the model {list(own[k].shape)}"
                   for k in own if k in state and state[k].shape != own[k].shape]
                + [f"{k} is {str(state[k].dtype).removeprefix('torch.')}, the model's "
                   f"{str(own[k].dtype).removeprefix('torch.')}" for k in own if k in state
                   and state[k].dtype.is_floating_point != own[k].dtype.is_floating_point])
    if problems:
        raise InvalidRecord(f"{where} does not match {architecture}: "
                            + "; ".join(short_text(p) for p in problems[:3]))
    model.load_state_dict(state, strict=True)
    return model

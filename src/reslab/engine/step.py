"""One training step, as the engine runs it and as `reslab bench` times it: the batch (and the
model, set up by the caller) channels-last when asked, autocast to the mixed-precision dtype, the
loss in fp32, backward through the gradient scaler (active for fp16 only), the optimizer step."""
from __future__ import annotations

from collections.abc import Callable

import torch
import torch.nn.functional as F


def sgd_step(forward: Callable[[torch.Tensor], torch.Tensor], optimizer: torch.optim.Optimizer,
             scaler: torch.amp.GradScaler, x: torch.Tensor, y: torch.Tensor, *,
             amp_dtype: torch.dtype | None = None, channels_last: bool = False,
             label_smoothing: float = 0.0,
             check_loss: Callable[[float], None] | None = None
             ) -> tuple[float, torch.Tensor]:
    """(loss, logits) of one optimisation step on (x, y). check_loss sees the loss value before
    the backward pass (the engine stops a diverged run there, before it touches the weights)."""
    if channels_last:
        x = x.contiguous(memory_format=torch.channels_last)
    with torch.autocast(x.device.type, dtype=amp_dtype or torch.bfloat16,
                        enabled=amp_dtype is not None):
        logits = forward(x)
        loss = F.cross_entropy(logits.float(), y, label_smoothing=label_smoothing)
    value = loss.item()
    if check_loss is not None:
        check_loss(value)
    optimizer.zero_grad(set_to_none=True)
    scaler.scale(loss).backward()
    scaler.step(optimizer)
    scaler.update()
    return value, logits.detach()

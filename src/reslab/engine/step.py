"""One training step, as the engine runs it and as `reslab bench` times it: the batch (and the
model, set up by the caller) channels-last when asked, autocast to the mixed-precision dtype, the
loss in fp32, backward through the gradient scaler (active for fp16 only), gradient clipping, the
optimizer step. With gradient accumulation the step's batch is split into micro-batches whose
gradients add up before the one optimizer step."""
from __future__ import annotations

from collections.abc import Callable

import torch
import torch.nn.functional as F


def sgd_step(forward: Callable[[torch.Tensor], torch.Tensor], optimizer: torch.optim.Optimizer,
             scaler: torch.amp.GradScaler, x: torch.Tensor, y: torch.Tensor, *,
             amp_dtype: torch.dtype | None = None, channels_last: bool = False,
             label_smoothing: float = 0.0, accumulate: int = 1, clip_grad_norm: float = 0.0,
             check_loss: Callable[[float], None] | None = None,
             class_weights: torch.Tensor | None = None) -> tuple[float, torch.Tensor]:
    """(loss, logits) of one optimisation step on (x, y). y: class indices, or per-class target
    probabilities (N, K) such as mixup's (cross_entropy smooths those as it smooths indices).
    accumulate: micro-batches the batch is split into, each weighted by its share of the batch,
    so the summed gradient is that of the batch's mean loss. clip_grad_norm: the gradients'
    global L2 norm is clipped to it before the step (0: off). check_loss sees each micro-batch's
    loss before its backward pass (the engine stops a diverged run there, before it touches the
    weights). class_weights: per-class weights of the cross-entropy (engine/balance.py)."""
    if channels_last:
        x = x.contiguous(memory_format=torch.channels_last)
    optimizer.zero_grad(set_to_none=True)
    total, value, outputs = len(x), 0.0, []
    for xs, ys in zip(x.tensor_split(accumulate), y.tensor_split(accumulate)):
        with torch.autocast(x.device.type, dtype=amp_dtype or torch.bfloat16,
                            enabled=amp_dtype is not None):
            logits = forward(xs)
            loss = F.cross_entropy(logits.float(), ys, weight=class_weights,
                                   label_smoothing=label_smoothing)
        part = loss.item()
        if check_loss is not None:
            check_loss(part)
        share = len(xs) / total
        value += part * share
        scaler.scale(loss * share if accumulate > 1 else loss).backward()
        outputs.append(logits.detach())
    if clip_grad_norm > 0:
        scaler.unscale_(optimizer)  # clip the true gradients, not the fp16-scaled ones
        torch.nn.utils.clip_grad_norm_(
            [p for g in optimizer.param_groups for p in g["params"]], clip_grad_norm)
    scaler.step(optimizer)
    scaler.update()
    return value, outputs[0] if len(outputs) == 1 else torch.cat(outputs)

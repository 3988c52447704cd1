"""Muon for the convolution filters, SGD for the rest: the optimizer of airbench94_muon
(Keller Jordan, github.com/KellerJordan/cifar10-airbench, airbench94_muon.py; Muon:
kellerjordan.github.io/posts/muon).

Each filter bank W (out x in x k x k) is a matrix of `out` rows. Its step is Muon's: the
Nesterov momentum of the gradient, orthogonalised by a few Newton-Schulz iterations (the
nearest matrix with all singular values near 1, so every direction of the update moves as far
as the largest one), after W is rescaled to norm sqrt(out). Every conv of reslab's nets is
followed by a batch norm, which makes the net's function blind to W's scale: the rescaling
fixes the scale so that the lr alone sets how far a step turns W, and weight decay, which only
shrinks W, has nothing left to do there. Every other parameter (BN scales and biases, the
classifier) takes torch's SGD step with the group's momentum, Nesterov and weight decay.

torch.optim.Muon takes 2-D parameters only and always orthogonalises in bf16, which CPUs without
native bf16 run slowly; here the iterations run in `ns_dtype` (bf16 where native, else fp32) for
the large banks and in fp32 for the small ones, and on the Gram matrix (orthogonalize).
"""
from __future__ import annotations

from collections.abc import Iterable
from typing import Any

import torch
from torch.optim.sgd import sgd

# The quintic iteration's coefficients (Jordan's): they push small singular values up fast, so
# a few steps bring them to about 0.5-1.5 (only near-zero ones stay lower), which trains as
# well as exact orthogonalisation.
NS_COEFFICIENTS = (3.4445, -4.7750, 2.0315)
NS_STEPS = 3  # airbench94_muon's
# Banks with a smaller side below this iterate in fp32 even where bf16 is native: their products
# are too small for bf16 to pay for its casts (one thread, Zen 5: 64 x 288 0.14 ms fp32 against
# 0.24 ms bf16; 128 x 1152 1.3 ms fp32 against 0.52 ms bf16).
LOW_PRECISION_MIN_SIDE = 128


def orthogonalize_flops(rows: int, cols: int, steps: int = NS_STEPS) -> int:
    """The multiply-add work of orthogonalize on a rows x cols matrix, in flops: with s <= l
    its sides, the Gram matrix and the final product (s x s x l each), and per step the Gram
    matrix's square, the running polynomial's product and the Gram matrix's update (s^3 each,
    the last two skipped where not needed)."""
    s, l = sorted((rows, cols))
    return 2 * (2 * s * s * l + (4 * steps - 3) * s ** 3)


def orthogonalize(g: torch.Tensor, steps: int, dtype: torch.dtype) -> torch.Tensor:
    """Newton-Schulz approximation of U V^T for g = U S V^T (g: a 2-D matrix).

    Each step maps x to p(x x^T) x, p(G) = a + b G + c G^2; so after k steps x_k = Q_k x_0 for
    an s x s matrix Q_k, s the smaller side, and the Gram matrix follows as G_k+1 = P G_k P.
    Iterating on those s x s matrices and multiplying by x_0 once does the same arithmetic in
    0.47x the work of the textbook loop for a 128 x 1152 bank (a third for wider ones; less
    whenever the longer side is over 1.5 times the shorter, as in every 3x3 conv here)."""
    a, b, c = NS_COEFFICIENTS
    x = g.to(dtype)
    wide = x.size(0) <= x.size(1)
    x = x if wide else x.T
    x = x / (x.norm() + 1e-7)  # the spectral norm <= the Frobenius norm <= 1
    gram = x @ x.T
    q = None
    for step in range(steps):
        p = torch.addmm(gram, gram, gram, beta=b, alpha=c)
        p.diagonal().add_(a)
        q = p if q is None else p @ q
        if step < steps - 1:
            gram = p @ gram @ p
    x = q @ x
    return (x if wide else x.T).to(g.dtype)


class MuonSGD(torch.optim.Optimizer):
    """One optimizer, two rules: groups with "orthogonalize" take Muon's step (momentum and
    Nesterov of their own, no weight decay), the others torch's SGD."""

    def __init__(self, params: Iterable[dict[str, Any]], lr: float, momentum: float,
                 nesterov: bool, ns_steps: int = NS_STEPS, ns_dtype: torch.dtype = torch.float32
                 ) -> None:
        defaults = dict(lr=lr, momentum=momentum, nesterov=nesterov, weight_decay=0.0,
                        orthogonalize=False)
        super().__init__(params, defaults)
        self.ns_steps, self.ns_dtype = ns_steps, ns_dtype

    @torch.no_grad()
    def step(self, closure: None = None) -> None:
        for group in self.param_groups:
            params = [p for p in group["params"] if p.grad is not None]
            if not params:
                continue
            if group["orthogonalize"]:
                if group["lr"] > 0:  # lr 0 (freeze_epochs' frozen body): not even the rescaling
                    self._muon(params, group)
                continue
            buffers = [self.state[p].get("momentum_buffer") for p in params]
            sgd(params, [p.grad for p in params], buffers, weight_decay=group["weight_decay"],
                momentum=group["momentum"], lr=group["lr"], dampening=0.0,
                nesterov=group["nesterov"], maximize=False)
            for p, buf in zip(params, buffers):
                self.state[p]["momentum_buffer"] = buf

    def _muon(self, params: list[torch.Tensor], group: dict[str, Any]) -> None:
        momentum = group["momentum"]
        for p in params:
            state = self.state[p]
            if "momentum_buffer" not in state:
                state["momentum_buffer"] = torch.zeros_like(p)
            buf = state["momentum_buffer"].mul_(momentum).add_(p.grad)
            g = p.grad.add(buf, alpha=momentum) if group["nesterov"] else buf
            rows = len(p)
            p.mul_(rows ** 0.5 / p.norm().clamp_min(1e-12))
            matrix = g.reshape(rows, -1)
            dtype = (self.ns_dtype if min(matrix.shape) >= LOW_PRECISION_MIN_SIDE
                     else torch.float32)
            update = orthogonalize(matrix, self.ns_steps, dtype)
            p.add_(update.view_as(p), alpha=-group["lr"])

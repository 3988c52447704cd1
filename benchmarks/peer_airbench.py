"""The peer of the `fast` recipe in time_to_accuracy.py --peer: airbench94 (Keller Jordan, "94%
on CIFAR-10 in 3.29 seconds on a single GPU", arXiv 2404.00498; public code
github.com/KellerJordan/cifar10-airbench, airbench94.py), written here from the paper and that
code, ported to Fashion-MNIST and the CPU.

    python benchmarks/peer_airbench.py [--epochs 9.9] [--seed 0] [--threads 1] [--json]
    python benchmarks/peer_airbench.py --tiny --json      # seconds: the test suite's check

What is airbench94's, unchanged: the net (a frozen 2x2 whitening conv with a bias, GELU; three
groups of conv-maxpool-BN-GELU-conv-BN-GELU, widths 64/256/256; 3x3 max-pool; a bias-free
linear head scaled by 1/9; every conv Dirac-initialised; BN eps 1e-12, momentum 0.6 in its
convention (0.4 in torch's), no learnt BN scales), the whitening initialisation from the
patches of 5,000 training images, Nesterov SGD with momentum 0.85 at batch 1024 with its
decoupled lr 11.5 and weight decay 0.0153 per 1024 examples, the BN biases at 64x the lr, a
summed label-smoothed (0.2) cross-entropy, the triangular lr schedule (0.2 -> 1 at 23% -> 0.07),
9.9 epochs, lookahead (every 5 steps, decay 0.95 ** 5 x (step / total) ** 3, from epoch 3,
the average copied back at each epoch end), the whitening bias trained for the first 3 epochs
only, 2 px reflect-padded random translations, the alternating flip, and its test-time
augmentation level 2 (mirror + 1 px translations) counted in the time.

What changed, and why:
- data: Fashion-MNIST (1 channel, 28 px, 60,000 training images) instead of CIFAR-10, read by
  reslab's dataset reader (reslab.data.datasets.load_source; reading is not timed) and
  normalised with its training-set mean and std. The whitening conv therefore has 2 x 1 x 2 x 2
  = 8 filters instead of 24; at 28 px the feature maps are 27, 13, 6 and 3 px, so the final
  3x3 max-pool still leaves 1 px, as at 32 px.
- precision and device: the CPU, fp32 (or bf16 autocast with --amp bf16, as reslab's amp
  picks on CPUs that run it natively) in channels-last, instead of fp16 weights on a CUDA GPU;
  no torch.compile (reslab's `fast` runs eager too).
- the epoch counts of lookahead's start and of the whitening bias (3 of 9.9) are fractions of
  the run (3 / 9.9 of it), so that --epochs scales them; at the default they are airbench's.
- evaluation: after every epoch, without TTA, for the accuracy-vs-time curve; not counted in
  the training time (airbench evaluates after every epoch too, outside its timer). The final
  TTA evaluation is counted, as airbench counts it.
- --tiny: synthetic data, narrow net, 2 epochs: checks the whole script in seconds.

Prints a JSON summary with --json (and nothing else on stdout): training seconds, the curve
(training seconds at each epoch end, test top-1 without TTA) and the final test top-1 with TTA.
"""
from __future__ import annotations

import argparse
import json
import math
import sys
import time
from dataclasses import asdict, dataclass

import torch
import torch.nn.functional as F
from torch import nn

from reslab.data.datasets import load_source
from reslab.errors import UserError


@dataclass(frozen=True)
class Hyper:
    """airbench94's hyper-parameters (its `hyp`), the epoch counts as fractions of the run."""
    epochs: float = 9.9
    batch_size: int = 1024
    lr: float = 11.5              # per 1024 examples, decoupled from momentum
    momentum: float = 0.85
    weight_decay: float = 0.0153  # per 1024 examples, decoupled from the lr
    bias_scaler: float = 64.0     # the BN biases' lr multiplier (not their decay)
    label_smoothing: float = 0.2
    ema_start: float = 3 / 9.9    # lookahead from this fraction of the run
    ema_decay: float = 0.95
    ema_pow: float = 3.0
    ema_every: int = 5
    whiten_bias_until: float = 3 / 9.9
    translate: int = 2
    whiten_kernel: int = 2
    whiten_images: int = 5000
    bn_momentum: float = 0.6      # airbench's convention: the old statistics' weight
    base_width: int = 64
    scale: float = 1 / 9
    tta_level: int = 2


class BatchNorm(nn.BatchNorm2d):
    """airbench's BN: eps 1e-12, no learnt scale, its momentum convention."""

    def __init__(self, channels: int, momentum: float) -> None:
        super().__init__(channels, eps=1e-12, momentum=1 - momentum)
        self.weight.requires_grad = False


def conv(cin: int, cout: int, kernel: int = 3, padding: str | int = "same",
         bias: bool = False) -> nn.Conv2d:
    """A conv whose first min(cin, cout) filters start as the identity (Dirac)."""
    layer = nn.Conv2d(cin, cout, kernel, padding=padding, bias=bias)
    with torch.no_grad():
        if bias:
            layer.bias.zero_()
        nn.init.dirac_(layer.weight[:cin])
    return layer


class ConvGroup(nn.Module):
    def __init__(self, cin: int, cout: int, momentum: float) -> None:
        super().__init__()
        self.conv1, self.pool = conv(cin, cout), nn.MaxPool2d(2)
        self.norm1, self.conv2 = BatchNorm(cout, momentum), conv(cout, cout)
        self.norm2, self.activ = BatchNorm(cout, momentum), nn.GELU()

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = self.activ(self.norm1(self.pool(self.conv1(x))))
        return self.activ(self.norm2(self.conv2(x)))


class Scale(nn.Module):
    def __init__(self, factor: float) -> None:
        super().__init__()
        self.factor = factor

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return x * self.factor


def make_net(h: Hyper, in_chans: int, classes: int) -> nn.Sequential:
    widths = (h.base_width, 4 * h.base_width, 4 * h.base_width)
    whiten = 2 * in_chans * h.whiten_kernel ** 2
    net = nn.Sequential(conv(in_chans, whiten, h.whiten_kernel, padding=0, bias=True), nn.GELU(),
                        ConvGroup(whiten, widths[0], h.bn_momentum),
                        ConvGroup(widths[0], widths[1], h.bn_momentum),
                        ConvGroup(widths[1], widths[2], h.bn_momentum),
                        nn.MaxPool2d(3), nn.Flatten(), nn.Linear(widths[2], classes, bias=False),
                        Scale(h.scale))
    net[0].weight.requires_grad = False
    return net.to(memory_format=torch.channels_last)


@torch.no_grad()
def init_whitening(layer: nn.Conv2d, images: torch.Tensor, eps: float = 5e-4) -> None:
    """The filters: eigenvectors of the patches' (uncentred) covariance over sqrt(eigenvalue
    + eps), then their negatives, as airbench94."""
    k = layer.kernel_size
    patches = F.unfold(images.float(), k).transpose(1, 2).reshape(-1, layer.in_channels
                                                                   * k[0] * k[1])
    cov = patches.T @ patches / len(patches)
    values, vectors = torch.linalg.eigh(cov)
    filters = (vectors.flip(1) / torch.sqrt(values.flip(0) + eps)).T
    filters = filters.reshape(-1, layer.in_channels, *k)
    layer.weight.copy_(torch.cat([filters, -filters]))


def batch_crop(padded: torch.Tensor, side: int, g: torch.Generator) -> torch.Tensor:
    """A random side x side window of each padded image (every image its own shift)."""
    r = (padded.shape[-1] - side) // 2
    shifts = torch.randint(0, 2 * r + 1, (len(padded), 2), generator=g)
    rows = torch.empty(*padded.shape[:2], side, padded.shape[-1], dtype=padded.dtype)
    for s in range(2 * r + 1):
        sel = shifts[:, 0] == s
        rows[sel] = padded[sel, :, s:s + side]
    out = torch.empty(*padded.shape[:2], side, side, dtype=padded.dtype)
    for s in range(2 * r + 1):
        sel = shifts[:, 1] == s
        out[sel] = rows[sel, :, :, s:s + side]
    return out


class Lookahead:
    """airbench94's lookahead: an EMA of the weights copied back into them at each update."""

    def __init__(self, net: nn.Module) -> None:
        self.avg = {k: v.clone() for k, v in net.state_dict().items()}

    @torch.no_grad()
    def update(self, net: nn.Module, decay: float) -> None:
        for avg, v in zip(self.avg.values(), net.state_dict().values()):
            if v.dtype.is_floating_point:
                avg.lerp_(v, 1 - decay)
                v.copy_(avg)


def triangle(steps: int, start: float, end: float, peak: float) -> list[float]:
    """The lr factor at steps 0..steps: start -> 1 at peak x steps -> end, linearly."""
    top = max(1, int(peak * steps))
    return [start + (1 - start) * i / top if i < top else
            1 + (end - 1) * (i - top) / max(1, steps - top) for i in range(steps + 1)]


@torch.no_grad()
def evaluate(net: nn.Module, x: torch.Tensor, y: torch.Tensor, tta: int,
             amp: torch.dtype | None) -> float:
    """Test top-1; tta 2: airbench's mirror + 1 px translations (logits averaged)."""
    net.eval()

    def mirror(v: torch.Tensor) -> torch.Tensor:
        return 0.5 * (net(v) + net(v.flip(-1))) if tta >= 1 else net(v)

    def infer(v: torch.Tensor) -> torch.Tensor:
        logits = mirror(v)
        if tta < 2:
            return logits
        h, w = v.shape[-2:]
        padded = F.pad(v, (1,) * 4, mode="reflect")
        shifted = [padded[..., :h, :w], padded[..., 2:, 2:]]
        return 0.5 * logits + 0.25 * (mirror(shifted[0]) + mirror(shifted[1]))

    hits = 0
    with torch.autocast("cpu", dtype=amp or torch.bfloat16, enabled=amp is not None):
        for xs, ys in zip(x.split(2000), y.split(2000)):
            xs = xs.contiguous(memory_format=torch.channels_last)
            hits += int((infer(xs).float().argmax(1) == ys).sum())
    net.train()
    return hits / len(y)


@dataclass
class Result:
    script: str
    data: str
    seed: int
    epochs: float
    steps: int
    threads: int
    precision: str
    train_s: float        # training, the whitening initialisation and the final TTA evaluation
    test_top1: float      # with TTA (tta_level)
    test_top1_no_tta: float
    curve: list[dict[str, float]]
    hyper: dict[str, float]


def load(spec: str) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor, torch.Tensor]:
    """Normalised float training and test images (N, C, H, W) and their labels."""
    src = load_source(spec)
    if src.test is None:
        raise UserError(f"{spec} has no test split")
    (xtr, ytr), (xte, yte) = src.train, src.test
    xtr, xte = xtr.float() / 255, xte.float() / 255
    mean = xtr.mean((0, 2, 3), keepdim=True)
    std = xtr.std((0, 2, 3), keepdim=True)
    return (xtr - mean) / std, ytr, (xte - mean) / std, yte


def train(h: Hyper, data: str, seed: int, amp: torch.dtype | None,
          log: bool = False) -> Result:
    torch.manual_seed(seed)
    g = torch.Generator().manual_seed(seed)
    xtr, ytr, xte, yte = load(data)
    classes = int(max(ytr.max(), yte.max())) + 1
    net = make_net(h, xtr.shape[1], classes)
    steps_per_epoch = len(xtr) // h.batch_size
    total = math.ceil(steps_per_epoch * h.epochs)
    kilostep = 1024 * (1 + 1 / (1 - h.momentum))  # Nesterov's step per unit gradient
    lr, wd = h.lr / kilostep, h.weight_decay * h.batch_size / kilostep
    lr_bias = lr * h.bias_scaler
    norm_biases = [p for n, p in net.named_parameters() if "norm" in n and p.requires_grad]
    others = [p for n, p in net.named_parameters() if "norm" not in n and p.requires_grad]
    opt = torch.optim.SGD([dict(params=norm_biases, lr=lr_bias, weight_decay=wd / lr_bias),
                           dict(params=others, lr=lr, weight_decay=wd / lr)],
                          momentum=h.momentum, nesterov=True)
    factors = triangle(total, start=0.2, end=0.07, peak=0.23)
    sched = torch.optim.lr_scheduler.LambdaLR(opt, lambda i: factors[min(i, total)])
    lookahead, step, train_s, curve = None, 0, 0.0, []

    t = time.perf_counter()
    init_whitening(net[0], xtr[:h.whiten_images])
    side = xtr.shape[-1]
    # alternating flip: each image's random mirror bit drawn once, all flipped in odd epochs
    bits = torch.rand(len(xtr), generator=g) < 0.5
    base = torch.where(bits[:, None, None, None], xtr.flip(-1), xtr)
    padded = F.pad(base, (h.translate,) * 4, mode="reflect") if h.translate else base
    train_s += time.perf_counter() - t

    epoch = 0
    while step < total:
        t = time.perf_counter()
        net[0].bias.requires_grad = epoch < h.whiten_bias_until * h.epochs
        images = batch_crop(padded, side, g) if h.translate else base
        if epoch % 2 == 1:
            images = images.flip(-1)
        order = torch.randperm(len(images), generator=g)
        for i in range(steps_per_epoch):
            idx = order[i * h.batch_size:(i + 1) * h.batch_size]
            x = images[idx].contiguous(memory_format=torch.channels_last)
            with torch.autocast("cpu", dtype=amp or torch.bfloat16, enabled=amp is not None):
                out = net(x)
            loss = F.cross_entropy(out.float(), ytr[idx], label_smoothing=h.label_smoothing,
                                   reduction="sum")
            opt.zero_grad(set_to_none=True)
            loss.backward()
            opt.step()
            sched.step()
            step += 1
            if step >= h.ema_start * total and step % h.ema_every == 0:
                if lookahead is None:
                    lookahead = Lookahead(net)
                else:
                    rho = h.ema_decay ** h.ema_every * (step / total) ** h.ema_pow
                    lookahead.update(net, rho)
            if step >= total:
                break
        if lookahead is not None:
            lookahead.update(net, 1.0)  # each epoch ends on the average
        epoch += 1
        train_s += time.perf_counter() - t
        top1 = evaluate(net, xte, yte, 0, amp)  # for the curve: outside the timer
        curve.append({"epoch": round(step / steps_per_epoch, 3), "time_s": round(train_s, 2),
                      "top1": top1})
        if log:
            print(f"epoch {curve[-1]['epoch']:.2f}: {train_s:.1f} s, test top1 {top1:.4f}",
                  file=sys.stderr, flush=True)
    t = time.perf_counter()
    tta_top1 = evaluate(net, xte, yte, h.tta_level, amp)
    train_s += time.perf_counter() - t
    curve.append({"epoch": round(step / steps_per_epoch, 3), "time_s": round(train_s, 2),
                  "top1": tta_top1, "tta": True})
    return Result("peer_airbench", data, seed, h.epochs, step, torch.get_num_threads(),
                  "bf16" if amp is torch.bfloat16 else "fp32", round(train_s, 2), tta_top1,
                  curve[-2]["top1"], curve, asdict(h))


TINY = dict(epochs=2.0, batch_size=64, base_width=4, whiten_images=256, ema_every=2)


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--data", default="fashion-mnist", help="a reslab dataset spec")
    p.add_argument("--epochs", type=float, default=Hyper.epochs)
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--base-width", type=int, default=Hyper.base_width,
                   help="the first group's width (the others 4x): airbench's 64 costs about "
                        "0.5 GFLOP per training image at 28 px; narrower is a change to list")
    p.add_argument("--threads", type=int, help="torch threads (default: torch's)")
    p.add_argument("--amp", choices=("off", "bf16"), default="off",
                   help="bf16 autocast (use where reslab's amp auto picks it)")
    p.add_argument("--tiny", action="store_true",
                   help=f"synthetic data, {TINY}: the whole script in seconds")
    p.add_argument("--json", action="store_true")
    args = p.parse_args(argv)
    if args.epochs <= 0 or args.base_width < 1 or (args.threads is not None
                                                     and args.threads < 1):
        p.error("--epochs, --base-width and --threads must be positive")
    return args


def main(argv: list[str] | None = None) -> Result:
    args = parse_args(argv)
    if args.threads:
        torch.set_num_threads(args.threads)
    torch.set_flush_denormal(True)  # as reslab's engine does on the CPU
    given = {k: v for k, v in (("epochs", args.epochs), ("base_width", args.base_width))
             if v != getattr(Hyper, k)}
    h = Hyper(**(TINY if args.tiny else {}) | given)
    data = "synthetic:512x1x28x28:10" if args.tiny else args.data
    try:
        result = train(h, data, args.seed, torch.bfloat16 if args.amp == "bf16" else None,
                       log=not args.json)
    except UserError as e:  # a bad --data: one line, exit 2
        print(f"error: {e}", file=sys.stderr)
        raise SystemExit(2) from None
    if args.json:
        print(json.dumps(asdict(result)))
    else:
        print(f"{result.steps} steps, {result.train_s:.1f} s: test top1 {result.test_top1:.4f} "
              f"with TTA ({result.test_top1_no_tta:.4f} without)", file=sys.stderr)
    return result


if __name__ == "__main__":
    main()

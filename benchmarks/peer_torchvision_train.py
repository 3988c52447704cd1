"""The peer of `reslab train` in benchmarks/training.py: a conventional torchvision training
script, written the way the PyTorch tutorials and most repositories write one.

    python benchmarks/peer_torchvision_train.py [--iters 300] [--batch-size 128] [--workers 0]

torchvision.datasets.FashionMNIST over the same idx files, a DataLoader with per-sample PIL
transforms (RandomCrop(28, padding=2), RandomHorizontalFlip, ToTensor, Normalize), an eager fp32
NCHW model, SGD with nesterov momentum, then one test-set evaluation. The idx files are
decompressed into the layout torchvision expects (root/FashionMNIST/raw/) in a temporary
directory, as torchvision's own extraction would do: Debian's .gz files are recompressed, so
their checksums differ from the ones torchvision's download step verifies, and it would try to
download instead of extracting them.

The model is reslab's resnet20 (reslab.create_model): torchvision has no CIFAR-style resnet20,
and with the same architecture only the way of training differs. The hyper-parameters are the
`fast` recipe's (lr 0.2 one-cycle, momentum 0.9 nesterov, weight decay 5e-4, label smoothing
0.1, batch 128), so both runs do the same work.

--workers: 0 by default, i.e. the transforms run in the training process. The usual choice
is one loader process per core (2 here), but on a 2-core machine the loader processes take
their CPU time from the two training threads, whose every operator then waits for a
descheduled thread, and each DataLoader (training, then test) pays for starting its workers;
decoding in-process costs ~10 ms per batch of 128 instead. In a trial on this machine (40
iterations, 2 alternated rounds, under load) 0 workers finished first in both rounds (81 vs
105 s, 77 vs 82 s whole process), so 0 gives the peer its best showing; --workers 2 is there to
check on other machines.

Prints a JSON summary with --json (and nothing else on stdout).
"""
from __future__ import annotations

import argparse
import gzip
import json
import shutil
import sys
import tempfile
import time
from pathlib import Path

import torch
import torch.nn.functional as F
from torch.utils.data import DataLoader
from torchvision import datasets, transforms

from reslab import create_model

FILES = ("train-images-idx3-ubyte.gz", "train-labels-idx1-ubyte.gz",
         "t10k-images-idx3-ubyte.gz", "t10k-labels-idx1-ubyte.gz")
MEAN, STD = (0.2860,), (0.3530,)  # Fashion-MNIST training-set statistics


def parse_args() -> argparse.Namespace:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--iters", type=int, default=300)
    p.add_argument("--batch-size", type=int, default=128)
    p.add_argument("--workers", type=int, default=0,
                   help="DataLoader processes (default 0: see the module docstring)")
    p.add_argument("--lr", type=float, default=0.2)
    p.add_argument("--data-dir", type=Path, default=Path("/usr/share/datasets/fashion-mnist"))
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--json", action="store_true")
    return p.parse_args()


def fashion_mnist(data_dir: Path, root: Path) -> tuple[datasets.FashionMNIST,
                                                       datasets.FashionMNIST]:
    """Train and test sets, read by torchvision from the idx files, decompressed first where
    torchvision's own extraction would put them (the cost counts: it is the peer's start-up)."""
    raw = root / "FashionMNIST" / "raw"
    raw.mkdir(parents=True)
    for name in FILES:
        with gzip.open(data_dir / name, "rb") as src, open(raw / name[:-3], "wb") as dst:
            shutil.copyfileobj(src, dst)
    train_tf = transforms.Compose([transforms.RandomCrop(28, padding=2),
                                   transforms.RandomHorizontalFlip(), transforms.ToTensor(),
                                   transforms.Normalize(MEAN, STD)])
    test_tf = transforms.Compose([transforms.ToTensor(), transforms.Normalize(MEAN, STD)])
    train = datasets.FashionMNIST(str(root), train=True, transform=train_tf)
    test = datasets.FashionMNIST(str(root), train=False, transform=test_tf)
    return train, test


def train(model: torch.nn.Module, loader: DataLoader, iters: int, lr: float) -> float:
    """iters SGD steps (epochs restart the loader as needed); returns the last loss."""
    opt = torch.optim.SGD(model.parameters(), lr=lr, momentum=0.9, nesterov=True,
                          weight_decay=5e-4)
    sched = torch.optim.lr_scheduler.OneCycleLR(opt, max_lr=lr, total_steps=iters)
    model.train()
    step, loss = 0, torch.tensor(0.0)
    while step < iters:
        for x, y in loader:
            loss = F.cross_entropy(model(x), y, label_smoothing=0.1)
            opt.zero_grad()
            loss.backward()
            opt.step()
            sched.step()
            step += 1
            if step == iters:
                break
    return loss.item()


@torch.no_grad()
def evaluate(model: torch.nn.Module, loader: DataLoader) -> dict[str, float]:
    model.eval()
    hits, loss_sum, n = 0, 0.0, 0
    for x, y in loader:
        logits = model(x)
        loss_sum += F.cross_entropy(logits, y, reduction="sum").item()
        hits += (logits.argmax(1) == y).sum().item()
        n += len(y)
    return {"top1": hits / n, "loss": loss_sum / n, "n": n}


def main() -> None:
    args = parse_args()
    started = time.perf_counter()
    torch.manual_seed(args.seed)
    with tempfile.TemporaryDirectory(prefix="peer-fmnist-") as tmp:
        train_set, test_set = fashion_mnist(args.data_dir, Path(tmp))
        loader = DataLoader(train_set, batch_size=args.batch_size, shuffle=True,
                            num_workers=args.workers, drop_last=True,
                            persistent_workers=args.workers > 0)
        test_loader = DataLoader(test_set, batch_size=256, num_workers=args.workers)
        model = create_model("resnet20", num_classes=10, in_chans=1)
        t = time.perf_counter()
        last_loss = train(model, loader, args.iters, args.lr)
        train_s = time.perf_counter() - t
        t = time.perf_counter()
        test = evaluate(model, test_loader)
        eval_s = time.perf_counter() - t
    summary = {"script": "peer_torchvision_train", "model": "resnet20", "iters": args.iters,
               "batch_size": args.batch_size, "workers": args.workers,
               "train_s": round(train_s, 2), "eval_s": round(eval_s, 2),
               "wall_s": round(time.perf_counter() - started, 2),
               "img_s": round(args.iters * args.batch_size / train_s, 1),
               "last_loss": round(last_loss, 4), "test": test}
    if args.json:
        print(json.dumps(summary))
    else:
        print(f"{args.iters} iterations in {train_s:.1f} s ({summary['img_s']} img/s), test "
              f"top1 {test['top1']:.4f} (evaluation {eval_s:.1f} s)", file=sys.stderr)


if __name__ == "__main__":
    main()

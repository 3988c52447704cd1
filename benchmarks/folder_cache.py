"""Small image folders decoded once and kept in memory vs decoded every epoch, side by side in
one run: the same default command (`reslab train --data imagefolder:DIR`, a fixed number of
iterations and 2 threads so both arms do the same work), alternating the arms. Each arm's
whole-process wall seconds and CPU seconds (workers included; the steadier number on a busy
machine) are reported.

    python benchmarks/folder_cache.py [--iters 120] [--repeats 2]

"every epoch" is the code before the cache (reslab.data.folders.CACHE_BYTES = 0). Both arms
train bit-identically: the final held-out top-1 and loss must agree exactly, and are checked.
Writes docs/results/first-contact-decode-once.json.
"""
from __future__ import annotations

import argparse
import json
import resource
import tempfile
from pathlib import Path

from common import PYTHON, median, print_table, run_timed, save_results
from small_folders import FOLDERS, make, source_images

ARMS = {"kept": "", "every epoch": "import reslab.data.folders as f; f.CACHE_BYTES = 0; "}


def cpu_seconds() -> float:
    """User + system CPU seconds of this process's finished children (decoding workers
    included): less sensitive than wall time to other programs on a shared machine."""
    r = resource.getrusage(resource.RUSAGE_CHILDREN)
    return r.ru_utime + r.ru_stime


def train(arm: str, data: Path, out: Path, iters: int) -> tuple[float, float, dict]:
    code = (f"{ARMS[arm]}from reslab.cli import main; raise SystemExit(main(["
            f"'train', '--data', 'imagefolder:{data}', '--iters', '{iters}', '--out', "
            f"'{out}', '--json', '--quiet', '--threads', '2']))")
    cpu = cpu_seconds()
    wall, stdout = run_timed([PYTHON, "-c", code])
    cpu = cpu_seconds() - cpu
    summary = json.loads(stdout)
    return wall, cpu, {"top1": summary["test"]["top1"], "loss": summary["test"]["loss"]}


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--iters", type=int, default=120)
    p.add_argument("--repeats", type=int, default=2)
    p.add_argument("--only", nargs="*", default=["30-3c-8px", "300-3c-28px", "3000-10c-32px"])
    args = p.parse_args()
    x, y = source_images("fashion-mnist")
    rows = []
    with tempfile.TemporaryDirectory() as tmp:
        for folder in (f for f in FOLDERS if f.name in args.only):
            path, _ = make(folder, x, y, Path(tmp))
            walls: dict[str, list[float]] = {arm: [] for arm in ARMS}
            cpus: dict[str, list[float]] = {arm: [] for arm in ARMS}
            finals = {}
            for rep in range(args.repeats):
                for arm in ARMS if rep % 2 == 0 else reversed(list(ARMS)):
                    out = Path(tmp) / "run" / f"{folder.name}-{arm}-{rep}".replace(" ", "-")
                    wall, cpu, final = train(arm, path, out, args.iters)
                    walls[arm].append(wall)
                    cpus[arm].append(cpu)
                    finals.setdefault(arm, final)
                    if final != finals[arm] or final != next(iter(finals.values())):
                        raise SystemExit(f"{folder.name}: the arms trained differently "
                                         f"({finals} vs {final})")
            kept, every = median(walls["kept"]), median(walls["every epoch"])
            kept_cpu, every_cpu = median(cpus["kept"]), median(cpus["every epoch"])
            row = {"name": folder.name, "images": folder.images, "side": folder.side,
                   "iters": args.iters, "kept_s": kept, "every_epoch_s": every,
                   "speedup": every / kept, "kept_cpu_s": kept_cpu,
                   "every_epoch_cpu_s": every_cpu, "cpu_ratio": every_cpu / kept_cpu,
                   "top1": finals["kept"]["top1"], "walls": walls, "cpus": cpus}
            print(json.dumps(row), flush=True)
            rows.append(row)
    print_table("small folders: decoded once vs every epoch (median wall seconds)", rows,
                [("name", "folder", ""), ("iters", "iterations", "d"),
                 ("every_epoch_s", "every epoch s", ".1f"), ("kept_s", "kept s", ".1f"),
                 ("speedup", "speed-up", ".2f"), ("every_epoch_cpu_s", "every epoch CPU s", ".1f"),
                 ("kept_cpu_s", "kept CPU s", ".1f"), ("cpu_ratio", "CPU ratio", ".2f"),
                 ("top1", "held-out top1 (both)", ".3f")])
    save_results("first-contact-decode-once", vars(args), rows)


if __name__ == "__main__":
    main()

"""Runs every benchmark with its defaults (`make bench`), one process each, one after the
other (never side by side: they would time each other); each writes its docs/results/ file.

    python benchmarks/run_all.py [--only inference training ...] [--skip time_to_accuracy]

inference (~5 min on an idle 2-core machine), training (~5-10 min), time_to_accuracy (the whole
`fast` recipe, ~5 min), profile_train (~2 min). Extra arguments after `--` go to every script,
e.g. `-- --threads 1`.
"""
from __future__ import annotations

import argparse
import subprocess
import sys
import time

from common import PYTHON, ROOT

SCRIPTS = ("inference", "training", "time_to_accuracy", "profile_train")


def main() -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--only", nargs="+", choices=SCRIPTS, default=list(SCRIPTS))
    p.add_argument("--skip", nargs="+", choices=SCRIPTS, default=[])
    p.add_argument("extra", nargs="*", help="arguments passed to every script (after --)")
    args = p.parse_args()
    status = []
    for name in (s for s in args.only if s not in args.skip):
        print(f"\n=== {name} ===", flush=True)
        start = time.perf_counter()
        rc = subprocess.call([PYTHON, str(ROOT / "benchmarks" / f"{name}.py"), *args.extra],
                             cwd=ROOT)
        status.append((name, rc, time.perf_counter() - start))
    print("\n=== summary ===")
    for name, rc, seconds in status:
        verdict = "ok" if rc == 0 else f"FAILED (exit {rc})"
        print(f"{name:<18} {verdict:<16} {seconds / 60:5.1f} min")
    return max((rc != 0 for _, rc, _ in status), default=0)


if __name__ == "__main__":
    sys.exit(main())

"""reslab/memory.py: freed activations stay in the heap, so a step does not fault their pages in
again (glibc's defaults map blocks of a few MiB on their own and unmap them when freed)."""
from __future__ import annotations

import os
import subprocess
import sys

import pytest

from reslab.memory import keep_freed_memory

# A fresh process makes a 12 MiB tensor: is it a block mapped on its own (glibc's mallinfo2
# hblkhd, which munmap returns to the OS on free)? Then four such tensors made and freed three
# times, as steps make and free their activations: the page faults of each round.
ROUNDS = """
import ctypes, resource, sys, torch
from reslab.memory import keep_freed_memory

class Info(ctypes.Structure):
    _fields_ = [(name, ctypes.c_size_t) for name in (
        "arena", "ordblks", "smblks", "hblks", "hblkhd", "usmblks", "fsmblks", "uordblks",
        "fordblks", "keepcost")]

libc = ctypes.CDLL(None)
libc.mallinfo2.restype = Info
print(keep_freed_memory() if sys.argv[1] == "keep" else None)
mapped = libc.mallinfo2().hblkhd
block = torch.ones(3 << 20)
print(libc.mallinfo2().hblkhd - mapped >= 12 << 20)
del block
faults = []
for _ in range(6):
    before = resource.getrusage(resource.RUSAGE_SELF).ru_minflt
    blocks = [torch.ones(3 << 20) for _ in range(4)]
    del blocks
    faults.append(resource.getrusage(resource.RUSAGE_SELF).ru_minflt - before)
print(faults)
"""


def _rounds(mode: str, **env: str) -> tuple[bool, bool, list[int]]:
    clean = {k: v for k, v in os.environ.items()
             if not k.startswith("MALLOC_") and k != "GLIBC_TUNABLES"}
    out = subprocess.run([sys.executable, "-c", ROUNDS, mode], env=clean | env, text=True,
                         capture_output=True, check=True, timeout=120).stdout.split("\n")
    return out[0] == "True", out[1] == "True", eval(out[2])


linux = pytest.mark.skipif(not sys.platform.startswith("linux"), reason="glibc's malloc")


@linux
def test_freed_blocks_stay_in_the_heap_and_are_reused_without_page_faults():
    kept, mapped, faults = _rounds("keep")
    assert kept and not mapped
    assert faults[-2:] == [0, 0]  # 48 MiB made again without one fault, once the heap holds it
    kept, mapped, _ = _rounds("default")
    assert not kept and mapped  # glibc's own choice: mapped, so unmapped again when freed


@linux
def test_a_users_own_malloc_settings_are_left_alone():
    kept, mapped, _ = _rounds("keep", MALLOC_TRIM_THRESHOLD_="0")
    assert not kept and mapped


def test_keeping_is_set_once_per_process():
    assert keep_freed_memory() is keep_freed_memory()

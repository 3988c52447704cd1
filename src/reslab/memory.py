"""Keep freed memory for the next training step instead of giving it back to the OS.

A training step allocates and frees the same activations every iteration. With glibc's default
settings, blocks of a few MiB and more go back to the kernel when freed (unmapped, or trimmed
from the top of the heap), so every step faults their pages in again, each one zero-filled by
the kernel: on Zen 5 at one thread, resnet9p's 28 px step at batch 256 took 2,000-17,000 page
faults and 111-140 ms, against 0 faults and 108-112 ms with the settings below (the faults also
load the memory bus that a second process on the machine shares). Raising glibc's mmap and trim
thresholds keeps those blocks in the heap for reuse; what a process has used at its peak stays
its size until it exits, which is what a training or serving process needs anyway.

Only glibc has these knobs; elsewhere (musl, macOS, Windows), and where the user set them
(MALLOC_MMAP_THRESHOLD_, MALLOC_TRIM_THRESHOLD_, GLIBC_TUNABLES), nothing changes.
"""
from __future__ import annotations

import ctypes
import os

M_TRIM_THRESHOLD, M_MMAP_THRESHOLD = -1, -3  # glibc's <malloc.h>
MMAP_THRESHOLD = 32 << 20   # glibc's upper bound: blocks up to 32 MiB come from the heap
TRIM_THRESHOLD = 1 << 30    # free heap top kept up to 1 GiB
USER_SETTINGS = ("MALLOC_MMAP_THRESHOLD_", "MALLOC_TRIM_THRESHOLD_", "GLIBC_TUNABLES")

_kept: bool | None = None


def keep_freed_memory() -> bool:
    """Sets glibc's thresholds once per process; True where they are in force."""
    global _kept
    if _kept is None:
        _kept = _set_thresholds()
    return _kept


def _set_thresholds() -> bool:
    if any(os.environ.get(name) for name in USER_SETTINGS):
        return False
    try:
        libc = ctypes.CDLL(None)  # the C library this process runs on
        libc.gnu_get_libc_version  # glibc's own symbol: musl's mallopt does nothing
        mallopt = libc.mallopt
    except (OSError, AttributeError):
        return False
    return bool(mallopt(M_MMAP_THRESHOLD, MMAP_THRESHOLD) == 1
                and mallopt(M_TRIM_THRESHOLD, TRIM_THRESHOLD) == 1)

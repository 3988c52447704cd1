"""Shared test settings."""
import os

import pytest
import torch


@pytest.fixture(autouse=True, scope="session")
def _fast_cpu():
    """One thread: tiny models gain nothing from intra-op threads, and on a shared, busy CPU the
    threads' synchronisation makes each op wait for a descheduled peer (10-40x slower).
    Flushed denormals: deep plain nets at init carry subnormal floats (the vanishing signals of
    section 4.1), 10-20x slower on the CPU (plain101 forward+backward: 12 s instead of 0.9 s)."""
    before = torch.get_num_threads()
    torch.set_num_threads(1)
    torch.set_flush_denormal(True)
    yield
    torch.set_flush_denormal(False)
    torch.set_num_threads(before)


@pytest.fixture(autouse=True, scope="session")
def _no_fsync():
    """os.fsync does nothing in the test process: it makes written data survive a power cut,
    which no test can observe, and costs 4-12 ms a call on this machine's disk (every metrics
    line and every atomic write of a run: 1,366 calls, 17 s, in test_paper, test_run_record and
    test_own_images). The writes, renames and their order are unchanged; subprocesses keep the
    real call (test_hostile blocks it there to catch a write half-way)."""
    patch = pytest.MonkeyPatch()
    patch.setattr(os, "fsync", lambda fd: None)
    yield
    patch.undo()

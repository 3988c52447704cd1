"""Shared test settings."""
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

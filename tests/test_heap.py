import pytest
import torch

from densenet_exp.models import densenet_bc, heap

needs_glibc = pytest.mark.skipif(not heap.available(), reason="needs glibc's malloc and /proc")


@pytest.fixture
def fresh(monkeypatch):
    """A fresh trimming state that trims at every check (no slack threshold, no time budget)."""
    monkeypatch.setattr(heap, "state", heap._State())
    # below any difference of resident and in-use bytes from the floor, which can go negative
    monkeypatch.setattr(heap, "SLACK_BYTES", -(2**62))
    monkeypatch.setattr(heap, "TIME_BUDGET", 1e12)
    return heap.state


@needs_glibc
def test_trimming_returns_freed_heap_pages_to_the_os(fresh, monkeypatch):
    monkeypatch.setattr(heap, "SLACK_BYTES", 32 * 2**20)
    heap.release_if_slack()  # the first call trims what came before and sets the floor
    # 96 MB of 64 KB chunks (heap, not mmap), written, then freed but for a last one that keeps
    # the heap from shrinking back from its top by itself
    chunks = [b"x" * (64 * 2**10) for _ in range(1536)]
    last = b"y" * (64 * 2**10)
    del chunks
    resident = heap._resident_bytes()
    assert heap.release_if_slack()
    assert resident - heap._resident_bytes() > 48 * 2**20
    assert fresh.trims == 2 and fresh.released > 48 * 2**20
    assert not heap.release_if_slack()  # nothing left over the threshold
    del last


@needs_glibc
def test_the_time_budget_spaces_trims(fresh, monkeypatch):
    monkeypatch.setattr(heap, "TIME_BUDGET", 1e-9)  # any trim's cost buys a long pause
    assert heap.release_if_slack()
    assert not heap.release_if_slack()
    assert fresh.trims == 1


def test_never_trims_when_off_or_for_other_devices(fresh, monkeypatch):
    assert not heap.release_if_slack("cuda")
    assert not heap.release_if_slack(torch.device("meta"))
    monkeypatch.setattr(heap, "SLACK_BYTES", None)
    assert not heap.release_if_slack()
    assert fresh.trims == 0


@needs_glibc
@pytest.mark.parametrize("memory_efficient", [False, True])
def test_memory_efficient_training_checks_the_heap_at_every_layer(fresh, memory_efficient):
    model = densenet_bc(16, growth_rate=4, memory_efficient=memory_efficient)  # 2 layers/block
    model(torch.randn(2, 3, 8, 8)).sum().backward()
    if not memory_efficient:
        assert fresh.trims == 0
        return
    # 6 dense layers forward; backward: their 12 BN-act-conv readers and the 2 transitions
    assert fresh.trims == 6 + 12 + 2
    model.eval()
    before = fresh.trims
    with torch.no_grad():
        model(torch.randn(2, 3, 8, 8))
    assert fresh.trims == before  # inference holds no activations: nothing to check

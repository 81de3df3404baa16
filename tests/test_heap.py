import pytest
import torch

from densenet_exp import heap
from densenet_exp.heap import HeapTrimmer
from densenet_exp.models import densenet_bc

needs_glibc = pytest.mark.skipif(not heap.available(), reason="needs glibc's malloc and /proc")


@pytest.fixture
def fresh() -> HeapTrimmer:
    """A trimmer that trims at every check (no slack threshold, no time budget)."""
    # below any difference of resident and in-use bytes from the floor, which can go negative
    return HeapTrimmer(slack_bytes=-(2**62), time_budget=1e12)


@needs_glibc
def test_trimming_returns_freed_heap_pages_to_the_os(fresh):
    fresh.slack_bytes = 32 * 2**20
    fresh()  # the first call trims what came before and sets the floor
    # 96 MB of 64 KB chunks (heap, not mmap), written, then freed but for a last one that keeps
    # the heap from shrinking back from its top by itself
    chunks = [b"x" * (64 * 2**10) for _ in range(1536)]
    last = b"y" * (64 * 2**10)
    del chunks
    resident = heap._resident_bytes()
    assert fresh()
    assert resident - heap._resident_bytes() > 48 * 2**20
    assert fresh.trims == 2 and fresh.released > 48 * 2**20
    assert not fresh()  # nothing left over the threshold
    del last


@needs_glibc
def test_the_time_budget_spaces_trims(fresh):
    fresh.time_budget = 1e-9  # any trim's cost buys a long pause
    assert fresh()
    assert not fresh()
    assert fresh.trims == 1


def test_never_trims_for_other_devices(fresh):
    assert not fresh("cuda")
    assert not fresh(torch.device("meta"))
    assert fresh.trims == 0


@needs_glibc
@pytest.mark.parametrize("memory_efficient", [False, True])
def test_memory_efficient_training_checks_the_heap_at_every_layer(fresh, memory_efficient):
    model = densenet_bc(16, growth_rate=4, memory_efficient=memory_efficient)  # 2 layers/block
    model.set_memory_hook(fresh)
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


def test_a_model_nobody_hands_a_trimmer_never_trims(fresh, monkeypatch):
    calls = []
    monkeypatch.setattr(HeapTrimmer, "__call__", lambda self, device="cpu": calls.append(device))
    model = densenet_bc(16, growth_rate=4, memory_efficient=True)
    model(torch.randn(2, 3, 8, 8)).sum().backward()
    assert calls == []  # the model itself never touches the process's heap
    model.set_memory_hook(fresh)
    model(torch.randn(2, 3, 8, 8)).sum().backward()
    assert len(calls) == 6 + 12 + 2


@needs_glibc
@pytest.mark.parametrize("heap_trim", [True, False])
def test_the_engine_hands_the_trimmer_to_the_model_unless_trainer_heap_trim_is_off(heap_trim):
    from conftest import TINY, compose_cfg

    from densenet_exp.config import to_typed
    from densenet_exp.distributed import DistContext
    from densenet_exp.engine.build import build

    overrides = [*TINY, "model.impl=fast", "model.memory_efficient=true"]
    overrides.append(f"trainer.heap_trim={heap_trim}")
    model = build(to_typed(compose_cfg(overrides)), DistContext()).model
    hooks = {m.memory_hook for m in model.modules() if hasattr(m, "memory_hook")}
    if heap_trim:
        (hook,) = hooks
        assert isinstance(hook, HeapTrimmer)
        before = hook.trims
        hook.slack_bytes, hook.time_budget, hook.not_before = -(2**62), 1e12, 0.0
        model(torch.randn(2, 3, 8, 8)).sum().backward()
        assert hook.trims > before  # and the model calls it
    else:
        assert hooks == {None}

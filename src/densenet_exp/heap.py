"""Hand the CPU heap's freed pages back to the OS during a training step (glibc only).

Why: glibc's malloc keeps the pages of freed chunks resident, and only shrinks its heap from the
top. A training step on CPU allocates and frees scratch of many sizes, each a little larger than
the last as a dense block grows (oneDNN's reorders in a convolution's backward, its im2col buffer
when bf16 is emulated: 18 MB per 3x3 convolution of densenet121's second block at 128 px, batch
32), and later, smaller tensors split the holes those leave, so the next scratch comes from the
top again. The process's resident memory then grows to about twice what its tensors ever use at
once (benchmarks/RESULTS.md). ``malloc_trim`` returns the pages inside free chunks; it costs
~10-30 ms and the pages fault back in when reused (~1 ms per MB on a VM), so it runs only when
at least ``slack_bytes`` of resident memory is freed heap, and no more often than keeps its
estimated cost (the call, and the refaults of what it released at the rate measured once per
process) under ``time_budget`` of the time between trims. The engine hands a ``HeapTrimmer`` to
the fast memory-efficient model (``model.set_memory_hook``, ``trainer.heap_trim``), which calls
it at every dense layer, forward and backward. So where steps are short next to
that cost (fp32 on this 2-core CPU: ~7% slower, peak RSS -15%) it trims a few times a step, and
where they are long (bf16 emulated on a CPU without bf16 instructions) at most layers (peak RSS
-25%, cost lost in the noise). No allocator to install or preload: jemalloc and friends return
pages by themselves, but must be loaded before Python starts, by whoever starts it.
"""

from __future__ import annotations

import ctypes
import dataclasses
import mmap
import os
import time

import torch

# Resident memory beyond the floor (what is resident besides malloc's chunks in use: code,
# interpreter, the remains of the last trim) before a trim is worth its cost.
SLACK_BYTES = 64 * 2**20
# the fraction of the time between trims that the trims themselves may cost
TIME_BUDGET = 0.1


class _MallInfo2(ctypes.Structure):
    _fields_ = [
        (name, ctypes.c_size_t)
        for name in (
            "arena",
            "ordblks",
            "smblks",
            "hblks",
            "hblkhd",
            "usmblks",
            "fsmblks",
            "uordblks",
            "fordblks",
            "keepcost",
        )
    ]


def _load_glibc() -> ctypes.CDLL | None:
    if not os.path.exists("/proc/self/statm"):
        return None
    try:
        libc = ctypes.CDLL("libc.so.6")
        libc.mallinfo2.restype = _MallInfo2  # glibc >= 2.33
        libc.malloc_trim.argtypes = [ctypes.c_size_t]
        libc.malloc_trim.restype = ctypes.c_int
    except (OSError, AttributeError):  # not Linux, musl, or an old glibc: nothing to do
        return None
    return libc


_LIBC = _load_glibc()
_PAGE = os.sysconf("SC_PAGE_SIZE") if hasattr(os, "sysconf") else 4096


def _resident_bytes() -> int:
    with open("/proc/self/statm", "rb") as f:
        return int(f.read().split()[1]) * _PAGE


def in_use_bytes() -> int:
    """Bytes glibc's malloc has handed out and not had back (only where ``available()``)."""
    info = _LIBC.mallinfo2()
    return info.uordblks + info.hblkhd  # heap chunks in use + mmapped chunks (never kept)


def _fault_seconds_per_byte() -> float:
    """What touching a page the kernel must hand out again costs, per byte, on this machine."""
    size = 8 * 2**20
    with mmap.mmap(-1, size) as m:
        t = time.perf_counter()
        for i in range(0, size, _PAGE):
            m[i] = 1
        return (time.perf_counter() - t) / size


def available() -> bool:
    """Whether this process's allocator is glibc's, whose heap this module can trim."""
    return _LIBC is not None


@dataclasses.dataclass(eq=False)  # a stateful object: compared (and hashed) by identity
class HeapTrimmer:
    """Trims glibc's heap when enough freed memory is resident and the time budget allows.

    Call it (``trimmer(device)``) where a step has just freed transients; CPU only, and a no-op
    where the allocator is not glibc's. One per process: it measures the process's floor.
    """

    slack_bytes: int = SLACK_BYTES
    time_budget: float = TIME_BUDGET
    floor: int | None = None  # resident bytes beyond malloc's in-use ones after the last trim
    not_before: float = 0.0  # perf_counter time before which the budget allows no trim
    fault_cost: float | None = None  # seconds per byte refaulted (_fault_seconds_per_byte)
    trims: int = 0  # how many times it trimmed (read by tests and benchmarks)
    released: int = 0  # bytes those trims took out of the resident set

    def __call__(self, device: torch.device | str = "cpu") -> bool:
        """Trim if it pays; returns whether it did. A check reads two counters (~25 us)."""
        if _LIBC is None or torch.device(device).type != "cpu" or torch.compiler.is_compiling():
            return False
        now = time.perf_counter()
        if now < self.not_before:
            return False
        before = _resident_bytes()
        # the first call trims whatever setup left, then measures the floor
        if self.floor is not None and before - in_use_bytes() - self.floor < self.slack_bytes:
            return False
        if self.fault_cost is None:
            self.fault_cost = _fault_seconds_per_byte()
            now = time.perf_counter()  # the one-off measurement is not the trim's cost
        _LIBC.malloc_trim(0)
        after = _resident_bytes()
        # the interpreter and libraries also allocate outside malloc's count: measure anew
        self.floor = after - in_use_bytes()
        released = max(0, before - after)
        end = time.perf_counter()
        self.not_before = end + (end - now + released * self.fault_cost) / self.time_budget
        self.trims += 1
        self.released += released
        return True

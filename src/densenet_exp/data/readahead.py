"""A loader's next batch, fetched (and optionally prepared on the device) in a thread while the
current one trains."""

from __future__ import annotations

from collections.abc import Callable, Iterable, Iterator
from concurrent.futures import ThreadPoolExecutor
from typing import Any

import torch


class ReadAhead:
    """Yields ``loader``'s batches, each fetched one step ahead in a thread, then passed through
    ``prepare`` there (on a CUDA side stream when ``device`` is a GPU); ``None`` stays ``None``.

    torch's DataLoader overlaps work only in worker processes, and those cannot share a
    memory-mapped cache (spawned workers would be sent a copy of it) or work on the training
    device; its pin-memory thread is the same pattern for host memory. torch's ops release the
    GIL, so a page fault of a mapped file or nvJPEG's host work runs beside the model's step.
    For a GPU's loaders: on a CPU the thread's work competes with the model for the cores.
    """

    def __init__(
        self,
        loader: Iterable,
        prepare: Callable[[Any], Any] | None = None,
        device: torch.device | None = None,
    ) -> None:
        self.loader, self.prepare = loader, prepare
        self.device = device or torch.device("cpu")

    def __len__(self) -> int:
        return len(self.loader)  # type: ignore[arg-type]

    def __iter__(self) -> Iterator[Any]:
        device = self.device
        stream = torch.cuda.Stream(device) if device.type == "cuda" else None
        batches = iter(self.loader)
        with ThreadPoolExecutor(1, thread_name_prefix="densenet-ahead") as pool:
            pending = pool.submit(self._next, batches, stream)
            while (done := pending.result()) is not _END:
                pending = pool.submit(self._next, batches, stream)
                batch, ready = done
                if ready is not None:  # the side stream's work, before the training stream's
                    current = torch.cuda.current_stream(device)
                    current.wait_event(ready)
                    batch[0].record_stream(current)  # its memory is in use there until freed
                yield batch

    def _next(self, batches: Iterator[Any], stream: Any) -> Any:
        batch = next(batches, _END)
        if batch is _END or batch is None:
            return batch if batch is _END else (None, None)
        if self.prepare is None:
            return batch, None
        if stream is None:
            return self.prepare(batch), None
        with torch.cuda.stream(stream):
            prepared = self.prepare(batch)
            return prepared, (stream.record_event() if prepared is not None else None)


_END = object()  # the loader is exhausted

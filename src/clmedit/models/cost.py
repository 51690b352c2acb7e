"""The cost of a piece of work: wall seconds and peak memory while it ran.

Peak memory is CUDA's max_memory_allocated on a GPU. On the CPU it is the process's peak
resident set size during the block: Linux lets us reset the high-water mark through
/proc/self/clear_refs, so each measured block gets its own peak; elsewhere we fall back to a
10 ms sampling thread.
"""

from __future__ import annotations

import threading
import time
from contextlib import AbstractContextManager
from pathlib import Path

import torch

_STATUS = Path("/proc/self/status")
_CLEAR_REFS = Path("/proc/self/clear_refs")


def _vm_hwm_bytes() -> int | None:
    try:
        for line in _STATUS.read_text().splitlines():
            if line.startswith("VmHWM:"):
                return int(line.split()[1]) * 1024
    except OSError:
        return None
    return None


def _reset_hwm() -> bool:
    try:
        _CLEAR_REFS.write_text("5")
        return True
    except OSError:
        return False


class CostMeter(AbstractContextManager):
    """`with CostMeter(device) as m: ...` then m.seconds, m.peak_bytes."""

    def __init__(self, device: torch.device | str | None = None):
        self.device = torch.device(device) if device is not None else torch.device("cpu")
        self.seconds = 0.0
        self.peak_bytes = 0
        self._sampler: threading.Thread | None = None
        self._stop = threading.Event()

    def __enter__(self) -> CostMeter:
        if self.device.type == "cuda":
            torch.cuda.synchronize(self.device)
            torch.cuda.reset_peak_memory_stats(self.device)
        elif not _reset_hwm() or _vm_hwm_bytes() is None:
            self._start_sampler()
        self._t0 = time.perf_counter()
        return self

    def __exit__(self, *exc) -> None:
        if self.device.type == "cuda":
            torch.cuda.synchronize(self.device)
        self.seconds = time.perf_counter() - self._t0
        if self.device.type == "cuda":
            self.peak_bytes = int(torch.cuda.max_memory_allocated(self.device))
        elif self._sampler is not None:
            self._stop.set()
            self._sampler.join()
        else:
            self.peak_bytes = _vm_hwm_bytes() or 0

    def _start_sampler(self) -> None:
        import psutil

        proc = psutil.Process()

        def sample() -> None:
            while not self._stop.is_set():
                self.peak_bytes = max(self.peak_bytes, proc.memory_info().rss)
                time.sleep(0.01)

        self._sampler = threading.Thread(target=sample, daemon=True)
        self._sampler.start()

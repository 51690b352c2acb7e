"""The cost of a piece of work: wall seconds and peak memory while it ran.

Two memory figures per block:
- `peak_bytes`, the block's own peak: the highest memory reached during the block minus what the
  process held when it began (the model, caches), as the study measures an edit. Doing nothing costs ~0.
- `resident_peak_bytes`, the highest total reached during the block (model included).

On a GPU both come from CUDA's allocator (max_memory_allocated, memory_allocated at the start). On the
CPU they come from the process's resident set: Linux lets us reset the high-water mark through
/proc/self/clear_refs, so each block gets its own peak; elsewhere a 10 ms sampling thread stands in.
"""

from __future__ import annotations

import threading
import time
from contextlib import AbstractContextManager
from pathlib import Path

import torch

_STATUS = Path("/proc/self/status")
_CLEAR_REFS = Path("/proc/self/clear_refs")


def _status_bytes(field: str) -> int | None:
    """A `kB` field of /proc/self/status (VmHWM: peak resident, VmRSS: resident now) in bytes."""
    try:
        for line in _STATUS.read_text().splitlines():
            if line.startswith(field + ":"):
                return int(line.split()[1]) * 1024
    except OSError:
        return None
    return None


def _vm_hwm_bytes() -> int | None:
    return _status_bytes("VmHWM")


def _trim_heap() -> None:
    """Give freed heap pages back to the OS (glibc), so memory an earlier block freed but the allocator
    kept does not hide this block's own growth."""
    try:
        import ctypes

        ctypes.CDLL("libc.so.6").malloc_trim(0)
    except (OSError, AttributeError):
        pass


def resident_bytes() -> int:
    """The process's resident memory now (after giving freed heap pages back to the OS), in bytes."""
    _trim_heap()
    now = _status_bytes("VmRSS")
    if now is None:
        import psutil

        now = psutil.Process().memory_info().rss
    return int(now)


def _reset_hwm() -> bool:
    try:
        _CLEAR_REFS.write_text("5")
        return True
    except OSError:
        return False


class CostMeter(AbstractContextManager):
    """`with CostMeter(device) as m: ...` then m.seconds, m.peak_bytes (own), m.resident_peak_bytes."""

    def __init__(self, device: torch.device | str | None = None):
        self.device = torch.device(device) if device is not None else torch.device("cpu")
        self.seconds = 0.0
        self.peak_bytes = 0
        self.resident_peak_bytes = 0
        self._before = 0
        self._sampler: threading.Thread | None = None
        self._stop = threading.Event()

    def __enter__(self) -> CostMeter:
        if self.device.type == "cuda":
            torch.cuda.synchronize(self.device)
            torch.cuda.reset_peak_memory_stats(self.device)
            self._before = int(torch.cuda.memory_allocated(self.device))
            return self._start()
        _trim_heap()
        if not _reset_hwm() or _vm_hwm_bytes() is None:
            self._start_sampler()
        else:
            self._before = _status_bytes("VmRSS") or 0
        return self._start()

    def _start(self) -> CostMeter:
        self._t0 = time.perf_counter()
        return self

    def __exit__(self, *exc) -> None:
        if self.device.type == "cuda":
            torch.cuda.synchronize(self.device)
        self.seconds = time.perf_counter() - self._t0
        if self.device.type == "cuda":
            self.resident_peak_bytes = int(torch.cuda.max_memory_allocated(self.device))
        elif self._sampler is not None:
            self._stop.set()
            self._sampler.join()
        else:
            self.resident_peak_bytes = max(_vm_hwm_bytes() or 0, self._before)
        self.peak_bytes = max(0, self.resident_peak_bytes - self._before)

    def _start_sampler(self) -> None:
        import psutil

        proc = psutil.Process()
        self._before = self.resident_peak_bytes = proc.memory_info().rss

        def sample() -> None:
            while not self._stop.is_set():
                self.resident_peak_bytes = max(self.resident_peak_bytes, proc.memory_info().rss)
                time.sleep(0.01)

        self._sampler = threading.Thread(target=sample, daemon=True)
        self._sampler.start()

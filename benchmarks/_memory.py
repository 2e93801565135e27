"""Peak memory of a block of code, shared by the benchmarks.

On CUDA: `torch.cuda.max_memory_allocated` above what was allocated when the block began. On the
CPU (Linux only): peak resident set size above the start, after `malloc_trim` and a reset of
VmHWM through /proc/self/clear_refs. RSS counts allocator slack too; tracemalloc cannot see
torch's allocations, so this is the honest CPU figure.
"""

from __future__ import annotations

import ctypes
import gc
from collections.abc import Callable
from pathlib import Path
from typing import Any

import torch


def status_kib(field: str) -> int:
    """A field of /proc/self/status in KiB: `VmRSS` (resident now), `VmHWM` (peak since the last reset)."""
    for line in Path("/proc/self/status").read_text().splitlines():
        if line.startswith(field + ":"):
            return int(line.split()[1])
    raise RuntimeError(f"{field} not in /proc/self/status")


def reset_peak() -> None:
    """VmHWM := VmRSS, so a later `status_kib("VmHWM")` is the peak from now on."""
    Path("/proc/self/clear_refs").write_text("5")


class PeakMemory:
    """`with PeakMemory(device) as m: ...` then `m.bytes` / `m.mib`; or `m.measure(fn)` → bytes."""

    def __init__(self, device: torch.device) -> None:
        self.cuda = torch.device(device).type == "cuda"
        self.bytes = 0
        self.libc = None if self.cuda else ctypes.CDLL("libc.so.6")
        if self.libc is not None:
            # glibc otherwise raises its mmap threshold after the first large free and keeps freed
            # tensors in its heap, where the next measurement would reuse them unseen by RSS
            self.libc.mallopt(-3, 1 << 16)  # M_MMAP_THRESHOLD

    @property
    def mib(self) -> float:
        return self.bytes / 2**20

    def __enter__(self) -> PeakMemory:
        gc.collect()
        if self.cuda:
            torch.cuda.synchronize()
            torch.cuda.reset_peak_memory_stats()
            self.start = torch.cuda.memory_allocated()
        else:
            self.libc.malloc_trim(0)
            reset_peak()
            self.start = status_kib("VmRSS") * 1024
        return self

    def __exit__(self, *exc: Any) -> None:
        if self.cuda:
            torch.cuda.synchronize()
            peak = torch.cuda.max_memory_allocated()
        else:
            peak = status_kib("VmHWM") * 1024
        self.bytes = peak - self.start

    def measure(self, fn: Callable[[], object]) -> int:
        with self:
            fn()
        return self.bytes

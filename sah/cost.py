"""What a run costs: seconds per stage and peak memory, accounted in every run.

`accounting()` opens an account for a run; inside it, `stage(name)` adds the seconds of its block to
that stage. Stages do not nest: inside one, an inner one adds nothing, so the stages' seconds add up
to at most the run's. The aligner's plugin calls are staged by what they do (`STAGES`).
"""

from __future__ import annotations

import contextlib
import os
import time
from collections.abc import Iterator
from contextvars import ContextVar
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING

from sah.lazy import lazy_import

if TYPE_CHECKING:
    import torch
else:
    torch = lazy_import("torch")


#: what a plugin call does → the stage its time counts to
STAGES = {"predict_noise": "denoiser", "step": "scheduler", "predict_x0": "x0", "decode": "decode",
          "embed": "binder forward", "similarity": "binder forward", "the guidance backward pass": "backward",
          "prepare": "prepare"}


@dataclass
class Cost:
    seconds: dict[str, float] = field(default_factory=dict)
    total: float = 0.0
    peak_bytes: int | None = None  # CUDA: max allocated above the start; CPU (Linux): peak RSS above the start
    depth: int = 0

    def summary(self) -> str:
        """`3.2 s: denoiser 1.1 s, decode 0.5 s, …; peak memory +120 MiB`."""
        parts = ", ".join(f"{k} {v:.2f} s" for k, v in sorted(self.seconds.items(), key=lambda kv: -kv[1]))
        memory = "" if self.peak_bytes is None else f"; peak memory +{self.peak_bytes / 2**20:.0f} MiB"
        return f"{self.total:.2f} s: {parts}{memory}"

    def short(self) -> str:
        """The total and its four largest stages, for a plot's title."""
        top = ", ".join(f"{k} {v:.1f}" for k, v in sorted(self.seconds.items(), key=lambda kv: -kv[1])[:4])
        memory = "" if self.peak_bytes is None else f", +{self.peak_bytes / 2**20:.0f} MiB"
        return f"run {self.total:.1f} s ({top}){memory}"

    def as_dict(self) -> dict:
        return {"seconds": {k: round(v, 4) for k, v in self.seconds.items()}, "total_seconds": round(self.total, 4),
                "peak_memory_mib": None if self.peak_bytes is None else round(self.peak_bytes / 2**20, 1)}


_current: ContextVar[Cost | None] = ContextVar("sah_cost", default=None)


def _rss_kib(field_name: str) -> int | None:
    try:
        for line in Path("/proc/self/status").read_text().splitlines():
            if line.startswith(field_name + ":"):
                return int(line.split()[1])
    except OSError:
        pass
    return None


def _sync() -> None:
    if torch.cuda.is_available() and torch.cuda.is_initialized():
        torch.cuda.synchronize()


@contextlib.contextmanager
def accounting() -> Iterator[Cost]:
    """An account for the block (a run): stage seconds, total seconds, peak memory above the start."""
    cost = Cost()
    token = _current.set(cost)
    cuda = torch.cuda.is_available() and torch.cuda.is_initialized()
    if cuda:
        torch.cuda.reset_peak_memory_stats()
        start_bytes = torch.cuda.memory_allocated()
    else:
        start_kib = _rss_kib("VmRSS")
        with contextlib.suppress(OSError):
            if start_kib is not None and os.access("/proc/self/clear_refs", os.W_OK):
                Path("/proc/self/clear_refs").write_text("5")  # VmHWM := VmRSS, so the peak is this run's
    start = time.perf_counter()
    try:
        yield cost
    finally:
        _sync()
        cost.total = time.perf_counter() - start
        if cuda:
            cost.peak_bytes = max(0, torch.cuda.max_memory_allocated() - start_bytes)
        else:
            peak = _rss_kib("VmHWM")
            cost.peak_bytes = None if peak is None or start_kib is None else max(0, peak - start_kib) * 1024
        _current.reset(token)


@contextlib.contextmanager
def stage(name: str) -> Iterator[None]:
    """Add the block's seconds to stage `name` of the open account (if any, and if no stage is
    already counting)."""
    cost = _current.get()
    if cost is None or cost.depth:
        yield
        return
    cost.depth += 1
    start = time.perf_counter()
    try:
        yield
    finally:
        _sync()
        cost.seconds[name] = cost.seconds.get(name, 0.0) + time.perf_counter() - start
        cost.depth -= 1

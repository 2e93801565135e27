"""Differentiable signal helpers for binders: resampling, mono downmix, length fitting.

Everything here is plain torch, so gradients flow from a binder's embedding back to the waveform.
"""

from __future__ import annotations

import math
from functools import lru_cache
from typing import TYPE_CHECKING

from sah.lazy import lazy_import

if TYPE_CHECKING:
    import torch
    import torch.nn.functional as F
    from torch import Tensor
else:
    torch = lazy_import("torch")
    F = lazy_import("torch.nn.functional")


__all__ = ["fit_length", "resample", "to_mono"]

# Windowed-sinc design. The defaults keep the passband error near 1e-5 and put the stopband below
# about -90 dB, at the price of a longer kernel (cheap next to any model a binder runs).
LOWPASS_WIDTH = 24  # zero crossings of the sinc on each side, in units of the lower rate's period
ROLLOFF = 0.945  # cutoff as a share of the lower Nyquist rate, leaving room for the transition band
KAISER_BETA = 10.0

# Above this many kernel taps (phases x taps per phase) the polyphase bank is too big to hold and
# the direct per-output path is used (coprime rates such as 44100 -> 44099).
_MAX_POLYPHASE_TAPS = 2_000_000
_DIRECT_CHUNK = 8192  # outputs per chunk in the direct path, bounding the gathered [..., chunk, taps] tensor


def _kaiser(t: Tensor, half_width: float) -> Tensor:
    ratio = (t / half_width).clamp(-1.0, 1.0)
    return torch.special.i0(KAISER_BETA * torch.sqrt(1.0 - ratio**2)) / torch.special.i0(torch.tensor(KAISER_BETA))


def _sinc_filter(offset: Tensor, cutoff: float) -> Tensor:
    """Low-pass impulse response at `offset` input samples; `cutoff` in cycles per input sample x 2."""
    x = offset * cutoff
    sinc = torch.where(x == 0, torch.ones_like(x), torch.sin(math.pi * x) / (math.pi * x))
    window = _kaiser(x, LOWPASS_WIDTH) * (x.abs() < LOWPASS_WIDTH)
    return sinc * window * cutoff


def _reduced(orig_rate: int, new_rate: int) -> tuple[int, int, float, int]:
    """(down, up, cutoff, half-width in input samples) for the gcd-reduced rate pair."""
    g = math.gcd(orig_rate, new_rate)
    down, up = orig_rate // g, new_rate // g
    cutoff = ROLLOFF * min(down, up) / down
    return down, up, cutoff, math.ceil(LOWPASS_WIDTH / cutoff)


@lru_cache(maxsize=32)
def _polyphase_bank(down: int, up: int, cutoff: float, width: int) -> Tensor:
    """Kernels `[up, 1, 2 * width + down]`: row j computes output phase j from a strided input window."""
    taps = torch.arange(-width, width + down, dtype=torch.float64)
    # Output j of a block lies j * down / up input samples after the block start.
    phases = torch.arange(up, dtype=torch.float64)[:, None] * down / up
    return _sinc_filter(taps[None, :] - phases, cutoff).unsqueeze(1)


def _polyphase(x: Tensor, down: int, up: int, cutoff: float, width: int, out_len: int) -> Tensor:
    bank = _polyphase_bank(down, up, cutoff, width).to(x.device, x.dtype)
    padded = F.pad(x.unsqueeze(1), (width, width + down))
    out = F.conv1d(padded, bank, stride=down)  # [N, up, blocks]
    return out.transpose(1, 2).reshape(x.shape[0], -1)[:, :out_len]


def _direct(x: Tensor, down: int, up: int, cutoff: float, width: int, out_len: int) -> Tensor:
    """Each output as a weighted sum of its 2 * width + 1 nearest inputs; for rate pairs with huge factors."""
    padded = F.pad(x, (width, width + 1))
    chunks = []
    for start in range(0, out_len, _DIRECT_CHUNK):
        n = torch.arange(start, min(start + _DIRECT_CHUNK, out_len), dtype=torch.int64, device=x.device)
        base = n * down // up  # integer arithmetic keeps positions exact for any length
        frac = (n * down - base * up).to(torch.float64) / up
        taps = torch.arange(-width, width + 1, device=x.device)
        weights = _sinc_filter(taps[None, :].to(torch.float64) - frac[:, None], cutoff).to(x.dtype)
        index = base[:, None] + taps[None, :] + width  # into the padded signal
        chunks.append((padded[:, index] * weights).sum(-1))
    return torch.cat(chunks, dim=-1)


def resample(waveform: Tensor, orig_rate: int, new_rate: int) -> Tensor:
    """Band-limited resampling along the last dimension, differentiable, any leading dimensions.

    Windowed-sinc (Kaiser) filtering with the gcd-reduced up/down factors as a polyphase bank.
    The signal is taken as zero outside its span, so the first and last few milliseconds ring
    slightly; the output has `ceil(S * new_rate / orig_rate)` samples.
    """
    if orig_rate <= 0 or new_rate <= 0:
        raise ValueError(f"sample rates must be positive, got {orig_rate} -> {new_rate}")
    if not waveform.is_floating_point():
        raise TypeError(f"resample needs a floating-point waveform, got {waveform.dtype}")
    if orig_rate == new_rate:
        return waveform
    down, up, cutoff, width = _reduced(int(orig_rate), int(new_rate))
    lead, length = waveform.shape[:-1], waveform.shape[-1]
    out_len = math.ceil(length * up / down)
    flat = waveform.reshape(-1, length)
    if up * (2 * width + down) <= _MAX_POLYPHASE_TAPS:
        out = _polyphase(flat, down, up, cutoff, width, out_len)
    else:
        out = _direct(flat, down, up, cutoff, width, out_len)
    return out.reshape(*lead, out_len)


def to_mono(waveform: Tensor) -> Tensor:
    """`[B, C, S]` to `[B, 1, S]` by averaging channels (keeps the level of correlated channels)."""
    if waveform.ndim != 3:
        raise ValueError(f"to_mono expects [B, C, S], got shape {tuple(waveform.shape)}")
    return waveform.mean(dim=1, keepdim=True)


def fit_length(waveform: Tensor, num_samples: int, mode: str = "start") -> Tensor:
    """Crop or zero-pad the last dimension to `num_samples`.

    `mode="start"` keeps the beginning and pads at the end; `"center"` crops or pads evenly on both
    sides (an odd remainder goes to the end).
    """
    if num_samples < 0:
        raise ValueError(f"num_samples must be non-negative, got {num_samples}")
    if mode not in ("start", "center"):
        raise ValueError(f"mode must be 'start' or 'center', got {mode!r}")
    excess = waveform.shape[-1] - num_samples
    before = excess // 2 if mode == "center" else 0
    if excess >= 0:
        return waveform[..., before : before + num_samples]
    before = -excess // 2 if mode == "center" else 0
    return F.pad(waveform, (before, -excess - before))

"""Long outputs as overlapping windows: where the windows lie, how their latents fuse, how their
media join.

An output longer than a generator's longest single window is sampled as K overlapping windows in
lockstep (the aligner), each guided toward its own stretch of the condition. A generator whose
latent has a time axis (`Generator.time_axis`) keeps one latent for the whole output: each window
is a slice of it, and the windows' noise predictions are averaged with smooth weights where they
overlap, so one continuous latent comes out (the MultiDiffusion idea). A generator without one
samples each window as its own latent, and the decoded windows are joined by a crossfade that keeps
the power level (`join`).
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from dataclasses import dataclass
from typing import TYPE_CHECKING

from sah.lazy import lazy_import
from sah.media import Audio, Media, Video

if TYPE_CHECKING:
    import torch
    from torch import Tensor
else:
    torch = lazy_import("torch")

#: how far (seconds) an incoming audio window may be shifted to line its phase up with the outgoing
#: one before the crossfade: a period of 50 Hz, more than any tone the toy world or speech has
ALIGN_SECONDS = 0.02


@dataclass(frozen=True)
class Window:
    """One window of the output: seconds [start, end)."""

    start: float
    end: float

    @property
    def seconds(self) -> float:
        return self.end - self.start


def plan(total: float, window: float | None, overlap: float = 0.25) -> list[Window]:
    """Windows of `window` seconds covering [0, total], consecutive ones overlapping by at least
    `overlap` of a window, spread evenly so the last one ends at `total`. One window when the
    output fits in one (or `window` is None)."""
    if window is None or total <= window + 1e-9:
        return [Window(0.0, total)]
    if not 0 <= overlap < 1:
        raise ValueError(f"overlap must be in [0, 1), got {overlap}")
    hop = window * (1 - overlap)
    count = math.ceil((total - window) / hop - 1e-9) + 1
    step = (total - window) / (count - 1)
    return [Window(k * step, k * step + window) for k in range(count)]


def frame_spans(windows: Sequence[Window], total_frames: int, window_frames: int) -> list[tuple[int, int]]:
    """The latent frames [lo, hi) of each window on a time axis of `total_frames`, each
    `window_frames` long and spread as the windows are (the last ends at the last frame)."""
    if len(windows) == 1:
        return [(0, total_frames)]
    span = total_frames - window_frames
    count = len(windows)
    return [(round(k * span / (count - 1)), round(k * span / (count - 1)) + window_frames) for k in range(count)]


def fusion_weights(spans: Sequence[tuple[int, int]], total: int) -> list[Tensor]:
    """Per-frame weights of each window, `[hi − lo]`: 1 where it is alone, a raised-cosine ramp
    across each overlap, so the fused prediction passes smoothly from one window to the next.
    The weights of the windows covering a frame sum to 1."""
    raw = []
    for k, (lo, hi) in enumerate(spans):
        w = torch.ones(hi - lo, dtype=torch.float64)
        if k > 0:
            ramp = spans[k - 1][1] - lo
            if ramp > 0:
                w[:ramp] = 0.5 - 0.5 * torch.cos(math.pi * (torch.arange(ramp, dtype=torch.float64) + 0.5) / ramp)
        if k + 1 < len(spans):
            ramp = hi - spans[k + 1][0]
            if ramp > 0:
                w[hi - lo - ramp:] = torch.minimum(w[hi - lo - ramp:], 0.5 + 0.5 * torch.cos(
                    math.pi * (torch.arange(ramp, dtype=torch.float64) + 0.5) / ramp))
        raw.append(w)
    norm = torch.zeros(total, dtype=torch.float64)
    for (lo, hi), w in zip(spans, raw):
        norm[lo:hi] += w
    return [(w / norm[lo:hi]).float() for (lo, hi), w in zip(spans, raw)]


def segment(media: Media, window: Window) -> Media:
    """The stretch of a condition a window is guided toward."""
    if isinstance(media, Audio):
        lo = int(round(window.start * media.sample_rate))
        hi = max(lo + 1, int(round(window.end * media.sample_rate)))
        return Audio(media.waveform[..., lo:hi], media.sample_rate)
    if isinstance(media, Video):
        lo = min(int(round(window.start * media.fps)), media.num_frames - 1)
        hi = max(lo + 1, min(media.num_frames, int(round(window.end * media.fps))))
        audio = segment(media.audio, window) if media.audio is not None else None
        return Video(media.frames[:, lo:hi], media.fps, audio=audio)
    return media  # an image or a text has no time: every window sees all of it


def _aligned(tail: Tensor, head: Tensor, max_shift: int) -> int:
    """The shift of `head` (samples, 0..max_shift) that best lines it up with `tail`, by the
    correlation of the overlapping parts, so same-pitch content does not cancel in a crossfade."""
    n = tail.shape[-1]
    if max_shift <= 0 or n <= max_shift:
        return 0
    scores = [float((tail[..., : n - s] * head[..., s:n]).sum()) for s in range(max_shift + 1)]
    return int(max(range(len(scores)), key=scores.__getitem__))


def _crossfade_gains(n: int, rho: float) -> tuple[Tensor, Tensor]:
    """Gains for a fade over n samples that keep the power of the mix where the two signals have
    correlation `rho`: an equal-power fade for uncorrelated signals, a linear one for identical."""
    u = (torch.arange(n, dtype=torch.float64) + 0.5) / n
    a, b = 1 - u, u
    g = 1 / torch.sqrt(a * a + b * b + 2 * a * b * max(min(rho, 1.0), -0.5))
    return (a * g).float(), (b * g).float()


class Joiner:
    """Decoded windows joined, as they come, into one output of `total` seconds: only the output
    and the window being added are in memory. Audio: each window placed at its start, shifted
    (with `align`) by up to `ALIGN_SECONDS` to line its phase up with the previous one, and
    crossfaded over the overlap with gains that keep the power; video: a linear crossfade of the
    overlapping frames. Windows cut from one latent agree where they overlap and need no alignment."""

    def __init__(self, total: float, align: bool = True) -> None:
        self.total, self.align = total, align
        self.out: Tensor | None = None
        self.end = 0
        self.rate: float | None = None

    def add(self, piece: Media, window: Window) -> None:
        if isinstance(piece, Audio):
            self._add(piece.waveform, window, piece.sample_rate, audio=True)
        elif isinstance(piece, Video):
            self._add(piece.frames.transpose(0, 1), window, piece.fps, audio=False)  # time first
        else:
            raise TypeError(f"cannot join {type(piece).__name__} windows")
        self.kind = type(piece)

    def _add(self, data: Tensor, window: Window, rate: float, audio: bool) -> None:
        # audio [B, C, S] is joined along its last axis, video [F, B, 3, H, W] along its first
        axis = -1 if audio else 0
        length = data.shape[axis]
        if self.out is None:
            self.rate = rate
            shape = list(data.shape)
            shape[axis] = int(round(self.total * rate)) + length
            self.out = data.new_zeros(shape)

        def at(t: Tensor, lo: int, hi: int) -> Tensor:
            return t[..., lo:hi] if audio else t[lo:hi]

        start = int(round(window.start * rate))
        overlap = max(0, min(self.end - start, length))
        if overlap > 0:
            if audio:
                max_shift = int(ALIGN_SECONDS * rate)
                shift = _aligned(at(self.out, start, self.end), at(data, 0, overlap + max_shift), max_shift) \
                    if self.align else 0
                data = at(data, shift, length)
                length = data.shape[axis]
                overlap = min(overlap, length)
                tail, head = at(self.out, start, start + overlap), at(data, 0, overlap)
                rho = float((tail * head).sum() / (tail.norm() * head.norm()).clamp_min(1e-12))
                fade_out, fade_in = _crossfade_gains(overlap, rho)
            else:
                u = (torch.arange(overlap, dtype=torch.float32) + 0.5) / overlap
                fade_out, fade_in = (1 - u).reshape(-1, 1, 1, 1, 1), u.reshape(-1, 1, 1, 1, 1)
                tail, head = at(self.out, start, start + overlap), at(data, 0, overlap)
            at(self.out, start, start + overlap).copy_(tail * fade_out.to(tail) + head * fade_in.to(head))
        at(self.out, start + overlap, start + length).copy_(at(data, overlap, length))
        self.end = start + length

    def result(self) -> Media:
        keep = min(self.end, int(round(self.total * self.rate)))
        if self.kind is Audio:
            return Audio(self.out[..., :keep], int(self.rate))
        return Video(self.out[:keep].transpose(0, 1), self.rate)


def join(pieces: Sequence[Media], windows: Sequence[Window], total: float, align: bool = True) -> Media:
    """`Joiner` over a list of decoded windows; a single window is returned as it is."""
    if len(pieces) == 1:
        return pieces[0]
    joiner = Joiner(total, align)
    for piece, window in zip(pieces, windows):
        joiner.add(piece, window)
    return joiner.result()

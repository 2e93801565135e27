"""An independent judge of toy-world media, with no learned weights.

The class of a clip is read off the signal itself (the FFT peak of a tone, the angle of a blob's
centroid), so it can score guidance without trusting the binder that guided it. Validity says the
media is the kind of thing the toy world contains: one clean tone, one compact blob.
"""

from __future__ import annotations

import math
from typing import TYPE_CHECKING

import numpy as np

from sah.lazy import lazy_import
from sah.media import Audio, Video
from sah.plugins.toy import world

if TYPE_CHECKING:
    import torch
    import torch.nn.functional as F
    from torch import Tensor
else:
    torch = lazy_import("torch")
    F = lazy_import("torch.nn.functional")

#: a tone's energy within this distance of the peak (or 4 FFT bins, if wider) counts as the tone's
PEAK_HALF_WIDTH_HZ = 20.0
MIN_PEAK_ENERGY = 0.8
MAX_FREQ_ERROR_HZ = 40.0
MIN_RMS = 0.01
MAX_CLIPPED_FRACTION = 1e-3

#: video thresholds are in pixels of a frame whose shorter side is 32, the toy world's size
MIN_PEAK_BRIGHTNESS = 0.3
MAX_BLOB_RMS_PX = 4.0
MIN_RADIUS_PX, MAX_RADIUS_PX = 5.0, 15.0
MAX_FRAME_DRIFT_PX = 3.0


def _waveform(audio: Audio | Tensor, sample_rate: int | None) -> tuple[Tensor, int]:
    if isinstance(audio, Audio):
        return audio.waveform.detach().double().mean(dim=1), audio.sample_rate
    wave = audio.detach().double()
    if wave.ndim == 3:
        wave = wave.mean(dim=1)
    elif wave.ndim == 1:
        wave = wave.unsqueeze(0)
    return wave, int(sample_rate or world.SAMPLE_RATE)


def _spectrum(wave: Tensor, sample_rate: int) -> tuple[Tensor, Tensor]:
    power = torch.fft.rfft(wave, dim=-1).abs() ** 2
    freqs = torch.fft.rfftfreq(wave.shape[-1], d=1.0 / sample_rate, dtype=torch.float64)
    return power, freqs


def _nearest_class(freq: Tensor) -> Tensor:
    return (freq.unsqueeze(-1) - torch.tensor(world.FREQUENCIES, dtype=freq.dtype)).abs().argmin(-1)


def audio_class(audio: Audio | Tensor, sample_rate: int | None = None) -> Tensor:
    """The class `[B]` whose frequency is nearest the spectrum's peak (any sample rate or length)."""
    wave, sr = _waveform(audio, sample_rate)
    power, freqs = _spectrum(wave, sr)
    power = power.masked_fill(freqs < 50.0, 0.0)  # DC offset is not a tone
    return _nearest_class(freqs[power.argmax(-1)])


def audio_valid(audio: Audio | Tensor, sample_rate: int | None = None) -> Tensor:
    """Bool `[B]`: one clean tone near a class frequency, audible and not clipped."""
    wave, sr = _waveform(audio, sample_rate)
    power, freqs = _spectrum(wave, sr)
    peak_freq = freqs[power.masked_fill(freqs < 50.0, 0.0).argmax(-1)]
    target = torch.tensor(world.FREQUENCIES, dtype=torch.float64)[_nearest_class(peak_freq)]
    half_width = max(PEAK_HALF_WIDTH_HZ, 4 * sr / wave.shape[-1])
    near = (freqs.unsqueeze(0) - peak_freq.unsqueeze(1)).abs() <= half_width
    fraction = (power * near).sum(-1) / power.sum(-1).clamp_min(1e-30)
    rms = wave.pow(2).mean(-1).sqrt()
    clipped = (wave.abs() >= 0.999).double().mean(-1)
    return ((peak_freq - target).abs() <= MAX_FREQ_ERROR_HZ) & (fraction >= MIN_PEAK_ENERGY) & \
        (rms >= MIN_RMS) & (clipped <= MAX_CLIPPED_FRACTION)


def _gray(video: Video | Tensor) -> Tensor:
    """Brightness `[B, F, H, W]` rescaled so the shorter side is 32 px."""
    frames = video.frames if isinstance(video, Video) else video
    frames = frames.detach().float()
    if frames.ndim == 4:
        frames = frames.unsqueeze(0)
    gray = frames.mean(dim=2)
    b, f, h, w = gray.shape
    if min(h, w) != world.SIZE:
        s = world.SIZE / min(h, w)
        size = (max(1, round(h * s)), max(1, round(w * s)))
        gray = F.interpolate(gray.reshape(b * f, 1, h, w), size=size, mode="area" if s < 1 else "bilinear",
                             align_corners=None if s < 1 else False).reshape(b, f, *size)
    return gray


def _coords(h: int, w: int) -> tuple[Tensor, Tensor]:
    """Offsets from the frame centre, x to the right and y UP, in 32-px-frame pixels."""
    ys = -(torch.arange(h, dtype=torch.float32) - (h - 1) / 2)
    xs = torch.arange(w, dtype=torch.float32) - (w - 1) / 2
    return xs.view(1, -1).expand(h, w), ys.view(-1, 1).expand(h, w)


def _centroid(img: Tensor) -> tuple[Tensor, Tensor]:
    """Brightness-weighted centroid of `[..., H, W]`, counting only what stands above a quarter of
    the peak so a dim background does not drag it toward the centre."""
    xs, ys = _coords(*img.shape[-2:])
    peak = img.flatten(-2).amax(-1)[..., None, None]
    wgt = (img - 0.25 * peak).clamp_min(0)
    total = wgt.sum((-2, -1)).clamp_min(1e-12)
    return (wgt * xs).sum((-2, -1)) / total, (wgt * ys).sum((-2, -1)) / total


def video_class(video: Video | Tensor) -> Tensor:
    """The class `[B]` whose ring angle is nearest the blob's centroid angle."""
    img = _gray(video).mean(1)
    cx, cy = _centroid(img)
    angle = torch.atan2(cy, cx)
    step = 2 * math.pi / world.NUM_CLASSES
    return torch.round(angle / step).long() % world.NUM_CLASSES


def _components(mask: np.ndarray) -> int:
    """8-connected components of a small boolean image."""
    seen = np.zeros_like(mask, dtype=bool)
    h, w = mask.shape
    count = 0
    for y0, x0 in zip(*np.nonzero(mask)):
        if seen[y0, x0]:
            continue
        count += 1
        stack = [(y0, x0)]
        seen[y0, x0] = True
        while stack:
            y, x = stack.pop()
            for dy in (-1, 0, 1):
                for dx in (-1, 0, 1):
                    ny, nx = y + dy, x + dx
                    if 0 <= ny < h and 0 <= nx < w and mask[ny, nx] and not seen[ny, nx]:
                        seen[ny, nx] = True
                        stack.append((ny, nx))
    return count


def video_valid(video: Video | Tensor) -> Tensor:
    """Bool `[B]`: one compact, bright, still blob at a plausible distance from the centre."""
    gray = _gray(video)
    img = gray.mean(1)
    xs, ys = _coords(*img.shape[-2:])
    cx, cy = _centroid(img)
    fx, fy = _centroid(gray)
    drift = ((fx - cx.unsqueeze(1)) ** 2 + (fy - cy.unsqueeze(1)) ** 2).sqrt().amax(1)
    radius = (cx**2 + cy**2).sqrt()
    # a faint haze under a tenth of the peak is invisible, but spread over the frame it would
    # outweigh the blob in the second moment; only what stands above it counts as mass
    peak = img.flatten(1).amax(1)[:, None, None]
    background = torch.maximum(img.flatten(1).median(1).values[:, None, None], 0.1 * peak)
    mass = (img - background).clamp_min(0)
    dist2 = (xs - cx[:, None, None]) ** 2 + (ys - cy[:, None, None]) ** 2
    spread = ((mass * dist2).sum((1, 2)) / mass.sum((1, 2)).clamp_min(1e-12)).sqrt()
    frame_peaks = gray.flatten(2).amax(-1).amin(-1)
    ok = (frame_peaks >= MIN_PEAK_BRIGHTNESS) & (spread <= MAX_BLOB_RMS_PX) & (drift <= MAX_FRAME_DRIFT_PX)
    ok &= (radius >= MIN_RADIUS_PX) & (radius <= MAX_RADIUS_PX)
    for i in range(img.shape[0]):
        if ok[i]:
            ok[i] = _components((img[i] > 0.5 * peak[i]).numpy()) == 1
    return ok

"""Differentiable preprocessing from sah media to ImageBind's inputs.

Two flavours share this code:

* `"official"` reproduces the reference `data.py` numerics: a Hann-windowed sinc resampler
  (width 6, rolloff 0.99), fbank on channel 0 after subtracting the all-channel mean, and the
  in-place mean subtraction that leaks between overlapping audio clips; video scaled without
  antialiasing; images clamped after the bicubic resize like PIL's 8-bit output.
* `"sah"` (the binder's default) makes the choices a gradient wants: channels averaged, each clip
  centred on its own mean (the shared-buffer leak is an accident of in-place code and puts a DC
  step into later clips), `sah.dsp.resample`, and antialiased downscaling of frames.
"""

from __future__ import annotations

import math
from collections import Counter
from fractions import Fraction
from functools import lru_cache

import torch
import torch.nn.functional as F
from torch import Tensor

from sah import dsp

from .model import CLIP_MEAN, CLIP_STD

SAMPLE_RATE = 16_000
NUM_MEL_BINS = 128
TARGET_FRAMES = 204
CLIP_SECONDS = 2
AUDIO_MEAN, AUDIO_STD = -4.268, 9.138
FRAME_LENGTH, FRAME_SHIFT, FFT_SIZE = 400, 160, 512  # 25 ms, 10 ms, next power of two
PREEMPHASIS = 0.97
LOG_FLOOR = torch.finfo(torch.float32).eps
IMAGE_SIZE = 224
MODES = ("sah", "official")


def clip_starts(duration: float, clips: int, clip_seconds: float = CLIP_SECONDS) -> list[Fraction]:
    """Clip start times, the reference's constant-clips-per-video rule: `k · max(d − 2, 0) / clips`.

    The step divides by `clips`, not `clips − 1`, so the last clip stops short of the end; the
    subtraction is done in floating point first, then kept exact, as the reference does."""
    step = Fraction(max(duration - clip_seconds, 0)) / clips
    return [k * step for k in range(clips)]


def audio_clip_ranges(num_samples: int, clips: int, rate: int = SAMPLE_RATE) -> list[tuple[int, int]]:
    """`[start, end)` sample ranges of the audio clips (the end may pass the last sample)."""
    starts = clip_starts(num_samples / rate, clips)
    return [(int(s * rate), int((s + CLIP_SECONDS) * rate)) for s in starts]


@lru_cache(maxsize=4)
def kaldi_mel_banks(num_bins: int = NUM_MEL_BINS, rate: int = SAMPLE_RATE, fft_size: int = FFT_SIZE,
                    low_hz: float = 20.0) -> Tensor:
    """Kaldi's triangular filters on the mel scale 1127·ln(1 + f/700), `[num_bins, fft_size/2 + 1]`
    in float32, the Nyquist column zero, as Kaldi builds them."""
    def mel(f: Tensor | float) -> Tensor:
        return 1127.0 * torch.log1p(torch.as_tensor(f, dtype=torch.float32) / 700.0) \
            if isinstance(f, Tensor) else 1127.0 * math.log(1.0 + f / 700.0)

    mel_low, mel_high = mel(low_hz), mel(rate / 2)
    delta = (mel_high - mel_low) / (num_bins + 1)
    i = torch.arange(num_bins).unsqueeze(1)
    left, center, right = mel_low + i * delta, mel_low + (i + 1.0) * delta, mel_low + (i + 2.0) * delta
    bin_mel = 1127.0 * (1.0 + (rate / fft_size) * torch.arange(fft_size // 2) / 700.0).log()
    up = (bin_mel - left) / (center - left)
    down = (right - bin_mel) / (right - center)
    banks = torch.clamp(torch.minimum(up, down), min=0.0)
    return F.pad(banks, (0, 1))


def fbank(wave: Tensor) -> Tensor:
    """Kaldi-compatible log-mel filterbank of `[N, S]` 16 kHz audio -> `[N, frames, 128]`.

    Frames of 25 ms every 10 ms (only whole frames), per-frame DC removal, pre-emphasis 0.97
    (the first sample is its own predecessor), symmetric Hann window, |FFT|² on 512 points,
    log with a float32-epsilon floor. No dither, no energy term."""
    frames = wave.unfold(-1, FRAME_LENGTH, FRAME_SHIFT)
    frames = frames - frames.mean(dim=-1, keepdim=True)
    previous = torch.cat([frames[..., :1], frames[..., :-1]], dim=-1)
    frames = frames - PREEMPHASIS * previous
    frames = frames * torch.hann_window(FRAME_LENGTH, periodic=False, dtype=frames.dtype, device=frames.device)
    spectrum = torch.fft.rfft(F.pad(frames, (0, FFT_SIZE - FRAME_LENGTH)))
    # |z|² written out: abs() would have an undefined gradient at exactly zero
    power = spectrum.real.square() + spectrum.imag.square()
    energies = power @ kaldi_mel_banks().to(power.device, power.dtype).T
    return energies.clamp(min=LOG_FLOOR).log()


def hann_sinc_resample(wave: Tensor, orig_rate: int, new_rate: int, width_zeros: int = 6,
                       rolloff: float = 0.99) -> Tensor:
    """The reference resampler: Hann-windowed sinc with `width_zeros` zero crossings, cutoff at
    `rolloff` of the lower Nyquist rate, as a polyphase conv; `ceil(S·new/orig)` output samples."""
    if orig_rate == new_rate:
        return wave
    g = math.gcd(orig_rate, new_rate)
    down, up = orig_rate // g, new_rate // g
    base = min(down, up) * rolloff
    half = math.ceil(width_zeros * down / base)
    taps = torch.arange(-half, half + down, dtype=wave.dtype, device=wave.device)[None, None] / down
    t = torch.arange(0, -up, -1, dtype=wave.dtype, device=wave.device)[:, None, None] / up + taps
    t = (t * base).clamp(-width_zeros, width_zeros)
    window = torch.cos(t * math.pi / width_zeros / 2) ** 2
    t = t * math.pi
    kernel = torch.where(t == 0, torch.ones_like(t), t.sin() / t) * window * (base / down)
    lead, length = wave.shape[:-1], wave.shape[-1]
    flat = F.pad(wave.reshape(-1, 1, length), (half, half + down))
    out = F.conv1d(flat, kernel, stride=down).transpose(1, 2).reshape(flat.shape[0], -1)
    return out[:, : math.ceil(up * length / down)].reshape(*lead, -1)


def _mel_clip(clip: Tensor) -> Tensor:
    """One centred clip `[B, S]` -> normalised log-mel `[B, 1, 128, 204]` (zero-padded or cropped
    in the log domain before normalisation, as the reference does)."""
    if clip.shape[-1] < FRAME_LENGTH:
        clip = F.pad(clip, (0, FRAME_LENGTH - clip.shape[-1]))
    mel = fbank(clip).transpose(1, 2)
    frames = mel.shape[-1]
    mel = F.pad(mel, (0, TARGET_FRAMES - frames)) if frames < TARGET_FRAMES else mel[..., :TARGET_FRAMES]
    return ((mel - AUDIO_MEAN) / AUDIO_STD).unsqueeze(1)


def audio_to_mel(waveform: Tensor, sample_rate: int, clips: int = 3, mode: str = "sah") -> tuple[Tensor, Tensor]:
    """Waveforms `[B, C, S]` at any rate -> (log-mel clips `[B, K, 1, 128, 204]`, weights `[K]`).

    The reference embeds `clips` two-second clips and averages them; clips that are numerically
    the same (audio of 2 s or less, in `"sah"` mode) are embedded once and weighted by their count,
    which gives the same average for less work."""
    wave = waveform.float()
    if mode == "official":
        wave = hann_sinc_resample(wave, int(sample_rate), SAMPLE_RATE)
    else:
        wave = dsp.resample(dsp.to_mono(wave), int(sample_rate), SAMPLE_RATE)
    ranges = audio_clip_ranges(wave.shape[-1], clips)
    if mode == "official":
        mels = []
        buffer = wave
        for start, end in ranges:
            # The reference subtracts each clip's mean in place from the one shared waveform, so a
            # later overlapping clip sees earlier clips' means too; replay that out of place.
            segment = buffer[..., start:end]
            centred = segment - segment.mean(dim=(-2, -1), keepdim=True)
            buffer = torch.cat([buffer[..., :start], centred, buffer[..., start + centred.shape[-1]:]], dim=-1)
            mels.append(_mel_clip(centred[:, 0]))
        return torch.stack(mels, dim=1), torch.full((len(ranges),), 1.0 / len(ranges))
    counts = Counter(ranges)
    unique = list(counts)
    mels = []
    for start, end in unique:
        segment = wave[:, 0, start:end]
        mels.append(_mel_clip(segment - segment.mean(dim=-1, keepdim=True)))
    weights = torch.tensor([counts[r] / len(ranges) for r in unique])
    return torch.stack(mels, dim=1), weights


def video_clip_frames(num_frames: int, fps: float, clips: int = 5, frames_per_clip: int = 2) -> list[tuple[int, ...]]:
    """Frame indices of each temporal clip: the clip's window is `[start, start + 2 s)` with
    reference clip starts; its frames `ceil(fps·start) … ceil(fps·end) − 1` (capped at the video's
    end) are subsampled uniformly to `frames_per_clip`, i.e. the first and last for two."""
    out = []
    for start in clip_starts(num_frames / fps, clips):
        first = math.ceil(fps * start)
        stop = min(math.ceil(fps * (start + CLIP_SECONDS)), num_frames)
        first = min(first, num_frames - 1)
        stop = max(stop, first + 1)
        picks = torch.linspace(0, stop - first - 1, frames_per_clip).long()
        out.append(tuple(first + int(p) for p in picks))
    return out


def _clip_normalise(pixels: Tensor, channel_dim: int) -> Tensor:
    shape = [1] * pixels.ndim
    shape[channel_dim] = 3
    mean = torch.tensor(CLIP_MEAN, dtype=pixels.dtype, device=pixels.device).reshape(shape)
    std = torch.tensor(CLIP_STD, dtype=pixels.dtype, device=pixels.device).reshape(shape)
    return (pixels - mean) / std


def _short_side_size(h: int, w: int, size: int = IMAGE_SIZE) -> tuple[int, int]:
    if w < h:
        return int(math.floor(h / w * size)), size
    return size, int(math.floor(w / h * size))


def crop_offsets(h: int, w: int, crops: int, size: int = IMAGE_SIZE) -> list[tuple[int, int]]:
    """(top, left) of the reference's spatial crops along the long side: start, centre (rounded
    up), end; `crops=1` keeps the centre only."""
    top, left = math.ceil((h - size) / 2), math.ceil((w - size) / 2)
    if crops == 1:
        return [(top, left)]
    if h > w:
        return [(0, left), (top, left), (h - size, left)]
    return [(top, 0), (top, left), (top, w - size)]


def video_to_clips(frames: Tensor, fps: float, clips: int = 5, crops: int = 3, mode: str = "sah",
                   frame_indices: tuple[int, ...] | None = None, total_frames: int | None = None,
                   frames_per_clip: int = 2) -> tuple[Tensor, Tensor]:
    """Frames `[B, F, 3, H, W]` in [0, 1] -> (clips `[B, K, 3, T, 224, 224]`, weights `[K]`).

    Temporal clips × spatial crops as the reference samples them; duplicates (short videos,
    square frames) are embedded once and weighted by their count. With `frame_indices`, `frames`
    holds only those frames of a `total_frames`-long video."""
    b, f, _, h, w = frames.shape
    total = total_frames if frame_indices is not None and total_frames is not None else f
    windows = video_clip_frames(total, fps, clips, frames_per_clip)
    position = {index: pos for pos, index in enumerate(frame_indices)} if frame_indices is not None \
        else {i: i for i in range(f)}
    missing = sorted({i for window in windows for i in window} - set(position))
    if missing:
        raise ValueError(f"video lacks frames {missing} that the ImageBind clips need")
    needed = sorted({i for window in windows for i in window})
    picked = frames[:, [position[i] for i in needed]].float()
    new_h, new_w = _short_side_size(h, w)
    flat = picked.flatten(0, 1)
    if (new_h, new_w) != (h, w):
        antialias = mode == "sah" and new_h < h
        flat = F.interpolate(flat, size=(new_h, new_w), mode="bilinear", align_corners=False, antialias=antialias)
    flat = _clip_normalise(flat, 1).reshape(b, len(needed), 3, new_h, new_w)
    slot = {index: k for k, index in enumerate(needed)}
    counts = Counter((window, offset) for window in windows for offset in crop_offsets(new_h, new_w, crops))
    out = []
    for window, (top, left) in counts:
        clip = flat[:, [slot[i] for i in window], :, top : top + IMAGE_SIZE, left : left + IMAGE_SIZE]
        out.append(clip.transpose(1, 2))
    total_count = sum(counts.values())
    weights = torch.tensor([c / total_count for c in counts.values()])
    return torch.stack(out, dim=1), weights


def image_to_pixels(pixels: Tensor, mode: str = "sah") -> Tensor:
    """Images `[B, 3, H, W]` in [0, 1] -> `[B, 3, 224, 224]`: bicubic (antialiased) resize of
    the short side to 224, centre crop, CLIP normalisation."""
    _, _, h, w = pixels.shape
    pixels = pixels.float()
    short, long = min(h, w), max(h, w)
    if short != IMAGE_SIZE:
        scaled_long = int(IMAGE_SIZE * long / short)
        size = (IMAGE_SIZE, scaled_long) if h <= w else (scaled_long, IMAGE_SIZE)
        pixels = F.interpolate(pixels, size=size, mode="bicubic", align_corners=False, antialias=True)
        if mode == "official":
            pixels = pixels.clamp(0.0, 1.0)  # PIL rounds its bicubic output into 8 bits
        h, w = size
    top, left = int(round((h - IMAGE_SIZE) / 2)), int(round((w - IMAGE_SIZE) / 2))
    pixels = pixels[..., top : top + IMAGE_SIZE, left : left + IMAGE_SIZE]
    return _clip_normalise(pixels, 1)

"""Preprocessing from sah media to ImageBind's inputs.

Two flavours share this code:

* `"official"` reproduces ImageBind's `data.py` as its requirements pin it (git pytorchvideo, whose
  constant-clips sampler divides by K − 1): a Hann-windowed sinc resampler (width 6, rolloff
  0.99), fbank on channel 0 after subtracting the all-channel mean, the in-place mean
  subtraction that leaks between overlapping audio clips, clip times from a float subtraction;
  video scaled without antialiasing; images resized by PIL's bicubic (two rounded 8-bit passes),
  which is not differentiable.
* `"sah"` (the binder's default) makes the choices a gradient wants: channels averaged, each clip
  centred on its own mean (the shared-buffer leak is an accident of in-place code and puts a DC
  step into later clips), `sah.dsp.resample`, audio clip times computed exactly from the sample
  count (so the last clip ends on the last sample), antialiased downscaling of frames, and a
  differentiable torch bicubic for images.

Both use the same clip layout: K clips of `clip_seconds`, clip k starting at
`k · max(d − clip_seconds, 0) / max(K − 1, 1)`, so the first starts at 0 and the last ends at the
end of the input; `clips="auto"` picks the fewest clips that cover the input (`clip_count`).
"""

from __future__ import annotations

import math
from collections import Counter
from fractions import Fraction
from functools import lru_cache
from typing import TYPE_CHECKING

from sah import dsp
from sah.errors import SahError
from sah.lazy import lazy_import

from .spec import CLIP_MEAN, CLIP_STD

if TYPE_CHECKING:
    import numpy as np
    import torch
    import torch.nn.functional as F
    from torch import Tensor
else:
    np = lazy_import("numpy")
    torch = lazy_import("torch")
    F = lazy_import("torch.nn.functional")

SAMPLE_RATE = 16_000
NUM_MEL_BINS = 128
TARGET_FRAMES = 204
CLIP_SECONDS = 2.0
AUDIO_MEAN, AUDIO_STD = -4.268, 9.138
FRAME_LENGTH, FRAME_SHIFT, FFT_SIZE = 400, 160, 512  # 25 ms, 10 ms, next power of two
PREEMPHASIS = 0.97
LOG_FLOOR = 2.0**-23  # torch.finfo(torch.float32).eps
IMAGE_SIZE = 224
MODES = ("sah", "official")
CROPS = (1, 3, "squash")
# The audio tower reads 204 fbank frames: a clip longer than 400 + 203·160 samples would be cut.
MAX_AUDIO_CLIP_SECONDS = (FRAME_LENGTH + (TARGET_FRAMES - 1) * FRAME_SHIFT) / SAMPLE_RATE  # 2.055
MIN_AUDIO_CLIP_SECONDS = FRAME_LENGTH / SAMPLE_RATE  # one fbank frame, 25 ms


def clip_count(duration: float, clip_seconds: float = CLIP_SECONDS, clips: int | str = "auto") -> int:
    """How many clips to take of `duration` seconds: `clips` itself when it is a number; for
    `"auto"` the fewest that cover it, `max(1, ceil(d / clip_seconds))`, with `d` first rounded
    to the nearest 10 ms (the fbank hop), so 4 s of audio plus a vocoder's 32-sample tail is 4 s."""
    if clips != "auto":
        return int(clips)
    centiseconds = round(duration * 100)
    # the small slack keeps float noise (1.1 / 0.1 = 11.000000000000002) from adding a clip
    return max(1, math.ceil(centiseconds / (clip_seconds * 100) - 1e-9))


def clip_starts(duration: float | Fraction, clips: int, clip_seconds: float = CLIP_SECONDS) -> list[Fraction]:
    """Start times of `clips` clips, pinned pytorchvideo's constant-clips-per-video rule:
    `k · max(d − c, 0) / max(clips − 1, 1)`, so the last clip ends at the end.

    A float `duration` is treated as the reference does (the subtraction in floating point, then
    kept exact, which can end the last clip a hair before `d`); a `Fraction` is kept exact."""
    if isinstance(duration, Fraction):
        max_start = max(duration - Fraction(clip_seconds), Fraction(0))
    else:
        max_start = Fraction(max(duration - float(Fraction(clip_seconds)), 0))
    step = max_start / max(clips - 1, 1)
    return [k * step for k in range(clips)]


def audio_clip_ranges(num_samples: int, clips: int | str = "auto", rate: int = SAMPLE_RATE,
                      clip_seconds: float = CLIP_SECONDS, mode: str = "sah") -> list[tuple[int, int]]:
    """`[start, end)` sample ranges of the audio clips (the end may pass the last sample).

    `"official"` takes the duration as the float `num_samples / rate`, as the reference does
    (2.3 s or 3.3 s then leave the last sample out); `"sah"` takes it exactly."""
    count = clip_count(num_samples / rate, clip_seconds, clips)
    duration = Fraction(num_samples, rate) if mode == "sah" else num_samples / rate
    length = Fraction(clip_seconds)
    return [(int(s * rate), int((s + length) * rate)) for s in clip_starts(duration, count, clip_seconds)]


#: How much wider than its clips `audio_clip_spans` says the audio is read: the resamplers' reach
#: (24 zero crossings of the lower rate: 1.6 ms at 16 kHz, 10 ms at 2.5 kHz) and a duration cut to
#: whole samples.
SPAN_SLACK = 0.02


def audio_clip_spans(duration: float, clips: int, clip_seconds: float = CLIP_SECONDS) -> list[tuple[float, float]]:
    """The stretches `(start, end)`, in seconds, that `audio_to_mel` reads of audio lasting
    `duration` seconds in `clips` clips, each `SPAN_SLACK` wider on both sides."""
    return [(float(s) - SPAN_SLACK, float(s) + clip_seconds + SPAN_SLACK)
            for s in clip_starts(float(duration), int(clips), clip_seconds)]


@lru_cache(maxsize=4)
def kaldi_mel_banks(num_bins: int = NUM_MEL_BINS, rate: int = SAMPLE_RATE, fft_size: int = FFT_SIZE,
                    low_hz: float = 20.0) -> Tensor:
    """Kaldi's triangular filters on the mel scale 1127·ln(1 + f/700), `[num_bins, fft_size/2 + 1]`
    in float32, the Nyquist column zero, as Kaldi builds them."""
    def mel(f: Tensor | float) -> Tensor:
        return 1127.0 * torch.log1p(torch.as_tensor(f, dtype=torch.float32) / 700.0) \
            if isinstance(f, torch.Tensor) else 1127.0 * math.log(1.0 + f / 700.0)

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


def audio_to_mel(waveform: Tensor, sample_rate: int, clips: int | str = "auto", mode: str = "sah",
                 clip_seconds: float = CLIP_SECONDS) -> tuple[Tensor, Tensor]:
    """Waveforms `[B, C, S]` at any rate -> (log-mel clips `[B, K, 1, 128, 204]`, weights `[K]`).

    The reference embeds K clips of `clip_seconds` and averages them (`clips`: a count, or
    `"auto"` for the fewest that cover the audio); in `"sah"` mode, clips with the same sample
    range (audio no longer than a clip) are embedded once and weighted by their count, which gives
    the same average for less work. `"official"` embeds every clip: its in-place centring makes
    even repeated ranges differ slightly."""
    wave = waveform.float()
    if mode == "official":
        wave = hann_sinc_resample(wave, int(sample_rate), SAMPLE_RATE)
    else:
        wave = dsp.resample(dsp.to_mono(wave), int(sample_rate), SAMPLE_RATE)
    ranges = audio_clip_ranges(wave.shape[-1], clips, SAMPLE_RATE, clip_seconds, mode)
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


def video_clip_windows(num_frames: int, fps: float, clips: int | str = "auto",
                       clip_seconds: float = CLIP_SECONDS) -> list[tuple[int, int]]:
    """`[first, stop)` frame windows of the temporal clips: a clip `[s, s + c]` (reference clip
    starts on the float duration `num_frames / fps`) holds frames `ceil(fps·s) … ceil(fps·(s + c)) − 1`,
    capped at the video's end, as pytorchvideo's decord reader takes them. Never empty."""
    duration = num_frames / fps
    count = clip_count(duration, clip_seconds, clips)
    length = Fraction(clip_seconds)
    out = []
    for start in clip_starts(duration, count, clip_seconds):
        first = min(math.ceil(fps * start), num_frames - 1)
        stop = min(math.ceil(fps * (start + length)), num_frames)
        out.append((first, max(stop, first + 1)))
    return out


def video_clip_frames(num_frames: int, fps: float, clips: int | str = "auto", frames_per_clip: int = 2,
                      clip_seconds: float = CLIP_SECONDS) -> list[tuple[int, ...]]:
    """Frame indices of each temporal clip: its window (`video_clip_windows`) subsampled uniformly
    to `frames_per_clip` frames, i.e. the first and the last for two."""
    out = []
    for first, stop in video_clip_windows(num_frames, fps, clips, clip_seconds):
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


def crop_offsets(h: int, w: int, crops: int | str, size: int = IMAGE_SIZE) -> list[tuple[int, int]]:
    """(top, left) of the reference's spatial crops along the long side: start, centre (rounded
    up), end; `crops=1` keeps the centre only; `"squash"` has no crop, `[(0, 0)]`."""
    if crops == "squash":
        return [(0, 0)]
    top, left = math.ceil((h - size) / 2), math.ceil((w - size) / 2)
    if crops == 1:
        return [(top, left)]
    if h > w:
        return [(0, left), (top, left), (h - size, left)]
    return [(top, 0), (top, left), (top, w - size)]


def video_to_clips(frames: Tensor, fps: float, clips: int | str = "auto", crops: int | str = 3, mode: str = "sah",
                   frame_indices: tuple[int, ...] | None = None, total_frames: int | None = None,
                   frames_per_clip: int = 2, clip_seconds: float = CLIP_SECONDS,
                   unique: bool = True) -> tuple[Tensor, Tensor]:
    """Frames `[B, F, 3, H, W]` in [0, 1] -> (clips `[B, K, 3, T, 224, 224]`, weights `[K]`).

    Temporal clips of `clip_seconds` (`clips`: a count or `"auto"`), short side scaled to 224
    (bilinear; antialiased when downscaling in `"sah"` mode only), CLIP-normalised, then `crops`
    spatial crops (3 or 1) or, for `"squash"`, a bilinear antialiased resize to 224×224 (the
    Seeing-and-Hearing loader). Duplicates (short videos, square frames) are embedded once and
    weighted by their count; `unique=False` keeps every entry instead, in the reference's order
    (clip i, crop j at 3i + j). With `frame_indices`, `frames` holds only those frames of a
    `total_frames`-long video."""
    b, f, _, h, w = frames.shape
    total = total_frames if frame_indices is not None and total_frames is not None else f
    windows = video_clip_frames(total, fps, clips, frames_per_clip, clip_seconds)
    position = {index: pos for pos, index in enumerate(frame_indices)} if frame_indices is not None \
        else {i: i for i in range(f)}
    missing = sorted({i for window in windows for i in window} - set(position))
    if missing:
        raise ValueError(f"video lacks frames {missing} that the ImageBind clips need")
    needed = sorted({i for window in windows for i in window})
    n = len(needed)
    # [B·3, frames, H, W]: the reference resizes (C, T, H, W) clips, frames in the channel slot, and
    # torch's CPU kernels round differently when the three colours are the channels instead.
    flat = frames[:, [position[i] for i in needed]].float().transpose(1, 2).reshape(b * 3, n, h, w)
    new_h, new_w = _short_side_size(h, w)
    if (new_h, new_w) != (h, w):
        antialias = mode == "sah" and new_h < h
        flat = F.interpolate(flat, size=(new_h, new_w), mode="bilinear", align_corners=False, antialias=antialias)
    flat = _clip_normalise(flat.reshape(b, 3, n, new_h, new_w), 1)
    if crops == "squash" and (new_h, new_w) != (IMAGE_SIZE, IMAGE_SIZE):
        flat = F.interpolate(flat.reshape(b * 3, n, new_h, new_w), size=(IMAGE_SIZE, IMAGE_SIZE), mode="bilinear",
                             align_corners=False, antialias=True)
        new_h = new_w = IMAGE_SIZE
        flat = flat.reshape(b, 3, n, new_h, new_w)
    slot = {index: k for k, index in enumerate(needed)}
    entries = [(window, offset) for window in windows for offset in crop_offsets(new_h, new_w, crops)]
    counts = Counter(entries) if unique else Counter(range(len(entries)))
    out = []
    for key in counts:
        window, (top, left) = key if unique else entries[key]
        out.append(flat[:, :, [slot[i] for i in window], top : top + IMAGE_SIZE, left : left + IMAGE_SIZE])
    weights = torch.tensor([c / len(entries) for c in counts.values()])
    return torch.stack(out, dim=1), weights


def _resized_size(h: int, w: int, size: int = IMAGE_SIZE) -> tuple[int, int]:
    """(h, w) with the short side at `size` and the long side at `int(size · long / short)`."""
    short, long = min(h, w), max(h, w)
    scaled_long = int(size * long / short)
    return (size, scaled_long) if h <= w else (scaled_long, size)


def pil_resize_crop(pixels: Tensor) -> Tensor:
    """One image `[3, H, W]` in [0, 1] -> the reference's uint8 `[224, 224, 3]`: rounded to 8
    bits, PIL bicubic resize of the short side to 224 (skipped when the size is already right),
    centre crop with offsets rounded half to even. Not differentiable."""
    from PIL import Image as PILImage

    array = (pixels.detach().float().cpu().clamp(0.0, 1.0) * 255.0).round().to(torch.uint8)
    image = PILImage.fromarray(np.ascontiguousarray(array.permute(1, 2, 0).numpy()), "RGB")
    h, w = array.shape[-2:]
    size = _resized_size(h, w)
    if size != (h, w):
        image = image.resize((size[1], size[0]), PILImage.Resampling.BICUBIC)
    top, left = int(round((size[0] - IMAGE_SIZE) / 2)), int(round((size[1] - IMAGE_SIZE) / 2))
    image = image.crop((left, top, left + IMAGE_SIZE, top + IMAGE_SIZE))
    return torch.from_numpy(np.array(image, dtype=np.uint8))


def image_to_pixels(pixels: Tensor, mode: str = "sah") -> Tensor:
    """Images `[B, 3, H, W]` in [0, 1] -> `[B, 3, 224, 224]`: bicubic resize of the short side to
    224, centre crop, CLIP normalisation.

    `"sah"` resizes with torch's antialiased bicubic (differentiable); `"official"` with PIL
    (`pil_resize_crop`, the reference's numerics), which cuts the gradient, so it refuses pixels
    that require one."""
    if mode == "official":
        if pixels.requires_grad:
            raise SahError("imagebind: preprocess='official' resizes images with PIL, which has no gradient; "
                           "use preprocess='sah' to differentiate through an image")
        crops = torch.stack([pil_resize_crop(image) for image in pixels])  # [B, 224, 224, 3] uint8
        scaled = crops.permute(0, 3, 1, 2).to(pixels.device, torch.float32) / 255.0
        return _clip_normalise(scaled, 1)
    _, _, h, w = pixels.shape
    pixels = pixels.float()
    size = _resized_size(h, w)
    if size != (h, w):
        pixels = F.interpolate(pixels, size=size, mode="bicubic", align_corners=False, antialias=True)
        h, w = size
    top, left = int(round((h - IMAGE_SIZE) / 2)), int(round((w - IMAGE_SIZE) / 2))
    pixels = pixels[..., top : top + IMAGE_SIZE, left : left + IMAGE_SIZE]
    return _clip_normalise(pixels, 1)

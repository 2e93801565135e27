"""AV-Align, the audio-video synchrony score of TempoTokens (Yariv et al., 2023), as published.

Audio peaks are onset times: librosa's default onset detector (log-mel spectral flux, then its
peak picker) on mono audio at 22050 Hz. Video peaks are strict local maxima of the mean Farneback
optical-flow magnitude between consecutive grayscale frames, at time index / fps. An audio peak is
a hit when it lies strictly within 1/fps of some video peak; the score is an intersection over union,
hits / (|audio peaks| + |video peaks| - hits). As published, hits count audio peaks, so several onsets
near one video peak can push the score above 1; it is kept so numbers stay comparable with papers.

The onset detector is a numpy port of librosa 0.11's `onset_strength` + `onset_detect` (same STFT,
Slaney mel bank, dB floor, flux, normalisation and peak-picking constants), so the metric needs no
numba/scikit-learn stack. OpenCV is needed for the optical flow: `pip install 'sah[eval]'`.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import numpy as np
import torch

from sah.errors import SahError

#: the rate the published code loads audio at (librosa.load's default)
SAMPLE_RATE = 22050
N_FFT = 2048
HOP_LENGTH = 512
N_MELS = 128
#: Farneback parameters of the published code: pyr_scale, levels, winsize, iterations, poly_n, poly_sigma, flags
FARNEBACK = (0.5, 3, 15, 3, 5, 1.2, 0)


@dataclass
class AVAlignResult:
    score: float  # NaN when neither stream has a peak (the published code divides by zero there)
    audio_peaks: list[float]  # seconds
    video_peaks: list[float]  # seconds
    hits: int


# --------------------------------------------------------------------------- audio onsets (librosa port)


def _hz_to_mel(hz: np.ndarray) -> np.ndarray:
    """Slaney's mel scale (librosa's htk=False): linear below 1 kHz, logarithmic above."""
    hz = np.asarray(hz, dtype=np.float64)
    f_sp, min_log_hz, min_log_mel, logstep = 200.0 / 3, 1000.0, 15.0, math.log(6.4) / 27.0
    mel = hz / f_sp
    log_part = hz >= min_log_hz
    return np.where(log_part, min_log_mel + np.log(np.maximum(hz, 1e-12) / min_log_hz) / logstep, mel)


def _mel_to_hz(mel: np.ndarray) -> np.ndarray:
    mel = np.asarray(mel, dtype=np.float64)
    f_sp, min_log_hz, min_log_mel, logstep = 200.0 / 3, 1000.0, 15.0, math.log(6.4) / 27.0
    return np.where(mel >= min_log_mel, min_log_hz * np.exp(logstep * (mel - min_log_mel)), f_sp * mel)


def mel_filters(sample_rate: int, n_fft: int = N_FFT, n_mels: int = N_MELS) -> np.ndarray:
    """`[n_mels, 1 + n_fft // 2]` Slaney-normalised triangles from 0 Hz to Nyquist (librosa.filters.mel)."""
    fft_freqs = np.linspace(0, sample_rate / 2, 1 + n_fft // 2)
    mel_f = _mel_to_hz(np.linspace(_hz_to_mel(0.0), _hz_to_mel(sample_rate / 2), n_mels + 2))
    fdiff = np.diff(mel_f)
    ramps = np.subtract.outer(mel_f, fft_freqs)
    lower = -ramps[:-2] / fdiff[:-1, None]
    upper = ramps[2:] / fdiff[1:, None]
    weights = np.maximum(0.0, np.minimum(lower, upper))
    return weights * (2.0 / (mel_f[2:] - mel_f[:-2]))[:, None]


def log_mel(wave: np.ndarray, sample_rate: int, n_fft: int = N_FFT, hop_length: int = HOP_LENGTH,
            n_mels: int = N_MELS) -> np.ndarray:
    """librosa's `power_to_db(melspectrogram(y))`: centred, zero-padded, periodic-Hann power STFT,
    mel bank, 10·log10 with a 1e-10 floor and an 80 dB range below the maximum. `[n_mels, frames]`."""
    wave = np.asarray(wave, dtype=np.float64)
    padded = np.pad(wave, n_fft // 2, mode="constant")
    if padded.shape[0] < n_fft:
        padded = np.pad(padded, (0, n_fft - padded.shape[0]))
    frames = 1 + (padded.shape[0] - n_fft) // hop_length
    window = 0.5 - 0.5 * np.cos(2 * np.pi * np.arange(n_fft) / n_fft)
    index = np.arange(n_fft)[None, :] + hop_length * np.arange(frames)[:, None]
    power = np.abs(np.fft.rfft(padded[index] * window, axis=-1)) ** 2  # [frames, bins]
    mel = mel_filters(sample_rate, n_fft, n_mels) @ power.T
    db = 10.0 * np.log10(np.maximum(1e-10, mel))
    return np.maximum(db, db.max() - 80.0)


def onset_strength(wave: np.ndarray, sample_rate: int, hop_length: int = HOP_LENGTH, n_fft: int = N_FFT) -> np.ndarray:
    """Mean over mel bands of the positive log-mel difference to the previous frame, shifted right by
    1 + n_fft // (2 hop) frames to undo the centring, one value per STFT frame (librosa.onset.onset_strength)."""
    spec = log_mel(wave, sample_rate, n_fft, hop_length)
    flux = np.maximum(0.0, spec[:, 1:] - spec[:, :-1]).mean(axis=0)
    pad = 1 + n_fft // (2 * hop_length)
    return np.pad(flux, (pad, 0))[: spec.shape[1]]


def peak_pick(x: np.ndarray, pre_max: int, post_max: int, pre_avg: int, post_avg: int, delta: float,
              wait: int) -> np.ndarray:
    """librosa.util.peak_pick: n is a peak if x[n] is the max of x[n-pre_max : n+post_max], at least
    delta above the mean of x[n-pre_avg : n+post_avg], and more than `wait` after the last peak."""
    n_frames = x.shape[0]
    peaks = []
    if n_frames == 0:
        return np.array([], dtype=int)
    n = 1
    if x[0] >= x[:min(post_max, n_frames)].max() and x[0] >= x[:min(post_avg, n_frames)].mean() + delta:
        peaks.append(0)
        n = wait + 1
    while n < n_frames:
        if x[n] != x[max(0, n - pre_max):min(n + post_max, n_frames)].max():
            n += 1
            continue
        if x[n] < x[max(0, n - pre_avg):min(n + post_avg, n_frames)].mean() + delta:
            n += 1
            continue
        peaks.append(n)
        n += wait + 1
    return np.array(peaks, dtype=int)


def onset_times(wave: np.ndarray, sample_rate: int, hop_length: int = HOP_LENGTH) -> np.ndarray:
    """Onset times in seconds with librosa.onset.onset_detect's defaults (mono `wave` at `sample_rate`)."""
    env = onset_strength(wave, sample_rate, hop_length)
    env = env - env.min()
    env = env / (env.max() + np.finfo(env.dtype).tiny)
    if not env.any() or not np.all(np.isfinite(env)):
        return np.array([], dtype=np.float64)
    frames_per = sample_rate / hop_length
    # librosa computes these as floats with `//` and rounds up: 30 ms, 0 ms + 1, 100 ms, 100 ms + 1, 30 ms
    frames = peak_pick(env, pre_max=math.ceil(0.03 * sample_rate // hop_length),
                       post_max=math.ceil(0.0 * sample_rate // hop_length + 1),
                       pre_avg=math.ceil(0.10 * sample_rate // hop_length),
                       post_avg=math.ceil(0.10 * sample_rate // hop_length + 1),
                       delta=0.07, wait=math.ceil(0.03 * sample_rate // hop_length))
    return frames / frames_per


def audio_peaks(waveform: np.ndarray | torch.Tensor, sample_rate: int) -> np.ndarray:
    """Onset times of `[S]` or `[C, S]` audio: downmixed to mono and resampled to 22050 Hz first, as
    `librosa.load` does in the published code."""
    from sah import dsp

    wave = torch.as_tensor(np.asarray(waveform, dtype=np.float32) if not isinstance(waveform, torch.Tensor)
                           else waveform).detach().float()
    if wave.ndim == 2:
        wave = wave.mean(dim=0)
    if wave.ndim != 1:
        raise ValueError(f"audio_peaks wants [S] or [C, S] audio, got shape {tuple(wave.shape)}")
    if sample_rate != SAMPLE_RATE:
        wave = dsp.resample(wave, int(sample_rate), SAMPLE_RATE)
    return onset_times(wave.numpy().astype(np.float64), SAMPLE_RATE)


# --------------------------------------------------------------------------- video peaks


def _cv2():
    try:
        import cv2
    except ImportError as exc:
        raise SahError("AV-Align needs OpenCV for optical flow: pip install 'sah[eval]'") from exc
    return cv2


def flow_magnitudes(frames: np.ndarray | torch.Tensor) -> np.ndarray:
    """Mean Farneback flow magnitude per frame of `[F, 3, H, W]` (float in [0, 1]) or `[F, H, W, 3]`
    uint8 RGB frames. Entry i > 0 is the flow from frame i-1 to i; entry 0 repeats entry 1, as the
    published code does."""
    cv2 = _cv2()
    array = frames.detach().cpu().numpy() if isinstance(frames, torch.Tensor) else np.asarray(frames)
    if array.dtype != np.uint8:
        array = np.clip(np.round(array * 255.0), 0, 255).astype(np.uint8)
    if array.ndim != 4:
        raise ValueError(f"flow_magnitudes wants [F, 3, H, W] or [F, H, W, 3] frames, got {array.shape}")
    if array.shape[1] == 3 and array.shape[-1] != 3:
        array = array.transpose(0, 2, 3, 1)
    if array.shape[0] < 2:
        return np.zeros(array.shape[0])
    gray = [cv2.cvtColor(np.ascontiguousarray(f), cv2.COLOR_RGB2GRAY) for f in array]
    mags = []
    for prev, curr in zip(gray[:-1], gray[1:]):
        flow = cv2.calcOpticalFlowFarneback(prev, curr, None, *FARNEBACK)
        mags.append(float(cv2.magnitude(flow[..., 0], flow[..., 1]).mean()))
    return np.array([mags[0], *mags])


def local_maxima(values: np.ndarray) -> np.ndarray:
    """Indices i (0 < i < n-1) with values[i-1] < values[i] > values[i+1]."""
    v = np.asarray(values)
    if v.shape[0] < 3:
        return np.array([], dtype=int)
    return np.flatnonzero((v[1:-1] > v[:-2]) & (v[1:-1] > v[2:])) + 1


def video_peaks(frames: np.ndarray | torch.Tensor, fps: float) -> np.ndarray:
    return local_maxima(flow_magnitudes(frames)) / float(fps)


# --------------------------------------------------------------------------- score


def score_peaks(audio: np.ndarray, video: np.ndarray, fps: float) -> AVAlignResult:
    """Intersection over union of peak sets; an audio peak counts once, strictly within 1/fps of a video peak."""
    tol = 1.0 / float(fps)
    hits = sum(1 for a in audio if any(v - tol < a < v + tol for v in video))
    union = len(audio) + len(video) - hits
    return AVAlignResult(hits / union if union else float("nan"), [float(t) for t in audio],
                         [float(t) for t in video], hits)


def av_align(waveform: np.ndarray | torch.Tensor, sample_rate: int, frames: np.ndarray | torch.Tensor,
             fps: float) -> AVAlignResult:
    """AV-Align of one clip: `waveform` `[S]`/`[C, S]`, `frames` `[F, 3, H, W]` in [0, 1] or `[F, H, W, 3]` uint8."""
    return score_peaks(audio_peaks(waveform, sample_rate), video_peaks(frames, fps), fps)


__all__ = ["AVAlignResult", "av_align", "audio_peaks", "flow_magnitudes", "local_maxima", "onset_strength",
           "onset_times", "peak_pick", "score_peaks", "video_peaks"]

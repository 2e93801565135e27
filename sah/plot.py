"""The per-run plot `sah run` saves as NAME.png: similarity per denoising step for each loss term
(guided window shaded) over a strip of video frames and a log-mel spectrogram on one time axis.

matplotlib (Agg backend, no display) is imported only when a plot is drawn; without it `available()`
is False and `sah run` writes no plot.
"""

from __future__ import annotations

import importlib.util
import os
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import numpy as np

from sah.media import Audio, Video


def available() -> bool:
    return importlib.util.find_spec("matplotlib") is not None


def _frames_strip(ax: Any, video: Video, max_frames: int = 16) -> None:
    frames = video.frames[0].detach().float().clamp(0, 1).permute(0, 2, 3, 1).cpu().numpy()
    count = frames.shape[0]
    picks = np.unique(np.linspace(0, count - 1, min(count, max_frames)).round().astype(int))
    step = count / video.fps / len(picks)
    for j, i in enumerate(picks):
        ax.imshow(frames[i], extent=(j * step, (j + 1) * step, 0, 1), aspect="auto", interpolation="nearest")
    ax.set_xlim(0, count / video.fps)
    ax.set_ylim(0, 1)
    ax.set_yticks([])
    ax.set_ylabel("frames", rotation=0, ha="right", va="center")


def _spectrogram(ax: Any, audio: Audio) -> Any:
    from sah.avalign import log_mel

    wave = audio.waveform[0].detach().float().mean(dim=0).cpu().numpy().astype(np.float64)
    rate = audio.sample_rate
    n_fft = 1024 if rate <= 24000 else 2048
    hop = n_fft // 4
    spec = log_mel(wave, rate, n_fft=n_fft, hop_length=hop, n_mels=64)
    image = ax.imshow(spec, origin="lower", aspect="auto", cmap="magma",
                      extent=(0, spec.shape[1] * hop / rate, 0, spec.shape[0]))
    ax.set_xlim(0, audio.duration)
    ax.set_ylabel("mel band")
    return image


def draw(path: str | os.PathLike, trace: Sequence[dict[str, Any]], *, num_steps: int, window: tuple[float, float],
         audio: Audio | None = None, video: Video | None = None, title: str = "") -> Path:
    """Write a PNG to `path`. `trace` holds the aligner's per-step records (`progress`, `similarity`);
    `window` is the guided span as fractions of denoising, `num_steps` the longest generator's steps."""
    import matplotlib

    matplotlib.use("Agg", force=False)
    from matplotlib.figure import Figure  # a bare Figure needs no pyplot state, safe in threads

    rows = [("trace", 3.0)]
    if video is not None:
        rows.append(("frames", 1.0))
    if audio is not None:
        rows.append(("spec", 2.2))
    fig = Figure(figsize=(8, sum(h for _, h in rows) + 0.8), dpi=100, layout="constrained")
    axes = fig.subplots(len(rows), 1, height_ratios=[h for _, h in rows], squeeze=False)[:, 0]
    ax = axes[0]
    if window[1] > window[0]:  # an unguided run has no window to shade, nor to name in the legend
        ax.axvspan(window[0] * num_steps, window[1] * num_steps, color="tab:green", alpha=0.12, label="guided window")
    # progress is (i + 1) / steps after step i: plot at the step index i, as the window is [start, end) * steps
    terms = sorted({k for record in trace for k in record.get("similarity", {})})
    for term in terms:
        xs = [r["progress"] * num_steps - 1 for r in trace if term in r.get("similarity", {})]
        ys = [r["similarity"][term] for r in trace if term in r.get("similarity", {})]
        line, = ax.plot(xs, ys, marker=".", label=term + (" (mean of windows)" if "windows" in trace[0] else ""))
        # a long output: each window's similarity toward its own stretch, thin, in the term's colour
        per_window = [r["windows"][term] for r in trace if term in r.get("windows", {})]
        for k in range(len(per_window[0]) if per_window else 0):
            ax.plot(xs, [w[k] for w in per_window], color=line.get_color(), alpha=0.25, linewidth=0.7)
    if not terms:
        ax.text(0.5, 0.5, "unguided: no similarity trace", ha="center", va="center", transform=ax.transAxes)
    ax.set_xlim(0, num_steps)
    ax.set_xlabel("denoising step")
    ax.set_ylabel("cosine similarity")
    if ax.get_legend_handles_labels()[0]:
        ax.legend(loc="lower right", fontsize="small")
    ax.set_title(title, fontsize="medium")
    media_axes = {name: a for (name, _), a in zip(rows[1:], axes[1:])}
    if video is not None:
        _frames_strip(media_axes["frames"], video)
    if audio is not None:
        spec_ax = media_axes["spec"]
        image = _spectrogram(spec_ax, audio)
        fig.colorbar(image, ax=spec_ax, label="dB", pad=0.01)
        spec_ax.set_xlabel("time (s)")
        if video is not None:  # one time axis for picture and sound
            media_axes["frames"].sharex(spec_ax)
            media_axes["frames"].set_xlim(0, max(audio.duration, video.num_frames / video.fps))
            media_axes["frames"].tick_params(labelbottom=False)
    elif video is not None:
        media_axes["frames"].set_xlabel("time (s)")
    path = Path(path)
    fig.savefig(path, format="png")
    return path


__all__ = ["available", "draw"]

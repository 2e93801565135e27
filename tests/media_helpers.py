"""Media made outside sah: numpy drawings encoded with PyAV directly, in sizes, rates and layouts
the toy world never produces."""

from __future__ import annotations

import math
from fractions import Fraction
from pathlib import Path

import av
import numpy as np
import torch


def span_mask(num_samples: int, rate: int, spans) -> torch.Tensor:
    """`[num_samples]` booleans: True where sample time t = i / rate lies in some `[start, end)` of `spans`."""
    t = torch.arange(num_samples) / rate
    keep = torch.zeros(num_samples, dtype=torch.bool)
    for start, end in spans:
        keep |= (t >= start) & (t < end)
    return keep


def tone(frequency: float, seconds: float, rate: int, channels: int = 1, amplitude: float = 0.4) -> np.ndarray:
    t = np.arange(int(seconds * rate)) / rate
    mono = amplitude * np.sin(2 * math.pi * frequency * t + 0.3)
    return np.repeat(mono[None, :], channels, axis=0).astype(np.float32)  # [C, S]


def blob_frames(k: int, frames: int, width: int, height: int) -> np.ndarray:
    """A white blob at angle 2πk/8 (counter-clockwise as displayed) on a ring of 10/32 of the
    smaller side, in every frame: uint8 [F, H, W, 3]."""
    side = min(width, height)
    radius, sigma = 10 / 32 * side, 2.2 / 32 * side
    cx = width / 2 - 0.5 + radius * math.cos(2 * math.pi * k / 8)
    cy = height / 2 - 0.5 - radius * math.sin(2 * math.pi * k / 8)
    yy, xx = np.mgrid[0:height, 0:width]
    img = np.exp(-((xx - cx) ** 2 + (yy - cy) ** 2) / (2 * sigma**2))
    rgb = (np.clip(img, 0, 1) * 255).astype(np.uint8)[..., None].repeat(3, axis=2)
    return np.repeat(rgb[None], frames, axis=0)


def write_wav(path: Path, samples: np.ndarray, rate: int, codec: str = "pcm_s16le") -> Path:
    return write_pcm_wav(path, samples, rate, codec)


def write_mp4(path: Path, frames: np.ndarray, fps: float | Fraction, audio: np.ndarray | None = None,
              rate: int = 44100) -> Path:
    with av.open(str(path), "w") as container:
        video = container.add_stream("libx264", rate=Fraction(fps).limit_denominator(1001))
        video.width, video.height, video.pix_fmt = frames.shape[2], frames.shape[1], "yuv420p"
        streams = [video]
        if audio is not None:
            track = container.add_stream("aac", rate=rate, layout="stereo" if audio.shape[0] == 2 else "mono")
            streams.append(track)
        for image in frames:
            for packet in video.encode(av.VideoFrame.from_ndarray(image, format="rgb24")):
                container.mux(packet)
        if audio is not None:
            layout = "stereo" if audio.shape[0] == 2 else "mono"
            frame = av.AudioFrame.from_ndarray(np.ascontiguousarray(audio), format="fltp", layout=layout)
            frame.sample_rate = rate
            for packet in track.encode(frame):
                container.mux(packet)
        for stream in streams:
            for packet in stream.encode(None):
                container.mux(packet)
    return path


# --------------------------------------------------------------------------- bad-input corpus (test_hardening)


def write_pcm_wav(path: Path, samples: np.ndarray, rate: int, codec: str) -> Path:
    """A wav of any channel count (ffmpeg's default layout for it) in `codec`: pcm_u8, pcm_s24le, pcm_f32le..."""
    layout = {1: "mono", 2: "stereo"}.get(samples.shape[0], f"{samples.shape[0]}c")
    with av.open(str(path), "w", format="wav") as container:
        stream = container.add_stream(codec, rate=rate, layout=layout)
        container.start_encoding()  # PyAV writes the header lazily: make a file even with no samples
        if samples.shape[1]:
            frame = av.AudioFrame.from_ndarray(np.ascontiguousarray(samples), format="fltp", layout=layout)
            frame.sample_rate = rate
            for packet in stream.encode(frame):
                container.mux(packet)
        for packet in stream.encode(None):
            container.mux(packet)
    return path


def write_audio_only_mp4(path: Path, samples: np.ndarray, rate: int = 44100) -> Path:
    """An mp4 holding one AAC track and no video stream."""
    layout = "stereo" if samples.shape[0] == 2 else "mono"
    with av.open(str(path), "w", format="mp4") as container:
        stream = container.add_stream("aac", rate=rate, layout=layout)
        frame = av.AudioFrame.from_ndarray(np.ascontiguousarray(samples), format="fltp", layout=layout)
        frame.sample_rate = rate
        for packet in [*stream.encode(frame), *stream.encode(None)]:
            container.mux(packet)
    return path


def write_lossless_video(path: Path, frames: np.ndarray, fps: int, codec: str = "ffv1") -> Path:
    """Frames in a Matroska file with a codec that takes any size (1×1 included) and zero frames."""
    with av.open(str(path), "w", format="matroska") as container:
        stream = container.add_stream(codec, rate=fps)
        stream.height, stream.width = frames.shape[1], frames.shape[2]
        stream.pix_fmt = "bgr0" if codec == "ffv1" else "rgb24"
        container.start_encoding()  # PyAV writes the header lazily: make a file even with no frames
        for image in frames:
            for packet in stream.encode(av.VideoFrame.from_ndarray(image, format="rgb24")):
                container.mux(packet)
        for packet in stream.encode(None):
            container.mux(packet)
    return path


def write_png(path: Path, image: np.ndarray) -> Path:
    """One still image, uint8 [H, W, 3]."""
    with av.open(str(path), "w", format="image2") as container:
        stream = container.add_stream("png", rate=1)
        stream.height, stream.width, stream.pix_fmt = image.shape[0], image.shape[1], "rgb24"
        for packet in [*stream.encode(av.VideoFrame.from_ndarray(image, format="rgb24")), *stream.encode(None)]:
            container.mux(packet)
    return path


def truncate_file(path: Path, keep: float) -> Path:
    """Cut a file to its first `keep` share of bytes, as an interrupted download leaves it."""
    data = path.read_bytes()
    path.write_bytes(data[: int(len(data) * keep)])
    return path

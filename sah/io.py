"""Reading and writing media files with PyAV, and atomic file writes.

Readers return sah media objects with a batch of one. Every problem a user can cause (a missing,
empty, corrupt or unsuitable file) is raised as a one-line `MediaError` that names the file.
Writers never leave a half-written target: they write a hidden temp file next to it and rename.
"""

from __future__ import annotations

import contextlib
import math
import os
import secrets
import wave
from collections.abc import Iterable, Iterator
from fractions import Fraction
from pathlib import Path
from typing import TYPE_CHECKING, Any

import av
import numpy as np

from sah.errors import MediaError
from sah.lazy import lazy_import
from sah.media import Audio, Image, Modality, Video

if TYPE_CHECKING:
    import torch
    from torch import Tensor
else:
    torch = lazy_import("torch")

StrPath = str | os.PathLike

__all__ = [
    "atomic_path",
    "probe",
    "read_audio",
    "read_image",
    "read_media",
    "read_video",
    "write_mp4",
    "write_text_atomic",
    "write_wav",
]

# ffmpeg's native AAC encoder always codes 1024-sample frames.
_AAC_FRAME_SIZE = 1024
# A decoded frame count under this share of the count the container promises means the file was cut.
_TRUNCATED_SHARE = 0.5


# --------------------------------------------------------------------------- errors


def _one_line(text: object) -> str:
    return " ".join(str(text).split())


def _error(path: StrPath, problem: str) -> MediaError:
    return MediaError(_one_line(f"{os.fspath(path)}: {problem}"))


def _reason(exc: BaseException) -> str:
    # PyAV's str() repeats the file name and errno ("[Errno 1094995529] Invalid data ...: 'x.mp4'");
    # strerror alone is the readable part.
    return _one_line(getattr(exc, "strerror", None) or exc) or type(exc).__name__


# --------------------------------------------------------------------------- opening


def _check_file(path: StrPath) -> Path:
    file = Path(path)
    try:
        if file.is_dir():
            raise _error(file, "is a directory, not a media file")
        if not file.exists():
            raise _error(file, "no such file")
        if file.stat().st_size == 0:
            raise _error(file, "is empty (0 bytes)")
    except OSError as exc:
        raise _error(file, f"cannot access ({_reason(exc)})") from exc
    return file


@contextlib.contextmanager
def _open_input(path: StrPath) -> Iterator[Any]:
    """Open a container; turn ffmpeg errors while it is open into MediaError; always close it."""
    file = _check_file(path)
    try:
        container = av.open(os.fspath(file), mode="r")
    except OSError as exc:  # PyAV's PermissionError etc. are OSErrors as well as FFmpegErrors
        raise _error(file, f"cannot open ({_reason(exc)})") from exc
    except av.FFmpegError as exc:
        raise _error(file, f"not a media file or corrupt ({_reason(exc)})") from exc
    try:
        yield container
    except av.FFmpegError as exc:
        raise _error(file, f"corrupt or truncated ({_reason(exc)})") from exc
    finally:
        container.close()


def _first_stream(container: Any, kind: str, path: StrPath, *, cover_art: bool = False) -> Any:
    streams = getattr(container.streams, kind)
    if kind == "video" and not cover_art:
        # An mp3/m4a's album cover is a one-picture "video" stream; it is not footage.
        streams = [s for s in streams if not s.disposition & av.stream.Disposition.attached_pic]
    if not streams:
        raise _error(path, f"has no {kind} stream")
    return streams[0]


# --------------------------------------------------------------------------- audio decoding


class _AudioCollector:
    """Decoded audio frames converted to planar float at the stream's own rate and layout."""

    def __init__(self, path: StrPath) -> None:
        self._path = path
        self._resampler: av.AudioResampler | None = None
        self._chunks: list[np.ndarray] = []
        self.num_samples = 0
        self.sample_rate = 0

    def add(self, frame: av.AudioFrame) -> None:
        if self._resampler is None:
            # Layout and rate come from the first frame: the stream header may not know them.
            self.sample_rate = frame.sample_rate
            self._resampler = av.AudioResampler(format="fltp", layout=frame.layout, rate=frame.sample_rate)
        try:
            self._keep(self._resampler.resample(frame))
        except ValueError as exc:  # PyAV refuses frames whose rate or layout differs from the first
            if isinstance(exc, av.FFmpegError):
                raise
            raise _error(self._path, f"audio changes format mid-stream ({_one_line(exc)})") from exc

    def _keep(self, frames: Iterable[av.AudioFrame]) -> None:
        for out in frames:
            array = out.to_ndarray()
            self._chunks.append(array)
            self.num_samples += array.shape[1]

    @property
    def seconds(self) -> float:
        return self.num_samples / self.sample_rate if self.sample_rate else 0.0

    def to_audio(self, max_samples: int | None = None) -> Audio:
        if self._resampler is not None:
            self._keep(self._resampler.resample(None))
        if self.num_samples == 0:
            raise _error(self._path, "audio stream has no samples")
        waveform = torch.from_numpy(np.concatenate(self._chunks, axis=1)[:, :max_samples])
        # Float sources (wav f32, decoded lossy codecs) can overshoot full scale.
        return Audio(waveform.clamp_(-1.0, 1.0).unsqueeze(0), self.sample_rate)


def _exact_samples(container: Any, stream: Any, decoded: int) -> int | None:
    """The sample count an mp4/mov promises, when decoding gave slightly more (AAC's padded last frame)."""
    if "mp4" not in container.format.name or not stream.duration or not stream.time_base:
        return None
    promised = round(stream.duration * stream.time_base * stream.rate)
    return promised if 0 < promised < decoded <= promised + 2 * _AAC_FRAME_SIZE else None


def _check_window(max_seconds: float | None) -> None:
    if max_seconds is not None and not (max_seconds > 0 and math.isfinite(max_seconds)):
        raise ValueError(f"max_seconds must be a positive number, got {max_seconds}")


def read_audio(path: StrPath, max_seconds: float | None = None) -> Audio:
    """The first audio stream of any file ffmpeg reads, as float32 `[1, C, S]` at the file's own rate.

    With `max_seconds`, decoding stops there: a long file costs memory for the window only."""
    _check_window(max_seconds)
    with _open_input(path) as container:
        stream = _first_stream(container, "audio", path)
        collector = _AudioCollector(path)
        for frame in container.decode(stream):
            collector.add(frame)
            if max_seconds is not None and collector.seconds >= max_seconds:
                break
        limit = math.ceil(max_seconds * collector.sample_rate) if max_seconds is not None else None
        audio = collector.to_audio(limit)
        exact = _exact_samples(container, stream, audio.num_samples)
    return audio if exact is None else Audio(audio.waveform[..., :exact], audio.sample_rate)


# --------------------------------------------------------------------------- video decoding


def _stream_fps(stream: Any) -> float | None:
    for rate in (stream.average_rate, stream.guessed_rate, stream.base_rate):
        if rate is not None and rate > 0:
            return float(rate)
    time_base = stream.codec_context.time_base
    return float(1 / time_base) if time_base else None


def _rgb(frame: av.VideoFrame, size: tuple[int, int] | None) -> np.ndarray:
    """`[H, W, 3]` uint8, upright, at `size` (the first frame's) so a mid-stream size change still stacks."""
    width, height = size if size is not None else (frame.width, frame.height)
    array = frame.to_ndarray(format="rgb24", width=width, height=height)
    quarter_turns = round((frame.rotation or 0) / 90) % 4
    # The display matrix says how far to turn the stored picture counterclockwise (phone videos).
    return np.ascontiguousarray(np.rot90(array, quarter_turns)) if quarter_turns else array


class _FrameCollector:
    def __init__(self, limit: int | None) -> None:
        self.limit = limit
        self.frames: list[np.ndarray] = []
        self._size: tuple[int, int] | None = None

    @property
    def full(self) -> bool:
        return self.limit is not None and len(self.frames) >= self.limit

    def add(self, frame: av.VideoFrame) -> None:
        if self.full:
            return
        self.frames.append(_rgb(frame, self._size))
        self._size = self._size or (frame.width, frame.height)

    def to_tensor(self) -> Tensor:
        stacked = torch.from_numpy(np.stack(self.frames))  # [F, H, W, 3] uint8
        return stacked.permute(0, 3, 1, 2).float().div_(255.0).unsqueeze(0)


def _check_frame_count(path: StrPath, stream: Any, decoded: int, limit: int | None) -> None:
    if decoded == 0:
        raise _error(path, "video stream has no decodable frames")
    promised = stream.frames if limit is None else min(stream.frames, limit)
    # A faststart mp4 cut short still opens (its index is at the front) and just stops early.
    if promised and decoded < _TRUNCATED_SHARE * promised:
        raise _error(path, f"truncated: only {decoded} of {promised} video frames decode")


def read_video(path: StrPath, max_frames: int | None = None, max_seconds: float | None = None) -> Video:
    """Frames `[1, F, 3, H, W]` in [0, 1] and the first audio track (or None), in one pass over the file.

    With `max_frames` (or `max_seconds`, which becomes a frame count at the stream's rate), decoding
    stops after that many frames and the audio is cut to the same span.
    """
    if max_frames is not None and max_frames < 1:
        raise ValueError(f"max_frames must be at least 1, got {max_frames}")
    _check_window(max_seconds)
    with _open_input(path) as container:
        video_stream = _first_stream(container, "video", path)
        video_stream.thread_type = "AUTO"
        audio_stream = container.streams.audio[0] if container.streams.audio else None
        fps = _stream_fps(video_stream)
        if max_seconds is not None and fps is not None:
            window = max(1, math.ceil(max_seconds * fps - 1e-6))
            max_frames = window if max_frames is None else min(max_frames, window)
        frames = _FrameCollector(max_frames)
        audio = _AudioCollector(path) if audio_stream is not None else None
        audio_seconds = math.inf if max_frames is None or fps is None else max_frames / fps
        for packet in container.demux([s for s in (video_stream, audio_stream) if s is not None]):
            if packet.stream.index == video_stream.index:
                if not frames.full:  # past the limit, keep demuxing only to collect the audio
                    for frame in packet.decode():
                        frames.add(frame)
            elif audio is not None:
                for frame in packet.decode():
                    audio.add(frame)
            if frames.full and (audio is None or audio.seconds >= audio_seconds):
                break
        _check_frame_count(path, video_stream, len(frames.frames), max_frames)
        if fps is None:
            raise _error(path, "video stream has no frame rate")
        track = _video_audio(container, audio_stream, audio, audio_seconds)
    return Video(frames.to_tensor(), fps, audio=track)


def _video_audio(container: Any, stream: Any, audio: _AudioCollector | None, seconds: float) -> Audio | None:
    if audio is None or audio.num_samples == 0:
        return None  # an audio stream with no packets (seen in screen recordings) counts as no audio
    limit = None if math.isinf(seconds) else math.ceil(seconds * audio.sample_rate)
    track = audio.to_audio(limit)
    exact = _exact_samples(container, stream, track.num_samples)
    return track if exact is None else Audio(track.waveform[..., :exact], track.sample_rate)


def read_image(path: StrPath) -> Image:
    """Pixels `[1, 3, H, W]` in [0, 1] from any still image ffmpeg reads (or a video's first frame)."""
    with _open_input(path) as container:
        stream = _first_stream(container, "video", path, cover_art=True)
        for frame in container.decode(stream):
            pixels = torch.from_numpy(_rgb(frame, None)).permute(2, 0, 1).float().div_(255.0)
            return Image(pixels.unsqueeze(0))
    raise _error(path, "image has no decodable pixels")


def read_media(path: StrPath, modality: Modality | str, max_seconds: float | None = None) -> Audio | Video | Image:
    """Read `path` as the given modality; audio and video only their first `max_seconds` when given."""
    modality = Modality(modality)
    if modality is Modality.AUDIO:
        return read_audio(path, max_seconds)
    if modality is Modality.VIDEO:
        return read_video(path, max_seconds=max_seconds)
    if modality is Modality.IMAGE:
        return read_image(path)
    raise _error(path, f"cannot read {modality} media from a file")


# --------------------------------------------------------------------------- probing


def _seconds(stream: Any, container: Any) -> float | None:
    if stream.duration and stream.time_base:
        return float(stream.duration * stream.time_base)
    return container.duration / av.time_base if container.duration else None


def _probe_audio(container: Any) -> dict[str, Any] | None:
    if not container.streams.audio:
        return None
    stream = container.streams.audio[0]
    return {
        "codec": stream.codec_context.name,
        "sample_rate": stream.rate,
        "channels": stream.channels,
        "duration": _seconds(stream, container),
    }


def _probe_video(container: Any) -> dict[str, Any] | None:
    footage = [s for s in container.streams.video if not s.disposition & av.stream.Disposition.attached_pic]
    if not footage:
        return None
    stream = footage[0]
    fps = _stream_fps(stream)
    duration = _seconds(stream, container)
    frames = stream.frames or (round(duration * fps) if duration and fps else None)
    return {
        "codec": stream.codec_context.name,
        "width": stream.width,
        "height": stream.height,
        "fps": fps,
        "num_frames": frames,
        "duration": duration,
    }


# Size fields that streaming writers leave in a RIFF header: "unknown", not a claim to check.
_RIFF_UNKNOWN = (0, 0xFFFFFFFF)
# Enough for any real file (a fragmented mp4 has two boxes per fragment); a bound on the header walk.
_MAX_BOXES = 100_000


def _iso_overrun(handle: Any, size: int) -> tuple[str, int] | None:
    """The first top-level ISO-BMFF box (mp4, mov, m4a) that runs past the end of the file, as
    (box type, byte where it says it ends). A faststart file cut short still opens, since its
    index comes first, but its last box, the media data, says how long it should be."""
    offset = 0
    for _ in range(_MAX_BOXES):
        if offset >= size:
            return None
        handle.seek(offset)
        header = handle.read(16)
        if len(header) < 8:
            return "box header", offset + 8
        box_size, kind = int.from_bytes(header[:4], "big"), header[4:8].decode("latin-1")
        if not all(" " <= c <= "~" or c == "\xa9" for c in kind):
            return None  # bytes after the last box that are no box (appended junk): not a size claim
        if box_size == 1:  # a 64-bit size follows the type
            if len(header) < 16:
                return f"{kind!r} box header", offset + 16
            box_size = int.from_bytes(header[8:16], "big")
        elif box_size == 0:  # "to the end of the file"
            return None
        if box_size < 8:  # not a size ffmpeg would have accepted either; nothing to compare
            return None
        if offset + box_size > size:
            return f"{kind!r} box", offset + box_size
        offset += box_size
    return None


def _riff_overrun(handle: Any, size: int) -> tuple[str, int] | None:
    """The wav chunk, up to and including the sample data, that runs past the end of the file."""
    head = handle.read(12)
    if len(head) < 12 or head[:4] != b"RIFF" or head[8:12] != b"WAVE":
        return None  # RF64 and other variants: not checked
    offset = 12
    while offset + 8 <= size:
        handle.seek(offset)
        chunk = handle.read(8)
        kind, chunk_size = chunk[:4].decode("latin-1"), int.from_bytes(chunk[4:8], "little")
        if kind == "data" and chunk_size in _RIFF_UNKNOWN:
            return None
        if offset + 8 + chunk_size > size:
            return f"{kind!r} chunk", offset + 8 + chunk_size
        if kind == "data":
            return None
        offset += 8 + chunk_size + (chunk_size & 1)  # chunks are padded to an even length
    return None


def _check_not_cut(path: StrPath, format_name: str) -> None:
    """MediaError when the container's own size fields say the file is longer than it is."""
    formats = set(format_name.split(","))
    walk = _iso_overrun if formats & {"mov", "mp4"} else _riff_overrun if "wav" in formats else None
    if walk is None:
        return
    try:
        size = os.path.getsize(path)
        with open(path, "rb") as handle:
            overrun = walk(handle, size)
    except OSError as exc:
        raise _error(path, f"cannot access ({_reason(exc)})") from exc
    if overrun is not None:
        what, end = overrun
        raise _error(path, f"corrupt or truncated: its {what} ends at byte {end:,} but the file has {size:,} bytes")


def probe(path: StrPath) -> dict[str, Any]:
    """What a file holds, from its headers only (no full decode): cheap enough to validate inputs up front.

    Keys: path, format, duration (seconds or None), is_image, audio (codec, sample_rate, channels,
    duration) or None, video (codec, width, height, fps, num_frames, duration) or None. Counts and
    durations are the container's claims; a file can still fail to decode later.

    A file cut short is refused when its container says how long it should be: an mp4/mov/m4a whose
    last box (the media data, in a faststart file) runs past the end, or a wav whose data chunk does.
    That costs a few small reads of box and chunk headers, not a decode.
    """
    with _open_input(path) as container:
        format_name = container.format.name
        _check_not_cut(path, format_name)
        info = {
            "path": os.fspath(path),
            "format": format_name,
            "duration": container.duration / av.time_base if container.duration else None,
            "is_image": format_name == "image2" or format_name.endswith("_pipe"),
            "audio": _probe_audio(container),
            "video": _probe_video(container),
        }
    if info["audio"] is None and info["video"] is None:
        raise _error(path, "has no audio or video stream")
    return info


# --------------------------------------------------------------------------- atomic writes


def _refuse_existing(target: Path, overwrite: bool) -> None:
    if not overwrite and (target.exists() or target.is_symlink()):
        raise _error(target, "already exists (pass overwrite=True to replace it)")
    if target.is_dir():
        raise _error(target, "is a directory")


def _reserve_temp(target: Path) -> Path:
    # Same directory so the final rename is atomic; the real suffix last so muxers that guess the
    # format from the name still see it. O_EXCL with mode 0o666 gives the umask's usual permissions.
    name = f".{target.name[:100]}.{secrets.token_hex(4)}.tmp{target.suffix}"
    temp = target.with_name(name)
    os.close(os.open(temp, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o666))
    return temp


def _fsync(file: Path) -> None:
    with open(file, "rb") as handle:
        os.fsync(handle.fileno())


def _commit(temp: Path, target: Path, overwrite: bool) -> None:
    _fsync(temp)
    if overwrite:
        os.replace(temp, target)
        return
    try:
        # link() fails if the target appeared meanwhile, where replace() would silently clobber it.
        os.link(temp, target)
    except FileExistsError as exc:
        raise _error(target, "already exists (pass overwrite=True to replace it)") from exc
    except OSError:  # a filesystem without hard links: check-then-replace is the best left
        _refuse_existing(target, overwrite)
        os.replace(temp, target)
        return
    temp.unlink()


@contextlib.contextmanager
def atomic_path(path: StrPath, *, overwrite: bool = False) -> Iterator[Path]:
    """Yield a temp path beside `path`; on success it becomes `path`, on any error it is deleted.

    Refuses (MediaError) when `path` exists, unless `overwrite`. Creates missing parent directories.
    """
    target = Path(path)
    _refuse_existing(target, overwrite)
    try:
        target.parent.mkdir(parents=True, exist_ok=True)
        temp = _reserve_temp(target)
    except OSError as exc:  # a read-only or full filesystem, a file where the folder should be
        raise _error(target, f"cannot write ({_reason(exc)})") from exc
    try:
        yield temp
        _commit(temp, target, overwrite)
    except OSError as exc:  # disk full mid-write and the like: one line, and the temp goes below
        raise _error(target, f"cannot write ({_reason(exc)})") from exc
    finally:
        # After a successful commit the temp is gone; after an error this is the cleanup.
        with contextlib.suppress(FileNotFoundError):
            temp.unlink()


def write_text_atomic(path: StrPath, text: str, *, overwrite: bool = False, encoding: str = "utf-8") -> Path:
    with atomic_path(path, overwrite=overwrite) as temp:
        temp.write_text(text, encoding=encoding)
    return Path(path)


# --------------------------------------------------------------------------- writing audio


def _single(tensor: Tensor, what: str) -> np.ndarray:
    """The one batch item of a media tensor as float32 numpy, NaN-free and clamped to [lo, hi]."""
    if tensor.shape[0] != 1:
        raise ValueError(f"{what} writes one batch item; got batch size {tensor.shape[0]} (use .select(i))")
    return torch.nan_to_num(tensor[0].detach().to("cpu", torch.float32), nan=0.0).numpy()


def write_wav(path: StrPath, audio: Audio, *, overwrite: bool = False) -> Path:
    """16-bit PCM wav of a single-item Audio, clamped to [-1, 1]."""
    samples = np.clip(_single(audio.waveform, "write_wav"), -1.0, 1.0)  # [C, S]
    pcm = np.round(samples.T * 32767.0).astype("<i2")  # interleaved [S, C]
    with atomic_path(path, overwrite=overwrite) as temp, wave.open(os.fspath(temp), "wb") as out:
        out.setnchannels(audio.channels)
        out.setsampwidth(2)
        out.setframerate(audio.sample_rate)
        out.writeframes(pcm.tobytes())
    return Path(path)


# --------------------------------------------------------------------------- writing mp4


def _frame_rate(fps: float) -> Fraction:
    """An exact rate for `fps`, recognising NTSC rates (29.97 -> 30000/1001)."""
    ntsc = round(fps * 1.001)
    if ntsc > 0 and abs(fps - ntsc * 1000 / 1001) < 5e-3 and abs(fps - ntsc) > 1e-3:
        return Fraction(ntsc * 1000, 1001)
    return Fraction(fps).limit_denominator(1001)


def _aac_rate(rate: int) -> int:
    supported = sorted(av.codec.Codec("aac", "w").audio_rates or [rate])
    if rate in supported:
        return rate
    return next((r for r in supported if r >= rate), supported[-1])


def _layout(channels: int) -> str:
    # "Nc" is ffmpeg's default layout for N channels (mono, stereo, 2.1, 4.0, 5.0, 5.1, ...).
    return f"{channels}c"


class _AacTrack:
    """Encodes a waveform into an AAC stream a slice at a time, so audio and video interleave."""

    def __init__(self, container: Any, audio: Audio) -> None:
        self._container = container
        self._samples = np.ascontiguousarray(_single(audio.waveform, "write_mp4 audio").clip(-1.0, 1.0))
        self._rate = audio.sample_rate
        self._layout = _layout(audio.channels)
        out_rate = _aac_rate(audio.sample_rate)
        self._stream = container.add_stream("aac", rate=out_rate, layout=self._layout)
        self._resampler = av.AudioResampler(
            format="fltp", layout=self._layout, rate=out_rate, frame_size=_AAC_FRAME_SIZE
        )
        self._done = 0

    def encode_until(self, seconds: float) -> None:
        self._encode_to(min(self._samples.shape[1], math.ceil(seconds * self._rate)))

    def _encode_to(self, end: int) -> None:
        if end <= self._done:
            return
        frame = av.AudioFrame.from_ndarray(
            np.ascontiguousarray(self._samples[:, self._done : end]), format="fltp", layout=self._layout
        )
        frame.sample_rate = self._rate
        frame.time_base = Fraction(1, self._rate)
        frame.pts = self._done
        self._done = end
        self._encode(self._resampler.resample(frame))

    def finish(self) -> None:
        self._encode_to(self._samples.shape[1])
        self._encode(self._resampler.resample(None))
        self._container.mux(self._stream.encode(None))

    def _encode(self, frames: Iterable[av.AudioFrame]) -> None:
        for frame in frames:
            self._container.mux(self._stream.encode(frame))


def _add_h264(container: Any, fps: float, width: int, height: int, crf: int, preset: str) -> Any:
    rate = _frame_rate(fps)
    stream = container.add_stream("libx264", rate=rate)
    stream.width, stream.height, stream.pix_fmt = width, height, "yuv420p"
    stream.codec_context.time_base = 1 / rate
    stream.options = {"crf": str(crf), "preset": preset}
    # PyAV converts RGB with swscale's default BT.601 matrix to limited range: say so in the stream,
    # or players guess BT.709 for HD sizes and shift the colours.
    stream.codec_context.colorspace = av.video.reformatter.Colorspace.ITU601
    stream.codec_context.color_range = av.video.reformatter.ColorRange.MPEG
    return stream


def _video_frame(pixels: np.ndarray, index: int) -> av.VideoFrame:
    """`[3, H, W]` float in [0, 1] to an RGB frame, edge-padded to even size (yuv420p needs it)."""
    rgb = (np.clip(pixels, 0.0, 1.0) * 255.0 + 0.5).astype(np.uint8).transpose(1, 2, 0)
    height, width = rgb.shape[:2]
    rgb = np.pad(rgb, ((0, height % 2), (0, width % 2), (0, 0)), mode="edge")
    frame = av.VideoFrame.from_ndarray(np.ascontiguousarray(rgb), format="rgb24")
    frame.pts = index
    return frame


def write_mp4(
    path: StrPath,
    video: Video,
    audio: Audio | None = None,
    *,
    overwrite: bool = False,
    crf: int = 18,
    preset: str = "medium",
    faststart: bool = True,
) -> Path:
    """H.264 (yuv420p) mp4 of a single-item Video, with `audio` muxed as AAC when given.

    `video.audio` is not used implicitly: pass it as `audio` to keep a clip's own track.

    Odd sizes are padded to even by repeating the last row/column. Audio at a rate AAC lacks is
    resampled to the next supported rate. `faststart` puts the index first so browsers can stream.
    """
    frames = video.frames
    if frames.shape[0] != 1:
        raise ValueError(f"write_mp4 writes one batch item; got batch size {frames.shape[0]} (use .select(i))")
    if frames.shape[1] == 0:
        raise ValueError("write_mp4 needs at least one frame")
    width, height = video.width + video.width % 2, video.height + video.height % 2
    options = {"movflags": "+faststart"} if faststart else {}
    with atomic_path(path, overwrite=overwrite) as temp:
        try:
            with av.open(os.fspath(temp), mode="w", format="mp4", options=options) as container:
                stream = _add_h264(container, video.fps, width, height, crf, preset)
                track = _AacTrack(container, audio) if audio is not None else None
                for index in range(video.num_frames):
                    if track is not None:
                        track.encode_until((index + 1) / video.fps)
                    pixels = _single(frames[:, index], "write_mp4")
                    container.mux(stream.encode(_video_frame(pixels, index)))
                container.mux(stream.encode(None))
                if track is not None:
                    track.finish()
        except av.FFmpegError as exc:
            raise _error(path, f"cannot write mp4 ({_reason(exc)})") from exc
    return Path(path)

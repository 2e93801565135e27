"""Media I/O tests. Every file is made here with PyAV, so nothing binary is checked in."""

import math
import os
import wave
from fractions import Fraction
from pathlib import Path

import av
import numpy as np
import pytest
import torch

from sah import io
from sah.errors import MediaError
from sah.media import Audio, Image, Modality, Video

torch.set_num_threads(1)

# --------------------------------------------------------------------------- helpers


def _tone(rate: int, seconds: float, freq: float, channels: int = 1, amplitude: float = 0.5) -> np.ndarray:
    t = np.arange(round(rate * seconds)) / rate
    # Each channel a different level, so a channel mix-up shows.
    return np.stack([amplitude / (c + 1) * np.sin(2 * np.pi * freq * t) for c in range(channels)])


def _peak_hz(waveform: torch.Tensor, rate: int) -> float:
    spectrum = np.abs(np.fft.rfft(waveform.double().numpy()))
    return float(np.argmax(spectrum) * rate / waveform.shape[-1])


_PCM = {  # codec: (frame format, scale to integers)
    "pcm_u8": ("u8", None),
    "pcm_s16le": ("s16", 32767),
    "pcm_s24le": ("s32", 2**31 - 1),  # ffmpeg feeds 24-bit PCM through 32-bit samples
    "pcm_f32le": ("flt", None),
}


def _write_pcm_wav(path: Path, data: np.ndarray, rate: int, codec: str) -> Path:
    fmt, scale = _PCM[codec]
    if fmt == "u8":
        samples = np.round(data * 127 + 128).astype(np.uint8)
    elif fmt == "flt":
        samples = data.astype(np.float32)
    else:
        samples = np.round(data * scale).astype(np.int16 if fmt == "s16" else np.int32)
    layout = "mono" if data.shape[0] == 1 else "stereo"
    with av.open(str(path), "w", format="wav") as container:
        stream = container.add_stream(codec, rate=rate, layout=layout)
        frame = av.AudioFrame.from_ndarray(samples.T.reshape(1, -1).copy(), format=fmt, layout=layout)
        frame.sample_rate = rate
        container.mux(stream.encode(frame))
        container.mux(stream.encode(None))
    return path


def _write_encoded(path: Path, fmt: str, codec: str, data: np.ndarray, rate: int) -> Path:
    """A compressed audio file; PyAV's encoder converts the planar float frames to what the codec takes."""
    layout = "mono" if data.shape[0] == 1 else "stereo"
    with av.open(str(path), "w", format=fmt) as container:
        stream = container.add_stream(codec, rate=rate, layout=layout)
        frame = av.AudioFrame.from_ndarray(data.astype(np.float32), format="fltp", layout=layout)
        frame.sample_rate, frame.pts, frame.time_base = rate, 0, Fraction(1, rate)
        container.mux(stream.encode(frame))
        container.mux(stream.encode(None))
    return path


def _has_encoder(name: str) -> bool:
    try:
        av.codec.Codec(name, "w")
    except Exception:
        return False
    return True


def _colour_video(num_frames: int, fps: float, height: int = 17, width: int = 33) -> Video:
    """Solid frames whose green channel steps with the frame index; red and blue fixed."""
    frames = torch.empty(1, num_frames, 3, height, width)
    frames[:, :, 0] = 0.8
    frames[:, :, 1] = torch.linspace(0.1, 0.9, num_frames).view(1, -1, 1, 1)
    frames[:, :, 2] = 0.2
    return Video(frames, fps)


def _audio_for(video: Video, rate: int, freq: float = 440.0, channels: int = 1) -> Audio:
    seconds = video.num_frames / video.fps
    return Audio(torch.from_numpy(_tone(rate, seconds, freq, channels)).float(), rate)


def _assert_one_line_error(excinfo: pytest.ExceptionInfo, path: Path, *needles: str) -> None:
    message = str(excinfo.value)
    assert "\n" not in message
    assert path.name in message
    for needle in needles:
        assert needle in message


def _listing(directory: Path) -> list[str]:
    return sorted(p.name for p in directory.iterdir())


# --------------------------------------------------------------------------- shared media


@pytest.fixture(scope="module")
def media(tmp_path_factory) -> dict[str, Path]:
    root = tmp_path_factory.mktemp("media")
    video24 = _colour_video(24, 24.0)
    video_ntsc = _colour_video(15, 30000 / 1001)
    return {
        "mp4_24": io.write_mp4(root / "av24.mp4", video24, _audio_for(video24, 16000)),
        "mp4_ntsc": io.write_mp4(root / "ntsc.mp4", video_ntsc, _audio_for(video_ntsc, 44100, channels=2)),
        "mp4_silent": io.write_mp4(root / "silent.mp4", _colour_video(8, 8.0)),
        "mp4_no_faststart": io.write_mp4(root / "plain.mp4", video24, faststart=False),
        "wav": _write_pcm_wav(root / "tone.wav", _tone(44100, 0.5, 1000.0, 2), 44100, "pcm_s16le"),
    }


# --------------------------------------------------------------------------- audio reading


@pytest.mark.parametrize("codec", list(_PCM))
@pytest.mark.parametrize(("rate", "channels"), [(44100, 2), (8000, 1)])
def test_read_wav_formats(tmp_path, codec, rate, channels):
    data = _tone(rate, 0.25, 1000.0, channels)
    path = _write_pcm_wav(tmp_path / f"{codec}.wav", data, rate, codec)
    audio = io.read_audio(path)
    assert audio.waveform.shape == (1, channels, data.shape[1])
    assert audio.waveform.dtype == torch.float32
    assert audio.sample_rate == rate
    tolerance = 1.5 / 128 if codec == "pcm_u8" else 1e-4
    np.testing.assert_allclose(audio.waveform[0].numpy(), data, atol=tolerance)


@pytest.mark.parametrize(
    ("fmt", "codec", "suffix", "rate"),
    [
        ("flac", "flac", "flac", 22050),
        ("mp3", "libmp3lame", "mp3", 44100),
        ("ipod", "aac", "m4a", 16000),
        ("ogg", "libopus", "ogg", 48000),
    ],
)
def test_read_compressed_audio(tmp_path, fmt, codec, suffix, rate):
    if not _has_encoder(codec):
        pytest.skip(f"this ffmpeg has no {codec} encoder")
    path = _write_encoded(tmp_path / f"tone.{suffix}", fmt, codec, _tone(rate, 0.5, 1000.0, 2), rate)
    audio = io.read_audio(path)
    assert audio.channels == 2 and audio.sample_rate == rate
    assert abs(audio.duration - 0.5) < 0.06  # lossy codecs add a frame of padding or priming
    assert abs(_peak_hz(audio.waveform[0, 0], rate) - 1000.0) < 5.0
    assert audio.waveform.abs().max() <= 1.0


def test_read_audio_track_of_mkv(tmp_path):
    path = tmp_path / "clip.mkv"
    with av.open(str(path), "w", format="matroska") as container:
        video = container.add_stream("libx264", rate=10)
        video.width, video.height, video.pix_fmt = 16, 16, "yuv420p"
        audio = container.add_stream("flac", rate=8000, layout="mono")
        for i in range(5):
            frame = av.VideoFrame.from_ndarray(np.full((16, 16, 3), 100, np.uint8), format="rgb24")
            frame.pts = i
            container.mux(video.encode(frame))
        container.mux(video.encode(None))
        samples = av.AudioFrame.from_ndarray(_tone(8000, 0.5, 500.0).astype(np.float32), format="fltp", layout="mono")
        samples.sample_rate, samples.pts = 8000, 0
        container.mux(audio.encode(samples))
        container.mux(audio.encode(None))
    track = io.read_audio(path)
    assert track.waveform.shape == (1, 1, 4000)
    assert abs(_peak_hz(track.waveform[0, 0], 8000) - 500.0) < 5.0
    clip = io.read_video(path)
    assert clip.num_frames == 5 and clip.fps == pytest.approx(10.0)
    assert clip.audio is not None and clip.audio.num_samples == 4000


# --------------------------------------------------------------------------- video reading and writing


def _check_mp4(path: Path, num_frames: int, fps: Fraction, has_audio: bool) -> None:
    """Independent of sah's reader: what a player would see."""
    with av.open(str(path)) as container:
        video = container.streams.video[0]
        assert video.codec_context.name == "h264"
        assert video.frames == num_frames
        assert video.average_rate == fps
        video_seconds = float(video.duration * video.time_base)
        if has_audio:
            audio = container.streams.audio[0]
            assert audio.codec_context.name == "aac"
            assert abs(float(audio.duration * audio.time_base) - video_seconds) < 0.05
        else:
            assert not container.streams.audio


@pytest.mark.parametrize(
    ("key", "frames", "fps", "rate", "channels"),
    [("mp4_24", 24, Fraction(24), 16000, 1), ("mp4_ntsc", 15, Fraction(30000, 1001), 44100, 2)],
)
def test_mp4_round_trip(media, key, frames, fps, rate, channels):
    _check_mp4(media[key], frames, fps, has_audio=True)
    video = io.read_video(media[key])
    # 33 x 17 is padded to even for yuv420p
    assert video.frames.shape == (1, frames, 3, 18, 34)
    assert video.fps == pytest.approx(float(fps))
    expected = _colour_video(frames, float(fps)).frames[0, :, :, 8, 16]  # [F, 3], a pixel far from the edges
    assert (video.frames[0, :, :, 8, 16] - expected).abs().max() < 0.03
    assert video.audio is not None
    assert video.audio.sample_rate == rate and video.audio.channels == channels
    assert abs(video.audio.duration - frames / float(fps)) < 0.03
    assert abs(_peak_hz(video.audio.waveform[0, 0], rate) - 440.0) < 5.0


def test_mp4_without_audio(media):
    _check_mp4(media["mp4_silent"], 8, Fraction(8), has_audio=False)
    video = io.read_video(media["mp4_silent"])
    assert video.audio is None and video.num_frames == 8 and video.fps == 8.0
    with pytest.raises(MediaError) as excinfo:
        io.read_audio(media["mp4_silent"])
    _assert_one_line_error(excinfo, media["mp4_silent"], "has no audio stream")


def test_read_video_max_frames_cuts_audio_too(media):
    video = io.read_video(media["mp4_24"], max_frames=6)
    assert video.num_frames == 6
    assert video.audio is not None and abs(video.audio.duration - 6 / 24) < 1e-3


def test_write_mp4_resamples_audio_aac_lacks(tmp_path):
    video = _colour_video(4, 8.0, 16, 16)
    path = io.write_mp4(tmp_path / "odd_rate.mp4", video, _audio_for(video, 22000))
    with av.open(str(path)) as container:
        assert container.streams.audio[0].rate == 22050
    assert io.read_video(path).audio.sample_rate == 22050


def test_write_mp4_rejects_batches(tmp_path):
    video = Video(torch.zeros(2, 3, 3, 8, 8), 8.0)
    with pytest.raises(ValueError, match="select"):
        io.write_mp4(tmp_path / "batch.mp4", video)
    assert _listing(tmp_path) == []


def test_read_image_png(tmp_path):
    pixels = (np.arange(17 * 33 * 3).reshape(17, 33, 3) % 256).astype(np.uint8)
    path = tmp_path / "picture.png"
    with av.open(str(path), "w", format="image2") as container:
        stream = container.add_stream("png", rate=1)
        stream.width, stream.height, stream.pix_fmt = 33, 17, "rgb24"
        container.mux(stream.encode(av.VideoFrame.from_ndarray(pixels, format="rgb24")))
        container.mux(stream.encode(None))
    image = io.read_media(path, Modality.IMAGE)
    assert isinstance(image, Image) and image.pixels.shape == (1, 3, 17, 33)
    expected = torch.from_numpy(pixels).permute(2, 0, 1).float() / 255
    assert torch.allclose(image.pixels[0], expected)
    assert io.probe(path)["is_image"] is True


def test_read_media_dispatch(media):
    assert isinstance(io.read_media(media["wav"], "audio"), Audio)
    assert isinstance(io.read_media(media["mp4_silent"], Modality.VIDEO), Video)
    assert isinstance(io.read_media(media["mp4_silent"], Modality.IMAGE), Image)
    with pytest.raises(MediaError):
        io.read_media(media["wav"], Modality.TEXT)


def test_probe(media):
    info = io.probe(media["mp4_ntsc"])
    assert info["video"]["width"] == 34 and info["video"]["height"] == 18
    assert info["video"]["fps"] == pytest.approx(30000 / 1001)
    assert info["video"]["num_frames"] == 15
    assert info["audio"]["sample_rate"] == 44100 and info["audio"]["channels"] == 2
    assert info["duration"] == pytest.approx(15 / (30000 / 1001), abs=0.05)
    wav = io.probe(media["wav"])
    assert wav["video"] is None and wav["audio"]["channels"] == 2 and wav["is_image"] is False
    assert wav["duration"] == pytest.approx(0.5, abs=1e-3)


# --------------------------------------------------------------------------- errors


def _bad_file(kind: str, tmp_path: Path, media: dict[str, Path]) -> Path:
    if kind == "missing":
        return tmp_path / "missing.mp4"
    if kind == "directory":
        path = tmp_path / "folder.mp4"
        path.mkdir()
        return path
    if kind == "empty":
        path = tmp_path / "empty.wav"
        path.touch()
        return path
    if kind == "text":
        path = tmp_path / "notes.mp4"
        path.write_text("this is not a video\n" * 20)
        return path
    source = media["mp4_24" if kind == "truncated_faststart" else "mp4_no_faststart"].read_bytes()
    path = tmp_path / f"{kind}.mp4"
    path.write_bytes(source[: len(source) // 3])
    return path


@pytest.mark.parametrize("kind", ["missing", "directory", "empty", "text", "truncated", "truncated_faststart"])
@pytest.mark.parametrize("reader", [io.read_video, io.read_audio, io.read_image, io.probe])
def test_bad_files_raise_one_line_media_error(tmp_path, media, kind, reader):
    path = _bad_file(kind, tmp_path, media)
    if kind == "truncated_faststart" and reader is io.read_image:
        pytest.skip("the index and first frame survive: a still needs no more of the file")
    with pytest.raises(MediaError) as excinfo:
        reader(path)
    _assert_one_line_error(excinfo, path)


def _boxes(data: bytes) -> list[tuple[bytes, int, int]]:
    """Top-level ISO-BMFF boxes as (type, offset, size), read independently of sah."""
    boxes, offset = [], 0
    while offset < len(data):
        size = int.from_bytes(data[offset : offset + 4], "big")
        kind = data[offset + 4 : offset + 8]
        if size == 1:
            size = int.from_bytes(data[offset + 8 : offset + 16], "big")
        boxes.append((kind, offset, size))
        offset += size
    return boxes


def _wav_with_chunk_before_data(path: Path, extra: bytes) -> Path:
    """A 16-bit mono 8 kHz wav with an odd-length 'junk' chunk (and its pad byte) before 'data'."""
    samples = (np.sin(np.arange(800) / 5) * 8000).astype("<i2").tobytes()
    fmt = (1).to_bytes(2, "little") + (1).to_bytes(2, "little") + (8000).to_bytes(4, "little") \
        + (16000).to_bytes(4, "little") + (2).to_bytes(2, "little") + (16).to_bytes(2, "little")
    chunks = b"fmt " + len(fmt).to_bytes(4, "little") + fmt
    chunks += b"junk" + len(extra).to_bytes(4, "little") + extra + b"\0" * (len(extra) % 2)
    chunks += b"data" + len(samples).to_bytes(4, "little") + samples
    path.write_bytes(b"RIFF" + (4 + len(chunks)).to_bytes(4, "little") + b"WAVE" + chunks)
    return path


def test_probe_refuses_a_file_its_container_says_is_longer(tmp_path, media):
    """The cut a resumed batch must not trust: a faststart mp4 keeps its index, so it opens and
    promises every frame; only the size its media-data box claims shows the missing tail."""
    faststart = media["mp4_24"].read_bytes()
    assert [b[0] for b in _boxes(faststart)][-1] == b"mdat"  # the last box holds the samples
    for keep in (0.34, 0.9, (len(faststart) - 1) / len(faststart)):
        cut = truncate(tmp_path / f"cut-{keep:.3f}.mp4", faststart, keep)
        with pytest.raises(MediaError, match=r"corrupt or truncated: its 'mdat' box ends at byte") as excinfo:
            io.probe(cut)
        _assert_one_line_error(excinfo, cut, f"but the file has {cut.stat().st_size:,} bytes")
    wav = io.write_wav(tmp_path / "take.wav", Audio(torch.from_numpy(_tone(8000, 0.5, 440.0)).float(), 8000))
    whole = wav.read_bytes()
    for keep, name in ((0.5, "half"), (44 / len(whole), "header")):
        cut = truncate(tmp_path / f"{name}.wav", whole, keep)
        with pytest.raises(MediaError, match=r"corrupt or truncated: its 'data' chunk ends at byte 8,044"):
            io.probe(cut)
    m4a = tmp_path / "voice.m4a"  # audio alone, faststart, as a browser-ready export writes it
    with av.open(str(m4a), "w", format="ipod", options={"movflags": "+faststart"}) as container:
        stream = container.add_stream("aac", rate=16000, layout="mono")
        frame = av.AudioFrame.from_ndarray(_tone(16000, 1.0, 440.0).astype(np.float32), format="fltp", layout="mono")
        frame.sample_rate, frame.pts = 16000, 0
        container.mux([*stream.encode(frame), *stream.encode(None)])
    assert io.probe(m4a)["audio"]["sample_rate"] == 16000
    with pytest.raises(MediaError, match="corrupt or truncated: its 'mdat' box"):
        io.probe(truncate(tmp_path / "voice-cut.m4a", m4a.read_bytes(), 0.8))


def truncate(path: Path, data: bytes, keep: float) -> Path:
    path.write_bytes(data[: int(len(data) * keep)])
    return path


def test_probe_accepts_files_whose_sizes_agree_or_are_unknown(tmp_path, media):
    """What the size check must not refuse: streaming sizes, 64-bit boxes, padded chunks, junk after the end."""
    wav = io.write_wav(tmp_path / "take.wav", Audio(torch.from_numpy(_tone(8000, 0.5, 440.0)).float(), 8000))
    data = bytearray(wav.read_bytes())
    data[4:8] = data[40:44] = (0xFFFFFFFF).to_bytes(4, "little")  # a writer that could not seek back
    (tmp_path / "streamed.wav").write_bytes(bytes(data))
    assert io.probe(tmp_path / "streamed.wav")["audio"]["sample_rate"] == 8000
    assert io.read_audio(tmp_path / "streamed.wav").num_samples == 4000

    padded = _wav_with_chunk_before_data(tmp_path / "padded.wav", b"odd")
    assert io.probe(padded)["audio"]["channels"] == 1 and io.read_audio(padded).num_samples == 800
    with pytest.raises(MediaError, match="'data' chunk ends at byte 1,656"):
        io.probe(truncate(tmp_path / "padded-cut.wav", padded.read_bytes(), 0.9))

    # ffmpeg's 8-byte 'free' box before 'mdat' is room for a 64-bit mdat size: use it, offsets unchanged
    faststart = media["mp4_24"].read_bytes()
    (free, at, _), (mdat, _, size) = _boxes(faststart)[-2:]
    assert (free, mdat) == (b"free", b"mdat")
    large = faststart[:at] + (1).to_bytes(4, "big") + b"mdat" + (size + 8).to_bytes(8, "big") + faststart[at + 16:]
    (tmp_path / "large.mp4").write_bytes(large)
    assert _boxes(large)[-1][:2] == (b"mdat", at)
    assert io.probe(tmp_path / "large.mp4")["video"]["num_frames"] == 24
    assert io.read_video(tmp_path / "large.mp4").num_frames == 24
    with pytest.raises(MediaError, match=f"'mdat' box ends at byte {len(large):,}"):
        io.probe(truncate(tmp_path / "large-cut.mp4", large, 0.95))

    (tmp_path / "tail.mp4").write_bytes(faststart + bytes(range(256)) * 4)  # appended bytes are no box
    assert io.probe(tmp_path / "tail.mp4")["video"]["num_frames"] == 24


def test_wav_has_no_video_stream(media):
    with pytest.raises(MediaError) as excinfo:
        io.read_video(media["wav"])
    _assert_one_line_error(excinfo, media["wav"], "has no video stream")


def test_zero_samples(tmp_path):
    path = tmp_path / "silence.wav"
    with wave.open(str(path), "wb") as out:  # a header and no data
        out.setnchannels(1)
        out.setsampwidth(2)
        out.setframerate(8000)
    with pytest.raises(MediaError) as excinfo:
        io.read_audio(path)
    _assert_one_line_error(excinfo, path, "no samples")


# --------------------------------------------------------------------------- writing and atomicity


def test_write_wav_round_trip(tmp_path):
    waveform = torch.from_numpy(_tone(22050, 0.3, 1000.0, 2)).float()
    waveform[0, :10] = 3.0  # out of range: clamped
    path = io.write_wav(tmp_path / "out.wav", Audio(waveform, 22050))
    audio = io.read_audio(path)
    assert audio.sample_rate == 22050 and audio.waveform.shape == (1, 2, waveform.shape[1])
    assert torch.allclose(audio.waveform[0, :, 10:], waveform[:, 10:], atol=1e-4)
    assert torch.allclose(audio.waveform[0, 0, :10], torch.ones(10), atol=1e-4)


def test_writers_refuse_to_overwrite(tmp_path):
    target = tmp_path / "take.wav"
    target.write_bytes(b"keep me")
    audio = Audio(torch.zeros(1, 100), 8000)
    with pytest.raises(MediaError) as excinfo:
        io.write_wav(target, audio)
    _assert_one_line_error(excinfo, target, "already exists")
    assert target.read_bytes() == b"keep me"
    io.write_wav(target, audio, overwrite=True)
    assert io.read_audio(target).num_samples == 100
    assert _listing(tmp_path) == ["take.wav"]


def test_atomic_path_names_and_permissions(tmp_path):
    old_umask = os.umask(0o022)
    try:
        with io.atomic_path(tmp_path / "clip.mp4") as temp:
            assert temp.parent == tmp_path
            assert temp.name.startswith(".clip.mp4.") and temp.name.endswith(".tmp.mp4")
            temp.write_bytes(b"data")
    finally:
        os.umask(old_umask)
    assert _listing(tmp_path) == ["clip.mp4"]
    assert (tmp_path / "clip.mp4").stat().st_mode & 0o777 == 0o644


def test_atomic_path_error_leaves_target_and_no_temp(tmp_path):
    target = tmp_path / "notes.json"
    io.write_text_atomic(target, "old\n")
    with pytest.raises(RuntimeError), io.atomic_path(target, overwrite=True) as temp:
        temp.write_text("half written")
        raise RuntimeError("writer died")
    assert target.read_text() == "old\n"
    assert _listing(tmp_path) == ["notes.json"]
    io.write_text_atomic(target, "new\n", overwrite=True)
    assert target.read_text() == "new\n"


def test_write_mp4_failing_mid_write_leaves_nothing(tmp_path, monkeypatch):
    target = tmp_path / "out.mp4"
    real = io._video_frame

    def dies_at_third_frame(pixels, index):
        if index == 2:
            raise RuntimeError("encoder died")
        return real(pixels, index)

    monkeypatch.setattr(io, "_video_frame", dies_at_third_frame)
    video = _colour_video(5, 8.0, 16, 16)
    with pytest.raises(RuntimeError, match="encoder died"):
        io.write_mp4(target, video, _audio_for(video, 16000))
    assert _listing(tmp_path) == []


def test_write_creates_parent_directories(tmp_path):
    path = io.write_text_atomic(tmp_path / "a" / "b" / "c.txt", "hi")
    assert path.read_text() == "hi"


def test_write_mp4_survives_nan_and_range(tmp_path):
    frames = torch.full((1, 2, 3, 8, 8), 2.0)
    frames[0, 0, 0, 0, 0] = math.nan
    path = io.write_mp4(tmp_path / "wild.mp4", Video(frames, 8.0))
    assert io.read_video(path).frames[0, :, :, 4, 4].min() > 0.95


def test_album_cover_is_not_video(tmp_path):
    path = tmp_path / "song.mp3"
    with av.open(str(path), "w", format="mp3") as container:
        audio = container.add_stream("libmp3lame", rate=44100, layout="mono")
        cover = container.add_stream("png", rate=1)
        cover.width, cover.height, cover.pix_fmt = 16, 16, "rgb24"
        cover.disposition = av.stream.Disposition.attached_pic
        container.mux(cover.encode(av.VideoFrame.from_ndarray(np.full((16, 16, 3), 200, np.uint8), format="rgb24")))
        container.mux(cover.encode(None))
        frame = av.AudioFrame.from_ndarray(_tone(44100, 0.5, 1000.0).astype(np.float32), format="fltp", layout="mono")
        frame.sample_rate, frame.pts = 44100, 0
        container.mux(audio.encode(frame))
        container.mux(audio.encode(None))
    assert io.probe(path)["video"] is None
    assert io.read_audio(path).num_samples == 22050  # the LAME gapless header trims priming and padding
    assert io.read_image(path).pixels.shape == (1, 3, 16, 16)
    with pytest.raises(MediaError, match="has no video stream"):
        io.read_video(path)

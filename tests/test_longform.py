"""Outputs as long as their condition, and long outputs in guided windows (sah.longform and the
aligner's windows): the windows' layout, fusion and joins, the toy world's class-following over a
16 s input, seams, and the tiny real architectures' fused latents."""

from __future__ import annotations

import math
import sys
from pathlib import Path

import pytest
import torch
from click.testing import CliRunner
from media_helpers import tone, write_wav

import sah
from sah import longform
from sah.cli import cli
from sah.io import read_audio, read_video
from sah.media import Audio, Video
from sah.plugins.toy import oracle, world

sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "benchmarks"))
from long_form import condition, segment_hits  # noqa: E402  (the benchmark's 2 s class blocks and scoring)


@pytest.mark.parametrize("total, window, overlap", [(16.0, 1.0, 0.25), (7.3, 2.0, 0.25), (60.0, 10.24, 0.1),
                                                    (1.5, 1.0, 0.5)])
def test_windows_cover_the_output_and_overlap_at_least_as_asked(total, window, overlap):
    windows = longform.plan(total, window, overlap)
    assert windows[0].start == 0 and windows[-1].end == pytest.approx(total)
    assert all(w.seconds == pytest.approx(window) for w in windows)
    for a, b in zip(windows, windows[1:]):
        assert a.end - b.start >= overlap * window - 1e-9  # no gap, and at least the overlap asked
    # the fewest windows that do it: one fewer would not overlap enough
    count = len(windows)
    assert count == 1 or (total - window) / (count - 2 if count > 2 else 1) > window * (1 - overlap) - 1e-9
    assert longform.plan(0.8, 1.0) == [longform.Window(0.0, 0.8)]


def test_fusion_weights_are_a_smooth_partition_of_unity():
    spans = longform.frame_spans(longform.plan(10.0, 2.0, 0.25), 250, 50)
    weights = longform.fusion_weights(spans, 250)
    total = torch.zeros(250)
    for (lo, hi), w in zip(spans, weights):
        total[lo:hi] += w
        assert w.shape == (hi - lo,) and (w > 0).all()
    torch.testing.assert_close(total, torch.ones(250))
    for w in weights:  # no jumps: the largest step between neighbouring frames is small
        assert (w[1:] - w[:-1]).abs().max() < 0.2


@pytest.mark.parametrize("same", [True, False])
def test_join_keeps_the_level_across_a_crossfade(same):
    """Two windows of one tone with random phases, or of two unrelated noises: the level across
    the overlap stays within 1 dB of the windows' own (an equal-power fade alone would dip to
    nothing where same-pitch tones meet in opposite phase)."""
    rate, g = 16000, torch.Generator().manual_seed(3)
    t = torch.arange(rate + 320) / rate
    if same:
        a, b = (0.5 * torch.sin(2 * math.pi * 750 * t + phase) for phase in (0.0, math.pi))
    else:
        a, b = torch.randn(rate + 320, generator=g) * 0.3, torch.randn(rate + 320, generator=g) * 0.3
    windows = longform.plan(1.75, 1.0, 0.25)
    joined = longform.join([Audio(a[None, None], rate), Audio(b[None, None], rate)], windows, 1.75).waveform[0, 0]
    assert joined.shape[-1] == int(1.75 * rate)

    def db(x: torch.Tensor) -> float:
        return 20 * math.log10(float(x.square().mean().sqrt()))

    overlap = joined[int(0.75 * rate):int(1.0 * rate)]
    assert abs(db(overlap) - db(a)) < 1.0 and abs(db(overlap) - db(b)) < 1.0


def run_v2a(video: Video, tmp_path: Path, **run) -> sah.RunResult:
    plan = sah.plan({"run": {"device": "cpu", **run}, "output": {"dir": str(tmp_path / "out"), "plot": False}},
                    condition=video)
    return sah.generate(plan)


@pytest.mark.parametrize("seconds", [0.5, 3.0, 7.3, pytest.param(60.0, marks=pytest.mark.slow)])
def test_toy_v2a_audio_lasts_as_long_as_the_video(tmp_path, seconds):
    video, _ = condition(seconds)
    audio = run_v2a(video, tmp_path, steps=10).samples[0].audio
    assert abs(audio.duration - video.duration) <= 0.010


@pytest.mark.slow
def test_toy_v2a_follows_a_16_s_video_whose_class_changes_every_2_s(tmp_path):
    video, classes = condition(16.0)
    result = run_v2a(video, tmp_path, steps=50)
    audio = result.samples[0].audio
    assert segment_hits(audio, classes) >= 0.9
    # unguided, the same windows follow nothing: the class-following is guidance's doing
    plain = sah.generate(sah.plan({"run": {"device": "cpu", "steps": 50}, "guidance": {"enabled": False},
                                   "output": {"dir": str(tmp_path / "o2"), "plot": False}}, condition=video))
    assert segment_hits(plain.samples[0].audio, classes) < 0.5
    # the sidecar's trace holds each window's similarity toward its own stretch of the video
    assert len(result.samples[0].trace[-1]["windows"]["audio~condition"]) == len(longform.plan(16.0, 1.0))


@pytest.mark.slow
def test_toy_a2v_follows_a_16_s_tone_sequence(tmp_path):
    g = torch.Generator().manual_seed(5)
    classes = torch.randint(0, world.NUM_CLASSES, (8,), generator=g).tolist()
    waves = [world.make_audio([k], g)[0] for k in classes]  # [1, 16000]: one second each
    wave = torch.cat([torch.cat([w, w], dim=-1) for w in waves], dim=-1)  # 2 s per class
    plan = sah.plan({"run": {"device": "cpu", "steps": 25}, "output": {"dir": str(tmp_path / "out"), "plot": False}},
                    condition=Audio(wave[None], world.SAMPLE_RATE))
    video = sah.generate(plan).samples[0].video
    assert abs(video.num_frames - 16 * world.FPS) <= 1
    hits = total = 0
    for block, k in enumerate(classes):
        for start in (block * 2 + 0.25, block * 2 + 0.75):
            lo = int(round(start * world.FPS))
            clip = Video(video.frames[:, lo:lo + world.NUM_FRAMES], world.FPS)
            if clip.num_frames == world.NUM_FRAMES:
                hits += int(oracle.video_class(clip)[0]) == k
                total += 1
    assert hits / total >= 0.9


def test_no_seams_across_the_joins_of_a_constant_class(tmp_path):
    """With one class all along: across each join (where a window's samples begin or end) the
    largest sample-to-sample step is no larger than the 99th percentile inside the windows, and
    the level changes by less than 1 dB."""
    frames = world.make_video([2], torch.Generator().manual_seed(0))[0].repeat(6, 1, 1, 1)  # 6 s of class 2
    audio = run_v2a(Video(frames[None], world.FPS), tmp_path, steps=25, prompt="north").samples[0].audio
    wave = audio.waveform[0, 0]
    rate = audio.sample_rate
    windows = longform.plan(6.0, 1.0)
    steps = (wave[1:] - wave[:-1]).abs()
    for before, after in zip(windows, windows[1:]):
        # the steps where the incoming window's samples begin and the outgoing one's end, against
        # the steps inside the two windows, away from their overlaps
        edges = [int(round(after.start * rate)) - 1, int(round(before.end * rate)) - 1]
        inside = torch.cat([steps[int(before.start * rate) + 4000:int(after.start * rate)],
                            steps[int(before.end * rate):int(after.end * rate) - 4000]])
        assert steps[edges].max() <= torch.quantile(inside, 0.99)
    joins = [int(round(w.start * rate)) for w in windows[1:]]

    def rms_db(x: torch.Tensor) -> float:
        return 20 * math.log10(float(x.square().mean().sqrt()))

    for j in joins:
        before, across = wave[j - 4000:j], wave[j:j + 4000]
        assert abs(rms_db(before) - rms_db(across)) < 1.0


# -- tiny real architectures ---------------------------------------------------------------------

@pytest.fixture(scope="module")
def tiny_audioldm(tmp_path_factory):
    from test_audioldm import save_tiny_audioldm

    return save_tiny_audioldm(tmp_path_factory.mktemp("audioldm") / "tiny")


def audioldm_v2a(tiny: Path, video: Video, tmp_path: Path, **run) -> sah.RunResult:
    plan = sah.plan({"run": {"device": "cpu", "steps": 3, **run}, "audio": {"generator": "audioldm",
                     "model": str(tiny)}, "binder": {"name": "toy"},
                     "output": {"dir": str(tmp_path / "out"), "plot": False}}, condition=video)
    return sah.generate(plan)


def test_tiny_audioldm_one_window_equals_the_plain_run(tiny_audioldm, tmp_path):
    """A window as long as the output is the plain run, bit for bit."""
    video, _ = condition(0.5)
    plain = audioldm_v2a(tiny_audioldm, video, tmp_path).samples[0].audio.waveform
    one = audioldm_v2a(tiny_audioldm, video, tmp_path, window=0.5).samples[0].audio.waveform
    assert torch.equal(plain, one)


def test_tiny_audioldm_windows_share_one_latent_with_continuous_overlaps(tiny_audioldm, tmp_path):
    """1.5 s in windows of 0.4 s: one latent (fused) whose windows, decoded on their own at the
    end, agree where they overlap (a latent per window would give unrelated sounds there), and an
    output exactly as long as the video."""
    video, _ = condition(1.5)
    plan = sah.plan({"run": {"device": "cpu", "steps": 3, "window": 0.4},
                     "audio": {"generator": "audioldm", "model": str(tiny_audioldm)}, "binder": {"name": "toy"},
                     "output": {"dir": str(tmp_path / "out"), "plot": False}}, condition=video)
    models = sah.load(plan)
    generator = models.generators[sah.Modality.AUDIO]
    windows = sah.api.output_windows(plan.config, [generator], 1.5)
    assert len(windows) == 5
    pieces = []
    decode = generator.decode

    def recording_decode(latents, *args, **kwargs):
        media = decode(latents, *args, **kwargs)
        if not torch.is_grad_enabled():
            pieces.append(media.waveform[0, 0])
        return media

    generator.decode = recording_decode
    result = sah.generate(plan, models)
    audio = result.samples[0].audio
    assert audio.num_samples == int(1.5 * 16000)
    assert len(result.samples[0].trace[-1]["windows"]["audio~condition"]) == 5
    frame = generator.latent_frame_seconds()
    spans = longform.frame_spans(windows, int(round(1.5 / frame)), int(round(0.4 / frame)))
    hop = round(frame * 16000)
    for k in range(4):
        (a_lo, a_hi), (b_lo, _) = spans[k], spans[k + 1]
        mine, theirs = pieces[k][(b_lo - a_lo) * hop:(a_hi - a_lo) * hop], pieces[k + 1][: (a_hi - b_lo) * hop]
        middle = slice(len(mine) // 4, 3 * len(mine) // 4)  # away from each decode's own edges
        error = float((mine[middle] - theirs[middle]).abs().max() / theirs[middle].abs().max())
        # measured 0.05-0.11 (the VAE and vocoder see each window's own edges); two unrelated
        # sounds differ by about their own size
        assert error < 0.2, (k, error)


@pytest.mark.parametrize("seconds", [0.5, 3.0, 7.3, pytest.param(60.0, marks=pytest.mark.slow)])
def test_tiny_audioldm_v2a_through_the_cli_lasts_as_long_as_the_video(tiny_audioldm, tmp_path, seconds):
    from media_helpers import blob_frames, write_mp4

    clip = write_mp4(tmp_path / "clip.mp4", blob_frames(2, int(round(seconds * 10)), 32, 32), fps=10)
    out = tmp_path / "out"
    result = CliRunner().invoke(cli, ["run", "--gen-audio", "audioldm", "--audio-model", str(tiny_audioldm),
                                      "--binder", "toy", "--video", str(clip), "--steps", "2", "--out", str(out),
                                      "--device", "cpu", "--quiet", "--no-plot", "--set", "run.window=2.0"])
    assert result.exit_code == 0, result.output
    assert abs(read_audio(out / "v2a-0.wav").duration - seconds) <= 0.010
    assert abs(read_video(out / "v2a-0.mp4").audio.duration - seconds) <= 0.03


@pytest.fixture(scope="module")
def tiny_animatediff(tmp_path_factory):
    from test_video_generators import make_animatediff  # the tiny real AnimateDiff

    return make_animatediff(tmp_path_factory.mktemp("ad"))


@pytest.mark.parametrize("seconds", [0.5, 3.0, 7.3, pytest.param(60.0, marks=pytest.mark.slow)])
def test_tiny_animatediff_a2v_through_the_cli_has_as_many_frames_as_the_audio_lasts(tiny_animatediff, tmp_path,
                                                                                    seconds):
    base, adapter = tiny_animatediff
    wav = write_wav(tmp_path / "tone.wav", tone(440, seconds, 16000), 16000)
    out = tmp_path / "out"
    result = CliRunner().invoke(cli, ["run", "--gen-video", "animatediff", "--video-model", str(base), "--set",
                                      f"video.motion_adapter={str(adapter)!r}", "--set", "video.frames=8",
                                      "--set", "video.height=32", "--set", "video.width=32", "--set", "video.fps=8.0",
                                      "--binder", "toy", "--audio", str(wav), "--steps", "2", "--out", str(out),
                                      "--device", "cpu", "--quiet", "--no-plot"])
    assert result.exit_code == 0, result.output
    video = read_video(out / "a2v-0.mp4")
    assert abs(video.num_frames - seconds * 8) <= 1  # windows of 8 frames, fused into one latent

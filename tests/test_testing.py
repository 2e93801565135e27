"""sah.testing: the contract checker passes sah's own plugins and catches deliberately broken ones."""

from __future__ import annotations

import sys
from pathlib import Path

import dummy_plugins as dp
import pytest
import torch
from media_helpers import span_mask

from sah import Audio, Modality, Trajectory, Video
from sah.errors import SahError
from sah.generator import GenerationRequest, predict_x0_from_scheduler
from sah.plugins.binders.toy import ToyBinder
from sah.plugins.generators.toy import ToyAudioGenerator, ToyVideoGenerator
from sah.testing import blob_video, check_binder, check_generator, tone_audio

sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "examples" / "sah-plugin-example"))
from sah_plugin_example import ExampleTones  # noqa: E402


def test_media_helpers_make_batched_media():
    audio, video = tone_audio(batch=2, channels=2), blob_video(frames=4, height=24, width=40, batch=3)
    assert audio.waveform.shape == (2, 2, 16000) and float(audio.waveform.abs().max()) <= 0.4 + 1e-6
    assert video.frames.shape == (3, 4, 3, 24, 40) and 0 <= float(video.frames.min()) <= float(video.frames.max()) <= 1


@pytest.mark.parametrize("cls", [ToyAudioGenerator, ToyVideoGenerator])
def test_toy_generators_pass(cls):
    report = check_generator(cls())
    assert {"weights", "licence", "prepare", "noise", "predict_x0", "decode"} <= set(report.passed)
    assert ("duration" in report.passed) == (cls is ToyAudioGenerator)


@pytest.mark.parametrize("cls", [dp.DummyAudio, dp.DummyVideo])
def test_dummy_generators_pass(cls):
    # the in-test dummies declare no licence
    report = check_generator(cls(), skip=["licence"])
    assert "decode" in report.passed and "predict_x0" in report.passed


def test_toy_and_dummy_binders_pass():
    assert {"embed", "gradient", "video_frames", "licence"} <= set(check_binder(ToyBinder()).passed)
    assert {"embed", "gradient", "video_frames"} <= set(check_binder(dp.DummyBinder(), skip=["licence"]).passed)


def test_example_plugin_passes_every_check():
    report = check_generator(ExampleTones(), bad_options={"duration": -1.0})
    assert {"decode", "licence", "duration", "options"} <= set(report.passed)


# --------------------------------------------------------------------------- broken plugins


class DetachedDecode(dp.DummyAudio):
    def decode(self, latents, frames=None, trajectory=None):
        return super().decode(latents.detach(), frames, trajectory)


class HalfGradientDecode(dp.DummyAudio):
    """A gradient reaches the latent, but the wrong one: only a finite difference tells."""

    def decode(self, latents, frames=None, trajectory=None):
        wave = super().decode(latents).waveform
        return Audio(wave.detach() + 0.5 * (wave - wave.detach()), dp.RATE)


class NextStepX0(dp.DummyAudio):
    def predict_x0(self, trajectory, latents, noise_pred, index):
        following = min(index + 1, trajectory.num_steps - 1)
        return predict_x0_from_scheduler(trajectory.state["scheduler"], latents, noise_pred,
                                         trajectory.timesteps[following], index=following)


class BatchNoise(dp.DummyAudio):
    def prepare(self, request):
        trajectory = super().prepare(request)
        g = torch.Generator().manual_seed(request.seeds[0])
        trajectory.latents = torch.randn(request.batch_size, dp.D, generator=g)
        return trajectory


class UnseededNoise(dp.DummyAudio):
    def prepare(self, request):
        trajectory = super().prepare(request)
        trajectory.latents = torch.randn(request.batch_size, dp.D)
        return trajectory


class CheckedBrightness(dp.DummyVideo):
    @classmethod
    def check_options(cls, options):
        if not 0 < options["brightness"] <= 1:
            raise SahError(f"brightness must be in (0, 1], got {options['brightness']}")


class AcceptsAnything(CheckedBrightness):
    @classmethod
    def check_options(cls, options):
        return None


class BadWeights(dp.DummyAudio):
    @classmethod
    def weights(cls, model, options):
        return ["some/model"]


class IgnoresDuration(ToyAudioGenerator):
    def prepare(self, request):
        trajectory = super().prepare(request)
        trajectory.duration = None
        return trajectory


class ShortDecode(ToyAudioGenerator):
    def decode(self, latents, frames=None, trajectory=None):
        audio = super().decode(latents, frames, trajectory)
        return Audio(audio.waveform[..., : audio.num_samples // 4], audio.sample_rate)


class SpanAudio(ToyAudioGenerator):
    """Decodes spans exactly: the whole decode, silent outside them."""

    supports_audio_spans = True

    def decode(self, latents, frames=None, trajectory=None, spans=None):
        audio = super().decode(latents, frames, trajectory)
        if spans is None:
            return audio
        return Audio(audio.waveform * span_mask(audio.num_samples, audio.sample_rate, spans), audio.sample_rate)


class SpansCutShort(SpanAudio):
    """Returns only the decoded stretches, one after the other."""

    def decode(self, latents, frames=None, trajectory=None, spans=None):
        audio = super().decode(latents, frames, trajectory)
        if spans is None:
            return audio
        rate = audio.sample_rate
        return Audio(torch.cat([audio.waveform[..., int(a * rate):int(b * rate)] for a, b in spans], -1), rate)


class SpansShifted(SpanAudio):
    """Decodes each stretch from the wrong place (a latent frame off, in effect)."""

    def decode(self, latents, frames=None, trajectory=None, spans=None):
        if spans is None:
            return super().decode(latents, frames, trajectory)
        return super().decode(latents, frames, trajectory, [(a + 0.01, b + 0.01) for a, b in spans])


def test_a_generator_that_decodes_spans_passes():
    assert "spans" in check_generator(SpanAudio()).passed
    assert "spans" in check_generator(ToyAudioGenerator()).skipped


BROKEN_GENERATORS = [
    (SpansCutShort, {}, r"decode\(spans=...\) must give audio of the whole decode's shape"),
    (SpansShifted, {}, r"decode\(spans=...\) differs from the whole decode over"),
    (DetachedDecode, {}, "decode is not differentiable"),
    (HalfGradientDecode, {}, "disagrees with a central finite difference"),
    (NextStepX0, {}, "predict_x0 is not x̂0 at step"),
    (BatchNoise, {}, "initial noise depends on the batch"),
    (UnseededNoise, {}, "initial noise is not seeded"),
    (AcceptsAnything, {"bad_options": {"brightness": -1.0}}, "AcceptsAnything accepted the bad options"),
    (BadWeights, {}, r"weights\(\) must return a list of \(ref, flag\) tuples"),
    (dp.DummyAudio, {}, "declares no licence"),
    (IgnoresDuration, {}, "does not honour request.duration"),
    (ShortDecode, {}, "less than trajectory.duration"),
]


@pytest.mark.parametrize(("cls", "kwargs", "message"), BROKEN_GENERATORS,
                         ids=[c[0].__name__ for c in BROKEN_GENERATORS])
def test_checker_catches_broken_generator(cls, kwargs, message):
    skip = [] if message == "declares no licence" or cls.licence is not None else ["licence"]
    with pytest.raises(AssertionError, match=message) as caught:
        check_generator(cls(), skip=skip, **kwargs)
    assert "\n" not in str(caught.value)


def test_checked_options_pass_with_a_bad_example():
    assert "options" in check_generator(CheckedBrightness(), bad_options={"brightness": -1.0}, skip=["licence"]).passed


class DetachedBinder(dp.DummyBinder):
    def embed(self, media):
        return super().embed(media).detach()


class FlatBinder(dp.DummyBinder):
    def embed(self, media):
        return super().embed(media).flatten()


class FarFrames(dp.DummyBinder):
    def video_frames(self, num_frames, fps):
        return [0, num_frames]


class ForgetfulBinder(dp.DummyBinder):
    """Releases its video path for good: a later video embed is not what it was."""

    def release(self, keep):
        self.lost = Modality.VIDEO not in keep or getattr(self, "lost", False)

    def embed(self, media):
        out = super().embed(media)
        return out * 0 if getattr(self, "lost", False) and isinstance(media, Video) else out


class FirstSecondBinder(dp.DummyBinder):
    """The dummy binder reads the first 800 samples, within the first second at any rate of 800 Hz
    or more, and says so."""

    def audio_spans(self, duration):
        return [(0.0, 1.0)]


class NarrowSpans(dp.DummyBinder):
    """Says it reads 10 ms of audio; it reads 800 samples (50 ms at 16 kHz)."""

    def audio_spans(self, duration):
        return [(0.0, 0.01)]


def test_a_binder_that_names_the_audio_it_reads_passes():
    assert "audio_spans" in check_binder(FirstSecondBinder(), skip=["licence"]).passed
    assert "audio_spans" in check_binder(dp.DummyBinder(), skip=["licence"]).skipped


@pytest.mark.parametrize(("cls", "message"), [(DetachedBinder, r"embed\(Audio\) is not differentiable"),
                                              (NarrowSpans, r"reads 1 s of audio at 16000 Hz outside audio_spans"),
                                              (FlatBinder, r"must return \[B, D\]"),
                                              (FarFrames, "picks indices outside"),
                                              (ForgetfulBinder, r"embed\(Video\) changed after release")])
def test_checker_catches_broken_binder(cls, message):
    with pytest.raises(AssertionError, match=message):
        check_binder(cls(), skip=["licence"])


def test_unknown_check_names_are_refused():
    with pytest.raises(ValueError, match="unknown checks"):
        check_generator(dp.DummyAudio(), skip=["nosie"])


def test_prepare_without_scheduler_skips_predict_x0():
    class NoScheduler(dp.DummyAudio):
        def prepare(self, request):
            t = super().prepare(request)
            return Trajectory(t.latents, t.timesteps, t.prompt_embeds, {})

    report = check_generator(NoScheduler(), GenerationRequest(["a", "b"], [3, 4], num_steps=5),
                             skip=["licence"])
    assert "predict_x0" in report.skipped

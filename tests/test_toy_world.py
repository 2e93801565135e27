"""The toy world: oracle, codecs, shipped generators and binder."""

from __future__ import annotations

import math

import pytest
import torch

from sah.generator import GenerationRequest
from sah.media import Audio, Image, Text, Video
from sah.plugins.binders.toy import ToyBinder, resample_window
from sah.plugins.generators.toy import ToyAudioGenerator, ToyVideoGenerator
from sah.plugins.toy import oracle, world
from sah.plugins.toy.nets import load_world

torch.set_num_threads(1)


@pytest.fixture(scope="module")
def tw():
    return load_world()


@pytest.fixture(scope="module")
def binder():
    return ToyBinder()


@pytest.fixture(scope="module")
def audio_gen():
    return ToyAudioGenerator()


@pytest.fixture(scope="module")
def video_gen():
    return ToyVideoGenerator()


def _data(n: int = 64, seed: int = 0) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    g = torch.Generator().manual_seed(seed)
    k = torch.arange(n) % world.NUM_CLASSES
    return k, world.make_audio(k, g), world.make_video(k, g)


def _sample(gen, prompts: list[str], steps: int = 50, cfg: float = 1.0, seed0: int = 0):
    request = GenerationRequest(prompts, list(range(seed0, seed0 + len(prompts))), num_steps=steps, cfg_scale=cfg)
    trajectory = gen.prepare(request)
    z = trajectory.latents
    for i in range(trajectory.num_steps):
        _, z = gen.denoise_step(trajectory, z, i)
    with torch.no_grad():
        return gen.decode(z)


# --- world -------------------------------------------------------------------------------------


def test_class_of_prompt() -> None:
    assert world.class_of_prompt("A tone from the North!") == 2
    assert world.class_of_prompt("southeast") == 7
    assert world.class_of_prompt("a dog barking") is None
    assert world.class_of_prompt("") is None
    assert world.CLASS_NAMES[0] == "east" and world.FREQUENCIES[3] == 1000.0


def test_video_geometry_north_is_up() -> None:
    clip = world.make_video([2], torch.Generator().manual_seed(0))
    gray = clip[0, 0, 0]
    row, col = divmod(int(gray.argmax()), world.SIZE)
    assert row < world.SIZE / 2 - 6 and abs(col - (world.SIZE - 1) / 2) <= 2
    assert clip.shape == (1, world.NUM_FRAMES, 3, world.SIZE, world.SIZE)
    assert torch.equal(clip[:, :, 0], clip[:, :, 2])


# --- oracle ------------------------------------------------------------------------------------


def test_oracle_clean_data() -> None:
    k, audio, video = _data(256)
    assert torch.equal(oracle.audio_class(audio), k)
    assert torch.equal(oracle.video_class(video), k)
    assert oracle.audio_valid(audio).all()
    assert oracle.video_valid(video).all()


def test_oracle_media_objects_any_rate_and_size() -> None:
    k, audio, video = _data(16)
    # 2 s at 44.1 kHz, stereo: the FFT's own frequency axis is used, no resampling
    t = torch.arange(88_200) / 44_100
    freq = torch.tensor(world.FREQUENCIES)[k].view(-1, 1, 1)
    wave = 0.4 * torch.sin(2 * math.pi * freq * t).expand(-1, 2, -1)
    assert torch.equal(oracle.audio_class(Audio(wave, 44_100)), k)
    assert oracle.audio_valid(Audio(wave, 44_100)).all()
    big = torch.nn.functional.interpolate(video.flatten(0, 1), size=(96, 96), mode="bilinear")
    big = Video(big.view(16, world.NUM_FRAMES, 3, 96, 96), fps=8)
    assert torch.equal(oracle.video_class(big), k)
    assert oracle.video_valid(big).all()


def test_oracle_rejects_invalid_media() -> None:
    k, audio, video = _data(64)
    g = torch.Generator().manual_seed(1)
    assert not oracle.audio_valid(0.3 * torch.randn(16, 1, world.NUM_SAMPLES, generator=g)).any()
    assert not oracle.audio_valid(audio[:32] + audio[1:33]).any(), "two tones"
    assert not oracle.audio_valid(torch.zeros(2, 1, world.NUM_SAMPLES)).any(), "silence"
    assert not oracle.audio_valid((audio[:8] * 4).clamp(-1, 1)).any(), "clipped"
    assert not oracle.video_valid(torch.rand(16, world.NUM_FRAMES, 3, 32, 32, generator=g)).any()
    assert not oracle.video_valid(torch.zeros(2, world.NUM_FRAMES, 3, 32, 32)).any()
    assert not oracle.video_valid((video[:32] + video[1:33]).clamp(0, 1)).any(), "two adjacent blobs"
    assert not oracle.video_valid((video[:32] + video[4:36]).clamp(0, 1)).any(), "two opposite blobs"


# --- codecs ------------------------------------------------------------------------------------


def test_codec_round_trips(tw) -> None:
    _, audio, video = _data(64, seed=3)
    za, zv = tw.audio_codec.encode(audio), tw.video_codec.encode(video)
    assert za.shape == zv.shape == (64, tw.config.latent_dim)
    assert (tw.audio_codec.decode(za) - audio).abs().max() < 1e-2
    assert (tw.video_codec.decode(zv) - video).abs().mean() < 1e-2
    # whitened: latents of the data have about unit variance in the directions that carry it
    assert 0.7 < za.std(0)[:16].mean() < 1.3 and 0.7 < zv.std(0)[:16].mean() < 1.3


def test_frame_subset_decode_matches_full(video_gen) -> None:
    z = torch.randn(4, 32, generator=torch.Generator().manual_seed(0))
    full = video_gen.decode(z)
    assert full.frames.shape == (4, 8, 3, 32, 32) and full.frame_indices is None
    for subset in ([0, 3, 7], [5], [7, 2], list(range(8))):
        part = video_gen.decode(z, subset)
        assert part.frame_indices == tuple(subset) and part.total_frames == 8
        assert torch.equal(part.frames, full.frames[:, subset])
    zg = z.clone().requires_grad_(True)
    video_gen.decode(zg, [1, 6]).frames.sum().backward()
    assert zg.grad is not None and zg.grad.abs().sum() > 0


def test_audio_decode_gradients(audio_gen) -> None:
    z = torch.randn(2, 32, requires_grad=True)
    out = audio_gen.decode(z)
    assert out.sample_rate == world.SAMPLE_RATE and out.waveform.shape == (2, 1, world.NUM_SAMPLES)
    out.waveform.pow(2).sum().backward()
    assert z.grad.abs().sum() > 0


# --- generators --------------------------------------------------------------------------------


def test_generator_interface(audio_gen, video_gen) -> None:
    assert audio_gen.name == "toy-audio" and video_gen.name == "toy-video"
    assert video_gen.supports_frame_subset and video_gen.supports_prompt_tuning and audio_gen.supports_prompt_tuning
    assert video_gen.num_frames() == 8 and video_gen.fps() == 8
    request = GenerationRequest(["north", "a cat"], [1, 2], num_steps=10, cfg_scale=3.0, negative_prompt="south")
    tr = video_gen.prepare(request)
    assert tr.latents.shape == (2, 32) and tr.num_steps == 10 and tr.prompt_embeds.shape[0] == 2
    # one seed gives one sample whatever the batch
    alone = video_gen.prepare(GenerationRequest(["x"], [2], num_steps=10))
    assert torch.equal(alone.latents[0], tr.latents[1])
    # prompt tuning: the noise prediction is differentiable in the prompt embeddings
    tr.prompt_embeds = tr.prompt_embeds.clone().requires_grad_(True)
    eps = video_gen.predict_noise(tr, tr.latents, 0)
    eps.sum().backward()
    assert tr.prompt_embeds.grad.abs().sum() > 0
    with torch.no_grad():
        x0 = video_gen.predict_x0(tr, tr.latents, eps, 0)
        nxt = video_gen.step(tr, tr.latents, eps, 0)
    assert x0.shape == nxt.shape == (2, 32)


def test_prompted_sampling_quality(audio_gen, video_gen) -> None:
    k = torch.arange(64) % 8
    prompts = [f"a {world.CLASS_NAMES[i]} thing" for i in k.tolist()]
    audio = _sample(audio_gen, prompts)
    video = _sample(video_gen, prompts)
    assert (oracle.audio_class(audio) == k).float().mean() >= 0.9
    assert (oracle.video_class(video) == k).float().mean() >= 0.9
    assert oracle.audio_valid(audio).float().mean() >= 0.8
    assert oracle.video_valid(video).float().mean() >= 0.8


def test_unconditional_sampling_spreads_over_classes(audio_gen, video_gen) -> None:
    for gen, judge in ((audio_gen, oracle.audio_class), (video_gen, oracle.video_class)):
        counts = torch.bincount(judge(_sample(gen, [""] * 64, seed0=100)), minlength=8)
        assert (counts > 0).sum() >= 7 and counts.max() <= 20, counts.tolist()


# --- binder ------------------------------------------------------------------------------------


def test_binder_retrieval_on_clean_data(binder) -> None:
    k, audio, video = _data(64, seed=5)
    ea = binder.embed(Audio(audio, world.SAMPLE_RATE))
    ev = binder.embed(Video(video, fps=world.FPS))
    ei = binder.embed(Image(video[:, 0]))
    et = binder.embed(Text(list(world.CLASS_NAMES)))
    assert ea.shape == (64, 64) and torch.allclose(ea.norm(dim=-1), torch.ones(64), atol=1e-4)
    assert torch.equal((ea @ et.T).argmax(1), k)
    assert torch.equal((ev @ et.T).argmax(1), k)
    assert torch.equal((ei @ et.T).argmax(1), k)
    sim = ea @ ev.T
    same = k.view(-1, 1) == k.view(1, -1)
    assert torch.equal(sim.argmax(1).remainder(8), k)
    # shipped weights: positives ≈ 0.999, negatives ≈ 0.40 (at most ≈ 0.42)
    assert sim[same].min() > 0.95 and sim[~same].max() < 0.6


def test_binder_accepts_any_audio_and_video_format(binder) -> None:
    k, audio, video = _data(8, seed=6)
    ref = binder.embed(Audio(audio, world.SAMPLE_RATE))
    t = torch.arange(2 * 22_050) / 22_050
    wave = 0.5 * torch.sin(2 * math.pi * torch.tensor(world.FREQUENCIES).view(-1, 1, 1) * t).expand(-1, 2, -1)
    other = binder.embed(Audio(wave.contiguous(), 22_050))
    assert ((ref * other).sum(-1) > 0.9).all()
    wide = torch.zeros(8, 16, 3, 48, 64)
    wide[..., 8:56] = torch.nn.functional.interpolate(
        video.flatten(0, 1), size=(48, 48), mode="bilinear").view(8, 8, 3, 48, 48).repeat_interleave(2, dim=1)
    ev = binder.embed(Video(video, fps=8))
    ew = binder.embed(Video(wide.requires_grad_(True), fps=16))
    assert ((ev * ew).sum(-1) > 0.9).all()
    ew.sum().backward()
    assert wide.grad.abs().sum() > 0
    assert binder.video_frames(8, 8) == list(range(8))
    assert binder.video_frames(16, 16) == [0, 2, 4, 6, 9, 11, 13, 15]


def test_resample_window_is_exact_for_band_limited_tones() -> None:
    t = torch.arange(48_000) / 48_000
    tone = torch.sin(2 * math.pi * 1000 * t).unsqueeze(0)
    out = resample_window(tone, 48_000)
    ref = torch.sin(2 * math.pi * 1000 * torch.arange(16_000) / 16_000)
    assert out.shape == (1, 16_000) and (out[0] - ref).abs().max() < 1e-3


def test_binder_gradients_reach_audio(binder) -> None:
    _, audio, _ = _data(4)
    wave = audio.clone().requires_grad_(True)
    binder.embed(Audio(wave, world.SAMPLE_RATE)).sum().backward()
    assert torch.isfinite(wave.grad).all() and wave.grad.abs().sum() > 0


def test_plugins_register() -> None:
    from sah.plugins.binders import toy as binder_mod
    from sah.plugins.generators import toy as gen_mod

    seen: list[type] = []
    gen_mod.register_generators(seen.append)
    binder_mod.register_binders(seen.append)
    assert seen == [ToyAudioGenerator, ToyVideoGenerator, ToyBinder]

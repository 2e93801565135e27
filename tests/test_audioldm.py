"""The AudioLDM generator on a tiny, randomly initialised AudioLDM built in code and saved in the
hub's folder layout: parity with diffusers' AudioLDMPipeline, gradients, guided V2A via the CLI,
and one-line errors."""

from __future__ import annotations

import copy
import json
from pathlib import Path

import pytest
import torch
from click.testing import CliRunner
from diffusers import AudioLDMPipeline, AutoencoderKL, DDIMScheduler, UNet2DConditionModel
from media_helpers import blob_frames, write_mp4
from transformers import (
    ClapTextConfig,
    ClapTextModelWithProjection,
    RobertaTokenizer,
    SpeechT5HifiGan,
    SpeechT5HifiGanConfig,
)

from sah.cli import cli
from sah.errors import SahError
from sah.generator import GenerationRequest
from sah.io import read_audio, read_video
from sah.media import Video
from sah.plugins.binders.toy import ToyBinder
from sah.plugins.generators.audioldm import SCHEDULERS, AudioLDMGenerator

# With hop 4·4 at 16 kHz a mel frame is 1 ms and the VAE halves time: 1 latent frame = 2 ms.
DURATION = 0.2995  # not a whole number of latent frames: exercises rounding up and cutting back


def tiny_tokenizer() -> RobertaTokenizer:
    """A byte-level BPE RoBERTa tokenizer over lowercase letters with a few merges."""
    letters = list("abcdefghijklmnopqrstuvwxyz")
    tokens = ["<s>", "<pad>", "</s>", "<unk>", *letters, "Ġ", *("Ġ" + c for c in letters),
              "og", "Ġdog", "ar", "Ġbar", "<mask>"]
    merges = [("Ġ", "d"), ("o", "g"), ("Ġd", "og"), ("a", "r"), ("Ġ", "b"), ("Ġb", "ar")]
    return RobertaTokenizer(vocab={t: i for i, t in enumerate(tokens)}, merges=merges, model_max_length=16)


def tiny_audioldm_pipeline(seed: int = 0) -> AudioLDMPipeline:
    """AudioLDM's real architectures at toy size (the spirit of diffusers' dummy components)."""
    torch.manual_seed(seed)
    tokenizer = tiny_tokenizer()
    unet = UNet2DConditionModel(
        sample_size=16, in_channels=4, out_channels=4, block_out_channels=(8, 16), layers_per_block=1,
        norm_num_groups=8, down_block_types=("DownBlock2D", "CrossAttnDownBlock2D"),
        up_block_types=("CrossAttnUpBlock2D", "UpBlock2D"), cross_attention_dim=(8, 16),
        # AudioLDM's conditioning: the CLAP embedding enters as a projected class embedding
        class_embed_type="simple_projection", projection_class_embeddings_input_dim=8, class_embeddings_concat=True)
    vae = AutoencoderKL(in_channels=1, out_channels=1, latent_channels=4, block_out_channels=(8, 16),
                        norm_num_groups=8, down_block_types=("DownEncoderBlock2D",) * 2,
                        up_block_types=("UpDecoderBlock2D",) * 2)
    text_encoder = ClapTextModelWithProjection(ClapTextConfig(
        vocab_size=len(tokenizer), hidden_size=8, intermediate_size=16, num_attention_heads=1, num_hidden_layers=1,
        projection_dim=8, max_position_embeddings=24, bos_token_id=0, pad_token_id=1, eos_token_id=2))
    vocoder = SpeechT5HifiGan(SpeechT5HifiGanConfig(
        model_in_dim=8, sampling_rate=16000, upsample_initial_channel=16, upsample_rates=[4, 4],
        upsample_kernel_sizes=[8, 8], resblock_kernel_sizes=[3, 7], resblock_dilation_sizes=[[1, 3, 5], [1, 3, 5]],
        normalize_before=False, initializer_range=0.2))  # audible output from random weights
    scheduler = DDIMScheduler(beta_start=0.00085, beta_end=0.012, beta_schedule="scaled_linear", clip_sample=False,
                              set_alpha_to_one=False)
    pipe = AudioLDMPipeline(vae=vae, text_encoder=text_encoder, tokenizer=tokenizer, unet=unet, scheduler=scheduler,
                            vocoder=vocoder)
    pipe.set_progress_bar_config(disable=True)
    return pipe


def save_tiny_audioldm(folder: Path, seed: int = 0) -> Path:
    """Write a tiny AudioLDM in the hub layout (model_index.json + one folder per component)."""
    tiny_audioldm_pipeline(seed).save_pretrained(folder)
    return folder


@pytest.fixture(scope="module")
def tiny(tmp_path_factory) -> Path:
    return save_tiny_audioldm(tmp_path_factory.mktemp("audioldm") / "tiny-audioldm")


def sample(generator: AudioLDMGenerator, request: GenerationRequest) -> torch.Tensor:
    """Unguided sampling through the Generator interface, as the aligner drives it."""
    trajectory = generator.prepare(request)
    latents = trajectory.latents
    for i in range(trajectory.num_steps):
        _, latents = generator.denoise_step(trajectory, latents, i)
    with torch.no_grad():
        return generator.decode(latents).waveform


@pytest.mark.parametrize("scheduler, cfg_scale", [("ddim", 2.5), ("ddpm", 3.0), ("dpm", 1.0)])
def test_unguided_waveform_equals_audioldm_pipeline(tiny, scheduler, cfg_scale):
    gen = AudioLDMGenerator(str(tiny), duration=DURATION, scheduler=scheduler)
    prompts, seeds, negative = ["a dog barks", "a bar"], [3, 4], "dog"
    ours = sample(gen, GenerationRequest(prompts, seeds, negative_prompt=negative, num_steps=5, cfg_scale=cfg_scale))

    pipe = AudioLDMPipeline.from_pretrained(tiny)  # an independent load of the same folder
    pipe.scheduler = gen.scheduler_cls.from_config(pipe.scheduler.config)
    pipe.set_progress_bar_config(disable=True)
    reference = pipe(prompts, negative_prompt=[negative] * 2, audio_length_in_s=DURATION, num_inference_steps=5,
                     guidance_scale=cfg_scale, generator=[torch.Generator().manual_seed(s) for s in seeds],
                     output_type="pt").audios

    assert ours.shape == (2, 1, int(DURATION * 16000)) == (2, 1, reference.shape[-1])
    assert reference.abs().max() > 0.1  # audible, so the tolerance below is meaningful
    torch.testing.assert_close(ours[:, 0], reference, rtol=1e-5, atol=1e-6)


@pytest.mark.parametrize("scheduler", [*SCHEDULERS, "DPMSolverMultistepScheduler"])
def test_every_listed_scheduler_samples(tiny, scheduler):
    gen = AudioLDMGenerator(str(tiny), duration=0.05, scheduler=scheduler)
    assert type(gen.prepare(GenerationRequest(["a"], [0], num_steps=4)).state["scheduler"]).__name__ == \
        SCHEDULERS.get(scheduler, scheduler)
    wave = sample(gen, GenerationRequest(["a dog"], [0], num_steps=4, cfg_scale=2.5))
    assert wave.shape == (1, 1, 800) and torch.isfinite(wave).all() and wave.abs().max() > 0


def test_too_few_steps_for_pndm_is_one_line(tiny):
    gen = AudioLDMGenerator(str(tiny), duration=0.05, scheduler="pndm")
    with pytest.raises(SahError, match="scheduler 'pndm' cannot run 3 steps"):
        gen.prepare(GenerationRequest(["a"], [0], num_steps=3))


def test_predict_x0_is_the_current_timesteps_estimate(tiny):
    gen = AudioLDMGenerator(str(tiny), duration=DURATION)
    trajectory = gen.prepare(GenerationRequest(["a dog"], [0], num_steps=5, cfg_scale=2.5))
    latents = trajectory.latents
    _, latents = gen.denoise_step(trajectory, latents, 0)  # move off the first step
    with torch.no_grad():
        noise_pred = gen.predict_noise(trajectory, latents, 1)
    ddim = copy.deepcopy(trajectory.state["scheduler"])
    expected = ddim.step(noise_pred, trajectory.timesteps[1], latents).pred_original_sample
    torch.testing.assert_close(gen.predict_x0(trajectory, latents, noise_pred, 1), expected)


@pytest.mark.parametrize("decode_chunk", [0.0, 0.1])
def test_guidance_gradient_reaches_the_latent(tiny, decode_chunk):
    gen = AudioLDMGenerator(str(tiny), duration=DURATION, decode_chunk=decode_chunk)
    binder = ToyBinder()
    trajectory = gen.prepare(GenerationRequest(["a dog"], [1], num_steps=5, cfg_scale=2.5))
    with torch.no_grad():
        noise_pred = gen.predict_noise(trajectory, trajectory.latents, 2)
        target = binder.embed(Video(torch.from_numpy(blob_frames(3, 8, 32, 32)).permute(0, 3, 1, 2) / 255.0, 8.0))
    latents = trajectory.latents.detach().requires_grad_(True)
    audio = gen.decode(gen.predict_x0(trajectory, latents, noise_pred, 2))
    assert audio.waveform.shape == (1, 1, int(DURATION * 16000)) and audio.sample_rate == 16000
    loss = (1 - binder.similarity(binder.embed(audio), target)).sum()
    (grad,) = torch.autograd.grad(loss, latents)
    assert torch.isfinite(grad).all() and grad.abs().max() > 0
    assert grad.abs().amax(dim=(0, 1, 3)).gt(0).float().mean() > 0.9  # it reaches (nearly) every latent frame


def test_noise_prediction_is_differentiable_in_the_prompt_embedding(tiny):
    gen = AudioLDMGenerator(str(tiny), duration=DURATION)
    assert gen.supports_prompt_tuning
    trajectory = gen.prepare(GenerationRequest(["a dog"], [0], num_steps=5, cfg_scale=2.5))
    trajectory.prompt_embeds = trajectory.prompt_embeds.detach().requires_grad_(True)
    with torch.enable_grad():
        noise_pred = gen.predict_noise(trajectory, trajectory.latents, 1)
    (grad,) = torch.autograd.grad(noise_pred.square().sum(), trajectory.prompt_embeds)
    assert torch.isfinite(grad).all() and grad.abs().max() > 0


def test_chunked_decode_approximates_the_whole_decode(tiny):
    whole = AudioLDMGenerator(str(tiny), duration=DURATION)
    chunked = AudioLDMGenerator(str(tiny), duration=DURATION, decode_chunk=0.05)
    # 150 latent frames in chunks of 25 with 8 frames of context: several pieces, each seeing a part
    assert chunked.chunk_frames + 2 * chunked.chunk_context < chunked.latent_shape[1]
    latents = torch.randn(2, *whole.latent_shape, generator=torch.Generator().manual_seed(0))
    with torch.no_grad():
        a, b = whole.decode(latents).waveform, chunked.decode(latents).waveform
    assert a.shape == b.shape
    # GroupNorm statistics and the VAE's mid-block attention are per chunk, so close, not equal
    assert (a - b).norm() / a.norm() < 0.2


def test_bfloat16_model_runs_and_returns_float32_audio(tiny):
    gen = AudioLDMGenerator(str(tiny), duration=DURATION, dtype=torch.bfloat16)
    assert gen.unet.dtype == gen.vae.dtype == gen.vocoder.dtype == gen.text_encoder.dtype == torch.bfloat16
    wave = sample(gen, GenerationRequest(["a dog"], [0], num_steps=2, cfg_scale=2.5))
    assert wave.dtype == torch.float32 and torch.isfinite(wave).all() and wave.abs().max() > 0


def test_duration_maps_to_latent_frames_like_the_pipeline(tiny):
    gen = AudioLDMGenerator(str(tiny), duration=DURATION)
    # 0.2995 s = 299 mel frames of 1 ms, rounded up to 300 (a multiple of the VAE's factor 2) = 150 latents
    assert gen.latent_shape == (4, 150, 4) and gen.num_samples == 4792


def test_bad_options_fail_before_loading(tmp_path):
    missing = str(tmp_path / "nowhere")
    with pytest.raises(SahError, match="scheduler 'euler' is not supported"):
        AudioLDMGenerator(missing, scheduler="euler")
    with pytest.raises(SahError, match="duration must be positive"):
        AudioLDMGenerator(missing, duration=0.0)
    with pytest.raises(SahError, match="does not exist"):
        AudioLDMGenerator(missing)


def test_too_short_duration_is_one_line(tiny):
    with pytest.raises(SahError, match=r"at least 0.002 s"):
        AudioLDMGenerator(str(tiny), duration=0.001)


def test_uncached_hub_id_offline_is_one_line(monkeypatch):
    import huggingface_hub.constants

    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    monkeypatch.setattr(huggingface_hub.constants, "HF_HUB_OFFLINE", True)
    with pytest.raises(SahError) as info:
        AudioLDMGenerator("sah-tests/no-such-audioldm")
    message = str(info.value)
    assert "\n" not in message
    assert "'sah-tests/no-such-audioldm'" in message and "--audio-model PATH" in message


def invoke(*args):
    return CliRunner().invoke(cli, [str(a) for a in args], catch_exceptions=False)


def run_v2a(tiny: Path, clip: Path, out: Path, *extra: str) -> dict:
    result = invoke("run", "--gen-audio", "audioldm", "--audio-model", tiny, "--binder", "toy", "--video", clip,
                    "--steps", 5, "--out", out, "--device", "cpu", "--quiet", "--set", "audio.duration=1.0",
                    # a fixed-size step: the similarity rises monotonically, which Adam's sign steps need not
                    "--set", "guidance.optimizer='ngd'", "--set", "guidance.lr=0.03", *extra)
    assert result.exit_code == 0, result.output
    return json.loads((out / "v2a-0.json").read_text())


def test_guided_v2a_through_the_cli_raises_similarity(tiny, tmp_path):
    clip = write_mp4(tmp_path / "clip.mp4", blob_frames(2, 8, 32, 32), fps=8)
    out = tmp_path / "out"
    sidecar = run_v2a(tiny, clip, out)
    assert sorted(p.name for p in out.iterdir()) == ["v2a-0.json", "v2a-0.mp4", "v2a-0.png", "v2a-0.wav"]
    audio = read_audio(out / "v2a-0.wav")
    assert audio.sample_rate == 16000 and abs(audio.duration - 1.0) < 1e-3
    dubbed = read_video(out / "v2a-0.mp4")
    assert dubbed.num_frames == 8 and dubbed.audio is not None
    assert sidecar["config"]["audio"]["generator"] == "audioldm"
    assert sidecar["config"]["audio"]["cfg_scale"] == 2.5  # the plugin's default replaced the core's 1.0
    similarity = [record["similarity"]["audio~condition"] for record in sidecar["trace"]]
    assert len(similarity) == 4  # steps 1..4 of 5 lie in the default window [0.2, 1)
    assert all(b > a for a, b in zip(similarity, similarity[1:]))

    # the same run with a zero learning rate: the rise is guidance's doing, not the sampler's
    control = run_v2a(tiny, clip, tmp_path / "control", "--set", "guidance.lr=0.0")
    assert control["trace"][0]["similarity"] == sidecar["trace"][0]["similarity"]  # same start
    gain = sidecar["final_similarity"]["audio~condition"] - control["final_similarity"]["audio~condition"]
    assert gain > 0.005  # measured 0.012: the toy binder already finds 0.64 in this random model's output


def test_missing_model_folder_through_the_cli_is_one_line(tmp_path):
    clip = write_mp4(tmp_path / "clip.mp4", blob_frames(2, 8, 32, 32), fps=8)
    result = CliRunner().invoke(cli, ["run", "--gen-audio", "audioldm", "--audio-model", str(tmp_path / "nope"),
                                      "--video", str(clip), "--out", str(tmp_path / "out"), "--quiet"])
    assert result.exit_code == 2
    lines = result.output.strip().splitlines()
    assert len(lines) == 1 and "(--audio-model): no such path" in lines[0] and "nope" in lines[0]

"""The AudioLDM generator on a tiny, randomly initialised AudioLDM built in code and saved in the
hub's folder layout: parity with diffusers' AudioLDMPipeline, gradients, guided V2A via the CLI,
and one-line errors."""

from __future__ import annotations

import copy
import json
import math
import shutil
from pathlib import Path
from typing import Any

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

import sah
from sah.cli import cli
from sah.errors import SahError
from sah.generator import GenerationRequest, fit_duration
from sah.io import read_audio, read_video
from sah.media import Audio, Video
from sah.plugins.binders.toy import ToyBinder
from sah.plugins.generators.audioldm import SCHEDULERS, AudioLDMGenerator, vocoder_samples
from sah.testing import GENERATOR_CHECKS, check_generator, sample_unguided

# With hop 4·4 at 16 kHz a mel frame is 1 ms and the VAE halves time: 1 latent frame = 2 ms.
DURATION = 0.2995  # not a whole number of latent frames: exercises rounding up and cutting back


def tiny_tokenizer() -> RobertaTokenizer:
    """A byte-level BPE RoBERTa tokenizer over lowercase letters with a few merges."""
    letters = list("abcdefghijklmnopqrstuvwxyz")
    tokens = ["<s>", "<pad>", "</s>", "<unk>", *letters, "Ġ", *("Ġ" + c for c in letters),
              "og", "Ġdog", "ar", "Ġbar", "<mask>"]
    merges = [("Ġ", "d"), ("o", "g"), ("Ġd", "og"), ("a", "r"), ("Ġ", "b"), ("Ġb", "ar")]
    return RobertaTokenizer(vocab={t: i for i, t in enumerate(tokens)}, merges=merges, model_max_length=16)


def tiny_audioldm_pipeline(seed: int = 0, vocoder_rates: tuple[int, ...] = (4, 4),
                           vocoder_kernels: tuple[int, ...] = (8, 8)) -> AudioLDMPipeline:
    """AudioLDM's real architectures at toy size (the spirit of diffusers' dummy components). The
    released vocoder's rates (5, 4, 2, 2, 2) and kernels (16, 16, 8, 4, 4) give it a 32-sample tail."""
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
        model_in_dim=8, sampling_rate=16000, upsample_initial_channel=2 ** (len(vocoder_rates) + 2),
        upsample_rates=list(vocoder_rates), upsample_kernel_sizes=list(vocoder_kernels), resblock_kernel_sizes=[3, 7],
        resblock_dilation_sizes=[[1, 3, 5], [1, 3, 5]],
        normalize_before=False, initializer_range=0.2))  # audible output from random weights
    scheduler = DDIMScheduler(beta_start=0.00085, beta_end=0.012, beta_schedule="scaled_linear", clip_sample=False,
                              set_alpha_to_one=False)
    pipe = AudioLDMPipeline(vae=vae, text_encoder=text_encoder, tokenizer=tokenizer, unet=unet, scheduler=scheduler,
                            vocoder=vocoder)
    pipe.set_progress_bar_config(disable=True)
    return pipe


def save_tiny_audioldm(folder: Path, seed: int = 0, **vocoder: Any) -> Path:
    """Write a tiny AudioLDM in the hub layout (model_index.json + one folder per component)."""
    tiny_audioldm_pipeline(seed, **vocoder).save_pretrained(folder)
    return folder


@pytest.fixture(scope="module")
def tiny(tmp_path_factory) -> Path:
    return save_tiny_audioldm(tmp_path_factory.mktemp("audioldm") / "tiny-audioldm")


def sample(generator: AudioLDMGenerator, request: GenerationRequest) -> torch.Tensor:
    """Unguided sampling as the aligner drives it (`sah.testing.sample_unguided`): the waveform."""
    return sample_unguided(generator, request).waveform


@pytest.mark.parametrize("scheduler, cfg_scale", [("ddim", 2.5), ("ddpm", 3.0), ("dpm", 1.0), ("pndm", 2.5),
                                                  ("unipc", 2.5), ("deis", 2.0), ("dpm-single", 2.5)])
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


def test_a_request_without_cfg_scale_samples_as_the_pipeline_does_by_default(tiny):
    """AudioLDM's guidance scale is a core key whose default the plugin sets (`core_defaults`): a
    request that leaves it out gets AudioLDMPipeline's own default, as a pipeline call without
    `guidance_scale` does; the option cannot be set at load and ignored."""
    gen = AudioLDMGenerator(str(tiny), duration=DURATION)
    ours = sample(gen, GenerationRequest(["a dog barks"], [5], num_steps=4))
    pipe = AudioLDMPipeline.from_pretrained(tiny)
    pipe.set_progress_bar_config(disable=True)
    reference = pipe(["a dog barks"], audio_length_in_s=DURATION, num_inference_steps=4,
                     generator=[torch.Generator().manual_seed(5)], output_type="pt").audios
    torch.testing.assert_close(ours[:, 0], reference, rtol=1e-5, atol=1e-6)
    with pytest.raises(TypeError, match="cfg_scale is set per run"):
        AudioLDMGenerator(str(tiny), cfg_scale=2.0)


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
    audio = fit_duration(gen.decode(gen.predict_x0(trajectory, latents, noise_pred, 2)), trajectory.duration)
    assert audio.waveform.shape == (1, 1, int(DURATION * 16000)) and audio.sample_rate == 16000
    loss = (1 - binder.similarity(binder.embed(audio), target)).sum()
    (grad,) = torch.autograd.grad(loss, latents)
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


def test_a_decode_of_spans_is_the_frames_under_them_decoded_with_context_by_the_pipelines_components(tiny):
    gen = AudioLDMGenerator(str(tiny), duration=DURATION)
    pipe = AudioLDMPipeline.from_pretrained(tiny)
    latents = torch.randn(2, *gen.latent_shape, generator=torch.Generator().manual_seed(0), requires_grad=True)
    spans = [(0.05, 0.07), (0.2, 0.21)]  # latent frames [25, 35) and [100, 105) of 150, 2 ms each
    got = gen.decode(latents, spans=spans).waveform
    expected = torch.zeros(2, 1, 150 * 32)  # 32 samples per latent frame; silence elsewhere
    for first, stop in [(25, 35), (100, 105)]:
        z = latents[:, :, first - 8 : stop + 8] / pipe.vae.config.scaling_factor  # 8 frames of context
        wave = pipe.vocoder(pipe.vae.decode(z).sample.squeeze(1))
        expected[:, 0, first * 32 : stop * 32] = wave[:, 8 * 32 : (8 + stop - first) * 32]
    torch.testing.assert_close(got, expected, rtol=0, atol=1e-6)
    probe = torch.randn(got.shape, generator=torch.Generator().manual_seed(1))
    (grad,) = torch.autograd.grad((got * probe).sum(), latents)
    (expected_grad,) = torch.autograd.grad((expected * probe).sum(), latents)
    torch.testing.assert_close(grad, expected_grad, rtol=1e-4, atol=1e-5)  # float32 sums in another order
    assert grad[:, :, 105 + 8 :].abs().max() == 0 < grad[:, :, 25 - 8].abs().max()  # frames beyond the context: none
    # Not the whole decode's, though: its GroupNorm statistics and mid-block attention see every
    # frame, so far frames move the samples under the spans too; in this tiny VAE the gradient under
    # the spans differs from the whole decode's by 0.69 (relative; check_generator's "spans").
    assert "spans" in check_generator(AudioLDMGenerator(str(tiny), decode_spans=False),
                                      skip=[c for c in GENERATOR_CHECKS if c != "spans"]).skipped


@pytest.fixture(scope="module")
def tiny_with_tail(tmp_path_factory) -> Path:
    """The released vocoder's upsampling (hop 160, a 32-sample tail past the last mel frame)."""
    return save_tiny_audioldm(tmp_path_factory.mktemp("audioldm-tail") / "tiny", vocoder_rates=(5, 4, 2, 2, 2),
                              vocoder_kernels=(16, 16, 8, 4, 4))


def test_partial_and_chunked_decodes_keep_the_vocoders_tail_and_its_frame_alignment(tiny_with_tail):
    gen = AudioLDMGenerator(str(tiny_with_tail), duration=1.0)
    chunked = AudioLDMGenerator(str(tiny_with_tail), duration=1.0, decode_chunk=0.2)
    pipe = AudioLDMPipeline.from_pretrained(tiny_with_tail)
    frames = gen.latent_shape[1]  # 50 latent frames of 20 ms: 2 mel frames of 160 samples each
    assert frames == 50 and gen.hop == 160
    for mel in (7, 100):
        with torch.no_grad():
            assert pipe.vocoder(torch.zeros(1, mel, 8)).shape[-1] == vocoder_samples(gen.vocoder.config, mel) == \
                160 * mel + 32
    latents = torch.randn(1, *gen.latent_shape, generator=torch.Generator().manual_seed(0))

    def by_hand(pieces):  # (first, stop) latent frames, each decoded with 8 frames of context
        out = torch.zeros(1, 1, 160 * 100 + 32)
        for first, stop in pieces:
            lo, hi = max(0, first - 8), min(frames, stop + 8)
            wave = pipe.vocoder(pipe.vae.decode(latents[:, :, lo:hi] / pipe.vae.config.scaling_factor).sample
                                .squeeze(1))
            end = None if stop == frames else (stop - lo) * 320
            piece = wave[:, (first - lo) * 320 : end]
            out[:, 0, first * 320 : first * 320 + piece.shape[-1]] = piece
        return out

    with torch.no_grad():
        whole = gen.decode(latents).waveform
        # one frame's span (a context window shorter than 32 frames) and the last frames, tail and all
        spans = gen.decode(latents, spans=[(0.30, 0.31), (0.95, 1.0)]).waveform
        pieces = chunked.decode(latents).waveform
        torch.testing.assert_close(spans, by_hand([(15, 16), (47, 50)]), rtol=0, atol=1e-6)
        torch.testing.assert_close(pieces, by_hand([(k, min(50, k + 10)) for k in range(0, 50, 10)]), rtol=0,
                                   atol=1e-6)
    assert whole.shape == spans.shape == pieces.shape == (1, 1, 16032)


def test_bfloat16_model_runs_and_returns_float32_audio(tiny):
    gen = AudioLDMGenerator(str(tiny), duration=DURATION, dtype=torch.bfloat16)
    assert gen.unet.dtype == gen.vae.dtype == gen.vocoder.dtype == gen.text_encoder.dtype == torch.bfloat16
    wave = sample(gen, GenerationRequest(["a dog"], [0], num_steps=2, cfg_scale=2.5))
    assert wave.dtype == torch.float32 and torch.isfinite(wave).all() and wave.abs().max() > 0


def test_duration_maps_to_latent_frames_like_the_pipeline(tiny):
    gen = AudioLDMGenerator(str(tiny), duration=DURATION)
    # 0.2995 s = 299 mel frames of 1 ms, rounded up to 300 (a multiple of the VAE's factor 2) = 150 latents
    assert gen.latent_shape == (4, 150, 4)
    trajectory = gen.prepare(GenerationRequest(["a"], [0], num_steps=2))
    assert trajectory.duration == DURATION and trajectory.latents.shape == (1, 4, 150, 4)


@pytest.mark.parametrize("seconds", [0.1227, 0.4])
def test_one_loaded_model_serves_runs_of_any_length_like_the_pipeline(tiny, seconds):
    """The length is the run's, not the load's: a model loaded for 0.2995 s makes 0.1227 s and 0.4 s
    exactly as the pipeline does for those lengths. 0.1227 s is 122.7 mel frames: the pipeline's
    int() gives 122 (61 latent frames, 1952 samples: 11 short of the asked 1963, which the
    pipeline does not pad); rounding or ceil would give 124 (62 frames, 1984 samples cut to 1963)."""
    gen = AudioLDMGenerator(str(tiny), duration=DURATION)
    ours = sample(gen, GenerationRequest(["a dog"], [5], num_steps=3, cfg_scale=2.5, duration=seconds))
    pipe = AudioLDMPipeline.from_pretrained(tiny)
    pipe.set_progress_bar_config(disable=True)
    reference = pipe(["a dog"], audio_length_in_s=seconds, num_inference_steps=3, guidance_scale=2.5,
                     generator=[torch.Generator().manual_seed(5)], output_type="pt").audios
    assert ours.shape[-1] == reference.shape[-1] == {0.1227: 1952, 0.4: 6400}[seconds]
    torch.testing.assert_close(ours[:, 0], reference, rtol=1e-5, atol=1e-6)


def test_bad_options_fail_before_loading(tmp_path):
    missing = str(tmp_path / "nowhere")
    with pytest.raises(SahError, match="^audioldm option 'scheduler' must be one of \"ddim\", .*, got \"euler\"$"):
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

    # what the guided waveform must be is pinned by test_guided_v2a_equals_an_independent_guided_loop


def test_missing_model_folder_through_the_cli_is_one_line(tmp_path):
    clip = write_mp4(tmp_path / "clip.mp4", blob_frames(2, 8, 32, 32), fps=8)
    result = CliRunner().invoke(cli, ["run", "--gen-audio", "audioldm", "--audio-model", str(tmp_path / "nope"),
                                      "--video", str(clip), "--out", str(tmp_path / "out"), "--quiet"])
    assert result.exit_code == 2
    lines = result.output.strip().splitlines()
    assert len(lines) == 1 and "(--audio-model): no such path" in lines[0] and "nope" in lines[0]


@pytest.fixture(scope="module")
def tiny_v_prediction(tiny, tmp_path_factory) -> Path:
    """The tiny model with a v-prediction scheduler config, as a user's folder would have it."""
    folder = tmp_path_factory.mktemp("audioldm-v") / "tiny-v"
    shutil.copytree(tiny, folder)
    config_path = folder / "scheduler" / "scheduler_config.json"
    config = json.loads(config_path.read_text())
    config["prediction_type"] = "v_prediction"
    config_path.write_text(json.dumps(config))
    return folder


@pytest.mark.parametrize("scheduler", ["ddim", "dpm"])
def test_v_prediction_equals_the_pipeline_and_its_x0(tiny_v_prediction, scheduler):
    gen = AudioLDMGenerator(str(tiny_v_prediction), duration=DURATION, scheduler=scheduler)
    request = GenerationRequest(["a dog"], [7], num_steps=4, cfg_scale=2.5)
    ours = sample(gen, request)
    pipe = AudioLDMPipeline.from_pretrained(tiny_v_prediction)
    pipe.scheduler = gen.scheduler_cls.from_config(pipe.scheduler.config)
    pipe.set_progress_bar_config(disable=True)
    assert pipe.scheduler.config.prediction_type == "v_prediction"
    reference = pipe(["a dog"], audio_length_in_s=DURATION, num_inference_steps=4, guidance_scale=2.5,
                     generator=[torch.Generator().manual_seed(7)], output_type="pt").audios
    torch.testing.assert_close(ours[:, 0], reference, rtol=1e-5, atol=1e-6)
    # x̂0 under v-prediction is √ᾱ·z − √(1−ᾱ)·v, as DDIM computes its pred_original_sample
    trajectory = gen.prepare(request)
    with torch.no_grad():
        v = gen.predict_noise(trajectory, trajectory.latents, 1)
    if scheduler == "ddim":
        ddim = copy.deepcopy(trajectory.state["scheduler"])
        expected = ddim.step(v, trajectory.timesteps[1], trajectory.latents).pred_original_sample
        torch.testing.assert_close(gen.predict_x0(trajectory, trajectory.latents, v, 1), expected)


def test_guided_v2a_equals_an_independent_guided_loop(tiny, tmp_path):
    """sah's guided V2A (config only) against the guidance written out by hand on the pipeline's own
    components: CFG noise prediction, x̂0 at the step's ᾱ, VAE → vocoder, the binder, one ngd step
    z ← z − lr·√d·g/‖g‖ on the steps 0.2 <= i/N, then the scheduler's step. A wrong order, window,
    x̂0, learning rate or update rule moves the result far outside the tolerance."""
    clip = write_mp4(tmp_path / "clip.mp4", blob_frames(2, 8, 32, 32), fps=8)
    steps, lr, seed, prompt = 5, 0.03, 3, "a dog"
    plan = sah.plan({"run": {"task": "v2a", "steps": steps, "seed": seed, "prompt": prompt, "device": "cpu"},
                     "input": {"video": str(clip)}, "audio": {"generator": "audioldm", "model": str(tiny)},
                     "binder": {"name": "toy"}, "guidance": {"optimizer": "ngd", "lr": lr, "weights": {"text": 0.0}},
                     "output": {"dir": str(tmp_path / "out")}})
    ours = sah.generate(plan).samples[0].audio.waveform[0, 0]

    pipe = AudioLDMPipeline.from_pretrained(tiny)  # the pipeline's components, loaded on their own
    binder = ToyBinder()
    target = binder.embed(read_video(clip))
    pipe.scheduler.set_timesteps(steps)
    with torch.no_grad():
        embeds = pipe._encode_prompt([prompt], "cpu", 1, True, [""])  # [uncond, cond]
    seconds = 1.0  # the video's length: 8 frames at 8 fps
    mel_frames = math.ceil(int(seconds / (16 / 16000)) / 2) * 2
    z = torch.randn((1, 4, mel_frames // 2, 4), generator=torch.Generator().manual_seed(seed))
    for i, t in enumerate(pipe.scheduler.timesteps):
        with torch.no_grad():
            eps = pipe.unet(torch.cat([z, z]), t, encoder_hidden_states=None, class_labels=embeds).sample
        eps_u, eps_c = eps.chunk(2)
        eps = eps_u + 2.5 * (eps_c - eps_u)
        if 0.2 <= i / steps:
            leaf = z.detach().requires_grad_(True)
            a = pipe.scheduler.alphas_cumprod[int(t)]
            x0 = (leaf - (1 - a).sqrt() * eps) / a.sqrt()
            wave = pipe.mel_spectrogram_to_waveform(pipe.vae.decode(x0 / pipe.vae.config.scaling_factor).sample)
            audio = Audio(wave[:, None, : int(seconds * 16000)], 16000)
            loss = 1 - torch.nn.functional.cosine_similarity(binder.embed(audio), target)
            (g,) = torch.autograd.grad(loss.sum(), leaf)
            z = (leaf - lr * math.sqrt(g.numel()) * g / g.norm()).detach()
        z = pipe.scheduler.step(eps, t, z).prev_sample
    with torch.no_grad():
        reference = pipe.mel_spectrogram_to_waveform(pipe.vae.decode(z / pipe.vae.config.scaling_factor).sample)
    reference = reference[0, : int(seconds * 16000)]
    assert ours.shape == reference.shape
    torch.testing.assert_close(ours, reference, rtol=1e-4, atol=1e-5)


def test_guidance_gradient_equals_a_finite_difference(tiny):
    """The gradient the aligner follows, through x̂0, the VAE and the vocoder, against a central
    difference in float64 (a smooth linear embedding stands in for the binder)."""
    gen = AudioLDMGenerator(str(tiny), duration=0.05, dtype=torch.float64)
    trajectory = gen.prepare(GenerationRequest(["a dog"], [1], num_steps=5, cfg_scale=2.5))
    with torch.no_grad():
        noise_pred = gen.predict_noise(trajectory, trajectory.latents, 2).double()
    projection = torch.randn(800, 16, generator=torch.Generator().manual_seed(1), dtype=torch.float64)
    target = torch.randn(1, 16, generator=torch.Generator().manual_seed(2), dtype=torch.float64)

    def loss(z: torch.Tensor) -> torch.Tensor:
        audio = fit_duration(gen.decode(gen.predict_x0(trajectory, z, noise_pred, 2)), trajectory.duration)
        assert audio.waveform.dtype == torch.float64
        return (1 - torch.nn.functional.cosine_similarity(audio.waveform[:, 0] @ projection, target)).sum()

    z = trajectory.latents.double().detach().requires_grad_(True)
    (grad,) = torch.autograd.grad(loss(z), z)
    direction = torch.randn(z.shape, generator=torch.Generator().manual_seed(0), dtype=torch.float64)
    h = 1e-6
    with torch.no_grad():
        numeric = (loss(z + h * direction) - loss(z - h * direction)) / (2 * h)
    analytic = (grad * direction).sum()
    assert abs(float(numeric - analytic)) <= 1e-7 * abs(float(analytic))  # measured 6e-9


def test_loading_is_quiet(tiny, capfd):
    """No progress bars or advice from transformers and diffusers in `sah run`'s output."""
    capfd.readouterr()
    AudioLDMGenerator(str(tiny), duration=DURATION)
    out, err = capfd.readouterr()
    assert "Loading weights" not in err + out and "accelerate" not in err + out and "%|" not in err


def test_a_folder_without_a_components_weights_is_named_precisely(tiny, tmp_path):
    broken = tmp_path / "broken"
    shutil.copytree(tiny, broken)
    for weights in (broken / "unet").glob("diffusion_pytorch_model*"):
        weights.unlink()
    with pytest.raises(SahError) as info:
        AudioLDMGenerator(str(broken), duration=DURATION)
    message = str(info.value)
    assert "\n" not in message and "unet/ has a config.json but no weights file" in message
    assert ".bin" not in message.replace("*.bin", "")  # not diffusers' own line about one format it tried
    shutil.rmtree(broken / "vocoder")
    with pytest.raises(SahError, match="it has no vocoder/ folder"):
        AudioLDMGenerator(str(broken), duration=DURATION)

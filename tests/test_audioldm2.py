"""The AudioLDM 2 generator on a tiny, randomly initialised AudioLDM 2 built in code and saved in the
hub's folder layout: parity with diffusers' AudioLDM2Pipeline, gradients through decode and into the
prompt tensors, guided V2A via the CLI, and one-line errors (offline, options, unsupported models)."""

from __future__ import annotations

import json
import shutil
import subprocess
import sys
from pathlib import Path

import pytest
import torch
from click.testing import CliRunner
from diffusers import (
    AudioLDM2Pipeline,
    AudioLDM2ProjectionModel,
    AudioLDM2UNet2DConditionModel,
    AutoencoderKL,
    DDIMScheduler,
)
from media_helpers import blob_frames, write_mp4
from transformers import (
    ClapAudioConfig,
    ClapConfig,
    ClapFeatureExtractor,
    ClapModel,
    ClapTextConfig,
    GPT2Config,
    GPT2LMHeadModel,
    GPT2Model,
    RobertaTokenizer,
    SpeechT5HifiGan,
    SpeechT5HifiGanConfig,
    T5Config,
    T5EncoderModel,
    T5Tokenizer,
)

import sah
from sah.aligner import GuidanceSettings, Term, align, prompt_tensors
from sah.cli import cli
from sah.errors import SahError
from sah.generator import GenerationRequest, Trajectory, fit_duration
from sah.io import read_audio, read_video
from sah.media import Modality, Video
from sah.plugins.binders.toy import ToyBinder
from sah.plugins.generators.audioldm2 import GENERATED, SCHEDULERS, T5, T5_MASK, AudioLDM2Generator
from sah.testing import sample_unguided

# diffusers' σ-space schedulers call numpy in ways numpy 2 deprecates, thousands of times per run
pytestmark = pytest.mark.filterwarnings("ignore:__array_wrap__ must accept:DeprecationWarning",
                                        "ignore:__array__ implementation doesn't accept:DeprecationWarning")

# With hop 4·4 at 16 kHz a mel frame is 1 ms and the VAE halves time: 1 latent frame = 2 ms.
DURATION = 0.2995  # 299 mel frames, not a whole latent frame: rounded up to 300 and cut back to 4792 samples
LETTERS = list("abcdefghijklmnopqrstuvwxyz")
PROMPTS, SEEDS, NEGATIVE = ["a dog barks", "a bar"], [3, 4], "dog"  # T5: 6 and 3 tokens, so one is padded


def tiny_tokenizers() -> tuple[RobertaTokenizer, T5Tokenizer]:
    """CLAP's byte-level BPE (RoBERTa) and Flan-T5's unigram tokenizer, over lowercase letters and a
    few words."""
    tokens = ["<s>", "<pad>", "</s>", "<unk>", *LETTERS, "Ġ", *("Ġ" + c for c in LETTERS),
              "og", "Ġdog", "ar", "Ġbar", "<mask>"]
    merges = [("Ġ", "d"), ("o", "g"), ("Ġd", "og"), ("a", "r"), ("Ġ", "b"), ("Ġb", "ar")]
    clap = RobertaTokenizer(vocab={t: i for i, t in enumerate(tokens)}, merges=merges, model_max_length=16)
    pieces = [("<pad>", 0.0), ("</s>", 0.0), ("<unk>", 0.0), ("▁", -2.0), *((c, -3.0) for c in LETTERS),
              *(("▁" + c, -3.5) for c in LETTERS), ("▁dog", -1.0), ("▁bar", -1.0)]
    t5 = T5Tokenizer(vocab=pieces, extra_ids=0, model_max_length=12)
    return clap, t5


def tiny_audioldm2_pipeline(seed: int = 0, language_model_cls: type = GPT2Model) -> AudioLDM2Pipeline:
    """AudioLDM 2's real architectures at toy size. CLAP 8-d, T5 12-d and GPT-2 16-d differ, so a
    state fed to the wrong cross-attention fails loudly."""
    torch.manual_seed(seed)
    tokenizer, tokenizer_2 = tiny_tokenizers()
    text_encoder = ClapModel(ClapConfig(
        text_config=ClapTextConfig(vocab_size=len(tokenizer), hidden_size=8, intermediate_size=16,
                                   num_attention_heads=1, num_hidden_layers=1, projection_dim=8,
                                   max_position_embeddings=24, bos_token_id=0, pad_token_id=1,
                                   eos_token_id=2).to_dict(),
        # the audio tower only ranks several waveforms per prompt, which neither side does here
        audio_config=ClapAudioConfig(spec_size=64, window_size=4, num_mel_bins=64, intermediate_size=16,
                                     depths=[1, 1], num_attention_heads=[1, 1], num_hidden_layers=1, hidden_size=16,
                                     patch_embeds_hidden_size=8, projection_dim=8, patch_size=4, patch_stride=4,
                                     patch_embed_input_channels=4).to_dict(),
        projection_dim=8))
    text_encoder_2 = T5EncoderModel(T5Config(vocab_size=len(tokenizer_2), d_model=12, d_ff=16, d_kv=4, num_heads=2,
                                             num_layers=1, pad_token_id=0, eos_token_id=1))
    language_model = language_model_cls(GPT2Config(n_embd=16, n_head=2, n_layer=1, vocab_size=8, n_positions=64,
                                                   bos_token_id=0, eos_token_id=0))
    language_model.config.max_new_tokens = 8  # as the released checkpoints' config says
    projection_model = AudioLDM2ProjectionModel(text_encoder_dim=8, text_encoder_1_dim=12, langauge_model_dim=16)
    unet = AudioLDM2UNet2DConditionModel(
        sample_size=16, in_channels=4, out_channels=4, block_out_channels=(8, 16), layers_per_block=1,
        norm_num_groups=8, down_block_types=("DownBlock2D", "CrossAttnDownBlock2D"),
        up_block_types=("CrossAttnUpBlock2D", "UpBlock2D"), attention_head_dim=2,
        # per transformer block: self-attention, cross-attention to GPT-2's states, then to T5's sequence
        cross_attention_dim=([None, 16, 12], [None, 16, 12]))
    vae = AutoencoderKL(in_channels=1, out_channels=1, latent_channels=4, block_out_channels=(8, 16),
                        norm_num_groups=8, down_block_types=("DownEncoderBlock2D",) * 2,
                        up_block_types=("UpDecoderBlock2D",) * 2)
    vocoder = SpeechT5HifiGan(SpeechT5HifiGanConfig(
        model_in_dim=8, sampling_rate=16000, upsample_initial_channel=16, upsample_rates=[4, 4],
        upsample_kernel_sizes=[8, 8], resblock_kernel_sizes=[3, 7], resblock_dilation_sizes=[[1, 3, 5], [1, 3, 5]],
        normalize_before=False, initializer_range=0.2))  # audible output from random weights
    scheduler = DDIMScheduler(beta_start=0.0015, beta_end=0.0195, beta_schedule="scaled_linear", clip_sample=False,
                              set_alpha_to_one=False)
    pipe = AudioLDM2Pipeline(vae=vae, text_encoder=text_encoder, text_encoder_2=text_encoder_2,
                             projection_model=projection_model, language_model=language_model, tokenizer=tokenizer,
                             tokenizer_2=tokenizer_2, feature_extractor=ClapFeatureExtractor(), unet=unet,
                             scheduler=scheduler, vocoder=vocoder)
    pipe.set_progress_bar_config(disable=True)
    return pipe


def save_tiny_audioldm2(folder: Path, seed: int = 0, language_model_cls: type = GPT2Model) -> Path:
    """Write a tiny AudioLDM 2 in the hub layout (model_index.json + one folder per component). The
    released checkpoints save their language model as a GPT2Model, so does this by default."""
    tiny_audioldm2_pipeline(seed, language_model_cls).save_pretrained(folder)
    return folder


@pytest.fixture(scope="module")
def tiny(tmp_path_factory) -> Path:
    return save_tiny_audioldm2(tmp_path_factory.mktemp("audioldm2") / "tiny-audioldm2")


def reference_pipeline(folder: Path, scheduler_cls: type | None = None) -> AudioLDM2Pipeline:
    """diffusers' pipeline, loaded on its own from the same folder. Under transformers 5 it runs its
    language model only as a GPT2LMHeadModel (a GPT2Model lacks the generation helpers it calls),
    so the same GPT-2 weights are loaded into one; its hidden states are GPT2Model's."""
    language_model = GPT2LMHeadModel.from_pretrained(folder, subfolder="language_model")
    pipe = AudioLDM2Pipeline.from_pretrained(folder, language_model=language_model)
    if scheduler_cls is not None:
        pipe.scheduler = scheduler_cls.from_config(pipe.scheduler.config)
    pipe.set_progress_bar_config(disable=True)
    return pipe


def sample(generator: AudioLDM2Generator, request: GenerationRequest | Trajectory) -> torch.Tensor:
    """Unguided sampling as the aligner drives it (`sah.testing.sample_unguided`): the waveform."""
    return sample_unguided(generator, request).waveform


# --------------------------------------------------------------------------- parity with the pipeline


@pytest.mark.parametrize("scheduler, cfg_scale", [("ddim", 3.5), ("dpm", 2.5), ("ddpm", 3.0), ("euler-a", 2.5),
                                                  ("heun", 2.5), ("unipc", 1.0)])
def test_unguided_waveform_equals_audioldm2_pipeline(tiny, scheduler, cfg_scale):
    """Two prompts of different T5 lengths, a negative prompt, per-sample generators, a length that is
    not a whole latent frame. ddpm and euler-a draw step noise; heun is second order (2N-1 model
    calls); cfg 1.0 runs without the negative branch. Tolerance 1e-5 relative + 1e-6 absolute; the
    measured difference is 0 (the same operations in the same order)."""
    gen = AudioLDM2Generator(str(tiny), duration=DURATION, scheduler=scheduler)
    ours = sample(gen, GenerationRequest(PROMPTS, SEEDS, negative_prompt=NEGATIVE, num_steps=4, cfg_scale=cfg_scale))

    pipe = reference_pipeline(tiny, gen.scheduler_cls)
    reference = pipe(PROMPTS, negative_prompt=[NEGATIVE] * 2, audio_length_in_s=DURATION, num_inference_steps=4,
                     guidance_scale=cfg_scale, generator=[torch.Generator().manual_seed(s) for s in SEEDS],
                     output_type="pt").audios

    assert ours.shape == (2, 1, int(DURATION * 16000)) == (2, 1, reference.shape[-1])
    assert reference.abs().max() > 0.1  # audible, so the tolerance below is meaningful
    torch.testing.assert_close(ours[:, 0], reference, rtol=1e-5, atol=1e-6)


@pytest.mark.parametrize("seconds", [0.1227, 0.4])
def test_one_loaded_model_serves_runs_of_any_length_like_the_pipeline(tiny, seconds):
    """The length is the run's, not the load's. 0.1227 s is 122.7 mel frames: the pipeline's int()
    gives 122 (61 latent frames, 1952 samples: 11 short of the asked 1963, which it does not pad);
    round() or ceil() would give 124 frames."""
    gen = AudioLDM2Generator(str(tiny), duration=DURATION)
    ours = sample(gen, GenerationRequest(["a dog"], [5], num_steps=3, cfg_scale=3.5, duration=seconds))
    reference = reference_pipeline(tiny)(["a dog"], audio_length_in_s=seconds, num_inference_steps=3,
                                         guidance_scale=3.5, generator=[torch.Generator().manual_seed(5)],
                                         output_type="pt").audios
    assert ours.shape[-1] == reference.shape[-1] == {0.1227: 1952, 0.4: 6400}[seconds]
    torch.testing.assert_close(ours[:, 0], reference, rtol=1e-5, atol=1e-6)


def test_prompt_tensors_are_the_pipelines(tiny):
    """The GPT-2 states, T5 sequence and mask the UNet sees are encode_prompt's, in its [negative,
    prompt] order: T5 padded to the batch's longest prompt, the negative padded to that length."""
    gen = AudioLDM2Generator(str(tiny), duration=DURATION)
    trajectory = gen.prepare(GenerationRequest(PROMPTS, SEEDS, negative_prompt=NEGATIVE, num_steps=2, cfg_scale=2.0))
    pipe = reference_pipeline(tiny)
    with torch.no_grad():
        t5, mask, generated = pipe.encode_prompt(PROMPTS, "cpu", 1, True, negative_prompt=[NEGATIVE] * 2)
    cond, uncond = trajectory.prompt_embeds, trajectory.state["uncond_embeds"]
    assert cond[T5_MASK].tolist() == [[1] * 6, [1, 1, 1, 0, 0, 0]] and cond[T5_MASK].dtype == torch.long
    assert cond[GENERATED].shape == (2, 8, 16) and cond[T5].shape == (2, 6, 12)
    torch.testing.assert_close(torch.cat([uncond[GENERATED], cond[GENERATED]]), generated, rtol=0, atol=0)
    torch.testing.assert_close(torch.cat([uncond[T5], cond[T5]]), t5, rtol=0, atol=0)
    assert torch.equal(torch.cat([uncond[T5_MASK], cond[T5_MASK]]), mask)
    # prompt tuning updates the two floating-point tensors and leaves the mask alone
    assert [key for key, _ in prompt_tensors(cond)] == [GENERATED, T5]


def test_duration_maps_to_latent_frames_like_the_pipeline(tiny):
    gen = AudioLDM2Generator(str(tiny), duration=DURATION)
    # 0.2995 s = 299 mel frames of 1 ms, rounded up to 300 (a multiple of the VAE's factor 2) = 150 latents
    assert gen.latent_shape == (4, 150, 4)
    trajectory = gen.prepare(GenerationRequest(["a"], [0], num_steps=2))
    assert trajectory.duration == DURATION and trajectory.latents.shape == (1, 4, 150, 4)
    assert gen.decode(trajectory.latents).num_samples == 150 * 2 * 16  # the whole decode; the aligner cuts it
    trajectory = gen.prepare(GenerationRequest(["a"], [0], num_steps=2, duration=0.1227))
    assert trajectory.duration == 0.1227 and trajectory.latents.shape == (1, 4, 61, 4)


def test_a_samples_noise_does_not_depend_on_its_batch(tiny):
    gen = AudioLDM2Generator(str(tiny), duration=0.05)
    both = gen.prepare(GenerationRequest(["a dog", "a dog"], [7, 8], num_steps=2)).latents
    alone = gen.prepare(GenerationRequest(["a dog"], [8], num_steps=2)).latents
    assert torch.equal(both[1:], alone)


# KDPM2's constructor and set_timesteps take seconds on the CPU (a per-σ numpy search in diffusers)
@pytest.mark.parametrize("scheduler", [pytest.param(name, marks=pytest.mark.slow) if name.startswith("kdpm2") else name
                                       for name in [*SCHEDULERS, "DPMSolverMultistepScheduler"]])
def test_every_listed_scheduler_samples(tiny, scheduler):
    gen = AudioLDM2Generator(str(tiny), duration=0.05, scheduler=scheduler)
    trajectory = gen.prepare(GenerationRequest(["a dog"], [0], num_steps=4, cfg_scale=3.5))
    assert type(trajectory.state["scheduler"]).__name__ == SCHEDULERS.get(scheduler, scheduler)
    wave = sample(gen, trajectory)
    assert wave.shape == (1, 1, 800) and torch.isfinite(wave).all() and wave.abs().max() > 0


def test_bfloat16_model_runs_and_returns_float32_audio(tiny):
    gen = AudioLDM2Generator(str(tiny), duration=0.05, dtype=torch.bfloat16)
    assert {m.dtype for m in gen._modules.values()} == {torch.bfloat16}
    wave = sample(gen, GenerationRequest(["a dog"], [0], num_steps=2, cfg_scale=3.5))
    assert wave.dtype == torch.float32 and torch.isfinite(wave).all() and wave.abs().max() > 0


def test_a_language_model_saved_with_its_lm_head_loads_too(tmp_path):
    """Folders saved from a pipeline holding a GPT2LMHeadModel load into the same GPT-2."""
    folder = save_tiny_audioldm2(tmp_path / "head", language_model_cls=GPT2LMHeadModel)
    gen = AudioLDM2Generator(str(folder), duration=0.05)
    ours = sample(gen, GenerationRequest(["a dog"], [1], num_steps=2, cfg_scale=3.5))
    reference = reference_pipeline(folder)(["a dog"], audio_length_in_s=0.05, num_inference_steps=2,
                                           guidance_scale=3.5, generator=[torch.Generator().manual_seed(1)],
                                           output_type="pt").audios
    torch.testing.assert_close(ours[:, 0], reference, rtol=1e-5, atol=1e-6)


# --------------------------------------------------------------------------- gradients


@pytest.fixture(scope="module")
def tiny64(tiny) -> AudioLDM2Generator:
    return AudioLDM2Generator(str(tiny), duration=0.05, dtype=torch.float64)


@pytest.mark.parametrize("scheduler", ["ddim", "euler"])
def test_guidance_gradient_equals_a_finite_difference(tiny, scheduler):
    """The gradient the aligner follows, through x̂0, the VAE and the vocoder, against a central
    difference in float64 (a smooth linear embedding stands in for the binder)."""
    gen = AudioLDM2Generator(str(tiny), duration=0.05, dtype=torch.float64, scheduler=scheduler)
    trajectory = gen.prepare(GenerationRequest(["a dog"], [1], num_steps=5, cfg_scale=3.5))
    with torch.no_grad():
        noise_pred = gen.predict_noise(trajectory, trajectory.latents, 2)
    assert noise_pred.dtype == torch.float64
    projection = torch.randn(800, 16, generator=torch.Generator().manual_seed(1), dtype=torch.float64)
    target = torch.randn(1, 16, generator=torch.Generator().manual_seed(2), dtype=torch.float64)

    def loss(z: torch.Tensor) -> torch.Tensor:
        audio = fit_duration(gen.decode(gen.predict_x0(trajectory, z, noise_pred, 2)), trajectory.duration)
        assert audio.waveform.dtype == torch.float64
        return (1 - torch.nn.functional.cosine_similarity(audio.waveform[:, 0] @ projection, target)).sum()

    z = trajectory.latents.double().detach().requires_grad_(True)
    (grad,) = torch.autograd.grad(loss(z), z)
    assert grad.abs().amax(dim=(0, 1, 3)).gt(0).float().mean() > 0.9  # it reaches (nearly) every latent frame
    direction = torch.randn(z.shape, generator=torch.Generator().manual_seed(0), dtype=torch.float64)
    h = 1e-6
    with torch.no_grad():
        numeric = (loss(z + h * direction) - loss(z - h * direction)) / (2 * h)
    analytic = (grad * direction).sum()
    assert abs(float(numeric - analytic)) <= 1e-7 * abs(float(analytic))  # measured 2e-9 (euler), 7e-9 (ddim)


@pytest.mark.parametrize("key", [GENERATED, T5])
def test_noise_prediction_is_differentiable_in_each_prompt_tensor(tiny64, key):
    """predict_noise (classifier-free guidance included) against a central difference along a random
    direction in the GPT-2 states or the T5 sequence, in float64. The T5 padding is masked: its
    gradient there is exactly zero, and moving it changes nothing."""
    gen = tiny64
    trajectory = gen.prepare(GenerationRequest(PROMPTS, SEEDS, negative_prompt=NEGATIVE, num_steps=5, cfg_scale=3.5))
    latents = trajectory.latents.double()
    weights = torch.randn(latents.shape, generator=torch.Generator().manual_seed(3), dtype=torch.float64)
    base = trajectory.prompt_embeds

    def loss(tensor: torch.Tensor) -> torch.Tensor:
        trajectory.prompt_embeds = {**base, key: tensor}
        return (gen.predict_noise(trajectory, latents, 1) * weights).sum()

    tensor = base[key].detach().requires_grad_(True)
    with torch.enable_grad():
        (grad,) = torch.autograd.grad(loss(tensor), tensor)
    direction = torch.randn(tensor.shape, generator=torch.Generator().manual_seed(4), dtype=torch.float64)
    h = 1e-6
    with torch.no_grad():
        numeric = (loss(tensor + h * direction) - loss(tensor - h * direction)) / (2 * h)
    analytic = (grad * direction).sum()
    assert abs(float(analytic)) > 1e-6
    assert abs(float(numeric - analytic)) <= 1e-6 * abs(float(analytic))  # measured 5e-9 (GPT-2 states), 9e-9 (T5)
    if key == T5:
        padding = base[T5_MASK] == 0  # sample 1's last three tokens
        assert int(padding.sum()) == 3
        assert grad[padding].abs().max() == 0 and grad[~padding].abs().amin(dim=-1).gt(0).all()
        moved = base[T5].clone()
        moved[padding] += 10.0
        with torch.no_grad():
            torch.testing.assert_close(loss(moved), loss(base[T5]), rtol=1e-12, atol=0)


def test_prompt_tuning_through_the_aligner_moves_only_the_floating_tensors(tiny, tmp_path):
    """`guidance.prompt_tuning` on: the aligner updates the GPT-2 states and the T5 sequence between
    steps through predict_noise's gradient, and keeps the mask (an integer tensor) as it was."""
    gen = AudioLDM2Generator(str(tiny), duration=0.05)
    seen = {}
    prepare = gen.prepare

    def keep(request):
        seen["trajectory"] = trajectory = prepare(request)
        seen["initial"] = dict(trajectory.prompt_embeds)
        return trajectory

    gen.prepare = keep
    binder = ToyBinder()
    with torch.no_grad():
        target = binder.embed(Video(torch.from_numpy(blob_frames(3, 8, 32, 32)).permute(0, 3, 1, 2) / 255.0, 8.0))
    settings = GuidanceSettings(optimizer="ngd", lr={"audio": 0.03}, prompt_tuning=True, prompt_lr=0.01)
    request = GenerationRequest(["a dog"], [2], num_steps=4, cfg_scale=3.5)
    result = align({Modality.AUDIO: gen}, {Modality.AUDIO: request}, binder, [Term(Modality.AUDIO, "condition")],
                   {"condition": target}, settings)
    assert len(result.trace) == 3 and not any(record["skipped"] for record in result.trace)
    final, initial = seen["trajectory"].prompt_embeds, seen["initial"]
    assert not torch.equal(final[GENERATED], initial[GENERATED]) and not torch.equal(final[T5], initial[T5])
    assert final[T5_MASK] is initial[T5_MASK] and final[T5_MASK].dtype == torch.long
    assert not final[GENERATED].requires_grad and not final[T5].requires_grad
    assert result.media[Modality.AUDIO].num_samples == 800


# --------------------------------------------------------------------------- the CLI, plan and errors


def invoke(*args):
    return CliRunner().invoke(cli, [str(a) for a in args], catch_exceptions=False)


@pytest.mark.slow
def test_guided_v2a_through_the_cli_writes_audio_as_long_as_the_video(tiny, tmp_path, monkeypatch):
    monkeypatch.setenv("SAH_LOAD_PLUGINS", "audioldm2,toy-generators,toy-binder")  # only what the run needs
    clip = write_mp4(tmp_path / "clip.mp4", blob_frames(2, 8, 32, 32), fps=8)  # 1 s
    out = tmp_path / "out"
    result = invoke("run", "--gen-audio", "audioldm2", "--audio-model", tiny, "--binder", "toy", "--video", clip,
                    "--steps", 4, "--out", out, "--device", "cpu", "--quiet")
    assert result.exit_code == 0, result.output
    assert sorted(p.name for p in out.iterdir()) == ["v2a-0.json", "v2a-0.mp4", "v2a-0.png", "v2a-0.wav"]
    audio = read_audio(out / "v2a-0.wav")
    assert audio.sample_rate == 16000 and audio.num_samples == 16000
    dubbed = read_video(out / "v2a-0.mp4")
    assert dubbed.num_frames == 8 and dubbed.audio is not None
    sidecar = json.loads((out / "v2a-0.json").read_text())
    assert sidecar["config"]["audio"]["generator"] == "audioldm2"
    assert sidecar["config"]["audio"]["cfg_scale"] == 3.5  # the plugin's default replaced the core's 1.0
    similarity = [record["similarity"]["audio~condition"] for record in sidecar["trace"]]
    assert len(similarity) == 3 and all(-1 <= s <= 1 for s in similarity)  # steps 1..3 of 4 are guided


def test_missing_weights_offline_are_named_in_one_line_before_any_load(tmp_path, monkeypatch):
    """`sah.plan` offline with nothing cached: the AudioLDM 2 repository and the binder's weights in
    one line, each with its flag and the command that fetches it, and no model constructed."""
    import huggingface_hub.constants

    from sah import hub
    from sah.plugins.binders.pivot import ClipClapBinder

    def refuse(*args, **kwargs):
        raise AssertionError("a model was loaded")

    for cls in (AudioLDM2Generator, ClipClapBinder):
        monkeypatch.setattr(cls, "__init__", refuse)
    monkeypatch.setenv("SAH_LOAD_PLUGINS", "audioldm2,toy-generators,clip-clap")
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    monkeypatch.setattr(huggingface_hub.constants, "HF_HUB_OFFLINE", True)  # read at import: patch it too
    monkeypatch.setattr(huggingface_hub.constants, "HF_HUB_CACHE", str(tmp_path / "hf"))
    hub.reachable.cache_clear()
    clip = write_mp4(tmp_path / "clip.mp4", blob_frames(2, 8, 32, 32), fps=8)
    for model in (None, "cvssp/audioldm2-music"):
        audio = {"generator": "audioldm2", **({"model": model} if model else {})}
        with pytest.raises(SahError) as caught:
            sah.plan({"run": {"prompt": "a dog", "device": "cpu"}, "input": {"video": str(clip)}, "audio": audio,
                      "binder": {"name": "clip+clap"}, "output": {"dir": str(tmp_path / "out")}})
        message = str(caught.value)
        assert "\n" not in message and message.startswith("model weights not available offline: ")
        assert f"'{model or 'cvssp/audioldm2'}' (--audio-model): not in the Hugging Face cache" in message
        assert hub.hf_download_command(model or "cvssp/audioldm2") in message
        for ref, _ in ClipClapBinder.weights(None, {}):
            assert f"'{ref}' (--binder-model)" in message
    assert not (tmp_path / "out").exists()


def test_uncached_hub_id_offline_is_one_line_when_constructed(monkeypatch):
    import huggingface_hub.constants

    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    monkeypatch.setattr(huggingface_hub.constants, "HF_HUB_OFFLINE", True)
    with pytest.raises(SahError) as info:
        AudioLDM2Generator("sah-tests/no-such-audioldm2")
    message = str(info.value)
    assert "\n" not in message
    assert "'sah-tests/no-such-audioldm2'" in message and "--audio-model PATH" in message


def test_bad_options_fail_before_loading(tmp_path):
    missing = str(tmp_path / "nowhere")
    with pytest.raises(SahError, match="^audioldm2 option 'scheduler' must be one of \"ddim\", .*, got \"edm\"$"):
        AudioLDM2Generator(missing, scheduler="edm")
    with pytest.raises(SahError, match="duration must be positive"):
        AudioLDM2Generator(missing, duration=0.0)
    with pytest.raises(SahError, match="does not exist"):
        AudioLDM2Generator(missing)
    with pytest.raises(SahError, match="^audio.scheduler must be one of"):  # sah.plan asks the class
        AudioLDM2Generator.resolve_options({"scheduler": "edm"}, label="audio.")


def test_too_short_duration_and_too_few_pndm_steps_are_one_line(tiny):
    with pytest.raises(SahError, match=r"at least 0.002 s"):
        AudioLDM2Generator(str(tiny), duration=0.001)
    gen = AudioLDM2Generator(str(tiny), duration=0.05, scheduler="pndm")
    with pytest.raises(SahError, match="scheduler 'pndm' cannot run 3 steps"):
        gen.prepare(GenerationRequest(["a"], [0], num_steps=3))


def test_a_text_to_speech_checkpoint_is_refused_in_one_line(tiny, tmp_path):
    folder = tmp_path / "tts"
    shutil.copytree(tiny, folder)
    config = json.loads((folder / "text_encoder_2" / "config.json").read_text())
    (folder / "text_encoder_2" / "config.json").write_text(json.dumps({**config, "model_type": "vits"}))
    with pytest.raises(SahError, match="'vits' second text encoder") as info:
        AudioLDM2Generator(str(folder))
    assert "\n" not in str(info.value)


def test_guide_whole_waveform_and_licence_are_declared(tiny):
    assert not AudioLDM2Generator(str(tiny), duration=0.05).guide_whole_decode
    assert AudioLDM2Generator(str(tiny), duration=0.05, guide_whole_waveform=True).guide_whole_decode
    licence = AudioLDM2Generator.licence
    assert licence.weights == "CC-BY-NC-SA-4.0" and licence.commercial is False and licence.code == "Apache-2.0"


@pytest.mark.slow  # a fresh interpreter importing sah and torch
def test_registering_the_plugin_imports_neither_diffusers_nor_transformers():
    code = ("import sys; from sah.media import Modality; from sah.registry import load_registry; "
            "load_registry().generator('audioldm2', Modality.AUDIO); "
            "print(sorted(n for n in ('diffusers', 'transformers') if n in sys.modules))")
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True,
                         env={"SAH_LOAD_PLUGINS": "audioldm2", "PATH": "", "OMP_NUM_THREADS": "1"})
    assert out.stdout.strip() == "[]", out.stdout + out.stderr

"""The Stable Audio generator on a tiny, randomly initialised Stable Audio Open built in code from
the real architectures (T5 encoder, StableAudioProjectionModel, StableAudioDiTModel,
AutoencoderOobleck, CosineDPMSolverMultistepScheduler) and saved in the hub's folder layout:
parity with diffusers' StableAudioPipeline, x̂0, gradients, the relative size of a guidance step,
guided V2A through the CLI, the preset, and one-line errors."""

from __future__ import annotations

import copy
import json
import math
import warnings
from pathlib import Path

import pytest
import torch
import torch.nn.functional as F
from click.testing import CliRunner
from diffusers import (
    AutoencoderOobleck,
    CosineDPMSolverMultistepScheduler,
    StableAudioDiTModel,
    StableAudioPipeline,
    StableAudioProjectionModel,
)
from media_helpers import blob_frames, write_mp4
from transformers import T5Config, T5EncoderModel, T5Tokenizer

import sah
from sah import config as cfg
from sah.aligner import GuidanceSettings, Term, align
from sah.binder import Binder
from sah.cli import cli
from sah.errors import SahError
from sah.generator import GenerationRequest, fit_duration
from sah.io import read_audio, read_video
from sah.media import Modality
from sah.plugins.binders.imagebind import ImageBindBinder
from sah.plugins.binders.imagebind.model import ImageBindConfig, ImageBindModel
from sah.plugins.generators.stable_audio import RELEASED_MAX_SECONDS, StableAudioGenerator, decoder_reach
from sah.presets import load_preset, preset_text
from sah.registry import get_registry
from sah.testing import GENERATOR_CHECKS, check_generator, sample_unguided

A = Modality.AUDIO
RATE, HOP, FRAMES = 44100, 256, 128          # the tiny VAE's hop: 4·8·8; the DiT's sample_size
MAX_SECONDS = FRAMES * HOP / RATE            # 0.743 s: the tiny model's longest output
DURATION = 0.3                               # 13230 of the 32768 decoded samples: exercises the cut
PROMPTS, SEEDS, NEGATIVE = ["a dog barks", "rain"], [3, 4], "low quality"
IMAGEBIND_TINY = ImageBindConfig(out_embed_dim=24, vision_embed_dim=48, vision_num_blocks=2, vision_num_heads=3,
                                 audio_embed_dim=40, audio_num_blocks=2, audio_num_heads=4, text_embed_dim=16,
                                 text_num_blocks=2, text_num_heads=2)


def tiny_tokenizer() -> T5Tokenizer:
    """A unigram T5 tokenizer over a few words and the letters, 12 tokens long."""
    words = ["▁a", "▁dog", "▁barks", "▁bar", "▁rain", "▁low", "▁quality", "▁the"]
    letters = [*"abcdefghijklmnopqrstuvwxyz", *("▁" + c for c in "abcdefghijklmnopqrstuvwxyz"), "▁"]
    vocab = [("<pad>", 0.0), ("</s>", 0.0), ("<unk>", 0.0), *((w, -1.0) for w in words), *((c, -5.0) for c in letters)]
    return T5Tokenizer(vocab=vocab, extra_ids=0, model_max_length=12)


def tiny_stable_audio_pipeline(seed: int = 0) -> StableAudioPipeline:
    """Stable Audio Open's real architectures at toy size. The projection's text width (16) differs
    from the conditioning width (24), so its projection is a Linear with a bias (the released one's
    is the identity): padding must be zeroed after projecting. Its seconds range is [0, 1] s (the
    released: [0, 512]) and its seconds embeddings 10× the random init, so that the seconds
    conditioning moves the tiny model's output visibly (5e-3 of the waveform, not 2e-4)."""
    torch.manual_seed(seed)
    tokenizer = tiny_tokenizer()
    text_encoder = T5EncoderModel(T5Config(
        vocab_size=len(tokenizer), d_model=16, d_kv=8, d_ff=32, num_layers=1, num_heads=2,
        relative_attention_num_buckets=8, relative_attention_max_distance=16, pad_token_id=0, eos_token_id=1,
        decoder_start_token_id=0))
    projection = StableAudioProjectionModel(text_encoder_dim=16, conditioning_dim=24, min_value=0, max_value=1)
    for conditioner in (projection.start_number_conditioner, projection.end_number_conditioner):
        conditioner.time_positional_embedding[1].weight.data *= 10
    transformer = StableAudioDiTModel(
        sample_size=FRAMES, in_channels=4, num_layers=2, attention_head_dim=8, num_attention_heads=2,
        num_key_value_attention_heads=1, out_channels=4, cross_attention_dim=16, time_proj_dim=16,
        global_states_input_dim=48, cross_attention_input_dim=24)
    vae = AutoencoderOobleck(encoder_hidden_size=4, downsampling_ratios=[4, 8, 8], channel_multiples=[1, 2, 2],
                             decoder_channels=4, decoder_input_channels=4, audio_channels=2, sampling_rate=RATE)
    scheduler = CosineDPMSolverMultistepScheduler(sigma_min=0.3, sigma_max=500, sigma_data=1.0)  # the released values
    pipe = StableAudioPipeline(vae=vae, text_encoder=text_encoder, projection_model=projection, tokenizer=tokenizer,
                               transformer=transformer, scheduler=scheduler)
    pipe.set_progress_bar_config(disable=True)
    return pipe


def save_tiny_stable_audio(folder: Path, seed: int = 0) -> Path:
    """Write a tiny Stable Audio Open in the hub layout (model_index.json + one folder per component)."""
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")  # weight_norm's deprecation notice in the Oobleck VAE
        tiny_stable_audio_pipeline(seed).save_pretrained(folder)
    return folder


@pytest.fixture(scope="module")
def tiny(tmp_path_factory) -> Path:
    return save_tiny_stable_audio(tmp_path_factory.mktemp("stable-audio") / "tiny-stable-audio")


@pytest.fixture(scope="module")
def gen(tiny) -> StableAudioGenerator:
    return StableAudioGenerator(str(tiny), duration=DURATION)


def sample(generator: StableAudioGenerator, request: GenerationRequest) -> torch.Tensor:
    """Unguided sampling as the aligner drives it (`sah.testing.sample_unguided`): the waveform."""
    return sample_unguided(generator, request).waveform


def pipeline_reference(tiny: Path, prompts, seeds, negative, seconds, steps, cfg_scale) -> torch.Tensor:
    pipe = StableAudioPipeline.from_pretrained(tiny)  # an independent load of the same folder
    pipe.set_progress_bar_config(disable=True)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")  # torchsde's notes on queries at the ends of its interval
        return pipe(prompts, negative_prompt=negative, audio_end_in_s=seconds, num_inference_steps=steps,
                    guidance_scale=cfg_scale, generator=[torch.Generator().manual_seed(s) for s in seeds]).audios


# -- parity with StableAudioPipeline -------------------------------------------------------------

# (sah's negative prompt, the pipeline's, cfg scale, the run's seconds): an empty negative prompt
# is the pipeline's `negative_prompt=None` (an all-zero unconditional branch); a scale of 1 runs
# one branch; None seconds is the option's (DURATION).
PARITY = [(NEGATIVE, [NEGATIVE] * 2, 7.0, None), ("", None, 7.0, None), (NEGATIVE, [NEGATIVE] * 2, 1.0, None),
          (NEGATIVE, [NEGATIVE] * 2, 4.0, 0.6123)]


@pytest.mark.parametrize("negative, pipeline_negative, cfg_scale, seconds", PARITY)
def test_unguided_waveform_equals_stable_audio_pipeline(tiny, gen, negative, pipeline_negative, cfg_scale, seconds):
    """Measured difference: 0 (bit for bit) on the CPU in float32 for every case; the tolerance
    allows float32 rounding (1e-6 of a waveform of peak ~0.76)."""
    request = GenerationRequest(PROMPTS, SEEDS, negative_prompt=negative, num_steps=5, cfg_scale=cfg_scale,
                                duration=seconds)
    ours = sample(gen, request)
    reference = pipeline_reference(tiny, PROMPTS, SEEDS, pipeline_negative, seconds or DURATION, 5, cfg_scale)
    assert ours.shape == reference.shape == (2, 2, int((seconds or DURATION) * RATE))  # stereo, cut
    assert reference.abs().max() > 0.1  # audible, so the tolerance below is meaningful
    torch.testing.assert_close(ours, reference, rtol=0, atol=1e-6)


def test_the_conditioning_moves_the_tiny_models_output(gen):
    """So that parity above is evidence: the seconds, the negative prompt and the prompt each move
    the waveform far more than the parity tolerance."""
    base = dict(num_steps=3, cfg_scale=7.0, duration=DURATION)
    a = sample(gen, GenerationRequest(["a dog barks"], [3], negative_prompt=NEGATIVE, **base))
    for changed in (dict(base, duration=DURATION + 0.2), dict(base, negative_prompt=""), dict(base, cfg_scale=3.0)):
        kwargs = {"negative_prompt": NEGATIVE, **changed}
        b = sample(gen, GenerationRequest(["a dog barks"], [3], **kwargs))[..., : a.shape[-1]]
        assert (a - b).abs().max() > 1e-3, changed


def test_a_sample_does_not_depend_on_its_batch(gen):
    """Per-sample seeds for the initial noise and for the Brownian tree of the SDE sampler."""
    pair = sample(gen, GenerationRequest(PROMPTS, SEEDS, negative_prompt=NEGATIVE, num_steps=4, cfg_scale=7.0))
    alone = sample(gen, GenerationRequest(PROMPTS[1:], SEEDS[1:], negative_prompt=NEGATIVE, num_steps=4, cfg_scale=7.0))
    torch.testing.assert_close(pair[1:], alone, rtol=0, atol=1e-6)
    other_seed = sample(gen, GenerationRequest(PROMPTS[1:], [9], negative_prompt=NEGATIVE, num_steps=4, cfg_scale=7.0))
    assert (other_seed - alone).abs().max() > 1e-3


def test_the_step_noise_comes_from_the_seed(gen):
    """The same initial latent, another seed for the sampler's Brownian tree: another result."""
    request = GenerationRequest(["a dog barks"], [3], num_steps=4, cfg_scale=7.0)
    trajectory = gen.prepare(request)
    other = gen.prepare(GenerationRequest(["a dog barks"], [5], num_steps=4, cfg_scale=7.0))
    assert [g.initial_seed() for g in trajectory.state["step_kwargs"]["generator"]] == [3]
    z1 = z2 = trajectory.latents
    for i in range(4):
        _, z1 = gen.denoise_step(trajectory, z1, i)
        _, z2 = gen.denoise_step(other, z2, i)
    assert (z1 - z2).abs().max() > 1e-3


# -- x̂0, gradients, prompt tuning -----------------------------------------------------------------

def test_predict_x0_is_the_schedulers_own_edm_estimate(gen):
    """x̂0 = c_skip(σ_i)·z + c_out(σ_i)·F, the scheduler's `precondition_outputs` at the latent's own
    σ_i: what its step uses (`convert_model_output` at step index i)."""
    trajectory = gen.prepare(GenerationRequest(["a dog barks"], [0], num_steps=6, cfg_scale=7.0))
    latents = trajectory.latents
    for i in range(2):  # move off the first steps
        _, latents = gen.denoise_step(trajectory, latents, i)
    scheduler = trajectory.state["scheduler"]
    assert scheduler.step_index == 2
    with torch.no_grad():
        out = gen.predict_noise(trajectory, latents, 2)
    ours = gen.predict_x0(trajectory, latents, out, 2)
    expected = copy.deepcopy(scheduler).convert_model_output(out, sample=latents)
    torch.testing.assert_close(ours, expected, rtol=1e-5, atol=1e-6)
    sigma = float(scheduler.sigmas[2])
    by_hand = latents / (1 + sigma**2) - sigma / math.sqrt(1 + sigma**2) * out  # v-prediction, σ_data = 1
    torch.testing.assert_close(ours, by_hand, rtol=1e-5, atol=1e-6)
    # a variance-preserving reading (z − √(1−ᾱ)·F)/√ᾱ with ᾱ = 1/(1+σ²) is far from it
    vp = (latents - sigma / math.sqrt(1 + sigma**2) * out) * math.sqrt(1 + sigma**2)
    assert (vp - ours).abs().max() > 1.0


def test_latent_scale_and_noise_level_follow_sigma(gen):
    trajectory = gen.prepare(GenerationRequest(["a"], [0], num_steps=5))
    sigmas = trajectory.state["scheduler"].sigmas
    for i in range(5):
        assert gen.latent_scale(trajectory, i) == pytest.approx(math.sqrt(1 + float(sigmas[i]) ** 2))
        assert gen.noise_level(trajectory, i) == pytest.approx(float(sigmas[i]) / math.sqrt(1 + float(sigmas[i]) ** 2))
    # the initial noise is drawn at the first step's scale: σ_max·ε, scaled by √(σ_max² + 1)
    assert trajectory.latents.std() == pytest.approx(gen.latent_scale(trajectory, 0), rel=0.05)


def test_guidance_gradient_equals_a_finite_difference(tiny):
    """The gradient the aligner follows, through EDM x̂0 and the Oobleck decoder, against a central
    difference in float64 (a smooth linear embedding stands in for the binder)."""
    gen = StableAudioGenerator(str(tiny), duration=0.05, dtype=torch.float64)
    assert gen.vae.dtype == gen.transformer.dtype == torch.float64
    trajectory = gen.prepare(GenerationRequest(["a dog barks"], [1], num_steps=5, cfg_scale=7.0))
    with torch.no_grad():
        out = gen.predict_noise(trajectory, trajectory.latents.double(), 3).double()
    keep = int(0.05 * RATE)
    projection = torch.randn(2 * keep, 16, generator=torch.Generator().manual_seed(1), dtype=torch.float64)
    target = torch.randn(1, 16, generator=torch.Generator().manual_seed(2), dtype=torch.float64)

    def loss(z: torch.Tensor) -> torch.Tensor:
        audio = fit_duration(gen.decode(gen.predict_x0(trajectory, z, out, 3), trajectory=trajectory),
                             trajectory.duration)
        assert audio.waveform.dtype == torch.float64 and audio.waveform.shape[-2:] == (2, keep)
        return (1 - F.cosine_similarity(audio.waveform.flatten(1) @ projection, target)).sum()

    # a latent at step 3's noise level, so that x̂0 (and the decode) is not swamped by σ_0 = 500
    z = (torch.randn(trajectory.latents.shape, generator=torch.Generator().manual_seed(4), dtype=torch.float64)
         * gen.latent_scale(trajectory, 3)).requires_grad_(True)
    (grad,) = torch.autograd.grad(loss(z), z)
    assert grad[..., : math.ceil(0.05 * RATE / HOP)].abs().gt(0).float().mean() > 0.9  # it reaches the frames
    direction = torch.randn(z.shape, generator=torch.Generator().manual_seed(0), dtype=torch.float64)
    h = 1e-5
    with torch.no_grad():
        numeric = (loss(z + h * direction) - loss(z - h * direction)) / (2 * h)
    analytic = (grad * direction).sum()
    assert abs(float(numeric - analytic)) <= 1e-6 * abs(float(analytic))  # measured 4.9e-9


def test_noise_prediction_is_differentiable_in_the_prompt_embedding(gen):
    assert gen.supports_prompt_tuning
    trajectory = gen.prepare(GenerationRequest(["a dog barks"], [0], negative_prompt=NEGATIVE, num_steps=5,
                                               cfg_scale=7.0))
    mask = trajectory.state["text_mask"]
    assert trajectory.prompt_embeds.shape == (1, 12, 24) and bool((mask == 0).any())
    trajectory.prompt_embeds = trajectory.prompt_embeds.detach().requires_grad_(True)
    with torch.enable_grad():
        out = gen.predict_noise(trajectory, trajectory.latents, 1)
    (grad,) = torch.autograd.grad(out.square().sum(), trajectory.prompt_embeds)
    assert torch.isfinite(grad).all() and grad[mask.bool()].abs().max() > 0
    assert grad[~mask.bool()].abs().max() == 0  # padding stays zero, as the pipeline keeps it


# -- the guidance step's relative size -------------------------------------------------------------

class LinearBinder(Binder):
    """A fixed random linear embedding of the first 0.05 s of stereo audio: smooth, and cheap."""

    name = "linear"
    modalities = frozenset({A})

    def __init__(self) -> None:
        super().__init__(None)
        self.weight = torch.randn(2 * int(0.05 * RATE), 8, generator=torch.Generator().manual_seed(0))

    def embed(self, media):
        wave = media.waveform[..., : int(0.05 * RATE)].float()
        return wave.flatten(1) @ self.weight


@pytest.fixture(scope="module")
def fast_gen(tiny) -> StableAudioGenerator:
    """Decodes only the frames covering the run (and 16 more): the same run's audio, less work."""
    return StableAudioGenerator(str(tiny), duration=DURATION, decode_margin=16)


def relative_updates(gen: StableAudioGenerator, optimizer: str, lr: float, weight: float = 1.0,
                     steps: int = 8) -> list[tuple[float, float]]:
    """(σ_i, ‖Δz‖/‖z‖) of each guided step of a run guided over all its steps."""
    inputs, moves = [], []
    predict, step = gen.predict_noise, gen.step

    def recording_predict(trajectory, latents, index):
        inputs.append(latents.clone())
        return predict(trajectory, latents, index)

    def recording_step(trajectory, latents, noise_pred, index):
        moves.append((float(trajectory.state["scheduler"].sigmas[index]), latents.clone()))
        return step(trajectory, latents, noise_pred, index)

    gen.predict_noise, gen.step = recording_predict, recording_step
    try:
        request = GenerationRequest(["a dog barks"], [0], num_steps=steps, cfg_scale=7.0, duration=0.1)
        target = torch.randn(1, 8, generator=torch.Generator().manual_seed(1))
        align({A: gen}, {A: request}, LinearBinder(), [Term(A, "condition", weight)], {"condition": target},
              GuidanceSettings(start=0.0, end=1.0, optimizer=optimizer, lr={"audio": lr}))
    finally:
        del gen.predict_noise, gen.step
    return [(sigma, float((after - before).norm() / before.norm())) for (sigma, after), before in zip(moves, inputs)]


@pytest.mark.parametrize("optimizer, weight", [("ngd", 1.0), ("adam", 1e6)])
def test_a_guidance_step_has_the_same_relative_size_early_and_late(fast_gen, optimizer, weight):
    """σ falls from 500 to 0.3 over the run. The aligner scales a latent's step by √(1 + σ²), the
    latent's RMS relative to data of RMS σ_data = 1; ‖z‖ is about √d·√(RMS(x0)² + σ²). An ngd step
    (length lr·scale·√d) then moves the latent by lr·√(1+σ²)/√(RMS(x0)² + σ²) of its size: lr while σ
    dominates, lr/RMS(x0) at σ → 0. Measured: ngd 0.0098 at σ = 500, 0.0087 at σ = 0.3. An Adam first
    step moves each element with a gradient by ±lr·scale, the same share of elements at every step
    (those the binder's 0.05 s see, and the decoder's reach), so its ratio is constant up to the same
    RMS(x0) factor (measured: 0.0037 and 0.0033). The factor 1.5 allows an RMS(x0) between 0.67 and
    1.5 σ_data; unscaled, the first and last steps would be 500× apart.

    Adam runs with the loss scaled by 1e6: its step is ±lr only where |g| ≫ its ε = 1e-8, and at
    σ = 500 the gradient reaching z is c_skip = 1/(1+σ²) = 4e-6 of x̂0's. At weight 1 the tiny
    model's first Adam step moved 0.0010 of z, the later ones 0.0021–0.0036 (docs/stable-audio.md)."""
    lr = 0.01
    ratios = relative_updates(fast_gen, optimizer, lr, weight)
    assert len(ratios) == 8 and ratios[0][0] == pytest.approx(500) and ratios[-1][0] == pytest.approx(0.3)
    early, late = ratios[0][1], ratios[-1][1]
    if optimizer == "ngd":
        assert early == pytest.approx(lr, rel=0.05)  # z ≈ σ·ε: ‖Δz‖/‖z‖ = lr·√(1+σ²)/σ
    assert 1 / 1.5 < early / late < 1.5, ratios


# -- lengths and decoding ----------------------------------------------------------------------

def test_the_run_sets_seconds_total_and_the_cut(gen):
    trajectory = gen.prepare(GenerationRequest(["a"], [0], num_steps=2, duration=0.45))
    assert trajectory.duration == 0.45 and trajectory.latents.shape == (1, 4, FRAMES)  # always the full latent
    start, end = trajectory.state["seconds"]
    expected = gen.projection(start_seconds=torch.tensor([0.0]), end_seconds=torch.tensor([0.45]))
    torch.testing.assert_close(end, expected.seconds_end_hidden_states)
    torch.testing.assert_close(start, expected.seconds_start_hidden_states)
    assert gen.prepare(GenerationRequest(["a"], [0], num_steps=2)).duration == DURATION  # None: the option
    with torch.no_grad():
        audio = gen.decode(trajectory.latents, trajectory=trajectory)
    assert audio.sample_rate == RATE and audio.waveform.shape == (1, 2, FRAMES * HOP)  # the VAE's whole output


def test_too_long_a_run_is_refused_in_one_line(tiny, gen):
    assert gen.max_duration == pytest.approx(MAX_SECONDS) and StableAudioGenerator.max_duration == pytest.approx(47.55,
                                                                                                                abs=0.01)
    assert RELEASED_MAX_SECONDS == 1024 * 2048 / 44100
    with pytest.raises(SahError) as info:
        gen.prepare(GenerationRequest(["a"], [0], num_steps=2, duration=0.8))
    assert "\n" not in str(info.value) and "at most" in str(info.value) and "0.74 s" in str(info.value)
    gen.prepare(GenerationRequest(["a"], [0], num_steps=2, duration=MAX_SECONDS))  # the longest is fine
    with pytest.raises(SahError, match="longer than this model can make"):
        StableAudioGenerator(str(tiny))  # the default 10 s, refused from the configs before the weights load


def test_bad_options_fail_before_loading(tmp_path):
    missing = str(tmp_path / "nowhere")
    with pytest.raises(SahError, match="duration must be positive"):
        StableAudioGenerator(missing, duration=0.0)
    with pytest.raises(SahError, match="decode_margin"):
        StableAudioGenerator(missing, decode_margin=-2)
    with pytest.raises(SahError, match="does not exist"):
        StableAudioGenerator(missing)


def test_uncached_hub_id_offline_is_one_line(monkeypatch):
    import huggingface_hub.constants

    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    monkeypatch.setattr(huggingface_hub.constants, "HF_HUB_OFFLINE", True)
    with pytest.raises(SahError) as info:
        StableAudioGenerator("sah-tests/no-such-stable-audio")
    message = str(info.value)
    assert "\n" not in message and "'sah-tests/no-such-stable-audio'" in message and "--audio-model PATH" in message


def test_plan_offline_names_every_missing_weight_in_one_line(tmp_path, monkeypatch):
    import huggingface_hub.constants

    from sah import hub

    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    monkeypatch.setattr(huggingface_hub.constants, "HF_HUB_OFFLINE", True)
    monkeypatch.setattr(huggingface_hub.constants, "HF_HUB_CACHE", str(tmp_path / "hf"))
    hub.reachable.cache_clear()
    monkeypatch.setattr(StableAudioGenerator, "__init__", lambda *a, **k: pytest.fail("a model was loaded"))
    clip = write_mp4(tmp_path / "clip.mp4", blob_frames(2, 4, 32, 32), fps=8)
    with pytest.raises(SahError) as info:
        sah.plan({"run": {"task": "v2a", "device": "cpu"}, "input": {"video": str(clip)},
                  "audio": {"generator": "stable-audio"}, "binder": {"name": "clip+clap"},
                  "output": {"dir": str(tmp_path / "out")}})
    message = str(info.value)
    assert "\n" not in message and message.startswith("model weights not available offline")
    for name in ("'stabilityai/stable-audio-open-1.0' (--audio-model)", "'openai/clip-vit-large-patch14'",
                 "'laion/clap-htsat-unfused'"):
        assert name in message, message


def test_licence_is_declared_and_conditional_commercial_use_is_not_claimed():
    licence = StableAudioGenerator.licence_for(None)
    assert licence.weights == "Stability AI Community License" and licence.code == "Apache-2.0"
    assert licence.commercial is False and "stable-audio-open-1.0" in licence.url


def test_a_decode_margin_gives_the_runs_seconds_of_the_whole_decode(gen, fast_gen):
    trajectory = gen.prepare(GenerationRequest(["a"], [0], num_steps=2, duration=0.2))
    z = torch.randn(1, 4, FRAMES, generator=torch.Generator().manual_seed(0))
    with torch.no_grad():
        whole = fit_duration(gen.decode(z, trajectory=trajectory), 0.2).waveform
        part = fast_gen.decode(z, trajectory=trajectory)
    assert part.waveform.shape[-1] == (math.ceil(0.2 * RATE / HOP) + 16) * HOP < FRAMES * HOP
    torch.testing.assert_close(fit_duration(part, 0.2).waveform, whole, rtol=0, atol=1e-5)


def test_the_released_decoders_reach_is_within_the_margin_presets_use():
    """On the released Oobleck architecture (ratios 2·4·4·8·8, channel multiples 1–16; tiny widths)
    the waveform of latent frames [0, n) depends on frames up to n − 1 + 10: a margin of 16 decodes
    the run's seconds as the whole latent would."""
    torch.manual_seed(0)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        vae = AutoencoderOobleck(encoder_hidden_size=2, downsampling_ratios=[2, 4, 4, 8, 8],
                                 channel_multiples=[1, 2, 4, 8, 16], decoder_channels=2, decoder_input_channels=4)
    n = 6
    z = torch.randn(1, 4, n + 20, requires_grad=True)
    (grad,) = torch.autograd.grad(vae.decode(z).sample[..., : n * 2048].square().sum(), z)
    reach = int(grad.abs().sum(dim=(0, 1)).nonzero().max()) - (n - 1)
    assert reach == 10
    assert load_preset("v2a-stable-audio")["audio"]["decode_margin"] >= reach


# -- guided V2A through the CLI, and the preset -------------------------------------------------

def invoke(*args):
    return CliRunner().invoke(cli, [str(a) for a in args], catch_exceptions=False)


def test_guided_v2a_through_the_cli_writes_audio_as_long_as_the_video(tiny, tmp_path):
    """The toy binder takes 16 kHz mono; it mixes Stable Audio's stereo down and resamples 44.1 kHz."""
    clip = write_mp4(tmp_path / "clip.mp4", blob_frames(2, 4, 32, 32), fps=8)  # 0.5 s
    out = tmp_path / "out"
    result = invoke("run", "--gen-audio", "stable-audio", "--audio-model", tiny, "--binder", "toy", "--video", clip,
                    "--steps", 4, "--out", out, "--device", "cpu", "--quiet", "--no-plot",
                    "--set", "audio.duration=0.5", "--set", "audio.decode_margin=16")
    assert result.exit_code == 0, result.output
    assert sorted(p.name for p in out.iterdir()) == ["v2a-0.json", "v2a-0.mp4", "v2a-0.wav"]
    audio = read_audio(out / "v2a-0.wav")
    assert audio.sample_rate == RATE and audio.channels == 2 and abs(audio.duration - 0.5) < 1e-3
    dubbed = read_video(out / "v2a-0.mp4")
    assert dubbed.num_frames == 4 and dubbed.audio is not None
    sidecar = json.loads((out / "v2a-0.json").read_text())
    assert sidecar["config"]["audio"]["generator"] == "stable-audio"
    assert sidecar["config"]["audio"]["cfg_scale"] == 7.0  # the plugin's default replaced the core's 1.0
    records = [r for r in sidecar["trace"] if not r["skipped"]]
    assert len(records) == 3  # steps 1..3 of 4 lie in the default window [0.2, 1)
    assert all(math.isfinite(r["similarity"]["audio~condition"]) for r in records)


def test_the_preset_says_what_it_is_and_resolves():
    assert preset_text("v2a-stable-audio").startswith("# v2a-stable-audio — ")
    c = cfg.resolve(load_preset("v2a-stable-audio"), registry=get_registry())
    assert c["run"]["task"] == "v2a"
    assert (c["audio"]["generator"], c["audio"]["model"]) == ("stable-audio", "stabilityai/stable-audio-open-1.0")
    assert (c["run"]["steps"], c["audio"]["cfg_scale"]) == (100, 7.0)  # StableAudioPipeline's defaults
    assert c["binder"]["name"] == "clip+clap" and c["binder"]["space"] == "clap"
    assert c["guidance"]["optimizer"] == "ngd" and c["guidance"]["enabled"]


def _tiny_clip_and_clap(root: Path) -> tuple[Path, Path, Path]:
    """A tiny CLIPModel and ClapModel (character-level tokenizers) and a label file: the preset's
    binder, clip+clap, at toy size."""
    from transformers import (
        ClapConfig,
        ClapFeatureExtractor,
        ClapModel,
        CLIPConfig,
        CLIPImageProcessor,
        CLIPModel,
        CLIPTokenizer,
        RobertaTokenizer,
    )

    chars = list("abcdefghijklmnopqrstuvwxyz.")
    clip, clap = root / "clip", root / "clap"
    for folder, specials, word in ((clip, ["<|startoftext|>", "<|endoftext|>"], [c + "</w>" for c in chars]),
                                   (clap, ["<s>", "<pad>", "</s>", "<unk>", "<mask>"], ["\u0120" + c for c in chars])):
        folder.mkdir(parents=True)
        vocab = [*specials, *chars, *word] + (["\u0120"] if folder == clap else [])
        (folder / "vocab.json").write_text(json.dumps({t: i for i, t in enumerate(vocab)}))
        (folder / "merges.txt").write_text("#version: 0.2\n")
    torch.manual_seed(2)
    clip_tokenizer = CLIPTokenizer(str(clip / "vocab.json"), str(clip / "merges.txt"))
    CLIPModel(CLIPConfig(
        text_config=dict(vocab_size=len(clip_tokenizer), hidden_size=16, intermediate_size=32, num_hidden_layers=1,
                         num_attention_heads=2, max_position_embeddings=77, bos_token_id=0, eos_token_id=1,
                         pad_token_id=1),
        vision_config=dict(image_size=32, patch_size=16, hidden_size=16, intermediate_size=32, num_hidden_layers=1,
                           num_attention_heads=2), projection_dim=8)).save_pretrained(clip)
    clip_tokenizer.save_pretrained(clip)
    CLIPImageProcessor(size={"shortest_edge": 32}, crop_size={"height": 32, "width": 32}).save_pretrained(clip)
    clap_tokenizer = RobertaTokenizer(str(clap / "vocab.json"), str(clap / "merges.txt"))
    ClapModel(ClapConfig(
        text_config=dict(vocab_size=len(clap_tokenizer), hidden_size=16, intermediate_size=32, num_hidden_layers=1,
                         num_attention_heads=2, max_position_embeddings=64),
        audio_config=dict(spec_size=128, num_mel_bins=64, window_size=4, patch_size=8, patch_stride=8, hidden_size=32,
                          depths=[1, 1], num_attention_heads=[2, 2], patch_embeds_hidden_size=16),
        projection_dim=8)).save_pretrained(clap)
    clap_tokenizer.save_pretrained(clap)  # (the audio tower's hidden_size is its width after 2 stages: 16·2)
    ClapFeatureExtractor(max_length_s=1, frequency_min=50, frequency_max=14000).save_pretrained(clap)  # 48 kHz
    labels = root / "labels.txt"
    labels.write_text("dog barking\nrain falling\ncar engine\n")
    return clip, clap, labels


def test_the_preset_runs_end_to_end_on_tiny_real_architectures(tiny, tmp_path):
    """Everything but the models, the lengths and the step count is the preset's."""
    clip, clap, labels = _tiny_clip_and_clap(tmp_path / "binder")
    video = write_mp4(tmp_path / "clip.mp4", blob_frames(2, 4, 32, 32), fps=8)  # 0.5 s
    out = tmp_path / "out"
    result = invoke("run", "--preset", "v2a-stable-audio", "--video", video, "--prompt", "a dog barking",
                    "--audio-model", tiny, "--binder-model", f"{clip},{clap}", "--steps", 4, "--out", out,
                    "--no-plot", "--quiet", "--device", "cpu", "--set", "audio.duration=0.5",
                    "--set", f"binder.labels={json.dumps(str(labels))}")
    assert result.exit_code == 0, result.output
    sidecar = json.loads((out / "v2a-0.json").read_text())
    assert sidecar["config"]["guidance"]["optimizer"] == "ngd" and sidecar["config"]["binder"]["space"] == "clap"
    audio = read_audio(out / "v2a-0.wav")
    assert audio.sample_rate == RATE and audio.channels == 2 and abs(audio.duration - 0.5) < 1e-3
    guided = [r for r in sidecar["trace"] if not r["skipped"]]
    assert len(guided) == 3 and all(set(r["similarity"]) == {"audio~condition", "audio~text"} for r in guided)
    assert all(math.isfinite(v) for r in guided for v in r["similarity"].values())


# -- decoding only the audio the binder reads ---------------------------------------------------

@pytest.mark.parametrize("ratios", [(2, 4, 4, 8, 8), (4, 8, 8), (2, 8), (8, 2, 2)])
def test_decoder_reach_bounds_what_a_sample_depends_on(ratios):
    """Probed by gradient on Oobleck decoders of these ratios (tiny widths): the latent frames that
    latent frames [48, 52) of the output depend on, either way. The bound is exact for the released
    ratios and the tests' tiny model, and at most a frame over for the others."""
    torch.manual_seed(0)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        vae = AutoencoderOobleck(encoder_hidden_size=2, downsampling_ratios=list(ratios),
                                 channel_multiples=[1] * len(ratios), decoder_channels=2, decoder_input_channels=4)
    hop = math.prod(ratios)
    z = torch.randn(1, 4, 100, requires_grad=True)
    (grad,) = torch.autograd.grad(vae.decode(z).sample[..., 48 * hop : 52 * hop].square().sum(), z)
    used = grad.abs().sum(dim=(0, 1)).nonzero().flatten()
    left, right = 48 - int(used.min()), int(used.max()) - 51
    bound = decoder_reach(ratios)
    assert left == right and left <= bound <= left + 1
    if ratios in [(2, 4, 4, 8, 8), (4, 8, 8)]:
        assert bound == left == 10


def test_a_decode_of_spans_is_the_whole_decode_under_them(gen):
    trajectory = gen.prepare(GenerationRequest(["a", "b"], [0, 1], num_steps=2, duration=DURATION))
    spans = [(0.05, 0.07), (0.2, 0.25)]  # latent frames [8, 13) and [34, 44) of 128, 5.8 ms each
    with torch.no_grad():
        whole = gen.decode(trajectory.latents, trajectory=trajectory).waveform
        part = gen.decode(trajectory.latents, trajectory=trajectory, spans=spans).waveform
    assert part.shape == whole.shape == (2, 2, FRAMES * HOP)
    for first, stop in [(8, 13), (34, 44)]:  # float32 rounding of convolutions over other lengths (float64: equal)
        torch.testing.assert_close(part[..., first * HOP : stop * HOP], whole[..., first * HOP : stop * HOP],
                                   rtol=0, atol=1e-6 * float(whole.abs().max()))
    assert part[..., 13 * HOP : 34 * HOP].abs().max() == 0 == part[..., 44 * HOP :].abs().max()
    assert "spans" in check_generator(gen, skip=[c for c in GENERATOR_CHECKS if c != "spans"], span_rtol=1e-5).passed


def test_guided_v2a_on_the_binders_clips_only_moves_the_latent_as_a_whole_decode_does(tiny):
    """ImageBind's audio tower reading one 0.05 s clip of 0.3 s: the run decodes 23 of the 128
    latent frames at each guided step (13 under the clip and its slack, 10 of reach), and its
    latents are those of the same run decoding them all. In float64, so that equal means equal."""
    gen = StableAudioGenerator(str(tiny), duration=DURATION, dtype=torch.float64)
    torch.manual_seed(0)
    binder = ImageBindBinder.from_model(ImageBindModel(IMAGEBIND_TINY, towers=("audio",)).double(),
                                        audio_clips=1, audio_clip_seconds=0.05)
    target = torch.randn(1, IMAGEBIND_TINY.out_embed_dim, generator=torch.Generator().manual_seed(1))
    decoded: list[int] = []
    decode = gen.vae.decode

    def counting_decode(z, *args, **kwargs):
        decoded.append(z.shape[-1])
        return decode(z, *args, **kwargs)

    def run(partial: bool):
        gen.supports_audio_spans = partial
        request = GenerationRequest(["a dog barks"], [0], num_steps=4, cfg_scale=7.0, duration=DURATION)
        return align({A: gen}, {A: request}, binder, [Term(A, "condition")], {"condition": target},
                     GuidanceSettings(start=0.0, end=1.0, lr={"audio": 0.05}))

    gen.vae.decode = counting_decode
    try:
        partial = run(True)
        partial_frames = list(decoded)
        decoded.clear()
        whole = run(False)
    finally:
        del gen.vae.decode
        gen.supports_audio_spans = True
    assert partial_frames == [23] * 4 + [FRAMES] and decoded == [FRAMES] * 5  # 4 guided steps, then the output
    torch.testing.assert_close(partial.latents[A], whole.latents[A], rtol=0, atol=1e-10)
    assert partial.trace[-1]["similarity"]["audio~condition"] == \
        pytest.approx(whole.trace[-1]["similarity"]["audio~condition"], abs=1e-12)

"""The Wan 2.1 generator on a tiny, randomly initialised Wan built in code (UMT5 encoder, T5 tokenizer,
WanTransformer3DModel, AutoencoderKLWan, the checkpoints' UniPC flow scheduler), saved by `WanPipeline`
in the hub layout and loaded back through the plugin's own loading path: parity with `WanPipeline`
loaded on its own from the same folder, gradients, the frame-subset decode, guided A2V via the CLI
and one-line errors."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import av
import numpy as np
import pytest
import torch
from click.testing import CliRunner
from diffusers import (
    AutoencoderKLWan,
    FlowMatchEulerDiscreteScheduler,
    UniPCMultistepScheduler,
    WanPipeline,
    WanTransformer3DModel,
)
from media_helpers import tone, write_wav
from safetensors.torch import load_file
from transformers import T5Tokenizer, UMT5Config, UMT5EncoderModel

import sah
from sah import schedules
from sah.cli import cli
from sah.errors import SahError
from sah.generator import GenerationRequest
from sah.io import read_video
from sah.media import Modality
from sah.plugins.generators.wan import WanGenerator, frames_for, latent_frame_of
from sah.registry import get_registry

SIZE = 32  # pixels: 4×4 latent, 2×2 transformer patches
TINY = {"height": SIZE, "width": SIZE, "frames": 9}  # 3 latent frames

# The scheduler config both Wan 2.1 T2V -Diffusers repositories ship (scheduler/scheduler_config.json).
WAN_SCHEDULER = dict(
    num_train_timesteps=1000, beta_start=0.0001, beta_end=0.02, beta_schedule="linear", solver_order=2,
    prediction_type="flow_prediction", thresholding=False, predict_x0=True, solver_type="bh2", lower_order_final=True,
    disable_corrector=[], use_flow_sigmas=True, flow_shift=3.0, timestep_spacing="linspace", steps_offset=0,
    final_sigmas_type="zero")


# -- tiny components ----------------------------------------------------------------------------

def tiny_tokenizer() -> T5Tokenizer:
    """A sentencepiece-style unigram T5 tokenizer over lowercase letters and a few words."""
    pieces = [("<pad>", 0.0), ("</s>", 0.0), ("<unk>", 0.0), ("▁", -2.0)]
    pieces += [(c, -3.0 - i / 10) for i, c in enumerate("abcdefghijklmnopqrstuvwxyz&;,")]
    pieces += [("▁a", -1.0), ("▁cat", -1.0), ("▁dog", -1.0), ("▁blurry", -1.0)]
    return T5Tokenizer(vocab=pieces, extra_ids=0)


def tiny_wan_pipeline() -> WanPipeline:
    torch.manual_seed(0)
    tokenizer = tiny_tokenizer()
    text_encoder = UMT5EncoderModel(UMT5Config(vocab_size=len(tokenizer), d_model=16, d_kv=4, d_ff=32, num_layers=2,
                                               num_heads=4, relative_attention_num_buckets=8,
                                               relative_attention_max_distance=16))
    torch.manual_seed(1)
    transformer = WanTransformer3DModel(patch_size=(1, 2, 2), num_attention_heads=2, attention_head_dim=8,
                                        in_channels=4, out_channels=4, text_dim=16, freq_dim=32, ffn_dim=32,
                                        num_layers=2, rope_max_seq_len=32)
    torch.manual_seed(2)
    # latents_mean/std far from 0/1, so a decode that skipped or inverted them would not pass
    vae = AutoencoderKLWan(base_dim=8, z_dim=4, dim_mult=[1, 1, 1, 1], num_res_blocks=1,
                           temperal_downsample=[False, True, True], latents_mean=[0.3, -0.4, 0.6, 0.1],
                           latents_std=[1.5, 0.6, 2.2, 1.1])
    return WanPipeline(tokenizer=tokenizer, text_encoder=text_encoder, transformer=transformer, vae=vae,
                       scheduler=UniPCMultistepScheduler(**WAN_SCHEDULER))


@pytest.fixture(scope="module")
def wan_dir(tmp_path_factory) -> Path:
    folder = tmp_path_factory.mktemp("wan") / "Wan2.1-tiny"
    tiny_wan_pipeline().save_pretrained(folder)
    return folder


def load_wan(folder, **options) -> WanGenerator:
    return WanGenerator(model=str(folder), **{**TINY, **options})


def reference_pipeline(folder: Path, **components) -> WanPipeline:
    """`WanPipeline.from_pretrained` on the folder. diffusers loads `WanTransformer3DModel` (it has
    float32-only modules) only with `accelerate` installed; without it, the test reads the
    transformer itself: its config and its safetensors file, nothing of the plugin's."""
    from diffusers.utils import is_accelerate_available

    if not is_accelerate_available():
        transformer = WanTransformer3DModel.from_config(WanTransformer3DModel.load_config(folder / "transformer"))
        transformer.load_state_dict(load_file(folder / "transformer" / "diffusion_pytorch_model.safetensors"))
        components.setdefault("transformer", transformer.eval())
    return WanPipeline.from_pretrained(folder, **components)


def unguided(generator, request) -> sah.Video:
    return sah.align({Modality.VIDEO: generator}, {Modality.VIDEO: request}).media[Modality.VIDEO]


# HTML entities and runs of spaces: the pipeline's prompt cleaning must happen on both sides
PROMPTS = ["a  cat &amp; a dog", "a dog "]
REQUEST = dict(prompts=PROMPTS, seeds=[3, 4], negative_prompt="blurry", num_steps=3, cfg_scale=5.0)


# -- parity with WanPipeline ---------------------------------------------------------------------

@pytest.mark.parametrize("scheduler", ["auto", "euler"])
def test_matches_wan_pipeline(wan_dir, scheduler):
    """Unguided frames equal WanPipeline's for the same folder, prompts, negative prompt and
    per-sample seeds: with the checkpoint's own UniPC flow scheduler ("auto", what
    WanPipeline.from_pretrained uses) and with flow-matching Euler, which the pipeline gets built
    here by hand (shift 3.0, the checkpoint's flow_shift). Tolerance 1e-5 absolute; measured: the
    frames agree bit for bit on this CPU (max |Δ| = 0)."""
    generator = load_wan(wan_dir, scheduler=scheduler)
    request = GenerationRequest(**REQUEST)
    ours = unguided(generator, request)

    extra = {"scheduler": FlowMatchEulerDiscreteScheduler(shift=3.0)} if scheduler == "euler" else {}
    pipe = reference_pipeline(wan_dir, **extra)
    assert type(pipe.scheduler) is type(generator.scheduler)
    # the pipeline's own defaults: max_sequence_length 512, float32 latents
    theirs = pipe(prompt=PROMPTS, negative_prompt=request.negative_prompt, height=SIZE, width=SIZE, num_frames=9,
                  num_inference_steps=request.num_steps, guidance_scale=request.cfg_scale,
                  generator=[torch.Generator().manual_seed(s) for s in request.seeds], output_type="pt").frames
    assert ours.frames.shape == theirs.shape == (2, 9, 3, SIZE, SIZE)
    assert ours.frame_indices is None and ours.total_frames == 9 and ours.fps == 16.0
    difference = float((ours.frames - theirs).abs().max())
    assert difference <= 1e-5, difference
    assert ours.frames.std() > 0.01  # not a constant picture both sides agree on trivially
    assert (ours.frames[0] - ours.frames[1]).abs().max() > 1e-3  # the two samples differ


def test_prompt_embeddings_match_the_pipeline(wan_dir):
    """Trimmed to each prompt's tokens, zero-padded to max_sequence_length, cut beyond it."""
    generator = load_wan(wan_dir, max_sequence_length=8)
    pipe = reference_pipeline(wan_dir)
    prompts = ["a cat", "a  dog &amp; a cat and a blurry dog"]  # the second runs past 8 tokens
    ours = generator.encode_prompts(prompts)
    theirs, _ = pipe.encode_prompt(prompts, do_classifier_free_guidance=False, max_sequence_length=8)
    assert ours.shape == theirs.shape == (2, 8, 16)
    # not bit for bit: the same UMT5 weights give results 6e-7 apart once requires_grad_(False) is set
    # (the plugin freezes its modules; torch then takes another kernel path)
    torch.testing.assert_close(ours, theirs, atol=2e-6, rtol=1e-5)
    assert ours[0, 4:].abs().max() == 0 and ours[0, :3].abs().min() > 0  # "▁a ▁cat </s>" then zeros
    assert ours[1].abs().min() > 0  # truncated: every position is a token


def test_samples_do_not_depend_on_their_batch(wan_dir):
    generator = load_wan(wan_dir)
    both = unguided(generator, GenerationRequest(**{**REQUEST, "num_steps": 2}))
    alone = unguided(generator, GenerationRequest(**{**REQUEST, "num_steps": 2, "prompts": PROMPTS[1:],
                                                     "seeds": [4]}))
    torch.testing.assert_close(both.frames[1:], alone.frames, atol=1e-5, rtol=1e-4)


@pytest.mark.parametrize("name", ["auto", "unipc", "euler", "dpm"])
def test_schedulers_are_flow_matching_and_sample(wan_dir, name):
    generator = load_wan(wan_dir, scheduler=name, frames=5, flow_shift=5.0)
    scheduler = generator.scheduler
    assert schedules.family(scheduler) == schedules.FLOW
    shift = scheduler.config.shift if name == "euler" else scheduler.config.flow_shift
    assert shift == 5.0
    video = unguided(generator, GenerationRequest(["a cat"], [0], num_steps=2, cfg_scale=5.0))
    assert video.frames.shape == (1, 5, 3, SIZE, SIZE) and torch.isfinite(video.frames).all()


def test_x0_is_the_flow_estimate(wan_dir):
    """At step i the latent is x = (1 − σ_i)·x0 + σ_i·ε and the model predicts v = ε − x0, so
    predict_x0(x, v) = x − σ_i·v must give x0 back: at every step of every sampler offered."""
    g = torch.Generator().manual_seed(0)
    for name in ("auto", "euler", "dpm"):
        generator = load_wan(wan_dir, scheduler=name, frames=5)
        trajectory = generator.prepare(GenerationRequest(["a cat"], [0], num_steps=4, cfg_scale=1.0))
        sigmas = trajectory.state["scheduler"].sigmas
        for i in range(trajectory.num_steps):
            x0, eps = torch.randn(1, 4, 2, 4, 4, generator=g), torch.randn(1, 4, 2, 4, 4, generator=g)
            sigma = float(sigmas[i])
            assert 0 < sigma <= 1
            x = (1 - sigma) * x0 + sigma * eps
            torch.testing.assert_close(generator.predict_x0(trajectory, x, eps - x0, i), x0, atol=1e-5, rtol=1e-5)
            assert generator.noise_level(trajectory, i) == pytest.approx(sigma / ((1 - sigma) ** 2 + sigma**2) ** 0.5)


# -- length -----------------------------------------------------------------------------------------

def test_duration_sets_the_frame_count(wan_dir):
    # the smallest 4k + 1 covering ⌈seconds·fps⌉ frames
    assert frames_for(5.0, 16.0) == 81 and frames_for(5.0625, 16.0) == 81 and frames_for(5.1, 16.0) == 85
    assert frames_for(1.0, 16.0) == 17 and frames_for(0.01, 16.0) == 1 and frames_for(1.0, 4.0) == 5
    assert [latent_frame_of(f) for f in range(10)] == [0, 1, 1, 1, 1, 2, 2, 2, 2, 3]
    generator = load_wan(wan_dir, fps=8.0)
    assert generator.num_frames() == 9  # before any run: the frames option
    trajectory = generator.prepare(GenerationRequest(["a cat"], [0], num_steps=2, duration=1.5))
    assert generator.num_frames() == 13 and trajectory.latents.shape == (1, 4, 4, 4, 4)  # 12 frames → 13
    assert trajectory.duration == 1.5
    assert generator.decode(trajectory.latents).frames.shape[1] == 13
    generator.prepare(GenerationRequest(["a cat"], [0], num_steps=2))
    assert generator.num_frames() == 9  # no duration: the frames option again


# -- decoding and gradients ----------------------------------------------------------------------------

def _probe(generator, latents, frames=None):
    """A fixed random linear function of the decoded frames."""
    video = generator.decode(latents, frames=frames)
    weights = torch.randn(video.frames.shape, generator=torch.Generator().manual_seed(9), dtype=video.frames.dtype)
    return (video.frames.to(weights.dtype) * weights).sum(), video


@pytest.mark.parametrize("frames", [None, [6, 0, 2]])
@pytest.mark.parametrize("upsample", ["float64", "as shipped"])
def test_decode_gradient_matches_finite_differences(wan_dir, frames, upsample, monkeypatch):
    """The model loads in float64: the autograd gradient of a fixed linear probe of the decoded frames,
    along a random direction, equals the central finite difference. diffusers' WanUpsample rounds its
    input to float32 (for half-precision kernels), so the float64 VAE is only float32-smooth: with
    that rounding lifted (nearest upsampling is a copy, exact in float64) the two agree to 1e-7
    relative at ε = 1e-6 (measured ~1e-9); as shipped the rounding noise swamps small steps, and
    at ε = 1e-3 they agree to 1e-3 (measured ~1e-4)."""
    if upsample == "float64":
        from diffusers.models.autoencoders import autoencoder_kl_wan

        monkeypatch.setattr(autoencoder_kl_wan.WanUpsample, "forward", torch.nn.Upsample.forward)
    eps, tolerance = (1e-6, 1e-7) if upsample == "float64" else (1e-3, 1e-3)
    generator = load_wan(wan_dir, dtype=torch.float64)
    assert generator.vae.dtype == torch.float64
    g = torch.Generator().manual_seed(1)
    # small latents: no pixel at the VAE's or the [0, 1] clamp, where the derivative jumps
    latents = (0.2 * torch.randn(1, 4, 3, 4, 4, generator=g, dtype=torch.float64)).requires_grad_(True)
    value, video = _probe(generator, latents, frames)
    assert video.frames.dtype == torch.float64
    (grad,) = torch.autograd.grad(value, latents)
    direction = torch.randn(latents.shape, generator=g, dtype=torch.float64)
    with torch.no_grad():
        pixels = generator.decode(latents).frames
        assert 0 < float(pixels.min()) and float(pixels.max()) < 1
        plus = _probe(generator, latents + eps * direction, frames)[0]
        minus = _probe(generator, latents - eps * direction, frames)[0]
    numeric = float((plus - minus) / (2 * eps))
    analytic = float((grad * direction).sum())
    assert analytic == pytest.approx(numeric, rel=tolerance), (analytic, numeric)
    assert grad.abs().sum() > 0


def test_frame_subset_decode_is_the_full_decode_at_those_frames(wan_dir):
    """A subset decode runs the VAE over the latent prefix up to the last asked frame: the causal VAE
    decodes latent frames in order, so those are exactly the full decode's frames (measured max
    |Δ| = 0 on this CPU; 1e-6 allowed), and the later latent frames get no gradient at all."""
    generator = load_wan(wan_dir, frames=13)  # 4 latent frames
    latents = torch.randn(2, 4, 4, 4, 4, generator=torch.Generator().manual_seed(5))
    with torch.no_grad():
        full = generator.decode(latents)
    assert full.frames.shape == (2, 13, 3, SIZE, SIZE) and full.total_frames == 13
    for picks, needed in (([5, 0, 5, 3], 3), ([0], 1), ([4, 1], 2), ([12], 4)):
        leaf = latents.clone().requires_grad_(True)
        subset = generator.decode(leaf, frames=picks)
        assert subset.frame_indices == tuple(picks) and subset.total_frames == 13
        assert subset.frames.shape == (2, len(picks), 3, SIZE, SIZE)
        torch.testing.assert_close(subset.frames, full.frames[:, picks], atol=1e-6, rtol=0)
        subset.frames.sum().backward()
        per_latent_frame = leaf.grad.abs().sum(dim=(0, 1, 3, 4))
        assert all(per_latent_frame[j] > 0 for j in range(needed)), (picks, per_latent_frame)
        assert all(per_latent_frame[j] == 0 for j in range(needed, 4)), (picks, per_latent_frame)
    with pytest.raises(ValueError, match="frames must lie in"):
        generator.decode(latents, frames=[13])


def test_a_middle_latent_group_alone_does_not_decode_exactly(wan_dir):
    """Why the subset decode starts at latent frame 0: without its causal context a later latent
    frame decodes to other pixels (the docs say so)."""
    generator = load_wan(wan_dir, frames=13)
    latents = torch.randn(1, 4, 4, 4, 4, generator=torch.Generator().manual_seed(5))
    with torch.no_grad():
        full = generator.decode(latents).frames
        alone = generator.decode(latents[:, :, 2:4]).frames  # latent frames 2, 3 → frames 5..12
    assert alone.shape[1] == 5
    assert (alone[:, 1:] - full[:, 9:13]).abs().max() > 1e-3


def test_guidance_gradient_reaches_latent_and_prompt(wan_dir):
    """What the aligner differentiates: x̂0 → decode(frames) in the latent, and the transformer in the
    prompt embeddings (guided prompt tuning); the weights stay frozen."""
    generator = load_wan(wan_dir)
    trajectory = generator.prepare(GenerationRequest(["a cat"], [0], num_steps=3, cfg_scale=5.0))
    latents = trajectory.latents.clone().requires_grad_(True)
    trajectory.prompt_embeds = trajectory.prompt_embeds.detach().requires_grad_(True)
    with torch.enable_grad():
        velocity = generator.predict_noise(trajectory, latents.detach(), 1)
        x0 = generator.predict_x0(trajectory, latents, velocity.detach(), 1)
        video = generator.decode(x0, frames=[0, 4])
        (video.frames.mean() + velocity.square().mean()).backward()
    for grad in (latents.grad, trajectory.prompt_embeds.grad):
        assert grad is not None and torch.isfinite(grad).all() and grad.abs().sum() > 0
    assert latents.grad[:, :, 2].abs().max() == 0  # frame 4 is in latent frame 1: frame 2 is not decoded
    assert all(p.grad is None for p in generator.transformer.parameters())


def test_half_precision_keeps_diffusers_float32_modules(wan_dir):
    generator = load_wan(wan_dir, dtype=torch.bfloat16)
    dtypes = {name: p.dtype for name, p in generator.transformer.named_parameters()}
    assert dtypes["blocks.0.attn1.to_q.weight"] == torch.bfloat16
    assert dtypes["scale_shift_table"] == torch.float32
    assert dtypes["condition_embedder.time_embedder.linear_1.weight"] == torch.float32
    assert generator.vae.dtype == torch.float32  # vae_float32
    assert generator.text_encoder.dtype == torch.bfloat16
    assert load_wan(wan_dir, dtype=torch.bfloat16, vae_float32=False).vae.dtype == torch.bfloat16


# -- the CLI, end to end ------------------------------------------------------------------------------------

def _mp4_streams(path: Path) -> dict[str, str]:
    with av.open(str(path)) as container:
        return {s.type: s.codec_context.name for s in container.streams}


def _dominant_hz(waveform: torch.Tensor, rate: int) -> float:
    spectrum = np.abs(np.fft.rfft(waveform.mean(dim=0).numpy()))
    return float(np.argmax(spectrum) * rate / waveform.shape[-1])


@pytest.mark.slow
def test_guided_a2v_through_the_cli(wan_dir, tmp_path):
    """1 s of 750 Hz → 1 s at 4 fps = 4 frames, rounded up to 5 (4k + 1); every step guided."""
    clip = write_wav(tmp_path / "clip.wav", tone(750, 1.0, 16000), 16000)
    out = tmp_path / "out"
    args = ["run", "--gen-video", "wan", "--video-model", wan_dir, "--binder", "toy", "--audio", clip, "--steps", 2,
            "--out", out, "--device", "cpu", "--quiet", "--set", "video.frames=5", "--set", f"video.height={SIZE}",
            "--set", f"video.width={SIZE}", "--set", "video.fps=4.0", "--set", "guidance.start=0.0",
            "--prompt", "north", "--set", "guidance.prompt_tuning=true"]
    result = CliRunner().invoke(cli, [str(a) for a in args], catch_exceptions=False)
    assert result.exit_code == 0, result.output
    assert sorted(p.name for p in out.iterdir()) == ["a2v-0.json", "a2v-0.mp4", "a2v-0.png"]
    assert _mp4_streams(out / "a2v-0.mp4") == {"video": "h264", "audio": "aac"}
    video = read_video(out / "a2v-0.mp4")
    assert video.num_frames == 5 and (video.width, video.height) == (SIZE, SIZE) and video.fps == 4.0
    assert abs(video.audio.duration - 1.0) < 0.1
    assert abs(_dominant_hz(video.audio.waveform[0], video.audio.sample_rate) - 750) < 5
    sidecar = json.loads((out / "a2v-0.json").read_text())
    assert len(sidecar["trace"]) == 2
    assert {"video~condition", "video~text"} <= set(sidecar["trace"][0]["similarity"])


# -- errors, offline plans, registration -----------------------------------------------------------------------

def _run_error(*args) -> str:
    result = CliRunner().invoke(cli, [str(a) for a in args])
    assert result.exit_code == 2, result.output
    assert "Traceback" not in result.output, result.output
    return result.output.strip().splitlines()[-1]


@pytest.mark.parametrize("setting, message", [
    ("video.frames=16", "video.frames must be 4k + 1 (1, 5, …, 81)"),
    ("video.height=40", "video.height must be a positive multiple of 16, got 40"),
    ('video.scheduler="ddim"',
     "config key 'video.scheduler' must be one of \"auto\", \"unipc\", \"euler\", \"dpm\", got 'ddim'"),
    ("video.max_sequence_length=0", "config key 'video.max_sequence_length' must be an integer >= 1, got 0"),
])
def test_bad_options_fail_before_loading(setting, message, tmp_path):
    clip = write_wav(tmp_path / "clip.wav", tone(750, 1.0, 16000), 16000)
    # the model folder does not exist either: the option is reported first, so nothing was loaded
    line = _run_error("run", "--gen-video", "wan", "--video-model", tmp_path / "nowhere", "--audio", clip,
                      "--set", setting, "--out", tmp_path / "out")
    assert message in line


def test_offline_plan_names_every_missing_weight_in_one_line(tmp_path, monkeypatch):
    import huggingface_hub.constants

    from sah.plugins.binders import imagebind

    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    monkeypatch.setenv("SAH_CACHE", str(tmp_path / "sah-cache"))
    monkeypatch.setattr(huggingface_hub.constants, "HF_HUB_CACHE", str(tmp_path / "hf-cache"))
    clip = write_wav(tmp_path / "clip.wav", tone(750, 1.0, 16000), 16000)
    for model in ("", "Wan-AI/Wan2.1-T2V-14B-Diffusers"):
        with pytest.raises(SahError) as caught:
            sah.plan({"video": {"generator": "wan", "model": model}, "binder": {"name": "imagebind"},
                      "input": {"audio": str(clip)}, "output": {"dir": str(tmp_path / "out")}})
        message = str(caught.value)
        assert "\n" not in message
        assert f"'{model or WanGenerator.default_model}' (--video-model): not in the Hugging Face cache" in message
        assert imagebind.CHECKPOINT_URL in message and "HF_HUB_OFFLINE is set" in message
    assert not (tmp_path / "out").exists()


def test_missing_folder_is_one_line(tmp_path):
    clip = write_wav(tmp_path / "clip.wav", tone(750, 1.0, 16000), 16000)
    line = _run_error("run", "--gen-video", "wan", "--video-model", tmp_path / "nowhere", "--audio", clip,
                      "--out", tmp_path / "out")
    assert f"'{tmp_path / 'nowhere'}' (--video-model): no such path" in line


def test_wan22_checkpoints_are_refused(tmp_path):
    folder = tmp_path / "wan22"
    folder.mkdir()
    (folder / "model_index.json").write_text(json.dumps({"_class_name": "WanPipeline", "boundary_ratio": 0.875,
                                                          "transformer_2": ["diffusers", "WanTransformer3DModel"]}))
    with pytest.raises(SahError, match="is a Wan 2.2 checkpoint") as caught:
        load_wan(folder)
    assert "\n" not in str(caught.value)


@pytest.mark.slow
def test_registered_with_its_licence_and_no_eager_imports():
    result = CliRunner().invoke(cli, ["plugins", "--json"])
    rows = {r["name"]: r for r in json.loads(result.output)["plugins"]}
    assert rows["wan"]["kind"] == "generator" and rows["wan"]["modalities"] == ["video"]
    assert WanGenerator.licence.weights == "Apache-2.0" and WanGenerator.licence.commercial
    code = "import sys, sah.plugins.generators.wan; print(sorted({'diffusers', 'transformers'} & set(sys.modules)))"
    assert subprocess.run([sys.executable, "-c", code], capture_output=True, text=True,
                          check=True).stdout.strip() == "[]"


def test_a_guided_run_sized_by_its_duration_decodes_that_runs_frames(wan_dir):
    """The binder must choose its frames from this run's length, not the `frames` option's: 0.5 s at
    16 fps is 8 frames, so 9; the option says 13. Wan's length comes from `request.duration`, so
    `num_frames()` tells it only once `prepare` has run: the aligner has to ask after `prepare`
    (the A2V case: `sah run --gen-video wan --audio clip.wav` with a clip of other than 81 frames)."""
    generator = load_wan(wan_dir, frames=13)
    binder = get_registry().binder("toy")()
    target = {"text": binder.embed(sah.Text(["north"])).detach()}
    request = GenerationRequest(["north"], [0], num_steps=2, cfg_scale=5.0, duration=0.5)
    result = sah.align({Modality.VIDEO: generator}, {Modality.VIDEO: request}, binder,
                       [sah.Term(Modality.VIDEO, "text")], target, sah.GuidanceSettings(start=0.0))
    assert result.media[Modality.VIDEO].frames.shape[1] == 9 and len(result.trace) == 2

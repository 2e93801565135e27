"""The AnimateDiff and ModelScope video generators on tiny, randomly initialised models of the real
diffusers architectures, saved to disk and loaded back through the plugins' own loading path."""

from __future__ import annotations

import json
from pathlib import Path

import av
import numpy as np
import pytest
import torch
from click.testing import CliRunner
from diffusers import (
    AnimateDiffPipeline,
    AutoencoderKL,
    DDIMScheduler,
    MotionAdapter,
    TextToVideoSDPipeline,
    UNet2DConditionModel,
    UNet3DConditionModel,
)
from diffusers.utils.torch_utils import randn_tensor
from media_helpers import tone, write_wav
from transformers import CLIPTextConfig, CLIPTextModel, CLIPTokenizer

import sah
from sah.cli import cli
from sah.generator import GenerationRequest, seeded_noise
from sah.io import read_video
from sah.media import Modality
from sah.plugins.generators._video_common import SCHEDULERS, make_scheduler, predict_x0
from sah.plugins.generators.animatediff import AnimateDiffGenerator
from sah.plugins.generators.modelscope import ModelScopeGenerator

FRAMES, SIZE = 8, 32
TINY = {"frames": FRAMES, "height": SIZE, "width": SIZE}


# -- tiny components (the spirit of diffusers' own pipeline tests' dummy components) ----------------

def _byte_symbols() -> list[str]:
    """The 256 printable stand-ins byte-level BPE uses for bytes (GPT-2 / CLIP)."""
    printable = [*range(ord("!"), ord("~") + 1), *range(ord("¡"), ord("¬") + 1), *range(ord("®"), ord("ÿ") + 1)]
    extra = [b for b in range(256) if b not in printable]
    return [chr(b) for b in printable] + [chr(256 + i) for i in range(len(extra))]


def tiny_tokenizer(max_length: int = 16) -> CLIPTokenizer:
    """A CLIP tokenizer whose vocabulary is the 256 byte symbols, alone and word-final, and a few merges."""
    symbols = _byte_symbols()
    merges = [("c", "a"), ("ca", "t</w>"), ("d", "o"), ("do", "g</w>")]
    tokens = ["<|startoftext|>", "<|endoftext|>", *symbols, *(s + "</w>" for s in symbols), "ca", "cat</w>", "do",
              "dog</w>"]
    return CLIPTokenizer(vocab={t: i for i, t in enumerate(tokens)}, merges=merges, model_max_length=max_length)


def tiny_text_encoder(hidden: int, layers: int = 2) -> CLIPTextModel:
    return CLIPTextModel(CLIPTextConfig(bos_token_id=0, eos_token_id=1, pad_token_id=1, vocab_size=520,
                                        hidden_size=hidden, intermediate_size=2 * hidden, num_attention_heads=2,
                                        num_hidden_layers=layers, max_position_embeddings=16))


def tiny_vae(blocks: tuple[int, ...], layers_per_block: int = 1) -> AutoencoderKL:
    return AutoencoderKL(block_out_channels=blocks, in_channels=3, out_channels=3, latent_channels=4,
                         down_block_types=["DownEncoderBlock2D"] * len(blocks),
                         up_block_types=["UpDecoderBlock2D"] * len(blocks), layers_per_block=layers_per_block,
                         norm_num_groups=2)


def save_common(folder: Path, hidden: int, vae_blocks: tuple[int, ...], scheduler: DDIMScheduler,
                vae_layers: int = 1) -> None:
    torch.manual_seed(0)
    tiny_tokenizer().save_pretrained(folder / "tokenizer")
    tiny_text_encoder(hidden).save_pretrained(folder / "text_encoder")
    tiny_vae(vae_blocks, vae_layers).save_pretrained(folder / "vae")
    scheduler.save_pretrained(folder / "scheduler")


def make_animatediff(root: Path, blocks: tuple[int, ...] = (8, 8), vae_blocks: tuple[int, ...] = (8, 8),
                     layers_per_block: int = 1, vae_layers: int = 1) -> tuple[Path, Path]:
    """A tiny SD-1.5-layout base folder and a tiny motion adapter folder."""
    base, adapter = root / "sd-base", root / "motion-adapter"
    # SD 1.5's own scheduler config (scaled-linear β); the plugin applies AnimateDiff's overrides
    save_common(base, 8, vae_blocks, DDIMScheduler(beta_start=0.00085, beta_end=0.012,
                                                   beta_schedule="scaled_linear", clip_sample=False,
                                                   set_alpha_to_one=False, steps_offset=1))
    torch.manual_seed(1)
    plain = len(blocks) - 1
    UNet2DConditionModel(block_out_channels=blocks, layers_per_block=layers_per_block, sample_size=8, in_channels=4,
                         out_channels=4, down_block_types=("CrossAttnDownBlock2D",) + ("DownBlock2D",) * plain,
                         up_block_types=("UpBlock2D",) * plain + ("CrossAttnUpBlock2D",),
                         cross_attention_dim=8, attention_head_dim=4, norm_num_groups=2).save_pretrained(base / "unet")
    torch.manual_seed(2)
    MotionAdapter(block_out_channels=blocks, motion_layers_per_block=layers_per_block, motion_norm_num_groups=2,
                  motion_num_attention_heads=2).save_pretrained(adapter)
    return base, adapter


def make_modelscope(root: Path) -> Path:
    folder = root / "modelscope"
    save_common(folder, 4, (8, 8), DDIMScheduler(beta_start=0.00085, beta_end=0.012, beta_schedule="scaled_linear",
                                               clip_sample=False, set_alpha_to_one=False))
    torch.manual_seed(3)
    UNet3DConditionModel(block_out_channels=(8, 8), layers_per_block=1, sample_size=32, in_channels=4, out_channels=4,
                         down_block_types=("CrossAttnDownBlock3D", "DownBlock3D"),
                         up_block_types=("UpBlock3D", "CrossAttnUpBlock3D"), cross_attention_dim=4,
                         attention_head_dim=4, norm_num_groups=2).save_pretrained(folder / "unet")
    return folder


@pytest.fixture(scope="module")
def animatediff_dirs(tmp_path_factory):
    return make_animatediff(tmp_path_factory.mktemp("animatediff"))


@pytest.fixture(scope="module")
def modelscope_dir(tmp_path_factory):
    return make_modelscope(tmp_path_factory.mktemp("modelscope"))


def load_animatediff(dirs, **options) -> AnimateDiffGenerator:
    base, adapter = dirs
    return AnimateDiffGenerator(model=str(base), motion_adapter=str(adapter), **{**TINY, **options})


def load_modelscope(folder, **options) -> ModelScopeGenerator:
    return ModelScopeGenerator(model=str(folder), **{**TINY, **options})


def unguided(generator, request) -> sah.Video:
    return sah.align({Modality.VIDEO: generator}, {Modality.VIDEO: request}).media[Modality.VIDEO]


REQUEST = dict(prompts=["a cat", "a dog"], seeds=[3, 4], negative_prompt="blurry", num_steps=4, cfg_scale=7.5)


# -- parity with diffusers' pipelines ----------------------------------------------------------------

@pytest.mark.parametrize("scheduler", ["ddim", "euler"])
def test_animatediff_matches_diffusers_pipeline(animatediff_dirs, scheduler):
    generator = load_animatediff(animatediff_dirs, scheduler=scheduler)
    assert generator.scheduler.config.beta_schedule == "linear"  # AnimateDiff's sampler settings applied
    request = GenerationRequest(**REQUEST)
    ours = unguided(generator, request)

    noise = seeded_noise(generator._latent_shape(), request.seeds)
    # sah's per-sample seeding draws what diffusers draws from a list of per-sample generators
    assert torch.equal(noise, randn_tensor(noise.shape, generator=[torch.Generator().manual_seed(s) for s in [3, 4]]))
    pipe = AnimateDiffPipeline(vae=generator.vae, text_encoder=generator.text_encoder, tokenizer=generator.tokenizer,
                               unet=generator.unet, motion_adapter=None,
                               scheduler=type(generator.scheduler).from_config(generator.scheduler.config))
    theirs = pipe(prompt=request.prompts, negative_prompt=[request.negative_prompt] * 2, num_frames=FRAMES,
                  height=SIZE, width=SIZE, num_inference_steps=request.num_steps, guidance_scale=request.cfg_scale,
                  latents=noise, output_type="pt").frames
    assert ours.frames.shape == theirs.shape == (2, FRAMES, 3, SIZE, SIZE)
    assert ours.frame_indices is None and ours.total_frames == FRAMES and ours.fps == 8.0
    torch.testing.assert_close(ours.frames, theirs, atol=1e-5, rtol=1e-4)
    assert ours.frames.std() > 0.01  # not a constant image both sides agree on trivially


def test_animatediff_loads_a_saved_pipeline_folder(animatediff_dirs, tmp_path):
    """A folder saved by AnimateDiffPipeline holds a UNetMotionModel and needs no motion adapter."""
    generator = load_animatediff(animatediff_dirs)
    pipe = AnimateDiffPipeline(vae=generator.vae, text_encoder=generator.text_encoder, tokenizer=generator.tokenizer,
                               unet=generator.unet, motion_adapter=None, scheduler=generator.scheduler)
    pipe.save_pretrained(tmp_path / "pipeline")
    reloaded = AnimateDiffGenerator(model=str(tmp_path / "pipeline"), motion_adapter="", **TINY)
    request = GenerationRequest(**{**REQUEST, "num_steps": 2})
    torch.testing.assert_close(unguided(reloaded, request).frames, unguided(generator, request).frames)


@pytest.mark.parametrize("scheduler", ["ddim", "dpm"])
def test_modelscope_matches_diffusers_pipeline(modelscope_dir, scheduler):
    generator = load_modelscope(modelscope_dir, scheduler=scheduler)
    request = GenerationRequest(**REQUEST)
    ours = unguided(generator, request)
    noise = seeded_noise(generator._latent_shape(), request.seeds)
    pipe = TextToVideoSDPipeline(vae=generator.vae, text_encoder=generator.text_encoder,
                                 tokenizer=generator.tokenizer, unet=generator.unet,
                                 scheduler=type(generator.scheduler).from_config(generator.scheduler.config))
    theirs = pipe(prompt=request.prompts, negative_prompt=[request.negative_prompt] * 2, num_frames=FRAMES,
                  height=SIZE, width=SIZE, num_inference_steps=request.num_steps, guidance_scale=request.cfg_scale,
                  latents=noise, output_type="pt").frames
    assert ours.frames.shape == theirs.shape == (2, FRAMES, 3, SIZE, SIZE)
    torch.testing.assert_close(ours.frames, theirs, atol=1e-5, rtol=1e-4)
    assert ours.frames.std() > 0.01


def test_samples_do_not_depend_on_their_batch(modelscope_dir):
    generator = load_modelscope(modelscope_dir)
    both = unguided(generator, GenerationRequest(**{**REQUEST, "num_steps": 2}))
    alone = unguided(generator, GenerationRequest(**{**REQUEST, "num_steps": 2, "prompts": ["a dog"], "seeds": [4]}))
    torch.testing.assert_close(both.frames[1:], alone.frames, atol=1e-5, rtol=1e-4)


# -- schedulers ------------------------------------------------------------------------------------------

@pytest.mark.parametrize("name", ["ddim", "ddpm", "euler", "euler-a"])
def test_x0_equals_the_schedulers_own_estimate(name):
    """predict_x0 at step i's own timestep is what scheduler.step reports as pred_original_sample."""
    config = DDIMScheduler(beta_start=0.00085, beta_end=0.012, beta_schedule="linear", clip_sample=False).config
    scheduler = make_scheduler(name, config)
    scheduler.set_timesteps(5)
    g = torch.Generator().manual_seed(0)
    z = torch.randn(1, 4, 2, 4, 4, generator=g) * scheduler.init_noise_sigma
    for i, t in enumerate(scheduler.timesteps):
        scheduler.scale_model_input(z, t)
        eps = torch.randn(z.shape, generator=g)
        ours = predict_x0(scheduler, z, eps, t, i)
        out = scheduler.step(eps, t, z, generator=g) if name in ("ddpm", "euler-a") else scheduler.step(eps, t, z)
        torch.testing.assert_close(ours, out.pred_original_sample, atol=1e-5, rtol=1e-5)
        z = out.prev_sample


def test_every_scheduler_name_samples(modelscope_dir):
    for name in SCHEDULERS:
        generator = load_modelscope(modelscope_dir, scheduler=name, frames=2, height=16, width=16)
        video = unguided(generator, GenerationRequest(["a cat"], [0], num_steps=3, cfg_scale=2.0))
        assert video.frames.shape == (1, 2, 3, 16, 16) and torch.isfinite(video.frames).all(), name


# -- frame-subset decode and gradients --------------------------------------------------------------------

@pytest.mark.parametrize("kind", ["animatediff", "modelscope"])
def test_frame_subset_decode_is_the_full_decode_at_those_frames(kind, animatediff_dirs, modelscope_dir):
    generator = load_animatediff(animatediff_dirs) if kind == "animatediff" else load_modelscope(modelscope_dir)
    latents = torch.randn(2, *generator._latent_shape(), generator=torch.Generator().manual_seed(5))
    with torch.no_grad():
        full = generator.decode(latents)  # no autograd: decoded one frame at a time (vae_slicing)
    picks = [5, 0, 5, 3]
    latents.requires_grad_(True)
    subset = generator.decode(latents, frames=picks)
    assert subset.frame_indices == tuple(picks) and subset.total_frames == FRAMES
    assert subset.frames.shape == (2, 4, 3, SIZE, SIZE)
    torch.testing.assert_close(subset.frames, full.frames[:, picks], atol=1e-5, rtol=1e-5)
    assert 0 <= float(full.frames.min()) and float(full.frames.max()) <= 1

    subset.frames.sum().backward()
    grad = latents.grad.abs().sum(dim=(0, 1, 3, 4))
    assert torch.isfinite(latents.grad).all()
    assert all(grad[f] > 0 for f in (0, 3, 5))
    assert all(grad[f] == 0 for f in range(FRAMES) if f not in (0, 3, 5))  # the others were never decoded
    with pytest.raises(ValueError, match="frames must lie in"):
        generator.decode(latents, frames=[FRAMES])


def test_guidance_gradient_reaches_latent_and_prompt(animatediff_dirs):
    """What the aligner differentiates: x̂0 → decode(frames) in the latent, and the denoiser in the
    prompt embeddings (guided prompt tuning)."""
    generator = load_animatediff(animatediff_dirs)
    trajectory = generator.prepare(GenerationRequest(["a cat"], [0], num_steps=4, cfg_scale=7.5))
    latents = trajectory.latents.clone().requires_grad_(True)
    trajectory.prompt_embeds = trajectory.prompt_embeds.detach().requires_grad_(True)
    with torch.enable_grad():
        noise = generator.predict_noise(trajectory, latents.detach(), 1)
        x0 = generator.predict_x0(trajectory, latents, noise.detach(), 1)
        video = generator.decode(x0, frames=[0, 7])
        (video.frames.mean() + noise.square().mean()).backward()
    for grad in (latents.grad, trajectory.prompt_embeds.grad):
        assert grad is not None and torch.isfinite(grad).all() and grad.abs().sum() > 0
    assert all(p.grad is None for p in generator.unet.parameters())  # the denoiser stays frozen


# -- the CLI, end to end -------------------------------------------------------------------------------------

def _mp4_streams(path: Path) -> dict[str, str]:
    with av.open(str(path)) as container:
        return {s.type: s.codec_context.name for s in container.streams}


def _dominant_hz(waveform: torch.Tensor, rate: int) -> float:
    spectrum = np.abs(np.fft.rfft(waveform.mean(dim=0).numpy()))
    return float(np.argmax(spectrum) * rate / waveform.shape[-1])


@pytest.mark.parametrize("kind", ["animatediff", "modelscope"])
def test_guided_a2v_through_the_cli(kind, animatediff_dirs, modelscope_dir, tmp_path):
    clip = write_wav(tmp_path / "clip.wav", tone(750, 1.5, 16000), 16000)
    out = tmp_path / "out"
    if kind == "animatediff":
        base, adapter = animatediff_dirs
        model = ["--video-model", base, "--set", f"video.motion_adapter={json.dumps(str(adapter))}",
                 "--prompt", "a cat", "--set", "guidance.prompt_tuning=true"]
    else:
        model = ["--video-model", modelscope_dir]
    args = ["run", "--gen-video", kind, *model, "--binder", "toy", "--audio", clip, "--steps", 5, "--out", out,
            "--set", f"video.frames={FRAMES}", "--set", f"video.height={SIZE}", "--set", f"video.width={SIZE}",
            "--set", "guidance.start=0.0", "--quiet"]
    result = CliRunner().invoke(cli, [str(a) for a in args], catch_exceptions=False)
    assert result.exit_code == 0, result.output
    assert sorted(p.name for p in out.iterdir()) == ["a2v-0.json", "a2v-0.mp4", "a2v-0.png"]
    assert _mp4_streams(out / "a2v-0.mp4") == {"video": "h264", "audio": "aac"}
    video = read_video(out / "a2v-0.mp4")
    assert video.num_frames == FRAMES and (video.width, video.height) == (SIZE, SIZE) and video.fps == 8.0
    # the input tone, cut to the clip's 1 s
    assert abs(video.audio.duration - 1.0) < 0.1
    assert abs(_dominant_hz(video.audio.waveform[0], video.audio.sample_rate) - 750) < 5
    sidecar = json.loads((out / "a2v-0.json").read_text())
    assert len(sidecar["trace"]) == 5  # every step guided
    assert "video~condition" in sidecar["trace"][0]["similarity"]
    if kind == "animatediff":
        assert sidecar["config"]["guidance"]["prompt_tuning"] is True
        assert "video~text" in sidecar["trace"][0]["similarity"]


def test_prompt_tuning_changes_the_result(animatediff_dirs):
    """With prompt tuning the aligner's prompt updates reach the later denoising steps."""
    generator = load_animatediff(animatediff_dirs, frames=4, height=16, width=16)
    binder = sah.registry.get_registry().binder("toy")()
    request = GenerationRequest(["a cat"], [0], num_steps=3, cfg_scale=7.5)
    target = {"text": binder.embed(sah.Text(["north"])).detach()}
    terms = [sah.Term(Modality.VIDEO, "text")]

    def final(prompt_tuning: bool) -> torch.Tensor:
        settings = sah.GuidanceSettings(start=0.0, prompt_tuning=prompt_tuning, prompt_lr=0.5, lr={"video": 0.0})
        return sah.align({Modality.VIDEO: generator}, {Modality.VIDEO: request}, binder, terms, target,
                         settings).latents[Modality.VIDEO]

    assert not torch.allclose(final(True), final(False))


# -- errors and registration -----------------------------------------------------------------------------------

def _run_error(*args) -> str:
    result = CliRunner().invoke(cli, [str(a) for a in args])
    assert result.exit_code == 2, result.output
    # loading progress bars may come before it, but no traceback: the error is the one last line
    assert "Traceback" not in result.output, result.output
    return result.output.strip().splitlines()[-1]


def test_missing_folders_give_one_line_errors(animatediff_dirs, tmp_path):
    clip = write_wav(tmp_path / "clip.wav", tone(750, 1.0, 16000), 16000)
    line = _run_error("run", "--gen-video", "modelscope", "--video-model", tmp_path / "nowhere", "--audio", clip,
                      "--out", tmp_path / "out")
    assert f"'{tmp_path / 'nowhere'}' (--video-model): no such path" in line
    base, _ = animatediff_dirs
    line = _run_error("run", "--gen-video", "animatediff", "--video-model", base, "--audio", clip,
                      "--set", f"video.motion_adapter={json.dumps(str(tmp_path / 'no-adapter'))}",
                      "--out", tmp_path / "out")
    assert f"'{tmp_path / 'no-adapter'}' (video.motion_adapter): no such path" in line
    assert not (tmp_path / "out").exists()


@pytest.mark.parametrize("setting, message", [
    ("video.height=30", "video.height must be a positive multiple of 8, got 30"),
    ("video.frames=0", "video.frames must be at least 1, got 0"),
    ('video.scheduler="heun"', "video.scheduler must be one of ddim, ddpm, pndm, dpm, unipc, euler, euler-a"),
])
def test_bad_options_fail_before_loading(setting, message, tmp_path):
    clip = write_wav(tmp_path / "clip.wav", tone(750, 1.0, 16000), 16000)
    # the model folder does not exist either: the option is reported first, so nothing was loaded
    line = _run_error("run", "--gen-video", "animatediff", "--video-model", tmp_path / "nowhere", "--audio", clip,
                      "--set", setting, "--out", tmp_path / "out")
    assert message in line


def test_motion_adapter_frame_limit(animatediff_dirs):
    with pytest.raises(sah.SahError, match="at most 32 frames"):
        load_animatediff(animatediff_dirs, frames=33)


def test_listed_as_video_generators():
    result = CliRunner().invoke(cli, ["plugins", "--json"])
    rows = {r["name"]: r for r in json.loads(result.output)["plugins"]}
    for name in ("animatediff", "modelscope"):
        assert rows[name]["kind"] == "generator" and rows[name]["modalities"] == ["video"]
        assert rows[name]["package"] == "sah"

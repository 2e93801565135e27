"""The AnimateDiff and ModelScope video generators on tiny, randomly initialised models of the real
diffusers architectures, saved to disk and loaded back through the plugins' own loading path."""

from __future__ import annotations

import json
import shutil
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
    DDPMScheduler,
    DPMSolverMultistepScheduler,
    EulerAncestralDiscreteScheduler,
    EulerDiscreteScheduler,
    MotionAdapter,
    PNDMScheduler,
    TextToVideoSDPipeline,
    UNet2DConditionModel,
    UNet3DConditionModel,
    UniPCMultistepScheduler,
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
#
# The reference pipelines are built as a diffusers user builds them, from the model folders, with
# nothing taken from the plugins: components loaded from their subfolders, the scheduler from the
# folder's own scheduler config plus the settings diffusers documents, the initial noise drawn by
# the pipeline from one generator per sample.

SCHEDULER_CLASSES = {"ddim": DDIMScheduler, "ddpm": DDPMScheduler, "pndm": PNDMScheduler,
                     "dpm": DPMSolverMultistepScheduler, "unipc": UniPCMultistepScheduler,
                     "euler": EulerDiscreteScheduler, "euler-a": EulerAncestralDiscreteScheduler}
# diffusers' AnimateDiff docs: DDIMScheduler.from_pretrained(model_id, subfolder="scheduler",
# clip_sample=False, timestep_spacing="linspace", beta_schedule="linear", steps_offset=1)
ANIMATEDIFF_SAMPLER = {"clip_sample": False, "timestep_spacing": "linspace", "beta_schedule": "linear",
                       "steps_offset": 1}
# PLMS as Stable Diffusion ships it (its scheduler_config.json): without the Runge-Kutta warm-up
SD_PNDM = {"skip_prk_steps": True}


def reference_scheduler(name: str, folder: Path, **documented):
    return SCHEDULER_CLASSES[name].from_pretrained(folder, subfolder="scheduler",
                                                   **(SD_PNDM if name == "pndm" else {}), **documented)


def reference_components(folder: Path) -> dict:
    return {"vae": AutoencoderKL.from_pretrained(folder / "vae"),
            "text_encoder": CLIPTextModel.from_pretrained(folder / "text_encoder"),
            "tokenizer": CLIPTokenizer.from_pretrained(folder / "tokenizer")}


def pipeline_frames(pipe, request: GenerationRequest) -> torch.Tensor:
    generators = [torch.Generator().manual_seed(s) for s in request.seeds]
    return pipe(prompt=request.prompts, negative_prompt=[request.negative_prompt] * len(request.prompts),
                num_frames=FRAMES, height=SIZE, width=SIZE, num_inference_steps=request.num_steps,
                guidance_scale=request.cfg_scale, generator=generators, output_type="pt").frames


def animatediff_reference(base: Path, adapter: Path, scheduler: str) -> AnimateDiffPipeline:
    """AnimateDiffPipeline from the SD folder and the motion adapter (the pipeline makes the
    UNetMotionModel itself), with the documented AnimateDiff sampler settings."""
    return AnimateDiffPipeline(**reference_components(base), unet=UNet2DConditionModel.from_pretrained(base / "unet"),
                               motion_adapter=MotionAdapter.from_pretrained(adapter),
                               scheduler=reference_scheduler(scheduler, base, **ANIMATEDIFF_SAMPLER))


def modelscope_reference(folder: Path, scheduler: str) -> TextToVideoSDPipeline:
    """TextToVideoSDPipeline from the folder, its scheduler swapped as diffusers' docs do
    (`XScheduler.from_config(pipe.scheduler.config)`, here from the folder's own config)."""
    return TextToVideoSDPipeline(**reference_components(folder),
                                 unet=UNet3DConditionModel.from_pretrained(folder / "unet"),
                                 scheduler=reference_scheduler(scheduler, folder))


def with_prediction_type(folder: Path, target: Path, prediction_type: str) -> Path:
    """A copy of a model folder whose scheduler config says `prediction_type`."""
    shutil.copytree(folder, target)
    config = json.loads((target / "scheduler" / "scheduler_config.json").read_text())
    (target / "scheduler" / "scheduler_config.json").write_text(json.dumps({**config,
                                                                           "prediction_type": prediction_type}))
    return target


@pytest.fixture(scope="module")
def animatediff_vpred_dirs(animatediff_dirs, tmp_path_factory):
    base, adapter = animatediff_dirs
    return with_prediction_type(base, tmp_path_factory.mktemp("vpred") / "sd-base", "v_prediction"), adapter


@pytest.fixture(scope="module")
def modelscope_vpred_dir(modelscope_dir, tmp_path_factory):
    return with_prediction_type(modelscope_dir, tmp_path_factory.mktemp("vpred") / "modelscope", "v_prediction")


def assert_same_frames(ours: sah.Video, theirs: torch.Tensor) -> None:
    assert ours.frames.shape == theirs.shape == (2, FRAMES, 3, SIZE, SIZE)
    # measured: at most 8.3e-7 apart over all the comparisons (float32 summation order)
    torch.testing.assert_close(ours.frames, theirs, atol=1e-5, rtol=1e-4)
    assert ours.frames.std() > 0.01  # not a constant image both sides agree on trivially
    assert (ours.frames[0] - ours.frames[1]).abs().max() > 0.01  # the two prompts and seeds differ


# every scheduler the plugins list; ddpm and euler-a draw step noise from each sample's generator
@pytest.mark.parametrize("scheduler", ["ddim", "euler", "pndm", "unipc", "dpm", "ddpm", "euler-a"])
def test_animatediff_matches_diffusers_pipeline(animatediff_dirs, scheduler):
    generator = load_animatediff(animatediff_dirs, scheduler=scheduler)
    request = GenerationRequest(**REQUEST)
    ours = unguided(generator, request)
    assert ours.frame_indices is None and ours.total_frames == FRAMES and ours.fps == 8.0
    noise = seeded_noise(generator._latent_shape(), request.seeds)
    # sah's per-sample seeding draws what diffusers draws from a list of per-sample generators
    assert torch.equal(noise, randn_tensor(noise.shape, generator=[torch.Generator().manual_seed(s) for s in [3, 4]]))
    assert_same_frames(ours, pipeline_frames(animatediff_reference(*animatediff_dirs, scheduler), request))


@pytest.mark.parametrize("scheduler", ["ddim", "euler", "unipc"])
def test_animatediff_v_prediction_matches_diffusers_pipeline(animatediff_vpred_dirs, scheduler):
    generator = load_animatediff(animatediff_vpred_dirs, scheduler=scheduler)
    assert generator.scheduler.config.prediction_type == "v_prediction"
    request = GenerationRequest(**REQUEST)
    assert_same_frames(unguided(generator, request),
                       pipeline_frames(animatediff_reference(*animatediff_vpred_dirs, scheduler), request))


def test_animatediff_loads_a_saved_pipeline_folder(animatediff_dirs, tmp_path):
    """A folder saved by AnimateDiffPipeline holds a UNetMotionModel and needs no motion adapter."""
    generator = load_animatediff(animatediff_dirs)
    pipe = AnimateDiffPipeline(vae=generator.vae, text_encoder=generator.text_encoder, tokenizer=generator.tokenizer,
                               unet=generator.unet, motion_adapter=None, scheduler=generator.scheduler)
    pipe.save_pretrained(tmp_path / "pipeline")
    reloaded = AnimateDiffGenerator(model=str(tmp_path / "pipeline"), motion_adapter="", **TINY)
    request = GenerationRequest(**{**REQUEST, "num_steps": 2})
    torch.testing.assert_close(unguided(reloaded, request).frames, unguided(generator, request).frames)


# TextToVideoSDPipeline folds the frames into the batch for scheduler.step, so a stochastic
# scheduler cannot draw per-sample noise there: the deterministic ones are compared.
@pytest.mark.parametrize("scheduler", ["ddim", "dpm", "pndm", "unipc", "euler"])
def test_modelscope_matches_diffusers_pipeline(modelscope_dir, scheduler):
    generator = load_modelscope(modelscope_dir, scheduler=scheduler)
    request = GenerationRequest(**REQUEST)
    assert_same_frames(unguided(generator, request),
                       pipeline_frames(modelscope_reference(modelscope_dir, scheduler), request))


@pytest.mark.parametrize("scheduler", ["ddim", "euler", "dpm"])
def test_modelscope_v_prediction_matches_diffusers_pipeline(modelscope_vpred_dir, scheduler):
    generator = load_modelscope(modelscope_vpred_dir, scheduler=scheduler)
    assert generator.scheduler.config.prediction_type == "v_prediction"
    request = GenerationRequest(**REQUEST)
    assert_same_frames(unguided(generator, request),
                       pipeline_frames(modelscope_reference(modelscope_vpred_dir, scheduler), request))


def test_samples_do_not_depend_on_their_batch(modelscope_dir):
    generator = load_modelscope(modelscope_dir)
    both = unguided(generator, GenerationRequest(**{**REQUEST, "num_steps": 2}))
    alone = unguided(generator, GenerationRequest(**{**REQUEST, "num_steps": 2, "prompts": ["a dog"], "seeds": [4]}))
    torch.testing.assert_close(both.frames[1:], alone.frames, atol=1e-5, rtol=1e-4)


# -- schedulers ------------------------------------------------------------------------------------------

@pytest.mark.parametrize("prediction_type", ["epsilon", "v_prediction"])
@pytest.mark.parametrize("name", ["ddim", "ddpm", "euler", "euler-a", "dpm", "unipc"])
def test_x0_equals_the_schedulers_own_estimate(name, prediction_type):
    """predict_x0 at step i's own timestep is diffusers' own x̂0 of that step: `pred_original_sample`
    of scheduler.step, or, for the multistep solvers, the data prediction their
    `convert_model_output` makes (measured: equal to 1e-7)."""
    config = DDIMScheduler(beta_start=0.00085, beta_end=0.012, beta_schedule="linear", clip_sample=False,
                           prediction_type=prediction_type).config
    scheduler = make_scheduler(name, config)
    assert type(scheduler) is SCHEDULER_CLASSES[name] and scheduler.config.prediction_type == prediction_type
    scheduler.set_timesteps(5)
    g = torch.Generator().manual_seed(0)
    z = torch.randn(1, 4, 2, 4, 4, generator=g) * scheduler.init_noise_sigma
    for i, t in enumerate(scheduler.timesteps):
        scheduler.scale_model_input(z, t)
        eps = torch.randn(z.shape, generator=g)
        ours = predict_x0(scheduler, z, eps, t, i)
        if name in ("dpm", "unipc"):
            scheduler._step_index = i  # the step convert_model_output reads its σ from
            theirs = scheduler.convert_model_output(eps, sample=z)
            out = scheduler.step(eps, t, z)
        else:
            out = scheduler.step(eps, t, z, generator=g) if name in ("ddpm", "euler-a") else scheduler.step(eps, t, z)
            theirs = out.pred_original_sample
        torch.testing.assert_close(ours, theirs, atol=1e-5, rtol=1e-5)
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

    weights = torch.randn(subset.frames.shape, generator=torch.Generator().manual_seed(6))
    (subset.frames * weights).sum().backward()
    # the gradient through the subset is the full decode's gradient of the same loss, the repeated frame 5
    # counted twice (measured: 1.1e-6 apart on gradients up to 2, float32)
    full_latents = latents.detach().clone().requires_grad_(True)
    (generator.decode(full_latents).frames[:, picks] * weights).sum().backward()
    torch.testing.assert_close(latents.grad, full_latents.grad, atol=1e-6, rtol=1e-5)
    grad = latents.grad.abs().sum(dim=(0, 1, 3, 4))
    assert all(grad[f] > 0 for f in (0, 3, 5))
    assert all(grad[f] == 0 for f in range(FRAMES) if f not in (0, 3, 5))  # the others were never decoded
    with pytest.raises(ValueError, match="frames must lie in"):
        generator.decode(latents, frames=[FRAMES])


def _directional_check(loss, x, direction, h=1e-5):
    """Autograd's derivative of `loss` at `x` along `direction` and the central finite difference
    (float64, h = 1e-5: measured to agree to 4e-9 relative or better here)."""
    x = x.detach().requires_grad_(True)
    (grad,) = torch.autograd.grad(loss(x), x)
    with torch.no_grad():
        numeric = (loss(x + h * direction) - loss(x - h * direction)) / (2 * h)
    return float((grad * direction).sum()), float(numeric)


@pytest.mark.parametrize("kind", ["animatediff", "modelscope"])
def test_guidance_gradients_are_finite_differences(kind, animatediff_dirs, modelscope_dir):
    """What the aligner differentiates, in float64: x̂0 → decode(frames) in the latent (the noise
    prediction held fixed), and the denoiser in the prompt embeddings (guided prompt tuning)."""
    load = load_animatediff if kind == "animatediff" else load_modelscope
    generator = load(animatediff_dirs if kind == "animatediff" else modelscope_dir, dtype=torch.float64)
    trajectory = generator.prepare(GenerationRequest(["a cat"], [0], num_steps=4, cfg_scale=7.5))
    latents = trajectory.latents
    with torch.no_grad():
        noise = generator.predict_noise(trajectory, latents, 1)
    g = torch.Generator().manual_seed(7)
    frame_weights = torch.randn(1, 2, 3, SIZE, SIZE, generator=g, dtype=torch.float64)

    def latent_loss(z):
        return (generator.decode(generator.predict_x0(trajectory, z, noise, 1), frames=[0, 7]).frames
                * frame_weights).sum()

    auto, numeric = _directional_check(latent_loss, latents, torch.randn(latents.shape, generator=g,
                                                                          dtype=torch.float64))
    assert abs(auto) > 1e-3 and numeric == pytest.approx(auto, rel=1e-6), (auto, numeric)

    prompt = trajectory.prompt_embeds.detach()
    noise_weights = torch.randn(noise.shape, generator=g, dtype=torch.float64)

    def prompt_loss(embeds):
        trajectory.prompt_embeds = embeds
        return (generator.predict_noise(trajectory, latents, 1) * noise_weights).sum()

    auto, numeric = _directional_check(prompt_loss, prompt, torch.randn(prompt.shape, generator=g,
                                                                         dtype=torch.float64))
    assert abs(auto) > 1e-3 and numeric == pytest.approx(auto, rel=1e-6), (auto, numeric)
    assert all(p.grad is None for p in generator.unet.parameters())  # the denoiser stays frozen


def test_the_denoiser_reads_the_trajectorys_prompt_embeddings_at_every_call(modelscope_dir):
    """Prompt tuning works by replacing `trajectory.prompt_embeds` between steps: a trajectory for
    "a cat" given the embeddings of "a dog" predicts what the "a dog" trajectory predicts."""
    generator = load_modelscope(modelscope_dir, frames=2, height=16, width=16)
    cat = generator.prepare(GenerationRequest(["a cat"], [0], num_steps=3, cfg_scale=7.5))
    dog = generator.prepare(GenerationRequest(["a dog"], [0], num_steps=3, cfg_scale=7.5))
    with torch.no_grad():
        before = generator.predict_noise(cat, cat.latents, 1)
        cat.prompt_embeds = dog.prompt_embeds
        swapped = generator.predict_noise(cat, cat.latents, 1)
        expected = generator.predict_noise(dog, dog.latents, 1)
    assert torch.equal(swapped, expected) and not torch.allclose(before, expected)


def test_prompt_tuning_raises_the_text_similarity_of_later_steps(animatediff_dirs):
    """The aligner's prompt updates reach the later denoising steps and move them toward the
    target: with the latent's own lr at 0, every step after the first update scores a higher
    video~text similarity than the run without tuning (measured on 4 seeds × 2 targets: by
    1.4e-3 .. 2.4e-3 each time, and a reversed update lowers it as much), and with prompt_lr 0 the
    tuning machinery alone leaves the result bit for bit the same."""
    generator = load_animatediff(animatediff_dirs, frames=4, height=16, width=16)
    binder = sah.registry.get_registry().binder("toy")()
    request = GenerationRequest(["a cat"], [0], num_steps=3, cfg_scale=7.5)
    target = {"text": binder.embed(sah.Text(["north"])).detach()}
    terms = [sah.Term(Modality.VIDEO, "text")]

    def run(prompt_tuning: bool, prompt_lr: float = 0.5):
        settings = sah.GuidanceSettings(start=0.0, prompt_tuning=prompt_tuning, prompt_lr=prompt_lr, lr={"video": 0.0})
        result = sah.align({Modality.VIDEO: generator}, {Modality.VIDEO: request}, binder, terms, target, settings)
        similarities = [r["similarity"]["video~text"][0] for r in result.trace]
        return result.latents[Modality.VIDEO], similarities + result.final_similarity["video~text"]

    plain, plain_sims = run(False)
    tuned, tuned_sims = run(True)
    idle, _ = run(True, prompt_lr=0.0)
    assert torch.equal(idle, plain)
    assert tuned_sims[0] == plain_sims[0]  # the first step is scored before any update
    assert all(t > p for t, p in zip(tuned_sims[1:], plain_sims[1:])), (tuned_sims, plain_sims)


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
    # as long as the 1.5 s condition (sah.longform: windows of video.frames frames): 12 frames at 8 fps
    assert video.num_frames == round(1.5 * 8) and (video.width, video.height) == (SIZE, SIZE) and video.fps == 8.0
    assert abs(video.audio.duration - 1.5) < 0.1  # the input tone, whole
    assert abs(_dominant_hz(video.audio.waveform[0], video.audio.sample_rate) - 750) < 5
    sidecar = json.loads((out / "a2v-0.json").read_text())
    assert len(sidecar["trace"]) == 5  # every step guided
    assert "video~condition" in sidecar["trace"][0]["similarity"]
    if kind == "animatediff":
        assert sidecar["config"]["guidance"]["prompt_tuning"] is True
        assert "video~text" in sidecar["trace"][0]["similarity"]


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
    ("video.frames=0", "config key 'video.frames' must be an integer >= 1, got 0"),
    ('video.scheduler="heun"', "config key 'video.scheduler' must be one of \"ddim\", \"ddpm\", \"pndm\", \"dpm\", "
                               "\"unipc\", \"euler\", \"euler-a\", got 'heun'"),
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

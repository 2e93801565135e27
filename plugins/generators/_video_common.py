"""What the diffusers-based video generators share: loading, prompt encoding, classifier-free
guidance, scheduler by name, x̂0, and a differentiable VAE decode of all frames or a subset.

AnimateDiff and ModelScope text-to-video differ only in their denoiser (`UNetMotionModel` vs
`UNet3DConditionModel`) and in how that denoiser takes the text embeddings; everything else here
follows diffusers' `AnimateDiffPipeline` / `TextToVideoSDPipeline` step for step, so that with
guidance off the frames equal theirs.
"""

from __future__ import annotations

import dataclasses
import functools
import inspect
from collections.abc import Callable, Sequence
from typing import TYPE_CHECKING, Any, ClassVar

from sah.component import Option
from sah.errors import SahError
from sah.generator import (
    GenerationRequest,
    Generator,
    Trajectory,
    predict_x0_from_scheduler,
    seeded_generators,
    seeded_noise,
)
from sah.hub import load_pretrained
from sah.lazy import lazy_import
from sah.media import Modality, Video

if TYPE_CHECKING:
    import torch
    from torch import Tensor, nn
else:
    torch = lazy_import("torch")
    nn = lazy_import("torch.nn")

# diffusers and transformers are imported on use (loading, building a scheduler): every `sah`
# command registers these plugins, and `sah plugins` or a run with another generator must not pay for them.

#: `[video] scheduler` names and the names of the diffusers classes they pick (class names, not
#: classes, so that checking a config needs no diffusers import; see `scheduler_class`).
SCHEDULERS: dict[str, str] = {
    "ddim": "DDIMScheduler",
    "ddpm": "DDPMScheduler",
    "pndm": "PNDMScheduler",
    "dpm": "DPMSolverMultistepScheduler",
    "unipc": "UniPCMultistepScheduler",
    "euler": "EulerDiscreteScheduler",
    "euler-a": "EulerAncestralDiscreteScheduler",
}

# PLMS without its Runge-Kutta warm-up, as Stable Diffusion ships it: the warm-up multiplies the
# denoiser calls and fails below 4 steps.
_SCHEDULER_SETTINGS: dict[str, dict[str, Any]] = {"pndm": {"skip_prk_steps": True}}

MODEL_FLAG = "--video-model"

#: Options both generators take (a subclass overrides the defaults that differ, `with_default`).
COMMON_OPTIONS: dict[str, Option] = {
    "frames": Option(16, help="frames when the run does not say (A2V: as many as the audio lasts)", min=1),
    "height": Option(512, help="pixels, a multiple of 8", min=8),
    "width": Option(512, help="pixels, a multiple of 8", min=8),
    "fps": Option(8.0, help="frames per second of the output", min=0.0),
    "scheduler": Option("ddim", help="the sampler", choices=tuple(SCHEDULERS)),
    "variant": Option("", help='the weights\' variant on the hub, e.g. "fp16" ("": the default files)'),
    "cpu_offload": Option(False, help="keep only the model in use on the accelerator"),
    "vae_slicing": Option(True, help="decode one frame at a time through the VAE (less memory)"),
}


def with_default(option: Option, default: Any) -> Option:
    """`option` with another default (a model whose native size differs)."""
    return dataclasses.replace(option, default=default)


def scheduler_class(name: str) -> type:
    """The diffusers scheduler class for a `[video] scheduler` name."""
    if name not in SCHEDULERS:
        raise SahError(f"unknown video scheduler {name!r}; choose one of {', '.join(SCHEDULERS)}")
    import diffusers  # imported on use: registering the plugins must not pay for diffusers

    return getattr(diffusers, SCHEDULERS[name])


def make_scheduler(name: str, config: dict[str, Any], **overrides: Any) -> Any:
    """The scheduler `name` built from a model's scheduler config (plus `overrides`)."""
    return scheduler_class(name).from_config(config, **{**_SCHEDULER_SETTINGS.get(name, {}), **overrides})


def predict_x0(scheduler: Any, latents: Tensor, noise_pred: Tensor, timestep: Tensor | int, index: int) -> Tensor:
    """x̂0 of `latents`, which sit at step `index` (timestep `timestep`) of `scheduler`: the core's
    helper, which knows the σ-space samplers (euler, euler-a) as well as the variance-preserving ones."""
    return predict_x0_from_scheduler(scheduler, latents, noise_pred, timestep, index=index)


def encode_prompts(tokenizer: Any, text_encoder: nn.Module, prompts: Sequence[str], device: torch.device) -> Tensor:
    """CLIP last hidden states `[len(prompts), L, D]`, as diffusers' `encode_prompt` (no clip skip)
    computes them: padded to the tokenizer's maximum length, truncated beyond it."""
    unique = list(dict.fromkeys(prompts))
    tokens = tokenizer(unique, padding="max_length", max_length=tokenizer.model_max_length, truncation=True,
                       return_tensors="pt")
    mask = tokens.attention_mask.to(device) if getattr(text_encoder.config, "use_attention_mask", False) else None
    with torch.no_grad():
        embeds = text_encoder(tokens.input_ids.to(device), attention_mask=mask)[0]
    embeds = embeds.to(dtype=text_encoder.dtype, device=device)
    return embeds[[unique.index(p) for p in prompts]]


class ModelOffload:
    """At most one of the named models on the accelerator at a time, the rest in CPU memory, as
    diffusers' model CPU offload does; with `enabled` false every model stays on `device`."""

    def __init__(self, device: torch.device, models: dict[str, nn.Module], enabled: bool) -> None:
        self.device = device
        self.models = models
        self.enabled = enabled and device.type != "cpu"
        self.active: str | None = None
        for model in models.values():
            model.to("cpu" if self.enabled else device)

    def use(self, name: str) -> nn.Module:
        model = self.models[name]
        if self.enabled and self.active != name:
            if self.active is not None:
                self.models[self.active].to("cpu")
            model.to(self.device)
            self.active = name
        return model


class DiffusersVideoGenerator(Generator):
    """A diffusers text-to-video model: CLIP text encoder and tokenizer, a video denoiser, a 2D
    `AutoencoderKL` applied frame by frame, and a scheduler. Subclasses load the denoiser."""

    modality: ClassVar[Modality] = Modality.VIDEO
    supports_prompt_tuning: ClassVar[bool] = True
    supports_frame_subset: ClassVar[bool] = True
    #: latents [B, C, frames, h, w]: a long run's windows are slices of one latent along the frames
    time_axis: ClassVar[int | None] = 2
    options: ClassVar[dict[str, Any]] = COMMON_OPTIONS
    core_defaults: ClassVar[dict[str, Any]] = {"cfg_scale": 7.5}  # AnimateDiffPipeline's default guidance scale
    #: Sampling settings the model family needs on top of the checkpoint's scheduler config.
    scheduler_overrides: ClassVar[dict[str, Any]] = {}

    def __init__(self, model: str | None = None, device: str | torch.device = "cpu",
                 dtype: torch.dtype | None = None, **options: Any) -> None:
        # imported here, not at module level: registering the plugins must not pay for diffusers/transformers
        from diffusers import AutoencoderKL, DDIMScheduler
        from transformers import CLIPTextModel, CLIPTokenizer

        super().__init__(model, device, dtype, **options)
        dtype = self.dtype  # None: float32
        extra = {"variant": self.config["variant"]} if self.config["variant"] else {}
        load = functools.partial(load_pretrained, flag=MODEL_FLAG, what="video model")
        self.tokenizer = load(CLIPTokenizer.from_pretrained, self.model, subfolder="tokenizer")
        self.text_encoder = load(CLIPTextModel.from_pretrained, self.model, subfolder="text_encoder",
                                 dtype=dtype, **extra)
        self.vae = load(AutoencoderKL.from_pretrained, self.model, subfolder="vae", torch_dtype=dtype, **extra)
        self.unet = self._load_unet(load, **extra)
        scheduler_config = load(DDIMScheduler.load_config, self.model, subfolder="scheduler")
        self.scheduler = make_scheduler(self.config["scheduler"], scheduler_config, **self.scheduler_overrides)
        for module in (self.text_encoder, self.vae, self.unet):
            module.eval().requires_grad_(False)
        self.vae_scale_factor = 2 ** (len(self.vae.config.block_out_channels) - 1)
        for key in ("height", "width"):
            if self.config[key] % self.vae_scale_factor:
                raise SahError(f"{self.name}: video.{key} must be a multiple of {self.vae_scale_factor} "
                               f"(the VAE's downsampling factor), got {self.config[key]}")
        self._check_model()
        self.offload = ModelOffload(self.device, {"text_encoder": self.text_encoder, "unet": self.unet,
                                                  "vae": self.vae}, self.config["cpu_offload"])
        self._step_takes_generator = "generator" in inspect.signature(self.scheduler.step).parameters

    @classmethod
    def check_options(cls, options: dict[str, Any]) -> None:
        c = options
        problems = []
        for key in ("height", "width"):
            if not (isinstance(c[key], int) and c[key] > 0 and c[key] % 8 == 0):
                problems.append(f"video.{key} must be a positive multiple of 8, got {c[key]}")
        if not c["fps"] > 0:
            problems.append(f"video.fps must be positive, got {c['fps']}")
        if problems:
            raise SahError(f"{cls.name}: {problems[0]}")

    def _load_unet(self, load: Callable[..., Any], **extra: Any) -> nn.Module:
        """The video denoiser, in `self.dtype`."""
        raise NotImplementedError

    def _check_model(self) -> None:
        """Checks that need the loaded model (e.g. how many frames it can attend over)."""

    def _unet_hidden_states(self, embeds: Tensor, num_frames: int) -> Tensor:
        """The text conditioning `[B, L, D]` in the layout the denoiser takes."""
        return embeds

    # -- sampling ---------------------------------------------------------------------------

    def _latent_shape(self, duration: float | None = None) -> tuple[int, int, int, int]:
        """The latent for `duration` seconds (rounded to whole frames at `video.fps`), or for
        `video.frames` when the run gives no length."""
        s = self.vae_scale_factor
        frames = self.config["frames"] if duration is None else max(1, round(duration * self.config["fps"]))
        return (self.unet.config.in_channels, frames, self.config["height"] // s, self.config["width"] // s)

    def prepare(self, request: GenerationRequest) -> Trajectory:
        scheduler = type(self.scheduler).from_config(self.scheduler.config)
        scheduler.set_timesteps(request.num_steps, device=self.device)
        text_encoder = self.offload.use("text_encoder")
        cond = encode_prompts(self.tokenizer, text_encoder, request.prompts, self.device)
        uncond = encode_prompts(self.tokenizer, text_encoder, [request.negative_prompt], self.device)
        shape = self._latent_shape(request.duration)
        latents = seeded_noise(shape, request.seeds, device=self.device, dtype=self.dtype) * scheduler.init_noise_sigma
        state: dict[str, Any] = {"scheduler": scheduler, "uncond_embeds": uncond,
                                 "cfg_scale": float(self.cfg_scale(request))}
        if self._step_takes_generator:
            # A stochastic scheduler draws its step noise from each sample's own generator, carried
            # on past the initial noise, as diffusers does with a list of generators.
            state["step_generators"] = seeded_generators(request.seeds, after=shape)
        return Trajectory(latents, scheduler.timesteps.clone(), cond, state, duration=shape[1] / self.config["fps"])

    def predict_noise(self, trajectory: Trajectory, latents: Tensor, index: int) -> Tensor:
        state = trajectory.state
        scheduler = state["scheduler"]
        t = trajectory.timesteps[index]
        cond = trajectory.prompt_embeds
        scale = state["cfg_scale"]
        # Like the diffusers pipelines, guidance is on only above 1; the unconditional half comes first.
        guided = scale > 1.0
        if guided:
            uncond = state["uncond_embeds"].to(cond.dtype).expand(cond.shape[0], -1, -1)
            model_input = torch.cat([latents] * 2)
            embeds = torch.cat([uncond, cond])
        else:
            model_input, embeds = latents, cond
        model_input = scheduler.scale_model_input(model_input, t)
        unet = self.offload.use("unet")
        noise = unet(model_input, t, encoder_hidden_states=self._unet_hidden_states(embeds, latents.shape[2])).sample
        if guided:
            noise_uncond, noise_text = noise.chunk(2)
            noise = noise_uncond + scale * (noise_text - noise_uncond)
        return noise

    def step(self, trajectory: Trajectory, latents: Tensor, noise_pred: Tensor, index: int) -> Tensor:
        state = trajectory.state
        kwargs = {"generator": state["step_generators"]} if "step_generators" in state else {}
        # TextToVideoSDPipeline folds frames into the batch for this call; every scheduler here acts
        # elementwise, so stepping [B, C, F, h, w] as it is gives the same numbers and lets a
        # stochastic scheduler draw per-sample noise.
        return state["scheduler"].step(noise_pred, trajectory.timesteps[index], latents, **kwargs).prev_sample

    def predict_x0(self, trajectory: Trajectory, latents: Tensor, noise_pred: Tensor, index: int) -> Tensor:
        return predict_x0(trajectory.state["scheduler"], latents, noise_pred, trajectory.timesteps[index], index)

    # -- decoding ---------------------------------------------------------------------------

    def decode(self, latents: Tensor, frames: Sequence[int] | None = None,
               trajectory: Trajectory | None = None) -> Video:
        """Latents `[B, C, F, h, w]` to frames `[B, F, 3, H, W]` in [0, 1], differentiably. With
        `frames`, only those frames go through the VAE (it works frame by frame, so they equal the
        same frames of a full decode); each distinct frame is decoded once."""
        total = latents.shape[2]
        if frames is None:
            return Video(self._decode_frames(latents), fps=self.fps(), total_frames=total)
        picks = [int(f) for f in frames]
        bad = [f for f in picks if not 0 <= f < total]
        if bad or not picks:
            raise ValueError(f"{self.name}: frames must lie in 0..{total - 1}, got {list(frames)}")
        unique = sorted(set(picks))
        pixels = self._decode_frames(latents[:, :, unique])
        if unique != picks:
            pixels = pixels[:, [unique.index(f) for f in picks]]
        return Video(pixels, fps=self.fps(), frame_indices=tuple(picks), total_frames=total)

    def _decode_frames(self, latents: Tensor) -> Tensor:
        vae = self.offload.use("vae")
        b, c, f, h, w = latents.shape
        z = (latents / vae.config.scaling_factor).permute(0, 2, 1, 3, 4).reshape(b * f, c, h, w).to(vae.dtype)
        # Slicing only pays without autograd: a differentiable decode keeps every activation anyway.
        chunk = 1 if self.config["vae_slicing"] and not torch.is_grad_enabled() else b * f
        images = torch.cat([vae.decode(part).sample for part in z.split(chunk)])
        # float16/bfloat16 out as float32; a float64 model (the tests' gradient checks) stays float64
        video = images.reshape(b, f, *images.shape[1:]).to(torch.promote_types(images.dtype, torch.float32))
        return (video / 2 + 0.5).clamp(0, 1)

    def num_frames(self) -> int:
        return self.config["frames"]

    @property
    def max_duration(self) -> float:  # type: ignore[override]
        """One window is `video.frames` frames: what the motion module was set up to attend over."""
        return self.config["frames"] / self.config["fps"]

    def latent_frame_seconds(self) -> float:
        return 1.0 / self.config["fps"]

    def fps(self) -> float:
        return float(self.config["fps"])

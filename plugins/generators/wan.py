"""Wan 2.1 text-to-video (Wan-AI): a flow-matching `WanTransformer3DModel` over the latents of a causal
video VAE, conditioned on UMT5 text embeddings.

`[video] model` is a hub id or a local folder with `tokenizer/`, `text_encoder/`, `transformer/`,
`vae/` and `scheduler/`, the layout diffusers' `WanPipeline` saves (`Wan-AI/Wan2.1-T2V-1.3B-Diffusers`,
`Wan-AI/Wan2.1-T2V-14B-Diffusers`). Everything here follows `WanPipeline.__call__` step for step
(prompt cleaning, UMT5 states trimmed to each prompt's tokens and zero-padded to
`max_sequence_length`, the conditional pass then the unconditional one, latents in float32, the
VAE's `latents_mean`/`latents_std`), so that with guidance off the frames equal the pipeline's.
Wan 2.2 checkpoints (a second, low-noise transformer and `boundary_ratio`, or `expand_timesteps`)
are refused.
"""

from __future__ import annotations

import functools
import json
import math
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import TYPE_CHECKING, Any, ClassVar

from sah import schedules
from sah.component import Licence, Option
from sah.errors import SahError
from sah.generator import GenerationRequest, Generator, Trajectory, predict_x0_from_scheduler, seeded_noise
from sah.hookspecs import hookimpl
from sah.hub import is_local_path, load_pretrained
from sah.lazy import lazy_import
from sah.media import Modality, Video
from sah.plugins.generators._video_common import MODEL_FLAG, ModelOffload

if TYPE_CHECKING:
    import torch
    from torch import Tensor, nn
else:
    torch = lazy_import("torch")
    nn = lazy_import("torch.nn")

# diffusers and transformers are imported on use (loading, building a scheduler): every `sah` command
# registers this plugin, and `sah plugins` or a run with another generator must not pay for them.

#: `[video] scheduler` names: "auto" is the class the checkpoint ships (UniPC with flow sigmas for both
#: Wan 2.1 T2V repositories, which is what `WanPipeline.from_pretrained` uses); the others are built
#: from its config as flow-matching samplers.
SCHEDULERS: dict[str, str | None] = {
    "auto": None,
    "unipc": "UniPCMultistepScheduler",
    "euler": "FlowMatchEulerDiscreteScheduler",
    "dpm": "DPMSolverMultistepScheduler",
}

#: The VAE compresses time 4× after its first frame (latent frames = (frames − 1)/4 + 1) and space 8×;
#: the transformer patchifies 2×2, so pixel sizes are multiples of 16 (`WanPipeline.check_inputs`).
TEMPORAL, SIZE_MULTIPLE = 4, 16


def frames_for(seconds: float, fps: float, temporal: int = TEMPORAL) -> int:
    """The frame count of a run lasting `seconds`: the smallest `temporal`·k + 1 that is at least
    ⌈seconds · fps⌉ frames (so the clip lasts at least `seconds`; 5 s at 16 fps is 81 frames)."""
    needed = max(1, math.ceil(seconds * fps - 1e-6))
    return temporal * math.ceil((needed - 1) / temporal) + 1


def latent_frame_of(frame: int, temporal: int = TEMPORAL) -> int:
    """The latent frame a decoded frame comes from: latent 0 gives frame 0, latent j ≥ 1 gives
    frames 4j − 3 … 4j."""
    return 0 if frame == 0 else (frame - 1) // temporal + 1


@functools.lru_cache(maxsize=1)
def _transformer_without_fp32_modules() -> type:
    """`WanTransformer3DModel` with no `_keep_in_fp32_modules`: diffusers refuses to load a model that
    has them unless `accelerate` is installed; this class loads through diffusers' plain path and
    `_load_transformer` then keeps those modules in float32 itself."""
    from diffusers import WanTransformer3DModel

    return type("WanTransformer3DModel", (WanTransformer3DModel,), {"_keep_in_fp32_modules": None})


class WanGenerator(Generator):
    name: ClassVar[str] = "wan"
    modality: ClassVar[Modality] = Modality.VIDEO
    description: ClassVar[str] = "Wan 2.1 text-to-video (1.3B or 14B), 81 frames of 832×480 at 16 fps (diffusers)"
    default_model: ClassVar[str | None] = "Wan-AI/Wan2.1-T2V-1.3B-Diffusers"
    # Code and weights: Apache 2.0, commercial use allowed. The "License Agreement" section of the Wan 2.1
    # README (github.com/Wan-Video/Wan2.1, README.md at commit 18368df) reads "The models in this
    # repository are licensed under the Apache 2.0 License" and claims no rights over generated content
    # (use must not break the law or harm people: the licence's own terms plus those stated there). The
    # UMT5 text encoder the repositories ship is google/umt5-xxl's, whose card says apache-2.0.
    licence: ClassVar[Licence | None] = Licence(
        code="Apache-2.0", weights="Apache-2.0", commercial=True,
        url="https://huggingface.co/Wan-AI/Wan2.1-T2V-1.3B-Diffusers")
    supports_prompt_tuning: ClassVar[bool] = True
    supports_frame_subset: ClassVar[bool] = True
    core_defaults: ClassVar[dict[str, Any]] = {"cfg_scale": 5.0}  # WanPipeline's default guidance_scale
    options: ClassVar[dict[str, Any]] = {
        "frames": Option(81, help="frames when the run does not say (4k + 1: 1, 5, …, 81)", min=1),
        "height": Option(480, help="pixels, a multiple of 16", min=16),
        "width": Option(832, help="pixels, a multiple of 16", min=16),
        "fps": Option(16.0, help="frames per second of the output", min=0.0),
        "scheduler": Option("auto", help='the sampler ("auto": the checkpoint\'s own)', choices=tuple(SCHEDULERS)),
        # 3.0 in both repositories; the Wan authors suggest 5.0 at 720p
        "flow_shift": Option(0.0, help="the flow-matching shift (0: the checkpoint's own)", min=0.0),
        "max_sequence_length": Option(512, help="T5 tokens of the prompt (WanPipeline's default)", min=1),
        "vae_float32": Option(True, help="the VAE in float32 even when run.dtype is half precision, as diffusers' "
                                         "Wan example loads it"),
        "cpu_offload": Option(False, help="keep only the model in use on the accelerator"),
    }

    def __init__(self, model: str | None = None, device: str | torch.device = "cpu",
                 dtype: torch.dtype | None = None, **options: Any) -> None:
        # imported here, not at module level: registering the plugins must not pay for diffusers/transformers
        from diffusers import AutoencoderKLWan, UniPCMultistepScheduler
        from transformers import AutoTokenizer, UMT5EncoderModel

        super().__init__(model, device, dtype, **options)
        dtype = self.dtype  # None: float32
        load = functools.partial(load_pretrained, flag=MODEL_FLAG, what="video model")
        self._refuse_wan22(load)
        self.tokenizer = load(AutoTokenizer.from_pretrained, self.model, subfolder="tokenizer")
        self.text_encoder = load(UMT5EncoderModel.from_pretrained, self.model, subfolder="text_encoder", dtype=dtype)
        self.transformer = self._load_transformer(load)
        vae_dtype = torch.promote_types(dtype, torch.float32) if self.config["vae_float32"] else dtype
        self.vae = load(AutoencoderKLWan.from_pretrained, self.model, subfolder="vae", torch_dtype=vae_dtype)
        scheduler_config = load(UniPCMultistepScheduler.load_config, self.model, subfolder="scheduler")
        self.scheduler = self.make_scheduler(self.config["scheduler"], scheduler_config, self.config["flow_shift"])
        for module in (self.text_encoder, self.transformer, self.vae):
            module.eval().requires_grad_(False)
        self._check_model()
        # the pipeline keeps its latents in float32 whatever the transformer's dtype
        self.latent_dtype = torch.promote_types(dtype, torch.float32)
        self.offload = ModelOffload(self.device, {"text_encoder": self.text_encoder, "transformer": self.transformer,
                                                  "vae": self.vae}, self.config["cpu_offload"])
        self._frames = self.config["frames"]

    @classmethod
    def check_options(cls, options: dict[str, Any]) -> None:
        c = options
        problems = []
        frames = c["frames"]
        if not (isinstance(frames, int) and frames >= 1 and (frames - 1) % TEMPORAL == 0):
            problems.append(f"video.frames must be 4k + 1 (1, 5, …, 81): the VAE turns each latent frame after the "
                            f"first into {TEMPORAL} frames, got {frames}")
        for key in ("height", "width"):
            if not (isinstance(c[key], int) and c[key] > 0 and c[key] % SIZE_MULTIPLE == 0):
                problems.append(f"video.{key} must be a positive multiple of {SIZE_MULTIPLE}, got {c[key]}")
        if not c["fps"] > 0:
            problems.append(f"video.fps must be positive, got {c['fps']}")
        if problems:
            raise SahError(f"{cls.name}: {problems[0]}")

    # -- loading ------------------------------------------------------------------------------

    def _refuse_wan22(self, load: Callable[..., Any]) -> None:
        """Wan 2.2's two-expert pipelines (`transformer_2` with `boundary_ratio`) and its TI2V model
        (`expand_timesteps`) sample differently; they are refused rather than run wrongly."""
        from diffusers import DiffusionPipeline

        if is_local_path(self.model):
            index = Path(self.model).expanduser() / "model_index.json"
            # a folder assembled by hand may lack model_index.json: then only its subfolders are read
            config = json.loads(index.read_text()) if index.is_file() else {}
            has_second = (Path(self.model).expanduser() / "transformer_2").is_dir()
        else:
            config = load(DiffusionPipeline.load_config, self.model)
            has_second = False
        second = config.get("transformer_2")
        if has_second or (second and any(second)) or config.get("boundary_ratio") is not None \
                or config.get("expand_timesteps"):
            raise SahError(f"wan: {self.model!r} is a Wan 2.2 checkpoint (transformer_2 / boundary_ratio / "
                           "expand_timesteps), which this generator does not run; use a Wan 2.1 T2V model")

    def _load_transformer(self, load: Callable[..., Any]) -> nn.Module:
        """The transformer in `self.dtype`, the modules diffusers keeps in float32 (`rope`,
        `time_embedder`, norms, `scale_shift_table`) in float32 when that dtype is half precision.
        With `accelerate` installed this is diffusers' own loading; without it, diffusers refuses
        models with float32 modules, so they are loaded in float32 and cast here as diffusers would."""
        from diffusers import WanTransformer3DModel
        from diffusers.utils import is_accelerate_available

        if is_accelerate_available():
            return load(WanTransformer3DModel.from_pretrained, self.model, subfolder="transformer",
                        torch_dtype=self.dtype)
        model = load(_transformer_without_fp32_modules().from_pretrained, self.model, subfolder="transformer",
                     torch_dtype=torch.float32, low_cpu_mem_usage=False)
        keep = WanTransformer3DModel._keep_in_fp32_modules or []
        half = self.dtype in (torch.float16, torch.bfloat16)
        for name, tensor in [*model.named_parameters(), *model.named_buffers()]:
            if tensor.is_floating_point():
                fp32 = half and any(part in keep for part in name.split("."))
                tensor.data = tensor.data.to(torch.float32 if fp32 else self.dtype)
        return model

    @staticmethod
    def make_scheduler(name: str, config: dict[str, Any], flow_shift: float = 0.0) -> Any:
        """The sampler `name` from a checkpoint's scheduler config, with `flow_shift` (0: the config's)."""
        import diffusers  # imported on use: registering the plugins must not pay for diffusers

        if name not in SCHEDULERS:
            raise SahError(f"unknown wan scheduler {name!r}; choose one of {', '.join(SCHEDULERS)}")
        class_name = SCHEDULERS[name] or config.get("_class_name", "")
        cls = getattr(diffusers, class_name, None)
        if cls is None:
            raise SahError(f"wan: the checkpoint's scheduler {class_name!r} is not a diffusers scheduler")
        shift = flow_shift or config.get("flow_shift") or config.get("shift") or 1.0
        if class_name.startswith("FlowMatch"):
            scheduler = cls.from_config(config, shift=shift)
        elif name == "auto" and not flow_shift:
            scheduler = cls.from_config(config)
        else:
            scheduler = cls.from_config(config, use_flow_sigmas=True, prediction_type="flow_prediction",
                                        flow_shift=shift)
        if schedules.family(scheduler) != schedules.FLOW:
            raise SahError(f"wan: scheduler {class_name} is not a flow-matching sampler (Wan predicts a flow "
                           "velocity); use video.scheduler = unipc, euler or dpm")
        return scheduler

    def _check_model(self) -> None:
        config, vae = self.transformer.config, self.vae.config
        if config.get("image_dim") is not None or config.in_channels != vae.z_dim:
            raise SahError(f"wan: {self.model!r} is an image-to-video checkpoint ({config.in_channels} input "
                           f"channels, {vae.z_dim} latent channels); this generator runs text-to-video")
        self.temporal = int(vae.get("scale_factor_temporal") or TEMPORAL)
        self.spatial = int(vae.get("scale_factor_spatial") or 8)
        multiple = self.spatial * int(config.patch_size[1])
        for key in ("height", "width"):
            if self.config[key] % multiple:
                raise SahError(f"wan: video.{key} must be a multiple of {multiple} (VAE × patch size), "
                               f"got {self.config[key]}")
        if (self.config["frames"] - 1) % self.temporal:
            raise SahError(f"wan: video.frames must be {self.temporal}k + 1 for this VAE, got {self.config['frames']}")

    # -- sampling -------------------------------------------------------------------------------

    def run_frames(self, duration: float | None) -> int:
        """Frames of a run lasting `duration` seconds (None: the `frames` option); see `frames_for`."""
        if duration is None:
            return self.config["frames"]
        return frames_for(duration, float(self.config["fps"]), self.temporal)

    def latent_shape(self, frames: int) -> tuple[int, int, int, int]:
        return (self.transformer.config.in_channels, (frames - 1) // self.temporal + 1,
                self.config["height"] // self.spatial, self.config["width"] // self.spatial)

    def encode_prompts(self, prompts: Sequence[str]) -> Tensor:
        """UMT5 last hidden states `[len(prompts), L, D]` as `WanPipeline._get_t5_prompt_embeds` makes
        them: prompts cleaned (ftfy if installed, HTML unescaped, whitespace collapsed), padded or cut
        to L = `max_sequence_length` tokens, and each row's states past its own tokens set to zero."""
        from diffusers.pipelines.wan.pipeline_wan import prompt_clean

        length = self.config["max_sequence_length"]
        unique = list(dict.fromkeys(prompts))
        tokens = self.tokenizer([prompt_clean(p) for p in unique], padding="max_length", max_length=length,
                                truncation=True, add_special_tokens=True, return_attention_mask=True,
                                return_tensors="pt")
        counts = tokens.attention_mask.gt(0).sum(dim=1)
        encoder = self.offload.use("text_encoder")
        device = next(encoder.parameters()).device
        with torch.no_grad():
            states = encoder(tokens.input_ids.to(device), tokens.attention_mask.to(device)).last_hidden_state
        states = states.to(dtype=encoder.dtype, device=self.device)
        embeds = torch.zeros_like(states)
        for row, count in enumerate(counts.tolist()):
            embeds[row, :count] = states[row, :count]
        return embeds[[unique.index(p) for p in prompts]]

    def prepare(self, request: GenerationRequest) -> Trajectory:
        frames = self.run_frames(request.duration)
        self._frames = frames  # num_frames() tells the aligner (and the binder) this run's length
        scheduler = type(self.scheduler).from_config(self.scheduler.config)
        scheduler.set_timesteps(request.num_steps, device=self.device)
        scheduler.set_begin_index(0)
        dtype = self.transformer.dtype
        cond = self.encode_prompts(request.prompts).to(dtype)
        scale = float(self.cfg_scale(request))
        state: dict[str, Any] = {"scheduler": scheduler, "cfg_scale": scale, "frames": frames}
        if scale > 1.0:  # the pipeline encodes the negative prompt only when guidance is on
            state["uncond_embeds"] = self.encode_prompts([request.negative_prompt]).to(dtype)
        latents = seeded_noise(self.latent_shape(frames), request.seeds, device=self.device, dtype=torch.float32)
        return Trajectory(latents.to(self.latent_dtype), scheduler.timesteps.clone(), cond, state,
                          duration=request.duration)

    def predict_noise(self, trajectory: Trajectory, latents: Tensor, index: int) -> Tensor:
        state = trajectory.state
        transformer = self.offload.use("transformer")
        cond = trajectory.prompt_embeds
        model_input = latents.to(transformer.dtype)
        timestep = trajectory.timesteps[index].expand(latents.shape[0])
        velocity = transformer(hidden_states=model_input, timestep=timestep, encoder_hidden_states=cond,
                               return_dict=False)[0]
        # as WanPipeline: the conditional pass, then (guidance above 1 only) the unconditional one
        if "uncond_embeds" in state:
            uncond = state["uncond_embeds"].to(cond.dtype).expand(cond.shape[0], -1, -1)
            velocity_uncond = transformer(hidden_states=model_input, timestep=timestep,
                                          encoder_hidden_states=uncond, return_dict=False)[0]
            velocity = velocity_uncond + state["cfg_scale"] * (velocity - velocity_uncond)
        return velocity

    def step(self, trajectory: Trajectory, latents: Tensor, noise_pred: Tensor, index: int) -> Tensor:
        scheduler = trajectory.state["scheduler"]
        return scheduler.step(noise_pred, trajectory.timesteps[index], latents, return_dict=False)[0]

    def predict_x0(self, trajectory: Trajectory, latents: Tensor, noise_pred: Tensor, index: int) -> Tensor:
        # flow: x̂0 = x − σ_i·v, σ_i of this step (sah.schedules knows every family; Wan's are all flow)
        return predict_x0_from_scheduler(trajectory.state["scheduler"], latents, noise_pred,
                                         trajectory.timesteps[index], index=index)

    # -- decoding -------------------------------------------------------------------------------

    def decode(self, latents: Tensor, frames: Sequence[int] | None = None,
               trajectory: Trajectory | None = None) -> Video:
        """Latents `[B, C, f, h, w]` to frames `[B, 4(f − 1) + 1, 3, H, W]` in [0, 1], differentiably.

        The causal VAE decodes latent frames in order, each with a cache of the ones before it, so
        decoding a prefix of the latent frames gives exactly the first frames of a full decode.
        With `frames`, only the prefix up to the latent frame of the last asked frame is decoded
        (the later latent frames get no gradient) and the asked frames are returned, in the order
        asked, with `frame_indices` set."""
        total = (latents.shape[2] - 1) * self.temporal + 1
        if frames is None:
            return Video(self._decode_latents(latents), fps=self.fps(), total_frames=total)
        picks = [int(f) for f in frames]
        bad = [f for f in picks if not 0 <= f < total]
        if bad or not picks:
            raise ValueError(f"{self.name}: frames must lie in 0..{total - 1}, got {list(frames)}")
        prefix = latent_frame_of(max(picks), self.temporal) + 1
        pixels = self._decode_latents(latents[:, :, :prefix])
        return Video(pixels[:, picks], fps=self.fps(), frame_indices=tuple(picks), total_frames=total)

    def _decode_latents(self, latents: Tensor) -> Tensor:
        vae = self.offload.use("vae")
        channels = vae.config.z_dim
        device = next(vae.parameters()).device
        # WanPipeline's de-normalisation, operation for operation: z / (1/std) + mean
        mean = torch.tensor(vae.config.latents_mean).view(1, channels, 1, 1, 1).to(device, vae.dtype)
        inv_std = 1.0 / torch.tensor(vae.config.latents_std).view(1, channels, 1, 1, 1).to(device, vae.dtype)
        z = latents.to(device, vae.dtype) / inv_std + mean
        video = vae.decode(z, return_dict=False)[0]  # [B, 3, F, H, W] in [-1, 1]
        # frames in float32 (float64 for a float64 VAE), whatever precision the VAE ran in
        video = video.permute(0, 2, 1, 3, 4).to(self.device, torch.promote_types(video.dtype, torch.float32))
        return (video * 0.5 + 0.5).clamp(0, 1)

    def num_frames(self) -> int:
        """This run's frame count (the last `prepare`'s; before any, the `frames` option)."""
        return self._frames

    def fps(self) -> float:
        return float(self.config["fps"])


@hookimpl
def register_generators(register: Any) -> None:
    register(WanGenerator)

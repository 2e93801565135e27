"""AudioLDM (Liu et al. 2023) text-to-audio as a sah generator, built on diffusers' components.

The model is the one diffusers' `AudioLDMPipeline` runs — a UNet conditioned on a CLAP text
embedding through its class embedding, a mel-spectrogram VAE and a HiFi-GAN vocoder — loaded from
a hub id (`cvssp/audioldm-s-full-v2`, `cvssp/audioldm-m-full`, `cvssp/audioldm-l-full`) or a
local folder in the same layout. With sah's guidance off it reproduces the pipeline's waveform
for the same seeds, steps and classifier-free guidance scale (tests/test_audioldm.py pins this).
"""

from __future__ import annotations

import inspect
import math
from collections.abc import Sequence
from typing import TYPE_CHECKING, Any, ClassVar

from sah import schedules
from sah.component import Licence, Option
from sah.errors import SahError
from sah.generator import (
    GenerationRequest,
    Generator,
    Trajectory,
    place_pieces,
    predict_x0_from_scheduler,
    seeded_generators,
    seeded_noise,
    span_frames,
)
from sah.hookspecs import hookimpl
from sah.hub import diffusers_load_kwargs, load_pretrained
from sah.lazy import lazy_import
from sah.media import Audio, Modality

if TYPE_CHECKING:
    import torch
    import torch.nn.functional as F
    import torch.utils.checkpoint as torch_checkpoint
    from torch import Tensor
else:
    torch = lazy_import("torch")
    F = lazy_import("torch.nn.functional")
    torch_checkpoint = lazy_import("torch.utils.checkpoint")

# diffusers and transformers are imported on use (loading, scheduler lookup): every `sah` command
# registers this plugin, and `sah plugins` or a run with another generator must not pay for them.

#: Short names for the samplers this plugin offers: the variance-preserving ones (x_t = √ᾱ·x0 +
#: √(1-ᾱ)·ε, unscaled model input), each compared with AudioLDMPipeline in tests/test_audioldm.py.
#: (σ-space samplers are guided by the core too, see `sah.schedules`, but are not offered here
#: without such a comparison.)
SCHEDULERS: dict[str, str] = {
    "ddim": "DDIMScheduler",
    "ddpm": "DDPMScheduler",
    "pndm": "PNDMScheduler",
    "dpm": "DPMSolverMultistepScheduler",
    "dpm-single": "DPMSolverSinglestepScheduler",
    "unipc": "UniPCMultistepScheduler",
    "deis": "DEISMultistepScheduler",
}

#: Latent frames decoded on each side of a chunk so its seams see their neighbours (0.32 s for the
#: released checkpoints, whose latent frame is 40 ms).
_CHUNK_CONTEXT_FRAMES = 8


def mel_latent_shape(generator: Any, duration: float) -> tuple[int, int, int]:
    """The duration → latent mapping of diffusers' AudioLDM pipelines (AudioLDM and AudioLDM 2):
    ⌊duration / mel frame⌋ mel frames, rounded up to a whole latent frame, for a generator with
    `hop`, `sample_rate`, `vae_scale_factor`, `mel_bins` and `unet`."""
    seconds_per_frame = generator.hop / generator.sample_rate
    shortest = seconds_per_frame * generator.vae_scale_factor
    if duration < shortest:
        raise SahError(f"{generator.name}: the audio must last at least {shortest:g} s for this model, "
                       f"got {duration:g}")
    mel_frames = int(duration / seconds_per_frame)
    mel_frames = math.ceil(mel_frames / generator.vae_scale_factor) * generator.vae_scale_factor
    return (int(generator.unet.config.in_channels), mel_frames // generator.vae_scale_factor,
            generator.mel_bins // generator.vae_scale_factor)


class AudioLDMGenerator(Generator):
    """AudioLDM sampling driven step by step by sah's aligner."""

    name: ClassVar[str] = "audioldm"
    #: the cvssp/audioldm-* model cards state no licence for the weights: treated as not commercial
    licence: ClassVar[Licence | None] = Licence("Apache-2.0", "not stated (cvssp/audioldm-* model cards)", False,
                                                "https://huggingface.co/cvssp/audioldm")
    modality: ClassVar[Modality] = Modality.AUDIO
    description: ClassVar[str] = "AudioLDM text-to-audio (diffusers components), 16 kHz mono"
    default_model: ClassVar[str | None] = "cvssp/audioldm-s-full-v2"
    core_defaults: ClassVar[dict[str, Any]] = {"cfg_scale": 2.5}  # AudioLDMPipeline's default guidance scale
    options: ClassVar[dict[str, Any]] = {
        "duration": Option(5.0, help="seconds of audio when the run does not say (V2A: the video's length)",
                           min=0.0),
        # S·hop + 32 samples for the released vocoder, as the authors' V2A code embeds them
        "guide_whole_waveform": Option(False, help="during guidance the binder sees the vocoder's whole output, "
                                                   "not the run's length (the Seeing-and-Hearing authors' code)"),
        "scheduler": Option("ddim", help="the sampler (a short name or its diffusers class name)",
                            choices=(*SCHEDULERS, *SCHEDULERS.values())),
        "cpu_offload": Option(False, help="keep only the model in use on the accelerator"),
        "decode_chunk": Option(0.0, help="seconds decoded at a time by VAE + vocoder (0: all at once)", min=0.0),
        "decode_spans": Option(True, help="during guidance decode only the latent frames under the binder's audio "
                                          "clips, with 8 frames of context (the VAE's attention sees only those)"),
    }
    #: the CLAP embedding is a tensor the UNet's class embedding is differentiable in
    supports_prompt_tuning: ClassVar[bool] = True
    #: latents [B, C, frames, mel bins]: a long run's windows are slices of one latent in time
    time_axis: ClassVar[int | None] = 2
    #: longer outputs are windowed: 10.24 s is 256 latent frames of the released checkpoints, twice
    #: their own default length (UNet sample_size 128 = 5.12 s); the authors' V2A runs 10 s in one pass
    max_duration: ClassVar[float | None] = 10.24

    @classmethod
    def check_options(cls, options: dict[str, Any]) -> None:
        # Everything a user can get wrong is checked before any weights are read.
        if not options["duration"] > 0:
            raise SahError(f"audioldm: audio.duration must be positive seconds, got {options['duration']}")

    def __init__(self, model: str | None = None, device: str | torch.device = "cpu",
                 dtype: torch.dtype | None = None, **options: Any) -> None:
        # imported here, not at module level: registering the plugin must not pay for diffusers/transformers
        from diffusers import AutoencoderKL, UNet2DConditionModel
        from transformers import AutoTokenizer, ClapTextModelWithProjection, SpeechT5HifiGan

        super().__init__(model, device, dtype, **options)
        dtype = self.dtype  # None: float32
        self.duration = float(self.config["duration"])
        self.guide_whole_decode = bool(self.config["guide_whole_waveform"])
        self.supports_audio_spans = bool(self.config["decode_spans"])
        self.scheduler_cls = schedules.scheduler_class(str(self.config["scheduler"]), SCHEDULERS, "audioldm")
        self.offload = bool(self.config["cpu_offload"]) and self.device.type != "cpu"
        home = torch.device("cpu") if self.offload else self.device

        def load(cls: Any, subfolder: str, **kwargs: Any) -> Any:
            return load_pretrained(cls.from_pretrained, self.model, flag="--audio-model", what="audio model",
                                   subfolder=subfolder, **kwargs)

        self.scheduler_config = load(self.scheduler_cls, "scheduler").config
        self.tokenizer = load(AutoTokenizer, "tokenizer")
        self.text_encoder = load(ClapTextModelWithProjection, "text_encoder", dtype=dtype)
        self.vocoder = load(SpeechT5HifiGan, "vocoder", dtype=dtype)
        self.unet = load(UNet2DConditionModel, "unet", torch_dtype=dtype, **diffusers_load_kwargs())
        self.vae = load(AutoencoderKL, "vae", torch_dtype=dtype, **diffusers_load_kwargs())
        self._modules = {"text_encoder": self.text_encoder, "unet": self.unet, "vae": self.vae,
                         "vocoder": self.vocoder}
        for module in self._modules.values():
            module.to(home).eval().requires_grad_(False)

        # The duration → latent size mapping of AudioLDMPipeline.__call__.
        self.vae_scale_factor = 2 ** (len(self.vae.config.block_out_channels) - 1)
        self.sample_rate = int(self.vocoder.config.sampling_rate)
        self.hop = int(math.prod(self.vocoder.config.upsample_rates))  # waveform samples per mel frame
        self.mel_bins = int(self.vocoder.config.model_in_dim)
        if self.mel_bins % self.vae_scale_factor:
            raise SahError(f"audioldm: the vocoder's {self.mel_bins} mel bins are not divisible by the VAE scale "
                           f"factor {self.vae_scale_factor}; the model folder is inconsistent")
        self.latent_shape = self.latent_shape_for(self.duration)
        chunk = float(self.config["decode_chunk"])
        frames_per_second = self.sample_rate / (self.hop * self.vae_scale_factor)
        self.chunk_frames = max(1, round(chunk * frames_per_second)) if chunk > 0 else 0
        self.chunk_context = _CHUNK_CONTEXT_FRAMES

    def latent_shape_for(self, duration: float) -> tuple[int, int, int]:
        """The latent `(channels, frames, bins)` for `duration` seconds: AudioLDMPipeline's mapping,
        mel frames rounded up to a whole latent frame (the waveform is cut back afterwards)."""
        return mel_latent_shape(self, duration)

    def latent_frame_seconds(self) -> float:
        return self.hop * self.vae_scale_factor / self.sample_rate

    # -- placement -------------------------------------------------------------------------------

    def _use(self, *names: str) -> None:
        """With `cpu_offload`, move the named models to the device and every other one to the CPU."""
        if not self.offload:
            return
        for name, module in self._modules.items():
            target = self.device if name in names else torch.device("cpu")
            if next(module.parameters()).device != target:
                module.to(target)

    # -- the Generator interface ------------------------------------------------------------------

    def encode_prompts(self, prompts: Sequence[str]) -> Tensor:
        """L2-normalised CLAP text embeddings `[B, D]`, as AudioLDMPipeline._encode_prompt makes them."""
        self._use("text_encoder")
        tokens = self.tokenizer(list(prompts), padding="max_length", max_length=self.tokenizer.model_max_length,
                                truncation=True, return_tensors="pt")
        device = next(self.text_encoder.parameters()).device
        with torch.no_grad():
            out = self.text_encoder(tokens.input_ids.to(device), attention_mask=tokens.attention_mask.to(device))
        # The pipeline pads the negative prompt to the embedding width instead of the tokenizer's
        # length; with the attention mask both give the same embedding, so both use the latter here.
        return F.normalize(out.text_embeds, dim=-1).to(device=self.device, dtype=self.dtype)

    def prepare(self, request: GenerationRequest) -> Trajectory:
        cond = self.encode_prompts(request.prompts)
        use_cfg = self.cfg_scale(request) > 1.0  # the pipeline's rule: scale 1 or below means one branch
        uncond = self.encode_prompts([request.negative_prompt] * request.batch_size) if use_cfg else None
        scheduler = self.scheduler_cls.from_config(self.scheduler_config)
        try:
            scheduler.set_timesteps(request.num_steps, device=self.device)
        except ValueError as exc:  # e.g. PNDM's Runge-Kutta warm-up needs at least 4 steps
            raise SahError(f"audioldm: scheduler {self.config['scheduler']!r} cannot run {request.num_steps} "
                           f"steps: {exc}") from exc
        # Latents stay float32 between steps whatever the model dtype; only the UNet input is cast.
        duration = self.duration if request.duration is None else float(request.duration)
        shape = self.latent_shape_for(duration)
        noise = seeded_noise(shape, request.seeds, device=self.device)
        latents = noise * scheduler.init_noise_sigma
        step_kwargs: dict[str, Any] = {}
        if "generator" in inspect.signature(scheduler.step).parameters:
            # Stochastic samplers (DDPM) draw step noise from each sample's own seed, continuing past
            # its initial noise as the pipeline's per-sample generators do.
            generators = seeded_generators(request.seeds, after=shape)
            step_kwargs["generator"] = generators
        state = {"scheduler": scheduler, "uncond_embeds": uncond, "cfg_scale": float(self.cfg_scale(request)),
                 "step_kwargs": step_kwargs}
        return Trajectory(latents, scheduler.timesteps.clone(), cond, state, duration=duration)

    def predict_noise(self, trajectory: Trajectory, latents: Tensor, index: int) -> Tensor:
        self._use("unet")
        scheduler = trajectory.state["scheduler"]
        t = trajectory.timesteps[index]
        cond = trajectory.prompt_embeds
        uncond = trajectory.state["uncond_embeds"]
        if uncond is not None:
            # one batched UNet call over [uncond, cond], in the pipeline's order
            model_in = torch.cat([latents, latents])
            labels = torch.cat([uncond.to(cond.dtype), cond])
        else:
            model_in, labels = latents, cond
        model_in = scheduler.scale_model_input(model_in, t).to(self.dtype)
        eps = self.unet(model_in, t, encoder_hidden_states=None, class_labels=labels.to(self.dtype)).sample
        if uncond is not None:
            eps_uncond, eps_cond = eps.chunk(2)
            scale = trajectory.state["cfg_scale"]
            eps = eps_uncond + scale * (eps_cond - eps_uncond)
        return eps.float()

    def step(self, trajectory: Trajectory, latents: Tensor, noise_pred: Tensor, index: int) -> Tensor:
        scheduler = trajectory.state["scheduler"]
        t = trajectory.timesteps[index]
        return scheduler.step(noise_pred.float(), t, latents.float(), **trajectory.state["step_kwargs"]).prev_sample

    def predict_x0(self, trajectory: Trajectory, latents: Tensor, noise_pred: Tensor, index: int) -> Tensor:
        # x̂0 of the latent at its own timestep t, with ᾱ_t. The authors' released code fed the next
        # latent (already stepped to t-1) into this formula with ᾱ_t, which mixes two noise levels.
        return predict_x0_from_scheduler(trajectory.state["scheduler"], latents, noise_pred,
                                         trajectory.timesteps[index], index=index)

    def decode(self, latents: Tensor, frames: Sequence[int] | None = None,
               trajectory: Trajectory | None = None,
               spans: Sequence[tuple[float, float]] | None = None) -> Audio:
        """Latents → VAE → mel spectrogram → HiFi-GAN → waveform `[B, 1, S]`, differentiable: the
        vocoder's whole output, which the aligner cuts to the run's duration. With `spans` (seconds)
        only the latent frames under them are decoded, with `chunk_context` frames on each side;
        the rest of the waveform is silent."""
        self._use("vae", "vocoder")
        return decode_mel_latents(self, latents, spans, self.chunk_frames, self.chunk_context)


def decode_mel_latents(generator: Any, latents: Tensor, spans: Sequence[tuple[float, float]] | None = None,
                       chunk_frames: int = 0, context: int = _CHUNK_CONTEXT_FRAMES) -> Audio:
    """The waveform of mel-VAE latents `[B, C, frames, bins]` through `generator`'s VAE and vocoder
    (AudioLDM and AudioLDM 2: `vae`, `vocoder`, `dtype`, `sample_rate`, `hop`, `vae_scale_factor`):
    all at once, or the latent frames under `spans` (seconds) and/or `chunk_frames` at a time, each
    with `context` frames on both sides, placed where the whole decode puts them (silence between
    spans)."""
    wide = torch.promote_types(latents.dtype, torch.float32)
    z = (1 / generator.vae.config.scaling_factor * latents.to(wide)).to(generator.dtype)  # as the pipeline scales
    length = z.shape[2]
    per_frame = generator.hop * generator.vae_scale_factor  # waveform samples per latent frame
    ranges = [(0, length)] if spans is None else span_frames(spans, per_frame / generator.sample_rate, length)
    if ranges == [(0, length)] and not 0 < chunk_frames < length:
        wave = _mel_latents_to_waveform(generator, z)
    else:
        step = chunk_frames or length
        # a chunk of a chunked decode is checkpointed (the memory saving it is for); a span is not
        pieces = [(start * per_frame, _decode_frames(generator, z, start, min(stop, start + step), context,
                                                     bool(chunk_frames)))
                  for first, stop in ranges for start in range(first, stop, step)]
        wave = place_pieces(pieces, vocoder_samples(generator.vocoder.config, length * generator.vae_scale_factor))
    wave = wave.to(torch.promote_types(wave.dtype, torch.float32))  # float32, or float64 for a float64 model
    return Audio(wave.unsqueeze(1), generator.sample_rate)


def _mel_latents_to_waveform(generator: Any, z: Tensor) -> Tensor:
    mel = generator.vae.decode(z).sample  # [B, 1, frames, mel bins]
    return generator.vocoder(mel.squeeze(1))


def _decode_frames(generator: Any, z: Tensor, start: int, stop: int, context: int, checkpoint: bool) -> Tensor:
    """Waveform of latent frames [start, stop), decoded with `context` frames on both sides. With
    `checkpoint`, under autograd, its activations are recomputed in the backward pass instead of kept."""
    lo, hi = max(0, start - context), min(z.shape[2], stop + context)
    part = z[:, :, lo:hi]
    if checkpoint and torch.is_grad_enabled() and part.requires_grad:
        wave = torch_checkpoint.checkpoint(_mel_latents_to_waveform, generator, part, use_reentrant=False)
    else:
        wave = _mel_latents_to_waveform(generator, part)
    per_frame = generator.hop * generator.vae_scale_factor
    begin = (start - lo) * per_frame
    # the last frames keep what the vocoder gives past them (32 samples for the released one)
    return wave[:, begin : None if stop == z.shape[2] else begin + (stop - start) * per_frame]


def vocoder_samples(config: Any, mel_frames: int) -> int:
    """The length of SpeechT5HifiGan's waveform for `mel_frames` frames: each upsampling layer, a
    transposed convolution of kernel k, stride u and padding ⌊(k − u)/2⌋, maps n to (n − 1)·u − 2·pad + k
    (160·n + 32 for the released vocoder's rates 5, 4, 2, 2, 2 and kernels 16, 16, 8, 4, 4)."""
    n = int(mel_frames)
    for rate, kernel in zip(config.upsample_rates, config.upsample_kernel_sizes):
        n = (n - 1) * rate - 2 * ((kernel - rate) // 2) + kernel
    return n


@hookimpl
def register_generators(register: Any) -> None:
    register(AudioLDMGenerator)

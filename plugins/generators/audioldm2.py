"""AudioLDM 2 (Liu et al. 2023) text-to-audio as a sah generator, built on diffusers' components.

The model is the one diffusers' `AudioLDM2Pipeline` runs: the prompt goes through CLAP's text
branch and Flan-T5's encoder; `AudioLDM2ProjectionModel` projects both into GPT-2's space, and
GPT-2 generates 8 (the checkpoint's `max_new_tokens`) hidden states from them. The
`AudioLDM2UNet2DConditionModel` cross-attends to those GPT-2 states and to the T5 sequence (with
its padding mask); a mel-spectrogram VAE and a HiFi-GAN vocoder make the waveform. Loaded from a
hub id (`cvssp/audioldm2`, `cvssp/audioldm2-music`, `cvssp/audioldm2-large`) or a local folder in
the same layout. With sah's guidance off it reproduces the pipeline's waveform for the same seeds,
steps and classifier-free guidance scale, one waveform per prompt (the pipeline reranks only
when it makes several per prompt); tests/test_audioldm2.py pins this.
"""

from __future__ import annotations

import dataclasses
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
    predict_x0_from_scheduler,
    seeded_generators,
    seeded_noise,
)
from sah.hookspecs import hookimpl
from sah.hub import diffusers_load_kwargs, load_pretrained
from sah.lazy import lazy_import
from sah.media import Audio, Modality
from sah.plugins.generators.audioldm import SCHEDULERS as AUDIOLDM_SCHEDULERS
from sah.plugins.generators.audioldm import AudioLDMGenerator, decode_mel_latents, mel_latent_shape

if TYPE_CHECKING:
    import torch
    from torch import Tensor
else:
    torch = lazy_import("torch")

# diffusers and transformers are imported on use (loading, scheduler lookup): every `sah` command
# registers this plugin, and `sah plugins` or a run with another generator must not pay for them.

#: Short names for the samplers sah can guide here: variance-preserving ones (x_t = √ᾱ·x0 + √(1-ᾱ)·ε)
#: and σ-space ones (x = x0 + σ·ε, model input scaled by the scheduler), both of which
#: `predict_x0_from_scheduler` knows. Their settings come from the model's `scheduler/` folder.
SCHEDULERS: dict[str, str] = {
    **AUDIOLDM_SCHEDULERS,  # the variance-preserving ones AudioLDM offers
    "euler": "EulerDiscreteScheduler",
    "euler-a": "EulerAncestralDiscreteScheduler",
    "heun": "HeunDiscreteScheduler",
    "lms": "LMSDiscreteScheduler",
    "kdpm2": "KDPM2DiscreteScheduler",
    "kdpm2-a": "KDPM2AncestralDiscreteScheduler",
}

#: GPT-2 states generated when the checkpoint's language-model config does not say (the released
#: checkpoints say 8, as does the AudioLDM 2 paper).
_DEFAULT_NEW_TOKENS = 8

#: The keys of `trajectory.prompt_embeds`: what the UNet cross-attends to.
GENERATED, T5, T5_MASK = "generated", "t5", "t5_mask"


class AudioLDM2Generator(Generator):
    """AudioLDM 2 sampling driven step by step by sah's aligner."""

    name: ClassVar[str] = "audioldm2"
    modality: ClassVar[Modality] = Modality.AUDIO
    description: ClassVar[str] = "AudioLDM 2 text-to-audio (CLAP + Flan-T5 → GPT-2; diffusers components), 16 kHz mono"
    default_model: ClassVar[str | None] = "cvssp/audioldm2"
    core_defaults: ClassVar[dict[str, Any]] = {"cfg_scale": 3.5}  # AudioLDM2Pipeline's default guidance scale
    # AudioLDM's options, with AudioLDM2Pipeline's 10 s and this plugin's longer scheduler list
    options: ClassVar[dict[str, Any]] = {
        "duration": dataclasses.replace(AudioLDMGenerator.options["duration"], default=10.0),
        "guide_whole_waveform": Option(False, help="during guidance the binder sees the vocoder's whole output "
                                                   "(the latent rounded up to whole frames), not the run's length"),
        "scheduler": dataclasses.replace(AudioLDMGenerator.options["scheduler"],
                                         choices=(*SCHEDULERS, *SCHEDULERS.values())),
        "cpu_offload": AudioLDMGenerator.options["cpu_offload"],
        "decode_spans": AudioLDMGenerator.options["decode_spans"],
    }
    #: the GPT-2 states and the T5 sequence are tensors the UNet is differentiable in
    supports_prompt_tuning: ClassVar[bool] = True
    # The model cards (README.md front matter) of cvssp/audioldm2, cvssp/audioldm2-music and
    # cvssp/audioldm2-large state `license: cc-by-nc-sa-4.0`: non-commercial. (audioldm2's and
    # -large's said cc-by-nc-nd-4.0 until 16 April 2024: commits c8e7e18 and 4b0b875 on the hub.)
    # See https://huggingface.co/cvssp/audioldm2/blob/main/README.md. This code and diffusers' are Apache-2.0.
    licence: ClassVar[Licence | None] = Licence(code="Apache-2.0", weights="CC-BY-NC-SA-4.0", commercial=False,
                                                url="https://huggingface.co/cvssp/audioldm2")

    @classmethod
    def check_options(cls, options: dict[str, Any]) -> None:
        # Everything a user can get wrong is checked before any weights are read.
        if not options["duration"] > 0:
            raise SahError(f"audioldm2: audio.duration must be positive seconds, got {options['duration']}")

    @classmethod
    def weights(cls, model: str | None, options: dict[str, Any]) -> list[tuple[str, str | None]]:
        # All eleven components (tokenizers, CLAP, T5, projection, GPT-2, UNet, VAE, vocoder,
        # scheduler; the unused CLAP feature extractor) live in the one repository or folder.
        name = model or cls.default_model
        return [(name, None)] if name else []

    def __init__(self, model: str | None = None, device: str | torch.device = "cpu",
                 dtype: torch.dtype | None = None, **options: Any) -> None:
        # imported here, not at module level: registering the plugin must not pay for diffusers/transformers
        from diffusers import AudioLDM2ProjectionModel, AudioLDM2UNet2DConditionModel, AutoencoderKL
        from transformers import AutoConfig, AutoTokenizer, ClapModel, GPT2Model, SpeechT5HifiGan, T5EncoderModel

        super().__init__(model, device, dtype, **options)
        dtype = self.dtype  # None: float32
        self.duration = float(self.config["duration"])
        self.guide_whole_decode = bool(self.config["guide_whole_waveform"])
        self.supports_audio_spans = bool(self.config["decode_spans"])
        self.scheduler_cls = schedules.scheduler_class(str(self.config["scheduler"]), SCHEDULERS, "audioldm2")
        self.offload = bool(self.config["cpu_offload"]) and self.device.type != "cpu"
        home = torch.device("cpu") if self.offload else self.device

        def load(loader: Any, subfolder: str, **kwargs: Any) -> Any:
            return load_pretrained(loader, self.model, flag="--audio-model", what="audio model",
                                   subfolder=subfolder, **kwargs)

        # The TTS checkpoints (e.g. anhnct/audioldm2_gigaspeech) put a VITS encoder here and need a
        # transcription; their config says so before any weight is read.
        second = load(AutoConfig.from_pretrained, "text_encoder_2")
        if second.model_type != "t5":
            raise SahError(f"audioldm2: {self.model!r} has a {second.model_type!r} second text encoder (a "
                           "text-to-speech checkpoint); sah supports the text-to-audio ones, whose is Flan-T5")
        diffusers_kwargs = {"torch_dtype": dtype, **diffusers_load_kwargs()}
        self.scheduler_config = load(self.scheduler_cls.from_pretrained, "scheduler").config
        self.tokenizer = load(AutoTokenizer.from_pretrained, "tokenizer")
        self.tokenizer_2 = load(AutoTokenizer.from_pretrained, "tokenizer_2")
        self.text_encoder = load(ClapModel.from_pretrained, "text_encoder", dtype=dtype)
        self.text_encoder_2 = load(T5EncoderModel.from_pretrained, "text_encoder_2", dtype=dtype)
        self.projection_model = load(AudioLDM2ProjectionModel.from_pretrained, "projection_model",
                                     **diffusers_kwargs)
        # The released checkpoints save a GPT2Model; a GPT2LMHeadModel folder loads into one too
        # (its head is unused: only the hidden states are).
        self.language_model = load(GPT2Model.from_pretrained, "language_model", dtype=dtype)
        self.unet = load(AudioLDM2UNet2DConditionModel.from_pretrained, "unet", **diffusers_kwargs)
        self.vae = load(AutoencoderKL.from_pretrained, "vae", **diffusers_kwargs)
        self.vocoder = load(SpeechT5HifiGan.from_pretrained, "vocoder", dtype=dtype)
        self._modules = {"text_encoder": self.text_encoder, "text_encoder_2": self.text_encoder_2,
                         "projection_model": self.projection_model, "language_model": self.language_model,
                         "unet": self.unet, "vae": self.vae, "vocoder": self.vocoder}
        for module in self._modules.values():
            module.to(home).eval().requires_grad_(False)
        self.new_tokens = int(getattr(self.language_model.config, "max_new_tokens", None) or _DEFAULT_NEW_TOKENS)

        # The duration → latent size mapping of AudioLDM2Pipeline.__call__.
        self.vae_scale_factor = 2 ** (len(self.vae.config.block_out_channels) - 1)
        self.sample_rate = int(self.vocoder.config.sampling_rate)
        self.hop = int(math.prod(self.vocoder.config.upsample_rates))  # waveform samples per mel frame
        self.mel_bins = int(self.vocoder.config.model_in_dim)
        if self.mel_bins % self.vae_scale_factor:
            raise SahError(f"audioldm2: the vocoder's {self.mel_bins} mel bins are not divisible by the VAE scale "
                           f"factor {self.vae_scale_factor}; the model folder is inconsistent")
        self.latent_shape = self.latent_shape_for(self.duration)

    def latent_shape_for(self, duration: float) -> tuple[int, int, int]:
        """The latent `(channels, frames, bins)` for `duration` seconds: AudioLDM2Pipeline's mapping,
        ⌊duration / mel frame⌋ mel frames rounded up to a whole latent frame (the waveform is cut
        back afterwards)."""
        return mel_latent_shape(self, duration)

    # -- placement -------------------------------------------------------------------------------

    def _use(self, *names: str) -> None:
        """With `cpu_offload`, move the named models to the device and every other one to the CPU."""
        if not self.offload:
            return
        for name, module in self._modules.items():
            target = self.device if name in names else torch.device("cpu")
            if next(module.parameters()).device != target:
                module.to(target)

    # -- prompt encoding -------------------------------------------------------------------------

    def encode_prompts(self, prompts: Sequence[str], t5_length: int | None = None) -> dict[str, Tensor]:
        """What the UNet cross-attends to for `prompts`, as AudioLDM2Pipeline.encode_prompt makes it:
        `{"generated": GPT-2 states [B, N, D], "t5": T5 sequence [B, L, D_t5], "t5_mask": [B, L]}`.

        The T5 tokens are padded to the longest prompt of the batch, or with `t5_length` (the
        pipeline's rule for the negative prompt) padded or cut to that many tokens. CLAP's are
        padded to the tokenizer's length."""
        self._use("text_encoder", "text_encoder_2", "projection_model", "language_model")
        device = next(self.text_encoder.parameters()).device
        prompts = list(prompts)
        clap_tokens = self.tokenizer(prompts, padding="max_length", max_length=self.tokenizer.model_max_length,
                                     truncation=True, return_tensors="pt")
        if t5_length is None:
            t5_tokens = self.tokenizer_2(prompts, padding=True, max_length=self.tokenizer_2.model_max_length,
                                         truncation=True, return_tensors="pt")
        else:
            t5_tokens = self.tokenizer_2(prompts, padding="max_length", max_length=t5_length, truncation=True,
                                         return_tensors="pt")
        with torch.no_grad():
            clap = self.text_encoder.get_text_features(clap_tokens.input_ids.to(device),
                                                       attention_mask=clap_tokens.attention_mask.to(device))
            clap = getattr(clap, "pooler_output", clap)[:, None, :]  # transformers 5 returns an output object
            clap_mask = torch.ones((len(prompts), 1), dtype=torch.long, device=device)
            t5_mask = t5_tokens.attention_mask.to(device)
            t5 = self.text_encoder_2(t5_tokens.input_ids.to(device), attention_mask=t5_mask)[0]
            projected = self.projection_model(hidden_states=clap, hidden_states_1=t5, attention_mask=clap_mask,
                                              attention_mask_1=t5_mask)
            generated = self.generate_states(projected.hidden_states, projected.attention_mask)
        wide = torch.promote_types(self.dtype, torch.float32)  # an fp16 model's embeddings round-trip exactly
        return {GENERATED: generated.to(device=self.device, dtype=wide), T5: t5.to(device=self.device, dtype=wide),
                T5_MASK: t5_mask.to(self.device)}

    def generate_states(self, embeds: Tensor, mask: Tensor) -> Tensor:
        """GPT-2's `new_tokens` new hidden states after `embeds`, each fed back as the next input, as
        AudioLDM2Pipeline.generate_language_model runs it (under transformers 5 it passes no cache
        between steps, so every step runs over the whole sequence, as here)."""
        for _ in range(self.new_tokens):
            out = self.language_model(inputs_embeds=embeds, attention_mask=mask, output_hidden_states=True,
                                      use_cache=False, return_dict=True)
            embeds = torch.cat([embeds, out.hidden_states[-1][:, -1:, :]], dim=1)
            mask = torch.cat([mask, mask.new_ones((mask.shape[0], 1))], dim=-1)
        return embeds[:, -self.new_tokens:, :]

    # -- the Generator interface ------------------------------------------------------------------

    def prepare(self, request: GenerationRequest) -> Trajectory:
        cond = self.encode_prompts(request.prompts)
        use_cfg = self.cfg_scale(request) > 1.0  # the pipeline's rule: scale 1 or below means one branch
        uncond = None
        if use_cfg:
            uncond = self.encode_prompts([request.negative_prompt] * request.batch_size,
                                         t5_length=cond[T5].shape[1])
        scheduler = self.scheduler_cls.from_config(self.scheduler_config)
        try:
            scheduler.set_timesteps(request.num_steps, device=self.device)
        except ValueError as exc:  # e.g. PNDM's Runge-Kutta warm-up needs at least 4 steps
            raise SahError(f"audioldm2: scheduler {self.config['scheduler']!r} cannot run {request.num_steps} "
                           f"steps: {exc}") from exc
        # Latents stay float32 between steps whatever the model dtype; only the UNet input is cast.
        duration = self.duration if request.duration is None else float(request.duration)
        shape = self.latent_shape_for(duration)
        noise = seeded_noise(shape, request.seeds, device=self.device)
        latents = noise * scheduler.init_noise_sigma
        step_kwargs: dict[str, Any] = {}
        if "generator" in inspect.signature(scheduler.step).parameters:
            # Stochastic samplers (DDPM, Euler ancestral) draw step noise from each sample's own
            # seed, continuing past its initial noise as the pipeline's per-sample generators do.
            step_kwargs["generator"] = seeded_generators(request.seeds, after=shape)
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
            # one batched UNet call over [negative, prompt], in the pipeline's order
            model_in = torch.cat([latents, latents])
            embeds = {key: torch.cat([uncond[key].to(cond[key].dtype), cond[key]]) for key in cond}
        else:
            model_in, embeds = latents, cond
        model_in = scheduler.scale_model_input(model_in, t).to(self.dtype)
        eps = self.unet(model_in, t, encoder_hidden_states=embeds[GENERATED].to(self.dtype),
                        encoder_hidden_states_1=embeds[T5].to(self.dtype),
                        encoder_attention_mask_1=embeds[T5_MASK], return_dict=False)[0]
        if uncond is not None:
            eps_uncond, eps_cond = eps.chunk(2)
            scale = trajectory.state["cfg_scale"]
            eps = eps_uncond + scale * (eps_cond - eps_uncond)
        return eps.to(torch.promote_types(eps.dtype, torch.float32))

    def step(self, trajectory: Trajectory, latents: Tensor, noise_pred: Tensor, index: int) -> Tensor:
        scheduler = trajectory.state["scheduler"]
        t = trajectory.timesteps[index]
        return scheduler.step(noise_pred.float(), t, latents.float(), **trajectory.state["step_kwargs"]).prev_sample

    def predict_x0(self, trajectory: Trajectory, latents: Tensor, noise_pred: Tensor, index: int) -> Tensor:
        # x̂0 of the latent at its own noise level: ᾱ of step `index`'s timestep, or its σ.
        return predict_x0_from_scheduler(trajectory.state["scheduler"], latents, noise_pred,
                                         trajectory.timesteps[index], index=index)

    def decode(self, latents: Tensor, frames: Sequence[int] | None = None,
               trajectory: Trajectory | None = None,
               spans: Sequence[tuple[float, float]] | None = None) -> Audio:
        """Latents → VAE → mel spectrogram → HiFi-GAN → waveform `[B, 1, S]`, differentiable: the
        vocoder's whole output, which the aligner cuts to the run's duration. With `spans` (seconds)
        only the latent frames under them are decoded, with 8 frames of context on each side; the
        rest of the waveform is silent."""
        self._use("vae", "vocoder")
        return decode_mel_latents(self, latents, spans)


@hookimpl
def register_generators(register: Any) -> None:
    register(AudioLDM2Generator)

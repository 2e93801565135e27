"""Stable Audio Open (Evans et al. 2024) text-to-audio as a sah generator, on diffusers' components.

The model is the one diffusers' `StableAudioPipeline` runs: a T5 text encoder, a projection model
that maps the T5 states and the seconds conditioning (`seconds_start`, `seconds_total`) into the
conditioning width, a DiT (`StableAudioDiTModel`, rotary position embedding) denoising a latent of
the model's fixed `sample_size` frames, the Oobleck VAE decoding it to 44.1 kHz stereo, and the
EDM-preconditioned SDE sampler `CosineDPMSolverMultistepScheduler` (σ-space latents, a torchsde
Brownian tree for its noise). Loaded from a hub id (`stabilityai/stable-audio-open-1.0`) or a
local folder in the same layout. With sah's guidance off it reproduces the pipeline's waveform for
the same prompts, negative prompt, seeds, steps, guidance scale and length
(tests/test_stable_audio.py pins this).

The run's length is Stable Audio's `seconds_total`: it conditions the model and sets where the
waveform is cut; the latent always has the model's full `sample_size` frames (47.55 s for the
released model), as the pipeline's.
"""

from __future__ import annotations

import inspect
import math
import warnings
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
    from torch import Tensor
else:
    torch = lazy_import("torch")

# diffusers and transformers are imported on use (loading): every `sah` command registers this
# plugin, and `sah plugins` or a run with another generator must not pay for them.

#: The released checkpoint's longest output: its DiT's 1024 latent frames of 2048 samples at 44.1 kHz.
RELEASED_MAX_SECONDS = 1024 * 2048 / 44100


def decoder_reach(downsampling_ratios: Sequence[int]) -> int:
    """Latent frames on each side that a sample of an Oobleck decoder depends on (10 for the
    released ratios 2·4·4·8·8; tests/test_stable_audio.py probes it by gradient): a stretch decoded
    with this many frames around it comes out as in a whole decode. The decoder is diffusers'
    `OobleckDecoder`: a 7-tap conv on the latent, then per upsampling stride a transposed conv
    (one input sample either way) and residual units of 7 taps dilated 1, 3 and 9, then a 7-tap conv."""
    reach, rate = 3.0, 1
    for stride in reversed(list(downsampling_ratios)):
        reach += 1 / rate
        rate *= int(stride)
        reach += 3 * (1 + 3 + 9) / rate
    return math.ceil(reach + 3 / rate - 1e-9)


class StableAudioGenerator(Generator):
    """Stable Audio Open sampling driven step by step by sah's aligner."""

    name: ClassVar[str] = "stable-audio"
    modality: ClassVar[Modality] = Modality.AUDIO
    description: ClassVar[str] = "Stable Audio Open text-to-audio (diffusers components), 44.1 kHz stereo, up to 47 s"
    default_model: ClassVar[str | None] = "stabilityai/stable-audio-open-1.0"
    core_defaults: ClassVar[dict[str, Any]] = {"cfg_scale": 7.0}  # StableAudioPipeline's default guidance scale
    options: ClassVar[dict[str, Any]] = {
        "duration": Option(10.0, help="seconds (seconds_total) when the run does not say (V2A: the video's "
                                      "length)", min=0.0),
        # The Oobleck decoder is convolutional: with a margin at least its reach (10 frames for the
        # released architecture, tests/test_stable_audio.py) the run's seconds decode the same.
        "decode_margin": Option(-1, help="latent frames decoded past the run's length (-1: the whole latent, as "
                                         "the pipeline decodes it)", min=-1),
    }
    #: the projected T5 embedding is a tensor the DiT's cross-attention is differentiable in
    supports_prompt_tuning: ClassVar[bool] = True
    #: the Oobleck decoder is convolutional: the stretches a binder reads decode exactly on their own
    supports_audio_spans: bool = True
    #: the released model's; an instance reports its own model's (`sample_size` frames)
    max_duration: ClassVar[float | None] = RELEASED_MAX_SECONDS
    # The weights' licence, as the model card (huggingface.co/stabilityai/stable-audio-open-1.0,
    # README `license_name: stable-audio-community`, LICENSE.md) and Stability AI's announcement
    # (stability.ai/news/license-update) state it: the Stability AI Community License is free for
    # research, non-commercial and commercial use by people and organisations with annual revenue
    # under US$1M; above that, commercial use needs a paid Enterprise licence from Stability AI.
    # (The weights were first released, June 2024, under the Stability AI Non-Commercial Research
    # Community License.) sah cannot know a user's revenue, so `commercial` is False: a run restricted
    # to commercially usable weights refuses these rather than pass them on a condition it cannot check.
    licence: ClassVar[Licence | None] = Licence(
        code="Apache-2.0", weights="Stability AI Community License", commercial=False,
        url="https://huggingface.co/stabilityai/stable-audio-open-1.0/blob/main/LICENSE.md")

    @classmethod
    def check_options(cls, options: dict[str, Any]) -> None:
        # Everything a user can get wrong is checked before any weights are read; the longest
        # length depends on the model and is checked from its config, before its weights load.
        if not options["duration"] > 0:
            raise SahError(f"stable-audio: audio.duration must be positive seconds, got {options['duration']}")

    def __init__(self, model: str | None = None, device: str | torch.device = "cpu",
                 dtype: torch.dtype | None = None, **options: Any) -> None:
        # imported here, not at module level: registering the plugin must not pay for diffusers/transformers
        import diffusers
        from diffusers import AutoencoderOobleck, StableAudioDiTModel, StableAudioProjectionModel
        from transformers import AutoTokenizer, T5EncoderModel

        super().__init__(model, device, dtype, **options)
        dtype = self.dtype  # None: float32
        self.duration = float(self.config["duration"])
        self.decode_margin = int(self.config["decode_margin"])

        def load(cls: Any, subfolder: str, **kwargs: Any) -> Any:
            return load_pretrained(cls.from_pretrained, self.model, flag="--audio-model", what="audio model",
                                   subfolder=subfolder, **kwargs)

        def config_of(cls: Any, subfolder: str) -> dict[str, Any]:
            return dict(load_pretrained(cls.load_config, self.model, flag="--audio-model", what="audio model",
                                        subfolder=subfolder))

        # The length mapping of StableAudioPipeline.__call__, from the configs, before any weights load.
        dit_config, vae_config = config_of(StableAudioDiTModel, "transformer"), config_of(AutoencoderOobleck, "vae")
        self.latent_frames = int(dit_config.get("sample_size", 1024))
        self.latent_channels = int(dit_config.get("in_channels", 64))
        self.hop = int(math.prod(vae_config.get("downsampling_ratios", [2, 4, 4, 8, 8])))
        self.decoder_reach = decoder_reach(vae_config.get("downsampling_ratios", [2, 4, 4, 8, 8]))
        self.sample_rate = int(vae_config.get("sampling_rate", 44100))
        self.max_duration = self.latent_frames * self.hop / self.sample_rate
        self.check_duration(self.duration)

        scheduler_config = config_of(diffusers.CosineDPMSolverMultistepScheduler, "scheduler")
        scheduler_name = str(scheduler_config.get("_class_name", "CosineDPMSolverMultistepScheduler"))
        self.scheduler_cls = getattr(diffusers, scheduler_name, None)
        if self.scheduler_cls is None:
            raise SahError(f"stable-audio: the model's scheduler {scheduler_name} is not in this diffusers")
        self.scheduler_config = scheduler_config
        schedules.family(self.scheduler_cls.from_config(scheduler_config))  # a one-line refusal if sah cannot guide it

        self.tokenizer = load(AutoTokenizer, "tokenizer")
        self.text_encoder = load(T5EncoderModel, "text_encoder", dtype=dtype)
        self.projection = load(StableAudioProjectionModel, "projection_model", torch_dtype=dtype,
                               **diffusers_load_kwargs())
        self.transformer = load(StableAudioDiTModel, "transformer", torch_dtype=dtype, **diffusers_load_kwargs())
        self.vae = load(AutoencoderOobleck, "vae", torch_dtype=dtype, **diffusers_load_kwargs())
        for module in (self.text_encoder, self.projection, self.transformer, self.vae):
            module.to(self.device).eval().requires_grad_(False)
        self.rotary_dim = int(self.transformer.config.attention_head_dim) // 2  # as the pipeline sets it

    def check_duration(self, seconds: float) -> None:
        """Refuse, in one line, a length the model cannot make (the pipeline's check)."""
        if not seconds > 0:
            raise SahError(f"stable-audio: the audio length must be positive seconds, got {seconds:g}")
        if seconds > self.max_duration:
            raise SahError(f"stable-audio: {seconds:g} s is longer than this model can make in one run "
                           f"({self.max_duration:.2f} s: {self.latent_frames} latent frames of {self.hop} samples "
                           f"at {self.sample_rate} Hz); set run.duration or audio.duration to at most that")

    # -- conditioning, as StableAudioPipeline.encode_prompt / encode_duration make it ----------------

    def _t5(self, prompts: Sequence[str]) -> tuple[Tensor, Tensor]:
        tokens = self.tokenizer(list(prompts), padding="max_length", max_length=self.tokenizer.model_max_length,
                                truncation=True, return_tensors="pt")
        ids, mask = tokens.input_ids.to(self.device), tokens.attention_mask.to(self.device)
        return self.text_encoder(ids, attention_mask=mask)[0], mask

    def encode_prompts(self, prompts: Sequence[str], negative: Sequence[str] | None) -> tuple[Tensor, Tensor | None,
                                                                                             Tensor, Tensor | None]:
        """Projected T5 states `[B, T, D]` of the prompts (and of the negative prompts, or None), with
        their attention masks; padding positions are zero, as the pipeline leaves them."""
        with torch.no_grad():
            hidden, mask = self._t5(prompts)
            neg_hidden = neg_mask = None
            if negative is not None:
                neg_hidden, neg_mask = self._t5(negative)
                # the pipeline sets the negative prompt's padding to the null embedding before projecting
                neg_hidden = torch.where(neg_mask.to(torch.bool).unsqueeze(2), neg_hidden, 0.0)
                hidden, mask = torch.cat([neg_hidden, hidden]), torch.cat([neg_mask, mask])
            projected = self.projection(text_hidden_states=hidden).text_hidden_states
            projected = projected * mask.unsqueeze(-1).to(projected.dtype)
            if negative is None:
                return projected, None, mask, None
            b = len(prompts)
            return projected[b:], projected[:b], mask[b:], mask[:b]

    def encode_seconds(self, seconds: float, batch_size: int) -> tuple[Tensor, Tensor]:
        """The `seconds_start` (0) and `seconds_total` embeddings `[B, 1, D]`."""
        with torch.no_grad():
            out = self.projection(start_seconds=torch.tensor([0.0] * batch_size).to(self.device),
                                  end_seconds=torch.tensor([float(seconds)] * batch_size).to(self.device))
            return out.seconds_start_hidden_states, out.seconds_end_hidden_states

    # -- the Generator interface ------------------------------------------------------------------

    def prepare(self, request: GenerationRequest) -> Trajectory:
        from diffusers.models.embeddings import get_1d_rotary_pos_embed

        duration = self.duration if request.duration is None else float(request.duration)
        self.check_duration(duration)
        b = request.batch_size
        use_cfg = self.cfg_scale(request) > 1.0  # the pipeline's rule: scale 1 or below means one branch
        # An empty negative prompt is the pipeline's `negative_prompt=None`: an all-zero unconditional
        # branch (text and seconds); any other is encoded, with the run's seconds.
        negative = [request.negative_prompt] * b if use_cfg and request.negative_prompt != "" else None
        cond, uncond, mask, _ = self.encode_prompts(request.prompts, negative)
        start, end = self.encode_seconds(duration, b)

        scheduler = self.scheduler_cls.from_config(self.scheduler_config)
        scheduler.set_timesteps(request.num_steps, device=self.device)
        shape = (self.latent_channels, self.latent_frames)
        # Latents stay float32 between steps whatever the model dtype; only the DiT input is cast.
        latents = seeded_noise(shape, request.seeds, device=self.device) * scheduler.init_noise_sigma
        step_kwargs: dict[str, Any] = {}
        if "generator" in inspect.signature(scheduler.step).parameters:
            # The cosine DPM-Solver seeds one Brownian tree per sample from `generator[i].initial_seed()`
            # (its state is not read), so each sample's step noise depends on its own seed only.
            step_kwargs["generator"] = seeded_generators(request.seeds, after=shape)
        rotary = get_1d_rotary_pos_embed(self.rotary_dim, self.latent_frames + 1, use_real=True,
                                         repeat_interleave_real=False)  # latent frames + the global token
        state = {"scheduler": scheduler, "cfg_scale": float(self.cfg_scale(request)), "use_cfg": use_cfg,
                 "uncond_embeds": uncond, "text_mask": mask, "seconds": (start, end),
                 "rotary": tuple(r.to(self.device) for r in rotary), "step_kwargs": step_kwargs}
        return Trajectory(latents, scheduler.timesteps.clone(), cond, state, duration=duration)

    def _conditioning(self, trajectory: Trajectory) -> tuple[Tensor, Tensor]:
        """The DiT's `encoder_hidden_states` `[B', T+2, D]` (text, seconds_start, seconds_total) and
        `global_hidden_states` `[B', 1, 2D]`, unconditional branch first under CFG."""
        state = trajectory.state
        start, end = state["seconds"]
        text = trajectory.prompt_embeds * state["text_mask"].unsqueeze(-1).to(trajectory.prompt_embeds.dtype)
        cond = torch.cat([text.to(start.dtype), start, end], dim=1)
        global_states = torch.cat([start, end], dim=2)
        if not state["use_cfg"]:
            return cond, global_states
        if state["uncond_embeds"] is None:
            uncond = torch.zeros_like(cond)
        else:
            uncond = torch.cat([state["uncond_embeds"], start, end], dim=1)
        return torch.cat([uncond, cond]), torch.cat([global_states, global_states])

    def predict_noise(self, trajectory: Trajectory, latents: Tensor, index: int) -> Tensor:
        """The DiT's raw output F (v-prediction under EDM preconditioning), CFG applied."""
        state = trajectory.state
        scheduler = state["scheduler"]
        encoder_states, global_states = self._conditioning(trajectory)
        model_in = torch.cat([latents, latents]) if state["use_cfg"] else latents
        # the pipeline's scale_model_input at this step: c_in = 1/√(σ² + σ_data²)
        model_in = scheduler.precondition_inputs(model_in, scheduler.sigmas[index]).to(self.dtype)
        t = trajectory.timesteps[index].to(self.device).unsqueeze(0)
        out = self.transformer(model_in, t, encoder_hidden_states=encoder_states.to(self.dtype),
                               global_hidden_states=global_states.to(self.dtype),
                               rotary_embedding=state["rotary"], return_dict=False)[0]
        if state["use_cfg"]:
            out_uncond, out_cond = out.chunk(2)
            out = out_uncond + state["cfg_scale"] * (out_cond - out_uncond)
        return out.to(torch.promote_types(out.dtype, torch.float32))

    def step(self, trajectory: Trajectory, latents: Tensor, noise_pred: Tensor, index: int) -> Tensor:
        scheduler = trajectory.state["scheduler"]
        with warnings.catch_warnings():
            # torchsde notes queries a rounding error outside the tree's [σ_min, σ_max], and the last
            # step's σ = 0 below it; the pipeline queries the same, so the noise is the pipeline's
            warnings.filterwarnings("ignore", message=r"Should have t[ab]", category=UserWarning)
            return scheduler.step(noise_pred, trajectory.timesteps[index], latents,
                                  **trajectory.state["step_kwargs"]).prev_sample

    def predict_x0(self, trajectory: Trajectory, latents: Tensor, noise_pred: Tensor, index: int) -> Tensor:
        # EDM: x̂0 = c_skip(σ_i)·z + c_out(σ_i)·F, σ_i the latent's own noise level at step i
        return predict_x0_from_scheduler(trajectory.state["scheduler"], latents, noise_pred,
                                         trajectory.timesteps[index], index=index)

    def decode(self, latents: Tensor, frames: Sequence[int] | None = None,
               trajectory: Trajectory | None = None,
               spans: Sequence[tuple[float, float]] | None = None) -> Audio:
        """Latents → Oobleck VAE → stereo waveform `[B, 2, frames·hop]` at 44.1 kHz, differentiable: the
        VAE's whole output (or, with `decode_margin`, the frames covering the run's length and the
        margin), which the aligner cuts to the run's length. With `spans` (seconds) only the frames
        under them are decoded, with `decoder_reach` frames on each side, the same samples as the
        whole decode's; the rest is silent."""
        z = latents
        if self.decode_margin >= 0 and trajectory is not None and trajectory.duration is not None:
            keep = math.ceil(trajectory.duration * self.sample_rate / self.hop) + self.decode_margin
            z = z[..., : min(z.shape[-1], keep)]
        length = z.shape[-1]
        ranges = [(0, length)] if spans is None else span_frames(spans, self.hop / self.sample_rate, length)
        if ranges == [(0, length)]:
            wave = self.vae.decode(z.to(self.dtype)).sample
        else:
            pieces = []
            for start, stop in ranges:
                lo, hi = max(0, start - self.decoder_reach), min(length, stop + self.decoder_reach)
                part = self.vae.decode(z[..., lo:hi].to(self.dtype)).sample
                pieces.append((start * self.hop, part[..., (start - lo) * self.hop : (stop - lo) * self.hop]))
            wave = place_pieces(pieces, length * self.hop)
        return Audio(wave.to(torch.promote_types(wave.dtype, torch.float32)), self.sample_rate)


@hookimpl
def register_generators(register: Any) -> None:
    register(StableAudioGenerator)

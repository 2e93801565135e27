"""Toy generators: tiny ε-prediction MLPs over 32-dim PCA latents of tones and blobs.

They exist so the whole pipeline (sampling, guidance, evaluation) runs offline on a CPU in
seconds, with an oracle (`sah.plugins.toy.oracle`) that can score the results.
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from typing import TYPE_CHECKING, Any, ClassVar

from sah.component import Licence
from sah.generator import GenerationRequest, Generator, Trajectory, predict_x0_from_scheduler, seeded_noise
from sah.hookspecs import hookimpl
from sah.lazy import lazy_import
from sah.media import Audio, Modality, Video
from sah.plugins.toy import world

if TYPE_CHECKING:
    import torch
    from torch import Tensor

    from sah.plugins.toy.nets import Denoiser
else:
    torch = lazy_import("torch")


class _ToyGenerator(Generator):
    supports_prompt_tuning: ClassVar[bool] = True
    options: ClassVar[dict[str, Any]] = {}
    #: trained by sah (python -m sah.plugins.toy.train), shipped with it
    licence: ClassVar[Licence | None] = Licence("Apache-2.0", "Apache-2.0", True)
    #: one latent is one second (no time axis): a longer run is windows of a second, crossfaded
    max_duration: ClassVar[float | None] = world.DURATION

    def __init__(self, model: str | None = None, device: str | torch.device = "cpu",
                 dtype: torch.dtype | None = None, **options: Any) -> None:
        from sah.plugins.toy.nets import load_world  # torch modules: imported when the weights load

        super().__init__(model, device, dtype, **options)
        # the nets are tiny, so they always run in float32; only latents follow `dtype`
        self.world = load_world(self.model, device=self.device)
        self.denoiser: Denoiser = getattr(self.world, f"{self.modality.value}_denoiser")

    def _embed_prompts(self, prompts: Sequence[str]) -> Tensor:
        classes = [world.class_of_prompt(p) for p in prompts]
        index = torch.tensor([self.denoiser.null_class if k is None else k for k in classes], device=self.device)
        return self.denoiser.embed_classes(index)

    def prepare(self, request: GenerationRequest) -> Trajectory:
        from sah.plugins.toy.nets import make_scheduler

        scheduler = make_scheduler(self.world.config)
        scheduler.set_timesteps(request.num_steps, device=self.device)
        noise = seeded_noise((self.world.config.latent_dim,), request.seeds, device=self.device)
        latents = (noise * scheduler.init_noise_sigma).to(self.dtype)
        # a negative prompt naming a class replaces the null class as the unconditional branch of CFG
        uncond = self._embed_prompts([request.negative_prompt] * request.batch_size)
        state = {"scheduler": scheduler, "uncond_embeds": uncond, "cfg_scale": float(self.cfg_scale(request))}
        return Trajectory(latents, scheduler.timesteps.clone(), self._embed_prompts(request.prompts), state)

    def predict_noise(self, trajectory: Trajectory, latents: Tensor, index: int) -> Tensor:
        t = trajectory.timesteps[index].to(self.device)
        z = latents.float()
        cond = trajectory.prompt_embeds
        eps = self.denoiser(z, t, cond)
        scale = trajectory.state["cfg_scale"]
        if scale != 1.0:
            uncond = trajectory.state["uncond_embeds"].to(cond.dtype)
            eps_u = self.denoiser(z, t, uncond.expand(z.shape[0], -1))
            eps = eps_u + scale * (eps - eps_u)
        return eps.to(latents.dtype)

    def step(self, trajectory: Trajectory, latents: Tensor, noise_pred: Tensor, index: int) -> Tensor:
        scheduler = trajectory.state["scheduler"]
        t = trajectory.timesteps[index]
        out = scheduler.step(noise_pred.float(), t, latents.float()).prev_sample
        return out.to(latents.dtype)

    def predict_x0(self, trajectory: Trajectory, latents: Tensor, noise_pred: Tensor, index: int) -> Tensor:
        return predict_x0_from_scheduler(trajectory.state["scheduler"], latents, noise_pred,
                                         trajectory.timesteps[index], index=index)


class ToyAudioGenerator(_ToyGenerator):
    name: ClassVar[str] = "toy-audio"
    modality: ClassVar[Modality] = Modality.AUDIO
    description: ClassVar[str] = "Toy tones: 1 s at 16 kHz, class k at 250·(k+1) Hz (built in, CPU)"

    def prepare(self, request: GenerationRequest) -> Trajectory:
        trajectory = super().prepare(request)
        trajectory.duration = request.duration
        return trajectory

    def decode(self, latents: Tensor, frames: Sequence[int] | None = None,
               trajectory: Trajectory | None = None) -> Audio:
        wave = self.world.audio_codec.decode(latents.float())
        seconds = trajectory.duration if trajectory is not None else None
        if seconds:
            # The codec's band is whole-hertz rFFT bins of one second, so the tone repeats
            # seamlessly: a longer run is the same second, tiled.
            wave = wave.repeat(1, 1, math.ceil(seconds * world.SAMPLE_RATE / wave.shape[-1]))
        return Audio(wave, world.SAMPLE_RATE)


class ToyVideoGenerator(_ToyGenerator):
    name: ClassVar[str] = "toy-video"
    modality: ClassVar[Modality] = Modality.VIDEO
    description: ClassVar[str] = "Toy blobs: 8 frames of 32×32 at 8 fps, class k at angle 2πk/8 (built in, CPU)"
    supports_frame_subset: ClassVar[bool] = True

    def decode(self, latents: Tensor, frames: Sequence[int] | None = None,
               trajectory: Trajectory | None = None) -> Video:
        if frames is not None:
            bad = [f for f in frames if not 0 <= int(f) < world.NUM_FRAMES]
            if bad:
                raise ValueError(f"toy-video has frames 0..{world.NUM_FRAMES - 1}, asked for {bad}")
        pixels = self.world.video_codec.decode(latents.float(), frames)
        indices = None if frames is None else tuple(int(f) for f in frames)
        return Video(pixels, fps=world.FPS, frame_indices=indices, total_frames=world.NUM_FRAMES)

    def num_frames(self) -> int:
        return world.NUM_FRAMES

    def fps(self) -> float:
        return float(world.FPS)


@hookimpl
def register_generators(register: Any) -> None:
    register(ToyAudioGenerator)
    register(ToyVideoGenerator)

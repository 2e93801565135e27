"""An example sah generator plugin: eight sine tones whose amplitudes are the latent."""

from __future__ import annotations

import math
from typing import TYPE_CHECKING

from sah import Audio, GenerationRequest, Generator, Modality, Trajectory, hookimpl
from sah.component import Licence, Option
from sah.errors import SahError
from sah.generator import predict_x0_from_scheduler, seeded_noise
from sah.lazy import lazy_import

# torch on first use, diffusers where the scheduler is built: `sah plugins` imports this module
if TYPE_CHECKING:
    import torch
else:
    torch = lazy_import("torch")

SAMPLE_RATE = 16_000
FREQUENCIES = [250.0 * (k + 1) for k in range(8)]


class ExampleTones(Generator):
    name = "example-tones"
    modality = Modality.AUDIO
    description = "8 sine tones; latent = amplitudes (example plugin)"
    options = {
        "duration": Option(1.0, help="seconds of audio when the run does not say", min=0.0),
        "loudness": Option(0.15, help="peak amplitude of each tone", min=0.0),
    }
    licence = Licence(code="Apache-2.0", weights="none (no weights: the denoiser is exact)", commercial=True)

    @classmethod
    def check_options(cls, options: dict) -> None:
        # the Options say ">= 0"; a length must also not be zero
        if not options["duration"] > 0:
            raise SahError(f"example-tones: duration must be > 0 seconds, got {options['duration']}")

    def prepare(self, request: GenerationRequest) -> Trajectory:
        from diffusers import DDIMScheduler

        scheduler = DDIMScheduler(num_train_timesteps=1000, beta_schedule="scaled_linear",
                                  beta_start=0.00085, beta_end=0.012, clip_sample=False)
        scheduler.set_timesteps(request.num_steps)
        latents = seeded_noise((len(FREQUENCIES),), request.seeds, self.device, self.dtype)
        # the run's length, else the `duration` option
        duration = float(request.duration or self.config["duration"])
        return Trajectory(latents, scheduler.timesteps, state={"scheduler": scheduler}, duration=duration)

    def predict_noise(self, trajectory: Trajectory, latents: torch.Tensor, index: int) -> torch.Tensor:
        # With amplitudes ~ N(0, 1), E[noise | z_t] = √(1-ᾱ_t)·z_t exactly: no network needed.
        alpha_bar = trajectory.state["scheduler"].alphas_cumprod[int(trajectory.timesteps[index])]
        return (1 - alpha_bar).sqrt().to(latents) * latents

    def step(self, trajectory: Trajectory, latents: torch.Tensor, noise_pred: torch.Tensor,
             index: int) -> torch.Tensor:
        scheduler = trajectory.state["scheduler"]
        return scheduler.step(noise_pred, trajectory.timesteps[index], latents).prev_sample

    def predict_x0(self, trajectory: Trajectory, latents: torch.Tensor, noise_pred: torch.Tensor,
                   index: int) -> torch.Tensor:
        return predict_x0_from_scheduler(trajectory.state["scheduler"], latents, noise_pred,
                                         trajectory.timesteps[index], index=index)

    def decode(self, latents: torch.Tensor, frames=None, trajectory=None) -> Audio:
        seconds = trajectory.duration if trajectory is not None and trajectory.duration else self.config["duration"]
        n = int(seconds * SAMPLE_RATE)
        t = torch.arange(n, device=latents.device) / SAMPLE_RATE
        tones = torch.stack([torch.sin(2 * math.pi * f * t) for f in FREQUENCIES])  # [8, n]
        wave = self.config["loudness"] * (latents.float() @ tones) / math.sqrt(len(FREQUENCIES))
        return Audio(wave.clamp(-1, 1).unsqueeze(1), SAMPLE_RATE)


@hookimpl
def register_generators(register):
    register(ExampleTones)

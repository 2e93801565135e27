"""Tiny in-test plugins: a linear "tone" audio generator, a linear "frames" video generator and a
binder that embeds both into the same 4-d space. Real DDIM scheduler; everything else is small
enough to reason about."""

from __future__ import annotations

import math

import torch
from diffusers import DDIMScheduler

from sah import Audio, Binder, GenerationRequest, Generator, Modality, Text, Trajectory, Video, hookimpl
from sah.generator import predict_x0_from_scheduler, seeded_noise

D = 4
RATE = 800
FRAMES = 6


def _basis() -> torch.Tensor:
    t = torch.arange(RATE) / RATE
    return torch.stack([torch.sin(2 * math.pi * 50 * (k + 1) * t) for k in range(D)])  # [D, RATE]


class _Base(Generator):
    def __init__(self, model=None, device="cpu", dtype=torch.float32, **options):
        super().__init__(model, device, dtype, **options)
        self.calls = {"decode": 0, "predict_noise": 0}

    def prepare(self, request: GenerationRequest) -> Trajectory:
        scheduler = DDIMScheduler(num_train_timesteps=100)
        scheduler.set_timesteps(request.num_steps)
        latents = seeded_noise((D,), request.seeds)
        embeds = torch.zeros(request.batch_size, D)
        return Trajectory(latents, scheduler.timesteps, embeds, {"scheduler": scheduler})

    def predict_noise(self, trajectory, latents, index):
        self.calls["predict_noise"] += 1
        # The exact denoiser for data ~ N(prompt_embeds, I): E[eps | z] = √(1-ᾱ)·(z - √ᾱ·y).
        t = int(trajectory.timesteps[index])
        a = trajectory.state["scheduler"].alphas_cumprod[t]
        return (1 - a).sqrt() * (latents - a.sqrt() * trajectory.prompt_embeds)

    def step(self, trajectory, latents, noise_pred, index):
        t = trajectory.timesteps[index]
        return trajectory.state["scheduler"].step(noise_pred, t, latents).prev_sample

    def predict_x0(self, trajectory, latents, noise_pred, index):
        return predict_x0_from_scheduler(trajectory.state["scheduler"], latents, noise_pred,
                                         trajectory.timesteps[index], index=index)


class DummyAudio(_Base):
    name = "dummy-audio"
    modality = Modality.AUDIO
    description = "test audio generator"
    supports_prompt_tuning = True

    def decode(self, latents, frames=None, trajectory=None):
        self.calls["decode"] += 1
        return Audio((latents @ _basis()).unsqueeze(1) * 0.1, RATE)


class DummyVideo(_Base):
    name = "dummy-video"
    modality = Modality.VIDEO
    supports_frame_subset = True
    options = {"brightness": 0.5}

    def decode(self, latents, frames=None, trajectory=None):
        self.calls["decode"] += 1
        idx = list(range(FRAMES)) if frames is None else list(frames)
        # frame f shows latent dim (f mod D) as a uniform grey level, so frames are distinguishable
        values = torch.stack([latents[:, f % D] for f in idx], dim=1)  # [B, F]
        pix = torch.sigmoid(values)[..., None, None, None].expand(-1, -1, 3, 2, 2) * self.config["brightness"] * 2
        return Video(pix.clamp(0, 1), fps=6.0, frame_indices=None if frames is None else idx, total_frames=FRAMES)

    def num_frames(self):
        return FRAMES

    def fps(self):
        return 6.0


class DummyBinder(Binder):
    name = "dummy"
    modalities = frozenset({Modality.AUDIO, Modality.VIDEO, Modality.TEXT})

    def __init__(self, model=None, device="cpu", dtype=torch.float32, **options):
        super().__init__(model, device, dtype, **options)
        self.calls = {Modality.AUDIO: 0, Modality.VIDEO: 0, Modality.TEXT: 0}
        self.frames_seen: list = []

    def embed(self, media):
        self.calls[media.modality] += 1
        if isinstance(media, Audio):
            wav = media.mono().waveform[:, 0, :RATE]
            return wav @ _basis().T
        if isinstance(media, Video):
            self.frames_seen.append(media.frame_indices)
            grey = media.frames.mean(dim=(2, 3, 4))  # [B, F]
            idx = media.frame_indices or list(range(media.num_frames))
            out = torch.zeros(grey.shape[0], D)
            for j, f in enumerate(idx):
                out[:, f % D] = out[:, f % D] + grey[:, j] - 0.5
            return out
        if isinstance(media, Text):
            return torch.stack([torch.ones(D) if "up" in p else -torch.ones(D) for p in media.prompts])
        raise TypeError(type(media))

    def video_frames(self, num_frames, fps):
        return [0, 2, 3]


@hookimpl
def register_generators(register):
    register(DummyAudio)
    register(DummyVideo)


@hookimpl
def register_binders(register):
    register(DummyBinder)

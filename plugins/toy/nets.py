"""The toy world's models: fixed linear codecs (PCA) and small learned nets.

Everything here is plain `torch.nn` so the weights travel as one safetensors file; `load_world`
rebuilds the modules from that file and a JSON config.
"""

from __future__ import annotations

import json
import math
from collections.abc import Sequence
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

import torch
import torch.nn.functional as F
from safetensors.torch import load_file, save_file
from torch import Tensor, nn

from sah.plugins.toy import world

WEIGHTS_FILE = "weights.safetensors"
CONFIG_FILE = "config.json"
SHIPPED_DIR = Path(__file__).resolve().parent


@dataclass
class ToyConfig:
    latent_dim: int = 32
    audio_max_hz: float = 2400.0
    #: whitening divides by sqrt(max(var, floor·var_max)) so the directions PCA found in rounding
    #: noise (the audio data has rank 16) decode to near-silence instead of being blown up
    variance_floor: float = 1e-3
    cond_dim: int = 32
    time_dim: int = 64
    hidden: int = 320
    blocks: int = 3
    embed_dim: int = 64
    audio_bands: int = 128
    audio_band_max_hz: float = 3200.0
    binder_hidden: int = 256
    scheduler: dict[str, Any] = field(default_factory=lambda: {
        "num_train_timesteps": 1000,
        "beta_schedule": "linear",
        "beta_start": 0.0001,
        "beta_end": 0.02,
        "prediction_type": "epsilon",
        "clip_sample": False,
    })


class AudioCodec(nn.Module):
    """Waveform `[B, 1, 16000]` <-> whitened PCA latent `[B, D]` of the 0–2.4 kHz orthonormal rFFT."""

    def __init__(self, cfg: ToyConfig) -> None:
        super().__init__()
        self.bins = int(cfg.audio_max_hz * world.DURATION) + 1
        dim = 2 * self.bins
        self.register_buffer("mean", torch.zeros(dim))
        self.register_buffer("basis", torch.zeros(dim, cfg.latent_dim))
        self.register_buffer("scale", torch.ones(cfg.latent_dim))

    def features(self, waveform: Tensor) -> Tensor:
        spec = torch.fft.rfft(waveform[:, 0].float(), norm="ortho")[:, : self.bins]
        return torch.cat([spec.real, spec.imag], dim=-1)

    def encode(self, waveform: Tensor) -> Tensor:
        return (self.features(waveform) - self.mean) @ self.basis / self.scale

    def decode(self, latents: Tensor) -> Tensor:
        v = (latents * self.scale) @ self.basis.T + self.mean
        spec = torch.complex(v[:, : self.bins], v[:, self.bins :])
        spec = F.pad(spec, (0, world.NUM_SAMPLES // 2 + 1 - self.bins))
        return torch.fft.irfft(spec, n=world.NUM_SAMPLES, norm="ortho").unsqueeze(1)


class VideoCodec(nn.Module):
    """Clip `[B, 8, 3, 32, 32]` <-> whitened PCA latent `[B, D]` of the clip's per-pixel brightness."""

    def __init__(self, cfg: ToyConfig) -> None:
        super().__init__()
        self.pixels = world.SIZE * world.SIZE
        self.register_buffer("mean", torch.zeros(world.NUM_FRAMES, self.pixels))
        # [frames, D, pixels]: one slice per frame so a frame subset is an index, not a recompute
        self.register_buffer("basis", torch.zeros(world.NUM_FRAMES, cfg.latent_dim, self.pixels))
        self.register_buffer("scale", torch.ones(cfg.latent_dim))

    def encode(self, frames: Tensor) -> Tensor:
        gray = frames.float().mean(dim=2).flatten(2)  # [B, F, P]
        centred = gray - self.mean
        return torch.einsum("bfp,fdp->bd", centred, self.basis) / self.scale

    def decode(self, latents: Tensor, frames: Sequence[int] | None = None) -> Tensor:
        index = list(range(world.NUM_FRAMES)) if frames is None else [int(f) for f in frames]
        idx = torch.tensor(index, device=latents.device)
        basis = self.basis.index_select(0, idx)  # [F', D, P]
        # one identical [B, D] x [D, P] product per frame, so any subset matches the full decode bit for bit
        out = torch.matmul((latents * self.scale).unsqueeze(0), basis) + self.mean.index_select(0, idx).unsqueeze(1)
        gray = out.transpose(0, 1).clamp(0, 1).reshape(latents.shape[0], len(index), 1, world.SIZE, world.SIZE)
        return gray.expand(-1, -1, 3, -1, -1)


def fit_pca(data: Tensor, dim: int, floor: float) -> tuple[Tensor, Tensor, Tensor]:
    """`(mean, basis [N, dim], scale [dim])` of data rows, whitening scale floored."""
    mean = data.mean(0)
    centred = (data - mean).double()
    cov = centred.T @ centred / data.shape[0]
    evals, evecs = torch.linalg.eigh(cov)
    evals, evecs = evals.flip(0)[:dim], evecs.flip(1)[:, :dim]
    # fix each component's sign so refits give the same basis
    signs = torch.sign(evecs[evecs.abs().argmax(0), torch.arange(dim)])
    evecs = evecs * signs
    var = evals.clamp_min(floor * evals[0])
    return mean.float(), evecs.float(), var.sqrt().float()


def timestep_embedding(t: Tensor, dim: int) -> Tensor:
    half = dim // 2
    freqs = torch.exp(-math.log(10_000.0) * torch.arange(half, device=t.device, dtype=torch.float32) / half)
    args = t.float().reshape(-1, 1) * freqs
    return torch.cat([torch.cos(args), torch.sin(args)], dim=-1)


class Denoiser(nn.Module):
    """ε-prediction MLP on `(latent, timestep, class embedding)`; class index 8 is the null class.

    Residual blocks that each see the conditioning again: with it only at the input, the
    unconditional (null-class) samples often stopped between two classes."""

    def __init__(self, cfg: ToyConfig) -> None:
        super().__init__()
        self.time_dim = cfg.time_dim
        self.class_embed = nn.Embedding(world.NUM_CLASSES + 1, cfg.cond_dim)
        h = cfg.hidden
        self.cond = nn.Sequential(nn.Linear(cfg.time_dim + cfg.cond_dim, h), nn.SiLU())
        self.inp = nn.Linear(cfg.latent_dim, h)
        self.blocks = nn.ModuleList(nn.Linear(2 * h, h) for _ in range(cfg.blocks))
        self.out = nn.Linear(h, cfg.latent_dim)

    @property
    def null_class(self) -> int:
        return world.NUM_CLASSES

    def embed_classes(self, classes: Tensor) -> Tensor:
        return self.class_embed(classes)

    def forward(self, latents: Tensor, timesteps: Tensor, cond: Tensor) -> Tensor:
        t = timesteps.expand(latents.shape[0]) if timesteps.ndim == 0 else timesteps
        c = self.cond(torch.cat([timestep_embedding(t, self.time_dim).to(latents.dtype), cond.to(latents.dtype)], -1))
        h = self.inp(latents)
        for block in self.blocks:
            h = h + block(torch.cat([F.silu(h), c], dim=-1))
        return self.out(F.silu(h))


def _mlp(sizes: Sequence[int]) -> nn.Sequential:
    layers: list[nn.Module] = []
    for i, (a, b) in enumerate(zip(sizes[:-1], sizes[1:])):
        layers.append(nn.Linear(a, b))
        if i < len(sizes) - 2:
            layers.append(nn.SiLU())
    return nn.Sequential(*layers)


class BinderNet(nn.Module):
    """Audio, video and text towers into one unit sphere; inputs are already in toy-world format."""

    def __init__(self, cfg: ToyConfig) -> None:
        super().__init__()
        h, d = cfg.binder_hidden, cfg.embed_dim
        self.bands = cfg.audio_bands
        self.band_bins = int(cfg.audio_band_max_hz * world.DURATION) // cfg.audio_bands
        self.audio = nn.Sequential(nn.LayerNorm(cfg.audio_bands), _mlp([cfg.audio_bands, h, h, d]))
        pooled = world.NUM_FRAMES * (world.SIZE // 4) ** 2
        self.video = _mlp([pooled, h, h, d])
        self.vocab = list(world.CLASS_NAMES) + ["<unk>"]
        self.words = nn.Embedding(len(self.vocab), d)
        self.text = _mlp([d, h, d])
        self.log_scale = nn.Parameter(torch.tensor(math.log(1 / 0.07)))

    def audio_features(self, waveform: Tensor) -> Tensor:
        """Log band magnitudes of a mono 1 s 16 kHz waveform `[B, 1, 16000]`; the LayerNorm after it
        makes the tower blind to overall gain."""
        spec = torch.fft.rfft(waveform[:, 0].float(), norm="ortho")
        # +1e-8 inside the root keeps the gradient finite for exactly silent bins
        mag = (spec.real**2 + spec.imag**2 + 1e-8).sqrt()[:, : self.bands * self.band_bins]
        return torch.log(mag.reshape(-1, self.bands, self.band_bins).mean(-1) + 1e-3)

    def embed_audio(self, waveform: Tensor) -> Tensor:
        return F.normalize(self.audio(self.audio_features(waveform)), dim=-1)

    def embed_video(self, gray: Tensor) -> Tensor:
        """`gray` `[B, 8, 32, 32]` brightness in [0, 1]."""
        pooled = F.avg_pool2d(gray.float(), 4).flatten(1)
        return F.normalize(self.video(pooled), dim=-1)

    def tokens(self, prompt: str) -> list[int]:
        unk = len(self.vocab) - 1
        ids = [self.vocab.index(w) if w in self.vocab else unk for w in world.words(prompt)]
        return ids or [unk]

    def embed_tokens(self, batch: Sequence[Sequence[int]]) -> Tensor:
        device = self.words.weight.device
        rows = [self.words(torch.tensor(list(ids), device=device)).mean(0) for ids in batch]
        return F.normalize(self.text(torch.stack(rows)), dim=-1)

    def embed_text(self, prompts: Sequence[str]) -> Tensor:
        return self.embed_tokens([self.tokens(p) for p in prompts])


@dataclass
class ToyWorld:
    config: ToyConfig
    audio_codec: AudioCodec
    video_codec: VideoCodec
    audio_denoiser: Denoiser
    video_denoiser: Denoiser
    binder: BinderNet

    def modules(self) -> dict[str, nn.Module]:
        return {"audio_codec": self.audio_codec, "video_codec": self.video_codec,
                "audio_denoiser": self.audio_denoiser, "video_denoiser": self.video_denoiser,
                "binder": self.binder}


def build_world(cfg: ToyConfig | None = None) -> ToyWorld:
    cfg = cfg or ToyConfig()
    return ToyWorld(cfg, AudioCodec(cfg), VideoCodec(cfg), Denoiser(cfg), Denoiser(cfg), BinderNet(cfg))


def save_world(tw: ToyWorld, directory: str | Path) -> None:
    directory = Path(directory)
    directory.mkdir(parents=True, exist_ok=True)
    tensors = {f"{name}.{key}": value.detach().to(torch.float16).contiguous()
               for name, module in tw.modules().items() for key, value in module.state_dict().items()}
    save_file(tensors, str(directory / WEIGHTS_FILE))
    (directory / CONFIG_FILE).write_text(json.dumps(asdict(tw.config), indent=2) + "\n")


def load_world(directory: str | Path | None = None, device: str | torch.device = "cpu",
               dtype: torch.dtype = torch.float32) -> ToyWorld:
    """The toy world from `directory` (None: the shipped weights), frozen, in eval mode."""
    directory = Path(directory) if directory is not None else SHIPPED_DIR
    weights, config = directory / WEIGHTS_FILE, directory / CONFIG_FILE
    if not weights.is_file() or not config.is_file():
        raise FileNotFoundError(f"toy world weights not found: expected {weights} and {config}; "
                                "run `python -m sah.plugins.toy.train` to create them")
    known = ToyConfig.__dataclass_fields__
    cfg = ToyConfig(**{k: v for k, v in json.loads(config.read_text()).items() if k in known})
    tw = build_world(cfg)
    tensors = load_file(str(weights))
    for name, module in tw.modules().items():
        prefix = f"{name}."
        module.load_state_dict({k[len(prefix):]: v.float() for k, v in tensors.items() if k.startswith(prefix)})
        module.to(device=device, dtype=dtype).eval().requires_grad_(False)
    return tw


def make_scheduler(cfg: ToyConfig) -> Any:
    from diffusers import DDIMScheduler

    return DDIMScheduler(**cfg.scheduler)

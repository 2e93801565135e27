"""The abstract generator: what an audio or video diffusion backend implements for the aligner.

A trajectory is prepared once per run; the aligner then walks its timesteps calling
`predict_noise` (the frozen denoiser, classifier-free guidance included), optionally nudging the
latent through `predict_x0` and a differentiable `decode`, and finally `step` (the scheduler).
"""

from __future__ import annotations

import math
from abc import abstractmethod
from collections.abc import Sequence
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any, ClassVar

from sah import schedules
from sah.component import Component
from sah.lazy import lazy_import
from sah.media import Audio, Modality, Video

if TYPE_CHECKING:
    import torch
    from torch import Tensor
else:
    torch = lazy_import("torch")


@dataclass
class GenerationRequest:
    """What to generate: one prompt and one seed per sample in the batch.

    `duration` is this run's output length in seconds; None leaves it to the generator (its own
    configured default). A generator that has a length honours it up to `max_duration`."""

    prompts: list[str]
    seeds: list[int]
    negative_prompt: str = ""
    num_steps: int = 50
    #: classifier-free guidance scale; None: the generator's own (`Generator.cfg_scale`)
    cfg_scale: float | None = None
    duration: float | None = None

    def __post_init__(self) -> None:
        if len(self.prompts) != len(self.seeds):
            raise ValueError("GenerationRequest needs one prompt per seed")
        if self.num_steps < 1:
            raise ValueError(f"num_steps must be at least 1, got {self.num_steps}")
        if self.duration is not None and not self.duration > 0:
            raise ValueError(f"duration must be positive seconds, got {self.duration}")

    @property
    def batch_size(self) -> int:
        return len(self.seeds)


@dataclass
class Trajectory:
    """The state of one sampling run.

    `latents` holds the initial noise; the aligner carries the current latent itself. `timesteps`
    lists the scheduler timesteps in the order they are used. `prompt_embeds` is the conditioning
    tensor a generator exposes for guided prompt tuning (None if it does not); the aligner may
    replace it with an updated tensor between steps. `state` is the backend's own (scheduler,
    negative-prompt embeddings, ...). `duration` is the length in seconds the run's output is cut
    to (None: all that `decode` gives): a decode may give more, e.g. a vocoder's padding or a
    latent rounded up to whole frames.
    """

    latents: Tensor
    timesteps: Tensor
    prompt_embeds: Tensor | None = None
    state: dict[str, Any] = field(default_factory=dict)
    duration: float | None = None

    @property
    def num_steps(self) -> int:
        return len(self.timesteps)


def seeded_noise(shape: Sequence[int], seeds: Sequence[int], device: torch.device | str = "cpu",
                 dtype: torch.dtype | None = None) -> Tensor:
    """Gaussian noise `[len(seeds), *shape]`, one seed per sample, so a sample does not depend on
    the batch it was drawn in. Drawn on the CPU for the same numbers on every device (float32
    unless `dtype` says otherwise)."""
    if dtype is None:
        dtype = torch.float32
    rows = [torch.randn(tuple(shape), generator=torch.Generator().manual_seed(int(s))) for s in seeds]
    return torch.stack(rows).to(device=device, dtype=dtype)


class Generator(Component):
    """A frozen diffusion model producing audio or video.

    Subclasses set `name` (the plugin name users type), `modality` (AUDIO or VIDEO) and
    `options` (extra config keys of its `[audio]`/`[video]` section, `sah.component.Option`s), and
    load their weights in `__init__`.
    """

    modality: ClassVar[Modality]
    #: The defaults this model sets for core keys of its section, e.g. `{"cfg_scale": 2.5}` (its
    #: pipeline's guidance scale): the config fills them in, and a request without a `cfg_scale`
    #: gets this one. Core keys are never options, so they cannot be set at load and then ignored.
    core_defaults: ClassVar[dict[str, Any]] = {}
    #: `prompt_embeds` is a tensor the denoiser is differentiable in (guided prompt tuning).
    supports_prompt_tuning: ClassVar[bool] = False
    #: `decode(latents, frames=...)` decodes only those frames (video generators).
    supports_frame_subset: ClassVar[bool] = False
    #: `decode(latents, spans=...)` decodes only those stretches of audio exactly and leaves the rest
    #: silent (audio generators). Plugins may set it per instance from an option.
    supports_audio_spans: bool = False
    #: The longest output one window can make, in seconds (None: no limit the generator knows of).
    #: A longer run is sampled as overlapping windows of this length (`sah.longform`).
    max_duration: ClassVar[float | None] = None
    #: The latent's time axis (counting the batch as 0), if it has one: a long run then keeps one
    #: latent and slices its windows from it, which needs `predict_noise`, `predict_x0` and
    #: `decode` to accept latents cut along this axis; without one, each window is its own sample.
    time_axis: ClassVar[int | None] = None
    #: During guidance the binder sees all that `decode` gives, not only the run's `duration`
    #: (the Seeing-and-Hearing authors embed the vocoder's whole output). Plugins may set it per
    #: instance from an option.
    guide_whole_decode: bool = False

    @abstractmethod
    def prepare(self, request: GenerationRequest) -> Trajectory:
        """Encode prompts, set the scheduler's timesteps and draw the initial latents."""

    def cfg_scale(self, request: GenerationRequest) -> float:
        """The classifier-free guidance scale of `request`, or this model's default when it gives none."""
        if request.cfg_scale is not None:
            return float(request.cfg_scale)
        return float(self.core_defaults.get("cfg_scale", 1.0))

    @abstractmethod
    def predict_noise(self, trajectory: Trajectory, latents: Tensor, index: int) -> Tensor:
        """The denoiser's noise prediction at step `index`, classifier-free guidance applied.

        Called under `torch.no_grad()` unless the aligner tunes `trajectory.prompt_embeds`, in
        which case the result must be differentiable with respect to it."""

    @abstractmethod
    def step(self, trajectory: Trajectory, latents: Tensor, noise_pred: Tensor, index: int) -> Tensor:
        """The scheduler's update from step `index` to the next latent."""

    @abstractmethod
    def predict_x0(self, trajectory: Trajectory, latents: Tensor, noise_pred: Tensor, index: int) -> Tensor:
        """The clean-sample estimate for `latents` at step `index`, differentiable in `latents`."""

    @abstractmethod
    def decode(self, latents: Tensor, frames: Sequence[int] | None = None,
               trajectory: Trajectory | None = None) -> Audio | Video:
        """Latents to media, differentiable. `frames` (only when `supports_frame_subset`) limits a
        video decode to those frame indices; the returned Video then has `frame_indices` set.
        `trajectory` is the run's (None outside a run): audio must last at least its `duration`
        and may run past it, e.g. by a vocoder's padding; the aligner cuts it (`fit_duration`).

        With `supports_audio_spans` the aligner passes `spans=[(start, end), ...]` (seconds from the
        decode's start, sorted, disjoint) when the binder reads only those: the waveform keeps the
        whole decode's length, holds those stretches as the whole decode would, and may be silent
        elsewhere (`span_frames` and `place_pieces` help)."""

    def denoise_step(self, trajectory: Trajectory, latents: Tensor, index: int) -> tuple[Tensor, Tensor]:
        """One unguided denoising step: `(noise_pred, next_latents)`."""
        with torch.no_grad():
            noise_pred = self.predict_noise(trajectory, latents, index)
            return noise_pred, self.step(trajectory, latents, noise_pred, index)

    def num_frames(self) -> int | None:
        """How many frames a decode yields (video generators), so a binder can choose its subset."""
        return None

    def latent_frame_seconds(self) -> float | None:
        """Seconds of output per latent frame along `time_axis`."""
        return None

    def latent_scale(self, trajectory: Trajectory, index: int) -> float:
        """The latent's RMS at step `index` relative to the clean latent's (1 for variance-preserving
        samplers); the aligner scales its step by it, so a guidance step has the same relative size
        at every noise level. The default reads the scheduler in `trajectory.state["scheduler"]`."""
        scheduler = trajectory.state.get("scheduler")
        return 1.0 if scheduler is None else schedules.latent_scale(scheduler, index, trajectory.timesteps[index])

    def noise_level(self, trajectory: Trajectory, index: int) -> float:
        """How much of the latent at step `index` is noise, in [0, 1] (`guidance.window = "noise"`)."""
        scheduler = trajectory.state.get("scheduler")
        if scheduler is None:
            return 1.0 - index / trajectory.num_steps
        return schedules.noise_level(scheduler, index, trajectory.timesteps[index])

    def fps(self) -> float | None:
        return None


def seeded_generators(seeds: Sequence[int], after: Sequence[int] | None = None) -> list[torch.Generator]:
    """One CPU generator per sample for a stochastic sampler's step noise (DDPM, Euler ancestral,
    SDE solvers: `scheduler.step(..., generator=...)`), advanced past the initial noise of shape
    `after` as `seeded_noise` drew it: each sample's step noise continues its own stream, as a
    diffusers pipeline's list of per-sample generators does."""
    generators = [torch.Generator().manual_seed(int(s)) for s in seeds]
    if after is not None:
        for g in generators:
            torch.randn(tuple(after), generator=g)
    return generators


def span_frames(spans: Sequence[tuple[float, float]], frame_seconds: float, num_frames: int,
                context: int = 0) -> list[tuple[int, int]]:
    """Latent frames `[start, stop)` under audio `spans` (seconds), each widened by `context` frames
    on both sides for a decoder whose output at a frame depends on its neighbours, merged where
    they touch."""
    ranges: list[tuple[int, int]] = []
    for a, b in sorted(spans):
        start = max(0, math.floor(a / frame_seconds + 1e-9) - context)
        stop = min(num_frames, math.ceil(b / frame_seconds - 1e-9) + context)
        if ranges and start <= ranges[-1][1]:
            ranges[-1] = (ranges[-1][0], max(ranges[-1][1], stop))
        elif stop > start:
            ranges.append((start, stop))
    return ranges


def place_pieces(pieces: Sequence[tuple[int, Tensor]], total: int) -> Tensor:
    """A waveform `[..., total]` holding each `(offset, piece)` from that sample on, in order and
    not overlapping, silent elsewhere; differentiable in the pieces."""
    first = pieces[0][1]
    lead, parts, at = first.shape[:-1], [], 0
    for offset, piece in pieces:
        if offset > at:
            parts.append(first.new_zeros(*lead, offset - at))
        parts.append(piece)
        at = offset + piece.shape[-1]
    if total > at:
        parts.append(first.new_zeros(*lead, total - at))
    return torch.cat(parts, dim=-1)[..., :total]


def fit_duration(media: Audio | Video, seconds: float | None) -> Audio | Video:
    """Audio cut to `int(seconds · rate)` samples, as diffusers' audio pipelines cut theirs; video
    and `seconds=None` pass unchanged."""
    if seconds is None or not isinstance(media, Audio):
        return media
    keep = max(1, int(seconds * media.sample_rate))
    return media if media.num_samples <= keep else Audio(media.waveform[..., :keep], media.sample_rate)


def predict_x0_from_scheduler(scheduler: Any, latents: Tensor, noise_pred: Tensor, timestep: Tensor | int,
                              index: int | None = None) -> Tensor:
    """x̂0 for a diffusers scheduler of any family sah knows (`sah.schedules`): the latent's own
    noise level, from ᾱ of `timestep` (variance-preserving) or σ of step `index` (σ-space, EDM,
    flow; they need `index`). A scheduler it cannot handle is refused in one line."""
    return schedules.predict_x0(scheduler, latents, noise_pred, index, timestep)

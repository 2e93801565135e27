"""The toy binder: audio, video, image and text towers trained on the toy world's classes.

`embed` accepts media of any shape and rate and brings it into the toy world's format
differentiably (resample, crop, resize, frame sampling), so gradients reach the media tensor.
"""

from __future__ import annotations

import warnings
from typing import TYPE_CHECKING, Any, ClassVar

from sah.binder import Binder, frames_at
from sah.component import Licence
from sah.hookspecs import hookimpl
from sah.lazy import lazy_import
from sah.media import Audio, Image, Media, Modality, Text, Video
from sah.plugins.toy import world

if TYPE_CHECKING:
    import torch
    import torch.nn.functional as F
    from torch import Tensor
else:
    torch = lazy_import("torch")
    F = lazy_import("torch.nn.functional")


def resample_window(waveform: Tensor, sample_rate: int, seconds: float = world.DURATION,
                    target_rate: int = world.SAMPLE_RATE) -> Tensor:
    """The first `seconds` of mono `[B, S]` audio (zero-padded) at `target_rate`, by zero-padding or
    truncating its spectrum: exact for band-limited signals and differentiable."""
    n = round(seconds * sample_rate)
    wave = waveform[:, :n]
    if wave.shape[-1] < n:
        wave = F.pad(wave, (0, n - wave.shape[-1]))
    if sample_rate == target_rate:
        return wave
    m = round(seconds * target_rate)
    spec = torch.fft.rfft(wave, dim=-1)
    bins = m // 2 + 1
    if spec.shape[-1] >= bins:
        spec = spec[:, :bins]
    else:
        spec = torch.cat([spec, spec.new_zeros(spec.shape[0], bins - spec.shape[-1])], dim=-1)
    return torch.fft.irfft(spec, n=m, dim=-1) * (m / n)


def to_toy_frames(frames: Tensor) -> Tensor:
    """`[B, F, 3, H, W]` -> brightness `[B, F, 32, 32]`: centre-crop to square, then resize."""
    b, f, _, h, w = frames.shape
    side = min(h, w)
    top, left = (h - side) // 2, (w - side) // 2
    gray = frames[..., top : top + side, left : left + side].float().mean(dim=2)
    if side != world.SIZE:
        gray = F.interpolate(gray.reshape(b * f, 1, side, side), size=(world.SIZE, world.SIZE), mode="bilinear",
                             align_corners=False, antialias=side > world.SIZE).reshape(b, f, world.SIZE, world.SIZE)
    return gray


class ToyBinder(Binder):
    name: ClassVar[str] = "toy"
    #: trained by sah (python -m sah.plugins.toy.train), shipped with it
    licence: ClassVar[Licence | None] = Licence("Apache-2.0", "Apache-2.0", True)
    modalities: ClassVar[frozenset[Modality]] = frozenset(
        {Modality.AUDIO, Modality.VIDEO, Modality.IMAGE, Modality.TEXT})
    description: ClassVar[str] = "Toy binder for the toy world's tones, blobs and compass words (built in, CPU)"
    options: ClassVar[dict[str, Any]] = {}

    def __init__(self, model: str | None = None, device: str | torch.device = "cpu",
                 dtype: torch.dtype | None = None, **options: Any) -> None:
        from sah.plugins.toy.nets import load_world  # torch modules: imported when the weights load

        super().__init__(model, device, dtype, **options)
        self.net = load_world(self.model, device=self.device).binder

    def _warn_unknown(self, prompts: list[str]) -> None:
        """Once per prompt: a prompt that names none of the toy world's eight classes guides nothing
        (the toy text tower knows only the compass words), which a user of real models would not guess."""
        warned = self.__dict__.setdefault("_warned", set())
        for prompt in dict.fromkeys(prompts):
            if prompt.strip() and world.class_of_prompt(prompt) is None and prompt not in warned:
                warned.add(prompt)
                warnings.warn(f"the toy binder knows only the toy world's classes ({', '.join(world.CLASS_NAMES)}); "
                              f"prompt {prompt!r} names none of them, so it guides nothing. For real models: the "
                              "imagebind, clip or clap binder (--binder imagebind, or binder.name in Python) with the "
                              "audioldm / animatediff generators, or a preset (`sah config presets`)",
                              UserWarning, stacklevel=3)

    def video_frames(self, num_frames: int, fps: float) -> list[int]:
        if num_frames <= 1:
            return [0] * world.NUM_FRAMES
        return [round(i * (num_frames - 1) / (world.NUM_FRAMES - 1)) for i in range(world.NUM_FRAMES)]

    def embed(self, media: Media) -> Tensor:
        if isinstance(media, Audio):
            wave = resample_window(media.waveform.to(self.device).float().mean(dim=1), media.sample_rate)
            return self.net.embed_audio(wave.unsqueeze(1))
        if isinstance(media, Image):
            media = media.as_video(world.NUM_FRAMES, world.FPS)
        if isinstance(media, Video):
            # the frames `video_frames` picks in the whole clip, by index in a clip decoded for a subset
            frames = frames_at(media, self.video_frames(media.total_frames, media.fps)).to(self.device)
            return self.net.embed_video(to_toy_frames(frames))
        if isinstance(media, Text):
            self._warn_unknown(media.prompts)
            return self.net.embed_text(media.prompts)
        raise TypeError(f"toy binder cannot embed {type(media).__name__}")


@hookimpl
def register_binders(register: Any) -> None:
    register(ToyBinder)

"""Media types. Every media object carries a leading batch dimension; constructors add it when
given an unbatched tensor, so `Audio(torch.zeros(1, 16000), 16000)` is a batch of one."""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass, field, replace
from enum import Enum
from typing import TYPE_CHECKING, ClassVar

from sah.lazy import lazy_import

if TYPE_CHECKING:
    import torch
    from torch import Tensor
else:
    torch = lazy_import("torch")


class Modality(str, Enum):
    AUDIO = "audio"
    VIDEO = "video"
    IMAGE = "image"
    TEXT = "text"

    def __str__(self) -> str:
        return self.value


def _batched(tensor: Tensor, ndim: int, what: str) -> Tensor:
    if tensor.ndim == ndim - 1:
        return tensor.unsqueeze(0)
    if tensor.ndim != ndim:
        raise ValueError(f"{what} must have {ndim - 1} or {ndim} dimensions, got shape {tuple(tensor.shape)}")
    return tensor


@dataclass
class Audio:
    """A waveform `[B, channels, samples]`, float in [-1, 1]."""

    waveform: Tensor
    sample_rate: int
    modality: ClassVar[Modality] = Modality.AUDIO

    def __post_init__(self) -> None:
        self.waveform = _batched(self.waveform, 3, "Audio.waveform [B, C, S]")
        if self.sample_rate <= 0:
            raise ValueError(f"sample_rate must be positive, got {self.sample_rate}")

    @property
    def batch_size(self) -> int:
        return self.waveform.shape[0]

    @property
    def channels(self) -> int:
        return self.waveform.shape[1]

    @property
    def num_samples(self) -> int:
        return self.waveform.shape[2]

    @property
    def duration(self) -> float:
        return self.num_samples / self.sample_rate

    def mono(self) -> Audio:
        return replace(self, waveform=self.waveform.mean(dim=1, keepdim=True))

    def select(self, index: int) -> Audio:
        return replace(self, waveform=self.waveform[index : index + 1])

    def to(self, *args, **kwargs) -> Audio:
        return replace(self, waveform=self.waveform.to(*args, **kwargs))


@dataclass
class Video:
    """Frames `[B, F, 3, H, W]`, float in [0, 1], at `fps`, with an optional audio track.

    `frame_indices` is set when the frames are a subset of a longer clip (a generator decoding only
    the frames a binder looks at): it gives the index of each frame in that clip, whose length is
    `total_frames`.
    """

    frames: Tensor
    fps: float
    audio: Audio | None = None
    frame_indices: tuple[int, ...] | None = None
    total_frames: int | None = None
    modality: ClassVar[Modality] = Modality.VIDEO

    def __post_init__(self) -> None:
        self.frames = _batched(self.frames, 5, "Video.frames [B, F, 3, H, W]")
        if self.frames.shape[2] != 3:
            raise ValueError(f"Video.frames must have 3 colour channels, got shape {tuple(self.frames.shape)}")
        if self.fps <= 0:
            raise ValueError(f"fps must be positive, got {self.fps}")
        if self.frame_indices is not None:
            self.frame_indices = tuple(int(i) for i in self.frame_indices)
            if len(self.frame_indices) != self.frames.shape[1]:
                raise ValueError("frame_indices must name one index per frame")
        if self.total_frames is None:
            self.total_frames = self.frames.shape[1] if self.frame_indices is None else max(self.frame_indices) + 1

    @property
    def batch_size(self) -> int:
        return self.frames.shape[0]

    @property
    def num_frames(self) -> int:
        return self.frames.shape[1]

    @property
    def height(self) -> int:
        return self.frames.shape[3]

    @property
    def width(self) -> int:
        return self.frames.shape[4]

    @property
    def duration(self) -> float:
        return self.total_frames / self.fps

    def select(self, index: int) -> Video:
        audio = self.audio.select(min(index, self.audio.batch_size - 1)) if self.audio is not None else None
        return replace(self, frames=self.frames[index : index + 1], audio=audio)

    def to(self, *args, **kwargs) -> Video:
        audio = self.audio.to(*args, **kwargs) if self.audio is not None else None
        return replace(self, frames=self.frames.to(*args, **kwargs), audio=audio)


@dataclass
class Image:
    """Pixels `[B, 3, H, W]`, float in [0, 1]."""

    pixels: Tensor
    modality: ClassVar[Modality] = Modality.IMAGE

    def __post_init__(self) -> None:
        self.pixels = _batched(self.pixels, 4, "Image.pixels [B, 3, H, W]")
        if self.pixels.shape[1] != 3:
            raise ValueError(f"Image.pixels must have 3 colour channels, got shape {tuple(self.pixels.shape)}")

    @property
    def batch_size(self) -> int:
        return self.pixels.shape[0]

    def select(self, index: int) -> Image:
        return replace(self, pixels=self.pixels[index : index + 1])

    def to(self, *args, **kwargs) -> Image:
        return replace(self, pixels=self.pixels.to(*args, **kwargs))

    def as_video(self, num_frames: int, fps: float) -> Video:
        """A still clip of this image, for binders that only look at video."""
        frames = self.pixels.unsqueeze(1).expand(-1, num_frames, -1, -1, -1)
        return Video(frames, fps)


@dataclass
class Text:
    """A batch of text prompts."""

    prompts: list[str] = field(default_factory=list)
    modality: ClassVar[Modality] = Modality.TEXT

    def __post_init__(self) -> None:
        if isinstance(self.prompts, str):
            self.prompts = [self.prompts]
        self.prompts = list(self.prompts)

    @property
    def batch_size(self) -> int:
        return len(self.prompts)

    def select(self, index: int) -> Text:
        return Text([self.prompts[index]])

    def to(self, *args, **kwargs) -> Text:
        return self


Media = Audio | Video | Image | Text


def concat(items: Sequence[Media]) -> Media:
    """Join media of one kind along the batch dimension."""
    first = items[0]
    if isinstance(first, Audio):
        return replace(first, waveform=torch.cat([m.waveform for m in items]))
    if isinstance(first, Video):
        audios = [m.audio for m in items]
        audio = concat(audios) if all(a is not None for a in audios) else None
        return replace(first, frames=torch.cat([m.frames for m in items]), audio=audio)
    if isinstance(first, Image):
        return replace(first, pixels=torch.cat([m.pixels for m in items]))
    return Text([p for m in items for p in m.prompts])

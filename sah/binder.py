"""The abstract binder: a multimodal embedding model that judges how well media agree."""

from __future__ import annotations

from abc import abstractmethod
from collections.abc import Sequence
from typing import TYPE_CHECKING, ClassVar

from sah.component import Component
from sah.lazy import lazy_import
from sah.media import Media, Modality, Video

if TYPE_CHECKING:
    import torch.nn.functional as F
    from torch import Tensor
else:
    F = lazy_import("torch.nn.functional")


class Binder(Component):
    """Embeds media of the modalities it declares into one space.

    `embed` owns all preprocessing from raw media (resampling, spectrograms, crops, frame
    sampling) and must be differentiable with respect to the media tensor: the aligner's
    gradient flows through it into a generator's latent.
    """

    modalities: ClassVar[frozenset[Modality]]

    @classmethod
    def can_embed(cls, modality: Modality) -> bool:
        return Modality(modality) in cls.modalities

    @abstractmethod
    def embed(self, media: Media) -> Tensor:
        """`[B, D]` embeddings, differentiable with respect to the media tensor."""

    def similarity(self, a: Tensor, b: Tensor) -> Tensor:
        """Cosine similarity per row, computed in float32; `b` may have batch size 1."""
        return F.cosine_similarity(a.float(), b.float(), dim=-1)

    def video_frames(self, num_frames: int, fps: float) -> list[int] | None:
        """The frame indices `embed` looks at in a clip of `num_frames` frames, or None for all.

        A generator that can decode a subset of frames decodes only these during guidance."""
        return None

    def audio_spans(self, duration: float) -> list[tuple[float, float]] | None:
        """The stretches `(start, end)`, in seconds, that `embed` reads of audio lasting `duration`
        seconds (a little wider is fine), or None for all of it.

        A generator that can decode part of its output (`Generator.supports_audio_spans`) decodes
        only these during guidance and leaves the rest of the waveform silent, so what `embed`
        reads outside them must not change its embedding."""
        return None

    def release(self, keep: frozenset[Modality]) -> None:
        """Free what embedding the modalities outside `keep` holds (a tower, a text encoder): a
        run calls it once its condition and prompts are embedded, keeping what its guidance
        embeds. An embed of a released modality later must still work (by loading it again).
        Default: nothing is freed."""
        return None


def merge_spans(spans: Sequence[tuple[float, float]], duration: float) -> list[tuple[float, float]] | None:
    """Spans clipped to `[0, duration]`, sorted and merged where they touch; None when they cover it all."""
    merged: list[tuple[float, float]] = []
    for start, end in sorted((max(0.0, float(a)), min(float(duration), float(b))) for a, b in spans):
        if end <= start:
            continue
        if merged and start <= merged[-1][1]:
            merged[-1] = (merged[-1][0], max(merged[-1][1], end))
        else:
            merged.append((start, end))
    if merged == [(0.0, float(duration))]:
        return None
    return merged


def frames_at(video: Video, indices: Sequence[int]) -> Tensor:
    """The frames `[B, len(indices), 3, H, W]` at these indices of the clip: a video decoded for
    a subset (`frame_indices` set, possibly a covering superset of what was asked) is looked up by
    index, a whole one sliced."""
    if video.frame_indices is None:
        return video.frames[:, list(indices)]
    position = {index: k for k, index in enumerate(video.frame_indices)}
    missing = sorted({int(i) for i in indices} - set(position))
    if missing:
        raise ValueError(f"the decoded frames lack {missing} of the frames the binder looks at")
    return video.frames[:, [position[int(i)] for i in indices]]

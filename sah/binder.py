"""The abstract binder: a multimodal embedding model that judges how well media agree."""

from __future__ import annotations

from abc import ABC, abstractmethod
from typing import Any, ClassVar

import torch
import torch.nn.functional as F
from torch import Tensor

from sah.media import Media, Modality


class Binder(ABC):
    """Embeds media of the modalities it declares into one space.

    `embed` owns all preprocessing from raw media (resampling, spectrograms, crops, frame
    sampling) and must be differentiable with respect to the media tensor: the aligner's
    gradient flows through it into a generator's latent.
    """

    name: ClassVar[str]
    modalities: ClassVar[frozenset[Modality]]
    description: ClassVar[str] = ""
    default_model: ClassVar[str | None] = None
    options: ClassVar[dict[str, Any]] = {}

    def __init__(self, model: str | None = None, device: str | torch.device = "cpu",
                 dtype: torch.dtype = torch.float32, **options: Any) -> None:
        unknown = set(options) - set(self.options)
        if unknown:
            raise TypeError(f"{self.name}: unknown options {sorted(unknown)}")
        self.model = model or self.default_model
        self.device = torch.device(device)
        self.dtype = dtype
        self.config = {**self.options, **options}

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

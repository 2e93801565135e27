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
        self.check_options(self.config)

    @classmethod
    def check_options(cls, options: dict[str, Any]) -> None:
        """Raise a one-line SahError for option values a load would refuse. `sah.plan` calls it
        before any weights are read; `__init__` calls it too, for direct construction."""
        return None  # a plugin with nothing to check accepts every value of its declared types

    @classmethod
    def weights(cls, model: str | None, options: dict[str, Any]) -> list[tuple[str, str | None]]:
        """The weights a load with this `model` and these options would read, each a hub id or a
        local path with the config key or flag that sets it (None: the section's model flag).
        `sah.plan` checks them all before anything loads, so an offline user learns of every
        missing one at once. Default: the model id."""
        name = model or cls.default_model
        return [(name, None)] if name else []

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

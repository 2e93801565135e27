"""What ImageBind's towers are, without torch: their names, the config dataclass, the state-dict
prefixes of each tower and the CLIP normalisation. `sah plugins` and a config check read these;
the towers themselves (`.model`) are imported when weights load."""

from __future__ import annotations

import json
from collections.abc import Mapping
from dataclasses import asdict, dataclass, fields
from pathlib import Path
from typing import Any

TOWERS = ("vision", "audio", "text")
CLIP_MEAN = (0.48145466, 0.4578275, 0.40821073)
CLIP_STD = (0.26862954, 0.26130258, 0.27577711)


@dataclass(frozen=True)
class ImageBindConfig:
    """Hyper-parameters of the three towers; the defaults are `imagebind_huge`."""

    out_embed_dim: int = 1024
    video_frames: int = 2
    kernel_size: tuple[int, int, int] = (2, 14, 14)
    image_size: int = 224
    vision_embed_dim: int = 1280
    vision_num_blocks: int = 32
    vision_num_heads: int = 16
    audio_embed_dim: int = 768
    audio_num_blocks: int = 12
    audio_num_heads: int = 12
    audio_kernel_size: int = 16
    audio_stride: int = 10
    audio_num_mel_bins: int = 128
    audio_target_len: int = 204
    text_embed_dim: int = 1024
    text_num_blocks: int = 24
    text_num_heads: int = 16
    context_length: int = 77
    vocab_size: int = 49408

    def __post_init__(self) -> None:
        object.__setattr__(self, "kernel_size", tuple(int(k) for k in self.kernel_size))
        for tower in TOWERS:
            dim, heads = getattr(self, f"{tower}_embed_dim"), getattr(self, f"{tower}_num_heads")
            if dim % heads:
                raise ValueError(f"{tower}_embed_dim {dim} is not divisible by {tower}_num_heads {heads}")

    @classmethod
    def from_dict(cls, data: Mapping[str, Any]) -> ImageBindConfig:
        """A flat dict of these fields, or the reference `tiny_config.json` layout (whose
        `constructor_kwargs` also name depth/thermal/imu towers and drop-path rates, which
        inference does not use)."""
        if "constructor_kwargs" in data:
            data = data["constructor_kwargs"]
        known = {f.name for f in fields(cls)}
        ignored = ("depth_", "thermal_", "imu_")
        unknown = [k for k in data if k not in known and not k.startswith(ignored) and not k.endswith("drop_path")]
        if unknown:
            raise ValueError(f"unknown ImageBind config keys {sorted(unknown)}")
        return cls(**{k: v for k, v in data.items() if k in known})

    @classmethod
    def from_json(cls, path: str | Path) -> ImageBindConfig:
        return cls.from_dict(json.loads(Path(path).read_text(encoding="utf-8")))

    def to_dict(self) -> dict[str, Any]:
        out = asdict(self)
        out["kernel_size"] = list(self.kernel_size)
        return out

    @property
    def vision_grid(self) -> tuple[int, int, int]:
        t, h, w = self.kernel_size
        return self.video_frames // t, self.image_size // h, self.image_size // w

    @property
    def audio_grid(self) -> tuple[int, int]:
        k, s = self.audio_kernel_size, self.audio_stride
        return (self.audio_num_mel_bins - k) // s + 1, (self.audio_target_len - k) // s + 1


def tower_prefixes(tower: str) -> tuple[str, ...]:
    """State-dict key prefixes that hold a tower's tensors."""
    return tuple(f"modality_{part}.{tower}." for part in ("preprocessors", "trunks", "heads", "postprocessors"))

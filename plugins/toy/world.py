"""The toy world's fixed semantics: 8 classes, each a sine tone and a blob on a ring.

Class k sounds at 250·(k+1) Hz and shows a bright blob at angle 2πk/8 around the frame centre
(counter-clockwise as displayed, so "north" is up). The class names are the compass directions of
the blob, which is what text prompts name.
"""

from __future__ import annotations

import math
import re
from collections.abc import Sequence
from typing import TYPE_CHECKING

from sah.lazy import lazy_import

if TYPE_CHECKING:
    import torch
    from torch import Tensor
else:
    torch = lazy_import("torch")


SAMPLE_RATE = 16_000
DURATION = 1.0
NUM_SAMPLES = int(SAMPLE_RATE * DURATION)
NUM_FRAMES = 8
SIZE = 32
FPS = 8
NUM_CLASSES = 8
CLASS_NAMES = ("east", "northeast", "north", "northwest", "west", "southwest", "south", "southeast")
FREQUENCIES = tuple(250.0 * (k + 1) for k in range(NUM_CLASSES))
ANGLES = tuple(2 * math.pi * k / NUM_CLASSES for k in range(NUM_CLASSES))
RING_RADIUS = 10.0
BLOB_SIGMA = 2.2
AMPLITUDE = 0.5

_WORD = re.compile(r"[a-z]+")


def words(prompt: str) -> list[str]:
    """Lowercased words with punctuation stripped: the tokeniser shared by prompts and the binder."""
    return _WORD.findall(prompt.lower())


def class_of_prompt(prompt: str) -> int | None:
    """The class a prompt names (its first word that is a class name), or None if it names none."""
    for word in words(prompt):
        if word in CLASS_NAMES:
            return CLASS_NAMES.index(word)
    return None


def _as_classes(classes: Sequence[int] | Tensor) -> Tensor:
    return torch.as_tensor(classes, dtype=torch.long).reshape(-1)


def make_audio(classes: Sequence[int] | Tensor, generator: torch.Generator | None = None) -> Tensor:
    """Clean tones `[B, 1, NUM_SAMPLES]`: random phase, amplitude 0.5 ± 0.1."""
    k = _as_classes(classes)
    n = k.numel()
    phase = torch.rand(n, 1, generator=generator) * 2 * math.pi
    amp = AMPLITUDE + (torch.rand(n, 1, generator=generator) * 2 - 1) * 0.1
    freq = torch.tensor(FREQUENCIES)[k].unsqueeze(1)
    t = torch.arange(NUM_SAMPLES, dtype=torch.float64) / SAMPLE_RATE
    # float64 phase so the tone stays on its exact FFT bin over the whole second
    wave = amp.double() * torch.sin(2 * math.pi * freq.double() * t + phase.double())
    return wave.float().unsqueeze(1)


def blob_frames(angle: Tensor, radius: Tensor, brightness: Tensor, size: int = SIZE,
                sigma: float = BLOB_SIGMA) -> Tensor:
    """Grayscale frames `[B, F, size, size]` of a Gaussian blob at polar (angle, radius) px from the
    centre; `brightness` `[B, F]` scales each frame. Row index grows downward, hence the minus."""
    centre = (size - 1) / 2
    cx = centre + radius * torch.cos(angle)
    cy = centre - radius * torch.sin(angle)
    grid = torch.arange(size, dtype=torch.float32)
    dx = (grid.view(1, 1, -1) - cx.view(-1, 1, 1)) ** 2
    dy = (grid.view(1, -1, 1) - cy.view(-1, 1, 1)) ** 2
    blob = torch.exp(-(dx + dy) / (2 * sigma**2))
    return blob.unsqueeze(1) * brightness.unsqueeze(-1).unsqueeze(-1)


def make_video(classes: Sequence[int] | Tensor, generator: torch.Generator | None = None) -> Tensor:
    """Clean clips `[B, NUM_FRAMES, 3, SIZE, SIZE]` in [0, 1]: a still blob with ±1 px / ±4° jitter
    per clip and ±10% brightness flicker per frame."""
    k = _as_classes(classes)
    n = k.numel()
    angle = torch.tensor(ANGLES)[k] + (torch.rand(n, generator=generator) * 2 - 1) * math.radians(4)
    radius = RING_RADIUS + (torch.rand(n, generator=generator) * 2 - 1) * 1.0
    brightness = 0.9 + 0.1 * torch.rand(n, NUM_FRAMES, generator=generator)
    gray = blob_frames(angle, radius, brightness).clamp(0, 1)
    return gray.unsqueeze(2).expand(-1, -1, 3, -1, -1).contiguous()

"""Faulty and slow plugins for tests/test_hardening.py, built on the toy world's real models.

Registered in-process (`load_registry(extra_plugins=[hardening_plugins])`) or, for subprocess
tests, through a `sah` entry point in a throw-away dist-info folder (see `install_entry_points`).
"""

from __future__ import annotations

import os
import time
from pathlib import Path
from typing import Any, ClassVar

import torch

from sah import hookimpl
from sah.media import Audio, Media, Modality
from sah.plugins.binders.toy import ToyBinder
from sah.plugins.generators.toy import ToyAudioGenerator


class SlowAudio(ToyAudioGenerator):
    """The toy audio generator, taking SAH_TEST_STEP_SECONDS per denoising step and appending a
    line to SAH_TEST_STEP_LOG for each, so a test can interrupt it mid-run and count the steps."""

    name: ClassVar[str] = "slow-audio"

    def predict_noise(self, trajectory: Any, latents: torch.Tensor, index: int) -> torch.Tensor:
        log = os.environ.get("SAH_TEST_STEP_LOG")
        if log:
            with open(log, "a") as handle:
                handle.write(f"{index}\n")
        time.sleep(float(os.environ.get("SAH_TEST_STEP_SECONDS", "0")))
        return super().predict_noise(trajectory, latents, index)


class FailsToLoad(ToyAudioGenerator):
    name: ClassVar[str] = "fails-to-load"

    def __init__(self, *args: Any, **kwargs: Any) -> None:
        raise RuntimeError("checkpoint shard 3 missing\n  (a second line that must not reach the user)")


class FailsInDecode(ToyAudioGenerator):
    """Decodes fine for the first few guidance steps, then raises: a fault in the middle of a run."""

    name: ClassVar[str] = "fails-in-decode"

    def decode(self, latents: torch.Tensor, frames: Any = None, trajectory: Any = None) -> Audio:
        self.decodes = getattr(self, "decodes", 0) + 1
        if self.decodes > 3:
            raise IndexError("vocoder window out of range")
        return super().decode(latents, frames)


class FailsInEmbed(ToyBinder):
    name: ClassVar[str] = "fails-in-embed"

    def embed(self, media: Media) -> torch.Tensor:
        if media.modality is Modality.AUDIO:
            raise ValueError("mel filterbank has 0 bins")
        return super().embed(media)


class NaNOnAudio(ToyBinder):
    """The toy binder, except that every other embedding of generated audio is NaN: the guidance
    gradient through it is non-finite and the update must be skipped."""

    name: ClassVar[str] = "nan-on-audio"

    def embed(self, media: Media) -> torch.Tensor:
        out = super().embed(media)
        if media.modality is Modality.AUDIO and media.waveform.requires_grad:
            self.audio_calls = getattr(self, "audio_calls", 0) + 1
            if self.audio_calls % 2:
                return out * float("nan")
        return out


class NaNDenoiser(ToyAudioGenerator):
    """A denoiser that overflows (as float16 UNets can): its noise prediction is infinite."""

    name: ClassVar[str] = "nan-denoiser"

    def predict_noise(self, trajectory: Any, latents: torch.Tensor, index: int) -> torch.Tensor:
        out = super().predict_noise(trajectory, latents, index)
        return out * float("inf") if index == 5 else out


@hookimpl
def register_generators(register: Any) -> None:
    for cls in (SlowAudio, FailsToLoad, FailsInDecode, NaNDenoiser):
        register(cls)


@hookimpl
def register_binders(register: Any) -> None:
    for cls in (FailsInEmbed, NaNOnAudio):
        register(cls)


def install_entry_points(site: Path, entry_points: dict[str, str]) -> Path:
    """A minimal installed distribution in `site` declaring `entry_points` in the `sah` group; put
    `site` (and this folder) on the path and sah discovers them like any pip-installed plugin."""
    info = site / "sah_hardening_fixture-0.0.dist-info"
    info.mkdir(parents=True, exist_ok=True)
    (info / "METADATA").write_text("Metadata-Version: 2.1\nName: sah-hardening-fixture\nVersion: 0.0\n")
    lines = "".join(f"{name} = {module}\n" for name, module in entry_points.items())
    (info / "entry_points.txt").write_text(f"[sah]\n{lines}")
    return site

"""sah — seeing and hearing: make generated sound and picture agree.

Frozen audio and video diffusion generators are bridged at inference time by a multimodal
embedding model (the binder): at each denoising step the predicted clean sample is decoded,
embedded, and the latent nudged toward its target. See README.md.

The names below are imported on first use (PEP 562), so `import sah.config` or the `sah` command's
help does not pay for torch.
"""

from __future__ import annotations

import importlib
from typing import TYPE_CHECKING, Any

from sah.errors import ConfigError, MediaError, PluginError, SahError

__version__ = "0.1.0"

_LAZY = {
    "GuidanceSettings": "sah.aligner", "Term": "sah.aligner", "align": "sah.aligner",
    "RunPlan": "sah.api", "RunResult": "sah.api", "Sample": "sah.api", "generate": "sah.api", "load": "sah.api",
    "plan": "sah.api", "run": "sah.api", "save": "sah.api",
    "Binder": "sah.binder",
    "GenerationRequest": "sah.generator", "Generator": "sah.generator", "Trajectory": "sah.generator",
    "hookimpl": "sah.hookspecs",
    "Audio": "sah.media", "Image": "sah.media", "Modality": "sah.media", "Text": "sah.media", "Video": "sah.media",
    "concat": "sah.media",
}

if TYPE_CHECKING:  # for type checkers and IDEs; at run time __getattr__ imports these on use
    from sah.aligner import GuidanceSettings, Term, align
    from sah.api import RunPlan, RunResult, Sample, generate, load, plan, run, save
    from sah.binder import Binder
    from sah.generator import GenerationRequest, Generator, Trajectory
    from sah.hookspecs import hookimpl
    from sah.media import Audio, Image, Modality, Text, Video, concat


def __getattr__(name: str) -> Any:
    module = _LAZY.get(name)
    if module is None:
        raise AttributeError(f"module 'sah' has no attribute {name!r}")
    value = getattr(importlib.import_module(module), name)
    globals()[name] = value
    return value


def __dir__() -> list[str]:
    return sorted({*globals(), *_LAZY})


__all__ = [
    "Audio", "Binder", "ConfigError", "GenerationRequest", "Generator", "GuidanceSettings", "Image",
    "MediaError", "Modality", "PluginError", "RunPlan", "RunResult", "SahError", "Sample", "Term", "Text",
    "Trajectory", "Video", "align", "concat", "generate", "hookimpl", "load", "plan", "run", "save",
]

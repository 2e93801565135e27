"""sah — seeing and hearing: make generated sound and picture agree.

Frozen audio and video diffusion generators are bridged at inference time by a multimodal
embedding model (the binder): at each denoising step the predicted clean sample is decoded,
embedded, and the latent nudged toward its target. See README.md.
"""

from sah.aligner import GuidanceSettings, Term, align
from sah.api import RunPlan, RunResult, Sample, generate, load, plan, run, save
from sah.binder import Binder
from sah.errors import ConfigError, MediaError, PluginError, SahError
from sah.generator import GenerationRequest, Generator, Trajectory
from sah.hookspecs import hookimpl
from sah.media import Audio, Image, Modality, Text, Video, concat

__version__ = "0.1.0"

__all__ = [
    "Audio", "Binder", "ConfigError", "GenerationRequest", "Generator", "GuidanceSettings", "Image",
    "MediaError", "Modality", "PluginError", "RunPlan", "RunResult", "SahError", "Sample", "Term", "Text",
    "Trajectory", "Video", "align", "concat", "generate", "hookimpl", "load", "plan", "run", "save",
]

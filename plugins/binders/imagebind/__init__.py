"""ImageBind as a sah binder: our own vision, audio and text towers, Meta's released weights.

    sah run --gen-audio audioldm --binder imagebind --binder-model ~/imagebind_huge.pth --video clip.mp4

`--binder-model` takes `imagebind_huge.pth` (loaded with `weights_only=True`, memory-mapped) or a
safetensors file with the same key names. Towers load lazily, on the first embedding of their
modality, so a V2A run never reads the 354 M-parameter text tower.
"""

from __future__ import annotations

import gc
import json
import os
import shutil
import sys
from pathlib import Path
from typing import TYPE_CHECKING, Any, ClassVar

from sah import hub
from sah.binder import Binder
from sah.component import Licence, Option
from sah.errors import SahError, first_line
from sah.hookspecs import hookimpl
from sah.lazy import lazy_import
from sah.media import Audio, Image, Media, Modality, Text, Video

from .preprocess import (
    CROPS,
    MAX_AUDIO_CLIP_SECONDS,
    MIN_AUDIO_CLIP_SECONDS,
    MODES,
    audio_clip_spans,
    audio_to_mel,
    image_to_pixels,
    video_clip_frames,
    video_to_clips,
)
from .spec import TOWERS, ImageBindConfig, tower_prefixes

VISION_DTYPES = ("", "float32", "bfloat16", "float16")

if TYPE_CHECKING:
    import torch
    from torch import Tensor

    from .model import ImageBindModel
else:
    torch = lazy_import("torch")

__all__ = ["ImageBindBinder", "ImageBindConfig", "ImageBindModel", "load_towers", "save_checkpoint"]


def __getattr__(name: str) -> Any:
    # The towers (torch modules) are imported on use, so registering the plugin needs no torch.
    if name == "ImageBindModel":
        from .model import ImageBindModel

        return ImageBindModel
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")

CHECKPOINT_NAME = "imagebind_huge.pth"
CHECKPOINT_URL = "https://dl.fbaipublicfiles.com/imagebind/imagebind_huge.pth"


def cache_dir() -> Path:
    """Where a downloaded checkpoint is looked for: `$SAH_CACHE/imagebind`, else
    `$XDG_CACHE_HOME/sah/imagebind`, else `~/.cache/sah/imagebind`."""
    if os.environ.get("SAH_CACHE"):
        return Path(os.environ["SAH_CACHE"]).expanduser() / "imagebind"
    base = Path(os.environ.get("XDG_CACHE_HOME") or Path.home() / ".cache").expanduser()
    return base / "sah" / "imagebind"


def _advice(url: str) -> str:
    return f"download {url} where there is internet and pass --binder-model PATH, or put it in {cache_dir()}"


def resolve_checkpoint(model: str) -> Path:
    """A local checkpoint file for `model` (a path, or a file name looked up in the cache)."""
    path = Path(model).expanduser()
    if path.is_file():
        return path
    if path.exists():
        raise SahError(f"ImageBind checkpoint {model!r} is not a file; pass the .pth or .safetensors file itself")
    cached = cache_dir() / path.name
    if len(path.parts) == 1 and cached.is_file():
        return cached
    where = f"not found (nor in {cache_dir()})" if len(path.parts) == 1 else "does not exist"
    raise SahError(f"ImageBind checkpoint {model!r} {where}; {_advice(CHECKPOINT_URL)}")


def download_checkpoint(url: str | None = None) -> Path:
    """Fetch the official checkpoint once into `cache_dir()`, atomically: an interrupted download
    leaves no file that a later run would trust."""
    url = url or CHECKPOINT_URL
    target = cache_dir() / CHECKPOINT_NAME
    if target.is_file():
        return target
    advice = _advice(url)
    if hub.offline():
        raise SahError(f"ImageBind checkpoint {CHECKPOINT_NAME!r} is not in {cache_dir()} and HF_HUB_OFFLINE "
                       f"is set; {advice}")
    import urllib.error
    import urllib.request

    from sah.io import atomic_path

    print(f"sah: downloading the ImageBind checkpoint {url} to {target} (once)", file=sys.stderr)
    try:
        with urllib.request.urlopen(url, timeout=30) as response, atomic_path(target) as temp, \
                open(temp, "wb") as out:
            shutil.copyfileobj(response, out, length=1 << 22)
    except (urllib.error.URLError, OSError) as exc:
        raise SahError(f"ImageBind checkpoint could not be downloaded ({getattr(exc, 'reason', exc)}); "
                       f"{advice}") from exc
    return target


def checkpoint_config(checkpoint: Path, choice: str = "") -> ImageBindConfig:
    """`choice` "huge", or a config JSON path; empty means the JSON beside the checkpoint
    (`<stem>.json`, then `config.json`) if there is one, else huge."""
    if choice == "huge":
        return ImageBindConfig()
    if choice:
        path = Path(choice).expanduser()
        if not path.is_file():
            raise SahError(f"ImageBind config {choice!r} does not exist (use 'huge' or a JSON file)")
    else:
        candidates = [checkpoint.with_suffix(".json"), checkpoint.with_name("config.json")]
        path = next((p for p in candidates if p.is_file()), None)
        if path is None:
            return ImageBindConfig()
    try:
        return ImageBindConfig.from_json(path)
    except (ValueError, TypeError) as exc:
        raise SahError(f"ImageBind config {str(path)!r} is not valid: {exc}") from exc


class _Checkpoint:
    """Reads one tower's tensors at a time from a .safetensors or .pth file."""

    def __init__(self, path: Path) -> None:
        self.path = path
        self._state: dict[str, Tensor] | None = None
        if path.suffix == ".safetensors":
            from safetensors import safe_open

            try:
                with safe_open(str(path), framework="pt") as f:
                    self.keys = list(f.keys())
            except Exception as exc:  # safetensors raises its own error types
                raise SahError(f"ImageBind checkpoint {str(path)!r} is not a readable safetensors file: {exc}") \
                    from exc
        else:
            self._state = self._load_pth(path)
            self.keys = list(self._state)

    @staticmethod
    def _load_pth(path: Path) -> dict[str, Tensor]:
        try:
            try:
                state = torch.load(path, map_location="cpu", weights_only=True, mmap=True)
            except RuntimeError:
                # files in the legacy (pre-zip) format cannot be memory-mapped
                state = torch.load(path, map_location="cpu", weights_only=True)
        except Exception as exc:
            raise SahError(f"ImageBind checkpoint {str(path)!r} could not be read as a weights-only torch file: "
                           f"{first_line(exc)}") from exc
        if isinstance(state, dict) and len(state) == 1 and isinstance(next(iter(state.values())), dict):
            state = next(iter(state.values()))  # {"model": state_dict} wrappers
        if not isinstance(state, dict) or not all(isinstance(v, torch.Tensor) for v in state.values()):
            raise SahError(f"ImageBind checkpoint {str(path)!r} is not a state dict of tensors")
        return state

    def tensors(self, tower: str) -> dict[str, Tensor]:
        prefixes = tower_prefixes(tower)
        names = [k for k in self.keys if k.startswith(prefixes)]
        if self._state is not None:
            return {k: self._state[k] for k in names}
        from safetensors import safe_open

        with safe_open(str(self.path), framework="pt") as f:
            return {k: f.get_tensor(k) for k in names}


def load_towers(checkpoint: str | Path, towers: tuple[str, ...] = TOWERS, config: ImageBindConfig | None = None,
                device: str | torch.device = "cpu", dtype: torch.dtype | None = None) -> ImageBindModel:
    """Build `towers` on the meta device and assign the checkpoint's tensors (cast to `dtype`), so
    loading needs one copy of the weights, not two. Strict: every key of the towers must be there."""
    from .model import ImageBindModel

    if dtype is None:
        dtype = torch.float32
    source = checkpoint if isinstance(checkpoint, _Checkpoint) else _Checkpoint(Path(checkpoint))
    config = config or ImageBindConfig()
    with torch.device("meta"):
        model = ImageBindModel(config, towers)
    state = {}
    for tower in model.towers:
        state.update(source.tensors(tower))
    expected = model.state_dict()
    missing = [k for k in expected if k not in state]
    if missing:
        raise SahError(f"ImageBind checkpoint {str(source.path)!r} lacks {len(missing)} of the "
                       f"{'/'.join(model.towers)} tensors, e.g. {missing[0]!r} (wrong file or config?)")
    wrong = [k for k, v in expected.items() if tuple(state[k].shape) != tuple(v.shape)]
    if wrong:
        k = wrong[0]
        raise SahError(f"ImageBind checkpoint {str(source.path)!r} does not match the model config: {k} has shape "
                       f"{tuple(state[k].shape)}, expected {tuple(expected[k].shape)} (pass the right config JSON)")
    state = {k: v.to(device=device, dtype=dtype if v.is_floating_point() else v.dtype) for k, v in state.items()}
    model.load_state_dict(state, strict=True, assign=True)
    return model.eval().requires_grad_(False)


def save_checkpoint(model: ImageBindModel, path: str | Path) -> Path:
    """Write the model's towers as safetensors, and its config as `<stem>.json` beside it."""
    from safetensors.torch import save_file

    path = Path(path)
    save_file({k: v.detach().contiguous() for k, v in model.state_dict().items()}, str(path))
    path.with_suffix(".json").write_text(json.dumps(model.config.to_dict(), indent=1) + "\n", encoding="utf-8")
    return path


class ImageBindBinder(Binder):
    """ImageBind (huge): audio, video, image and text in one 1024-d space.

    Preprocessing defaults to `preprocess="sah"`: the reference numerics except where they hurt a
    gradient (channels averaged rather than channel 0 only, no in-place mean leak between
    overlapping audio clips, exact audio clip times, antialiased frame downscaling, torch bicubic
    for images); `"official"` reproduces ImageBind as its requirements pin it, quirks included.

    Audio and video are cut into clips of `audio_clip_seconds` / `video_clip_seconds`, clip k
    starting at `k·max(d − c, 0)/max(K − 1, 1)`; `audio_clips` / `video_clips` is K, or `"auto"`
    for the fewest clips that cover the input. `video_crops` is 3 or 1 spatial crops per clip, or
    `"squash"` (resize to 224×224, the Seeing-and-Hearing loader). The authors' V2A settings are
    `preprocess="official"`, both clip lengths 1, both counts "auto", `video_crops="squash"`."""

    name: ClassVar[str] = "imagebind"
    #: Meta releases the ImageBind weights under CC BY-NC-SA 4.0: research, not commercial use
    licence: ClassVar[Licence | None] = Licence("Apache-2.0", "CC-BY-NC-SA-4.0", False,
                                                "https://github.com/facebookresearch/ImageBind")
    modalities: ClassVar[frozenset[Modality]] = frozenset(
        {Modality.AUDIO, Modality.VIDEO, Modality.IMAGE, Modality.TEXT})
    description: ClassVar[str] = "ImageBind huge (Meta's checkpoint, our own towers): audio, video, image, text"
    default_model: ClassVar[str | None] = CHECKPOINT_NAME
    options: ClassVar[dict[str, Any]] = {
        "config": Option("", help='the architecture: "" reads <checkpoint stem>.json or config.json beside the '
                                  'checkpoint (else huge), "huge", or a config JSON file', type=str),
        "preprocess": Option("sah", help='"official": the pinned ImageBind code\'s float preprocessing; "sah": '
                                         "the same on differentiable tensors", choices=MODES),
        "audio_clip_seconds": Option(2.0, help="seconds of audio in each clip the audio tower embeds",
                                     min=MIN_AUDIO_CLIP_SECONDS, max=MAX_AUDIO_CLIP_SECONDS),
        "audio_clips": Option("auto", help='clips per audio, their embeddings averaged; "auto": the fewest that '
                                           "cover it", choices=("auto",), type=int, min=1),
        "video_clip_seconds": Option(2.0, help="seconds of video in each clip the vision tower embeds", min=1e-3),
        "video_clips": Option("auto", help='clips per video, their embeddings averaged; "auto": the fewest that '
                                           "cover it", choices=("auto",), type=int, min=1),
        "video_crops": Option(3, help='spatial crops per clip (3: ImageBind\'s own), or "squash": the whole frame '
                                      "resized, as the Seeing-and-Hearing authors' loader does", choices=CROPS),
        "vision_dtype": Option("", help='the vision tower\'s precision: "" the binder\'s (run.dtype), or float32, '
                                        "bfloat16, float16 (V2A embeds its video once with it)",
                               choices=VISION_DTYPES),
    }

    @classmethod
    def weights(cls, model: str | None, options: dict[str, Any]) -> list[tuple[str, str | None]]:
        name = model or CHECKPOINT_NAME
        try:
            return [(str(resolve_checkpoint(name)), None)]
        except SahError:  # the default is fetched from its URL; anything else is named as given
            return [(CHECKPOINT_URL if name == CHECKPOINT_NAME else name, None)]

    def __init__(self, model: str | None = None, device: str | torch.device = "cpu",
                 dtype: torch.dtype | None = None, **options: Any) -> None:
        super().__init__(model, device, dtype, **options)
        try:
            self.checkpoint_path: Path | None = resolve_checkpoint(self.model)
        except SahError:
            if self.model != CHECKPOINT_NAME:
                raise
            self.checkpoint_path = download_checkpoint()
        self.model_config = checkpoint_config(self.checkpoint_path, self.config["config"])
        self._checkpoint: _Checkpoint | None = _Checkpoint(self.checkpoint_path)
        self._towers: dict[str, ImageBindModel] = {}

    @classmethod
    def from_model(cls, model: ImageBindModel, **options: Any) -> ImageBindBinder:
        """A binder around towers already in memory (random weights for benchmarks, or weights
        loaded elsewhere); it embeds only the modalities of `model.towers`."""
        param = next(model.parameters())
        self = cls.__new__(cls)
        Binder.__init__(self, "<in memory>", param.device, param.dtype, **options)
        if self._tower_dtype("vision") != param.dtype:
            raise SahError(f"imagebind: a binder made from towers in memory runs them in their own dtype "
                           f"({param.dtype}); cast the model rather than set vision_dtype")
        self.checkpoint_path, self.model_config, self._checkpoint = None, model.config, None
        self._towers = {tower: model for tower in model.towers}
        return self

    def tower(self, name: str) -> ImageBindModel:
        """The model holding tower `name`, loaded from the checkpoint on first use."""
        if name not in self._towers:
            if self._checkpoint is None:
                raise SahError(f"imagebind: this binder has no {name} tower and no checkpoint to load it from")
            self._towers[name] = load_towers(self._checkpoint, (name,), self.model_config, self.device,
                                             self._tower_dtype(name))
        return self._towers[name]

    def release(self, keep: frozenset[Modality]) -> None:
        # The vision and text towers of ImageBind huge are 2.5 and 1.4 GB in float32, unused by a
        # V2A run's guidance once its video and prompt are embedded. Towers are dropped only when
        # the checkpoint can load them again (a binder made `from_model` keeps its towers). From a
        # .pth checkpoint, read by memory map, the weights are clean pages of the file that the
        # kernel reclaims when memory runs short; from .safetensors they are freed here.
        if self._checkpoint is None:
            return
        needed = {"vision"} if keep & {Modality.VIDEO, Modality.IMAGE} else set()
        needed |= {"audio"} if Modality.AUDIO in keep else set()
        needed |= {"text"} if Modality.TEXT in keep else set()
        for name in [n for n in self._towers if n not in needed]:
            del self._towers[name]
        gc.collect()

    def video_frames(self, num_frames: int, fps: float) -> list[int]:
        windows = video_clip_frames(num_frames, fps, self.config["video_clips"], self.model_config.video_frames,
                                    float(self.config["video_clip_seconds"]))
        return sorted({i for window in windows for i in window})

    def audio_spans(self, duration: float) -> list[tuple[float, float]] | None:
        if self.config["audio_clips"] == "auto":
            return None  # the fewest clips that cover it
        return audio_clip_spans(duration, int(self.config["audio_clips"]), float(self.config["audio_clip_seconds"]))

    def _tower_dtype(self, name: str) -> torch.dtype:
        if name == "vision" and self.config["vision_dtype"]:
            return getattr(torch, self.config["vision_dtype"])
        return self.dtype

    def _weighted_clips(self, embed: Any, clips: Tensor, weights: Tensor, dtype: torch.dtype) -> Tensor:
        b, k = clips.shape[:2]
        out = embed(clips.flatten(0, 1).to(self.device, dtype)).float().reshape(b, k, -1)
        return (out * weights.to(out.device)[None, :, None]).sum(dim=1)

    def embed(self, media: Media) -> Tensor:
        mode = self.config["preprocess"]
        if isinstance(media, Audio):
            if media.num_samples == 0:
                raise SahError("imagebind: cannot embed empty audio")
            mel, weights = audio_to_mel(media.waveform.to(self.device), media.sample_rate,
                                        self.config["audio_clips"], mode, float(self.config["audio_clip_seconds"]))
            return self._weighted_clips(self.tower("audio").embed_audio, mel, weights, self._tower_dtype("audio"))
        if isinstance(media, Video):
            clips, weights = video_to_clips(
                media.frames.to(self.device), media.fps, self.config["video_clips"], self.config["video_crops"], mode,
                frame_indices=media.frame_indices, total_frames=media.total_frames,
                frames_per_clip=self.model_config.video_frames,
                clip_seconds=float(self.config["video_clip_seconds"]))
            return self._weighted_clips(self.tower("vision").embed_vision, clips, weights, self._tower_dtype("vision"))
        if isinstance(media, Image):
            pixels = image_to_pixels(media.pixels.to(self.device), mode)
            return self.tower("vision").embed_vision(pixels.to(self._tower_dtype("vision"))).float()
        if isinstance(media, Text):
            from .tokenizer import default_tokenizer

            ids = default_tokenizer()(media.prompts, self.model_config.context_length).to(self.device)
            return self.tower("text").embed_text(ids).float()
        raise TypeError(f"imagebind cannot embed {type(media).__name__}")


@hookimpl
def register_binders(register: Any) -> None:
    register(ImageBindBinder)


@hookimpl
def register_commands(cli: Any) -> None:
    import click

    @cli.group("imagebind")
    def imagebind_group() -> None:
        """ImageBind checkpoint tools."""

    @imagebind_group.command("convert")
    @click.argument("source")
    @click.argument("target", type=click.Path(dir_okay=False))
    @click.option("--towers", default=",".join(TOWERS), show_default=True, help="Towers to keep, comma-separated.")
    @click.option("--config", "config_choice", default="", help="'huge' or a config JSON (default: beside SOURCE).")
    def convert(source: str, target: str, towers: str, config_choice: str) -> None:
        """Write the towers of checkpoint SOURCE (.pth or .safetensors) as safetensors TARGET,
        with TARGET's config JSON beside it."""
        path = resolve_checkpoint(source)
        names = tuple(t.strip() for t in towers.split(",") if t.strip())
        unknown = sorted(set(names) - set(TOWERS))
        if unknown or not names:
            raise SahError(f"--towers takes some of {', '.join(TOWERS)}, got {towers!r}")
        model = load_towers(path, names, checkpoint_config(path, config_choice))
        out = save_checkpoint(model, target)
        click.echo(f"wrote {out} ({', '.join(model.towers)}) and {out.with_suffix('.json')}")

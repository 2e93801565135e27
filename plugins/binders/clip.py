"""The `clip` binder: images and video frames ↔ text with transformers' `CLIPModel`.

Preprocessing is plain torch so the guidance gradient reaches the raw frames: resize the shortest
side (bicubic with antialiasing, in PIL's two passes), centre crop, CLIP normalisation, with the
sizes, statistics and filter read from the checkpoint's `CLIPImageProcessor`. On 8-bit images it
matches the processor to within 1.25/255 per value before normalisation, 0.6/255 on average (the
processor rounds to 8 bits after each pass; tests/test_clip_clap.py checks both bounds).

Frames: `video_frames(n, fps)` picks `frames` (default 8) indices spread evenly over the clip,
first and last included (fps is not used); each frame is embedded, unit-normalised, and the frame
embeddings are averaged.
"""

from __future__ import annotations

import importlib.util
from typing import TYPE_CHECKING, Any, ClassVar

from sah.binder import Binder, frames_at
from sah.component import Licence, Option
from sah.errors import SahError
from sah.hookspecs import hookimpl
from sah.hub import load_pretrained
from sah.lazy import lazy_import
from sah.media import Image, Media, Modality, Text, Video

if TYPE_CHECKING:
    import torch
    import torch.nn.functional as F
    from torch import Tensor
else:
    torch = lazy_import("torch")
    F = lazy_import("torch.nn.functional")

OPENAI_CLIP_MEAN = (0.48145466, 0.4578275, 0.40821073)
OPENAI_CLIP_STD = (0.26862954, 0.26130258, 0.27577711)
OPEN_CLIP_PREFIX = "open_clip:"
# PIL resampling codes, as CLIPImageProcessor stores them, to the torch mode that matches PIL
# when used with antialias=True (torch's antialiased bicubic uses PIL's a = -0.5 kernel).
_TORCH_MODES = {2: "bilinear", 3: "bicubic"}


def evenly_spaced(num_frames: int, count: int) -> list[int]:
    """`count` indices spread over `num_frames` frames, first and last included; the middle frame
    when `count` is 1. Never more indices than frames."""
    if num_frames <= 1:
        return [0]
    count = max(1, min(count, num_frames))
    if count == 1:
        return [(num_frames - 1) // 2]
    return [round(i * (num_frames - 1) / (count - 1)) for i in range(count)]


class ClipPreprocess:
    """`CLIPImageProcessor`'s resize → centre crop → rescale → normalise, differentiable, on
    `[N, 3, H, W]` floats in [0, 1] (8-bit values / 255).

    The resize follows the processor's `size`: `shortest_edge` (with `longest_edge` capping the
    long side), `height`/`width`, or `max_height`/`max_width`. `scale` is the processor's rescale
    of 8-bit values, relative to 1/255 (1.0 for the usual `rescale_factor` of 1/255; 255 when
    `do_rescale` is off)."""

    def __init__(self, shortest_edge: int | None, size: tuple[int, int] | None, crop: tuple[int, int] | None,
                 mean: tuple[float, ...], std: tuple[float, ...], mode: str = "bicubic", *,
                 longest_edge: int | None = None, max_size: tuple[int, int] | None = None,
                 scale: float = 1.0) -> None:
        self.shortest_edge, self.size, self.crop, self.mode = shortest_edge, size, crop, mode
        self.longest_edge, self.max_size, self.scale = longest_edge, max_size, float(scale)
        self.mean = torch.tensor(mean, dtype=torch.float32).reshape(1, 3, 1, 1)
        self.std = torch.tensor(std, dtype=torch.float32).reshape(1, 3, 1, 1)

    def to(self, device: torch.device | str) -> ClipPreprocess:
        self.mean, self.std = self.mean.to(device), self.std.to(device)
        return self

    @classmethod
    def from_processor(cls, processor: Any) -> ClipPreprocess:
        """From a `CLIPImageProcessor` (either backend); SahError for settings it cannot follow."""
        size = {k: v for k, v in dict(processor.size).items() if v is not None} if processor.do_resize else {}
        resample = int(getattr(processor, "resample", 3))
        if resample not in _TORCH_MODES:
            raise SahError(f"CLIP image processor resample={resample} is not supported (only bilinear and bicubic)")
        keys = set(size)
        if size and keys not in ({"shortest_edge"}, {"shortest_edge", "longest_edge"}, {"height", "width"},
                                 {"max_height", "max_width"}):
            raise SahError(f"CLIP image processor size {size} is not supported (shortest_edge [+ longest_edge], "
                           f"height + width, or max_height + max_width)")
        if getattr(processor, "do_pad", False):
            raise SahError("CLIP image processor do_pad=True is not supported")
        crop = dict(processor.crop_size) if processor.do_center_crop else None
        mean = _three(processor.image_mean) if processor.do_normalize else (0.0, 0.0, 0.0)
        std = _three(processor.image_std) if processor.do_normalize else (1.0, 1.0, 1.0)
        scale = 255.0 * float(processor.rescale_factor) if processor.do_rescale else 255.0
        return cls(size.get("shortest_edge"), (size["height"], size["width"]) if "height" in size else None,
                   (crop["height"], crop["width"]) if crop else None, mean, std, _TORCH_MODES[resample],
                   longest_edge=size.get("longest_edge"),
                   max_size=(size["max_height"], size["max_width"]) if "max_height" in size else None,
                   scale=1.0 if abs(scale - 1.0) < 1e-9 else scale)

    def resized_shape(self, height: int, width: int) -> tuple[int, int]:
        """The processor's output size for a `height` × `width` input (transformers' rules, with
        their int() truncations)."""
        if self.size is not None:
            return self.size
        if self.max_size is not None:  # the largest size inside the box, aspect ratio kept
            ratio = min(self.max_size[0] / height, self.max_size[1] / width)
            return int(height * ratio), int(width * ratio)
        if self.shortest_edge is None:
            return height, width
        short, long = min(height, width), max(height, width)
        target, exact = self.shortest_edge, float(self.shortest_edge)
        if self.longest_edge is not None:
            if long / short * target > self.longest_edge:  # the long side would pass longest_edge
                exact = self.longest_edge * short / long
                target = int(round(exact))
            if short == target:  # with longest_edge, transformers keeps a size that already fits
                return height, width
        if width <= height:
            return int(exact * height / width), target
        return target, int(exact * width / height)

    def __call__(self, pixels: Tensor) -> Tensor:
        pixels = float32_or_wider(pixels)
        h, w = pixels.shape[-2:]
        new_h, new_w = self.resized_shape(h, w)
        # PIL resamples horizontally, then vertically, clipping to the 8-bit range after each pass;
        # clipping between the passes too keeps the first pass's overshoot out of the second.
        if new_w != w:
            pixels = F.interpolate(pixels, size=(h, new_w), mode=self.mode, align_corners=False, antialias=True)
            pixels = pixels.clamp(0.0, 1.0)
        if new_h != h:
            pixels = F.interpolate(pixels, size=(new_h, new_w), mode=self.mode, align_corners=False, antialias=True)
            pixels = pixels.clamp(0.0, 1.0)
        if self.crop is not None:
            pixels = _centre_crop(pixels, *self.crop)
        if self.scale != 1.0:
            pixels = pixels * self.scale
        return (pixels - self.mean.to(pixels.device)) / self.std.to(pixels.device)


def _three(value: Any) -> tuple[float, float, float]:
    """A processor's image_mean / image_std: one number for all channels, or one per channel."""
    values = [float(value)] if isinstance(value, int | float) else [float(v) for v in value]
    if len(values) == 1:
        values *= 3
    if len(values) != 3:
        raise SahError(f"CLIP image processor statistics need 1 or 3 values, got {value!r}")
    return values[0], values[1], values[2]


def _centre_crop(pixels: Tensor, crop_h: int, crop_w: int) -> Tensor:
    h, w = pixels.shape[-2:]
    if h < crop_h or w < crop_w:  # the processor pads with zeros first, centred (odd pixel after)
        pad_h, pad_w = max(0, crop_h - h), max(0, crop_w - w)
        pixels = F.pad(pixels, ((pad_w + 1) // 2, pad_w // 2, (pad_h + 1) // 2, pad_h // 2))
        h, w = pixels.shape[-2:]
    top, left = (h - crop_h) // 2, (w - crop_w) // 2
    return pixels[..., top : top + crop_h, left : left + crop_w]


def float32_or_wider(tensor: Tensor) -> Tensor:
    """float16/bfloat16 (and integers) as float32; float32 and float64 as they are, so a float64
    model (the tests' gradient checks) stays float64 end to end."""
    return tensor.to(torch.promote_types(tensor.dtype, torch.float32))


def features(output: Any) -> Tensor:
    """The projected embedding of a `get_*_features` call: a tensor in transformers 4, the
    `pooler_output` of a model output in transformers 5."""
    return output if isinstance(output, torch.Tensor) else output.pooler_output


class ClipEncoder:
    """A frozen CLIP model with its tokenizer and differentiable preprocessing. Embeddings are
    float32 (float64 for a float64 model) and unit-normalised."""

    def __init__(self, model: str, device: torch.device, dtype: torch.dtype, flag: str = "--binder-model") -> None:
        if model.startswith(OPEN_CLIP_PREFIX):
            self._backend: Any = _OpenClipBackend(model, device, dtype, flag)
        else:
            self._backend = _TransformersClipBackend(model, device, dtype, flag)
        self.device, self.preprocess = device, self._backend.preprocess

    def embed_pixels(self, pixels: Tensor) -> Tensor:
        """`[N, 3, H, W]` in [0, 1] → `[N, D]`."""
        out = self._backend.image_features(self.preprocess(pixels.to(self.device)))
        return F.normalize(float32_or_wider(out), dim=-1)

    def embed_frames(self, frames: Tensor) -> Tensor:
        """`[B, F, 3, H, W]` → `[B, D]`: the mean of the unit frame embeddings, renormalised."""
        b, f = frames.shape[:2]
        per_frame = self.embed_pixels(frames.reshape(b * f, *frames.shape[2:])).reshape(b, f, -1)
        return F.normalize(per_frame.mean(dim=1), dim=-1)

    def embed_text(self, prompts: list[str], batch_size: int = 64) -> Tensor:
        with torch.no_grad():
            rows = [float32_or_wider(self._backend.text_features(prompts[i : i + batch_size]))
                    for i in range(0, len(prompts), batch_size)]
            return F.normalize(torch.cat(rows), dim=-1)


class _TransformersClipBackend:
    def __init__(self, model: str, device: torch.device, dtype: torch.dtype, flag: str) -> None:
        from transformers import AutoTokenizer, CLIPModel

        try:  # transformers 5: the PIL backend reads the same config and needs no torchvision
            from transformers import CLIPImageProcessorPil as ImageProcessor
        except ImportError:
            from transformers import CLIPImageProcessor as ImageProcessor

        self.model = load_pretrained(CLIPModel.from_pretrained, model, flag=flag, what="CLIP model")
        self.model.to(device=device, dtype=dtype).eval().requires_grad_(False)
        self.tokenizer = load_pretrained(AutoTokenizer.from_pretrained, model, flag=flag, what="CLIP tokenizer")
        processor = load_pretrained(ImageProcessor.from_pretrained, model, flag=flag, what="CLIP image processor")
        self.preprocess = ClipPreprocess.from_processor(processor).to(device)
        self.device, self.dtype = device, dtype
        self.max_length = int(self.model.config.text_config.max_position_embeddings)

    def image_features(self, pixel_values: Tensor) -> Tensor:
        return features(self.model.get_image_features(pixel_values=pixel_values.to(self.dtype)))

    def text_features(self, prompts: list[str]) -> Tensor:
        tokens = self.tokenizer(prompts, padding=True, truncation=True, max_length=self.max_length,
                                return_tensors="pt").to(self.device)
        return features(self.model.get_text_features(**tokens))


class _OpenClipBackend:
    """`open_clip:ARCH/PRETRAINED`, only where the `open_clip` package imports. It does not beside
    the CPU torch sah is developed with, so this path is small and untested there."""

    def __init__(self, model: str, device: torch.device, dtype: torch.dtype, flag: str) -> None:
        arch, _, pretrained = model[len(OPEN_CLIP_PREFIX):].partition("/")
        if not arch or not pretrained:
            raise SahError(f"open_clip model names are open_clip:ARCH/PRETRAINED (e.g. "
                           f"open_clip:ViT-H-14/laion2b_s32b_b79k), got {model!r}")
        if importlib.util.find_spec("open_clip") is None:
            raise SahError(f"{model!r} needs the open_clip package, which is not installed; use a "
                           f"transformers-format CLIP checkpoint instead (e.g. {flag} openai/clip-vit-large-patch14)")
        import open_clip

        net = load_pretrained(lambda name: open_clip.create_model_and_transforms(name, pretrained=pretrained)[0],
                              arch, flag=flag, what="open_clip model")
        self.model = net.to(device=device, dtype=dtype).eval().requires_grad_(False)
        self.tokenizer = open_clip.get_tokenizer(arch)
        side = self.model.visual.image_size
        side = side if isinstance(side, int) else side[0]
        self.preprocess = ClipPreprocess(side, None, (side, side),
                                         tuple(getattr(self.model.visual, "image_mean", None) or OPENAI_CLIP_MEAN),
                                         tuple(getattr(self.model.visual, "image_std", None) or OPENAI_CLIP_STD)
                                         ).to(device)
        self.device, self.dtype = device, dtype

    def image_features(self, pixel_values: Tensor) -> Tensor:
        return self.model.encode_image(pixel_values.to(self.dtype))

    def text_features(self, prompts: list[str]) -> Tensor:
        return self.model.encode_text(self.tokenizer(prompts).to(self.device))


class ClipBinder(Binder):
    name: ClassVar[str] = "clip"
    #: OpenAI's CLIP code and weights are released under the MIT licence (github.com/openai/CLIP);
    #: its model card calls deployed commercial use out of scope until studied for the use at hand
    licence: ClassVar[Licence | None] = Licence("Apache-2.0", "MIT", True, "https://github.com/openai/CLIP")
    modalities: ClassVar[frozenset[Modality]] = frozenset({Modality.IMAGE, Modality.VIDEO, Modality.TEXT})
    description: ClassVar[str] = "CLIP (transformers CLIPModel): images and video frames ↔ text"
    default_model: ClassVar[str | None] = "openai/clip-vit-large-patch14"
    options: ClassVar[dict[str, Any]] = {"frames": Option(8, help="frames of a video it embeds, evenly spaced", min=1)}

    def __init__(self, model: str | None = None, device: str | torch.device = "cpu",
                 dtype: torch.dtype | None = None, **options: Any) -> None:
        super().__init__(model, device, dtype, **options)
        dtype = self.dtype  # None: float32
        self.encoder = ClipEncoder(self.model, self.device, dtype)

    def video_frames(self, num_frames: int, fps: float) -> list[int]:
        return evenly_spaced(num_frames, int(self.config["frames"]))

    def embed(self, media: Media) -> Tensor:
        if isinstance(media, Text):
            return self.encoder.embed_text(media.prompts)
        # sampled_frames refuses audio with a one-line error
        return self.encoder.embed_frames(sampled_frames(media, self.video_frames))


def sampled_frames(media: Media, choose: Any) -> Tensor:
    """The frames `[B, F, 3, H, W]` a frame-averaging binder looks at: an image is one frame; of a
    video, the frames `choose` (the binder's `video_frames`) picks in the whole clip, looked up by
    index in a video decoded for a subset (which may hold more frames than were asked)."""
    if isinstance(media, Image):
        return media.pixels.unsqueeze(1)
    if isinstance(media, Video):
        return frames_at(media, choose(media.total_frames, media.fps))
    raise SahError(f"this binder embeds images and video, not {type(media).__name__.lower()}")


@hookimpl
def register_binders(register: Any) -> None:
    register(ClipBinder)

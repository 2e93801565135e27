"""AnimateDiff text-to-video: a Stable Diffusion 1.5 UNet made temporal by a motion adapter.

`[video] model` is the SD 1.5 base (a hub id or a local folder with `unet/`, `vae/`,
`text_encoder/`, `tokenizer/`, `scheduler/`); `[video] motion_adapter` the `MotionAdapter`. A folder
saved by diffusers' `AnimateDiffPipeline`, whose `unet/` already is a `UNetMotionModel`, works too
and needs no adapter.
"""

from __future__ import annotations

import json
from collections.abc import Callable
from pathlib import Path
from typing import TYPE_CHECKING, Any, ClassVar

from sah.component import Licence, Option
from sah.errors import SahError, first_line
from sah.hookspecs import hookimpl
from sah.hub import load_pretrained
from sah.lazy import lazy_import
from sah.plugins.generators._video_common import COMMON_OPTIONS, DiffusersVideoGenerator

if TYPE_CHECKING:
    from torch import Tensor, nn
else:
    nn = lazy_import("torch.nn")

DEFAULT_MOTION_ADAPTER = "guoyww/animatediff-motion-adapter-v1-5-2"


class AnimateDiffGenerator(DiffusersVideoGenerator):
    name: ClassVar[str] = "animatediff"
    #: SD 1.5 is under the CreativeML OpenRAIL-M licence; the motion adapter's terms were not
    #: checked here, so a commercial-only run refuses it
    licence: ClassVar[Licence | None] = Licence("Apache-2.0", "CreativeML OpenRAIL-M (SD 1.5) + motion adapter "
                                                "(not checked)", False)
    description: ClassVar[str] = "AnimateDiff (SD 1.5 + motion adapter), 16 frames of 512×512 at 8 fps (diffusers)"
    default_model: ClassVar[str | None] = "stable-diffusion-v1-5/stable-diffusion-v1-5"
    options: ClassVar[dict[str, Any]] = {
        **COMMON_OPTIONS,
        "motion_adapter": Option(DEFAULT_MOTION_ADAPTER, help="the motion adapter's hub id or folder (\"\": none, "
                                                              "for a saved AnimateDiff pipeline)")}
    # The sampler settings diffusers documents for AnimateDiff (the motion modules were trained with
    # a linear β schedule, not SD's scaled-linear one).
    scheduler_overrides: ClassVar[dict[str, Any]] = {
        "beta_schedule": "linear", "clip_sample": False, "timestep_spacing": "linspace", "steps_offset": 1}

    @classmethod
    def weights(cls, model: str | None, options: dict[str, Any]) -> list[tuple[str, str | None]]:
        base = model or cls.default_model
        adapter = options.get("motion_adapter", DEFAULT_MOTION_ADAPTER)
        unet_config = Path(base).expanduser() / "unet" / "config.json"
        if unet_config.is_file() and json.loads(unet_config.read_text()).get("_class_name") == "UNetMotionModel":
            adapter = ""  # a saved AnimateDiff pipeline: its UNet already holds the motion modules
        return [(base, None)] + ([(adapter, "video.motion_adapter")] if adapter else [])

    def _load_unet(self, load: Callable[..., Any], **extra: Any) -> nn.Module:
        # imported on use: `sah plugins` and runs with other generators must not pay for diffusers
        from diffusers import MotionAdapter, UNet2DConditionModel, UNetMotionModel

        config = load(UNet2DConditionModel.load_config, self.model, subfolder="unet")
        if config.get("_class_name") == UNetMotionModel.__name__:
            return load(UNetMotionModel.from_pretrained, self.model, subfolder="unet", torch_dtype=self.dtype, **extra)
        unet = load(UNet2DConditionModel.from_pretrained, self.model, subfolder="unet", torch_dtype=self.dtype,
                    **extra)
        adapter_id = self.config["motion_adapter"]
        if not adapter_id:
            raise SahError(f"animatediff: {self.model!r} has a 2D UNet; set video.motion_adapter to a motion "
                           f"adapter (e.g. {DEFAULT_MOTION_ADAPTER})")
        adapter = load_pretrained(MotionAdapter.from_pretrained, adapter_id, flag="[video] motion_adapter =",
                                  what="motion adapter", torch_dtype=self.dtype)
        try:
            return UNetMotionModel.from_unet2d(unet, adapter)
        except (ValueError, RuntimeError) as exc:
            raise SahError(f"animatediff: motion adapter {adapter_id!r} does not fit the UNet of "
                           f"{self.model!r}: {first_line(exc)}") from exc

    def _check_model(self) -> None:
        longest = self.unet.config.get("motion_max_seq_length")
        if longest and self.config["frames"] > longest:
            raise SahError(f"animatediff: its motion modules attend over at most {longest} frames, "
                           f"video.frames is {self.config['frames']}")

    def _unet_hidden_states(self, embeds: Tensor, num_frames: int) -> Tensor:
        # UNetMotionModel runs its spatial layers on frames folded into the batch, so each sample's
        # text conditioning is repeated once per frame (as AnimateDiffPipeline does).
        return embeds.repeat_interleave(repeats=num_frames, dim=0)


@hookimpl
def register_generators(register: Any) -> None:
    register(AnimateDiffGenerator)

"""ModelScope text-to-video (damo-vilab): a `UNet3DConditionModel` over SD-style VAE latents.

`[video] model` is a hub id or a local folder with `unet/`, `vae/`, `text_encoder/`, `tokenizer/`
and `scheduler/`, the layout diffusers' `TextToVideoSDPipeline` saves.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import TYPE_CHECKING, Any, ClassVar

from sah.component import Licence
from sah.hookspecs import hookimpl
from sah.lazy import lazy_import
from sah.plugins.generators._video_common import COMMON_OPTIONS, DiffusersVideoGenerator, with_default

if TYPE_CHECKING:
    from torch import nn
else:
    nn = lazy_import("torch.nn")


class ModelScopeGenerator(DiffusersVideoGenerator):
    name: ClassVar[str] = "modelscope"
    #: the text-to-video-ms-1.7b model card: `license: cc-by-nc-4.0`, research purposes
    licence: ClassVar[Licence | None] = Licence("Apache-2.0", "CC-BY-NC-4.0", False,
                                                "https://huggingface.co/ali-vilab/text-to-video-ms-1.7b")
    description: ClassVar[str] = "ModelScope text-to-video 1.7B, 16 frames of 256×256 at 8 fps (diffusers)"
    default_model: ClassVar[str | None] = "damo-vilab/text-to-video-ms-1.7b"
    # 256×256 is the resolution it was trained at; 9.0 is TextToVideoSDPipeline's default guidance.
    options: ClassVar[dict[str, Any]] = {**COMMON_OPTIONS, "height": with_default(COMMON_OPTIONS["height"], 256),
                                          "width": with_default(COMMON_OPTIONS["width"], 256)}
    core_defaults: ClassVar[dict[str, Any]] = {"cfg_scale": 9.0}  # TextToVideoSDPipeline's default

    def _load_unet(self, load: Callable[..., Any], **extra: Any) -> nn.Module:
        # imported on use: `sah plugins` and runs with other generators must not pay for diffusers
        from diffusers import UNet3DConditionModel

        return load(UNet3DConditionModel.from_pretrained, self.model, subfolder="unet", torch_dtype=self.dtype,
                    **extra)


@hookimpl
def register_generators(register: Any) -> None:
    register(ModelScopeGenerator)

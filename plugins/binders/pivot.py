"""The `clip+clap` binder: video/images through CLIP, audio through CLAP, bridged by text labels.

Neither CLIP nor CLAP sees both sound and picture, but both see text. A label vocabulary (default:
the shipped `sound_labels.txt`) is embedded once by both text towers. With unit vectors, L labels,
temperature τ and top-k masking (`p = softmax(top_k(cos(x, labels) / τ))`):

    video  v:  c_v = CLIP(v),   p_v = p(c_v, CLIP labels),   m_v = unit(p_v · CLAP labels)
    audio  a:  c_a = CLAP(a),   q_a = p(c_a, CLAP labels),   m_a = unit(q_a · CLIP labels)
    text   t:  CLAP(t) and CLIP(t)

    embed(v) = [√α m_v, √(1−α) c_v]      embed(a) = [√α c_a, √(1−α) m_a]
    embed(t) = [√α CLAP(t), √(1−α) CLIP(t)]

Each half is a unit vector, so every embedding is one, and

    cos(embed(v), embed(a)) = α cos(c_a, m_v) + (1−α) cos(c_v, m_a)

The first term is the V2A pivot (the audio's CLAP embedding against the mixture of the labels' CLAP
text embeddings that the video's CLIP label distribution weights); the second its mirror for A2V.
`space` picks α: "clap" (α = 1, the V2A pivot alone), "clip" (α = 0, the A2V pivot alone), "both"
(α = ½, default, for joint and either direction). The aligner's `1 − cos` is then the pivot loss
with no special case; text terms compare in each model's own text space.

Models are named as one string `CLIP_ID,CLAP_ID` (`--binder-model`), or by the `clip_model` and
`clap_model` options; a part left empty falls back to the option, then to the default.
"""

from __future__ import annotations

import math
from importlib import resources
from pathlib import Path
from typing import TYPE_CHECKING, Any, ClassVar

from sah.binder import Binder
from sah.component import Licence, Option
from sah.errors import SahError
from sah.hookspecs import hookimpl
from sah.lazy import lazy_import
from sah.media import Audio, Media, Modality, Text
from sah.plugins.binders.clap import ClapEncoder
from sah.plugins.binders.clip import ClipEncoder, evenly_spaced, sampled_frames

if TYPE_CHECKING:
    import torch
    import torch.nn.functional as F
    from torch import Tensor
else:
    torch = lazy_import("torch")
    F = lazy_import("torch.nn.functional")

DEFAULT_CLIP = "openai/clip-vit-large-patch14"
DEFAULT_CLAP = "laion/clap-htsat-unfused"
SPACES = {"both": 0.5, "clap": 1.0, "clip": 0.0}  # α, the weight of the CLAP-space half


def read_labels(path: str | Path | None = None) -> list[str]:
    """Labels one per line; blank lines and `#` comments are skipped, duplicates dropped. No path
    means the shipped everyday sound-event list."""
    if path:
        file = Path(path).expanduser()
        if not file.is_file():
            raise SahError(f"binder.labels file {str(path)!r} does not exist")
        text = file.read_text(encoding="utf-8")
    else:
        text = resources.files("sah.plugins.binders").joinpath("sound_labels.txt").read_text(encoding="utf-8")
    labels = [line.split("#", 1)[0].strip() for line in text.splitlines()]
    labels = list(dict.fromkeys(label for label in labels if label))
    if not labels:
        raise SahError(f"binder.labels file {str(path)!r} has no labels (one per line)")
    return labels


def label_distribution(embedding: Tensor, labels: Tensor, temperature: float, top_k: int) -> Tensor:
    """`softmax(cos / τ)` over the `top_k` most similar labels (all when `top_k` is 0 or at least
    the number of labels; ties with the k-th are kept), zero elsewhere. `[B, D]`, `[L, D]` → `[B, L]`."""
    logits = F.normalize(embedding, dim=-1) @ labels.T / temperature
    if 0 < top_k < labels.shape[0]:
        kth = logits.topk(top_k, dim=-1).values[:, -1:]
        logits = logits.masked_fill(logits < kth, float("-inf"))
    return logits.softmax(dim=-1)


def mixture(weights: Tensor, labels: Tensor) -> Tensor:
    """The unit vector along `Σ_i w_i · label_i`."""
    return F.normalize(weights @ labels, dim=-1)


def split_models(model: str | None, clip_model: str, clap_model: str) -> tuple[str, str]:
    """`CLIP,CLAP` (either part may be empty) over the options, over the defaults."""
    parts = ["", ""]
    if model:
        parts = [p.strip() for p in model.split(",")]
        if len(parts) != 2:
            raise SahError(f"binder 'clip+clap' takes two models, --binder-model CLIP_ID,CLAP_ID "
                           f"(or binder.clip_model / binder.clap_model), got {model!r}")
    return parts[0] or clip_model or DEFAULT_CLIP, parts[1] or clap_model or DEFAULT_CLAP


class ClipClapBinder(Binder):
    name: ClassVar[str] = "clip+clap"
    #: the CLIP (MIT) and CLAP (Apache-2.0) checkpoints it loads
    licence: ClassVar[Licence | None] = Licence("Apache-2.0", "MIT (CLIP) and Apache-2.0 (CLAP)", True)
    modalities: ClassVar[frozenset[Modality]] = frozenset(
        {Modality.AUDIO, Modality.VIDEO, Modality.IMAGE, Modality.TEXT})
    description: ClassVar[str] = "CLIP for pictures + CLAP for sound, bridged by a label vocabulary (text pivot)"
    default_model: ClassVar[str | None] = f"{DEFAULT_CLIP},{DEFAULT_CLAP}"
    options: ClassVar[dict[str, Any]] = {
        "clip_model": Option("", help='the CLIP hub id or folder ("": the default)'),
        "clap_model": Option("", help='the CLAP hub id or folder ("": the default)'),
        "labels": Option("", help='a text file of labels, one a line ("": the AudioSet sound labels shipped)'),
        "temperature": Option(0.01, help="softmax temperature over the labels' similarities", min=0.0),
        "top_k": Option(5, help="labels an embedding is spread over (0: all)", min=0),
        "space": Option("both", help="which label space the embeddings are compared in", choices=SPACES),
        "frames": Option(8, help="frames of a video it embeds, evenly spaced", min=1),
        "clip_template": Option("a photo of {label}.", help="the prompt a label becomes for CLIP"),
        "clap_template": Option("This is a sound of {label}.", help="the prompt a label becomes for CLAP"),
    }

    @classmethod
    def weights(cls, model: str | None, options: dict[str, Any]) -> list[tuple[str, str | None]]:
        clip, clap = split_models(model, options.get("clip_model", ""), options.get("clap_model", ""))
        return [(clip, None), (clap, None)]

    @classmethod
    def check_options(cls, options: dict[str, Any]) -> None:
        if not options["temperature"] > 0:
            raise SahError(f"binder.temperature must be a positive number, got {options['temperature']}")
        for key in ("clip_template", "clap_template"):
            try:
                ok = "{label}" in options[key] and bool(options[key].format(label="x"))
            except (KeyError, IndexError, ValueError):
                ok = False
            if not ok:
                raise SahError(f"binder.{key} must contain {{label}} and no other {{...}} fields, got {options[key]!r}")

    def __init__(self, model: str | None = None, device: str | torch.device = "cpu",
                 dtype: torch.dtype | None = None, **options: Any) -> None:
        clip_id, clap_id = split_models(model, options.get("clip_model", ""), options.get("clap_model", ""))
        super().__init__(f"{clip_id},{clap_id}", device, dtype, **options)
        dtype = self.dtype  # None: float32
        cfg = self.config
        self.labels = read_labels(cfg["labels"])  # checked before the (slow) model loads
        self.alpha = SPACES[cfg["space"]]
        self.clip_id, self.clap_id = clip_id, clap_id
        self.clip = ClipEncoder(clip_id, self.device, dtype)
        self.clap = ClapEncoder(clap_id, self.device, dtype)
        self._label_table: tuple[Tensor, Tensor] | None = None

    def label_embeddings(self) -> tuple[Tensor, Tensor]:
        """The labels' unit CLIP and CLAP text embeddings `[L, D_clip]`, `[L, D_clap]`, computed once."""
        if self._label_table is None:
            clip_texts = [self.config["clip_template"].format(label=label) for label in self.labels]
            clap_texts = [self.config["clap_template"].format(label=label) for label in self.labels]
            self._label_table = (self.clip.embed_text(clip_texts), self.clap.embed_text(clap_texts))
        return self._label_table

    def video_frames(self, num_frames: int, fps: float) -> list[int]:
        return evenly_spaced(num_frames, int(self.config["frames"]))

    def _distribution(self, embedding: Tensor, labels: Tensor) -> Tensor:
        return label_distribution(embedding, labels, float(self.config["temperature"]), int(self.config["top_k"]))

    def _join(self, clap_half: Tensor | None, clip_half: Tensor | None, batch: int) -> Tensor:
        """`[√α · clap_half, √(1−α) · clip_half]`; a half whose weight is zero may be None."""
        clip_labels, clap_labels = self.label_embeddings()
        if clap_half is None:
            clap_half = clap_labels.new_zeros(batch, clap_labels.shape[1])
        if clip_half is None:
            clip_half = clip_labels.new_zeros(batch, clip_labels.shape[1])
        return torch.cat([clap_half * math.sqrt(self.alpha), clip_half * math.sqrt(1 - self.alpha)], dim=-1)

    def embed(self, media: Media) -> Tensor:
        clip_labels, clap_labels = self.label_embeddings()
        if isinstance(media, Text):
            return self._join(self.clap.embed_text(media.prompts) if self.alpha > 0 else None,
                              self.clip.embed_text(media.prompts) if self.alpha < 1 else None, media.batch_size)
        if isinstance(media, Audio):
            c_a = self.clap.embed_audio(media.waveform, media.sample_rate)
            m_a = mixture(self._distribution(c_a, clap_labels), clip_labels) if self.alpha < 1 else None
            return self._join(c_a, m_a, media.batch_size)
        c_v = self.clip.embed_frames(sampled_frames(media, self.video_frames))
        m_v = mixture(self._distribution(c_v, clip_labels), clap_labels) if self.alpha > 0 else None
        return self._join(m_v, c_v, c_v.shape[0])


@hookimpl
def register_binders(register: Any) -> None:
    register(ClipClapBinder)

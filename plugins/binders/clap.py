"""The `clap` binder: audio ↔ text with transformers' `ClapModel`.

`ClapFeatureExtractor` is numpy-only, so `ClapFrontEnd` redoes it in torch, differentiably, from
the checkpoint's own feature-extractor settings and mel filter banks: downmix to mono, resample to
its rate (48 kHz) with `sah.dsp.resample`, pad short clips (`repeatpad`, `repeat` or `pad`),
truncate long ones (`fusion` or `rand_trunc`), then a centred, reflect-padded periodic-Hann STFT,
power spectrum, mel filter bank (HTK-scale without norm for `fusion`, Slaney otherwise, exactly as
the extractor picks) and 10·log10 with a 1e-10 floor (the extractor's `top_db` is stored but never
applied, so neither is it here).

The extractor draws random crops; guidance needs the same embedding for the same audio at every
step, so the front end pins them:
- `rand_trunc`, clip longer than `max_length_s`: the first `max_length_s` seconds.
- `fusion`, clip longer: the extractor's three crop ranges (front, middle, back thirds) each give
  their middle start index; the fourth channel is the whole mel squeezed to the crop length.
- `fusion`, clip not longer: `is_longer` is False for every sample. (The extractor marks one random
  sample of an all-short batch as longer, a training-time habit; LAION's inference code does not.)
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Any, ClassVar

from sah.binder import Binder
from sah.component import Licence
from sah.dsp import resample
from sah.errors import SahError
from sah.hookspecs import hookimpl
from sah.hub import load_pretrained
from sah.lazy import lazy_import
from sah.media import Audio, Media, Modality, Text
from sah.plugins.binders.clip import features, float32_or_wider

if TYPE_CHECKING:
    import numpy as np
    import torch
    import torch.nn.functional as F
    from torch import Tensor
else:
    np = lazy_import("numpy")
    torch = lazy_import("torch")
    F = lazy_import("torch.nn.functional")

MEL_FLOOR = 1e-10


class ClapFrontEnd:
    """Waveform `[B, S]` at `sample_rate` → CLAP `input_features` `[B, 1 or 4, T, mels]` and
    `is_longer` `[B, 1]`, differentiable in the waveform."""

    def __init__(self, sample_rate: int, n_fft: int, hop_length: int, max_samples: int, truncation: str,
                 padding: str, mel_filters: np.ndarray) -> None:
        if truncation not in ("fusion", "rand_trunc"):
            raise SahError(f"CLAP feature extractor truncation {truncation!r} is not supported (fusion, rand_trunc)")
        if padding not in ("repeatpad", "repeat", "pad"):
            raise SahError(f"CLAP feature extractor padding {padding!r} is not supported (repeatpad, repeat, pad)")
        self.sample_rate, self.n_fft, self.hop_length = sample_rate, n_fft, hop_length
        self.max_samples, self.truncation, self.padding = max_samples, truncation, padding
        self.mel_filters = torch.as_tensor(np.asarray(mel_filters), dtype=torch.float32)  # [freq bins, mels]
        self.window = torch.hann_window(n_fft, periodic=True, dtype=torch.float32)

    def to(self, device: torch.device | str) -> ClapFrontEnd:
        self.mel_filters, self.window = self.mel_filters.to(device), self.window.to(device)
        return self

    @classmethod
    def from_feature_extractor(cls, fe: Any) -> ClapFrontEnd:
        filters = fe.mel_filters if fe.truncation == "fusion" else fe.mel_filters_slaney
        return cls(int(fe.sampling_rate), int(fe.fft_window_size), int(fe.hop_length), int(fe.nb_max_samples),
                   fe.truncation, fe.padding, filters)

    def log_mel(self, wave: Tensor) -> Tensor:
        """`[B, S]` → `[B, T, mels]` in dB."""
        wave = float32_or_wider(wave)
        spec = torch.stft(wave, self.n_fft, hop_length=self.hop_length, win_length=self.n_fft,
                          window=self.window.to(wave.device, wave.dtype), center=True, pad_mode="reflect",
                          onesided=True, return_complex=True)
        power = spec.real.square() + spec.imag.square()  # [B, freq, T]
        mel = torch.einsum("fm,bft->btm", self.mel_filters.to(wave.device, power.dtype), power)
        return 10.0 * torch.log10(mel.clamp_min(MEL_FLOOR))

    def _pad(self, wave: Tensor) -> Tensor:
        length = wave.shape[-1]
        if self.padding == "repeat":
            wave = wave.repeat(1, self.max_samples // length + 1)[:, : self.max_samples]
        elif self.padding == "repeatpad":
            wave = wave.repeat(1, self.max_samples // length)
        return F.pad(wave, (0, self.max_samples - wave.shape[-1]))

    def fusion_starts(self, total_frames: int, chunk_frames: int) -> list[int]:
        """The pinned start frames of the front, middle and back crops."""
        ranges = np.array_split(np.arange(0, total_frames - chunk_frames + 1), 3)
        return [int(r[len(r) // 2]) if len(r) else 0 for r in ranges]

    def __call__(self, wave: Tensor) -> tuple[Tensor, Tensor]:
        batch, length = wave.shape
        if length == 0:
            raise SahError("CLAP cannot embed an empty waveform")
        longer = False
        if length > self.max_samples and self.truncation == "rand_trunc":
            features, longer = self.log_mel(wave[:, : self.max_samples]).unsqueeze(1), True
        elif length > self.max_samples:
            mel = self.log_mel(wave)
            chunk = self.max_samples // self.hop_length + 1
            total = mel.shape[1]
            if chunk == total:  # less than a hop longer: the extractor uses the whole clip, not longer
                features = mel.unsqueeze(1).expand(-1, 4, -1, -1)
            else:
                crops = [mel[:, s : s + chunk] for s in self.fusion_starts(total, chunk)]
                shrunk = F.interpolate(mel.unsqueeze(1), size=(chunk, mel.shape[-1]), mode="bilinear",
                                       align_corners=False).squeeze(1)
                features, longer = torch.stack([shrunk, *crops], dim=1), True
        else:
            mel = self.log_mel(self._pad(wave) if length < self.max_samples else wave)
            features = mel.unsqueeze(1).expand(-1, 4, -1, -1) if self.truncation == "fusion" else mel.unsqueeze(1)
        return features, torch.full((batch, 1), longer, dtype=torch.bool, device=wave.device)


class ClapEncoder:
    """A frozen CLAP model with its tokenizer and torch front end. Embeddings are float32 (float64
    for a float64 model) and unit-normalised."""

    def __init__(self, model: str, device: torch.device, dtype: torch.dtype, flag: str = "--binder-model") -> None:
        from transformers import AutoTokenizer, ClapFeatureExtractor, ClapModel

        self.model = load_pretrained(ClapModel.from_pretrained, model, flag=flag, what="CLAP model")
        self.model.to(device=device, dtype=dtype).eval().requires_grad_(False)
        self.tokenizer = load_pretrained(AutoTokenizer.from_pretrained, model, flag=flag, what="CLAP tokenizer")
        extractor = load_pretrained(ClapFeatureExtractor.from_pretrained, model, flag=flag,
                                    what="CLAP feature extractor")
        self.front_end = ClapFrontEnd.from_feature_extractor(extractor).to(device)
        self.fused = bool(self.model.config.audio_config.enable_fusion)
        self.device, self.dtype = device, dtype

    def model_inputs(self, waveform: Tensor, sample_rate: int) -> dict[str, Tensor]:
        """`[B, C, S]` at any rate → the keyword arguments of `ClapModel.get_audio_features`."""
        mono = float32_or_wider(waveform.to(self.device)).mean(dim=1)
        mono = resample(mono, int(sample_rate), self.front_end.sample_rate)
        features, is_longer = self.front_end(mono)
        if not self.fused:
            # an unfused model reads one mel; a `fusion` extractor's four are copies when not longer
            features = features[:, :1]
        elif features.shape[1] == 1:
            is_longer = torch.zeros_like(is_longer)  # no local crops to fuse
        return {"input_features": features.to(self.dtype), "is_longer": is_longer}

    def embed_audio(self, waveform: Tensor, sample_rate: int) -> Tensor:
        out = features(self.model.get_audio_features(**self.model_inputs(waveform, sample_rate)))
        return F.normalize(float32_or_wider(out), dim=-1)

    def embed_text(self, prompts: list[str], batch_size: int = 64) -> Tensor:
        with torch.no_grad():
            rows = []
            for i in range(0, len(prompts), batch_size):
                tokens = self.tokenizer(prompts[i : i + batch_size], padding=True, truncation=True,
                                        return_tensors="pt").to(self.device)
                rows.append(float32_or_wider(features(self.model.get_text_features(**tokens))))
            return F.normalize(torch.cat(rows), dim=-1)


class ClapBinder(Binder):
    name: ClassVar[str] = "clap"
    #: LAION-CLAP checkpoints are Apache-2.0 (laion/clap-htsat-* model cards, `license: apache-2.0`)
    licence: ClassVar[Licence | None] = Licence("Apache-2.0", "Apache-2.0", True,
                                                "https://huggingface.co/laion/clap-htsat-unfused")
    modalities: ClassVar[frozenset[Modality]] = frozenset({Modality.AUDIO, Modality.TEXT})
    description: ClassVar[str] = "CLAP (transformers ClapModel): audio ↔ text"
    default_model: ClassVar[str | None] = "laion/clap-htsat-unfused"
    options: ClassVar[dict[str, Any]] = {}

    def __init__(self, model: str | None = None, device: str | torch.device = "cpu",
                 dtype: torch.dtype | None = None, **options: Any) -> None:
        super().__init__(model, device, dtype, **options)
        dtype = self.dtype  # None: float32
        self.encoder = ClapEncoder(self.model, self.device, dtype)

    def embed(self, media: Media) -> Tensor:
        if isinstance(media, Audio):
            return self.encoder.embed_audio(media.waveform, media.sample_rate)
        if isinstance(media, Text):
            return self.encoder.embed_text(media.prompts)
        raise SahError(f"binder 'clap' embeds audio and text, not {type(media).__name__.lower()}")


@hookimpl
def register_binders(register: Any) -> None:
    register(ClapBinder)

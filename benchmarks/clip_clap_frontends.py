"""Cost of the differentiable CLIP / CLAP front ends next to transformers' own processors.

    python benchmarks/clip_clap_frontends.py

Prints, from one run on this machine: the torch CLAP front end (resample 16 kHz → 48 kHz + log-mel,
forward and backward) against `ClapFeatureExtractor` (numpy, forward only) on 10 s of audio, and
the torch CLIP preprocessing of 8 frames (forward and backward) against `CLIPImageProcessor` on the
same frames. No model weights are needed.
"""

from __future__ import annotations

import time

import numpy as np
import torch
from transformers import ClapFeatureExtractor, CLIPImageProcessor
from transformers.utils import logging as hf_logging

from sah.dsp import resample
from sah.plugins.binders.clap import ClapFrontEnd
from sah.plugins.binders.clip import ClipPreprocess


def best_of(fn, repeats: int = 5) -> float:
    times = []
    for _ in range(repeats):
        start = time.perf_counter()
        fn()
        times.append(time.perf_counter() - start)
    return min(times)


def main() -> None:
    torch.set_num_threads(1)
    hf_logging.set_verbosity_error()
    rng = np.random.default_rng(0)

    extractor = ClapFeatureExtractor(frequency_min=50, truncation="rand_trunc")  # laion/clap-htsat-unfused
    front_end = ClapFrontEnd.from_feature_extractor(extractor)
    wave16 = torch.from_numpy((0.1 * rng.standard_normal(160_000)).astype(np.float32))[None]
    wave48 = resample(wave16, 16_000, 48_000)[0].numpy()

    def torch_audio() -> None:
        w = wave16.clone().requires_grad_(True)
        features, _ = front_end(resample(w, 16_000, 48_000))
        features.sum().backward()

    numpy_audio = best_of(lambda: extractor(wave48, sampling_rate=48_000, return_tensors="np"))
    torch_audio_s = best_of(torch_audio)
    print(f"CLAP front end, 10 s @16 kHz: torch fwd+bwd {torch_audio_s * 1e3:.1f} ms, "
          f"ClapFeatureExtractor fwd {numpy_audio * 1e3:.1f} ms, ratio torch/numpy {torch_audio_s / numpy_audio:.2f}")

    processor = CLIPImageProcessor()  # 224 px, as openai/clip-vit-large-patch14
    preprocess = ClipPreprocess.from_processor(processor)
    frames_u8 = (rng.random((8, 320, 512, 3)) * 255).astype(np.uint8)
    frames = torch.from_numpy(frames_u8).permute(0, 3, 1, 2).float() / 255

    def torch_image() -> None:
        x = frames.clone().requires_grad_(True)
        preprocess(x).sum().backward()

    pil = best_of(lambda: processor(images=list(frames_u8), return_tensors="np"))
    torch_image_s = best_of(torch_image)
    print(f"CLIP preprocessing, 8 frames 512x320 -> 224: torch fwd+bwd {torch_image_s * 1e3:.1f} ms, "
          f"CLIPImageProcessor fwd {pil * 1e3:.1f} ms, ratio torch/PIL {torch_image_s / pil:.2f}")


if __name__ == "__main__":
    main()

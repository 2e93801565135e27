"""Frame-subset decode: what one guided A2V step costs when the VAE decodes only the frames the
binder looks at, against decoding every frame.

A tiny-but-not-trivial AnimateDiff (random weights of the real architectures: a 2-level UNet with
motion modules, an SD-layout 4-level VAE) makes 16 frames of 128×128; the toy binder looks at 8 of
them. One guided step is what the aligner does in its guidance window: the denoiser's noise
prediction (no gradient), x̂0, a differentiable decode, the binder's embedding, `1 - cos` against
the condition, the gradient to the latent, an `ngd` update and the scheduler step. Every variant
runs in this one process; time is the median over `--repeat` steps after a warm-up, peak memory is
the most the step adds above what was resident before it (CPU: VmHWM after resetting it through
/proc/self/clear_refs, with glibc returning large blocks at once; CUDA: max_memory_allocated).

    python benchmarks/video_frame_subset.py
    python benchmarks/video_frame_subset.py --frames 16 --size 128 --repeat 5 --device cuda
"""

from __future__ import annotations

import argparse
import statistics
import sys
import tempfile
import time
from pathlib import Path

import torch
import torch.nn.functional as F

import sah
from sah.aligner import ngd
from sah.generator import GenerationRequest
from sah.media import Audio

sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "tests"))
from test_video_generators import make_animatediff  # noqa: E402  (the tests' tiny-model builder)

from sah.plugins.generators.animatediff import AnimateDiffGenerator  # noqa: E402

sys.path.insert(0, str(Path(__file__).resolve().parent))
from _memory import PeakMemory  # noqa: E402


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--frames", type=int, default=16)
    parser.add_argument("--size", type=int, default=128, help="frame height and width")
    parser.add_argument("--repeat", type=int, default=5)
    parser.add_argument("--device", default="cpu")
    parser.add_argument("--threads", type=int, default=1)
    args = parser.parse_args()
    torch.set_num_threads(args.threads)
    device = torch.device(args.device)

    with tempfile.TemporaryDirectory() as tmp:
        base, adapter = make_animatediff(Path(tmp), blocks=(32, 64), vae_blocks=(32, 64, 64, 64),
                                         layers_per_block=1, vae_layers=2)
        generator = AnimateDiffGenerator(model=str(base), motion_adapter=str(adapter), device=device,
                                         frames=args.frames, height=args.size, width=args.size)
    binder = sah.registry.get_registry().binder("toy")(device=device)
    seconds = 1.0 * args.frames / generator.fps()
    t = torch.arange(int(16000 * seconds)) / 16000
    condition = binder.embed(Audio(0.4 * torch.sin(2 * torch.pi * 750 * t)[None], 16000)).detach()
    trajectory = generator.prepare(GenerationRequest(["a cat"], [0], num_steps=10, cfg_scale=7.5))
    index = 2
    toy_frames = binder.video_frames(args.frames, generator.fps())
    variants = {
        f"all {args.frames} frames": None,
        f"binder's {len(toy_frames)} frames": toy_frames,
        "4 frames": [round(i * (args.frames - 1) / 3) for i in range(4)],
    }

    def sync() -> None:
        if device.type == "cuda":
            torch.cuda.synchronize()

    def guided_step(frames: list[int] | None) -> tuple[float, float]:
        """What sah.aligner does per guided step, with the same calls into the generator; returns
        the seconds of the whole step and of its guidance part (x̂0 → decode → embed → gradient)."""
        sync()
        start = time.perf_counter()
        with torch.no_grad():
            noise_pred = generator.predict_noise(trajectory, trajectory.latents, index)
        sync()
        guidance_start = time.perf_counter()
        leaf = trajectory.latents.detach().requires_grad_(True)
        with torch.enable_grad():
            x0 = generator.predict_x0(trajectory, leaf, noise_pred, index)
            embedding = binder.embed(generator.decode(x0, frames=frames))
            loss = 1 - F.cosine_similarity(embedding.float(), condition.float(), dim=-1)
            (grad,) = torch.autograd.grad(loss.sum(), leaf)
        with torch.no_grad():
            latents = ngd(leaf.detach().float(), grad.float(), {}, 0.03).to(leaf.dtype)
            sync()
            guidance_end = time.perf_counter()
            # DDIM keeps no state between steps, so repeating step `index` repeats the same work
            generator.step(trajectory, latents, noise_pred, index)
        sync()
        end = time.perf_counter()
        return end - start, guidance_end - guidance_start

    memory = PeakMemory(device)
    print(f"AnimateDiff (tiny: UNet 32/64 + motion modules, VAE 32/64/64/64), {args.frames} frames of "
          f"{args.size}×{args.size}, CFG on, toy binder, device {device}, {args.threads} thread(s), "
          f"median of {args.repeat}")
    peaks = {}
    for name, frames in variants.items():
        guided_step(frames)  # warm-up
        peaks[name] = memory.measure(lambda frames=frames: guided_step(frames))
    times: dict[str, list[tuple[float, float]]] = {name: [] for name in variants}
    for _ in range(args.repeat):  # round robin, so that load on a shared machine hits every variant alike
        for name, frames in variants.items():
            times[name].append(guided_step(frames))
    rows = [(name, statistics.median(t for t, _ in runs), statistics.median(g for _, g in runs), peaks[name])
            for name, runs in times.items()]
    _, full_s, full_g, full_peak = rows[0]
    print(f"{'decoded':<22}{'step ms':>9}{'ratio':>7}{'guidance ms':>13}{'ratio':>7}{'peak MiB':>10}{'ratio':>7}")
    for name, step_s, guide_s, peak in rows:
        print(f"{name:<22}{step_s * 1000:>9.0f}{step_s / full_s:>7.2f}{guide_s * 1000:>13.0f}{guide_s / full_g:>7.2f}"
              f"{peak / 2**20:>10.0f}{peak / full_peak:>7.2f}")
    print("ratio: against decoding all frames; guidance = x̂0, decode, binder, backward, update (no denoiser)")


if __name__ == "__main__":
    main()

"""Time and peak memory of one ImageBind embed forward+backward, float32 vs bfloat16, on CPU.

Full-size (imagebind_huge) audio and vision towers with random weights: a 4 s, 44.1 kHz stereo
clip and an 8-frame 512x320 video at 8 fps, through `ImageBindBinder.embed` with its default
options, then `1 - cos` between the two and a backward pass to the raw waveform and frames.
Each dtype runs in its own subprocess so its peak resident memory is its own.

    python benchmarks/imagebind_embed.py [--threads N]
"""

from __future__ import annotations

import argparse
import json
import subprocess
import sys
import time
from pathlib import Path


def _rss_kib(field: str) -> int:
    for line in Path("/proc/self/status").read_text().splitlines():
        if line.startswith(field + ":"):
            return int(line.split()[1])
    return 0


def measure(dtype_name: str, threads: int) -> dict[str, float]:
    import torch

    from sah.media import Audio, Video
    from sah.plugins.binders.imagebind import ImageBindBinder, ImageBindModel

    torch.set_num_threads(threads)
    dtype = getattr(torch, dtype_name)
    torch.manual_seed(0)
    model = ImageBindModel(towers=("vision", "audio")).to(dtype).eval().requires_grad_(False)
    binder = ImageBindBinder.from_model(model)
    wave = (0.1 * torch.randn(1, 2, 4 * 44100)).requires_grad_(True)
    frames = torch.rand(1, 8, 3, 320, 512).requires_grad_(True)

    weights_kib = _rss_kib("VmRSS")
    Path("/proc/self/clear_refs").write_text("5")  # reset the peak-RSS counter to the current RSS
    start = time.perf_counter()
    loss = 1 - binder.similarity(binder.embed(Audio(wave, 44100)), binder.embed(Video(frames, 8.0)))
    loss.sum().backward()
    seconds = time.perf_counter() - start
    finite = bool(torch.isfinite(wave.grad).all() and torch.isfinite(frames.grad).all())
    return {"seconds": seconds, "peak_gib": _rss_kib("VmHWM") / 2**20, "weights_gib": weights_kib / 2**20,
            "extra_gib": (_rss_kib("VmHWM") - weights_kib) / 2**20, "finite_grads": finite}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--threads", type=int, default=2)
    parser.add_argument("--child", choices=["float32", "bfloat16"], help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.child:
        print(json.dumps(measure(args.child, args.threads)))
        return
    results = {}
    for dtype in ("float32", "bfloat16"):
        out = subprocess.run([sys.executable, __file__, "--child", dtype, "--threads", str(args.threads)],
                             check=True, capture_output=True, text=True).stdout
        results[dtype] = json.loads(out.strip().splitlines()[-1])
    print(f"ImageBind huge audio+vision towers, random weights, CPU, {args.threads} threads; one embed "
          "forward+backward of a 4 s 44.1 kHz stereo clip (2 audio clips of 2 s, the 'auto' default) "
          "and an 8-frame 512x320 video "
          "(default options: 1 temporal clip x 3 crops)")
    print(f"{'dtype':<10}{'time s':>9}{'RSS after build GiB':>22}{'peak RSS GiB':>15}{'peak - build GiB':>18}"
          f"{'finite grads':>14}")
    for dtype, r in results.items():
        print(f"{dtype:<10}{r['seconds']:>9.1f}{r['weights_gib']:>22.2f}{r['peak_gib']:>15.2f}{r['extra_gib']:>18.2f}"
              f"{str(r['finite_grads']):>14}")
    f32, bf16 = results["float32"], results["bfloat16"]
    print(f"bfloat16 / float32: time {bf16['seconds'] / f32['seconds']:.2f}x, peak RSS "
          f"{bf16['peak_gib'] / f32['peak_gib']:.2f}x, peak above weights {bf16['extra_gib'] / f32['extra_gib']:.2f}x")


if __name__ == "__main__":
    main()

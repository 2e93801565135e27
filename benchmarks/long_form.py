"""Long-form V2A on the toy world: does the cost grow with the length, and no faster?

A toy video whose class changes every 2 s, of 10 s, 60 s and 600 s, dubbed by the default (toy)
V2A run in 1 s windows. For each length it prints the seconds of generation per second of output,
CPU seconds per second of output (process time, which other load on the machine does not
inflate), the process's peak resident memory and its rise during the generation (RSS, see
_memory.py; the rise includes the output waveform itself, 64 kB per second), and the share of 1 s
segments whose sound has the video's class (the toy oracle, 0.25 s either side of a change left out).

    python benchmarks/long_form.py                    # 10 s, 60 s, 600 s
    python benchmarks/long_form.py --lengths 10 60 --steps 20
"""

from __future__ import annotations

import argparse
import sys
import time
from pathlib import Path

import torch

import sah
from sah.media import Audio, Video
from sah.plugins.toy import oracle, world

sys.path.insert(0, str(Path(__file__).resolve().parent))
from _memory import PeakMemory  # noqa: E402

BLOCK = 2.0  # seconds per class in the condition


def class_sequence(seconds: float, seed: int = 0) -> list[int]:
    g = torch.Generator().manual_seed(seed)
    return torch.randint(0, world.NUM_CLASSES, (int(seconds / BLOCK + 0.999),), generator=g).tolist()


def condition(seconds: float, seed: int = 0) -> tuple[Video, list[int]]:
    """A toy video of `seconds`, its class changing every BLOCK seconds."""
    classes = class_sequence(seconds, seed)
    g = torch.Generator().manual_seed(seed + 1)
    clips = [world.make_video([k], g)[0] for k in classes]  # [8, 3, H, W] each: one second at 8 fps
    per_block = int(BLOCK * world.FPS)
    frames = torch.cat([clip.repeat(per_block // clip.shape[0] + 1, 1, 1, 1)[:per_block] for clip in clips])
    frames = frames[: int(round(seconds * world.FPS))]
    return Video(frames[None], fps=world.FPS), classes


def segment_hits(audio: Audio, classes: list[int], margin: float = 0.25) -> float:
    """The share of 1 s segments (inside a class block, `margin` away from its edges) whose tone
    the oracle gives the block's class."""
    rate, hits, total = audio.sample_rate, 0, 0
    for block, k in enumerate(classes):
        start, end = block * BLOCK + margin, (block + 1) * BLOCK - margin
        t = start
        while t + 1.0 <= end + 1e-9 and (t + 1.0) * rate <= audio.num_samples:
            piece = Audio(audio.waveform[..., int(t * rate):int(t * rate) + rate], rate)
            hits += int(oracle.audio_class(piece)[0]) == k
            total += 1
            t += 0.5
    return hits / max(total, 1)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--lengths", type=float, nargs="+", default=[10.0, 60.0, 600.0])
    parser.add_argument("--steps", type=int, default=50)
    parser.add_argument("--threads", type=int, default=1)
    args = parser.parse_args()
    torch.set_num_threads(args.threads)

    print(f"toy V2A, {args.steps} DDIM steps, 1 s windows overlapping by 25 %, classes changing every {BLOCK:g} s\n")
    print("| output s | windows | wall s | CPU s per output s | peak RSS MiB | rise MiB "
          "| segments with the video's class |")
    print("|---|---|---|---|---|---|---|")
    warm, _ = condition(3.0, seed=99)
    warm_plan = sah.plan({"run": {"steps": args.steps, "device": "cpu"}}, condition=warm)
    models = sah.load(warm_plan)
    sah.generate(warm_plan, models)  # first calls (lazy imports, allocator growth) are not the length's cost
    for seconds in args.lengths:
        video, classes = condition(seconds)
        plan = sah.plan({"run": {"steps": args.steps, "device": "cpu"}, "output": {"dir": "/nonexistent-unused"}},
                        condition=video)
        windows = sah.api.output_windows(plan.config, list(models.generators.values()), seconds)
        with PeakMemory(torch.device("cpu")) as memory:
            start, cpu = time.perf_counter(), time.process_time()
            result = sah.generate(plan, models)
            elapsed, cpu = time.perf_counter() - start, time.process_time() - cpu
        peak = memory.start + memory.bytes
        audio = result.samples[0].audio
        print(f"| {seconds:g} | {len(windows or [0])} | {elapsed:.1f} | {cpu / seconds:.3f} | {peak / 2**20:.0f} | "
              f"{memory.mib:.1f} | {segment_hits(audio, classes):.3f} |", flush=True)


if __name__ == "__main__":
    main()

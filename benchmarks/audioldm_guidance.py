"""What does guidance cost on AudioLDM? Guided/unguided wall time and peak memory, in one run.

By default it builds the tiny random AudioLDM of tests/test_audioldm.py (real architectures, toy
size) and runs V2A with the toy binder on a made-up clip, so it works offline on a CPU. Rows:
unguided, guided with 1 and 2 optimisation steps per denoising step, and guided with chunked decode.

Peak memory: on CUDA, `torch.cuda.max_memory_allocated` (reset per row). On CPU, the rise of the
process's peak resident set size (VmHWM in /proc/self/status, reset through /proc/self/clear_refs)
over the resident size at the row's start, after `malloc_trim` returns freed heap to the OS —
i.e. the extra RSS the row needed, counting allocator slack; Linux only.

    python benchmarks/audioldm_guidance.py                       # tiny model, CPU
    python benchmarks/audioldm_guidance.py --model cvssp/audioldm-s-full-v2 --device cuda --duration 5
"""

from __future__ import annotations

import argparse
import statistics
import sys
import tempfile
import time
from pathlib import Path

import torch

import sah
from sah.api import Models
from sah.media import Video

sys.path.insert(0, str(Path(__file__).resolve().parent.parent / "tests"))
sys.path.insert(0, str(Path(__file__).resolve().parent))
from _memory import PeakMemory  # noqa: E402


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--model", help="AudioLDM hub id or folder (default: a tiny random one built here)")
    parser.add_argument("--device", default="cpu")
    parser.add_argument("--dtype", default="float32", choices=["float32", "float16", "bfloat16"])
    parser.add_argument("--duration", type=float, default=1.0, help="seconds of audio")
    parser.add_argument("--steps", type=int, default=10)
    parser.add_argument("--repeats", type=int, default=3, help="timed runs per row; the median is reported")
    args = parser.parse_args()
    torch.manual_seed(0)
    if args.device == "cpu":
        torch.set_num_threads(1)

    with tempfile.TemporaryDirectory() as tmp:
        model = args.model
        if model is None:
            from test_audioldm import save_tiny_audioldm

            model = str(save_tiny_audioldm(Path(tmp) / "tiny-audioldm"))
        frames = torch.zeros(8, 3, 32, 32)
        frames[:, :, 4:12, 20:28] = 1.0  # a bright square in the upper right
        clip = Video(frames, fps=8.0)
        base = {"run": {"steps": args.steps, "device": args.device, "dtype": args.dtype},
                "audio": {"generator": "audioldm", "model": model, "duration": args.duration},
                "binder": {"name": "toy"}, "output": {"dir": tmp}}
        rows = {
            "unguided": {"guidance": {"enabled": False}},
            "guided, 1 opt step": {"guidance": {"opt_steps": 1}},
            "guided, 2 opt steps": {"guidance": {"opt_steps": 2}},
            "guided, 1 opt step, decode_chunk=0.1s": {"guidance": {"opt_steps": 1}, "audio": {"decode_chunk": 0.1}},
        }
        plans = {name: sah.plan(base, layer, condition=clip) for name, layer in rows.items()}
        # one set of weights for the rows that share them; the chunked row needs its own generator
        models = sah.load(plans["guided, 1 opt step"])
        chunked = sah.load(plans["guided, 1 opt step, decode_chunk=0.1s"])
        results = {}
        for name, plan in plans.items():
            row_models = chunked if "decode_chunk" in name else Models(
                models.generators, models.binder if plan.binder else None)
            sah.generate(plan, row_models)  # warm-up: first-call allocations and kernel selection
            seconds, peaks = [], []
            for _ in range(args.repeats):
                with PeakMemory(torch.device(args.device)) as memory:
                    start = time.perf_counter()
                    sah.generate(plan, row_models)
                    if args.device.startswith("cuda"):
                        torch.cuda.synchronize()
                    seconds.append(time.perf_counter() - start)
                peaks.append(memory.mib)
            results[name] = (statistics.median(seconds), max(peaks))

    gen = models.generators[sah.media.Modality.AUDIO]
    print(f"AudioLDM guidance cost — model {'tiny random (tests/test_audioldm.py)' if args.model is None else model}, "
          f"device {args.device}, dtype {args.dtype}, {args.duration:g} s audio (latent {tuple(gen.latent_shape)}), "
          f"{args.steps} DDIM steps, guidance window [0.2, 1), batch 1, median of {args.repeats} runs")
    memory_kind = "CUDA max_memory_allocated" if args.device.startswith("cuda") else "peak RSS rise (VmHWM)"
    print(f"{'row':<40} {'seconds':>9} {'× unguided':>11} {'peak MiB':>9}   ({memory_kind})")
    unguided_s, unguided_mib = results["unguided"]
    for name, (seconds, mib) in results.items():
        print(f"{name:<40} {seconds:>9.3f} {seconds / unguided_s:>11.2f} {mib:>9.1f}")


if __name__ == "__main__":
    main()

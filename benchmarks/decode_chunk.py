"""Memory for time: AudioLDM's chunked, checkpointed decode (`audio.decode_chunk`) during guidance.

A guided step decodes x̂0 (VAE + HiFi-GAN vocoder) and runs the backward pass through that decode.
With `decode_chunk = S` the latent is decoded S seconds at a time, each chunk with 8 latent frames
of context on either side, and each chunk's forward is checkpointed: its activations are dropped
and recomputed in the backward pass. This benchmark measures what that trades, on FULL-SIZE
AudioLDM-m with random weights (benchmarks/gpu_presets.py's `save_full_audioldm`, loaded through
the plugin's own path), 10 s of audio, float32, on the CPU: for each chunk length, one decode of a
random x̂0 that requires grad, then the backward of a fixed random projection of the waveform, timed
(forward, backward) and with its peak memory (benchmarks/_memory.py: the process's peak RSS above
the start), and how far the waveform and the gradient are from the whole decode's (relative error).

Each variant is a generator of its own made with that option (all loaded first, untimed); one
untimed decode and backward warms each up (the first pass of a size pays for fresh memory). Every
variant is timed first and its peak memory measured after, in separate passes: measuring memory
lowers glibc's mmap threshold for the process, which slows allocation.

    python benchmarks/decode_chunk.py                     # full size, 10 s, chunks 0 (whole), 2 and 1 s: ~13 GB
    python benchmarks/decode_chunk.py --chunks 0 4 2 --repeats 2
    python benchmarks/decode_chunk.py --tiny              # the tests' tiny AudioLDM: seconds
"""

from __future__ import annotations

import argparse
import gc
import statistics
import sys
import tempfile
import time
from pathlib import Path

import torch

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT / "tests"))
sys.path.insert(0, str(ROOT / "benchmarks"))
from _memory import PeakMemory  # noqa: E402


def build(folder: Path, tiny: bool) -> Path:
    path = folder / ("audioldm-tiny" if tiny else "audioldm-m")
    if not (path / "model_index.json").is_file():
        torch.manual_seed(0)
        if tiny:
            from test_audioldm import save_tiny_audioldm

            save_tiny_audioldm(path)
        else:
            from gpu_presets import save_full_audioldm

            save_full_audioldm(path)
    return path


def decode_and_backward(generator, x0: torch.Tensor, probe: torch.Tensor | None) -> tuple[float, float, dict]:
    """One decode of `x0` and the backward of `probe`·waveform: (forward s, backward s, tensors)."""
    leaf = x0.clone().requires_grad_(True)
    start = time.perf_counter()
    wave = generator.decode(leaf).waveform
    middle = time.perf_counter()
    if probe is None:
        probe = torch.randn(wave.shape, generator=torch.Generator().manual_seed(1))
    (grad,) = torch.autograd.grad((wave * probe).sum(), leaf)
    end = time.perf_counter()
    return middle - start, end - middle, {"wave": wave.detach(), "grad": grad.detach(), "probe": probe}


def measure(model: Path, chunks: list[float], seconds: float, repeats: int) -> list[dict]:
    """Every variant timed first, then every variant's peak memory: the memory measurement lowers
    glibc's mmap threshold for the whole process (benchmarks/_memory.py), which slows allocation."""
    from sah.plugins.generators.audioldm import AudioLDMGenerator

    generators = [AudioLDMGenerator(str(model), duration=seconds, decode_chunk=chunk) for chunk in chunks]
    x0 = torch.randn(1, *generators[0].latent_shape_for(seconds), generator=torch.Generator().manual_seed(0))
    runs, probe = [], None
    for chunk, generator in zip(chunks, generators):
        probe = decode_and_backward(generator, x0, probe)[2]["probe"]  # warm-up: the buffers of a whole pass
        forward, backward = [], []
        for _ in range(repeats):
            f, b, out = decode_and_backward(generator, x0, probe)
            forward.append(f)
            backward.append(b)
        probe = out["probe"]
        runs.append({"chunk": chunk, "chunk_frames": generator.chunk_frames, "frames": x0.shape[2],
                     "forward": statistics.median(forward), "backward": statistics.median(backward), **out})
        gc.collect()
    for run, generator in zip(runs, generators):
        peaks = []
        for _ in range(repeats):
            with PeakMemory(torch.device("cpu")) as memory:
                decode_and_backward(generator, x0, probe)
            peaks.append(memory.mib)
        run["peak"] = statistics.median(peaks)
    return runs


def relative(a: torch.Tensor, b: torch.Tensor) -> float:
    return float((a - b).double().norm() / b.double().norm().clamp_min(1e-30))


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--tiny", action="store_true", help="the tests' tiny AudioLDM, 1 s (a smoke test)")
    parser.add_argument("--seconds", type=float, help="seconds of audio (default 10; --tiny: 1)")
    parser.add_argument("--chunks", type=float, nargs="+", help="decode_chunk values; 0 (the whole decode) first "
                                                                "(default 0 2 1; --tiny: 0 0.1 0.05)")
    parser.add_argument("--repeats", type=int, default=1, help="timed decodes per variant; medians are printed")
    parser.add_argument("--threads", type=int, default=1)
    parser.add_argument("--models", type=Path, help="keep the built model in this folder and reuse it")
    args = parser.parse_args()
    seconds = args.seconds or (1.0 if args.tiny else 10.0)
    chunks = args.chunks or ([0.0, 0.1, 0.05] if args.tiny else [0.0, 2.0, 1.0])
    if chunks[0] != 0:
        chunks = [0.0, *chunks]
    torch.set_num_threads(args.threads)
    wall = time.perf_counter()
    with tempfile.TemporaryDirectory() as tmp:
        folder = args.models or Path(tmp)
        folder.mkdir(parents=True, exist_ok=True)
        model = build(folder, args.tiny)
        runs = measure(model, chunks, seconds, args.repeats)
    whole = runs[0]
    size = "tiny" if args.tiny else "full-size"
    print(f"decode forward + backward, {size} random-weight AudioLDM{'' if args.tiny else '-m'}, {seconds:g} s of "
          f"audio (latent frames: {whole['frames']}), CPU, {args.threads} thread"
          f"{'s' if args.threads > 1 else ''}, float32; median of {args.repeats}; peak memory: RSS rise over the "
          f"decode and its backward; total {time.perf_counter() - wall:.0f} s\n")
    print("| decode_chunk s | chunk frames | forward s | backward s | forward + backward s | peak MiB | "
          "waveform rel. error | gradient rel. error |")
    print("|---|---|---|---|---|---|---|---|")
    for run in runs:
        print(f"| {run['chunk']:g} | {run['chunk_frames'] or run['frames']} | {run['forward']:.3f} | "
              f"{run['backward']:.3f} | {run['forward'] + run['backward']:.3f} | {run['peak']:.0f} | "
              f"{relative(run['wave'], whole['wave']):.2e} | {relative(run['grad'], whole['grad']):.2e} |")
    print()
    for run in runs[1:]:
        seconds_ratio = (run["forward"] + run["backward"]) / (whole["forward"] + whole["backward"])
        memory_ratio = run["peak"] / whole["peak"] if whole["peak"] > 0 else float("nan")
        print(f"decode_chunk = {run['chunk']:g}: time {seconds_ratio:.3f}x, peak memory {memory_ratio:.3f}x "
              "of the whole decode")


if __name__ == "__main__":
    main()

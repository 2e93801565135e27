"""Memory for time: AudioLDM's chunked, checkpointed decode (`audio.decode_chunk`) during guidance.

A guided step decodes x̂0 (VAE + HiFi-GAN vocoder) and runs the backward pass through that decode.
With `decode_chunk = S` the latent is decoded S seconds at a time, each chunk with 8 latent frames
of context on either side, and each chunk's forward is checkpointed: its activations are dropped
and recomputed in the backward pass. This benchmark measures what that trades, on FULL-SIZE
AudioLDM-m with random weights (benchmarks/gpu_presets.py's `save_full_audioldm`, loaded through
the plugin's own path), 10 s of audio, float32, on the CPU: for each chunk length, one decode of a
random x̂0 that requires grad, then the backward of a fixed random projection of the waveform, timed
(forward, backward) and with its peak memory (benchmarks/_memory.py: RSS above the start on the CPU,
`max_memory_allocated` on CUDA), and how far the waveform and the gradient are from the whole
decode's (relative error).

Each variant is a generator of its own made with that option (the models load once per variant,
untimed); one untimed decode forward warms up first.

    python benchmarks/decode_chunk.py                     # full size, 10 s, chunks 0 (whole), 2 and 1 s: ~8 GB
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


def measure(model: Path, chunk: float, seconds: float, repeats: int, x0: torch.Tensor | None,
            probe: torch.Tensor | None) -> dict:
    from sah.plugins.generators.audioldm import AudioLDMGenerator

    generator = AudioLDMGenerator(str(model), duration=seconds, decode_chunk=chunk)
    if x0 is None:
        x0 = torch.randn(1, *generator.latent_shape_for(seconds), generator=torch.Generator().manual_seed(0))
    with torch.no_grad():
        generator.decode(x0[:, :, : max(1, x0.shape[2] // 8)])  # warm-up
    forward, backward, peaks = [], [], []
    for _ in range(repeats):
        leaf = x0.clone().requires_grad_(True)
        with PeakMemory(torch.device("cpu")) as memory:
            start = time.perf_counter()
            wave = generator.decode(leaf).waveform
            middle = time.perf_counter()
            if probe is None:
                probe = torch.randn(wave.shape, generator=torch.Generator().manual_seed(1))
            (grad,) = torch.autograd.grad((wave * probe).sum(), leaf)
            end = time.perf_counter()
        forward.append(middle - start)
        backward.append(end - middle)
        peaks.append(memory.mib)
    result = {"chunk": chunk, "chunk_frames": generator.chunk_frames, "frames": x0.shape[2],
              "forward": statistics.median(forward), "backward": statistics.median(backward),
              "peak": statistics.median(peaks), "wave": wave.detach(), "grad": grad.detach(), "x0": x0,
              "probe": probe}
    del generator
    gc.collect()
    return result


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
        runs = []
        for chunk in chunks:
            x0 = runs[0]["x0"] if runs else None
            probe = runs[0]["probe"] if runs else None
            runs.append(measure(model, chunk, seconds, args.repeats, x0, probe))
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

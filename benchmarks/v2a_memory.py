"""Peak memory of a full-size V2A run with and without releasing the binder's unused towers.

`sah.generate(..., release=True)` (what `sah run` does) lets the binder drop what the guidance
never embeds again as soon as the one-time embeddings no longer need it: ImageBind's text tower
once the prompt is embedded, its vision tower once the video condition is (1.4 and 2.5 GB in
float32 for ImageBind huge) in a V2A run. This benchmark runs
the same V2A run twice, each in a fresh subprocess so that each peak is its own: `release=True`
and `release=False`, and prints the peak resident memory of each, the difference, the wall time
and the seconds per stage (`RunResult.cost`, sah/cost.py).

The models are random-weight FULL-SIZE AudioLDM-m and ImageBind huge (benchmarks/gpu_presets.py's
`build_models`), saved to a temporary folder (float16 on disk) and loaded, float32, through the
plugins' own loading path (`sah.load`), as `sah run` does: the paper-v2a preset, a made-up video
condition (a bright square moving over noise, 224x224, 8 fps), its audio as long as the video, and
guidance on every step (window "progress", start 0). Guidance holds no state from step to step,
so its peak memory does not grow with the number of steps: a few steps measure it (the script
prints the peak after the first guided step and after the last to show it).

Memory on the CPU (Linux): VmHWM, the kernel's peak resident set of the process, reset through
/proc/self/clear_refs (benchmarks/_memory.py explains). "start" is the RSS after imports, before
the models load; "peak" is the highest RSS from then on (load, condition and prompt embedding,
release, guidance); "rise" is peak - start. The peak is also split at the start of the guidance
loop: "before guidance" covers the load and the one-time embeddings, "in guidance" the loop.
glibc's malloc is left as `sah run` leaves it.

    python benchmarks/v2a_memory.py                      # full size, CPU, 1 thread: ~10 GB RAM per run
    python benchmarks/v2a_memory.py --seconds 4 --steps 3
    python benchmarks/v2a_memory.py --tiny               # tiny models (the tests'): under a minute

Measured (2-core CPU, 1 thread, 4 s video, 3 steps): peak RSS 10175 MiB kept, 6982 MiB released,
3.35 GB lower; the released run peaks while the vision tower loads (its float16 tensors from the
file and their float32 copies resident together), above its guidance peak (6378 MiB).
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parents[1]
BENCHMARKS = ROOT / "benchmarks"
PRESET = "paper-v2a"
MIB = 2**20


def _setup_child(threads: int) -> None:
    import torch

    torch.set_num_threads(threads)
    sys.path.insert(0, str(ROOT / "tests"))
    sys.path.insert(0, str(BENCHMARKS))


def build(folder: Path, tiny: bool, threads: int) -> dict[str, str]:
    """Save the models paper-v2a needs (AudioLDM, ImageBind) into `folder`; their paths."""
    _setup_child(threads)
    import torch
    from gpu_presets import build_models

    paths = build_models(folder, tiny, torch.device("cpu"), [PRESET])
    return {name: str(path) for name, path in paths.items()}


def video(seconds: float, side: int):
    """A made-up video condition: a bright square moving left to right over dim noise, 8 fps."""
    import torch

    from sah.media import Video

    g = torch.Generator().manual_seed(0)
    n = max(int(round(8 * seconds)), 2)
    frames = torch.rand(n, 3, side, side, generator=g) * 0.1
    box = side // 4
    for i in range(n):
        x = int((side - box) * i / (n - 1))
        frames[i, :, side // 3: side // 3 + box, x: x + box] = 1.0
    return Video(frames, fps=8.0)


def measure(models: dict[str, str], release: bool, seconds: float, steps: int, side: int, threads: int,
            out_dir: str) -> dict[str, Any]:
    """One V2A run in this process: memory, times, stage seconds, the binder's towers after it."""
    _setup_child(threads)
    from _memory import reset_peak, status_kib  # on sys.path from _setup_child

    import sah
    import sah.api
    from sah.presets import load_preset

    condition = video(seconds, side)
    over = {"run": {"device": "cpu", "dtype": "float32", "prompt": "a dog barking", "seed": 0, "steps": steps},
            "audio": {"model": models["audioldm"]}, "binder": {"model": models["imagebind"]},
            "guidance": {"start": 0.0, "window": "progress"},
            "output": {"plot": False, "dir": out_dir}}
    plan = sah.plan(load_preset(PRESET), over, condition=condition)

    phases: dict[str, Any] = {"per_step_peak_kib": []}
    original_align = sah.api.align

    def align(*args: Any, **kwargs: Any) -> Any:
        # the guidance loop begins: the peak so far is the load's and the one-time embeddings'
        phases["before_guidance_peak_kib"] = status_kib("VmHWM")
        phases["guidance_start_kib"] = status_kib("VmRSS")
        reset_peak()
        return original_align(*args, **kwargs)

    def progress(tick: int, total: int, similarities: dict[str, float]) -> None:
        phases["per_step_peak_kib"].append(status_kib("VmHWM"))

    sah.api.align = align
    start_kib = status_kib("VmRSS")
    reset_peak()
    t0 = time.perf_counter()
    loaded = sah.load(plan)
    load_s = time.perf_counter() - t0
    t1 = time.perf_counter()
    result = sah.generate(plan, loaded, progress=progress, release=release)
    run_s = time.perf_counter() - t1
    wall_s = time.perf_counter() - t0
    guidance_peak_kib = status_kib("VmHWM")
    sah.api.align = original_align
    before = phases["before_guidance_peak_kib"]
    peak_kib = max(before, guidance_peak_kib)
    towers = sorted(loaded.binder._towers)
    if release:
        assert towers == ["audio"], f"after a released V2A run the binder holds {towers}, not only audio"
    waveform = result.samples[0].audio.waveform
    return {
        "release": release, "towers": towers, "load_s": load_s, "run_s": run_s, "wall_s": wall_s,
        "start_mib": start_kib / 1024, "peak_mib": peak_kib / 1024, "rise_mib": (peak_kib - start_kib) / 1024,
        "before_guidance_mib": before / 1024, "guidance_start_mib": phases["guidance_start_kib"] / 1024,
        "guidance_peak_mib": guidance_peak_kib / 1024,
        "per_step_peak_mib": [k / 1024 for k in phases["per_step_peak_kib"]],
        "stages": dict(result.cost.seconds), "cost_total_s": result.cost.total,
        "guided_steps": len(result.samples[0].trace), "side": side,
        "steps": steps, "audio_seconds": waveform.shape[-1] / result.samples[0].audio.sample_rate,
        "video_seconds": condition.duration, "threads": threads,
    }


def child(args: list[str]) -> dict[str, Any]:
    env = {**os.environ, "HF_HUB_OFFLINE": "1"}
    done = subprocess.run([sys.executable, __file__, *args], capture_output=True, text=True, env=env,
                          stdin=subprocess.DEVNULL)
    if done.returncode != 0:
        sys.stderr.write(done.stderr)
        raise SystemExit(f"v2a_memory: child {' '.join(args[:2])} exited {done.returncode}")
    return json.loads(done.stdout.strip().splitlines()[-1])


#: the stages in the order a run meets them (sah.cost), then any other
STAGE_ORDER = ("condition and prompt", "other", "denoiser", "scheduler", "x0", "decode", "binder forward",
               "backward", "update", "prepare")


#: the runs' names in the tables
NAMES = {"keep": "release=False", "release": "release=True"}


def report(runs: dict[str, dict[str, Any]], tiny: bool) -> None:
    kept, released = runs["keep"], runs["release"]
    size = "tiny" if tiny else "full-size (AudioLDM-m + ImageBind huge)"
    print(f"V2A run ({PRESET} preset), {size} random-weight models, CPU, {kept['threads']} thread(s), float32; "
          f"{kept['video_seconds']:g} s video condition (8 fps, {kept['side']}x{kept['side']}) -> "
          f"{kept['audio_seconds']:g} s audio, {kept['steps']} DDIM steps, {kept['guided_steps']} guided; "
          "each run in its own process")
    print("peak memory per guided step does not grow with the number of steps (nothing is kept from step to step): "
          "the peak after the first guided step and after the last are shown\n")
    head = ["run", "towers after", "load s", "generate s", "wall s", "start RSS MiB", "peak RSS MiB", "rise MiB",
            "peak before guidance MiB", "RSS at guidance start MiB", "peak in guidance MiB",
            "guidance peak after step 1 / last MiB"]
    print("| " + " | ".join(head) + " |")
    print("|" + "---|" * len(head))
    for key, r in runs.items():
        name = NAMES[key]
        steps = r["per_step_peak_mib"] or [float("nan")]
        print(f"| {name} | {'+'.join(r['towers'])} | {r['load_s']:.1f} | {r['run_s']:.1f} | {r['wall_s']:.1f} | "
              f"{r['start_mib']:.0f} | {r['peak_mib']:.0f} | {r['rise_mib']:.0f} | {r['before_guidance_mib']:.0f} | "
              f"{r['guidance_start_mib']:.0f} | {r['guidance_peak_mib']:.0f} | {steps[0]:.0f} / {steps[-1]:.0f} |")
    diff = kept["peak_mib"] - released["peak_mib"]
    gb = diff * MIB / 1e9
    verdict = "met" if gb >= 3.0 else "NOT met"
    print(f"\nrelease lowers the peak RSS by {diff:.0f} MiB = {gb:.2f} GB (target >= 3 GB: {verdict}); "
          f"wall time release / keep: {released['wall_s'] / kept['wall_s']:.2f}x")
    where = "before guidance" if released["before_guidance_mib"] >= released["guidance_peak_mib"] else "in guidance"
    print(f"the released run peaks {where} (before guidance {released['before_guidance_mib']:.0f} MiB, "
          f"in guidance {released['guidance_peak_mib']:.0f} MiB)")

    seen = {k for r in runs.values() for k in r["stages"]} - {"load"}  # 0 here: the models are loaded before
    stages = [k for k in STAGE_ORDER if k in seen] + sorted(seen - set(STAGE_ORDER))
    print("\nseconds per stage (RunResult.cost; load: sah.load, timed here; the releases count to "
          "'condition and prompt')\n")
    head = ["run", "load", *stages, "unstaged", "generate total"]
    print("| " + " | ".join(head) + " |")
    print("|" + "---|" * len(head))
    for key, r in runs.items():
        name = NAMES[key]
        cells = [f"{r['stages'].get(k, 0.0):.3f}" for k in stages]
        rest = r["cost_total_s"] - sum(r["stages"].values())
        print(f"| {name} | {r['load_s']:.3f} | " + " | ".join(cells) + f" | {rest:.3f} | {r['cost_total_s']:.3f} |")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--tiny", action="store_true", help="tiny models (the tests'), a smoke test of seconds")
    parser.add_argument("--seconds", type=float, default=None, help="seconds of video (default 4; tiny 1)")
    parser.add_argument("--steps", type=int, default=None, help="denoising steps, all guided (default 3; tiny 2)")
    parser.add_argument("--threads", type=int, default=1, help="torch threads per run (default 1)")
    parser.add_argument("--child", nargs=2, metavar=("WHAT", "JSON"), help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.child:
        what, spec = args.child[0], json.loads(args.child[1])
        out = build(Path(spec["folder"]), spec["tiny"], spec["threads"]) if what == "build" else measure(**spec)
        print(json.dumps(out))
        return

    seconds = args.seconds if args.seconds is not None else (1.0 if args.tiny else 4.0)
    steps = args.steps if args.steps is not None else (2 if args.tiny else 3)
    side = 32 if args.tiny else 224
    with tempfile.TemporaryDirectory(prefix="sah-v2a-memory-") as tmp:
        start = time.perf_counter()
        models = child(["--child", "build", json.dumps({"folder": tmp, "tiny": args.tiny, "threads": args.threads})])
        print(f"built {'tiny' if args.tiny else 'full-size'} random models in {time.perf_counter() - start:.0f} s",
              file=sys.stderr, flush=True)
        runs = {}
        for name, release in (("keep", False), ("release", True)):
            spec = {"models": models, "release": release, "seconds": seconds, "steps": steps, "side": side,
                    "threads": args.threads, "out_dir": str(Path(tmp) / "out")}
            runs[name] = child(["--child", "run", json.dumps(spec)])
            print(f"  {NAMES[name]}: peak {runs[name]['peak_mib']:.0f} MiB, {runs[name]['wall_s']:.1f} s",
                  file=sys.stderr, flush=True)
    report(runs, args.tiny)


if __name__ == "__main__":
    main()

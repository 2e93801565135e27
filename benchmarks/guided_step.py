"""How close is one guided step to the work it cannot skip? Each stage's share, and guided / floor.

FULL SIZE, random weights, no download: AudioLDM-m and ImageBind huge as benchmarks/gpu_presets.py
builds them (`save_full_audioldm`, `save_full_imagebind`), saved and loaded through the plugins' own
loading path, guiding V2A on 10 s of audio toward a made-up video (a bright square crossing 10 s of
224×224 frames at 8 fps) and the prompt, with a preset's settings (default fast-v2a) and every step
guided (guidance.start = 0), on the CPU in float32.

1. Guided steps as sah's aligner runs them (`sah.generate`): each denoising step's wall time and its
   seconds per stage (sah.cost: denoiser, scheduler, x0, decode, binder forward, backward, update;
   "unstaged" is what no stage counted, the aligner's own bookkeeping). The first guided step is a
   warm-up and is not counted; the table is the median step (by wall time), with each stage's
   minimum over the counted steps beside it.
2. The floor, each part measured alone right after each counted step (a step and its floor see the
   same load on the machine): the UNet's classifier-free-guidance pass (batch 2, no grad), the
   decode forward and backward (VAE decode + HiFi-GAN vocoder from an x̂0 that requires grad, cut to
   the run's length, backward of its sum) and the binder's audio forward and backward (`embed` of
   that waveform, its clips, 1 − cos to a fixed vector, backward to the waveform). guided / floor is
   the median step over the sum of the parts' medians; "step k / floor measured after it" pairs
   them, in wall and CPU seconds; the surplus table says where the difference lies.
3. Work, counted op by op: one more guided step and one more floor pass, untimed, under a torch
   dispatch mode that counts every aten op (the backward's included), the FLOPs of matmul,
   convolution and attention (torch.utils.flop_counter) and the bytes ops write: what a busy
   machine cannot blur.
4. Partial clips (`--partial-clips` clips of `--partial-clip-seconds`, default 1 of 2 s): the binder
   then reads only part of the audio, and sah decodes only the latent frames under its clips
   (`Binder.audio_spans`, audioldm's `decode_spans`: 8 frames of context on each side). Reported:
   the guided step as sah runs it, as ratios to the whole-clip floor of 2, to the floor of its own
   binder work with the whole decode, and to the floor with sah's decode of the spans (the same
   decode, timed alone); how far that decode is from the whole one for the binder (1 − cos of its
   embeddings, the relative error of its log-mel input and of the waveform under the clips, with
   another sample's decode as a yardstick) and for the guidance (the cosine of the gradients with
   respect to x̂0 through each); and, for comparison, the benchmark's own slices of the latent with
   0, 8 and 16 context frames.

    python benchmarks/guided_step.py                          # full size, CPU, 1 thread (~13 min, ~12 GB)
    python benchmarks/guided_step.py --seconds 4 --steps 2    # shorter
    python benchmarks/guided_step.py --tiny                   # the tests' tiny models, 1 s: a smoke test

`--models DIR` keeps the built models in DIR and reuses them on the next run. Timings on a shared
machine are noisy: compare medians, and rerun when the min and median disagree much.
"""

from __future__ import annotations

import argparse
import math
import statistics
import sys
import tempfile
import time
from collections import Counter
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import torch
import torch.nn.functional as F
from torch import Tensor
from torch.utils._python_dispatch import TorchDispatchMode
from torch.utils._pytree import tree_flatten
from torch.utils.flop_counter import flop_registry

import sah
from sah import cost
from sah.aligner import GuidanceSettings
from sah.api import Models
from sah.binder import merge_spans
from sah.generator import GenerationRequest, span_frames
from sah.media import Audio, Modality, Video
from sah.presets import list_presets, load_preset

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT / "tests"))
sys.path.insert(0, str(ROOT / "benchmarks"))
from gpu_presets import save_full_audioldm, save_full_imagebind, save_tiny_imagebind  # noqa: E402

#: the stages of a guided step, in the order the aligner runs them (sah.cost.STAGES)
GUIDED_STAGES = ("denoiser", "scheduler", "x0", "decode", "binder forward", "backward", "update")
PROMPT = "a dog barking"
CONTEXTS = (0, 8, 16)  # latent frames decoded on each side of the needed ones


# -- models and plans ---------------------------------------------------------------------------------

def build_models(folder: Path, tiny: bool) -> tuple[Path, Path]:
    """AudioLDM and ImageBind saved in `folder` (kept if they are there already)."""
    audioldm = folder / ("audioldm-tiny" if tiny else "audioldm-m")
    imagebind = folder / ("imagebind-tiny" if tiny else "imagebind-huge") / "imagebind.safetensors"
    torch.manual_seed(0)
    if not (audioldm / "model_index.json").is_file():
        if tiny:
            from test_audioldm import save_tiny_audioldm

            save_tiny_audioldm(audioldm)
        else:
            save_full_audioldm(audioldm)
    if not imagebind.is_file():
        if tiny:
            save_tiny_imagebind(imagebind)
        else:
            imagebind.parent.mkdir(parents=True, exist_ok=True)
            save_full_imagebind(imagebind)
    return audioldm, imagebind


def made_up_video(seconds: float, side: int, fps: float = 8.0) -> Video:
    """A bright square crossing a dark, slightly noisy frame."""
    g = torch.Generator().manual_seed(0)
    n = max(2, round(seconds * fps))
    frames = torch.rand(n, 3, side, side, generator=g) * 0.1
    for i in range(n):
        x = int((side - side // 4) * i / (n - 1))
        frames[i, :, side // 3: side // 3 + side // 4, x: x + side // 4] = 1.0
    return Video(frames, fps=fps)


def layers(preset: str, audioldm: Path, imagebind: Path, seconds: float, steps: int, binder: dict,
           out: Path) -> list[dict]:
    return [load_preset(preset), {
        "run": {"device": "cpu", "dtype": "float32", "prompt": PROMPT, "seed": 0, "num_samples": 1,
                "steps": steps, "duration": seconds},
        "audio": {"generator": "audioldm", "model": str(audioldm), "duration": seconds},
        "binder": {"name": "imagebind", "model": str(imagebind), **binder},
        "guidance": {"enabled": True, "start": 0.0, "end": 1.0},
        "output": {"plot": False, "dir": str(out)}}]


def steps_for(plan_layers: list[dict], condition: Video, guided_steps: int) -> int:
    """Denoising steps so that `guided_steps` guided ones follow the first guided one, which warms up."""
    steps = guided_steps + 1
    while True:
        plan = sah.plan(*plan_layers, {"run": {"steps": steps}}, condition=condition)
        if len(guided_ticks(plan)) - 1 >= guided_steps:
            return steps
        steps += 1


def binder_options(plan: sah.RunPlan, cls: type) -> dict[str, Any]:
    return {k: v for k, v in plan.config["binder"].items() if k in cls.options}


# -- work counted, not timed ---------------------------------------------------------------------------

class OpCount(TorchDispatchMode):
    """Every aten op run while active (autograd's backward included): calls, FLOPs of the ops
    torch.utils.flop_counter knows (matmul, convolution, attention) and bytes of the tensors they
    write (views excluded). What a busy machine cannot blur: the same work counts the same."""

    def __init__(self) -> None:
        super().__init__()
        self.calls: Counter[str] = Counter()
        self.flops: Counter[str] = Counter()
        self.bytes: Counter[str] = Counter()

    def __torch_dispatch__(self, func: Any, types: Any, args: tuple = (), kwargs: dict | None = None) -> Any:
        kwargs = kwargs or {}
        out = func(*args, **kwargs)
        name = func.overloadpacket.__name__
        self.calls[name] += 1
        if not func.is_view:
            self.bytes[name] += sum(t.numel() * t.element_size() for t in tree_flatten(out)[0]
                                    if isinstance(t, Tensor))
        if func.overloadpacket in flop_registry:
            self.flops[name] += int(flop_registry[func.overloadpacket](*args, **kwargs, out_val=out))
        return out

    def start(self) -> None:
        self.__enter__()

    def stop(self) -> None:
        self.__exit__(None, None, None)


# -- 1. guided steps as the aligner runs them --------------------------------------------------------

@dataclass
class Step:
    wall: float
    cpu: float  # this process's CPU seconds (time.process_time), which a busy machine inflates less
    stages: dict[str, float]

    @property
    def unstaged(self) -> float:
        return self.wall - sum(self.stages.values())


@dataclass
class GuidedRun:
    steps: list[Step]
    result: sah.RunResult

    @property
    def median(self) -> Step:
        """The median step by wall time (the lower one of an even count): a real step, whose stages
        add up to its wall time."""
        ordered = sorted(self.steps, key=lambda s: s.wall)
        return ordered[(len(ordered) - 1) // 2]

    def minimum(self, stage: str) -> float:
        if stage == "unstaged":
            return min(s.unstaged for s in self.steps)
        if stage == "step":
            return min(s.wall for s in self.steps)
        return min(s.stages.get(stage, 0.0) for s in self.steps)


def guided_ticks(plan: sah.RunPlan) -> list[int]:
    steps = plan.config["run"]["steps"]
    settings = GuidanceSettings.from_config(plan.config["guidance"])
    return [i for i in range(steps) if settings.guides(i, steps)]


def guided_run(plan: sah.RunPlan, models: Models, between: Callable[[], None],
               counter: OpCount | None = None) -> GuidedRun:
    """`sah.generate` with a progress callback that reads the run's sah.cost account after each
    denoising step, so each step's wall time and seconds per stage are the differences. After each
    counted step (every guided one but the first) the callback runs `between` (the floor's parts),
    which is then no part of any step: a step and the floor measured next to it see the same load
    on the machine. With `counter`, the last guided step is not timed but op-counted."""
    guided = guided_ticks(plan)
    counted = guided[1:-1] if counter is not None else guided[1:]
    marks: dict[int, tuple[tuple[float, float, dict[str, float]], tuple[float, float, dict[str, float]]]] = {}

    def now() -> tuple[float, float, dict[str, float]]:
        account = cost._current.get()  # the account sah.generate opened (sah.cost has no public accessor)
        return time.perf_counter(), time.process_time(), dict(account.seconds) if account is not None else {}

    def progress(done: int, total: int, similarity: dict[str, float]) -> None:
        tick = done - 1
        if counter is not None and tick == guided[-1]:
            counter.stop()
        end = now()
        if tick in counted:
            between()
        marks[tick] = (end, now())
        if counter is not None and tick + 1 == guided[-1]:
            counter.start()

    result = sah.generate(plan, models, progress=progress)
    ticks = [record["tick"] for record in result.samples[0].trace]
    assert ticks == guided, (ticks, guided)
    steps = []
    for tick in counted:
        (t0, c0, before), (t1, c1, after) = marks[tick - 1][1], marks[tick][0]
        stages = {k: v - before.get(k, 0.0) for k, v in after.items() if v - before.get(k, 0.0) > 0}
        steps.append(Step(t1 - t0, c1 - c0, stages))
    if not steps:
        raise SystemExit("no guided step to count: raise --steps")
    return GuidedRun(steps, result)


def stage_names(run: GuidedRun) -> list[str]:
    seen = {k for s in run.steps for k in s.stages}
    return [k for k in GUIDED_STAGES if k in seen] + sorted(seen - set(GUIDED_STAGES))


def print_stage_table(run: GuidedRun) -> None:
    step = run.median
    print("| stage | median step s | share | min over steps s |")
    print("|---|---|---|---|")
    for name in stage_names(run):
        seconds = step.stages.get(name, 0.0)
        print(f"| {name} | {seconds:.3f} | {100 * seconds / step.wall:.1f} % | {run.minimum(name):.3f} |")
    print(f"| unstaged | {step.unstaged:.3f} | {100 * step.unstaged / step.wall:.1f} % | "
          f"{run.minimum('unstaged'):.3f} |")
    print(f"| guided step | {step.wall:.3f} | 100.0 % | {run.minimum('step'):.3f} |")


# -- 2. the floor, each part alone --------------------------------------------------------------------

@dataclass
class Part:
    name: str
    seconds: list[float] = field(default_factory=list)
    cpu: list[float] = field(default_factory=list)

    @property
    def median(self) -> float:
        return statistics.median(self.seconds)

    @property
    def min(self) -> float:
        return min(self.seconds)


class Clock:
    """Wall and CPU seconds of a block: `with Clock() as c: ...`, then `c.wall`, `c.cpu`."""

    #: when set, the op counter every timed block runs under (the untimed floor pass)
    counter: OpCount | None = None

    def __enter__(self) -> Clock:
        if Clock.counter is not None:
            Clock.counter.start()
        self.start = time.perf_counter(), time.process_time()
        return self

    def __exit__(self, *exc: Any) -> None:
        self.wall = time.perf_counter() - self.start[0]
        self.cpu = time.process_time() - self.start[1]
        if Clock.counter is not None:
            Clock.counter.stop()

    def add(self, part: Part) -> None:
        part.seconds.append(self.wall)
        part.cpu.append(self.cpu)


class Floor:
    """The parts of a guided step no implementation can skip, on the run's own models and shapes."""

    def __init__(self, generator: Any, trajectory: Any, index: int, keep: int | None) -> None:
        self.generator, self.trajectory, self.index, self.keep = generator, trajectory, index, keep
        self.spf = generator.hop * generator.vae_scale_factor  # waveform samples per latent frame

    def unet(self, part: Part) -> None:
        """The UNet on [uncond, cond] (batch 2 with CFG), no grad: predict_noise without its wrapping."""
        g, traj = self.generator, self.trajectory
        latents, t = traj.latents, traj.timesteps[self.index]
        uncond, cond = traj.state["uncond_embeds"], traj.prompt_embeds
        model_in = (torch.cat([latents, latents]) if uncond is not None else latents).to(g.dtype)
        labels = (torch.cat([uncond, cond]) if uncond is not None else cond).to(g.dtype)
        with torch.no_grad(), Clock() as clock:
            g.unet(model_in, t, encoder_hidden_states=None, class_labels=labels)
        clock.add(part)

    def _waveform(self, z: Tensor) -> Tensor:
        g = self.generator
        mel = g.vae.decode(z / g.vae.config.scaling_factor).sample
        return g.vocoder(mel.squeeze(1))

    def decode(self, x0: Tensor, forward: Part, backward: Part,
               frames: tuple[int, int, int, int] | None = None,
               spans: list[tuple[float, float]] | None = None) -> Tensor:
        """Decode forward and backward (timed into `forward`, `backward`); the waveform `[B, 1, S]`.
        All latent frames; or `frames = (lo, hi, needed_lo, needed_hi)`: decode [lo, hi), keep the
        samples of [needed_lo, needed_hi) and put them in place in a zero waveform of the run's length;
        or `spans`: sah's own decode of them (`generator.decode(..., spans=...)`)."""
        leaf = x0.detach().clone().requires_grad_(True)
        length = self.keep if self.keep is not None else None
        with torch.enable_grad():
            with Clock() as clock:
                if spans is not None:
                    wave = self.generator.decode(leaf, spans=spans).waveform[:, 0, :length]
                elif frames is None:
                    wave = self._waveform(leaf)[..., :length]
                else:
                    lo, hi, need_lo, need_hi = frames
                    part = self._waveform(leaf[:, :, lo:hi])
                    piece = part[..., (need_lo - lo) * self.spf: (need_hi - lo) * self.spf]
                    total = length if length is not None else leaf.shape[2] * self.spf
                    wave = F.pad(piece, (need_lo * self.spf, max(0, total - need_hi * self.spf)))[..., :total]
            clock.add(forward)
            with Clock() as clock:
                wave.sum().backward()
            clock.add(backward)
        return wave.detach().unsqueeze(1)

    @staticmethod
    def binder(binder: Any, wave: Tensor, rate: int, target: Tensor, forward: Part, backward: Part) -> None:
        leaf = wave.detach().clone().requires_grad_(True)
        with torch.enable_grad():
            with Clock() as clock:
                loss = (1 - binder.similarity(binder.embed(Audio(leaf, rate)), target)).sum()
            clock.add(forward)
            with Clock() as clock:
                loss.backward()
            clock.add(backward)


def x0_estimate(generator: Any, plan: sah.RunPlan, seed: int, index: int) -> tuple[Any, Tensor]:
    """A trajectory and its x̂0 at step `index` (the first step's noise, the UNet's prediction)."""
    section = plan.config["audio"]
    request = GenerationRequest(prompts=[PROMPT], seeds=[seed], negative_prompt=plan.config["run"]["negative_prompt"],
                                num_steps=section["steps"] or plan.config["run"]["steps"],
                                cfg_scale=section["cfg_scale"], duration=plan.config["run"]["duration"])
    with torch.no_grad():
        trajectory = generator.prepare(request)
        eps = generator.predict_noise(trajectory, trajectory.latents, index)
        x0 = generator.predict_x0(trajectory, trajectory.latents, eps, index)
    return trajectory, x0


def clip_ranges(binder: Any, samples: int, rate: int) -> list[tuple[int, int]]:
    """The binder's audio clips as sample ranges of a waveform at `rate` (the plugin's own rule)."""
    from sah.plugins.binders.imagebind.preprocess import SAMPLE_RATE, audio_clip_ranges

    ranges = audio_clip_ranges(math.ceil(samples * SAMPLE_RATE / rate), binder.config["audio_clips"], SAMPLE_RATE,
                               float(binder.config["audio_clip_seconds"]), binder.config["preprocess"])
    return [(lo * rate // SAMPLE_RATE, min(samples, math.ceil(hi * rate / SAMPLE_RATE))) for lo, hi in ranges]


def clip_description(binder: Any, samples: int, rate: int) -> str:
    spans = ", ".join(f"{lo / rate:g}–{hi / rate:g} s" for lo, hi in clip_ranges(binder, samples, rate))
    count = len(clip_ranges(binder, samples, rate))
    return f"{count} × {binder.config['audio_clip_seconds']:g} s ({binder.config['audio_clips']}: {spans})"


def differences(binder: Any, a: Tensor, b: Tensor, rate: int, span: tuple[int, int]) -> tuple[float, float, float]:
    """How far waveform `b` is from `a` for the binder: 1 − cos of its embeddings, and the relative
    error of its log-mel input (its clips) and of the waveform under its clips."""
    from sah.plugins.binders.imagebind.preprocess import audio_to_mel

    def mel(w: Tensor) -> Tensor:
        return audio_to_mel(w, rate, binder.config["audio_clips"], binder.config["preprocess"],
                            float(binder.config["audio_clip_seconds"]))[0]

    def relative(x: Tensor, y: Tensor) -> float:
        return float((y - x).norm() / x.norm().clamp_min(1e-30))

    with torch.no_grad():
        cos = F.cosine_similarity(binder.embed(Audio(a, rate)), binder.embed(Audio(b, rate))).double().mean()
        lo, hi = span
        return float(1 - cos), relative(mel(a), mel(b)), relative(a[..., lo:hi], b[..., lo:hi])


# -- 3. partial clips -----------------------------------------------------------------------------------

@dataclass
class Partial:
    run: GuidedRun
    clips: str
    needed: tuple[int, int]  # latent frames under the clips
    frames: int  # latent frames in all
    sah_frames: list[tuple[int, int]]  # the latent frames sah's decode of the binder's spans decodes
    sah_decode: Part  # its forward + backward
    sah_differences: tuple[float, float, float]
    gradient: tuple[float, float, float, float]  # the latent's guidance gradient, partial vs whole (guidance_gradients)
    binder: dict[str, Part]
    decodes: dict[int, tuple[tuple[int, int], Part]]  # context -> (decoded frames, forward + backward)
    differences: dict[int, tuple[float, float, float]]  # context -> (1 − cos, log-mel error, waveform error)
    yardstick: tuple[float, float, float]  # the same, for another sample's whole decode


def measure_partial(args: argparse.Namespace, plan: sah.RunPlan, base: list[dict], condition: Video, generator: Any,
                    towers: Any, binder_cls: type, floor: Floor, x0: Tensor, whole: Tensor, target: Tensor,
                    counted: int, clip_seconds: float) -> Partial:
    options = {"audio_clips": args.partial_clips, "audio_clip_seconds": clip_seconds}
    partial_layers = [*base[:-1], {**base[-1], "binder": {**base[-1]["binder"], **options}}]
    steps = steps_for(partial_layers, condition, counted)
    partial_plan = sah.plan(*partial_layers, {"run": {"steps": steps}}, condition=condition)
    binder = binder_cls.from_model(towers, **binder_options(partial_plan, binder_cls))

    rate, samples, frames = generator.sample_rate, whole.shape[-1], x0.shape[2]
    ranges = clip_ranges(binder, samples, rate)
    span = (min(lo for lo, _ in ranges), max(hi for _, hi in ranges))
    need = (span[0] // floor.spf, min(frames, math.ceil(span[1] / floor.spf)))
    parts = {"binder forward": Part("binder forward"), "binder backward": Part("binder backward")}
    decodes = {c: ((max(0, need[0] - c), min(frames, need[1] + c)), Part(f"context {c}")) for c in CONTEXTS}
    waves: dict[int, Tensor] = {}
    duration = floor.trajectory.duration
    spans = merge_spans(binder.audio_spans(duration), duration)
    sah_frames = span_frames(spans, generator.latent_frame_seconds(), frames, generator.chunk_context)
    sah_decode, sah_wave = Part("sah's decode of the spans"), []

    def between() -> None:  # the partial floor's parts, next to each counted guided step
        floor.binder(binder, whole, rate, target, parts["binder forward"], parts["binder backward"])
        forward, backward = Part("forward"), Part("backward")
        sah_wave[:] = [floor.decode(x0, forward, backward, spans=spans)]
        sah_decode.seconds.append(forward.seconds[0] + backward.seconds[0])
        sah_decode.cpu.append(forward.cpu[0] + backward.cpu[0])
        for c, ((lo, hi), part) in decodes.items():
            forward, backward = Part("forward"), Part("backward")
            waves[c] = floor.decode(x0, forward, backward, (lo, hi, *need))
            part.seconds.append(forward.seconds[0] + backward.seconds[0])
            part.cpu.append(forward.cpu[0] + backward.cpu[0])

    start = time.perf_counter()
    run = guided_run(partial_plan, Models({Modality.AUDIO: generator}, binder), between)
    print(f"guided run with partial clips ({steps} steps, with the partial floor) in "
          f"{time.perf_counter() - start:.0f} s", flush=True)
    found = {c: differences(binder, whole, wave, rate, span) for c, wave in waves.items()}
    _, other_x0 = x0_estimate(generator, plan, seed=1, index=floor.index)
    with torch.no_grad():
        other = floor._waveform(other_x0)[..., :samples].unsqueeze(1)
    yardstick = differences(binder, whole, other, rate, span)
    gradient = guidance_gradients(generator, binder, x0, spans, floor.keep, target, sah_frames)
    return Partial(run, clip_description(binder, samples, rate), need, frames, sah_frames, sah_decode,
                   differences(binder, whole, sah_wave[0], rate, span), gradient, parts, decodes, found, yardstick)


def guidance_gradients(generator: Any, binder: Any, x0: Tensor, spans: list[tuple[float, float]], keep: int | None,
                       target: Tensor, decoded: list[tuple[int, int]]) -> tuple[float, float, float, float]:
    """The gradient of the binder's 1 − cos with respect to x̂0, through sah's decode of the spans
    and through the whole decode: their cosine and relative error; the cosine over the latent
    frames the partial decode decodes (`decoded`); and the share of the whole decode's gradient
    (by squared norm) on the frames it does not, which the partial decode leaves at zero."""
    grads = []
    for chosen in (spans, None):
        leaf = x0.detach().clone().requires_grad_(True)
        with torch.enable_grad():
            audio = generator.decode(leaf, spans=chosen)
            wave = audio.waveform[..., :keep]
            loss = (1 - binder.similarity(binder.embed(Audio(wave, audio.sample_rate)), target)).sum()
            (grad,) = torch.autograd.grad(loss, leaf)
        grads.append(grad.double())
    partial, whole = grads
    inside = torch.zeros(x0.shape[2], dtype=torch.bool)
    for lo, hi in decoded:
        inside[lo:hi] = True
    within = F.cosine_similarity(partial[:, :, inside].flatten(), whole[:, :, inside].flatten(), dim=0)
    outside = whole[:, :, ~inside].pow(2).sum() / whole.pow(2).sum()
    return (float(F.cosine_similarity(partial.flatten(), whole.flatten(), dim=0)),
            float((partial - whole).norm() / whole.norm()), float(within), float(outside))


# -- report ---------------------------------------------------------------------------------------------

FLOOR_NAMES = {"unet": "UNet CFG pass (batch 2, no grad)", "decode forward": "decode forward (VAE + vocoder)",
               "decode backward": "decode backward (to the latent)", "binder forward": "binder audio forward",
               "binder backward": "binder audio backward (to the waveform)"}


def print_floor(run: GuidedRun, parts: dict[str, Part]) -> float:
    floor_median = sum(p.median for p in parts.values())
    floor_min = sum(p.min for p in parts.values())
    print("\n| floor part | median s | min s |")
    print("|---|---|---|")
    for key, part in parts.items():
        print(f"| {FLOOR_NAMES[key]} | {part.median:.3f} | {part.min:.3f} |")
    print(f"| floor | {floor_median:.3f} | {floor_min:.3f} |")
    step = run.median
    print(f"\nguided / floor = {step.wall / floor_median:.3f} (median step {step.wall:.3f} s / floor "
          f"{floor_median:.3f} s; fastest step / sum of minima {run.minimum('step') / floor_min:.3f})")
    # each step against the floor measured right after it, under the same load
    n = len(run.steps)
    paired = [run.steps[k].wall / sum(p.seconds[k] for p in parts.values()) for k in range(n)]
    paired_cpu = [run.steps[k].cpu / sum(p.cpu[k] for p in parts.values()) for k in range(n)]
    print(f"step k / floor measured after it: median {statistics.median(paired):.3f} (range "
          f"{min(paired):.3f}–{max(paired):.3f}); in CPU seconds (time.process_time): median "
          f"{statistics.median(paired_cpu):.3f} (range {min(paired_cpu):.3f}–{max(paired_cpu):.3f})")

    s = step.stages
    rows = [("denoiser − UNet CFG pass", s.get("denoiser", 0.0), parts["unet"].median),
            ("decode stage − decode forward", s.get("decode", 0.0), parts["decode forward"].median),
            ("binder forward stage − binder audio forward", s.get("binder forward", 0.0),
             parts["binder forward"].median),
            ("backward stage − decode and binder backward", s.get("backward", 0.0),
             parts["decode backward"].median + parts["binder backward"].median)]
    rows += [(name, s.get(name, 0.0), 0.0) for name in stage_names(run) if name not in
             ("denoiser", "decode", "binder forward", "backward")]
    rows.append(("unstaged (the aligner's bookkeeping)", step.unstaged, 0.0))
    print(f"\nsurplus of the median step over the floor: {step.wall - floor_median:+.3f} s "
          f"({100 * (step.wall - floor_median) / floor_median:+.1f} % of the floor)\n")
    print("| where | guided s | floor s | surplus s |")
    print("|---|---|---|---|")
    for name, guided_s, floor_s in rows:
        print(f"| {name} | {guided_s:.3f} | {floor_s:.3f} | {guided_s - floor_s:+.3f} |")
    print(f"| total | {step.wall:.3f} | {floor_median:.3f} | {step.wall - floor_median:+.3f} |")
    return floor_median


def print_work(step: OpCount, floor: OpCount, top: int = 10) -> None:
    """What the op-counted guided step did beyond the floor pass, in work rather than seconds."""
    def total(c: Counter[str]) -> int:
        return sum(c.values())

    print("\nwork, counted op by op (torch dispatch; autograd's backward included) in one more guided step and "
          "one more floor pass, neither timed:\n")
    print("| work | guided step | floor | guided − floor |")
    print("|---|---|---|---|")
    a, b = total(step.calls), total(floor.calls)
    print(f"| aten ops run | {a} | {b} | {a - b:+d} |")
    a, b = total(step.flops) / 1e9, total(floor.flops) / 1e9
    print(f"| GFLOP (matmul, convolution, attention) | {a:.3f} | {b:.3f} | {a - b:+.3f} |")
    a, b = total(step.bytes) / 1e6, total(floor.bytes) / 1e6
    print(f"| MB written by ops (views excluded) | {a:.1f} | {b:.1f} | {a - b:+.1f} |")
    names = set(step.calls) | set(floor.calls)
    differ = sorted((n for n in names if step.calls[n] != floor.calls[n] or step.bytes[n] != floor.bytes[n]),
                    key=lambda n: (-abs(step.bytes[n] - floor.bytes[n]), -abs(step.calls[n] - floor.calls[n]), n))
    print(f"\n| op (the {top} that differ most) | calls, guided step | calls, floor | MB written, guided step | "
          "MB written, floor |")
    print("|---|---|---|---|---|")
    for n in differ[:top]:
        print(f"| {n} | {step.calls[n]} | {floor.calls[n]} | {step.bytes[n] / 1e6:.3f} | {floor.bytes[n] / 1e6:.3f} |")


def print_partial(p: Partial, whole_parts: dict[str, Part], whole_floor: float) -> None:
    unet = whole_parts["unet"].median
    binder = p.binder["binder forward"].median + p.binder["binder backward"].median
    whole_decode = whole_parts["decode forward"].median + whole_parts["decode backward"].median
    own_floor = unet + whole_decode + binder  # what sah's step does today with these clips, at best
    step = p.run.median
    print(f"\npartial clips: binder audio clips {p.clips}; latent frames [{p.needed[0]}, {p.needed[1]}) of "
          f"{p.frames} lie under them; {len(p.run.steps)} guided steps counted\n")
    print_stage_table(p.run)
    print("\n| measure | median s | min s |")
    print("|---|---|---|")
    decoded = ", ".join(f"[{lo}, {hi})" for lo, hi in p.sah_frames)
    print(f"| guided step (sah decodes latent frames {decoded} of {p.frames}) | {step.wall:.3f} | "
          f"{p.run.minimum('step'):.3f} |")
    print(f"| sah's decode of the binder's spans, forward + backward, frames {decoded} | {p.sah_decode.median:.3f} | "
          f"{p.sah_decode.min:.3f} |")
    print(f"| binder audio forward + backward ({p.clips.split(' (')[0]}) | {binder:.3f} | "
          f"{p.binder['binder forward'].min + p.binder['binder backward'].min:.3f} |")
    print(f"| decode forward + backward, all {p.frames} frames (the floor above) | {whole_decode:.3f} | "
          f"{whole_parts['decode forward'].min + whole_parts['decode backward'].min:.3f} |")
    for c, ((lo, hi), part) in p.decodes.items():
        print(f"| decode forward + backward, frames [{lo}, {hi}) (needed + {c} context) | {part.median:.3f} | "
              f"{part.min:.3f} |")
    needed = {c: unet + part.median + binder for c, (_, part) in p.decodes.items()}
    sah_floor = unet + p.sah_decode.median + binder
    print(f"\nwhole-clip floor (the floor above) = {whole_floor:.3f} s; floor with these clips and the whole decode = "
          f"{own_floor:.3f} s; floor with these clips and sah's decode of the spans = {sah_floor:.3f} s")
    print(f"guided step (partial clips) / whole-clip floor = {step.wall / whole_floor:.3f}")
    print(f"guided step (partial clips) / floor with the whole decode = {step.wall / own_floor:.3f}")
    print(f"guided step (partial clips) / floor with sah's decode of the spans = {step.wall / sah_floor:.3f}")
    print(f"floor with sah's decode of the spans / whole-clip floor = {sah_floor / whole_floor:.3f}")
    one_minus_cos, mel, wave = p.sah_differences
    print(f"sah's decode of the spans against the whole decode: 1 − cos (binder embeddings) = {one_minus_cos:.2e}, "
          f"log-mel rel. error = {mel:.2e}, waveform rel. error = {wave:.2e}")
    print(f"guidance gradient (of 1 − cos to the target, with respect to x̂0) through sah's decode of the spans against "
          f"through the whole decode: cos = {p.gradient[0]:.4f}, relative error = {p.gradient[1]:.2e}; over the "
          f"decoded latent frames cos = {p.gradient[2]:.4f}; share of the whole decode's gradient (squared norm) on "
          f"the frames not decoded = {p.gradient[3]:.3f}")
    print("\nother contexts (the benchmark's own latent slices, from the clips without the binder's slack):\n")
    print("| context frames | decoded frames | decode fwd+bwd s | floor s | floor / whole-clip floor | "
          "1 − cos (binder embeddings, whole vs partial decode) | log-mel rel. error | waveform rel. error |")
    print("|---|---|---|---|---|---|---|---|")
    for c, ((lo, hi), part) in p.decodes.items():
        one_minus_cos, mel, wave = p.differences[c]
        print(f"| {c} | {hi - lo} | {part.median:.3f} | {needed[c]:.3f} | {needed[c] / whole_floor:.3f} | "
              f"{one_minus_cos:.2e} | {mel:.2e} | {wave:.2e} |")
    one_minus_cos, mel, wave = p.yardstick
    print(f"\nyardstick, another sample's whole decode (seed 1) against this one: 1 − cos = {one_minus_cos:.2e}, "
          f"log-mel rel. error = {mel:.2e}, waveform rel. error = {wave:.2e} (errors under the clips; random "
          "weights, so only these ratios mean something)")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--tiny", action="store_true", help="the tests' tiny models, 1 s of audio (seconds to run)")
    parser.add_argument("--preset", default="fast-v2a", choices=[p for p in list_presets() if "v2a" in p
                                                                  and "stable" not in p])
    parser.add_argument("--seconds", type=float, help="seconds of audio (default 10; --tiny: 1)")
    parser.add_argument("--steps", type=int, help="guided steps timed, after one warm-up step, each followed by one "
                                                  "measurement of the floor; one more is op-counted (default 3; "
                                                  "--tiny: 5)")
    parser.add_argument("--partial-steps", type=int, help="the same with partial clips (default 2; --tiny: 3)")
    parser.add_argument("--partial-clips", type=int, default=1, help="binder audio clips for the partial part")
    parser.add_argument("--partial-clip-seconds", type=float, help="their length (default 2; --tiny: 0.25)")
    parser.add_argument("--no-partial", action="store_true", help="skip the partial-clips part")
    parser.add_argument("--threads", type=int, default=1)
    parser.add_argument("--models", type=Path, help="keep the built models in this folder and reuse them")
    args = parser.parse_args()
    tiny = args.tiny
    seconds = args.seconds or (1.0 if tiny else 10.0)
    counted = args.steps or (5 if tiny else 3)
    partial_counted = args.partial_steps or (3 if tiny else 2)
    clip_seconds = args.partial_clip_seconds or (0.25 if tiny else 2.0)
    torch.set_num_threads(args.threads)
    wall = time.perf_counter()

    with tempfile.TemporaryDirectory() as tmp:
        folder = args.models or Path(tmp) / "models"
        folder.mkdir(parents=True, exist_ok=True)
        start = time.perf_counter()
        audioldm, imagebind = build_models(folder, tiny)
        print(f"models ready in {time.perf_counter() - start:.0f} s", flush=True)

        condition = made_up_video(seconds, 32 if tiny else 224)
        base = layers(args.preset, audioldm, imagebind, seconds, 1, {}, Path(tmp))
        steps = steps_for(base, condition, counted + 1)  # and one more, op-counted
        plan = sah.plan(*base, {"run": {"steps": steps}}, condition=condition)
        start = time.perf_counter()
        loaded = sah.load(plan)
        generator = loaded.generators[Modality.AUDIO]
        binder_cls = type(loaded.binder)
        # one set of towers for both binders (default clips, partial clips), by the plugin's own loader
        from sah.plugins.binders.imagebind import load_towers

        towers = load_towers(loaded.binder.checkpoint_path, ("vision", "audio", "text"), loaded.binder.model_config)
        binder = binder_cls.from_model(towers, **binder_options(plan, binder_cls))
        print(f"loaded in {time.perf_counter() - start:.0f} s", flush=True)

        # the floor's inputs: the run's shapes, an x̂0 of the run's kind, a fixed target embedding
        index = guided_ticks(plan)[1]
        trajectory, x0 = x0_estimate(generator, plan, seed=0, index=index)
        keep = None if generator.guide_whole_decode else int(trajectory.duration * generator.sample_rate)
        floor = Floor(generator, trajectory, index, keep)
        target = F.normalize(torch.randn(1, towers.config.out_embed_dim, generator=torch.Generator().manual_seed(1)),
                             dim=-1)
        parts = {k: Part(k) for k in FLOOR_NAMES}
        decoded: list[Tensor] = []

        def between() -> None:  # the floor's parts, next to each counted guided step
            floor.unet(parts["unet"])
            decoded[:] = [floor.decode(x0, parts["decode forward"], parts["decode backward"])]
            floor.binder(binder, decoded[0], generator.sample_rate, target, parts["binder forward"],
                         parts["binder backward"])

        start = time.perf_counter()
        step_work = OpCount()
        run = guided_run(plan, Models({Modality.AUDIO: generator}, binder), between, step_work)
        print(f"guided run ({steps} steps, with the floor) in {time.perf_counter() - start:.0f} s", flush=True)
        whole = decoded[0]
        floor_work = Clock.counter = OpCount()  # one more floor pass, its timed blocks op-counted
        try:
            between()
        finally:
            Clock.counter = None
        for part in parts.values():  # not a measurement
            del part.seconds[-1], part.cpu[-1]

        partial = None
        if not args.no_partial:
            partial = measure_partial(args, plan, base, condition, generator, towers, binder_cls, floor, x0, whole,
                                      target, partial_counted, clip_seconds)

    latent = tuple(trajectory.latents.shape)
    print(f"\nguided step, {args.preset} (V2A), {'tiny' if tiny else 'full-size'} random-weight AudioLDM"
          f"{'' if tiny else '-m'} + ImageBind{'' if tiny else ' huge'}, {seconds:g} s of audio (latent "
          f"{list(latent)}, {whole.shape[-1]} samples to the binder), CPU, {args.threads} thread"
          f"{'s' if args.threads > 1 else ''}, float32; binder audio clips: "
          f"{clip_description(binder, whole.shape[-1], generator.sample_rate)}; {len(run.steps)} guided steps "
          f"counted of {steps} (the first guided step warms up), each followed by one measurement of the floor; "
          f"total {time.perf_counter() - wall:.0f} s")
    peak = run.result.cost.peak_bytes
    print(f"the guided run (sah.cost, floor measurements included): {run.result.cost.total:.1f} s, peak memory "
          f"{'n/a' if peak is None else f'+{peak / 2**20:.0f} MiB'} (RSS rise over the run)\n")
    print_stage_table(run)
    whole_floor = print_floor(run, parts)
    print_work(step_work, floor_work)
    if partial is not None:
        print_partial(partial, parts, whole_floor)


if __name__ == "__main__":
    main()

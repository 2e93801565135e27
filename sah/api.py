"""The Python API behind `sah run`: plan (validate everything, load nothing), load, generate, save.

    import sah
    result = sah.run({"run": {"prompt": "north"}})       # toy world, joint audio + video
    result.samples[0].audio, result.samples[0].video
    sah.save(result)                                      # NAME.wav, NAME.mp4, NAME.json
"""

from __future__ import annotations

import contextlib
import importlib.metadata
import json
import math
import os
import re
import time
import warnings
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import torch

from sah import config as cfg
from sah import hub, io, longform
from sah.aligner import GuidanceSettings, Term, align, plugin_call
from sah.binder import Binder
from sah.cost import Cost, accounting, stage
from sah.errors import SahError, plugin_failure
from sah.generator import GenerationRequest, Generator
from sah.media import Audio, Media, Modality, Text, Video
from sah.plot import available as plot_available
from sah.registry import Registry, get_registry
from sah.tasks import Task, infer_task, needed_modalities, terms_for

DTYPES = {"float32": torch.float32, "float16": torch.float16, "bfloat16": torch.bfloat16}
ProgressFn = Callable[[int, int, dict[str, float]], None]


@dataclass
class RunPlan:
    """A validated run: everything is checked and the condition is read, no model is loaded."""

    config: dict[str, Any]
    task: Task
    terms: list[Term]
    generators: dict[Modality, type[Generator]]
    binder: type[Binder] | None
    condition: Media | None
    outputs: list[dict[str, Path]]
    registry: Registry
    # stems numbered on because the first choice was taken in the output folder: {wanted: used}
    renamed: dict[str, str] = field(default_factory=dict)


@dataclass
class Models:
    generators: dict[Modality, Generator]
    binder: Binder | None


@dataclass
class Sample:
    index: int
    seed: int
    prompt: str
    name: str
    audio: Audio | None = None
    video: Video | None = None
    trace: list[dict[str, Any]] = field(default_factory=list)
    final_similarity: dict[str, float] = field(default_factory=dict)


@dataclass
class RunResult:
    plan: RunPlan
    samples: list[Sample]
    seconds: float
    cost: Cost | None = None  # seconds per stage and peak memory (`sah.cost`)


def resolve_device(name: str) -> torch.device:
    if name != "auto":
        if name.startswith("cuda") and not torch.cuda.is_available():
            raise SahError(f"device {name!r} asked for, but CUDA is not available")
        if name == "mps" and not torch.backends.mps.is_available():
            raise SahError("device 'mps' asked for, but MPS is not available")
        return torch.device(name)
    if torch.cuda.is_available():
        return torch.device("cuda")
    if torch.backends.mps.is_available():
        return torch.device("mps")
    return torch.device("cpu")


def sanitize_name(name: str) -> str:
    """A safe file stem: no path separators, no leading dots, nothing but [A-Za-z0-9._-]."""
    stem = re.sub(r"[^A-Za-z0-9._-]+", "_", name).strip("._")
    return stem[:120] or "sample"


OUTPUT_SUFFIXES = ("wav", "mp4", "json", "png")  # what a sample may write: any of them marks its stem taken


def _output_paths(config: dict[str, Any], task: Task) -> tuple[list[dict[str, Path]], dict[str, str]]:
    """Each sample's files, and the stems moved to avoid existing files ({wanted: used}).

    One numbering rule: a run's samples are `BASE-0`, `BASE-1`, ... where BASE is `output.name`, or
    the task (`joint-0`); a name given for a single sample is used as it is (`take`). Without
    `output.overwrite`, a run into a folder where those stems are taken numbers on after the highest
    one there (`joint-1`, or `take-1`), so nothing is ever replaced; with it, they are replaced."""
    run, output = config["run"], config["output"]
    produces = {"json"}
    if Modality.AUDIO in task.generates:
        produces.add("wav")
    if Modality.VIDEO in task.generates or task.condition == Modality.VIDEO:
        produces.add("mp4")
    formats = [f for f in output["formats"] if f in produces]
    if output.get("plot") and plot_available():
        formats.append("png")
    named = bool(output["name"])
    base = sanitize_name(output["name"]) if named else task.name
    out_dir = Path(output["dir"])
    n = run["num_samples"]

    def stems(first: int) -> list[str]:
        if named and n == 1 and first == 0:
            return [base]
        return [f"{base}-{first + i}" for i in range(n)]

    def taken(stem: str) -> bool:
        return any((out_dir / f"{stem}.{suffix}").exists() for suffix in OUTPUT_SUFFIXES)

    wanted = stems(0)
    chosen = wanted
    if not output["overwrite"] and any(taken(stem) for stem in wanted):
        first = _next_number(out_dir, base)
        while any(taken(stem) for stem in stems(first)):
            first += 1
        chosen = stems(first)
    renamed = {a: b for a, b in zip(wanted, chosen) if a != b}
    return [{fmt: out_dir / f"{stem}.{fmt}" for fmt in formats} for stem in chosen], renamed


def _next_number(out_dir: Path, base: str) -> int:
    """One more than the highest N of the `BASE-N.*` files in `out_dir` (a bare `BASE.*` counts as 0)."""
    pattern = re.compile(rf"{re.escape(base)}(?:-(\d+))?")
    highest = -1
    with contextlib.suppress(OSError):
        for path in out_dir.iterdir():
            stem, _, suffix = path.name.rpartition(".")
            match = pattern.fullmatch(stem)
            if match and suffix in OUTPUT_SUFFIXES:
                highest = max(highest, int(match.group(1) or 0))
    return highest + 1


def plan(config: dict[str, Any] | None = None, *layers: dict[str, Any], registry: Registry | None = None,
         condition: Media | None = None) -> RunPlan:
    """Resolve and check a run: config keys and values, plugin names, the task, what the binder
    must embed, the condition file, and output collisions. Raises SahError; loads no model.

    `condition` passes condition media directly (batch 1, or one per sample) instead of a path
    in `[input]`."""
    registry = registry or get_registry()
    config = cfg.resolve(config or {}, *layers, registry=registry)
    run, inputs = config["run"], config["input"]
    conditions = {m: inputs[m.value] for m in (Modality.VIDEO, Modality.AUDIO, Modality.IMAGE)}
    if condition is not None:
        conditions[condition.modality] = "<media>"
    task = infer_task(run["task"], conditions, config["audio"]["generator"], config["video"]["generator"])
    generators = {m: registry.generator(config[m.value]["generator"], m) for m in task.generates}

    binder_cls = None
    terms: list[Term] = []
    if task.guided and config["guidance"]["enabled"]:
        binder_cls = registry.binder(config["binder"]["name"])
        terms = terms_for(task, config["guidance"]["weights"], bool(run["prompt"].strip()),
                          binder_cls.can_embed(Modality.TEXT))
        missing = sorted(m.value for m in needed_modalities(task, terms) if not binder_cls.can_embed(m))
        if missing:
            embeds = ", ".join(sorted(m.value for m in binder_cls.modalities))
            raise SahError(f"binder {binder_cls.name!r} cannot embed {', '.join(missing)} "
                           f"(it embeds {embeds}), which task {task.name} needs")

    if task.condition is not None and condition is None:
        condition = _read_condition(inputs[task.condition.value], task.condition, inputs["max_seconds"])
    if condition is not None and condition.batch_size not in (1, run["num_samples"]):
        raise SahError(f"condition batch size {condition.batch_size} must be 1 or run.num_samples")

    # names that exist already are not refused here: the run numbers on (a plan writes nothing,
    # and `sah.run` may never save)
    outputs, renamed = _output_paths(config, task)
    _check_output_dir(Path(config["output"]["dir"]))
    _check_licences(config, generators, binder_cls)
    _check_weights(config, generators, binder_cls)
    return RunPlan(config, task, terms, generators, binder_cls, condition, outputs, registry, renamed)


def _check_licences(config: dict[str, Any], generators: dict[Modality, type[Generator]],
                    binder: type[Binder] | None) -> None:
    """With `run.commercial_only`, every plugin's weights must allow commercial use (a plugin
    that declares no licence is refused too): one line naming the first that does not."""
    if not config["run"]["commercial_only"]:
        return
    parts = [(cls, config[m.value], f"--gen-{m.value}") for m, cls in generators.items()]
    if binder is not None:
        parts.append((binder, config["binder"], "--binder"))
    for cls, section, flag in parts:
        licence = cls.licence_for(_model_id(section) or cls.default_model)
        if licence is None or not licence.commercial:
            terms = "declares no licence" if licence is None else f"loads weights under {licence.weights}"
            raise SahError(f"{cls.name} {terms}, which does not allow commercial use, and run.commercial_only is "
                           f"set; choose another {flag} (`sah plugins` lists each plugin's licence)")


def _check_weights(config: dict[str, Any], generators: dict[Modality, type[Generator]],
                   binder: type[Binder] | None) -> None:
    """Plugin options, then every weight the load would read, checked at once, so an offline user
    hears of all missing weights in one line and a bad option before any of them."""
    parts: list[tuple[type, str]] = [(cls, m.value) for m, cls in generators.items()]
    if binder is not None:
        parts.append((binder, "binder"))
    refs: list[tuple[str, str]] = []
    for cls, name in parts:
        section = config[name]
        options = cls.resolve_options(_plugin_options(cls, section), label=f"{name}.")
        default_flag = "--binder-model" if name == "binder" else f"--{name}-model"
        refs += [(ref, flag or default_flag) for ref, flag in cls.weights(_model_id(section), options)]
    hub.check_weights(refs)


def _memory_bytes() -> int | None:
    try:
        return os.sysconf("SC_PHYS_PAGES") * os.sysconf("SC_PAGE_SIZE")
    except (AttributeError, ValueError, OSError):  # not POSIX
        return None


def _read_condition(path: str, modality: Modality, max_seconds: float) -> Media:
    """Read at most `max_seconds` of a condition (0: all of it): a long input is cut at read time,
    so neither memory nor the binder ever sees more than that window. A video whose window would
    not fit in half the machine's memory as float32 frames is refused before decoding."""
    window = max_seconds if max_seconds > 0 else None
    probed = io.probe(path) if modality is Modality.VIDEO else None
    if probed is not None:
        info = probed["video"]
        seconds = min(info["duration"] or math.inf, window or math.inf) if info else math.inf
        if info and info["fps"] and info["width"] and info["height"] and math.isfinite(seconds):
            need = math.ceil(seconds * info["fps"]) * info["width"] * info["height"] * 3 * 4
            memory = _memory_bytes()
            if memory and need > memory // 2:
                raise SahError(f"{path}: {seconds:.0f} s of {info['width']}x{info['height']} video needs "
                               f"{need / 2**30:.1f} GiB as float32 frames, over half this machine's memory; "
                               "lower input.max_seconds or downscale the video")
    condition = io.read_media(path, modality, window)
    duration = getattr(condition, "duration", None)
    if window is not None and duration is not None and duration >= window - 1e-6:
        info = probed or io.probe(path)
        if info["duration"] and info["duration"] > window + 0.5:
            warnings.warn(f"{path} is {info['duration']:.1f} s long; only its first {window:g} s are used "
                          "(input.max_seconds)", UserWarning, stacklevel=3)
    return condition


def _check_output_dir(out_dir: Path) -> None:
    """The output folder, or the nearest existing folder above it, must be a writable folder: say so
    now rather than after the generation. Nothing is created here."""
    existing = out_dir
    while not existing.exists() and existing != existing.parent:
        if existing.is_symlink():
            raise SahError(f"output folder {str(out_dir)!r}: {str(existing)!r} is a dangling symlink")
        existing = existing.parent
    if not existing.is_dir():
        raise SahError(f"output folder {str(out_dir)!r}: {str(existing)!r} is not a folder")
    if not os.access(existing, os.W_OK | os.X_OK):
        raise SahError(f"output folder {str(out_dir)!r} is not writable ({str(existing)!r} is read-only to this user)")


def _model_id(section: dict[str, Any]) -> str | None:
    return section["model"] or None


def _plugin_options(cls: type, section: dict[str, Any]) -> dict[str, Any]:
    """The section's keys that are the plugin's own options (the core keys, such as `model` and
    `cfg_scale`, reach it otherwise: no option may share their names, `sah.registry` checks)."""
    return {k: section[k] for k in cls.options if k in section}


def load(plan: RunPlan) -> Models:
    """Instantiate (load the weights of) the planned generators and binder."""
    device = resolve_device(plan.config["run"]["device"])
    dtype = DTYPES[plan.config["run"]["dtype"]]
    generators = {}
    for modality, cls in plan.generators.items():
        section = plan.config[modality.value]
        generators[modality] = _construct(cls, _model_id(section), device, dtype, _plugin_options(cls, section))
    binder = None
    if plan.binder is not None:
        section = plan.config["binder"]
        binder = _construct(plan.binder, _model_id(section), device, dtype, _plugin_options(plan.binder, section))
    return Models(generators, binder)


def _construct(cls: type, model: str | None, device: torch.device, dtype: torch.dtype, options: dict) -> Any:
    try:
        return cls(model=model, device=device, dtype=dtype, **options)
    except SahError:
        raise
    except Exception as exc:
        kind = "generator" if issubclass(cls, Generator) else "binder"
        raise plugin_failure(kind, cls.name, "to load", exc) from exc


def _embed_targets(plan: RunPlan, binder: Binder | None, prompts: list[str],
                   windows: Sequence[longform.Window] | None = None,
                   keep: frozenset[Modality] | None = None) -> dict[str, Any]:
    """Condition and prompt embeddings, computed once per run; over several windows, the condition
    as one embedding per window of its own stretch. With `keep` (the modalities the guidance will
    embed), the binder releases each modality once nothing left needs it: the prompts' first, so
    that the text tower is gone before the condition's is loaded."""
    targets: dict[str, Any] = {}
    if binder is None:
        return targets
    names = {t.target for t in plan.terms}
    condition = plan.condition if "condition" in names else None
    with torch.no_grad():
        if "text" in names:
            unique = sorted(set(prompts))
            with plugin_call(binder, "embed"):
                table = binder.embed(Text(unique)).float()
            targets["text"] = table[[unique.index(p) for p in prompts]]
        if keep is not None:
            _release(binder, keep | ({condition.modality} if condition is not None else set()))
        if condition is not None:
            condition = condition.to(binder.device)
            with plugin_call(binder, "embed"):
                if windows and len(windows) > 1 and isinstance(condition, (Audio, Video)):
                    targets["condition"] = [binder.embed(longform.segment(condition, w)).float() for w in windows]
                else:
                    targets["condition"] = binder.embed(condition).float()
        if keep is not None:
            _release(binder, keep)
    return targets


def _release(binder: Binder, keep: frozenset[Modality]) -> None:
    with plugin_call(binder, "release"):
        binder.release(frozenset(keep))


def output_windows(config: dict[str, Any], generators: Sequence[Generator],
                   duration: float | None) -> list[longform.Window] | None:
    """The windows of a run longer than its generators' longest single window (`run.window`, else
    the smallest `max_duration` of the generators), or None for one window."""
    if duration is None:
        return None
    run = config["run"]
    limits = [run["window"]] if run["window"] > 0 else [g.max_duration for g in generators if g.max_duration]
    windows = longform.plan(duration, min(limits) if limits else None, run["window_overlap"])
    return windows if len(windows) > 1 else None


def output_duration(config: dict[str, Any], condition: Media | None) -> float | None:
    """Seconds the run's output lasts: `run.duration` if set, else the condition's length (rounded
    up to whole seconds with `run.whole_seconds`), else None: the generator's own default."""
    run = config["run"]
    if run["duration"] > 0:
        return float(run["duration"])
    seconds = getattr(condition, "duration", None)
    if not seconds:
        return None
    # rounded first so that 4.0 s read back as 4.000000001 s is not rounded up to 5
    return float(math.ceil(round(seconds, 6))) if run["whole_seconds"] else float(seconds)


def generate(plan: RunPlan, models: Models | None = None, progress: ProgressFn | None = None,
             should_stop: Callable[[], bool] | None = None, prompts: Sequence[str] | None = None,
             release: bool | None = None) -> RunResult:
    """Sample `run.num_samples` outputs for a plan. `prompts` may give one prompt per sample.

    `release`: once the condition and prompts are embedded, let the binder free what the guidance
    will not embed (`Binder.release`; ImageBind's vision and text towers in a V2A run). None: only
    when the models are loaded here, since models passed in may serve another run (`sah ui`,
    `sah batch`) that would load them again."""
    start = time.perf_counter()
    release = models is None if release is None else release
    with accounting() as account:
        with stage("load"):
            models = models or load(plan)
        result = _generate(plan, models, progress, should_stop, prompts, release)
    return RunResult(plan, result, time.perf_counter() - start, account)


def _generate(plan: RunPlan, models: Models, progress: ProgressFn | None, should_stop: Callable[[], bool] | None,
              prompts: Sequence[str] | None, release: bool) -> list[Sample]:
    config, task = plan.config, plan.task
    run = config["run"]
    n = run["num_samples"]
    prompts = list(prompts) if prompts is not None else [run["prompt"]] * n
    seeds = [run["seed"] + i for i in range(n)]
    duration = output_duration(config, plan.condition)
    windows = output_windows(config, list(models.generators.values()), duration)
    requests = {}
    for modality in task.generates:
        section = config[modality.value]
        requests[modality] = GenerationRequest(
            prompts=prompts, seeds=seeds, negative_prompt=run["negative_prompt"],
            num_steps=section["steps"] or run["steps"], cfg_scale=section["cfg_scale"], duration=duration)
    with stage("condition and prompt"):
        targets = _embed_targets(plan, models.binder, prompts, windows, frozenset(task.generates) if release else None)
    result = align(models.generators, requests, models.binder, plan.terms, targets,
                   GuidanceSettings.from_config(config["guidance"]), on_step=progress, should_stop=should_stop,
                   windows=windows, window_batch=run["window_batch"])
    samples = []
    for i in range(n):
        names = plan.outputs[i] if i < len(plan.outputs) else {}
        stem = next(iter(names.values())).stem if names else f"{task.name}-{seeds[i]}"
        sample = Sample(i, seeds[i], prompts[i], stem)
        if Modality.AUDIO in result.media:
            sample.audio = result.media[Modality.AUDIO].select(i)
        if Modality.VIDEO in result.media:
            sample.video = result.media[Modality.VIDEO].select(i)
        sample.trace = [_sample_record(r, i) for r in result.trace]
        sample.final_similarity = {k: v[i] for k, v in result.final_similarity.items()}
        samples.append(sample)
    return samples


def _sample_record(record: dict[str, Any], i: int) -> dict[str, Any]:
    out = {"tick": record["tick"], "progress": round(record["progress"], 6), "steps": record["steps"],
           "similarity": {k: v[i] for k, v in record["similarity"].items()},
           "loss": record["loss"][i] if record["loss"] else None, "skipped": record["skipped"]}
    if "windows" in record:  # a long output: each window's similarity toward its own stretch
        out["windows"] = {k: v[i] for k, v in record["windows"].items()}
    return out


def versions(registry: Registry | None = None) -> dict[str, str]:
    out = {}
    for dist in ("sah", "torch", "diffusers", "transformers", "av", "pluggy"):
        try:
            out[dist] = importlib.metadata.version(dist)
        except importlib.metadata.PackageNotFoundError:
            pass
    if registry is not None:
        for info in registry.sources.values():
            out.setdefault(info.package, info.version)
    return out


def save(result: RunResult, overwrite: bool | None = None) -> list[Path]:
    """Write each sample's files atomically; the JSON sidecar goes last, so its presence means the
    media beside it are complete."""
    plan = result.plan
    overwrite = plan.config["output"]["overwrite"] if overwrite is None else overwrite
    if not overwrite:
        _refuse_existing([p for paths in plan.outputs[:len(result.samples)] for p in paths.values()])
    written: list[Path] = []
    package_versions = versions(plan.registry)
    for sample, paths in zip(result.samples, plan.outputs):
        if not paths:
            continue
        condition = plan.condition.select(min(sample.index, plan.condition.batch_size - 1)) \
            if plan.condition is not None else None
        with _sample_files(written, paths):
            _save_sample(result, sample, paths, condition, overwrite, written, package_versions)
    return written


def _refuse_existing(paths: list[Path]) -> None:
    """Before writing anything: files that appeared since the plan (another run, or this result
    saved before) are not replaced unless asked, in the words of whoever asked."""
    existing = [p for p in paths if p.exists()]
    if existing:
        more = f" and {len(existing) - 1} more" if len(existing) > 1 else ""
        what = f"output {str(existing[0])!r}{more} already exists"
        raise SahError(f"{what}; pass overwrite=True to sah.save (or set output.overwrite) to replace it, or plan "
                       "again to number on", cli=f"{what}; pass --overwrite to replace it")


@contextlib.contextmanager
def _sample_files(written: list[Path], paths: dict[str, Path]) -> Any:
    """A sample's files are all written or none that this call created is left: on an error or an
    interrupt (disk full, Ctrl-C) the new ones are removed. Earlier samples stay complete."""
    before = len(written)
    fresh = {p for p in paths.values() if not p.exists()}
    try:
        yield
    except BaseException:
        for path in written[before:]:
            if path in fresh:
                with contextlib.suppress(OSError):
                    path.unlink()
        del written[before:]
        raise


def _save_sample(result: RunResult, sample: Sample, paths: dict[str, Path], condition: Media | None,
                 overwrite: bool, written: list[Path], package_versions: dict[str, str]) -> None:
    """`condition` is this sample's own item of the plan's condition."""
    condition_audio = condition if isinstance(condition, Audio) else getattr(condition, "audio", None)
    if "wav" in paths and sample.audio is not None:
        io.write_wav(paths["wav"], sample.audio, overwrite=overwrite)
        written.append(paths["wav"])
    if "mp4" in paths:
        video = sample.video if sample.video is not None else condition
        track = sample.audio if sample.audio is not None else condition_audio
        if track is not None and video is not None:
            track = _trim(track, video.duration)  # the mp4 ends with its picture
        io.write_mp4(paths["mp4"], video, track, overwrite=overwrite)
        written.append(paths["mp4"])
    if "png" in paths:
        _save_plot(paths["png"], result, sample, condition, overwrite)
        written.append(paths["png"])
    if "json" in paths:
        sidecar = _sidecar(result, sample, paths, package_versions)
        io.write_text_atomic(paths["json"], json.dumps(sidecar, indent=2) + "\n", overwrite=overwrite)
        written.append(paths["json"])


def _save_plot(path: Path, result: RunResult, sample: Sample, condition: Media | None, overwrite: bool) -> None:
    from sah import plot

    config, task = result.plan.config, result.plan.task
    num_steps = max((config[m.value]["steps"] or config["run"]["steps"] for m in task.generates), default=1)
    guidance = config["guidance"]
    window = (guidance["start"], guidance["end"]) if result.plan.terms else (0.0, 0.0)
    title = f"{sample.name}: {task.name}" + (f", {sample.prompt!r}" if sample.prompt else "") + f", seed {sample.seed}"
    if result.cost is not None:
        title += "\n" + result.cost.short()
    # the condition fills in the other half of the picture (v2a: the input video; a2v: the input audio)
    video = sample.video if sample.video is not None else condition if isinstance(condition, Video) else None
    audio = sample.audio if sample.audio is not None else condition if isinstance(condition, Audio) else \
        video.audio if video is not None else None
    with io.atomic_path(path, overwrite=overwrite) as temp:
        plot.draw(temp, sample.trace, num_steps=num_steps, window=window, audio=audio, video=video, title=title)


def _trim(audio: Audio, seconds: float) -> Audio:
    keep = max(1, int(round(seconds * audio.sample_rate)))
    return Audio(audio.waveform[..., :keep], audio.sample_rate)


def _json_safe(value: Any) -> Any:
    """NaN and ±inf (a skipped step's similarity) as null: JSON has no spelling for them."""
    if isinstance(value, float) and not math.isfinite(value):
        return None
    if isinstance(value, dict):
        return {k: _json_safe(v) for k, v in value.items()}
    if isinstance(value, list):
        return [_json_safe(v) for v in value]
    return value


def _sidecar(result: RunResult, sample: Sample, paths: dict[str, Path],
             package_versions: dict[str, str]) -> dict[str, Any]:
    plan = result.plan
    return {
        "name": sample.name,
        "task": plan.task.name,
        "seed": sample.seed,
        "prompt": sample.prompt,
        "condition": plan.config["input"][plan.task.condition.value] if plan.task.condition else None,
        "files": {fmt: p.name for fmt, p in paths.items()},
        "audio": {"sample_rate": sample.audio.sample_rate, "seconds": sample.audio.duration}
        if sample.audio is not None else None,
        "video": {"frames": sample.video.num_frames, "fps": sample.video.fps,
                  "size": [sample.video.width, sample.video.height]} if sample.video is not None else None,
        "terms": [t.name for t in plan.terms],
        "final_similarity": _json_safe(sample.final_similarity),
        # guidance updates skipped because they were not finite (each also marked in the trace)
        "skipped_updates": sum(len(r["skipped"]) for r in sample.trace),
        "trace": _json_safe(sample.trace),
        "seconds": round(result.seconds, 3),
        # the run's (all its samples'): seconds per stage and peak memory above the start
        "cost": result.cost.as_dict() if result.cost is not None else None,
        "config": plan.config,
        "versions": package_versions,
    }


def run(config: dict[str, Any] | str | Path | None = None, *, overrides: Sequence[str] = (),
        registry: Registry | None = None, progress: ProgressFn | None = None) -> RunResult:
    """Plan, load and generate in one call. `config` is a dict or a TOML file path; `overrides` are
    `section.key=value` strings, as `--set` takes them. Nothing is written: call `save`."""
    base = cfg.load_toml(config) if isinstance(config, (str, Path)) else (config or {})
    layers = [cfg.parse_set(item) for item in overrides]
    return generate(plan(base, *layers, registry=registry), progress=progress)


__all__ = ["Models", "RunPlan", "RunResult", "Sample", "generate", "load", "plan", "run", "save"]

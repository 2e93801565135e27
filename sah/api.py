"""The Python API behind `sah run`: plan (validate everything, load nothing), load, generate, save.

    import sah
    result = sah.run({"run": {"prompt": "north"}})       # toy world, joint audio + video
    result.samples[0].audio, result.samples[0].video
    sah.save(result)                                      # NAME.wav, NAME.mp4, NAME.json
"""

from __future__ import annotations

import importlib.metadata
import json
import re
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import torch

from sah import config as cfg
from sah import io
from sah.aligner import GuidanceSettings, Term, align
from sah.binder import Binder
from sah.errors import SahError
from sah.generator import GenerationRequest, Generator
from sah.media import Audio, Media, Modality, Text, Video
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


def _output_paths(config: dict[str, Any], task: Task) -> list[dict[str, Path]]:
    run, output = config["run"], config["output"]
    produces = {"json"}
    if Modality.AUDIO in task.generates:
        produces.add("wav")
    if Modality.VIDEO in task.generates or task.condition == Modality.VIDEO:
        produces.add("mp4")
    formats = [f for f in output["formats"] if f in produces]
    base = sanitize_name(output["name"]) if output["name"] else None
    out_dir = Path(output["dir"])
    paths = []
    for i in range(run["num_samples"]):
        if base is None:
            stem = f"{task.name}-{run['seed'] + i}"
        else:
            stem = base if run["num_samples"] == 1 else f"{base}-{i}"
        paths.append({fmt: out_dir / f"{stem}.{fmt}" for fmt in formats})
    return paths


def plan(config: dict[str, Any] | None = None, *layers: dict[str, Any], registry: Registry | None = None,
         condition: Media | None = None) -> RunPlan:
    """Resolve and check a run: config keys and values, plugin names, the task, what the binder
    must embed, the condition file, and output collisions. Raises SahError; loads no model.

    `condition` passes condition media directly (batch 1, or one per sample) instead of a path
    in `[input]`."""
    registry = registry or get_registry()
    config = cfg.resolve(config or {}, *layers, registry=registry)
    run, inputs = config["run"], config["input"]
    conditions = {Modality(k): v for k, v in inputs.items()}
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
        condition = io.read_media(inputs[task.condition.value], task.condition)
    if condition is not None and condition.batch_size not in (1, run["num_samples"]):
        raise SahError(f"condition batch size {condition.batch_size} must be 1 or run.num_samples")

    outputs = _output_paths(config, task)
    if not config["output"]["overwrite"]:
        existing = [p for sample in outputs for p in sample.values() if p.exists()]
        if existing:
            more = f" and {len(existing) - 1} more" if len(existing) > 1 else ""
            raise SahError(f"output {str(existing[0])!r}{more} already exists; pass --overwrite to replace it")
    return RunPlan(config, task, terms, generators, binder_cls, condition, outputs, registry)


def _model_id(section: dict[str, Any]) -> str | None:
    return section["model"] or None


def _plugin_options(cls: type, section: dict[str, Any]) -> dict[str, Any]:
    return {k: section[k] for k in cls.options if k in section and k not in cfg.DEFAULTS["audio"]}


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
        options = {k: section[k] for k in plan.binder.options if k in section}
        binder = _construct(plan.binder, _model_id(section), device, dtype, options)
    return Models(generators, binder)


def _construct(cls: type, model: str | None, device: torch.device, dtype: torch.dtype, options: dict) -> Any:
    try:
        return cls(model=model, device=device, dtype=dtype, **options)
    except SahError:
        raise
    except Exception as exc:
        kind = "generator" if issubclass(cls, Generator) else "binder"
        raise SahError(f"{kind} {cls.name!r} failed to load: {type(exc).__name__}: {exc}") from exc


def _embed_targets(plan: RunPlan, binder: Binder | None, prompts: list[str]) -> dict[str, torch.Tensor]:
    """Condition and prompt embeddings, computed once per run."""
    targets: dict[str, torch.Tensor] = {}
    if binder is None:
        return targets
    names = {t.target for t in plan.terms}
    with torch.no_grad():
        if "condition" in names and plan.condition is not None:
            targets["condition"] = binder.embed(plan.condition.to(binder.device)).float()
        if "text" in names:
            unique = sorted(set(prompts))
            table = binder.embed(Text(unique)).float()
            targets["text"] = table[[unique.index(p) for p in prompts]]
    return targets


def generate(plan: RunPlan, models: Models | None = None, progress: ProgressFn | None = None,
             should_stop: Callable[[], bool] | None = None, prompts: Sequence[str] | None = None) -> RunResult:
    """Sample `run.num_samples` outputs for a plan. `prompts` may give one prompt per sample."""
    start = time.perf_counter()
    models = models or load(plan)
    config, task = plan.config, plan.task
    run = config["run"]
    n = run["num_samples"]
    prompts = list(prompts) if prompts is not None else [run["prompt"]] * n
    seeds = [run["seed"] + i for i in range(n)]
    requests = {}
    for modality in task.generates:
        section = config[modality.value]
        requests[modality] = GenerationRequest(
            prompts=prompts, seeds=seeds, negative_prompt=run["negative_prompt"],
            num_steps=section["steps"] or run["steps"], cfg_scale=section["cfg_scale"])
    result = align(models.generators, requests, models.binder, plan.terms,
                   _embed_targets(plan, models.binder, prompts),
                   GuidanceSettings.from_config(config["guidance"]), on_step=progress, should_stop=should_stop)
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
    return RunResult(plan, samples, time.perf_counter() - start)


def _sample_record(record: dict[str, Any], i: int) -> dict[str, Any]:
    return {"tick": record["tick"], "progress": round(record["progress"], 6), "steps": record["steps"],
            "similarity": {k: v[i] for k, v in record["similarity"].items()},
            "loss": record["loss"][i] if record["loss"] else None, "skipped": record["skipped"]}


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
    written: list[Path] = []
    for sample, paths in zip(result.samples, plan.outputs):
        if not paths:
            continue
        condition = plan.condition.select(min(sample.index, plan.condition.batch_size - 1)) \
            if plan.condition is not None else None
        condition_audio = condition if isinstance(condition, Audio) else getattr(condition, "audio", None)
        next(iter(paths.values())).parent.mkdir(parents=True, exist_ok=True)
        if "wav" in paths and sample.audio is not None:
            io.write_wav(paths["wav"], sample.audio, overwrite=overwrite)
            written.append(paths["wav"])
        if "mp4" in paths:
            video = sample.video if sample.video is not None else condition
            track = sample.audio if sample.audio is not None else condition_audio
            if track is not None and sample.video is not None and plan.task.condition == Modality.AUDIO:
                track = _trim(track, video.duration)
            io.write_mp4(paths["mp4"], video, track, overwrite=overwrite)
            written.append(paths["mp4"])
        if "json" in paths:
            io.write_text_atomic(paths["json"], json.dumps(_sidecar(result, sample, paths), indent=2) + "\n",
                                 overwrite=overwrite)
            written.append(paths["json"])
    return written


def _trim(audio: Audio, seconds: float) -> Audio:
    keep = max(1, int(round(seconds * audio.sample_rate)))
    return Audio(audio.waveform[..., :keep], audio.sample_rate)


def _sidecar(result: RunResult, sample: Sample, paths: dict[str, Path]) -> dict[str, Any]:
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
        "final_similarity": sample.final_similarity,
        "trace": sample.trace,
        "seconds": round(result.seconds, 3),
        "config": plan.config,
        "versions": versions(plan.registry),
    }


def run(config: dict[str, Any] | str | Path | None = None, *, overrides: Sequence[str] = (),
        registry: Registry | None = None, progress: ProgressFn | None = None) -> RunResult:
    """Plan, load and generate in one call. `config` is a dict or a TOML file path; `overrides` are
    `section.key=value` strings, as `--set` takes them. Nothing is written: call `save`."""
    base = cfg.load_toml(config) if isinstance(config, (str, Path)) else (config or {})
    layers = [cfg.parse_set(item) for item in overrides]
    return generate(plan(base, *layers, registry=registry), progress=progress)


__all__ = ["Models", "RunPlan", "RunResult", "Sample", "generate", "load", "plan", "run", "save"]

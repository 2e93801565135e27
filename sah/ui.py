"""`sah ui`: a local web app over every installed plugin (Gradio, the optional `ui` extra).

    from sah import ui
    app = ui.App("outputs")                 # registry: every installed plugin
    demo = app.build()                      # gr.Blocks: Generate, Gallery and Batch tabs
    ui.launch("outputs", port=7860)         # what `sah ui` does

Everything but `App.build` and `launch` works without Gradio: the form's fields and their
conversion to config layers, the model cache, the run and batch threads and the gallery page.
The app is a thin layer over `sah.plan` / `sah.load` / `sah.generate` / `sah.save` (runs are
saved exactly as `sah run` saves them), `sah.report` (the gallery) and `sah.batch` (batches).
"""

from __future__ import annotations

import copy
import dataclasses
import html
import itertools
import json
import math
import os
import secrets
import shutil
import sys
import threading
import time
import traceback
import urllib.parse
import warnings
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

if sys.version_info >= (3, 11):
    import tomllib
else:  # pragma: no cover
    import tomli as tomllib

from sah import config as cfg
from sah.errors import ConfigError, SahError
from sah.eval import AUDIO_SUFFIXES, VIDEO_SUFFIXES
from sah.media import Modality
from sah.registry import Registry, get_registry

IMAGE_SUFFIXES = (".png", ".jpg", ".jpeg", ".webp", ".bmp", ".tif", ".tiff")
MANIFEST_SUFFIXES = (".jsonl", ".ndjson", ".csv")
SECTIONS = ("audio", "video", "binder")
DEVICES = ("auto", "cpu", "cuda", "mps")
BATCH_FOLDER = "batch"

# --------------------------------------------------------------------------- plugin options as fields


@dataclass(frozen=True)
class OptionField:
    """One declared option of a plugin, as the form renders it.

    `kind` follows the option's `Option`: choice (a dropdown of its `choices`), bool (a checkbox),
    int and float (number boxes), str (a text box; also an option that takes a word or a number,
    such as `audio_clips`) and toml (a list or table, typed as a TOML value)."""

    section: str  # "audio", "video" or "binder"
    plugin: str
    key: str
    kind: str
    default: Any
    choices: tuple[Any, ...] = ()
    help: str = ""

    @property
    def id(self) -> str:
        return f"{self.section}:{self.plugin}:{self.key}"

    @property
    def label(self) -> str:
        return f"{self.section}.{self.key}"


def option_fields(cls: type, section: str) -> list[OptionField]:
    """The form fields of a generator's or binder's declared `options` (`sah.component.Option`s),
    after the core keys it gives a default of its own (`core_defaults`: its `cfg_scale`), which
    follow the chosen plugin as its options do."""
    fields = [OptionField(section, cls.name, key, "int" if isinstance(value, int) else "float", value,
                          help=f"this model's default is {value:g}")
              for key, value in getattr(cls, "core_defaults", {}).items()]
    for key, spec in cls.option_specs().items():
        listed = spec.choices if spec.type is None else ()
        if listed:
            kind = "choice"
        elif spec.choices:
            kind = "str"  # a word or a number
        else:
            kind = {bool: "bool", int: "int", float: "float", str: "str"}.get(spec.type, "toml")
        fields.append(OptionField(section, cls.name, key, kind, copy.deepcopy(spec.default), listed, spec.help))
    return fields


def field_display(option: OptionField, value: Any) -> Any:
    """A config value as the form's component holds it."""
    if option.kind == "toml":
        return _toml_literal(value)
    if option.kind == "str" and not isinstance(value, str):
        return str(value)  # a mixed option holding a number (`audio_clips = 4`)
    return value


def field_value(option: OptionField, raw: Any) -> Any:
    """What the form's component holds as the config value `--set` would give: numbers as numbers,
    a text that reads as a number as that number (options such as `audio_clips` take "auto" or 4),
    a list or table from its TOML spelling. An empty number box means the default."""
    if option.kind == "bool":
        return bool(raw)
    if option.kind in ("int", "float"):
        if raw is None or raw == "":
            return option.default
        number = float(raw)
        if option.kind == "int" and number.is_integer():
            return int(number)
        return number
    if option.kind == "toml":
        text = str(raw or "").strip()
        if not text:
            return copy.deepcopy(option.default)
        try:
            return tomllib.loads(f"v = {text}")["v"]
        except tomllib.TOMLDecodeError:
            raise ConfigError(f"config key '{option.label}' must be a TOML value such as "
                              f"{_toml_literal(option.default)}, got {text!r}") from None
    if option.kind == "str" and isinstance(raw, str):
        number = _number(raw)
        return raw if number is None else number
    return raw


def _number(text: str) -> int | float | None:
    try:
        value = tomllib.loads(f"v = {text.strip()}")["v"]
    except tomllib.TOMLDecodeError:
        return None
    return value if isinstance(value, (int, float)) and not isinstance(value, bool) else None


def _toml_literal(value: Any) -> str:
    return cfg.to_toml({"v": {"x": value}}).split("=", 1)[1].strip()


# --------------------------------------------------------------------------- the form


#: The form's own fields (plugin options come after them), in the order the handlers take them.
FORM_FIELDS = (
    "file", "task", "prompt", "negative_prompt", "preset",
    "gen_audio", "audio_model", "gen_video", "video_model", "binder", "binder_model",
    "steps", "seed", "num_samples", "device", "dtype",
    "guidance_enabled", "guidance_start", "guidance_end", "optimizer", "lr_audio", "lr_video",
    "name", "overrides",
)

#: Config keys the form shows, by field (the rest come from the preset, --config and --set).
CONFIG_KEYS = {
    "task": ("run", "task"), "prompt": ("run", "prompt"), "negative_prompt": ("run", "negative_prompt"),
    "gen_audio": ("audio", "generator"), "audio_model": ("audio", "model"),
    "gen_video": ("video", "generator"), "video_model": ("video", "model"),
    "binder": ("binder", "name"), "binder_model": ("binder", "model"),
    "steps": ("run", "steps"), "seed": ("run", "seed"), "num_samples": ("run", "num_samples"),
    "device": ("run", "device"), "dtype": ("run", "dtype"),
    "guidance_enabled": ("guidance", "enabled"), "guidance_start": ("guidance", "start"),
    "guidance_end": ("guidance", "end"), "optimizer": ("guidance", "optimizer"),
}
INT_FIELDS = ("steps", "seed", "num_samples")


def input_modality(path: str | os.PathLike) -> Modality:
    """Which condition a dropped file is: by its suffix, else by what its headers hold (a
    file with neither is refused with the one-line message `sah run` gives for it)."""
    from sah import io

    suffix = Path(path).suffix.lower()
    if suffix in VIDEO_SUFFIXES:
        return Modality.VIDEO
    if suffix in AUDIO_SUFFIXES:
        return Modality.AUDIO
    if suffix in IMAGE_SUFFIXES:
        return Modality.IMAGE
    info = io.probe(path)
    if info["is_image"]:
        return Modality.IMAGE
    return Modality.VIDEO if info["video"] is not None else Modality.AUDIO


def parse_overrides(text: str) -> list[dict[str, Any]]:
    """`section.key=value` lines (as `--set` takes them; blank lines and `#` comments ignored)."""
    layers = []
    for line in (text or "").splitlines():
        line = line.strip()
        if line and not line.startswith("#"):
            layers.append(cfg.parse_set(line))
    return layers


def _stems(task: str, seed: int, samples: int, base: str | None) -> list[str]:
    if base is None:  # sah.api's default: TASK-SEED per sample
        return [f"{task}-{seed + i}" for i in range(samples)]
    return [base] if samples == 1 else [f"{base}-{i}" for i in range(samples)]


def fresh_name(out_dir: Path, task: str, seed: int, samples: int) -> str:
    """An `output.name` whose files collide with nothing in `out_dir`: "" (sah's default,
    TASK-SEED) when that is free, else TASK-SEED-run2, -run3... Any file with the stem counts."""
    taken = {p.name.split(".", 1)[0].lower() for p in out_dir.iterdir()} if out_dir.is_dir() else set()

    def free(stems: list[str]) -> bool:
        return not any(stem.lower() in taken for stem in stems)

    if free(_stems(task, seed, samples, None)):
        return ""
    for n in itertools.count(2):
        base = f"{task}-{seed}-run{n}"
        if free(_stems(task, seed, samples, base)):
            return base
    raise AssertionError("unreachable")


def _plan_numbers_on() -> bool:
    """Whether `sah.plan` itself numbers a run on past existing files (RunPlan.renamed) rather than
    refusing them; where it does, the app leaves naming to it, so names match `sah run`'s."""
    from sah import api

    return "renamed" in {f.name for f in dataclasses.fields(api.RunPlan)}


def short_error(exc: BaseException, uploads: dict[str, str] | None = None) -> str:
    """The line the CLI prints for an error, with the server-side paths of uploads replaced by
    the names the user dropped."""
    if isinstance(exc, SahError):
        text = exc.cli_message() if hasattr(exc, "cli_message") else str(exc)
    else:
        lines = [line.strip() for line in str(exc).splitlines() if line.strip()]
        text = f"{type(exc).__name__}: {lines[0]}" if lines else type(exc).__name__
    for path, name in (uploads or {}).items():
        text = text.replace(path, name)
    return "Error: " + " ".join(text.split())


# --------------------------------------------------------------------------- models, runs


class ModelCache:
    """Loaded generators and binder kept between runs: a run reuses a component an earlier run
    loaded with the same plugin, model, options, device and dtype. One component per slot (audio
    generator, video generator, binder), so a change of model replaces the old one."""

    def __init__(self) -> None:
        self._slots: dict[str, tuple[str, Any]] = {}
        self.loads = 0
        self.lock = threading.Lock()

    @staticmethod
    def key(name: str, section: dict[str, Any], run: dict[str, Any]) -> str:
        # steps and cfg_scale are per-run settings, not load settings
        kept = {k: v for k, v in section.items() if k not in ("steps", "cfg_scale")}
        return json.dumps([name, kept, run["device"], run["dtype"]], sort_keys=True, default=str)

    def models(self, plan: Any) -> Any:
        from sah import api

        run = plan.config["run"]
        generators = {}
        for modality, cls in plan.generators.items():
            generators[modality] = self._get(
                f"generator:{modality.value}", self.key(cls.name, plan.config[modality.value], run),
                lambda m=modality, c=cls: api.load(dataclasses.replace(plan, generators={m: c}, binder=None))
                .generators[m])
        binder = None
        if plan.binder is not None:
            binder = self._get("binder", self.key(plan.binder.name, plan.config["binder"], run),
                               lambda: api.load(dataclasses.replace(plan, generators={})).binder)
        return api.Models(generators, binder)

    def _get(self, slot: str, key: str, load: Callable[[], Any]) -> Any:
        held = self._slots.get(slot)
        if held is not None and held[0] == key:
            return held[1]
        self._slots.pop(slot, None)  # drop the old one first: two large models never sit together
        component = load()
        self.loads += 1
        self._slots[slot] = (key, component)
        return component


class Stopped(KeyboardInterrupt):
    """Raised in a batch's step callback when the page asks it to stop."""


@dataclass
class RunState:
    """What a generation thread reports to the page."""

    phase: str = "loading"  # loading, sampling, saving, done, stopped, error
    tick: int = 0
    total: int = 0
    similarity: dict[str, float] = field(default_factory=dict)
    error: str = ""
    task: str = ""
    stems: list[str] = field(default_factory=list)
    written: list[Path] = field(default_factory=list)
    seconds: float = 0.0
    started: float = field(default_factory=time.monotonic)


class BatchState:
    """A batch thread's progress, read by the page's timer (one batch per app at a time)."""

    def __init__(self) -> None:
        self.phase = "idle"  # idle, running, done, stopped, error
        self.lock = threading.Lock()
        self.summary: Any = None
        self.to_run = 0
        self.job = ""
        self.step = (0, 0)
        self.failures: list[str] = []
        self.error = ""
        self.manifest = ""
        self.out = ""
        self.stop = threading.Event()
        self.thread: threading.Thread | None = None


def _sims_text(sims: dict[str, float]) -> str:
    return "  ".join(f"{k} {v:+.3f}" for k, v in sims.items() if isinstance(v, float) and math.isfinite(v))


def status_html(state: RunState | None, out_dir: Path, error: str = "") -> str:
    """The Generate tab's status line: progress with the live similarities, or the result, or the
    one-line error. `#sah-status[data-phase]` says which, for people and tests."""
    esc = html.escape
    if error or (state is not None and state.phase == "error"):
        text = error or state.error  # type: ignore[union-attr]
        return f'<div id="sah-status" class="sah-status sah-error" data-phase="error">{esc(text)}</div>'
    if state is None:
        return (f'<div id="sah-status" class="sah-status" data-phase="idle">Runs are saved to '
                f'<code>{esc(str(out_dir))}</code></div>')
    elapsed = time.monotonic() - state.started
    if state.phase == "loading":
        body = "Loading models…"
    elif state.phase == "sampling" and not state.total:
        body = "Preparing: prompts, condition, first step…"
    elif state.phase in ("sampling", "saving"):
        total = max(state.total, 1)
        bar = f'<progress max="{total}" value="{state.tick}"></progress>'
        what = "Saving…" if state.phase == "saving" else f"step {state.tick}/{state.total}"
        body = f'{bar} <span>{esc(what)}</span> <span class="sah-sims">{esc(_sims_text(state.similarity))}</span>'
    elif state.phase == "stopped":
        body = "Stopped. Nothing was saved."
    else:
        names = ", ".join(state.stems)
        body = (f"{esc(state.task)}: {len(state.stems)} sample(s) in {state.seconds:.1f} s, saved as "
                f"<code>{esc(names)}</code> in <code>{esc(str(out_dir))}</code>")
        sims = _sims_text(state.similarity)
        if sims:
            body += f' <span class="sah-sims">final {esc(sims)}</span>'
    return (f'<div id="sah-status" class="sah-status" data-phase="{state.phase}">{body}'
            f' <span class="sah-elapsed">{elapsed:.0f} s</span></div>')


def sample_files(out_dir: Path, stem: str) -> dict[str, Path]:
    """The files a saved sample's sidecar names (those that exist), sidecar included."""
    sidecar = out_dir / f"{stem}.json"
    files = {"json": sidecar} if sidecar.is_file() else {}
    try:
        meta = json.loads(sidecar.read_text(encoding="utf-8"))
    except (OSError, ValueError):
        return files
    for fmt, name in (meta.get("files") or {}).items():
        path = out_dir / Path(str(name)).name
        if path.is_file():
            files[fmt] = path
    return files


def sample_facts(out_dir: Path, stem: str) -> str:
    """The sidecar's key facts as Markdown."""
    try:
        meta = json.loads((out_dir / f"{stem}.json").read_text(encoding="utf-8"))
    except (OSError, ValueError):
        return ""
    config = meta.get("config") or {}
    rows = [("name", meta.get("name")), ("task", meta.get("task")), ("prompt", meta.get("prompt") or "—"),
            ("seed", meta.get("seed"))]
    if meta.get("condition"):
        rows.append(("condition", Path(str(meta["condition"])).name))
    for section, key in (("audio", "generator"), ("video", "generator"), ("binder", "name")):
        part = config.get(section) or {}
        if part.get(key) and (section == "binder" and meta.get("terms") or meta.get(section)):
            rows.append((section, part[key] + (f" ({part['model']})" if part.get("model") else "")))
    if meta.get("audio"):
        rows.append(("audio out", f"{meta['audio']['seconds']:.2f} s at {meta['audio']['sample_rate']} Hz"))
    if meta.get("video"):
        video = meta["video"]
        rows.append(("video out", f"{video['frames']} frames at {video['fps']:g} fps, "
                                  f"{video['size'][0]}x{video['size'][1]}"))
    steps = (config.get("run") or {}).get("steps")
    if steps:
        rows.append(("steps", steps))
    guidance = config.get("guidance") or {}
    if meta.get("terms"):
        rows.append(("guidance", f"{guidance.get('optimizer')} from {guidance.get('start')} to {guidance.get('end')}, "
                                 f"terms {', '.join(meta['terms'])}"))
    for term, value in (meta.get("final_similarity") or {}).items():
        rows.append((f"final {term}", "n/a" if value is None else f"{value:+.3f}"))
    if meta.get("skipped_updates"):
        rows.append(("skipped updates", meta["skipped_updates"]))
    rows.append(("seconds", meta.get("seconds")))

    def cell(value: Any) -> str:
        return str(value).replace("|", "\\|").replace("\n", " ")

    return "| | |\n|---|---|\n" + "\n".join(f"| {cell(k)} | {cell(v)} |" for k, v in rows)


def gallery_signature(out_dir: Path) -> str:
    """Changes when a run finishes (its sidecar appears) or scores are written."""
    parts = []
    if out_dir.is_dir():
        for path in sorted(out_dir.rglob("*.json")):
            if not path.name.startswith("."):
                try:
                    parts.append(f"{path.relative_to(out_dir)}:{path.stat().st_mtime_ns}")
                except OSError:
                    pass
    return "|".join(parts)


def gallery_html(out_dir: Path) -> str:
    """`sah report`'s page for the output folder, in an iframe whose links are served from the
    folder (the app's only allowed path). The base is relative to the app's page, so the gallery
    also works behind a proxy that serves the app under a path."""
    from sah import report

    try:
        page = report.build(out_dir)
    except SahError as exc:
        if not any(out_dir.rglob("*.json")) and out_dir.is_dir():
            return f'<div id="sah-gallery-empty">No runs yet in <code>{html.escape(str(out_dir))}</code>.</div>'
        return f'<div id="sah-gallery-error" class="sah-error">{html.escape(short_error(exc))}</div>'
    base = f"gradio_api/file={urllib.parse.quote(str(out_dir.resolve()))}/"
    page = page.replace("<head>", f'<head><base href="{html.escape(base)}">', 1)
    return (f'<iframe id="sah-gallery-frame" title="gallery" style="width:100%;height:78vh;border:0" '
            f'srcdoc="{html.escape(page, quote=True)}"></iframe>')


def batch_html(state: BatchState) -> str:
    esc = html.escape
    with state.lock:
        phase, summary = state.phase, state.summary
        if phase == "idle":
            body = "No batch started. Outputs go to a folder inside the output folder."
        elif phase == "error" and summary is None:
            body = f'<span class="sah-error">{esc(state.error)}</span>'
        else:
            total = summary.total if summary else 0
            finished = (summary.already_done + summary.failed_before + summary.done + summary.failed) if summary else 0
            body = (f'<progress max="{max(total, 1)}" value="{finished}"></progress> '
                    f"{finished}/{total} rows: {summary.done if summary else 0} done now, "
                    f"{summary.already_done if summary else 0} already done, {summary.failed if summary else 0} "
                    f"failed, {summary.failed_before if summary else 0} skipped as failed earlier")
            if phase == "running" and state.job:
                body += f" · running <code>{esc(state.job)}</code> step {state.step[0]}/{state.step[1]}"
            elif phase == "done":
                body += f" · finished in {summary.seconds:.1f} s" if summary else ""
            elif phase == "stopped":
                body += " · stopped: start it again to resume"
            elif phase == "error":
                body += f' · <span class="sah-error">{esc(state.error)}</span>'
            body += f"<br>folder <code>{esc(state.out)}</code>, manifest <code>{esc(state.manifest)}</code>"
            if state.failures:
                body += "<ul>" + "".join(f"<li>{esc(line)}</li>" for line in state.failures[-20:]) + "</ul>"
    return f'<div id="sah-batch-status" class="sah-status" data-phase="{phase}">{body}</div>'


# --------------------------------------------------------------------------- the app


class App:
    """The web app's state and logic: the registry it shows, the output folder, the model cache,
    and the per-session stop flags. `build()` makes the Gradio page over it."""

    def __init__(self, out_dir: str | os.PathLike = "outputs", registry: Registry | None = None,
                 base_layers: Sequence[dict[str, Any]] = (), preset: str | None = None,
                 max_upload_mb: float = 200.0) -> None:
        self.registry = registry or get_registry()
        self.out_dir = Path(out_dir).expanduser().resolve()
        self.base_layers = [copy.deepcopy(layer) for layer in base_layers]
        self.preset = preset or ""
        self.max_upload_mb = max_upload_mb
        self.cache = ModelCache()
        self.stops: dict[str, threading.Event] = {}
        self.batch = BatchState()
        self.fields = {s: [f for name, cls in sorted(self._plugins(s).items()) for f in option_fields(cls, s)]
                       for s in SECTIONS}
        self.initial = self.form_values(self.preset)  # raises for a bad --preset/--config/--set

    # ---- what the registry lists

    def _plugins(self, section: str) -> dict[str, type]:
        if section == "binder":
            return dict(self.registry.binders)
        modality = Modality(section)
        return {n: c for n, c in self.registry.generators.items() if c.modality == modality}

    def plugin_choices(self, section: str) -> list[tuple[str, str]]:
        choices = [(name, name) for name in sorted(self._plugins(section))]
        return choices if section == "binder" else [("(none)", ""), *choices]

    @property
    def option_list(self) -> list[OptionField]:
        return [f for s in SECTIONS for f in self.fields[s]]

    def describe(self, section: str, name: str) -> str:
        cls = self._plugins(section).get(name)
        if cls is None:
            return ""
        info = self.registry.sources.get(name)
        where = f" — {info.package} {info.version}" if info and info.package not in ("?", "(in-process)") else ""
        extra = "" if cls.options else " · no options"
        return f"**{name}**{where}: {cls.description or ''}{extra}"

    # ---- config <-> form

    def form_values(self, preset: str = "") -> dict[str, Any]:
        """The form's values for a preset (or none) over the defaults and the app's --config/--set."""
        from sah.presets import load_preset

        layers = ([load_preset(preset)] if preset else []) + self.base_layers
        config = cfg.resolve(*layers, registry=self.registry)
        values: dict[str, Any] = {"file": None, "preset": preset, "name": "", "overrides": ""}
        for name, (section, key) in CONFIG_KEYS.items():
            values[name] = config[section][key]
        values["lr_audio"] = config["guidance"]["lr"]["audio"]
        values["lr_video"] = config["guidance"]["lr"]["video"]
        chosen = {"audio": config["audio"]["generator"], "video": config["video"]["generator"],
                  "binder": config["binder"]["name"]}
        for option in self.option_list:
            value = config[option.section].get(option.key, option.default) \
                if chosen[option.section] == option.plugin else option.default
            values[option.id] = field_display(option, value)
        return values

    def layers(self, values: dict[str, Any]) -> tuple[list[dict[str, Any]], dict[str, str]]:
        """Config layers for a form submission, lowest first: preset < the app's --config/--set <
        the form < the form's `section.key=value` lines; and the uploads by server path."""
        from sah.presets import load_preset

        form: dict[str, dict[str, Any]] = {}
        for name, (section, key) in CONFIG_KEYS.items():
            value = values.get(name)
            if value is None:
                continue
            if name in INT_FIELDS:
                value = int(value)
            elif name in ("guidance_start", "guidance_end"):
                value = float(value)
            form.setdefault(section, {})[key] = value
        lr = {m: float(values[f"lr_{m}"]) for m in ("audio", "video") if values.get(f"lr_{m}") is not None}
        if lr:
            form.setdefault("guidance", {})["lr"] = lr
        chosen = {"audio": form.get("audio", {}).get("generator"), "video": form.get("video", {}).get("generator"),
                  "binder": form.get("binder", {}).get("name")}
        for option in self.option_list:
            if chosen[option.section] == option.plugin and option.id in values:
                form.setdefault(option.section, {})[option.key] = field_value(option, values[option.id])
        uploads: dict[str, str] = {}
        if values.get("file"):
            path = os.fspath(values["file"])
            uploads[path] = Path(path).name
            modality = input_modality(path)
            form["input"] = {m: (path if m == modality.value else "") for m in ("video", "audio", "image")}
        layers = [load_preset(values["preset"])] if values.get("preset") else []
        layers += [*self.base_layers, form, *parse_overrides(values.get("overrides") or "")]
        return layers, uploads

    def plan(self, values: dict[str, Any]) -> tuple[Any, dict[str, str]]:
        """Check a submission as `sah run` would (`sah.plan`: keys, values, plugins, the task, what
        the binder must embed, the condition file, weights offline) and pick the output names.
        Raises SahError; loads nothing."""
        from sah import api
        from sah.tasks import infer_task

        uploads: dict[str, str] = {}
        try:
            layers, uploads = self.layers(values)
            config = cfg.resolve(*layers, registry=self.registry)
            inputs = config["input"]
            conditions = {m: inputs[m.value] for m in (Modality.VIDEO, Modality.AUDIO, Modality.IMAGE)}
            task = infer_task(config["run"]["task"], conditions, config["audio"]["generator"],
                              config["video"]["generator"])
            name = values.get("name") or ""
            if not name and not config["output"]["name"] and not _plan_numbers_on():
                name = fresh_name(self.out_dir, task.name, config["run"]["seed"], config["run"]["num_samples"])
            fixed: dict[str, Any] = {"dir": str(self.out_dir)}  # nothing is written outside the folder
            if name:
                fixed["name"] = name
            with warnings.catch_warnings():
                warnings.simplefilter("ignore")
                plan = api.plan(*layers, {"output": fixed}, registry=self.registry)
        except SahError as exc:
            raise SahError(short_error(exc, uploads)[len("Error: "):]) from exc
        return plan, uploads

    def run(self, plan: Any, state: RunState, stop: threading.Event | None = None) -> None:
        """Load (or reuse) the models, generate and save, reporting into `state`. Never raises."""
        from sah import api

        stop = stop or threading.Event()
        state.task = plan.task.name
        try:
            with self.cache.lock:  # one generation at a time: the loaded models are shared
                models = self.cache.models(plan)
                state.phase = "sampling"

                def progress(tick: int, total: int, sims: dict[str, float]) -> None:
                    state.tick, state.total, state.similarity = tick, total, dict(sims)

                result = api.generate(plan, models, progress=progress, should_stop=stop.is_set)
                state.phase = "saving"
                state.written = api.save(result)
            state.stems = [s.name for s in result.samples]
            first = result.samples[0].final_similarity if result.samples else {}
            state.similarity = {k: float(v) for k, v in first.items()}
            state.seconds = result.seconds
            state.phase = "done"
        except KeyboardInterrupt:
            state.phase = "stopped"
        except Exception as exc:  # a plugin failing mid-run is shown; the app keeps serving
            if os.environ.get("SAH_DEBUG"):
                traceback.print_exc()
            state.error = short_error(exc)
            state.phase = "error"

    # ---- batch

    def batch_folder(self, name: str) -> Path:
        folder = (self.out_dir / (name.strip() or BATCH_FOLDER)).resolve()
        if folder == self.out_dir or self.out_dir not in folder.parents:
            raise SahError(f"batch folder {name!r} must be a folder inside the output folder {str(self.out_dir)!r}")
        return folder

    def start_batch(self, upload: str | None, manifest_path: str, folder: str, steps: float | None,
                    retry_failed: bool, overrides: str) -> None:
        """Start (or resume: done rows are skipped) a batch in a background thread."""
        from sah.batch import BatchProgress, run_batch

        state = self.batch
        with state.lock:
            if state.phase == "running":
                raise SahError("a batch is already running; stop it first")
            out = self.batch_folder(folder)
            if upload:
                source = Path(upload)
                if source.suffix.lower() not in MANIFEST_SUFFIXES:
                    raise SahError(f"{source.name}: a manifest is a .jsonl, .ndjson or .csv file")
                out.mkdir(parents=True, exist_ok=True)
                manifest = out / f"manifest{source.suffix.lower()}"  # kept for resuming; rows' paths read from here
                shutil.copyfile(source, manifest)
            elif manifest_path.strip():
                manifest = Path(manifest_path.strip()).expanduser()
                if not manifest.is_absolute():
                    manifest = self.out_dir / manifest
                if not manifest.is_file():
                    raise SahError(f"manifest {str(manifest)!r} does not exist")
            else:
                raise SahError("drop a manifest or give its path")
            # the app's --config/--set < the page's steps < the page's overrides (each row's own values go over all)
            layers = [*self.base_layers, *([{"run": {"steps": int(steps)}}] if steps else []),
                      *parse_overrides(overrides)]
            state.phase, state.summary, state.error, state.job, state.failures = "running", None, "", "", []
            state.manifest, state.out, state.step = str(manifest), str(out), (0, 0)
            state.stop = threading.Event()
        app = self

        class Progress(BatchProgress):
            def start(self, summary: Any, to_run: int) -> None:
                with state.lock:
                    state.summary, state.to_run = summary, to_run

            def outcome(self, outcome: Any, summary: Any) -> None:
                with state.lock:
                    state.summary = summary
                    if outcome.status == "failed":
                        state.failures.append(f"failed {outcome.id}: {outcome.error}")

            def step(self, worker: str, job_id: str, done: int, total: int) -> None:
                with state.lock:
                    state.job, state.step = job_id, (done, total)
                if state.stop.is_set():
                    raise Stopped

        def work() -> None:
            try:
                summary = run_batch(manifest, out, layers=layers, retry_failed=retry_failed, workers=1,
                                    job_progress=True, progress=Progress(), registry=app.registry)
                with state.lock:
                    state.summary, state.phase = summary, "done"
            except KeyboardInterrupt:
                with state.lock:
                    state.phase = "stopped"
            except Exception as exc:
                with state.lock:
                    state.error, state.phase = short_error(exc), "error"

        state.thread = threading.Thread(target=work, name="sah-batch", daemon=True)
        state.thread.start()

    # ---- scores

    def score(self) -> str:
        """`sah eval` over the output folder, written to OUTPUT/eval.json (which the gallery shows)."""
        from sah import eval as evaluation

        items = evaluation.find_items([self.out_dir])
        chosen = evaluation.check_metrics(evaluation.default_metrics(items, self.registry), self.registry)
        options: dict[str, dict] = {}
        models: dict[str, str] = {}
        for item in items:
            section = (item.meta.get("config") or {}).get("binder") or {}
            if section.get("name"):
                options.setdefault(section["name"], section)
                if section.get("model"):
                    models.setdefault(section["name"], section["model"])
        binders = evaluation.load_binders(chosen, self.registry, models=models, options=options)
        report = evaluation.evaluate(items, chosen, binders, registry=self.registry)
        keep = getattr(evaluation, "update_folder_scores", None)  # what `sah eval FOLDER` keeps, where it does
        if keep is not None:
            keep(report, self.out_dir)
        else:
            evaluation.write_json(report, self.out_dir / "eval.json")
        failed = [row for row in report.rows if row.get("error")]
        note = f"; {len(failed)} could not be scored ({failed[0]['name']}: {failed[0]['error']})" if failed else ""
        return f"scored {len(report.rows)} clip(s): {', '.join(report.metrics)}{note}"

    # ---- the page

    def build(self) -> Any:
        """The Gradio Blocks: Generate, Gallery and Batch tabs."""
        return _build_page(self)


# --------------------------------------------------------------------------- the Gradio page


def _elem_id(*parts: str) -> str:
    return "sah-" + "-".join("".join(ch if ch.isalnum() else "_" for ch in part) for part in parts)


def _option_component(gr: Any, option: OptionField, value: Any) -> Any:
    label, elem_id = option.label, _elem_id("opt", option.section, option.plugin, option.key)
    info = option.help or None
    if option.kind == "bool":
        return gr.Checkbox(label=label, value=bool(value), elem_id=elem_id, info=info)
    if option.kind == "int":
        return gr.Number(label=label, value=value if _scalar_number(value) else None, precision=0, elem_id=elem_id,
                         info=info if _scalar_number(value) else f"default {value!r}")
    if option.kind == "float":
        return gr.Number(label=label, value=value, elem_id=elem_id, info=info)
    if option.kind == "choice":
        return gr.Dropdown(choices=list(option.choices), value=value, label=label, elem_id=elem_id, info=info)
    if option.kind == "toml":
        info = " ".join(filter(None, [option.help, "a TOML value, e.g. " + _toml_literal(option.default)]))
    return gr.Textbox(label=label, value=value, elem_id=elem_id, info=info)


def _scalar_number(value: Any) -> bool:
    return isinstance(value, (int, float)) and not isinstance(value, bool)


def _build_page(app: App) -> Any:
    import gradio as gr

    v = app.initial
    out = app.out_dir
    comps: dict[str, Any] = {}
    groups: dict[str, dict[str, Any]] = {s: {} for s in SECTIONS}
    options: dict[str, Any] = {}
    presets = _preset_choices()

    with gr.Blocks(title="sah", analytics_enabled=False) as demo:
        session = gr.State(session_token)
        gr.Markdown(f"## sah — seeing and hearing\nOutput folder: `{out}`", elem_id="sah-header")
        with gr.Tabs():
            with gr.Tab("Generate", id="generate", elem_id="sah-tab-generate"):
                with gr.Row():
                    with gr.Column(scale=5):
                        comps["file"] = gr.File(label="condition: drop a video, a sound or an image (none: joint)",
                                                type="filepath", elem_id="sah-input", height=120)
                        comps["prompt"] = gr.Textbox(label="prompt", value=v["prompt"], elem_id="sah-prompt")
                        with gr.Row():
                            comps["preset"] = gr.Dropdown(choices=presets, value=v["preset"], label="preset",
                                                          elem_id="sah-preset")
                            comps["task"] = gr.Dropdown(choices=list(cfg.TASKS), value=v["task"], label="task",
                                                        elem_id="sah-task")
                        with gr.Row():
                            for section, name, label in (("audio", "gen_audio", "audio generator"),
                                                         ("video", "gen_video", "video generator"),
                                                         ("binder", "binder", "binder")):
                                comps[name] = gr.Dropdown(choices=app.plugin_choices(section), value=v[name],
                                                          label=label, elem_id=_elem_id(name))
                        for section in SECTIONS:
                            chosen = v["binder" if section == "binder" else f"gen_{section}"]
                            for plugin in sorted(app._plugins(section)):
                                with gr.Group(visible=plugin == chosen,
                                              elem_id=_elem_id("options", section, plugin)) as group:
                                    gr.Markdown(app.describe(section, plugin))
                                    for option in app.fields[section]:
                                        if option.plugin == plugin:
                                            options[option.id] = _option_component(gr, option, v[option.id])
                                groups[section][plugin] = group
                        with gr.Row():
                            comps["steps"] = gr.Number(label="steps", value=v["steps"], precision=0, minimum=1,
                                                       elem_id="sah-steps")
                            comps["seed"] = gr.Number(label="seed", value=v["seed"], precision=0, minimum=0,
                                                      elem_id="sah-seed")
                            comps["num_samples"] = gr.Number(label="samples", value=v["num_samples"], precision=0,
                                                             minimum=1, elem_id="sah-num-samples")
                        with gr.Accordion("guidance", open=True):
                            with gr.Row():
                                comps["guidance_enabled"] = gr.Checkbox(label="enabled", value=v["guidance_enabled"],
                                                                        elem_id="sah-guidance-enabled")
                                comps["optimizer"] = gr.Dropdown(choices=list(cfg.OPTIMIZERS), value=v["optimizer"],
                                                                 label="optimizer", elem_id="sah-optimizer")
                            with gr.Row():
                                comps["guidance_start"] = gr.Slider(0, 1, value=v["guidance_start"], step=0.05,
                                                                    label="start", elem_id="sah-guidance-start")
                                comps["guidance_end"] = gr.Slider(0, 1, value=v["guidance_end"], step=0.05,
                                                                  label="end", elem_id="sah-guidance-end")
                            with gr.Row():
                                comps["lr_audio"] = gr.Number(label="lr audio", value=v["lr_audio"],
                                                              elem_id="sah-lr-audio")
                                comps["lr_video"] = gr.Number(label="lr video", value=v["lr_video"],
                                                              elem_id="sah-lr-video")
                        with gr.Accordion("more", open=False):
                            comps["negative_prompt"] = gr.Textbox(label="negative prompt", value=v["negative_prompt"])
                            with gr.Row():
                                comps["audio_model"] = gr.Textbox(label="audio model", value=v["audio_model"],
                                                                  placeholder="plugin default")
                                comps["video_model"] = gr.Textbox(label="video model", value=v["video_model"],
                                                                  placeholder="plugin default")
                                comps["binder_model"] = gr.Textbox(label="binder model", value=v["binder_model"],
                                                                   placeholder="plugin default")
                            with gr.Row():
                                comps["device"] = gr.Dropdown(choices=list(DEVICES), value=v["device"],
                                                              label="device", allow_custom_value=True)
                                comps["dtype"] = gr.Dropdown(choices=list(cfg.DTYPES), value=v["dtype"], label="dtype")
                                comps["name"] = gr.Textbox(label="output name", value="",
                                                           placeholder="TASK-SEED, never replacing a run")
                            comps["overrides"] = gr.Textbox(label="config overrides, one section.key=value a line "
                                                                  "(as --set)", lines=2, elem_id="sah-overrides")
                        with gr.Row():
                            generate = gr.Button("Generate", variant="primary", elem_id="sah-generate")
                            stop = gr.Button("Stop", variant="stop", elem_id="sah-stop")
                    with gr.Column(scale=5):
                        status = gr.HTML(status_html(None, out), elem_id="sah-status-box")
                        video = gr.Video(label="picture and sound (mp4)", interactive=False, elem_id="sah-video")
                        audio = gr.Audio(label="sound (wav)", type="filepath", interactive=False, elem_id="sah-audio")
                        plot = gr.Image(label="similarity per step", type="filepath", interactive=False,
                                        elem_id="sah-plot")
                        sample = gr.Dropdown(label="sample", choices=[], visible=False, elem_id="sah-sample")
                        facts = gr.Markdown(elem_id="sah-facts")
                        files = gr.File(label="downloads", file_count="multiple", interactive=False,
                                        elem_id="sah-files")

            with gr.Tab("Gallery", id="gallery", elem_id="sah-tab-gallery"):
                gr.Markdown(f"The runs in `{out}`, as `sah report` shows them; scores from `eval.json` there.")
                with gr.Row():
                    refresh = gr.Button("Refresh", elem_id="sah-gallery-refresh")
                    score = gr.Button("Score runs (sah eval)", elem_id="sah-gallery-score")
                score_note = gr.HTML("", elem_id="sah-score-note")
                gallery = gr.HTML(gallery_html(out), elem_id="sah-gallery")
                signature = gr.State("")

            with gr.Tab("Batch", id="batch", elem_id="sah-tab-batch"):
                gr.Markdown("A manifest of runs (docs/batch.md), run in this process; rows already done are "
                            "skipped, so starting again resumes. An uploaded manifest is kept in the batch folder "
                            "and its rows' relative paths are read from there.")
                with gr.Row():
                    manifest_file = gr.File(label="manifest (.jsonl, .ndjson, .csv)", type="filepath",
                                            elem_id="sah-manifest", height=100)
                    with gr.Column():
                        manifest_path = gr.Textbox(label="or its path on this machine", elem_id="sah-manifest-path")
                        batch_folder = gr.Textbox(label="batch folder, inside the output folder", value=BATCH_FOLDER,
                                                  elem_id="sah-batch-folder")
                with gr.Row():
                    batch_steps = gr.Number(label="steps (empty: as the rows say)", value=None, precision=0,
                                            minimum=1, elem_id="sah-batch-steps")
                    retry = gr.Checkbox(label="retry failed rows", value=False, elem_id="sah-batch-retry")
                batch_overrides = gr.Textbox(label="config overrides for every row, one section.key=value a line",
                                             lines=2, elem_id="sah-batch-overrides")
                with gr.Row():
                    batch_start = gr.Button("Start / resume", variant="primary", elem_id="sah-batch-start")
                    batch_stop = gr.Button("Stop", variant="stop", elem_id="sah-batch-stop")
                batch_status = gr.HTML(batch_html(app.batch), elem_id="sah-batch-box")
                batch_seen = gr.State("")
        timer = gr.Timer(1.0)

        form_inputs = [comps[name] for name in FORM_FIELDS]
        option_inputs = [options[option.id] for option in app.option_list]
        results = [video, audio, plot, facts, files, sample]

        def collect(args: Sequence[Any]) -> dict[str, Any]:
            names = [*FORM_FIELDS, *(option.id for option in app.option_list)]
            return dict(zip(names, args))

        def view(stem: str | None) -> list[Any]:
            if not stem:
                return [None, None, None, "", None]
            found = sample_files(out, stem)
            order = [found[k] for k in ("mp4", "wav", "png", "json") if k in found]
            return [found.get("mp4"), found.get("wav"), found.get("png"), sample_facts(out, stem),
                    [str(p) for p in order] or None]

        def on_generate(token: str, *args: Any) -> Any:
            skip = [gr.skip()] * len(results)
            stop_flag = app.stops[token] = threading.Event()
            try:
                plan, _ = app.plan(collect(args))
            except SahError as exc:
                yield [status_html(None, out, f"Error: {exc}"), *skip]
                return
            except Exception as exc:  # a bug must not take the page down either
                yield [status_html(None, out, short_error(exc)), *skip]
                return
            state = RunState()
            worker = threading.Thread(target=app.run, args=(plan, state, stop_flag), name="sah-run", daemon=True)
            worker.start()
            shown = ""
            while worker.is_alive():
                text = status_html(state, out)
                if text != shown:
                    shown = text
                    yield [text, *skip]
                worker.join(0.15)
            if state.phase != "done":
                yield [status_html(state, out), *skip]
                return
            first = state.stems[0] if state.stems else None
            picker = gr.update(choices=state.stems, value=first, visible=len(state.stems) > 1)
            yield [status_html(state, out), *view(first), picker]

        def on_stop(token: str) -> None:
            flag = app.stops.get(token)
            if flag is not None:
                flag.set()

        generate.click(on_generate, [session, *form_inputs, *option_inputs], [status, *results],
                       concurrency_limit=1, show_progress="hidden")
        stop.click(on_stop, session, None, queue=False)
        sample.input(lambda stem: view(stem), sample, [video, audio, plot, facts, files])

        # a plugin's options show when it is chosen
        for section, name in (("audio", "gen_audio"), ("video", "gen_video"), ("binder", "binder")):
            plugins = list(groups[section])
            comps[name].change(lambda chosen, _p=plugins: [gr.update(visible=p == chosen) for p in _p],
                               comps[name], [groups[section][p] for p in plugins], queue=False)

        preset_outputs = [comps[name] for name in FORM_FIELDS if name not in ("file", "preset", "name", "overrides")]

        def on_preset(preset: str) -> list[Any]:
            try:
                values = app.form_values(preset or "")
            except SahError as exc:
                return [*([gr.skip()] * (len(preset_outputs) + len(option_inputs))),
                        status_html(None, out, f"Error: {exc}")]
            names = [n for n in FORM_FIELDS if n not in ("file", "preset", "name", "overrides")]
            return [*(values[n] for n in names), *(values[o.id] for o in app.option_list), status_html(None, out)]

        comps["preset"].input(on_preset, comps["preset"], [*preset_outputs, *option_inputs, status])

        def refresh_gallery(seen: str, force: bool = False) -> list[Any]:
            now = gallery_signature(out)
            if now == seen and not force:
                return [gr.skip(), gr.skip()]
            return [gallery_html(out), now]

        def on_score() -> list[Any]:
            try:
                note = f'<div id="sah-score-note-text">{html.escape(app.score())}</div>'
            except SahError as exc:
                note = f'<div class="sah-error" id="sah-score-note-text">{html.escape(f"Error: {exc}")}</div>'
            return [note, *refresh_gallery("", True)]

        refresh.click(lambda seen: refresh_gallery(seen, True), signature, [gallery, signature])
        score.click(on_score, None, [score_note, gallery, signature], concurrency_limit=1)

        def on_batch_start(upload: str | None, path: str, folder: str, steps: float | None, retry_failed: bool,
                           overrides: str) -> str:
            try:
                app.start_batch(upload, path or "", folder or "", steps, retry_failed, overrides or "")
            except SahError as exc:
                with app.batch.lock:
                    app.batch.phase, app.batch.summary, app.batch.error = "error", None, f"Error: {exc}"
            return batch_html(app.batch)

        def on_batch_stop() -> str:
            app.batch.stop.set()
            return batch_html(app.batch)

        batch_start.click(on_batch_start, [manifest_file, manifest_path, batch_folder, batch_steps, retry,
                                           batch_overrides], batch_status)
        batch_stop.click(on_batch_stop, None, batch_status, queue=False)

        def on_tick(seen_gallery: str, seen_batch: str) -> list[Any]:
            gallery_update = refresh_gallery(seen_gallery)
            text = batch_html(app.batch)
            batch_update = [gr.skip(), gr.skip()] if text == seen_batch else [text, text]
            return [*gallery_update, *batch_update]

        timer.tick(on_tick, [signature, batch_seen], [gallery, signature, batch_status, batch_seen],
                   show_progress="hidden", concurrency_limit=None)
        demo.load(lambda: refresh_gallery("", True), None, [gallery, signature])
    demo.sah_app = app  # type: ignore[attr-defined]
    demo.sah_components = {**comps, "generate": generate, "stop": stop, "status": status,  # type: ignore[attr-defined]
                           "video": video, "audio": audio, "plot": plot, "files": files, "gallery": gallery,
                           "batch_status": batch_status}
    demo.sah_options = options  # type: ignore[attr-defined]
    demo.sah_groups = groups  # type: ignore[attr-defined]
    return demo


def _preset_choices() -> list[tuple[str, str]]:
    from sah.presets import list_presets, preset_summary

    return [("(none)", ""), *((f"{name} — {preset_summary(name)}", name) for name in list_presets())]


CSS = """
.sah-status{padding:.5rem .7rem;border-radius:6px;background:var(--block-background-fill);min-height:1.6rem}
.sah-status progress{width:40%;vertical-align:middle}
.sah-error{color:#b00020;font-weight:600}
.sah-sims{font-family:ui-monospace,monospace;font-size:.9em}
.sah-elapsed{color:var(--body-text-color-subdued);float:right}
"""


def launch(out_dir: str | os.PathLike = "outputs", *, host: str = "127.0.0.1", port: int = 7860,
           max_upload_mb: float = 200.0, registry: Registry | None = None,
           base_layers: Sequence[dict[str, Any]] = (), preset: str | None = None, quiet: bool = False) -> None:
    """Serve the app until interrupted. Only the output folder is served (Gradio's `allowed_paths`),
    besides Gradio's own upload and cache folders. A bad preset, config or folder, or a port in
    use, is a one-line SahError before Gradio is imported."""
    app = App(out_dir, registry, base_layers, preset, max_upload_mb)
    try:
        app.out_dir.mkdir(parents=True, exist_ok=True)
    except OSError as exc:
        raise SahError(f"output folder {str(app.out_dir)!r} cannot be made: {exc.strerror or exc}") from None
    if not os.access(app.out_dir, os.W_OK | os.X_OK):
        raise SahError(f"output folder {str(app.out_dir)!r} is not writable")
    _check_port(host, port)

    import gradio as gr

    demo = app.build()
    demo.queue(default_concurrency_limit=1)
    theme = gr.themes.Default(font=["system-ui", "sans-serif"], font_mono=["ui-monospace", "monospace"])
    if not quiet:
        print(f"sah ui: output folder {app.out_dir}", flush=True)
    demo.launch(server_name=host, server_port=port, allowed_paths=[str(app.out_dir)],
                max_file_size=int(max_upload_mb * 1024 * 1024), ssr_mode=False, mcp_server=False, quiet=quiet,
                show_error=False, theme=theme, css=CSS, footer_links=[], inbrowser=False, share=False)


def _check_port(host: str, port: int) -> None:
    import socket

    try:
        infos = socket.getaddrinfo(host, port, type=socket.SOCK_STREAM)
    except OSError as exc:
        raise SahError(f"--host {host!r}: {exc.strerror or exc}") from None
    family, kind, proto, _, address = infos[0]
    with socket.socket(family, kind, proto) as probe:
        probe.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        try:
            probe.bind(address)
        except OSError as exc:
            raise SahError(f"cannot serve on {host}:{port}: {exc.strerror or exc} (--port picks another)") from None


def session_token() -> str:
    return secrets.token_hex(8)


__all__ = ["App", "ModelCache", "OptionField", "field_value", "fresh_name", "input_modality", "launch",
           "option_fields"]

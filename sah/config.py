"""TOML configuration: defaults < config file < CLI flags < `--set section.key=value`.

A config is a plain nested dict. `resolve` merges the layers, fills in the chosen plugins'
option defaults and checks every key and value, so a typo fails before any model loads.
"""

from __future__ import annotations

import copy
import difflib
import math
import re
import sys
from pathlib import Path
from typing import Any

if sys.version_info >= (3, 11):
    import tomllib
else:  # pragma: no cover
    import tomli as tomllib

from sah.errors import ConfigError

TASKS = ("auto", "joint", "v2a", "a2v", "i2a", "t2a", "t2v")
DTYPES = ("float32", "float16", "bfloat16")
OPTIMIZERS = ("adam", "sgd", "ngd")
NUDGES = ("current", "stepped")
WINDOWS = ("progress", "after", "noise")
FORMATS = ("wav", "mp4", "json")
WEIGHT_TERMS = ("condition", "pair", "text")

_GENERATOR_KEYS = {"generator": "", "model": "", "steps": 0, "cfg_scale": 1.0}

DEFAULTS: dict[str, dict[str, Any]] = {
    "run": {
        "task": "auto",
        "prompt": "",
        "negative_prompt": "",
        "seed": 0,
        "steps": 50,
        "num_samples": 1,
        "device": "auto",
        "dtype": "float32",
        # seconds of output; 0: as long as the condition (V2A: the video), else the generator's own default
        "duration": 0.0,
        # round a duration taken from the condition up to whole seconds (the authors' V2A code)
        "whole_seconds": False,
        # seconds of one window of a long output; 0: the generators' longest single window
        "window": 0.0,
        # how much consecutive windows overlap, as a fraction of a window
        "window_overlap": 0.25,
        # windows that are samples of their own (a latent without a time axis) guided this many at a time
        "window_batch": 8,
        # refuse, before anything loads, plugins whose weights' licence does not allow commercial use
        "commercial_only": False,
    },
    # max_seconds: a condition is read up to this many seconds (0: the whole file; a long output is
    # sampled in windows, so length alone costs time, not memory)
    "input": {"video": "", "audio": "", "image": "", "max_seconds": 0.0},
    "audio": {**_GENERATOR_KEYS, "generator": "toy-audio"},
    "video": {**_GENERATOR_KEYS, "generator": "toy-video"},
    "binder": {"name": "toy", "model": ""},
    "guidance": {
        "enabled": True,
        "start": 0.2,
        "end": 1.0,
        # which latent is nudged: "current" (x_t before the scheduler step, x̂0 at its own noise
        # level) or "stepped" (the authors' code: the stepped latent, x̂0 with ᾱ and ε of the step taken)
        "nudge": "current",
        # how start/end count: "progress" (start <= i/N < end), "after" (the authors': i > int(start·N))
        # or "noise" (start <= 1 - noise level < end: the same noise levels whatever the schedule's shift)
        "window": "progress",
        # The paper's rule. On the toy world it is the one rule that meets every target
        # (benchmarks/toy_alignment.py); real video latents want a smaller video lr (presets).
        "optimizer": "adam",
        "lr": {"audio": 0.1, "video": 0.1},
        "opt_steps": 1,
        "weights": {"condition": 1.0, "pair": 1.0, "text": 1.0},
        "clip": 0.0,
        "prompt_tuning": False,
        "prompt_lr": 0.01,
    },
    "output": {"dir": "outputs", "name": "", "formats": ["wav", "mp4", "json"], "overwrite": False, "plot": True},
}

# Keys whose plugin decides the rest of the section's keys.
PLUGIN_SECTIONS = {"audio": "generator", "video": "generator", "binder": "name"}


def default_config() -> dict[str, dict[str, Any]]:
    return copy.deepcopy(DEFAULTS)


def load_toml(path: str | Path) -> dict[str, Any]:
    path = Path(path)
    if not path.is_file():
        raise ConfigError(f"config file {str(path)!r} does not exist" if not path.exists()
                          else f"config path {str(path)!r} is not a file")
    try:
        return tomllib.loads(path.read_text(encoding="utf-8"))
    except (tomllib.TOMLDecodeError, UnicodeDecodeError) as exc:
        raise ConfigError(f"config file {str(path)!r} is not valid TOML: {exc}") from None


def merge(base: dict[str, Any], override: dict[str, Any]) -> dict[str, Any]:
    """Deep merge; tables merge key by key, everything else is replaced."""
    out = copy.deepcopy(base)
    for key, value in override.items():
        if isinstance(value, dict) and isinstance(out.get(key), dict):
            out[key] = merge(out[key], value)
        else:
            out[key] = copy.deepcopy(value)
    return out


def parse_set(item: str) -> dict[str, Any]:
    """`guidance.lr.audio=0.1` → `{"guidance": {"lr": {"audio": 0.1}}}`. The value is read as a
    TOML value (number, bool, string, array, inline table); anything else is taken as a string."""
    key, sep, raw = item.partition("=")
    key = key.strip()
    if not sep or not re.fullmatch(r"[A-Za-z_][\w-]*(\.[A-Za-z_][\w-]*)+", key):
        raise ConfigError(f"--set expects section.key=value, got {item!r}")
    try:
        value = tomllib.loads(f"v = {raw.strip()}")["v"]
    except tomllib.TOMLDecodeError:
        value = raw.strip()
    parts = key.split(".")
    out: dict[str, Any] = {parts[-1]: value}
    for part in reversed(parts[:-1]):
        out = {part: out}
    return out


def _unknown(path: str, key: str, valid: list[str]) -> ConfigError:
    close = difflib.get_close_matches(key, valid, n=1, cutoff=0.5)
    hint = f" (did you mean '{path}{close[0]}'?)" if close else f" (valid: {', '.join(sorted(valid))})"
    return ConfigError(f"unknown config key '{path}{key}'{hint}")


def _type_name(value: Any) -> str:
    return {bool: "a boolean", int: "an integer", float: "a number", str: "a string",
            list: "an array", dict: "a table"}.get(type(value), type(value).__name__)


def _check_type(path: str, value: Any, default: Any) -> Any:
    if isinstance(default, bool):
        ok = isinstance(value, bool)
    elif isinstance(default, float):
        ok = isinstance(value, (int, float)) and not isinstance(value, bool)
        value = float(value) if ok else value
    elif isinstance(default, int):
        ok = isinstance(value, int) and not isinstance(value, bool)
    elif isinstance(default, (list, tuple)):
        ok = isinstance(value, list)
    else:
        ok = isinstance(value, type(default))
    if not ok:
        raise ConfigError(f"config key '{path}' must be {_type_name(default)}, got {value!r}")
    return value


def _check_section(name: str, given: dict[str, Any], defaults: dict[str, Any],
                   plugin_options: dict[str, Any] | None = None) -> dict[str, Any]:
    """`plugin_options` are the section's plugin's declared options (`sah.component.Option`s),
    which judge their own values: `audio_clips = 4` where the default is "auto"."""
    if not isinstance(given, dict):
        raise ConfigError(f"config section '[{name}]' must be a table, got {given!r}")
    plugin_options = plugin_options or {}
    out = copy.deepcopy(defaults)
    for key, value in given.items():
        path = f"{name}.{key}"
        if key not in defaults:
            raise _unknown(f"{name}.", key, list(defaults))
        default = defaults[key]
        if key in plugin_options:
            try:
                out[key] = plugin_options[key].coerce(value)
            except ValueError as exc:
                raise ConfigError(f"config key '{path}' must be {exc}, got {value!r}") from None
        elif isinstance(default, dict):
            if not isinstance(value, dict):
                raise ConfigError(f"config key '{path}' must be a table, got {value!r}")
            for sub, subvalue in value.items():
                if sub not in default:
                    raise _unknown(f"{path}.", sub, list(default))
                out[key][sub] = _check_type(f"{path}.{sub}", subvalue, default[sub])
        else:
            out[key] = _check_type(path, value, default)
    return out


def _normalise(layer: dict[str, Any]) -> dict[str, Any]:
    """A single `guidance.lr` number means the same rate for audio and video; spelling it out
    per layer lets a later layer override one modality only."""
    guidance = layer.get("guidance")
    if isinstance(guidance, dict) and isinstance(guidance.get("lr"), (int, float)) \
            and not isinstance(guidance["lr"], bool):
        return {**layer, "guidance": {**guidance, "lr": {"audio": guidance["lr"], "video": guidance["lr"]}}}
    return layer


def resolve(*layers: dict[str, Any], registry: Any = None) -> dict[str, Any]:
    """Merge `layers` over the defaults and validate. With a registry, the `[audio]`, `[video]`
    and `[binder]` sections also accept (and are filled with) their plugin's options."""
    given: dict[str, Any] = {}
    for layer in layers:
        given = merge(given, _normalise(layer))
    for section in given:
        if section not in DEFAULTS:
            raise _unknown("", section, list(DEFAULTS))

    defaults = default_config()
    plugin_options: dict[str, dict[str, Any]] = {}
    if registry is not None:
        for section, key in PLUGIN_SECTIONS.items():
            table = given.get(section, {})
            name = table.get(key, defaults[section][key]) if isinstance(table, dict) else None
            if not name or not isinstance(name, str):
                continue
            if section == "binder":
                cls = registry.binder(name)
            else:
                from sah.media import Modality

                cls = registry.generator(name, Modality(section))
            defaults[section] = {**defaults[section], **cls.option_defaults(), **getattr(cls, "core_defaults", {})}
            plugin_options[section] = cls.option_specs()

    config = {name: _check_section(name, given.get(name, {}), defaults[name], plugin_options.get(name))
              for name in DEFAULTS}
    _check_values(config)
    return config


def _check_values(config: dict[str, Any]) -> None:
    run, guidance, output = config["run"], config["guidance"], config["output"]

    def need(ok: bool, message: str) -> None:
        if not ok:
            raise ConfigError(message)

    need(run["task"] in TASKS, f"run.task must be one of {', '.join(TASKS)}, got {run['task']!r}")
    need(run["dtype"] in DTYPES, f"run.dtype must be one of {', '.join(DTYPES)}, got {run['dtype']!r}")
    need(bool(re.fullmatch(r"auto|cpu|mps|cuda(:\d+)?", run["device"])),
         f"run.device must be auto, cpu, cuda, cuda:N or mps, got {run['device']!r}")
    need(run["steps"] >= 1, f"run.steps must be at least 1, got {run['steps']}")
    need(run["num_samples"] >= 1, f"run.num_samples must be at least 1, got {run['num_samples']}")
    need(run["seed"] >= 0, f"run.seed must be non-negative, got {run['seed']}")
    need(math.isfinite(run["duration"]) and run["duration"] >= 0,
         f"run.duration must be seconds >= 0 (0: as long as the condition), got {run['duration']}")
    need(math.isfinite(run["window"]) and run["window"] >= 0,
         f"run.window must be seconds >= 0 (0: the generator's own), got {run['window']}")
    need(run["window_batch"] >= 1, f"run.window_batch must be at least 1, got {run['window_batch']}")
    need(0 <= run["window_overlap"] <= 0.75,
         f"run.window_overlap must be between 0 and 0.75 of a window, got {run['window_overlap']}")
    need(math.isfinite(config["input"]["max_seconds"]) and config["input"]["max_seconds"] >= 0,
         f"input.max_seconds must be a finite number >= 0 (0: no limit), got {config['input']['max_seconds']}")
    for section in ("audio", "video"):
        need(config[section]["steps"] >= 0, f"{section}.steps must be 0 (use run.steps) or more")
        scale = config[section]["cfg_scale"]
        need(math.isfinite(scale) and scale >= 0, f"{section}.cfg_scale must be a finite number >= 0, got {scale}")
    need(guidance["optimizer"] in OPTIMIZERS,
         f"guidance.optimizer must be one of {', '.join(OPTIMIZERS)}, got {guidance['optimizer']!r}")
    need(guidance["nudge"] in NUDGES,
         f"guidance.nudge must be one of {', '.join(NUDGES)}, got {guidance['nudge']!r}")
    need(guidance["window"] in WINDOWS,
         f"guidance.window must be one of {', '.join(WINDOWS)}, got {guidance['window']!r}")
    need(0.0 <= guidance["start"] <= guidance["end"] <= 1.0,
         f"guidance.start and guidance.end must satisfy 0 <= start <= end <= 1, "
         f"got {guidance['start']} and {guidance['end']}")
    for name, value in [*((f"lr.{k}", v) for k, v in guidance["lr"].items()), ("prompt_lr", guidance["prompt_lr"]),
                        ("clip", guidance["clip"]), *((f"weights.{k}", v) for k, v in guidance["weights"].items())]:
        need(math.isfinite(value) and value >= 0, f"guidance.{name} must be a finite number >= 0, got {value}")
    need(guidance["opt_steps"] >= 1, f"guidance.opt_steps must be at least 1, got {guidance['opt_steps']}")
    bad = [f for f in output["formats"] if f not in FORMATS]
    need(not bad, f"output.formats may only contain {', '.join(FORMATS)}, got {bad}")


def _toml_value(value: Any) -> str:
    if isinstance(value, bool):
        return "true" if value else "false"
    if isinstance(value, (int, float)):
        return repr(value)
    if isinstance(value, str):
        escaped = value.replace("\\", "\\\\").replace('"', '\\"').replace("\n", "\\n")
        return f'"{escaped}"'
    if isinstance(value, (list, tuple)):
        return "[" + ", ".join(_toml_value(v) for v in value) + "]"
    if isinstance(value, dict):
        return "{ " + ", ".join(f"{k} = {_toml_value(v)}" for k, v in value.items()) + " }"
    raise TypeError(f"cannot write {value!r} as TOML")


def to_toml(config: dict[str, Any], notes: dict[tuple[str, str], str] | None = None) -> str:
    """The config as TOML text that `load_toml` reads back to the same dict; `notes` become a
    comment after their (section, key)."""
    notes = notes or {}
    blocks = []
    for section, table in config.items():
        lines = [f"[{section}]"]
        for key, value in table.items():
            note = notes.get((section, key))
            lines.append(f"{key} = {_toml_value(value)}" + (f"  # {note}" if note else ""))
        blocks.append("\n".join(lines))
    return "\n\n".join(blocks) + "\n"


def option_notes(config: dict[str, Any], registry: Any) -> dict[tuple[str, str], str]:
    """What each plugin option of a resolved config does and takes, for `sah config show`."""
    from sah.media import Modality

    notes = {}
    for section, key in PLUGIN_SECTIONS.items():
        name = config[section][key]
        if not name:
            continue
        cls = registry.binder(name) if section == "binder" else registry.generator(name, Modality(section))
        for option, spec in cls.option_specs().items():
            notes[(section, option)] = "; ".join(filter(None, [spec.help, f"takes {spec.describe()}"]))
        for core in getattr(cls, "core_defaults", {}):
            notes.setdefault((section, core), f"{name}'s default is {cls.core_defaults[core]!r}")
    return notes

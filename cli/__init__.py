"""The `sah` command line: a thin layer over `sah.api`."""

from __future__ import annotations

import json
import os
import signal
import sys
import traceback
import warnings
from pathlib import Path
from typing import Any

import click
from rich.console import Console

from sah import config as cfg
from sah.errors import MediaError, SahError
from sah.presets import list_presets, load_preset, preset_summary, preset_text

# Nothing above imports torch: `sah --help`, `sah config presets` and input errors caught by
# `_preflight` answer at once. sah.api, sah.registry and the plugins (torch) are imported on use.

console = Console(stderr=True)


def plot_available() -> bool:
    from sah.plot import available

    return available()


class Terminated(KeyboardInterrupt):
    """SIGTERM, raised like Ctrl-C's KeyboardInterrupt so the same cleanup runs, but exiting 143."""


_sigterm = {"received": False}

# Commands kept in modules that import torch as they load: imported when named, described here
# so that `sah --help` lists them without importing them.
_LAZY_COMMANDS = {
    "batch": ("sah.cli.batch", "batch_command",
              "Run every job of a JSONL or CSV manifest that is not done yet in OUT."),
}


class SahGroup(click.Group):
    """Turns SahError into one line on stderr and exit code 2, Ctrl-C into exit code 130 and SIGTERM
    into 143 (128 + the signal number, as a shell reports it). SAH_DEBUG=1 adds the traceback.

    Commands that plugins add (`register_commands`) are loaded the first time a command that is not
    built in is named, or by `sah plugins`, so the built-in commands do not load every plugin."""

    plugin_commands: list[str] | None = None

    def invoke(self, ctx: click.Context) -> Any:
        try:
            return super().invoke(ctx)
        except SahError as exc:
            if os.environ.get("SAH_DEBUG"):
                traceback.print_exc()
            click.echo(f"Error: {exc.cli_message()}", err=True)
            sys.exit(2)
        except KeyboardInterrupt as exc:
            terminated = isinstance(exc, Terminated) or _sigterm["received"]
            click.echo("Terminated." if terminated else "Interrupted.", err=True)
            sys.exit(143 if terminated else 130)

    def list_commands(self, ctx: click.Context) -> list[str]:
        return sorted({*super().list_commands(ctx), *_LAZY_COMMANDS})

    def get_command(self, ctx: click.Context, name: str) -> click.Command | None:
        command = super().get_command(ctx, name)
        if command is None and name in _LAZY_COMMANDS:
            import importlib

            module, attr, _ = _LAZY_COMMANDS[name]
            command = getattr(importlib.import_module(module), attr)
            self.add_command(command, name)
        if command is None and self.plugin_commands is None:
            self.load_plugin_commands()
            command = super().get_command(ctx, name)
        return command

    def load_plugin_commands(self) -> list[str]:
        """Let every plugin add its commands (once); returns their names."""
        if self.plugin_commands is None:
            from sah.registry import add_commands, get_registry

            before = set(self.commands)
            add_commands(self, get_registry())
            self.plugin_commands = sorted(set(self.commands) - before)
        return self.plugin_commands

    def format_commands(self, ctx: click.Context, formatter: click.HelpFormatter) -> None:
        rows = []
        for name in self.list_commands(ctx):
            command = self.commands.get(name)
            if command is not None and not command.hidden:
                rows.append((name, command.get_short_help_str(formatter.width - 6 - len(name))))
            elif command is None and name in _LAZY_COMMANDS:
                rows.append((name, _LAZY_COMMANDS[name][2]))
        if rows:
            with formatter.section("Commands"):
                formatter.write_dl(rows)


@click.group(cls=SahGroup, epilog="Plugins may add more commands: `sah plugins` lists them.")
@click.version_option(package_name="sah")
def cli() -> None:
    """sah — make generated sound and picture agree."""


def _flag_layer(**flags: Any) -> dict[str, Any]:
    """CLI flags as a config layer; flags not given are left out so lower layers show through."""
    where = {
        "task": ("run", "task"), "prompt": ("run", "prompt"), "negative_prompt": ("run", "negative_prompt"),
        "seed": ("run", "seed"), "steps": ("run", "steps"), "num_samples": ("run", "num_samples"),
        "device": ("run", "device"), "dtype": ("run", "dtype"),
        "video": ("input", "video"), "audio": ("input", "audio"), "image": ("input", "image"),
        "gen_audio": ("audio", "generator"), "audio_model": ("audio", "model"),
        "gen_video": ("video", "generator"), "video_model": ("video", "model"),
        "binder": ("binder", "name"), "binder_model": ("binder", "model"),
        "out": ("output", "dir"), "name": ("output", "name"), "overwrite": ("output", "overwrite"),
        "plot": ("output", "plot"),
    }
    layer: dict[str, dict[str, Any]] = {}
    for flag, value in flags.items():
        if value is None:
            continue
        section, key = where[flag]
        layer.setdefault(section, {})[key] = str(value) if isinstance(value, Path) else value
    return layer


def _layers(config_file: Path | None, sets: tuple[str, ...], flags: dict[str, Any],
            preset: str | None = None) -> list[dict[str, Any]]:
    """Config layers, lowest first: preset < --config < flags < --set (defaults lie under all)."""
    layers = [load_preset(preset)] if preset else []
    layers += [cfg.load_toml(config_file)] if config_file else []
    layers.append(_flag_layer(**flags))
    layers.extend(cfg.parse_set(item) for item in sets)
    return layers


def _preflight(layers: list[dict[str, Any]]) -> None:
    """The checks that need no plugin, so no torch: the core config keys and values, and that the
    condition files exist. Plugin names and options, and the files' contents, are `sah.api.plan`'s."""
    core = []
    for layer in layers:
        layer = dict(layer)
        for section in cfg.PLUGIN_SECTIONS:  # a plugin's own keys are judged once plugins load
            if isinstance(layer.get(section), dict):
                layer[section] = {k: v for k, v in layer[section].items() if k in cfg.DEFAULTS[section]}
        core.append(layer)
    config = cfg.resolve(*core)
    for key in ("video", "audio", "image"):
        path = config["input"][key]
        if path and Path(path).is_dir():
            raise MediaError(f"{path}: is a directory, not a media file")
        if path and not Path(path).exists():
            raise MediaError(f"{path}: no such file")


config_options = [
    click.option("--config", "config_file", type=click.Path(path_type=Path), help="TOML config file."),
    click.option("--set", "sets", multiple=True, metavar="SECTION.KEY=VALUE", help="Override any config key."),
]


preset_option = click.option(
    "--preset", metavar="NAME", help="A shipped config (`sah config presets` lists them); --config, flags and "
    "--set override it.")


def with_config_options(fn: Any) -> Any:
    for option in reversed(config_options):
        fn = option(fn)
    return fn


# The flags of `sah run` that set config keys, by parameter name: `sah config show` takes the same
# ones, so it shows the config of the run a command line would start, and `sah batch` all but the
# output naming ones (`run_options_except`), applied to every row.
run_options: dict[str, Any] = {
    "gen_audio": click.option("--gen-audio", help="Audio generator plugin (e.g. toy-audio, audioldm); '' for none."),
    "gen_video": click.option("--gen-video", help="Video generator plugin (e.g. toy-video, animatediff); '' for none."),
    "binder": click.option("--binder", help="Binder plugin (e.g. toy, imagebind)."),
    "audio_model": click.option("--audio-model", help="Hub id or local folder for the audio generator."),
    "video_model": click.option("--video-model", help="Hub id or local folder for the video generator."),
    "binder_model": click.option("--binder-model", help="Hub id or local path for the binder."),
    "prompt": click.option("--prompt", help="Text prompt."),
    "negative_prompt": click.option("--negative-prompt", help="Negative prompt for classifier-free guidance."),
    "video": click.option("--video", type=click.Path(path_type=Path), help="Condition video (V2A)."),
    "audio": click.option("--audio", type=click.Path(path_type=Path), help="Condition audio (A2V)."),
    "image": click.option("--image", type=click.Path(path_type=Path), help="Condition image (I2A)."),
    "task": click.option("--task", type=click.Choice(cfg.TASKS), help="Task; inferred from the inputs by default."),
    "steps": click.option("--steps", type=int, help="Denoising steps."),
    "seed": click.option("--seed", type=int, help="Seed of the first sample; sample i uses seed + i."),
    "num_samples": click.option("--num-samples", type=int, help="Samples to generate."),
    "out": click.option("--out", type=click.Path(path_type=Path), help="Output folder (default: outputs)."),
    "name": click.option("--name", help="Output file stem (default: the task). Samples and later runs into the "
                                        "same folder are numbered NAME-0, NAME-1, ..."),
    "device": click.option("--device", help="auto, cpu, cuda, cuda:N or mps."),
    "dtype": click.option("--dtype", type=click.Choice(cfg.DTYPES),
                          help="Model dtype; the guidance loss is float32."),
    "overwrite": click.option("--overwrite", is_flag=True, default=None,
                              help="Replace outputs of the same name instead of numbering on."),
    "plot": click.option("--plot/--no-plot", default=None,
                         help="Save NAME.png: similarity per step, frames, spectrogram."),
    "preset": preset_option,
    "config_file": config_options[0],
    "sets": config_options[1],
}


def run_options_except(*names: str) -> Any:
    """A decorator adding `sah run`'s config flags but those named (parameter names, e.g. "out")."""
    unknown = set(names) - set(run_options)
    assert not unknown, f"no such run option: {sorted(unknown)}"

    def decorate(fn: Any) -> Any:
        for name, option in reversed(run_options.items()):
            if name not in names:
                fn = option(fn)
        return fn

    return decorate


def with_run_options(fn: Any) -> Any:
    return run_options_except()(fn)


@cli.command()
@click.option("--quiet", "-q", is_flag=True, help="No progress bar or summary.")
@with_run_options
def run(config_file: Path | None, sets: tuple[str, ...], quiet: bool, preset: str | None, **flags: Any) -> None:
    """Generate audio and/or video, aligned by a binder.

    \b
    sah run --prompt north                       # toy world: joint video + audio, offline
    sah run --video clip.mp4                     # video-to-audio
    sah run --gen-audio audioldm --gen-video animatediff --binder imagebind --prompt "a dog barks"
    """
    layers = _layers(config_file, sets, flags, preset)
    _preflight(layers)
    from sah import api

    plan = api.plan(*layers)
    if plan.config["output"]["plot"] and not plot_available():
        console.print("matplotlib is not installed: plots are off (pip install matplotlib)")
    if plan.renamed:  # notes are one line each, however narrow the terminal
        click.echo(_renamed_note(plan), err=True)
    toy_note = _toy_world_note(plan)
    if toy_note:
        click.echo(toy_note, err=True)
    stop = _install_sigterm()
    models = api.load(plan)
    if quiet:
        result = api.generate(plan, models, should_stop=stop, release=True)  # one run: nothing reuses them
    else:
        from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn, TimeElapsedColumn

        with Progress(TextColumn("[bold]{task.description}"), BarColumn(), MofNCompleteColumn(),
                      TextColumn("{task.fields[sims]}"), TimeElapsedColumn(), console=console) as bar:
            job = bar.add_task(plan.task.name, total=None, sims="")

            def progress(done: int, total: int, sims: dict[str, float]) -> None:
                text = "  ".join(f"{k} {v:+.3f}" for k, v in sims.items())
                bar.update(job, completed=done, total=total, sims=text)

            result = api.generate(plan, models, progress=progress, should_stop=stop, release=True)
    written = api.save(result)
    if not quiet:
        for path in written:
            console.print(f"wrote {path}", highlight=False, markup=False)
        console.print(f"{plan.task.name}: {len(result.samples)} sample(s) in {result.seconds:.1f} s")
        if result.cost is not None:  # where the time went, and the memory it took
            click.echo(f"cost {result.cost.summary()}")  # one line, however narrow the terminal


def _renamed_note(plan: Any) -> str:
    """`outputs/joint-0.* exist: writing joint-1 (--overwrite replaces them)`."""
    folder = Path(plan.config["output"]["dir"])
    taken = list(plan.renamed)
    now = [plan.renamed[stem] for stem in taken]
    first = f"{folder / taken[0]}.*" + (f" (and {len(taken) - 1} more)" if len(taken) > 1 else "")
    names = now[0] if len(now) == 1 else f"{now[0]} .. {now[-1]}"
    return f"{first} already exist: writing {names} instead (--overwrite replaces them)"


# What a real-model run of each task looks like, for the toy world's note.
_REAL_MODELS = {
    "v2a": "--preset paper-v2a, or --gen-audio audioldm --binder imagebind",
    "a2v": "--preset paper-a2v, or --gen-video animatediff --binder imagebind",
    "i2a": "--preset paper-i2a, or --gen-audio audioldm --binder imagebind",
}


def _toy_world_note(plan: Any) -> str | None:
    """One line when the toy world (the default) is given a condition it did not make: its output
    is a toy tone or blob whatever the clip shows, and the user may not know real models exist."""
    from sah.media import Audio, Image, Video

    toys = [cls.name for cls in plan.generators.values() if cls.name.startswith("toy")]
    if plan.binder is not None and plan.binder.name == "toy":
        toys.append("toy binder")
    condition = plan.condition
    if not toys or condition is None or plan.task.name not in _REAL_MODELS:
        return None
    from sah.plugins.toy import oracle

    if isinstance(condition, Audio):
        toy_made = bool(oracle.audio_valid(condition).all())
    elif isinstance(condition, Image):
        toy_made = bool(oracle.video_valid(condition.pixels.unsqueeze(1)).all())
    elif isinstance(condition, Video):
        toy_made = bool(oracle.video_valid(condition).all())
    else:
        return None
    if toy_made:
        return None
    path = plan.config["input"][plan.task.condition.value] or "the condition"
    return (f"Note: {path} is handled by the toy world ({', '.join(toys)}: eight tones and blobs, sah's offline "
            f"default), which did not make it; for real models use {_REAL_MODELS[plan.task.name]} "
            "(`sah config presets` lists the presets)")


def _install_sigterm() -> Any:
    """SIGTERM stops the run like Ctrl-C, wherever it is (loading, sampling, saving): the interrupt
    unwinds through the atomic writers, which delete their temp files. The returned flag is also
    polled once per denoising step, in case a library swallowed the exception."""
    _sigterm["received"] = False

    def handler(signum: int, frame: Any) -> None:
        _sigterm["received"] = True
        raise Terminated

    try:
        signal.signal(signal.SIGTERM, handler)
    except ValueError:  # not the main thread (e.g. CliRunner in a worker thread)
        pass
    return lambda: _sigterm["received"]


@cli.command()
@click.argument("name", required=False)
@click.option("--json", "as_json", is_flag=True, help="Machine-readable output.")
def plugins(name: str | None, as_json: bool) -> None:
    """List generators and binders, and plugins that failed to load; with NAME, one of them and
    its options (what each does, its default and the values it takes).

    \b
    sah plugins
    sah plugins imagebind
    """
    from sah.registry import get_registry

    commands = cli.load_plugin_commands()
    registry = get_registry()
    rows = [_plugin_row(registry, kind, cls) for kind, table in (("generator", registry.generators),
                                                                  ("binder", registry.binders))
            for _, cls in sorted(table.items())]
    broken = [{"name": b.name, "entry_point": b.entry_point, "package": b.package, "error": b.error}
              for b in registry.broken]
    if name is not None:
        registry.component(name)  # an unknown name: the registry's one-line error, with the closest name
        chosen = [row for row in rows if row["name"] == name]
        if as_json:
            click.echo(json.dumps(chosen[0], indent=2))
        else:
            _print_plugin(chosen[0])
        return
    if as_json:
        click.echo(json.dumps({"plugins": rows, "broken": broken, "commands": commands}, indent=2))
        return
    from rich.table import Table

    table = Table(title="sah plugins")
    for column in ("name", "kind", "modalities", "package", "version", "licence (code / weights)", "description"):
        table.add_column(column)
    for row in rows:
        table.add_row(row["name"], row["kind"], ", ".join(row["modalities"]), row["package"], row["version"],
                      _licence_terms(row["licence"]), row["description"])
    Console().print(table)
    Console().print("sah plugins NAME shows one of them with its options")
    if commands:
        Console().print(f"commands added by plugins: {', '.join(commands)} (sah COMMAND --help)")
    for b in broken:
        Console().print(f"[red]broken[/red] {b['name']} ({b['entry_point']}): {b['error']}")


def _plugin_row(registry: Any, kind: str, cls: Any) -> dict[str, Any]:
    info = registry.sources.get(cls.name)
    licence = cls.licence_for(cls.default_model)
    section = cls.modality.value if kind == "generator" else "binder"
    return {"name": cls.name, "kind": kind, "section": section,
            "modalities": [cls.modality.value] if kind == "generator" else sorted(m.value for m in cls.modalities),
            "plugin": info.name if info else "?", "package": info.package if info else "?",
            "version": info.version if info else "?", "description": cls.description,
            "default_model": cls.default_model,
            "licence": None if licence is None else
            {"code": licence.code, "weights": licence.weights, "commercial": licence.commercial, "url": licence.url},
            "core_defaults": dict(getattr(cls, "core_defaults", {})),
            "options": {key: {"default": spec.default, "help": spec.help, "takes": spec.describe(),
                              "choices": list(spec.choices), "type": spec.type.__name__ if spec.type else None,
                              "min": spec.min, "max": spec.max}
                        for key, spec in cls.option_specs().items()}}


def _licence_terms(licence: dict[str, Any] | None) -> str:
    if licence is None:
        return "not declared"
    return f"{licence['code']} / {licence['weights']}" + ("" if licence["commercial"] else " (non-commercial)")


def _print_plugin(row: dict[str, Any]) -> None:
    from rich.markup import escape
    from rich.table import Table

    console = Console()
    console.print(f"[bold]{row['name']}[/bold] — {row['kind']} ({', '.join(row['modalities'])}) from "
                  f"{row['package']} {row['version']}")
    if row["description"]:
        console.print(escape(row["description"]))
    console.print(f"default model: {row['default_model'] or '(none)'}")
    console.print(f"licence (code / weights): {_licence_terms(row['licence'])}")
    for key, value in row["core_defaults"].items():
        console.print(f"sets the default of {row['section']}.{key} to {value!r}")
    if not row["options"]:
        console.print(escape(f"no options of its own in [{row['section']}]"))
        return
    table = Table(title=escape(f"options: [{row['section']}] keys, or --set {row['section']}.KEY=VALUE"))
    for column in ("option", "default", "takes", "what it does"):
        table.add_column(column)
    for key, option in row["options"].items():
        table.add_row(key, escape(cfg.to_toml({"v": {"x": option["default"]}}).split("=", 1)[1].strip())
                      if option["default"] is not None else "(none)", escape(option["takes"]), escape(option["help"]))
    console.print(table)


@cli.group("config")
def config_group() -> None:
    """Inspect configuration."""


@config_group.command("show")
@with_run_options
def config_show(config_file: Path | None, sets: tuple[str, ...], preset: str | None, **flags: Any) -> None:
    """Print the resolved config as TOML: defaults < --preset < --config < flags < --set.

    Takes every flag `sah run` takes, so `sah config show ARGS` shows what `sah run ARGS` would run:

    \b
    sah config show --preset paper-v2a --video clip.mp4 --steps 25
    """
    from sah.registry import get_registry

    layers = _layers(config_file, sets, flags, preset)
    registry = get_registry()
    config = cfg.resolve(*layers, registry=registry)
    click.echo(cfg.to_toml(config, cfg.option_notes(config, registry)), nl=False)


@config_group.command("presets")
@click.option("--show", "name", metavar="NAME", help="Print one preset's TOML file, comments included.")
def config_presets(name: str | None) -> None:
    """List the shipped presets (use one with `sah run --preset NAME`)."""
    if name:
        click.echo(preset_text(name), nl=False)
        return
    for preset in list_presets():
        click.echo(f"{preset:<12}  {preset_summary(preset)}")


def _one_line_warning(message: Warning | str, category: type[Warning], *args: Any, **kwargs: Any) -> None:
    click.echo(f"Warning: {' '.join(str(message).split())}", err=True)


def main() -> None:
    # a user reads "Warning: <what happened>", not the source line that raised it
    warnings.showwarning = _one_line_warning
    cli(prog_name="sah")


__all__ = ["cli", "main"]

# Commands kept in their own modules; imported last because they import this module's helpers.
from sah.cli.eval import eval_command  # noqa: E402
from sah.cli.report import report_command  # noqa: E402
from sah.cli.ui import ui_command  # noqa: E402

for _command in (eval_command, report_command, ui_command):
    cli.add_command(_command)

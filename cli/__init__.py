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
from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn, TimeElapsedColumn
from rich.table import Table

from sah import api
from sah import config as cfg
from sah.errors import SahError
from sah.plot import available as plot_available
from sah.presets import list_presets, load_preset, preset_summary, preset_text
from sah.registry import add_commands, get_registry

console = Console(stderr=True)


class Terminated(KeyboardInterrupt):
    """SIGTERM, raised like Ctrl-C's KeyboardInterrupt so the same cleanup runs, but exiting 143."""


_sigterm = {"received": False}


class SahGroup(click.Group):
    """Turns SahError into one line on stderr and exit code 2, Ctrl-C into exit code 130 and SIGTERM
    into 143 (128 + the signal number, as a shell reports it). SAH_DEBUG=1 adds the traceback."""

    def invoke(self, ctx: click.Context) -> Any:
        try:
            return super().invoke(ctx)
        except SahError as exc:
            if os.environ.get("SAH_DEBUG"):
                traceback.print_exc()
            click.echo(f"Error: {exc}", err=True)
            sys.exit(2)
        except KeyboardInterrupt as exc:
            terminated = isinstance(exc, Terminated) or _sigterm["received"]
            click.echo("Terminated." if terminated else "Interrupted.", err=True)
            sys.exit(143 if terminated else 130)


@click.group(cls=SahGroup)
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


@cli.command()
@click.option("--gen-audio", help="Audio generator plugin (e.g. toy-audio, audioldm); '' for none.")
@click.option("--gen-video", help="Video generator plugin (e.g. toy-video, animatediff); '' for none.")
@click.option("--binder", help="Binder plugin (e.g. toy, imagebind).")
@click.option("--audio-model", help="Hub id or local folder for the audio generator.")
@click.option("--video-model", help="Hub id or local folder for the video generator.")
@click.option("--binder-model", help="Hub id or local path for the binder.")
@click.option("--prompt", help="Text prompt.")
@click.option("--negative-prompt", help="Negative prompt for classifier-free guidance.")
@click.option("--video", type=click.Path(path_type=Path), help="Condition video (V2A).")
@click.option("--audio", type=click.Path(path_type=Path), help="Condition audio (A2V).")
@click.option("--image", type=click.Path(path_type=Path), help="Condition image (I2A).")
@click.option("--task", type=click.Choice(cfg.TASKS), help="Task; inferred from the inputs by default.")
@click.option("--steps", type=int, help="Denoising steps.")
@click.option("--seed", type=int, help="Seed of the first sample; sample i uses seed + i.")
@click.option("--num-samples", type=int, help="Samples to generate.")
@click.option("--out", type=click.Path(path_type=Path), help="Output folder.")
@click.option("--name", help="Output file stem (default TASK-SEED).")
@click.option("--device", help="auto, cpu, cuda, cuda:N or mps.")
@click.option("--dtype", type=click.Choice(cfg.DTYPES), help="Model dtype; the guidance loss is float32.")
@click.option("--overwrite", is_flag=True, default=None, help="Replace existing outputs.")
@click.option("--plot/--no-plot", default=None, help="Save NAME.png: similarity per step, frames, spectrogram.")
@click.option("--quiet", "-q", is_flag=True, help="No progress bar or summary.")
@preset_option
@with_config_options
def run(config_file: Path | None, sets: tuple[str, ...], quiet: bool, preset: str | None, **flags: Any) -> None:
    """Generate audio and/or video, aligned by a binder.

    \b
    sah run --prompt north                       # toy world: joint video + audio, offline
    sah run --video clip.mp4                     # video-to-audio
    sah run --gen-audio audioldm --gen-video animatediff --binder imagebind --prompt "a dog barks"
    """
    plan = api.plan(*_layers(config_file, sets, flags, preset))
    if plan.config["output"]["plot"] and not plot_available():
        console.print("matplotlib is not installed: plots are off (pip install matplotlib)")
    stop = _install_sigterm()
    models = api.load(plan)
    if quiet:
        result = api.generate(plan, models, should_stop=stop)
    else:
        with Progress(TextColumn("[bold]{task.description}"), BarColumn(), MofNCompleteColumn(),
                      TextColumn("{task.fields[sims]}"), TimeElapsedColumn(), console=console) as bar:
            job = bar.add_task(plan.task.name, total=None, sims="")

            def progress(done: int, total: int, sims: dict[str, float]) -> None:
                text = "  ".join(f"{k} {v:+.3f}" for k, v in sims.items())
                bar.update(job, completed=done, total=total, sims=text)

            result = api.generate(plan, models, progress=progress, should_stop=stop)
    written = api.save(result)
    if not quiet:
        for path in written:
            console.print(f"wrote {path}")
        console.print(f"{plan.task.name}: {len(result.samples)} sample(s) in {result.seconds:.1f} s")


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
@click.option("--json", "as_json", is_flag=True, help="Machine-readable output.")
def plugins(as_json: bool) -> None:
    """List generators and binders, and plugins that failed to load."""
    registry = get_registry()
    rows = []
    for kind, table in (("generator", registry.generators), ("binder", registry.binders)):
        for name, cls in sorted(table.items()):
            info = registry.sources.get(name)
            modalities = [cls.modality.value] if kind == "generator" else sorted(m.value for m in cls.modalities)
            rows.append({"name": name, "kind": kind, "modalities": modalities,
                         "plugin": info.name if info else "?", "package": info.package if info else "?",
                         "version": info.version if info else "?", "description": cls.description})
    broken = [{"name": b.name, "entry_point": b.entry_point, "package": b.package, "error": b.error}
              for b in registry.broken]
    if as_json:
        click.echo(json.dumps({"plugins": rows, "broken": broken}, indent=2))
        return
    table = Table(title="sah plugins")
    for column in ("name", "kind", "modalities", "package", "version", "description"):
        table.add_column(column)
    for row in rows:
        table.add_row(row["name"], row["kind"], ", ".join(row["modalities"]), row["package"], row["version"],
                      row["description"])
    Console().print(table)
    for b in broken:
        Console().print(f"[red]broken[/red] {b['name']} ({b['entry_point']}): {b['error']}")


@cli.group("config")
def config_group() -> None:
    """Inspect configuration."""


@config_group.command("show")
@preset_option
@with_config_options
def config_show(config_file: Path | None, sets: tuple[str, ...], preset: str | None) -> None:
    """Print the resolved config as TOML (defaults < --preset < --config < --set)."""
    layers = _layers(config_file, sets, {}, preset)
    click.echo(cfg.to_toml(cfg.resolve(*layers, registry=get_registry())), nl=False)


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
    add_commands(cli, get_registry())
    cli(prog_name="sah")


__all__ = ["cli", "main"]

# Commands kept in their own modules; imported last because they import this module's helpers.
from sah.cli.batch import batch_command  # noqa: E402
from sah.cli.eval import eval_command  # noqa: E402
from sah.cli.report import report_command  # noqa: E402

for _command in (batch_command, eval_command, report_command):
    cli.add_command(_command)

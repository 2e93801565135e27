"""`sah ui`: a local web app over every installed generator, binder and preset (needs the `ui` extra)."""

from __future__ import annotations

import importlib.util
import os
from pathlib import Path

import click

from sah.cli import preset_option, with_config_options
from sah.errors import SahError


@click.command("ui")
@click.option("--out", type=click.Path(path_type=Path), default=Path("outputs"), show_default=True,
              help="Output folder: every run is saved here, and it is the only folder the app serves.")
@click.option("--host", default="127.0.0.1", show_default=True,
              help="Address to bind; 0.0.0.0 serves every network this machine is on.")
@click.option("--port", type=click.IntRange(1, 65535), default=7860, show_default=True, help="Port to bind.")
@click.option("--max-upload-mb", type=click.FloatRange(min=0, min_open=True), default=200.0, show_default=True,
              help="Largest file the page accepts.")
@click.option("--online", is_flag=True,
              help="Let plugins download weights (default: offline, HF_HUB_OFFLINE=1, as on the toy world).")
@click.option("--quiet", "-q", is_flag=True, help="Print nothing but errors.")
@preset_option
@with_config_options
def ui_command(out: Path, host: str, port: int, max_upload_mb: float, online: bool, quiet: bool,
               preset: str | None, config_file: Path | None, sets: tuple[str, ...]) -> None:
    """Serve the web app: Generate, Gallery and Batch, over every installed plugin.

    \b
    sah ui                                  # http://127.0.0.1:7860, toy world, outputs/ for runs
    sah ui --out runs --port 8000 --set run.steps=20
    sah ui --online --preset fast-v2a       # real models, downloading weights

    --preset, --config and --set give the page's starting values (and keys it does not show).
    """
    if importlib.util.find_spec("gradio") is None:
        raise SahError("sah ui needs Gradio: pip install 'sah[ui]'")
    os.environ.setdefault("GRADIO_ANALYTICS_ENABLED", "False")
    if not online:
        os.environ["HF_HUB_OFFLINE"] = "1"
    from sah import config as cfg
    from sah import ui

    base = ([cfg.load_toml(config_file)] if config_file else []) + [cfg.parse_set(item) for item in sets]
    ui.launch(out, host=host, port=port, max_upload_mb=max_upload_mb, base_layers=base, preset=preset, quiet=quiet)

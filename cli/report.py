"""`sah report`: a static HTML gallery of a folder of outputs."""

from __future__ import annotations

from pathlib import Path

import click

from sah import report


@click.command("report")
@click.argument("folder", type=click.Path(path_type=Path))
@click.option("--scores", type=click.Path(path_type=Path),
              help="A `sah eval --json` file (default: FOLDER/eval.json when it exists).")
@click.option("--title", help="Page title.")
def report_command(folder: Path, scores: Path | None, title: str | None) -> None:
    """Write FOLDER/index.html: a card per clip with players, plot, prompt, settings and scores.

    \b
    sah eval outputs/ --json outputs/eval.json && sah report outputs/
    """
    page = report.write(folder, scores, title)
    click.echo(f"wrote {page}")

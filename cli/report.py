"""`sah report`: a static HTML gallery of a folder of outputs."""

from __future__ import annotations

from pathlib import Path

import click

from sah.errors import SahError


@click.command("report")
@click.argument("folder", type=click.Path(path_type=Path))
@click.option("--scores", type=click.Path(path_type=Path),
              help="A `sah eval --json` file (default: FOLDER/eval.json, which `sah eval FOLDER` keeps).")
@click.option("--title", help="Page title.")
def report_command(folder: Path, scores: Path | None, title: str | None) -> None:
    """Write FOLDER/index.html: a card per clip with players, poster, plot, condition, prompt,
    settings and scores.

    \b
    sah eval outputs/ && sah report outputs/
    """
    if not folder.is_dir():  # said before torch loads
        raise SahError(f"{folder}: not a folder")
    from sah import report
    from sah.eval import FOLDER_SCORES

    page = report.write(folder, scores, title)
    click.echo(f"wrote {page}")
    if scores is None and not (folder / FOLDER_SCORES).is_file():
        click.echo(f"no scores on the page: `sah eval {folder}` writes {folder / FOLDER_SCORES}, which it shows",
                   err=True)

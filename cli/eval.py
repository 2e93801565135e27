"""`sah eval`: score sah outputs or any mp4/wav pairs."""

from __future__ import annotations

import sys
from pathlib import Path
from typing import Any

import click
from rich.console import Console

from sah.errors import SahError

# sah.eval and the registry (torch) are imported when the command runs, not when `sah` starts.


def _fmt(value: float | None) -> str:
    return "n/a" if value is None else f"{value:.3f}"


def _binder_models(pairs: tuple[str, ...]) -> dict[str, str]:
    models = {}
    for pair in pairs:
        name, sep, model = pair.partition("=")
        if not sep or not name:
            raise SahError(f"--binder-model wants BINDER=MODEL, got {pair!r}")
        models[name] = model
    return models


@click.command("eval")
@click.argument("paths", nargs=-1, type=click.Path(path_type=Path))
@click.option("--metric", "metrics", multiple=True, metavar="NAME",
              help="Metric to compute (repeatable); default: what the clips' sidecars suggest. "
                   "`sah eval --list-metrics` lists them.")
@click.option("--list-metrics", is_flag=True, help="List the metrics the installed plugins provide and exit.")
@click.option("--json", "json_path", type=click.Path(path_type=Path), help="Write per-clip scores and the summary.")
@click.option("--csv", "csv_path", type=click.Path(path_type=Path), help="Write per-clip scores as CSV.")
@click.option("--save/--no-save", default=True, show_default=True,
              help="Also write or update FOLDER/eval.json for each folder in PATHS: the scores "
                   "`sah report FOLDER` shows.")
@click.option("--binder-model", "binder_models", multiple=True, metavar="BINDER=MODEL",
              help="Hub id or local path for a binder (default: the sidecar's, else the binder's default).")
@click.option("--batch-size", type=click.IntRange(min=1), default=8, show_default=True,
              help="Clips decoded and embedded together.")
@click.option("--device", default="auto", show_default=True, help="auto, cpu, cuda, cuda:N or mps.")
def eval_command(paths: tuple[Path, ...], metrics: tuple[str, ...], list_metrics: bool, json_path: Path | None,
                 csv_path: Path | None, save: bool, binder_models: tuple[str, ...], batch_size: int,
                 device: str) -> None:
    """Score clips: binder similarities (cosine x 100), AV-Align, and the toy oracle.

    \b
    sah eval outputs/                                   # sah outputs, metrics from their sidecars
    sah eval clips/ --metric imagebind-av --metric av-align --json scores.json
    sah eval --list-metrics

    A folder's scores are also kept in FOLDER/eval.json (updated, not replaced, by later runs), which
    `sah report FOLDER` shows. A file that cannot be read is reported in its row and the others are
    scored; the exit code is then 1.
    """
    if not list_metrics:
        if not paths:
            raise click.UsageError("Missing argument 'PATHS...' (files or folders to score; or --list-metrics).")
        for path in paths:  # said before torch and the plugins load
            if not path.exists():
                raise SahError(f"{path}: no such file or folder")
    from sah import eval as evaluation
    from sah.registry import get_registry

    registry = get_registry()
    if list_metrics:
        for name in evaluation.available_metrics(registry):
            click.echo(name)
        return
    models = _binder_models(binder_models)
    items = evaluation.find_items(paths)
    chosen = evaluation.check_metrics(metrics or evaluation.default_metrics(items, registry), registry)
    # a sah output's own binder settings apply unless the user named a model
    options: dict[str, dict] = {}
    for item in items:
        section = (item.meta.get("config") or {}).get("binder") or {}
        if section.get("name"):
            options.setdefault(section["name"], section)
            if section.get("model"):
                models.setdefault(section["name"], section["model"])
    binders = evaluation.load_binders(chosen, registry, device=device, models=models, options=options)
    report = evaluation.evaluate(items, chosen, binders, batch_size=batch_size, registry=registry)
    _print_table(report)

    err = Console(stderr=True, highlight=False)
    for path, write in ((json_path, evaluation.write_json), (csv_path, evaluation.write_csv)):
        if path is not None:
            write(report, path)
            err.print(f"wrote {path}", markup=False)
    if save:
        for folder in dict.fromkeys(p for p in paths if p.is_dir()):
            try:
                written = evaluation.update_folder_scores(report, folder)
            except SahError as exc:  # a read-only folder: the scores were still printed
                err.print(f"Warning: could not keep the scores in {folder}: {exc}", markup=False)
                continue
            if written is not None:
                err.print(f"wrote {written} (sah report {folder} shows it)", markup=False)
    failed = [row for row in report.rows if row.get("error")]
    for row in failed:
        err.print(f"could not score {row['name']}: {row['error']}", markup=False)
    if failed:
        err.print(f"{len(failed)} of {len(report.rows)} clip(s) could not be scored", markup=False)
        sys.exit(1)


def _print_table(report: Any) -> None:
    from rich.table import Table

    table = Table(title=f"sah eval: {len(report.rows)} clip(s); binder scores are cosine x 100")
    table.add_column("clip")
    table.add_column("task")
    for metric in report.metrics:
        table.add_column(metric, justify="right")
    for row in report.rows:
        cells = ["error"] * len(report.metrics) if row.get("error") else \
            [_fmt(row["scores"][m]) for m in report.metrics]
        table.add_row(row["name"], row["task"], *cells)
    table.add_section()
    table.add_row("mean ± std", "", *(
        "n/a" if report.summary[m]["mean"] is None
        else f"{report.summary[m]['mean']:.3f} ± {report.summary[m]['std']:.3f}" for m in report.metrics))
    # wide enough for every column, even when stdout is not a terminal (rich then assumes 80)
    width = max(Console().width, 24 + max((len(r["name"]) for r in report.rows), default=8)
                + sum(max(len(m), 15) + 3 for m in report.metrics))
    Console(width=width).print(table)

"""`sah batch`: run a manifest of jobs, resumably, on local workers or a Ray cluster."""

from __future__ import annotations

import sys
from pathlib import Path
from typing import Any

import click
from rich.progress import (
    BarColumn,
    MofNCompleteColumn,
    Progress,
    TaskID,
    TextColumn,
    TimeElapsedColumn,
    TimeRemainingColumn,
)

from sah import config as cfg
from sah.batch import BatchProgress, BatchSummary, run_batch
from sah.batch.worker import Outcome
from sah.cli import console, with_config_options


class RichBatchProgress(BatchProgress):
    """One overall bar (done / failed / remaining, jobs per second); with `per_job`, one bar per worker."""

    def __init__(self, bar: Progress, per_job: bool) -> None:
        self.bar = bar
        self.per_job = per_job
        self.overall: TaskID | None = None
        self.workers: dict[str, TaskID] = {}
        self.counted = 0

    def start(self, summary: BatchSummary, to_run: int) -> None:
        skipped = summary.already_done + summary.failed_before
        if skipped:
            self.bar.console.print(f"{summary.already_done} job(s) already done, {summary.failed_before} skipped "
                                   f"as failed earlier (--retry-failed runs them)")
        self.counted = summary.done + summary.failed
        self.overall = self.bar.add_task("batch", total=to_run + self.counted, completed=self.counted,
                                         **self._fields(summary, 0.0))

    def outcome(self, outcome: Outcome, summary: BatchSummary) -> None:
        assert self.overall is not None
        if outcome.status == "failed":
            self.bar.console.print(f"[red]failed[/red] {outcome.id}: {outcome.error}")
        task = self.bar.tasks[self.overall]
        ran = summary.done + summary.failed - self.counted
        rate = ran / task.elapsed if task.elapsed else 0.0
        self.bar.update(self.overall, completed=summary.done + summary.failed, **self._fields(summary, rate))

    def step(self, worker: str, job_id: str, done: int, total: int) -> None:
        if worker not in self.workers:
            self.workers[worker] = self.bar.add_task(worker, total=total, done="", failed="", remaining="", rate="")
        self.bar.update(self.workers[worker], description=f"  {worker}: {job_id}", completed=done, total=total)

    def message(self, text: str) -> None:
        self.bar.console.print(text)

    @staticmethod
    def _fields(summary: BatchSummary, rate: float) -> dict[str, str]:
        return {"done": f"done {summary.done}", "failed": f"failed {summary.failed}",
                "remaining": f"remaining {summary.remaining}", "rate": f"{rate:.2f} jobs/s"}


@click.command("batch")
@click.argument("manifest", type=click.Path(path_type=Path))
@click.option("--out", required=True, type=click.Path(path_type=Path), help="Output folder (all jobs).")
@click.option("--workers", type=int, help="Local worker processes (default 1); with --ray, the number of actors.")
@click.option("--threads", type=int, help="Torch threads per local worker (default: cores / workers).")
@click.option("--ray", "ray_address", is_flag=False, flag_value="", default=None, metavar="[ADDRESS]",
              help="Run on Ray: an existing cluster's address (auto, ray://host:10001), or none to start "
                   "or join the local one. Needs `pip install 'sah[ray]'`.")
@click.option("--cpus-per-worker", type=int, help="Ray CPUs per actor on CPU-only clusters (default 4, or "
                                                  "cluster CPUs / --workers).")
@click.option("--retry-failed", is_flag=True, help="Run the jobs listed in OUT/failures.jsonl again.")
@click.option("--steps", type=int, help="Denoising steps (rows and --set may still override).")
@click.option("--device", help="auto, cpu, cuda, cuda:N or mps.")
@click.option("--job-progress", is_flag=True, help="A progress bar per worker for the job it runs (local only).")
@click.option("--quiet", "-q", is_flag=True, help="No progress bar; failures and the summary only.")
@with_config_options
def batch_command(manifest: Path, out: Path, config_file: Path | None, sets: tuple[str, ...],
                  workers: int | None, threads: int | None, ray_address: str | None, cpus_per_worker: int | None,
                  retry_failed: bool, steps: int | None, device: str | None, job_progress: bool,
                  quiet: bool) -> None:
    """Run every job of a JSONL or CSV manifest that is not done yet in OUT.

    \b
    Rows: {"id": "dog-1", "video": "clips/dog.mp4", "prompt": "a dog barks", "seed": 3,
           "set": {"guidance.lr": 0.05}}
    sah batch jobs.jsonl --out out/ --workers 2
    sah batch jobs.jsonl --out /shared/out --ray auto       # an existing Ray cluster
    sah batch jobs.jsonl --out out/ --retry-failed          # again, failed rows included

    Finished jobs are skipped; failed ones are listed in OUT/failures.jsonl. Exit code 0 when every
    job is done, 1 when some failed, 2 for a bad manifest or option.
    """
    layers: list[dict[str, Any]] = [cfg.load_toml(config_file)] if config_file else []
    flags = {k: v for k, v in (("steps", steps), ("device", device)) if v is not None}
    if flags:
        layers.append({"run": flags})
    layers.extend(cfg.parse_set(item) for item in sets)
    options: dict[str, Any] = dict(layers=layers, retry_failed=retry_failed, workers=workers, threads=threads,
                                   ray=ray_address is not None, ray_address=ray_address or None,
                                   cpus_per_worker=cpus_per_worker, job_progress=job_progress and not quiet)
    if quiet:
        summary = run_batch(manifest, out, progress=_QuietProgress(), **options)
    else:
        with Progress(TextColumn("[bold]{task.description}"), BarColumn(), MofNCompleteColumn(),
                      TextColumn("{task.fields[done]}"), TextColumn("[red]{task.fields[failed]}"),
                      TextColumn("{task.fields[remaining]}"), TextColumn("{task.fields[rate]}"),
                      TimeElapsedColumn(), TimeRemainingColumn(), console=console) as bar:
            summary = run_batch(manifest, out, progress=RichBatchProgress(bar, job_progress), **options)
    console.print(_summary_line(summary))
    if not summary.complete:
        console.print(f"see {summary.failures_path}")
        sys.exit(1)


class _QuietProgress(BatchProgress):
    def outcome(self, outcome: Outcome, summary: BatchSummary) -> None:
        if outcome.status == "failed":
            console.print(f"failed {outcome.id}: {outcome.error}")


def _summary_line(summary: BatchSummary) -> str:
    ran = summary.done + summary.failed
    rate = f" ({ran / summary.seconds:.2f} jobs/s)" if summary.seconds and ran else ""
    return (f"{summary.total} job(s): {summary.done} done now, {summary.already_done} already done, "
            f"{summary.failed} failed, {summary.failed_before} skipped as failed earlier, "
            f"in {summary.seconds:.1f} s{rate}")

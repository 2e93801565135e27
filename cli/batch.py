"""`sah batch`: run a manifest of jobs, resumably, on local workers or a Ray cluster."""

from __future__ import annotations

import shlex
import sys
from pathlib import Path
from typing import Any

import click
from click.core import ParameterSource
from rich.progress import (
    BarColumn,
    MofNCompleteColumn,
    Progress,
    TaskID,
    TextColumn,
    TimeElapsedColumn,
    TimeRemainingColumn,
)

from sah.batch import BatchInterrupted, BatchProgress, BatchSummary, run_batch
from sah.batch.worker import Outcome
from sah.cli import _layers, console, run_options_except


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
@click.option("--job-progress", is_flag=True, help="A progress bar per worker for the job it runs (local only).")
@click.option("--quiet", "-q", is_flag=True, help="No progress bar; failures and the summary only.")
# `sah run`'s config flags, for every row; output naming is the batch's (--out and each row's id).
@run_options_except("out", "name", "overwrite")
def batch_command(manifest: Path, out: Path, config_file: Path | None, sets: tuple[str, ...], preset: str | None,
                  workers: int | None, threads: int | None, ray_address: str | None, cpus_per_worker: int | None,
                  retry_failed: bool, job_progress: bool, quiet: bool, **flags: Any) -> None:
    """Run every job of a JSONL or CSV manifest that is not done yet in OUT.

    \b
    Rows: {"id": "dog-1", "video": "clips/dog.mp4", "prompt": "a dog barks", "seed": 3,
           "set": {"guidance.lr": 0.05}}
    sah batch jobs.jsonl --out out/ --workers 2
    sah batch jobs.jsonl --out out/ --gen-audio audioldm --binder imagebind --steps 50
    sah batch jobs.jsonl --out /shared/out --ray auto       # an existing Ray cluster
    sah batch jobs.jsonl --out out/ --retry-failed          # again, failed rows included

    Takes `sah run`'s config flags (but --out, --name and --overwrite) and applies them to every
    row: defaults < --preset < --config < flags < --set < the row's own columns and set.

    Finished jobs are skipped; failed ones are listed in OUT/failures.jsonl. Ctrl-C lets the jobs in
    flight on local workers finish, then stops; the same command again resumes.

    \b
    Exit codes:
      0    every row is done
      1    some rows failed (see OUT/failures.jsonl)
      2    a bad manifest or option: nothing ran
      130  interrupted (Ctrl-C): rerun the same command to resume
    """
    # Condition files given as flags are read by the workers (Ray actors too): make them absolute.
    flags = {k: v.resolve() if isinstance(v, Path) else v for k, v in flags.items()}
    layers = _layers(config_file, sets, flags, preset)
    options: dict[str, Any] = dict(layers=layers, retry_failed=retry_failed, workers=workers, threads=threads,
                                   ray=ray_address is not None, ray_address=ray_address or None,
                                   cpus_per_worker=cpus_per_worker, job_progress=job_progress and not quiet)
    try:
        if quiet:
            summary = run_batch(manifest, out, progress=_QuietProgress(), **options)
        else:
            with Progress(TextColumn("[bold]{task.description}"), BarColumn(), MofNCompleteColumn(),
                          TextColumn("{task.fields[done]}"), TextColumn("[red]{task.fields[failed]}"),
                          TextColumn("{task.fields[remaining]}"), TextColumn("{task.fields[rate]}"),
                          TimeElapsedColumn(), TimeRemainingColumn(), console=console) as bar:
                summary = run_batch(manifest, out, progress=RichBatchProgress(bar, job_progress), **options)
    except BatchInterrupted as stopped:
        console.print(_summary_line(stopped.summary), highlight=False, soft_wrap=True)
        console.print(f"Interrupted: {stopped.summary.remaining} row(s) not run. To resume (finished rows are "
                      f"skipped), run again: {_rerun_command(click.get_current_context())}",
                      highlight=False, markup=False, soft_wrap=True)
        sys.exit(130)
    console.print(_summary_line(summary), highlight=False, soft_wrap=True)
    if not summary.complete:
        console.print(f"see {summary.failures_path}", highlight=False)
        sys.exit(1)


def _rerun_command(ctx: click.Context) -> str:
    """This command line, rebuilt from what was given on it, to paste again."""
    words = ["sah", "batch"]
    for param in ctx.command.params:
        name = param.name or ""
        if ctx.get_parameter_source(name) is not ParameterSource.COMMANDLINE:
            continue
        value = ctx.params[name]
        if isinstance(param, click.Argument):
            words.append(str(value))
            continue
        assert isinstance(param, click.Option)
        long = next((o for o in param.opts if o.startswith("--")), param.opts[0])
        if param.is_flag and param.secondary_opts and value is False:
            words.append(next((o for o in param.secondary_opts if o.startswith("--")), param.secondary_opts[0]))
        elif param.is_flag:
            if value:
                words.append(long)
        elif name == "ray_address" and value == "":
            words.append(long)  # --ray with no address
        else:
            words.extend(f"{long}={item}" for item in (value if param.multiple else [value]))
    return shlex.join(words)


class _QuietProgress(BatchProgress):
    def outcome(self, outcome: Outcome, summary: BatchSummary) -> None:
        if outcome.status == "failed":
            console.print(f"failed {outcome.id}: {outcome.error}")


def _summary_line(summary: BatchSummary) -> str:
    """`6 of 6 rows done (4 now, 2 already done), 0 failed, in 9.1 s (0.44 jobs/s)`."""
    parts = [f"{summary.rows_done} of {summary.total} rows done ({summary.done} now, "
             f"{summary.already_done} already done)", f"{summary.failed} failed"]
    if summary.failed_before:
        parts.append(f"{summary.failed_before} skipped as failed earlier (--retry-failed runs them)")
    if summary.remaining:
        parts.append(f"{summary.remaining} not run")
    ran = summary.done + summary.failed
    rate = f" ({ran / summary.seconds:.2f} jobs/s)" if summary.seconds and ran else ""
    return ", ".join(parts) + f", in {summary.seconds:.1f} s{rate}"

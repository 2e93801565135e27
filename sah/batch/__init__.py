"""`sah batch`: many runs from a manifest, resumable, on local worker processes or a Ray cluster.

    from sah.batch import run_batch
    summary = run_batch("jobs.jsonl", "out/", workers=2)

A job whose outputs and sidecar exist and validate is skipped; a job that fails is recorded in
`OUT/failures.jsonl` and the batch goes on; `retry_failed=True` runs those again.
"""

from __future__ import annotations

import json
import time
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from sah.batch.local import run_local
from sah.batch.manifest import Row, read_manifest
from sah.batch.state import FAILURES, FailureLog, Job, batch_lock, is_done, make_jobs, remove_stale_temps
from sah.batch.worker import Outcome, Worker
from sah.errors import SahError
from sah.registry import Registry, get_registry


class BatchProgress:
    """Hooks a front end (the CLI's rich bars) gets called with; all do nothing by default."""

    def start(self, summary: BatchSummary, to_run: int) -> None: ...

    def outcome(self, outcome: Outcome, summary: BatchSummary) -> None: ...

    def step(self, worker: str, job_id: str, done: int, total: int) -> None: ...

    def message(self, text: str) -> None: ...


@dataclass
class BatchSummary:
    total: int = 0
    already_done: int = 0  # complete before this run: skipped
    failed_before: int = 0  # failed in an earlier run, not retried (no --retry-failed): skipped
    done: int = 0  # completed in this run
    failed: int = 0  # failed in this run (bad rows included)
    seconds: float = 0.0
    failures_path: Path = field(default_factory=Path)
    ran: list[str] = field(default_factory=list)  # ids of the jobs this run generated

    @property
    def remaining(self) -> int:
        return self.total - self.already_done - self.failed_before - self.done - self.failed

    @property
    def complete(self) -> bool:
        return self.already_done + self.done == self.total

    @property
    def rows_done(self) -> int:
        """Rows finished on disk now: done before this run and done in it."""
        return self.already_done + self.done


class BatchInterrupted(KeyboardInterrupt):
    """Ctrl-C (SIGINT) stopped the batch. `summary` counts every row finished on disk, the jobs
    that completed while it stopped included; running the batch again resumes it."""

    def __init__(self, summary: BatchSummary) -> None:
        super().__init__()
        self.summary = summary


def _model_order(job: Job) -> str:
    """Jobs that need the same models run next to each other, so workers swap models less."""
    config = job.config
    parts = [{k: v for k, v in config[s].items() if k not in ("steps", "cfg_scale")} for s in ("audio", "video")]
    return json.dumps([parts, config["binder"], config["run"]["device"], config["run"]["dtype"]],
                      sort_keys=True, default=str)


def run_batch(manifest: str | Path, out_dir: str | Path, *, layers: Sequence[dict[str, Any]] = (),
              retry_failed: bool = False, workers: int | None = None, threads: int | None = None,
              ray: bool = False, ray_address: str | None = None, cpus_per_worker: int | None = None,
              job_progress: bool = False, progress: BatchProgress | None = None,
              registry: Registry | None = None) -> BatchSummary:
    """Run every job of `manifest` that is not done yet, writing to `out_dir`.

    `layers` are config layers applied to all rows (a `--config` file's dict, `--set` items),
    under each row's own values. `workers`: local worker processes (default 1, in this process), or
    with `ray` the number of actors (default: one per GPU, or per `cpus_per_worker` CPUs).
    Raises SahError for a bad manifest before any job runs, and BatchInterrupted (a
    KeyboardInterrupt carrying the summary so far) on Ctrl-C."""
    if workers is not None and workers < 1:
        raise SahError(f"--workers must be at least 1, got {workers}")
    if ray:
        from sah.batch.on_ray import import_ray

        import_ray()  # say how to install it before any other work
    start = time.perf_counter()
    progress = progress or BatchProgress()
    registry = registry or get_registry()
    out = Path(out_dir).resolve()
    rows = read_manifest(manifest)
    jobs, bad_rows = make_jobs(rows, list(layers), out, registry)
    summary = BatchSummary(total=len(rows), failures_path=out / FAILURES)
    with batch_lock(out):
        remove_stale_temps(out)
        log = FailureLog(out / FAILURES)
        try:
            log.keep_only({row.id for row in rows})
            to_run: list[Job] = []
            for job in jobs:
                if is_done(job):
                    summary.already_done += 1
                    log.discard(job.id)
                elif log.failed_before(job) and not retry_failed:
                    summary.failed_before += 1
                else:
                    to_run.append(job)
            to_run.sort(key=_model_order)
            rows_by_id = {row.id: row for row in rows}
            progress.start(summary, len(to_run) + len(bad_rows))

            counted: set[str] = set()

            def on_outcome(outcome: Outcome) -> None:
                if outcome.id in counted:
                    return
                counted.add(outcome.id)
                row = rows_by_id[outcome.id]
                if outcome.status == "failed":
                    summary.failed += 1
                    log.add(row.number, row.id, row.fingerprint, outcome.error, outcome.kind)
                else:
                    summary.done += 1
                    if outcome.status == "done":
                        summary.ran.append(row.id)
                    log.discard(row.id)
                progress.outcome(outcome, summary)

            for bad in bad_rows:  # rows whose own values are wrong fail without running
                on_outcome(Outcome(bad.id, "failed", bad.error, bad.kind))

            if to_run:
                try:
                    if ray:
                        from sah.batch.on_ray import run_ray

                        run_ray(to_run, ray_address, on_outcome, workers=workers,
                                cpus_per_worker=cpus_per_worker, log=progress.message)
                    else:
                        run_local(to_run, workers or 1, on_outcome, progress.step if job_progress else None,
                                  threads)
                except KeyboardInterrupt as exc:
                    # Jobs in flight may have finished while the batch stopped (local workers are
                    # waited for): count what is on disk, as a resumed batch will.
                    for job in to_run:
                        if job.id not in counted and is_done(job):
                            on_outcome(Outcome(job.id, "done"))
                    summary.seconds = time.perf_counter() - start
                    raise BatchInterrupted(summary) from exc
                # A worker killed mid-save (and restarted by Ray, or replaced) leaves its temp files;
                # every worker is idle now, so nothing is being written.
                remove_stale_temps(out)
        finally:
            log.flush()
    summary.seconds = time.perf_counter() - start
    return summary


__all__ = ["BatchInterrupted", "BatchProgress", "BatchSummary", "Job", "Outcome", "Row", "Worker", "is_done",
           "read_manifest", "run_batch"]

"""Jobs on this machine: in the batch process (one worker) or in N spawned worker processes."""

from __future__ import annotations

import multiprocessing
import os
import threading
import time
from collections import Counter, deque
from collections.abc import Callable
from concurrent.futures import FIRST_COMPLETED, Future, ProcessPoolExecutor, wait
from concurrent.futures.process import BrokenProcessPool
from typing import Any

from sah.batch.state import Job
from sah.batch.worker import Outcome, Worker

OutcomeFn = Callable[[Outcome], None]
WorkerStepFn = Callable[[str, str, int, int], None]  # (worker, job id, step done, total steps)

#: a job whose worker process died this many times is recorded as failed rather than re-sent
MAX_CRASHES = 2

_worker: Worker | None = None
_steps: Any = None


def available_cores() -> int:
    try:
        return len(os.sched_getaffinity(0))
    except AttributeError:  # not Linux
        return os.cpu_count() or 1


def threads_per_worker(workers: int) -> int:
    """Torch threads per worker so N workers together use the cores once, not N times over."""
    return max(1, available_cores() // max(1, workers))


def run_local(jobs: list[Job], workers: int, on_outcome: OutcomeFn, on_step: WorkerStepFn | None = None,
              threads: int | None = None) -> None:
    if workers <= 1:
        worker = Worker(threads, name="worker 1")
        step = (lambda job_id, done, total: on_step(worker.name, job_id, done, total)) if on_step else None
        for job in jobs:
            on_outcome(worker.run(job, step))
        return
    _run_pool(jobs, workers, threads or threads_per_worker(workers), on_outcome, on_step)


def _run_pool(jobs: list[Job], workers: int, threads: int, on_outcome: OutcomeFn,
              on_step: WorkerStepFn | None) -> None:
    # spawn, not fork: forking a process that has started torch's thread pools can deadlock.
    context = multiprocessing.get_context("spawn")
    steps = context.SimpleQueue() if on_step else None
    reader = None
    if steps is not None and on_step is not None:
        reader = threading.Thread(target=_forward_steps, args=(steps, on_step), daemon=True)
        reader.start()
    pending = deque(jobs)
    crashes: Counter[str] = Counter()
    try:
        while pending:
            # A worker that dies (segfault, OOM kill) breaks the whole pool: start a new one and
            # re-send the jobs that were in flight; the jobs it held are suspects, counted.
            with ProcessPoolExecutor(workers, mp_context=context, initializer=_init_process,
                                     initargs=(threads, os.getpid(), steps)) as pool:
                running: dict[Future, Job] = {}
                try:
                    while pending or running:
                        # At most one job per worker in flight, so a free worker takes the next job.
                        while pending and len(running) < workers:
                            job = pending.popleft()
                            running[pool.submit(_run_in_process, job, steps is not None)] = job
                        finished, _ = wait(running, return_when=FIRST_COMPLETED)
                        for future in finished:
                            outcome = future.result()  # raises BrokenProcessPool if a worker died
                            del running[future]
                            on_outcome(outcome)
                except KeyboardInterrupt:
                    # Ctrl-C: let the jobs in flight finish (leaving the pool waits for them) and
                    # report them, so the summary counts what is really done.
                    pool.shutdown(wait=True)
                    for future in running:
                        if not future.cancelled() and future.exception() is None:
                            on_outcome(future.result())
                    raise
                except BrokenProcessPool:
                    for job in running.values():
                        crashes[job.id] += 1
                        if crashes[job.id] >= MAX_CRASHES:
                            on_outcome(Outcome(job.id, "failed", f"the worker process died {MAX_CRASHES} times "
                                               "while running this job", "WorkerDied"))
                        else:
                            pending.appendleft(job)
    finally:
        if steps is not None and reader is not None:
            steps.put(None)
            reader.join(timeout=5)


def _forward_steps(steps: Any, on_step: WorkerStepFn) -> None:
    while (item := steps.get()) is not None:
        on_step(*item)


def _init_process(threads: int, parent: int, steps: Any) -> None:
    global _worker, _steps
    threading.Thread(target=_exit_when_orphaned, args=(parent,), daemon=True).start()
    _worker = Worker(threads, name=f"worker pid {os.getpid()}")
    _steps = steps


def _run_in_process(job: Job, report_steps: bool) -> Outcome:
    assert _worker is not None
    on_step = None
    if report_steps and _steps is not None:
        name = _worker.name

        def on_step(job_id: str, done: int, total: int) -> None:
            _steps.put((name, job_id, done, total))

    return _worker.run(job, on_step)


def _exit_when_orphaned(parent: int) -> None:
    # If the batch process is killed (even by SIGKILL), its workers must not finish their jobs
    # unsupervised while a resumed batch runs the same jobs.
    while os.getppid() == parent:
        time.sleep(0.2)
    os._exit(1)

"""Jobs on a Ray cluster: one actor per GPU (or per N CPUs), each holding its models.

Ray does the placement, the restart of a dead actor and the retry of the call it was running
(`max_restarts`, `max_task_retries`). A retried job may have finished before its actor died, or
died half-way: outputs are written atomically (temp + rename) and the worker checks whether the
job is already done before running it, so each job's outputs land exactly once, complete.
"""

from __future__ import annotations

import os
import secrets
from collections import deque
from typing import Any

from sah.batch.local import OutcomeFn
from sah.batch.state import Job
from sah.batch.worker import Outcome, Worker
from sah.errors import SahError, first_line

INSTALL_HINT = "--ray needs Ray, which is not installed: pip install 'sah[ray]'"
ACTOR_PREFIX = "sah-batch-"
MAX_RESTARTS = 4
MAX_TASK_RETRIES = 2
#: environment variables the actors must see as the batch process does (which plugins load)
FORWARDED_ENV = ("SAH_LOAD_PLUGINS",)


def import_ray() -> Any:
    try:
        import ray
    except ImportError:
        raise SahError(INSTALL_HINT) from None
    return ray


class RayWorker:
    """The actor: a Worker that lives as long as the batch (wrapped with `ray.remote` at run time,
    so importing this module does not need Ray)."""

    def __init__(self, threads: int, name: str) -> None:
        import ray

        if ray.get_runtime_context().was_current_actor_reconstructed:
            name += " (restarted)"
        self.worker = Worker(threads, name=name)

    def run(self, job: Job) -> Outcome:
        return self.worker.run(job)

    def loads(self) -> int:
        return self.worker.loads


def actor_layout(resources: dict[str, float], workers: int | None, cpus_per_worker: int | None,
                 use_gpus: bool, jobs: int) -> tuple[int, dict[str, float]]:
    """How many actors, and the resources each asks for."""
    gpus, cpus = int(resources.get("GPU", 0)), max(1, int(resources.get("CPU", 1)))
    if use_gpus and gpus > 0:
        count = min(workers or gpus, gpus)
        options = {"num_gpus": 1, "num_cpus": cpus_per_worker or max(1, cpus // count)}
    else:
        per = cpus_per_worker or (max(1, cpus // workers) if workers else min(4, cpus))
        if per > cpus:
            raise SahError(f"--cpus-per-worker {per} is more than the Ray cluster's {cpus} CPUs")
        count = min(workers or cpus // per, cpus // per)
        options = {"num_cpus": per}
    return max(1, min(count, jobs)), options


def run_ray(jobs: list[Job], address: str | None, on_outcome: OutcomeFn, workers: int | None = None,
            cpus_per_worker: int | None = None, log: Any = None) -> None:
    ray = import_ray()
    started = False
    if not ray.is_initialized():
        ray.init(address=address, include_dashboard=False, log_to_driver=False)
        started = True
    try:
        _dispatch(ray, jobs, on_outcome, workers, cpus_per_worker, log)
    finally:
        if started:
            ray.shutdown()


def _dispatch(ray: Any, jobs: list[Job], on_outcome: OutcomeFn, workers: int | None, cpus_per_worker: int | None,
              log: Any) -> None:
    use_gpus = any(job.config["run"]["device"] != "cpu" for job in jobs)
    count, options = actor_layout(ray.cluster_resources(), workers, cpus_per_worker, use_gpus, len(jobs))
    if log is not None:
        log(f"Ray: {count} worker actor(s), each with {options}")
    env = {k: os.environ[k] for k in FORWARDED_ENV if k in os.environ}
    actor_class = ray.remote(max_restarts=MAX_RESTARTS, max_task_retries=MAX_TASK_RETRIES)(RayWorker)
    token = secrets.token_hex(3)
    actors = [actor_class.options(name=f"{ACTOR_PREFIX}{token}-{i}", runtime_env={"env_vars": env} if env else None,
                                  **options).remote(int(options["num_cpus"]), f"ray worker {i}")
              for i in range(count)]
    idle = deque(actors)
    pending = deque(jobs)
    running: dict[Any, tuple[Job, Any]] = {}
    try:
        while pending or running:
            while pending and idle:
                actor = idle.popleft()
                job = pending.popleft()
                running[actor.run.remote(job)] = (job, actor)
            if not running:  # every actor is gone for good
                for job in pending:
                    on_outcome(Outcome(job.id, "failed", "no Ray worker left to run this job", "WorkerDied"))
                return
            ready, _ = ray.wait(list(running), num_returns=1)
            for ref in ready:
                job, actor = running.pop(ref)
                try:
                    outcome = ray.get(ref)
                except ray.exceptions.ActorDiedError as exc:
                    # Restarts used up: the actor is gone; its job is recorded, the others go on.
                    on_outcome(Outcome(job.id, "failed", f"Ray worker died: {_one_line(exc)}", "WorkerDied"))
                    continue
                except ray.exceptions.RayError as exc:
                    outcome = Outcome(job.id, "failed", f"Ray: {_one_line(exc)}", type(exc).__name__)
                idle.append(actor)
                on_outcome(outcome)
    finally:
        for actor in actors:
            ray.kill(actor)


def _one_line(exc: BaseException) -> str:
    return first_line(exc)[:300]

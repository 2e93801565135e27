"""One worker: holds loaded models and runs jobs through `sah.api`, one at a time.

The same class runs in the batch process (`--workers 1`), in each local worker process and in
each Ray actor. Models are cached per component (each generator, the binder): a job reuses what
an earlier job loaded with the same plugin, model, options, device and dtype, and a component is
only replaced when a job needs a different one in its slot, so at most one audio generator, one
video generator and one binder are held at a time.
"""

from __future__ import annotations

import dataclasses
import json
import os
import time
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

import torch

from sah import api
from sah.batch.state import Job, is_done
from sah.errors import SahError
from sah.registry import get_registry

StepFn = Callable[[str, int, int], None]  # (job id, step done, total steps)


@dataclass(frozen=True)
class Outcome:
    id: str
    status: str  # "done", "failed", or "skipped" (an earlier attempt of this job already finished it)
    error: str = ""
    kind: str = ""
    seconds: float = 0.0
    worker: str = ""


class Worker:
    def __init__(self, threads: int | None = None, name: str = "") -> None:
        if threads:
            torch.set_num_threads(threads)
        self.name = name or f"pid {os.getpid()}"
        self._slots: dict[str, tuple[str, Any]] = {}  # slot -> (load key, generator or binder)
        self.loads = 0  # components loaded so far: tests and logs check models are reused

    def run(self, job: Job, on_step: StepFn | None = None) -> Outcome:
        start = time.perf_counter()
        try:
            # A job re-sent after its worker died may have finished before the death.
            if is_done(job):
                return Outcome(job.id, "skipped", worker=self.name)
            plan = api.plan(job.config, registry=get_registry())
            models = self._models(plan)
            progress = None
            if on_step is not None:
                def progress(done: int, total: int, sims: dict[str, float]) -> None:
                    on_step(job.id, done, total)
            api.save(api.generate(plan, models, progress=progress))
        except SahError as exc:
            return Outcome(job.id, "failed", str(exc), type(exc).__name__, time.perf_counter() - start, self.name)
        except Exception as exc:  # a crash in one job (a plugin bug, out of memory) must not end the batch
            text = str(exc).strip().splitlines()
            error = f"{type(exc).__name__}: {text[0] if text else ''}".rstrip(": ")
            return Outcome(job.id, "failed", error, type(exc).__name__, time.perf_counter() - start, self.name)
        return Outcome(job.id, "done", seconds=time.perf_counter() - start, worker=self.name)

    def _models(self, plan: api.RunPlan) -> api.Models:
        run = plan.config["run"]
        generators = {}
        for modality, cls in plan.generators.items():
            section = {k: v for k, v in plan.config[modality.value].items() if k not in ("steps", "cfg_scale")}
            key = json.dumps([cls.name, section, run["device"], run["dtype"]], sort_keys=True, default=str)
            generators[modality] = self._component(
                f"generator:{modality.value}", key,
                lambda p=dataclasses.replace(plan, generators={modality: cls}, binder=None), m=modality:
                api.load(p).generators[m])
        binder = None
        if plan.binder is not None:
            key = json.dumps([plan.binder.name, plan.config["binder"], run["device"], run["dtype"]],
                             sort_keys=True, default=str)
            binder = self._component("binder", key,
                                     lambda: api.load(dataclasses.replace(plan, generators={})).binder)
        return api.Models(generators, binder)

    def _component(self, slot: str, key: str, load: Callable[[], Any]) -> Any:
        held = self._slots.get(slot)
        if held is not None and held[0] == key:
            return held[1]
        # Drop the old one first so two large models never sit in memory together.
        self._slots.pop(slot, None)
        held = None
        component = load()
        self.loads += 1
        self._slots[slot] = (key, component)
        return component

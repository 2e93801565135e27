"""Batch throughput: 48 toy jobs (joint audio + video) with 1 and with 2 local workers, in one run.

    python benchmarks/batch_throughput.py [--jobs 48] [--steps 10]

Times are end to end as a user sees them: manifest parsing, the resume scan, worker start-up
(spawn, imports, model loads; 1 worker runs in this process, whose imports a warm-up job has
done, and loads its models in the timed run) and every job's generation and atomic save. Only the toy plugins are loaded
(SAH_LOAD_PLUGINS), as the toy jobs need nothing else. On a machine whose cores are busy with
other work the ratio says little about scaling; the output prints the load average beside it.
"""

from __future__ import annotations

import argparse
import json
import os
import tempfile
from pathlib import Path

os.environ.setdefault("SAH_LOAD_PLUGINS", "toy-generators,toy-binder")

from sah.batch import run_batch  # noqa: E402
from sah.batch.local import available_cores  # noqa: E402
from sah.plugins.toy import world  # noqa: E402


def write_manifest(path: Path, jobs: int) -> Path:
    rows = [{"id": f"job-{i:03d}", "prompt": world.CLASS_NAMES[i % world.NUM_CLASSES], "seed": i}
            for i in range(jobs)]
    path.write_text("".join(json.dumps(row) + "\n" for row in rows))
    return path


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--jobs", type=int, default=48)
    parser.add_argument("--steps", type=int, default=10)
    args = parser.parse_args()
    layers = [{"run": {"steps": args.steps, "device": "cpu"}}]
    with tempfile.TemporaryDirectory() as tmp:
        folder = Path(tmp)
        manifest = write_manifest(folder / "jobs.jsonl", args.jobs)
        # warm-up: the in-process worker's imports and first model load are not part of its rate
        run_batch(write_manifest(folder / "warm.jsonl", 1), folder / "warm", layers=layers, workers=1)
        cores = available_cores()
        rates = {}
        # (workers, torch threads per worker); None = the default, cores / workers. The last one is
        # last because it sets this process's thread count for good.
        for workers, threads in ((1, None), (2, None), (1, 1)):
            summary = run_batch(manifest, folder / f"out-{workers}-{threads}", layers=layers, workers=workers,
                                threads=threads)
            assert summary.done == args.jobs and summary.failed == 0, summary
            rates[workers, threads] = rate = summary.done / summary.seconds
            shown = threads or max(1, cores // workers)
            print(f"{workers} worker(s) x {shown} thread(s): {args.jobs} jobs in {summary.seconds:6.1f} s "
                  f"= {rate:.3f} jobs/s")
    load = os.getloadavg()[0] if hasattr(os, "getloadavg") else float("nan")
    print(f"ratio 2 workers / 1 worker: {rates[2, None] / rates[1, None]:.2f}x "
          f"(vs 1 worker x 1 thread: {rates[2, None] / rates[1, 1]:.2f}x)  "
          f"[{cores} cores, load average {load:.1f}, {args.steps} steps per job]")


if __name__ == "__main__":
    main()

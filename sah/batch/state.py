"""What a batch knows between runs: jobs (resolved configs), which are done, which failed.

Nothing here is kept in memory across runs: "done" is read off the output folder (a sidecar JSON
that names its media files, all present and readable), "failed" off `DIR/failures.jsonl`. Media
and sidecars are written atomically (temp file + rename, sidecar last), so a kill at any moment
leaves either a complete job or one that is not done.
"""

from __future__ import annotations

import contextlib
import json
import os
import re
import time
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from sah import config as cfg
from sah import io
from sah.batch.manifest import Row
from sah.errors import SahError
from sah.registry import Registry

FAILURES = "failures.jsonl"
LOCK = ".sah-batch.lock"
# io.atomic_path's temp names: ".NAME.<8 hex>.tmp.EXT"
_TEMP = re.compile(r"^\..+\.[0-9a-f]{8}\.tmp(\.[A-Za-z0-9]+)?$")


@dataclass(frozen=True)
class Job:
    """A row made runnable: its fully resolved config (output dir, name and overwrite fixed by the
    batch). Plain data, so it pickles to worker processes and Ray actors."""

    number: int
    id: str
    name: str
    config: dict[str, Any]
    fingerprint: str

    @property
    def stems(self) -> list[str]:
        """Output file stems, as `sah.api` names them for `output.name` with num_samples samples."""
        n = self.config["run"]["num_samples"]
        return [self.name] if n == 1 else [f"{self.name}-{i}" for i in range(n)]

    @property
    def sidecars(self) -> list[Path]:
        out = Path(self.config["output"]["dir"])
        return [out / f"{stem}.json" for stem in self.stems]


@dataclass(frozen=True)
class Failure:
    number: int
    id: str
    error: str
    fingerprint: str
    kind: str = "ConfigError"


def make_jobs(rows: list[Row], base_layers: list[dict[str, Any]], out_dir: Path,
              registry: Registry) -> tuple[list[Job], list[Failure]]:
    """Resolve each row's config (defaults < base layers < row < batch-fixed output keys).

    A bad override fails its row alone. Catches rows whose output names collide once
    `num_samples` suffixes are added."""
    jobs: list[Job] = []
    failures: list[Failure] = []
    for row in rows:
        if row.error is not None:
            failures.append(Failure(row.number, row.id, row.error, row.fingerprint))
            continue
        try:
            # overwrite: a job that is not done may have left some of its files; they are replaced
            fixed = {"output": {"dir": str(out_dir), "name": row.name, "overwrite": True}}
            config = cfg.resolve(*base_layers, *row.layers, fixed, registry=registry)
        except SahError as exc:
            failures.append(Failure(row.number, row.id, str(exc), row.fingerprint, type(exc).__name__))
            continue
        if "json" not in config["output"]["formats"]:
            # the sidecar is how a later run knows the job is done
            config["output"]["formats"] = [*config["output"]["formats"], "json"]
        jobs.append(Job(row.number, row.id, row.name, config, row.fingerprint))
    seen: dict[str, Job] = {}
    for job in jobs:
        for stem in job.stems:
            other = seen.setdefault(stem.casefold(), job)
            if other is not job:
                raise SahError(f"rows {other.number} and {job.number} would both write outputs named {stem!r}; "
                               f"give them distinct ids")
    return jobs, failures


def is_done(job: Job, probe: bool = True) -> bool:
    """Every sample's sidecar parses, is for this prompt and seed, and names files that exist,
    are non-empty and (with `probe`) open as media with the stream they should hold and are not
    cut short (`io.probe` compares the sizes the container states with the file's; no decode)."""
    seed, prompt = job.config["run"]["seed"], job.config["run"]["prompt"]
    for i, sidecar in enumerate(job.sidecars):
        try:
            data = json.loads(sidecar.read_text(encoding="utf-8"))
        except (OSError, ValueError):
            return False
        if not isinstance(data, dict) or data.get("name") != sidecar.stem or data.get("seed") != seed + i \
                or data.get("prompt") != prompt or not isinstance(data.get("files"), dict):
            return False
        for fmt, name in data["files"].items():
            path = sidecar.parent / str(name)
            if Path(str(name)).name != name or not path.is_file() or path.stat().st_size == 0:
                return False
            if probe and fmt in ("wav", "mp4") and not _playable(path, fmt):
                return False
    return True


def _playable(path: Path, fmt: str) -> bool:
    try:
        info = io.probe(path)
    except SahError:
        return False
    return info["audio"] is not None if fmt == "wav" else info["video"] is not None


def remove_stale_temps(out_dir: Path) -> list[Path]:
    """Delete temp files a killed run left behind. Only call while holding the batch lock."""
    removed = []
    if out_dir.is_dir():
        for path in out_dir.iterdir():
            if _TEMP.match(path.name) and path.is_file():
                with contextlib.suppress(FileNotFoundError):
                    path.unlink()
                    removed.append(path)
    return removed


@contextlib.contextmanager
def batch_lock(out_dir: Path) -> Iterator[None]:
    """One batch per output folder at a time: two would clean up each other's temp files and
    run the same jobs. The OS drops the lock when the process dies, even by SIGKILL."""
    out_dir.mkdir(parents=True, exist_ok=True)
    handle = open(out_dir / LOCK, "a+")  # noqa: SIM115 - held for the whole batch
    try:
        try:
            import fcntl
        except ImportError:  # Windows: no advisory locks; documented as one batch per folder
            fcntl = None
        if fcntl is not None:
            try:
                fcntl.flock(handle.fileno(), fcntl.LOCK_EX | fcntl.LOCK_NB)
            except OSError:
                raise SahError(f"another sah batch is writing to {str(out_dir)!r}; wait for it or use "
                               f"another --out") from None
        yield
    finally:
        handle.close()


class FailureLog:
    """`DIR/failures.jsonl`: one JSON object per failed job, rewritten atomically (temp + rename),
    so a kill leaves the previous complete version. Writes are throttled; `flush` forces one."""

    def __init__(self, path: Path, min_interval: float = 1.0) -> None:
        self.path = path
        self.records: dict[str, dict[str, Any]] = {}
        self._dirty = False
        self._last_write = 0.0
        self._min_interval = min_interval
        if path.exists():
            for line in path.read_text(encoding="utf-8").splitlines():
                try:
                    record = json.loads(line)
                except ValueError:
                    continue  # hand-edited or foreign line: ignore rather than refuse the batch
                if isinstance(record, dict) and "id" in record:
                    self.records[str(record["id"])] = record

    def failed_before(self, job: Job) -> bool:
        """The job failed in an earlier run with the same row content."""
        record = self.records.get(job.id)
        return record is not None and record.get("fingerprint") == job.fingerprint

    def add(self, number: int, job_id: str, fingerprint: str, error: str, kind: str = "SahError") -> None:
        previous = self.records.get(job_id, {})
        attempts = previous.get("attempts", 0) + 1 if previous.get("fingerprint") == fingerprint else 1
        self.records[job_id] = {"id": job_id, "row": number, "error": error, "kind": kind,
                                "fingerprint": fingerprint, "attempts": attempts,
                                "time": time.strftime("%Y-%m-%dT%H:%M:%S%z")}
        self._changed()

    def discard(self, job_id: str) -> None:
        if self.records.pop(job_id, None) is not None:
            self._changed()

    def keep_only(self, ids: set[str]) -> None:
        """Drop records of rows no longer in the manifest."""
        for job_id in [i for i in self.records if i not in ids]:
            self.discard(job_id)

    def _changed(self) -> None:
        self._dirty = True
        if time.monotonic() - self._last_write >= self._min_interval:
            self.flush()

    def flush(self) -> None:
        if not self._dirty:
            return
        if self.records:
            lines = "".join(json.dumps(r, sort_keys=True) + "\n" for r in sorted(
                self.records.values(), key=lambda r: (r.get("row", 0), str(r["id"]))))
            io.write_text_atomic(self.path, lines, overwrite=True)
        else:
            with contextlib.suppress(FileNotFoundError):
                os.remove(self.path)
        self._dirty = False
        self._last_write = time.monotonic()

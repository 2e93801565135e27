"""Running a script of benchmarks/ as the suite's benchmark tests do."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]


def run_benchmark(name: str, *args: str, cwd: Path) -> str:
    """The stdout of `benchmarks/NAME ARGS` run in `cwd` on one thread, offline; it must exit 0 and
    leave `cwd` empty (benchmarks write only to temporary folders)."""
    env = {**os.environ, "OMP_NUM_THREADS": "1", "HF_HUB_OFFLINE": "1"}
    done = subprocess.run([sys.executable, str(ROOT / "benchmarks" / name), *args], cwd=cwd, env=env,
                          capture_output=True, text=True, timeout=900, stdin=subprocess.DEVNULL)
    assert done.returncode == 0, f"{name} {' '.join(args)} exited {done.returncode}:\n{done.stderr[-3000:]}"
    assert not any(cwd.iterdir()), f"{name} wrote into its working directory: {list(cwd.iterdir())}"
    return done.stdout


def table_rows(lines: list[str], start: int) -> list[list[str]]:
    """The cells of the rows of the Markdown table whose header is `lines[start]`."""
    assert set(lines[start + 1].replace("|", "")) <= set("-"), lines[start + 1]
    rows = []
    for line in lines[start + 2:]:
        if not line.startswith("|"):
            break
        rows.append([cell.strip() for cell in line.strip("|").split("|")])
    return rows

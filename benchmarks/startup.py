"""How long `sah` takes before it does anything, against importing torch.

    python benchmarks/startup.py [--repeat 5]

Times, in fresh processes, `sah --help`, `sah plugins`, `sah config show --preset paper-v2a` (which
reads every option of AudioLDM and ImageBind), and `sah run` given a missing input file
(an input error: it should answer before any heavy import), and `python -c "import torch"` as the
yardstick. Prints the median wall-clock time of each and its ratio to torch's import; the target is
under 0.3x for every command that needs no model. Each process is started as the `sah` console
script starts it (`from sah.cli import main; main()`), in an empty temporary folder.
"""

from __future__ import annotations

import argparse
import statistics
import subprocess
import sys
import tempfile
import time

SAH = [sys.executable, "-c", "from sah.cli import main; main()"]
CASES = [
    ("sah --help", [*SAH, "--help"]),
    ("sah plugins", [*SAH, "plugins"]),
    ("sah config show", [*SAH, "config", "show", "--preset", "paper-v2a"]),
    ("missing input file", [*SAH, "run", "--video", "no-such-clip.mp4"]),
]
YARDSTICK = ("import torch", [sys.executable, "-c", "import torch"])
TARGET = 0.3


def median_seconds(command: list[str], repeat: int, cwd: str) -> float:
    times = []
    for _ in range(repeat):
        start = time.perf_counter()
        subprocess.run(command, cwd=cwd, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL, check=False)
        times.append(time.perf_counter() - start)
    return statistics.median(times)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--repeat", type=int, default=5, help="runs of each command (the median is shown)")
    args = parser.parse_args()
    with tempfile.TemporaryDirectory() as cwd:
        subprocess.run([*SAH, "--help"], cwd=cwd, capture_output=True, check=True)  # warm the file cache
        torch_s = median_seconds(YARDSTICK[1], args.repeat, cwd)
        rows = [(label, median_seconds(command, args.repeat, cwd)) for label, command in CASES]
    print(f"{'command':<22}{'seconds':>9}   ratio")
    print(f"{YARDSTICK[0]:<22}{torch_s:>9.3f}   1.00x import torch")
    for label, seconds in rows:
        ratio = seconds / torch_s
        mark = "ok" if ratio < TARGET else f"over the {TARGET}x target"
        print(f"{label:<22}{seconds:>9.3f}   {ratio:.2f}x import torch  {mark}")


if __name__ == "__main__":
    main()

"""benchmarks/v2a_memory.py and benchmarks/condition_embed.py run end to end on tiny models and
print figures that parse and agree with each other: the peak difference is the difference of the
printed peaks, the rise is peak - start, the ratio is the quotient of the printed seconds per clip;
the released run's binder holds only its audio tower; batched and one-at-a-time embeddings agree."""

from __future__ import annotations

import re
from pathlib import Path

import pytest
from benchmark_helpers import run_benchmark, table_rows

NUMBER = r"-?\d+(?:\.\d+)?"


def table(out: str, first_cell: str) -> tuple[list[str], list[list[str]]]:
    """(header cells, rows) of the first Markdown table whose header starts with `| first_cell |`."""
    lines = out.splitlines()
    start = next(i for i, line in enumerate(lines) if line.startswith(f"| {first_cell} |"))
    head = [cell.strip() for cell in lines[start].strip("|").split("|")]
    rows = table_rows(lines, start)
    assert rows and all(len(r) == len(head) for r in rows), (head, rows)
    return head, rows


def number(cell: str) -> float:
    assert re.fullmatch(NUMBER, cell), f"not a number: {cell!r}"
    return float(cell)


@pytest.fixture
def cwd(tmp_path: Path) -> Path:
    folder = tmp_path / "cwd"
    folder.mkdir()
    return folder


@pytest.mark.slow
def test_v2a_memory_tiny(cwd):
    out = run_benchmark("v2a_memory.py", "--tiny", cwd=cwd)
    head, rows = table(out, "run")
    assert head == ["run", "towers after", "load s", "generate s", "wall s", "start RSS MiB", "peak RSS MiB",
                    "rise MiB", "peak before guidance MiB", "RSS at guidance start MiB", "peak in guidance MiB",
                    "guidance peak after step 1 / last MiB"]
    runs = {r[0]: dict(zip(head, r)) for r in rows}
    assert list(runs) == ["release=False", "release=True"]
    # the released run's binder holds only the tower its guidance embeds; the kept one all three
    assert runs["release=True"]["towers after"] == "audio"
    assert runs["release=False"]["towers after"] == "audio+text+vision"
    peaks = {}
    for name, r in runs.items():
        load, generate, wall = (number(r[k]) for k in ("load s", "generate s", "wall s"))
        assert load > 0 and generate > 0 and abs(wall - (load + generate)) <= 0.15, r
        start, peak, rise = (number(r[k]) for k in ("start RSS MiB", "peak RSS MiB", "rise MiB"))
        before, at_start, in_guidance = (number(r[k]) for k in ("peak before guidance MiB",
                                                                  "RSS at guidance start MiB", "peak in guidance MiB"))
        assert 0 < start <= peak and abs(rise - (peak - start)) <= 1, r
        assert abs(peak - max(before, in_guidance)) <= 1 and at_start <= before + 1 and at_start <= in_guidance + 1, r
        first, last = (number(c.strip()) for c in r["guidance peak after step 1 / last MiB"].split("/"))
        assert first <= last + 1 and last <= in_guidance + 1, r
        peaks[name] = peak
    match = re.search(rf"release lowers the peak RSS by ({NUMBER}) MiB = ({NUMBER}) GB \(target >= 3 GB: "
                      r"(met|NOT met)\)", out)
    assert match, out
    diff, gb = float(match.group(1)), float(match.group(2))
    assert abs(diff - (peaks["release=False"] - peaks["release=True"])) <= 1
    assert abs(gb - diff * 2**20 / 1e9) <= 0.006
    assert match.group(3) == ("met" if gb >= 3 else "NOT met")
    assert "peak memory per guided step does not grow with the number of steps" in out

    head, rows = table(out.split("seconds per stage", 1)[1], "run")
    assert head[:3] == ["run", "load", "condition and prompt"] and head[-2:] == ["unstaged", "generate total"]
    assert {"denoiser", "decode", "binder forward", "backward"} <= set(head)
    for r in rows:
        cells = dict(zip(head, r))
        assert abs(number(cells["load"]) - number(runs[r[0]]["load s"])) <= 0.06
        staged = sum(number(r[i]) for i in range(2, len(head) - 1))
        total = number(cells["generate total"])
        assert abs(staged - total) <= 0.0005 * len(head) + 1e-9, r
        assert total <= number(runs[r[0]]["generate s"]) + 0.06


def test_condition_embed_tiny(cwd):
    out = run_benchmark("condition_embed.py", "--tiny", "--bfloat16-row", cwd=cwd)
    match = re.search(r"-> (\d+) clips x (\d+) crops = (\d+) tower inputs", out)
    assert match, out
    clips, crops, n = (int(g) for g in match.groups())
    assert (clips, crops) == (4, 3) and n == clips * crops
    head, rows = table(out, "variant")
    assert head == ["variant", "forwards", "batch", "total s", "s per clip", "cosine to batched"]
    variants = {r[0]: dict(zip(head, r)) for r in rows}
    bf16 = "batched, tower in bfloat16 (vision_dtype)"
    assert list(variants) == ["batched (sah: one forward)", "one at a time (batch 1)",
                              "per clip, its 3 crops batched", bf16]
    for name, r in variants.items():
        forwards, batch = int(r["forwards"]), int(r["batch"])
        assert forwards * batch == n, r
        total, per_clip = number(r["total s"]), number(r["s per clip"])
        assert total > 0 and abs(per_clip - total / n) <= 1e-4 + 1e-9, r
        assert number(r["cosine to batched"]) > (0.99 if name == bf16 else 0.999), r
    assert (int(variants["batched (sah: one forward)"]["batch"]), int(variants["one at a time (batch 1)"]["batch"])) \
        == (n, 1)
    match = re.search(rf"batched / one at a time, seconds per clip: ({NUMBER}) / ({NUMBER}) = ({NUMBER}) "
                      r"\(target <= 0.75: (met|NOT met)\)", out)
    assert match, out
    batched, single, ratio = (float(match.group(i)) for i in (1, 2, 3))
    assert batched == number(variants["batched (sah: one forward)"]["s per clip"])
    assert single == number(variants["one at a time (batch 1)"]["s per clip"])
    assert abs(ratio - batched / single) <= 0.0005 + 0.01 * ratio  # the per-clip seconds are rounded to 5 decimals
    assert match.group(4) == ("met" if ratio <= 0.75 else "NOT met")
    match = re.search(rf"batched in bfloat16 / one at a time in float32, seconds per clip: ({NUMBER}) / ({NUMBER}) = "
                      rf"({NUMBER})", out)
    assert match, out
    half, single, ratio = (float(match.group(i)) for i in (1, 2, 3))
    assert half == number(variants[bf16]["s per clip"])
    assert single == number(variants["one at a time (batch 1)"]["s per clip"])
    assert abs(ratio - half / single) <= 0.0005 + 0.01 * ratio


@pytest.mark.slow
def test_decode_chunk_tiny(cwd):
    out = run_benchmark("decode_chunk.py", "--tiny", cwd=cwd)
    head, rows = table(out, "decode_chunk s")
    assert head == ["decode_chunk s", "chunk frames", "forward s", "backward s", "forward + backward s", "peak MiB",
                    "waveform rel. error", "gradient rel. error"]
    # 1 s of the tiny model is 500 latent frames of 2 ms: chunks of 0.1 and 0.05 s are 50 and 25 frames
    assert [(r[0], r[1]) for r in rows] == [("0", "500"), ("0.1", "50"), ("0.05", "25")]
    for row in rows:
        assert number(row[4]) == pytest.approx(number(row[2]) + number(row[3]), abs=0.0011)
    whole, *chunked = rows
    assert whole[6] == whole[7] == "0.00e+00"
    # checkpointed chunks keep one chunk's activations alive, not the whole decode's
    assert all(number(r[5]) < number(whole[5]) for r in chunked), rows
    for row in chunked:
        ratios = re.search(rf"^decode_chunk = {re.escape(row[0])}: time ({NUMBER})x, peak memory ({NUMBER})x of the "
                           "whole decode$", out, re.M)
        assert ratios, out
        assert float(ratios.group(1)) == pytest.approx(number(row[4]) / number(whole[4]), rel=0.01, abs=0.002)
        assert float(ratios.group(2)) == pytest.approx(number(row[5]) / number(whole[5]), abs=0.05)

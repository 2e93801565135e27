"""The cost benchmarks run end to end on the tests' tiny models and print what docs/performance.md
promises: the tables' headers, figures that parse, and figures that agree with each other (stage
shares add up to the step, the floor is the sum of its parts, guided / floor is the quotient of the
printed numbers)."""

from __future__ import annotations

import re
from pathlib import Path

import pytest
from benchmark_helpers import ROOT, run_benchmark, table_rows

DOC = ROOT / "docs" / "performance.md"
SECONDS = r"(-?\d+\.\d+)"


def quotient_rounding(a: float, b: float) -> float:
    """How far a / b of two seconds printed to 3 decimals may be from a printed 3-decimal quotient
    of the unrounded ones: each figure is off by up to half a millisecond."""
    return 0.0005 + (a / b) * (0.0005 / a + 0.0005 / b) * 1.01


def table(out: str, header: str) -> list[list[str]]:
    """The rows (cells) of the first Markdown table under `header` in `out`."""
    lines = out.splitlines()
    return table_rows(lines, lines.index(header))


def tables(out: str, header: str) -> list[list[list[str]]]:
    """Every table under `header` (the partial-clips part repeats the stage table)."""
    found, rest = [], out
    while header in rest.splitlines():
        found.append(table(rest, header))
        rest = rest[rest.index(header) + len(header):]
    return found


def seconds(cell: str) -> float:
    return float(re.fullmatch(r"[+-]?\d+\.\d+", cell).group())


def percent(cell: str) -> float:
    return float(re.fullmatch(r"(-?\d+\.\d) %", cell).group(1))


def promised_headers(section: str) -> list[str]:
    """The table header lines (those a |---| line follows) that docs/performance.md shows for a
    benchmark's output, between `<!-- headers: SECTION -->` and `<!-- /headers -->`."""
    text = DOC.read_text(encoding="utf-8")
    part = text.split(f"<!-- headers: {section} -->", 1)[1].split("<!-- /headers -->", 1)[0]
    lines = [line.strip() for line in part.splitlines()]
    headers = [line for line, after in zip(lines, lines[1:]) if line.startswith("| ") and after.startswith("|---")]
    assert headers, f"docs/performance.md shows no table for {section}"
    return headers


def rounding(n: int) -> float:
    """What n figures printed to 3 decimals may lose when added."""
    return 0.0005 * n + 1e-9


def check_stage_table(rows: list[list[str]]) -> float:
    """Shares and seconds add up to the step; returns the step's seconds."""
    *stages, total = rows
    assert total[0] == "guided step" and total[2] == "100.0 %"
    assert {"denoiser", "decode", "binder forward", "backward", "unstaged"} <= {r[0] for r in stages}
    step = seconds(total[1])
    assert step > 0
    shares = [percent(r[2]) for r in stages]
    assert sum(shares) <= 100.0 + 0.05 * len(shares)
    assert all(s >= 0 for s in shares[:-1])  # the stages; what is left (unstaged) may round below 0
    assert sum(seconds(r[1]) for r in stages) == pytest.approx(step, abs=rounding(len(stages) + 1))
    for name, median, _, fastest in stages:
        if name != "unstaged":
            assert 0 <= seconds(fastest) <= seconds(median) + 0.0005, name
    assert seconds(total[3]) <= step + 0.0005
    return step


def test_the_doc_promises_the_tables_and_measured_figures():
    text = DOC.read_text(encoding="utf-8")
    for command in ("python benchmarks/guided_step.py", "python benchmarks/guided_step.py --tiny",
                    "python benchmarks/gpu_presets.py --tiny"):
        assert command in text, command
    assert "1 thread" in text and "2-core" in text  # the machine the figures were measured on
    assert promised_headers("guided_step") and promised_headers("gpu_presets")


def run_tiny(name: str, tmp_path: Path, skip_prefix: str | None = None) -> str:
    """`benchmarks/NAME --tiny`'s output, which must print every table header docs/performance.md
    promises for it (but those starting with `skip_prefix`)."""
    cwd = tmp_path / "cwd"
    cwd.mkdir()
    out = run_benchmark(name, "--tiny", cwd=cwd)
    printed = {line.strip() for line in out.splitlines()}
    for header in promised_headers(name.removesuffix(".py")):
        if skip_prefix is None or not header.startswith(skip_prefix):
            assert header in printed, f"docs/performance.md promises {header!r}; printed:\n{out}"
    return out


@pytest.mark.slow
def test_guided_step_tiny_prints_consistent_figures(tmp_path):
    out = run_tiny("guided_step.py", tmp_path)

    stage_tables = tables(out, "| stage | median step s | share | min over steps s |")
    assert len(stage_tables) == 2  # whole clip, partial clips
    step = check_stage_table(stage_tables[0])

    parts = table(out, "| floor part | median s | min s |")
    *components, floor_row = parts
    assert [r[0] for r in components] == ["UNet CFG pass (batch 2, no grad)", "decode forward (VAE + vocoder)",
                                          "decode backward (to the latent)", "binder audio forward",
                                          "binder audio backward (to the waveform)"]
    assert all(seconds(r[1]) > 0 and seconds(r[2]) > 0 for r in components)
    floor = seconds(floor_row[1])
    assert floor == pytest.approx(sum(seconds(r[1]) for r in components), abs=rounding(len(components)))
    assert seconds(floor_row[2]) == pytest.approx(sum(seconds(r[2]) for r in components), abs=rounding(5))

    ratio, median_step, median_floor = map(float, re.search(
        rf"^guided / floor = (\d+\.\d+) \(median step {SECONDS} s / floor {SECONDS} s;", out, re.M).groups())
    assert median_step == step and median_floor == floor
    assert ratio == pytest.approx(step / floor, abs=quotient_rounding(step, floor))

    paired = re.search(r"^step k / floor measured after it: median (\d+\.\d+) \(range (\d+\.\d+)–(\d+\.\d+)\); "
                       r"in CPU seconds \(time\.process_time\): median (\d+\.\d+) \(range (\d+\.\d+)–(\d+\.\d+)\)$",
                       out, re.M)
    median, low, high, cpu_median, cpu_low, cpu_high = map(float, paired.groups())
    assert 0 < low <= median <= high and 0 < cpu_low <= cpu_median <= cpu_high

    surplus = table(out, "| where | guided s | floor s | surplus s |")
    *where, total = surplus
    assert total[0] == "total" and seconds(total[1]) == step and seconds(total[2]) == floor
    assert seconds(total[3]) == pytest.approx(step - floor, abs=rounding(3))  # three roundings to 1 ms
    assert sum(seconds(r[1]) for r in where) == pytest.approx(step, abs=rounding(len(where) + 1))
    assert sum(seconds(r[2]) for r in where) == pytest.approx(floor, abs=rounding(len(where) + 5))
    for name, guided, floor_part, difference in where:
        assert seconds(difference) == pytest.approx(seconds(guided) - seconds(floor_part), abs=rounding(3)), name

    # work counted op by op: the guided step does the floor's matmul/convolution work and no more
    work = {r[0]: r for r in table(out, "| work | guided step | floor | guided − floor |")}
    assert set(work) == {"aten ops run", "GFLOP (matmul, convolution, attention)", "MB written by ops (views excluded)"}
    flops = work["GFLOP (matmul, convolution, attention)"]
    assert float(flops[2]) > 0
    assert float(flops[1]) == pytest.approx(float(flops[2]), rel=0.01), \
        "the guided step does matmul/convolution work the floor does not (a recomputed forward?)"
    for row in work.values():
        assert float(row[3]) == pytest.approx(float(row[1]) - float(row[2]), abs=0.11)
    ops = table(out, "| op (the 10 that differ most) | calls, guided step | calls, floor | MB written, guided step | "
                     "MB written, floor |")
    assert len(ops) <= 10 and all(int(r[1]) >= 0 and int(r[2]) >= 0 for r in ops)

    # partial clips: the step as sah runs it, ratios to the whole-clip floor, the needed-frames decodes
    partial_step = check_stage_table(stage_tables[1])
    whole_floor = float(re.search(rf"^whole-clip floor \(the floor above\) = {SECONDS} s;", out, re.M).group(1))
    assert whole_floor == floor
    ratio = float(re.search(r"^guided step \(partial clips\) / whole-clip floor = (\d+\.\d+)$", out, re.M).group(1))
    assert ratio == pytest.approx(partial_step / floor, abs=quotient_rounding(partial_step, floor))
    # sah decodes only the frames under the binder's clips: its guided step, and that decode timed alone
    measures = {r[0]: r for r in table(out, "| measure | median s | min s |")}
    decoded = re.search(r"^\| guided step \(sah decodes latent frames \[0, (\d+)\) of (\d+)\) \|", out, re.M)
    assert decoded and int(decoded.group(1)) < int(decoded.group(2))
    sah_decode = next(r for name, r in measures.items() if name.startswith("sah's decode of the binder's spans"))
    binder_work = next(r for name, r in measures.items() if name.startswith("binder audio forward + backward"))
    sah_floor = float(re.search(rf"floor with these clips and sah's decode of the spans = {SECONDS} s$", out,
                                re.M).group(1))
    assert sah_floor == pytest.approx(seconds(components[0][1]) + seconds(sah_decode[1]) + seconds(binder_work[1]),
                                      abs=rounding(3))
    ratio = float(re.search(r"^guided step \(partial clips\) / floor with sah's decode of the spans = (\d+\.\d+)$",
                            out, re.M).group(1))
    assert ratio == pytest.approx(partial_step / sah_floor, abs=quotient_rounding(partial_step, sah_floor))
    embeddings = re.search(r"^sah's decode of the spans against the whole decode: 1 − cos \(binder embeddings\) = "
                           r"(\d\.\d\de[+-]\d\d), log-mel rel\. error = (\d\.\d\de[+-]\d\d), waveform rel\. error = "
                           r"(\d\.\d\de[+-]\d\d)$", out, re.M)
    assert embeddings and 0 <= float(embeddings.group(1)) <= 2
    gradient = re.search(r"through the whole decode: cos = (-?\d\.\d{4}), relative error = (\d\.\d\de[+-]\d\d); "
                         r"over the decoded latent frames cos = (-?\d\.\d{4}); share of the whole decode's gradient "
                         r"\(squared norm\) on the frames not decoded = (\d\.\d{3})$", out, re.M)
    # the partial decode leaves the frames it does not decode at zero: overall, the agreement can only be weaker
    assert gradient and abs(float(gradient.group(1))) <= abs(float(gradient.group(3))) + 1e-4 <= 1 + 1e-4
    assert 0 <= float(gradient.group(4)) <= 1
    decodes = table(out, "| context frames | decoded frames | decode fwd+bwd s | floor s | floor / whole-clip floor | "
                         "1 − cos (binder embeddings, whole vs partial decode) | log-mel rel. error | "
                         "waveform rel. error |")
    assert [int(r[0]) for r in decodes] == [0, 8, 16]
    frames = [int(r[1]) for r in decodes]
    assert frames == sorted(frames) and frames[0] > 0
    total_frames = int(re.search(r"latent frames \[\d+, \d+\) of (\d+) lie under them", out).group(1))
    assert frames[-1] < total_frames
    for _, _, decode, needed, share, one_minus_cos, mel, wave in decodes:
        assert seconds(decode) > 0 and 0 < float(share) < 1.5
        assert float(needed) / floor == pytest.approx(float(share), abs=quotient_rounding(float(needed), floor))
        assert 0 <= float(one_minus_cos) <= 2 and float(mel) >= 0 and float(wave) >= 0
    assert re.search(r"^yardstick, another sample's whole decode .*: 1 − cos = \d\.\d\de[+-]\d\d, "
                     r"log-mel rel\. error = \d\.\d\de[+-]\d\d, waveform rel\. error = \d\.\d\de[+-]\d\d", out, re.M)


@pytest.mark.slow
def test_gpu_presets_tiny_prints_the_table_and_each_guided_runs_stages(tmp_path):
    # the stage table's columns are those the runs have: checked below
    out = run_tiny("gpu_presets.py", tmp_path, skip_prefix="| run | total s |")
    assert re.search(r"^skipped \(models not built by this benchmark\): .*v2a-stable-audio", out, re.M)

    presets = table(out, "| preset | task | steps | load s | unguided s/sample | guided s/sample | guided / unguided | "
                         "unguided peak MiB | guided peak MiB |")
    names = [r[0] for r in presets]
    assert {"fast-v2a", "paper-v2a", "fast-a2v", "paper-joint"} <= set(names)
    for row in presets:
        unguided, guided = float(row[4]), float(row[5])
        assert unguided > 0 and guided > 0
        ratio = float(row[6].rstrip("×"))  # of the unrounded seconds; these are printed to 0.01 s
        low, high = (guided - 0.005) / (unguided + 0.005), (guided + 0.005) / max(unguided - 0.005, 1e-9)
        assert low - 0.005 <= ratio <= high + 0.005

    header = next(line for line in out.splitlines() if line.startswith("| run | total s |"))
    columns = [c.strip() for c in header.strip("|").split("|")]
    assert columns[:2] == ["run", "total s"] and columns[-2:] == ["unstaged", "peak MiB (sah.cost)"]
    assert {"denoiser", "scheduler", "x0", "decode", "binder forward", "backward", "update"} <= set(columns)
    rows = table(out, header)
    assert [r[0] for r in rows] == names
    for row in rows:
        total = float(row[1])
        cells = [re.fullmatch(rf"{SECONDS} \((-?\d+\.\d) %\)", c).groups() for c in row[2:-1]]
        assert sum(float(s) for s, _ in cells) == pytest.approx(total, abs=rounding(len(cells) + 1)), row[0]
        assert sum(float(p) for _, p in cells) <= 100.0 + 0.05 * len(cells), row[0]
        assert all(float(s) >= 0 for s, _ in cells[:-1]), row[0]
        assert float(row[-1]) >= 0
        guided = float(presets[names.index(row[0])][5])
        assert total <= guided + 0.006  # the run's account lies inside the timed call (printed to 0.01 s)

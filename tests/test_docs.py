"""The documentation runs as written: README.md and docs/*.md.

Every ```sh, ```bash and ```python block is run, in the order of its file, in one temporary
folder per file (so a later block sees what an earlier one wrote, as a reader following the page
would), on the toy world, offline (`HF_HUB_OFFLINE=1`), each within `BUDGET_S` seconds. Shell blocks
run with `bash -e -o pipefail`, Python blocks with this interpreter; `sah` and `python` are this
environment's. Nothing in a block is substituted or skipped silently: README.md's blocks run twice in
the same folder, as a newcomer's first hour would (a second run must not collide with the first).

A block that cannot run here says so on the line before it (blank lines between are allowed):

    <!-- needs-weights -->       it needs real model weights (hub ids, the ImageBind checkpoint) or a GPU
    <!-- not-run: REASON -->     it installs packages from the network, runs the test suite itself, or
                                 takes minutes from the checkout (a benchmark); REASON is required

Quoted output: a plain ``` block whose line before is `<!-- output-of: COMMAND -->` must hold what
COMMAND prints: each of its non-empty lines is a line of COMMAND's stdout + stderr (run like a
shell block, in a fresh folder), so docs quote the messages sah really prints.

Blocks in files this test's owner does not edit that fail now are listed in KNOWN_BROKEN with why:
the file's test is then an expected failure, and it fails for real once such a block passes (so the
entry is removed) or another block breaks.
"""

from __future__ import annotations

import importlib.metadata
import os
import re
import shutil
import subprocess
import sys
import textwrap
import time
from dataclasses import dataclass
from pathlib import Path

import pytest

from sah import config as cfg

ROOT = Path(__file__).resolve().parents[1]
DOCS = [ROOT / "README.md", *sorted((ROOT / "docs").glob("*.md"))]
LANGUAGES = {"sh": "shell", "bash": "shell", "python": "python"}
BUDGET_S = 300
MARKER = re.compile(r"^<!--\s*(needs-weights|not-run:(?P<reason>.*?)|output-of:(?P<command>.*?))\s*-->$")

# (file, the start of the block's first line): why it fails. Only for files owned by others (see the docstring).
# A reason starting with NOT_RUN names a block that would not end (a server): it is not started.
NOT_RUN = "not started: "
KNOWN_BROKEN: dict[tuple[str, str], str] = {}


@dataclass
class Block:
    file: Path
    line: int  # of the opening fence, 1-based
    language: str  # shell, python, or "" for a plain block
    text: str
    marker: str | None  # needs-weights, not-run, output-of
    detail: str = ""  # not-run's reason, output-of's command

    @property
    def where(self) -> str:
        return f"{self.file.relative_to(ROOT)}:{self.line}"

    @property
    def first_line(self) -> str:
        return next((line.strip() for line in self.text.splitlines() if line.strip()), "")


def blocks(path: Path) -> list[Block]:
    """The fenced blocks of a Markdown file, with the marker on the line before each (if any)."""
    found = []
    lines = path.read_text(encoding="utf-8").splitlines()
    i = 0
    while i < len(lines):
        fence = re.match(r"^(\s*)```\s*([\w+-]*)\s*$", lines[i])
        if not fence:
            i += 1
            continue
        indent, info = fence.group(1), fence.group(2).lower()
        end = next((j for j in range(i + 1, len(lines)) if lines[j].strip() == "```"), len(lines))
        body = textwrap.dedent("\n".join(line[len(indent):] if line.startswith(indent) else line
                                         for line in lines[i + 1:end]))
        before = next((lines[j].strip() for j in range(i - 1, -1, -1) if lines[j].strip()), "")
        marker = MARKER.match(before)
        kind = detail = None
        if marker:
            kind = marker.group(1).split(":")[0]
            detail = (marker.group("reason") or marker.group("command") or "").strip()
        language = LANGUAGES.get(info, "" if not info else info)
        found.append(Block(path, i + 1, language, body + "\n", kind, detail or ""))
        i = end + 1
    return found


def _env() -> dict[str, str]:
    """This environment's `sah` and `python` first on PATH; offline; the default cache places, so the
    paths messages print are the ones the docs quote."""
    env = {k: v for k, v in os.environ.items()
           if k not in ("HF_HOME", "HF_HUB_CACHE", "SAH_CACHE", "XDG_CACHE_HOME", "SAH_LOAD_PLUGINS")}
    env["PATH"] = os.pathsep.join([str(Path(sys.executable).parent), env.get("PATH", "")])
    env["HF_HUB_OFFLINE"] = "1"
    env["OMP_NUM_THREADS"] = "1"
    env["COLUMNS"] = "200"
    return env


def _run(code: str, language: str, cwd: Path) -> subprocess.CompletedProcess:
    if language == "python":
        script = cwd / f".docs-block-{time.monotonic_ns()}.py"
        script.write_text(code, encoding="utf-8")
        command = [sys.executable, str(script)]
    else:
        command = [shutil.which("bash") or "/bin/bash", "-e", "-o", "pipefail", "-c", code]
    try:
        return subprocess.run(command, cwd=cwd, env=_env(), capture_output=True, text=True, timeout=BUDGET_S,
                              stdin=subprocess.DEVNULL)
    except subprocess.TimeoutExpired as exc:
        return subprocess.CompletedProcess(command, -1, exc.stdout or "", f"over the {BUDGET_S} s budget")


def _tail(text: str, lines: int = 8) -> str:
    return "\n".join(text.strip().splitlines()[-lines:])


@pytest.mark.parametrize("doc", DOCS, ids=lambda p: str(p.relative_to(ROOT)))
def test_every_block_is_runnable_or_marked(doc):
    """Markers are known and say why; a marked block is one the runner would otherwise run."""
    for block in blocks(doc):
        if block.marker == "not-run":
            assert block.detail, f"{block.where}: <!-- not-run: REASON --> needs its reason"
        if block.marker in ("needs-weights", "not-run"):
            assert block.language in ("shell", "python"), f"{block.where}: a marker on a block that is never run"
        if block.marker == "output-of":
            assert block.language == "" and block.detail, f"{block.where}: output-of goes on a plain ``` block"


@pytest.mark.slow
@pytest.mark.parametrize("doc", DOCS, ids=lambda p: str(p.relative_to(ROOT)))
def test_doc_blocks_run(doc, tmp_path):
    runnable = [b for b in blocks(doc) if b.language in ("shell", "python") and b.marker is None]
    expected = {key: why for key, why in KNOWN_BROKEN.items() if key[0] == str(doc.relative_to(ROOT))}
    rounds = 2 if doc.name == "README.md" else 1
    failed: dict[tuple[str, str], str] = {}
    for round_ in range(rounds):
        for block in runnable:
            known = next((k for k in expected if block.first_line.startswith(k[1])), None)
            if known is not None and expected[known].startswith(NOT_RUN):
                failed[known] = expected[known]
                continue
            start = time.perf_counter()
            done = _run(block.text, block.language, tmp_path)
            if done.returncode != 0:
                key = next((k for k in expected if block.first_line.startswith(k[1])),
                           (str(doc.relative_to(ROOT)), block.first_line))
                failed.setdefault(key, f"{block.where} (run {round_ + 1}, exit {done.returncode}, "
                                       f"{time.perf_counter() - start:.0f} s):\n{block.text}{_tail(done.stderr)}")
    unexpected = {k: v for k, v in failed.items() if k not in expected}
    assert not unexpected, "blocks that stopped working:\n\n" + "\n\n".join(unexpected.values())
    fixed = [k for k in expected if k not in failed]
    assert not fixed, f"blocks listed in KNOWN_BROKEN run now, remove them: {fixed}"
    if expected:
        pytest.xfail("; ".join(f"{first!r}: {why}" for (_, first), why in expected.items()))


def _quoted_outputs() -> list[Block]:
    return [b for doc in DOCS for b in blocks(doc) if b.marker == "output-of"]


@pytest.mark.slow
@pytest.mark.parametrize("block", _quoted_outputs(), ids=lambda b: b.where)
def test_quoted_messages_are_the_ones_printed(block, tmp_path):
    done = _run(block.detail, "shell", tmp_path)
    printed = {line.strip() for line in (done.stdout + done.stderr).splitlines()}
    for line in block.text.splitlines():
        if line.strip():
            assert line.strip() in printed, f"{block.where}: not printed by `{block.detail}`:\n{line}\n" \
                                            f"printed:\n{_tail(done.stdout + done.stderr)}"


def test_blocks_are_found_with_their_markers(tmp_path):
    page = tmp_path / "page.md"
    page.write_text("text\n\n<!-- needs-weights -->\n\n```bash\nsah run --binder imagebind\n```\n\n"
                    "<!-- not-run: installs -->\n```sh\npip install x\n```\n"
                    "```python\nprint(1)\n```\n<!-- output-of: sah --version -->\n```\nsah, version 0.1.0\n```\n"
                    "```toml\n[run]\n```\n", encoding="utf-8")
    found = blocks(page)
    assert [(b.language, b.marker, b.detail, b.first_line) for b in found] == [
        ("shell", "needs-weights", "", "sah run --binder imagebind"), ("shell", "not-run", "installs", "pip install x"),
        ("python", None, "", "print(1)"), ("", "output-of", "sah --version", "sah, version 0.1.0"),
        ("toml", None, "", "[run]")]


def test_readme_blocks_that_need_weights_are_the_real_model_ones():
    """The toy-world blocks run; what is marked is what cannot: real backends, installs, the suite."""
    readme = blocks(ROOT / "README.md")
    marked = [b for b in readme if b.marker]
    assert all(b.marker != "needs-weights" or re.search(r"audioldm|animatediff|imagebind|paper-", b.text)
               for b in marked)
    run = [b for b in readme if b.language in ("shell", "python") and not b.marker]
    text = "".join(b.text for b in run)
    for line in ("sah run --gen-audio toy-audio --gen-video toy-video --binder toy --prompt north --out outputs",
                 "sah run --video outputs/joint-0.mp4", "sah eval outputs/", "sah report outputs/", "sah.save(result)"):
        assert line in text, line


# --------------------------------------------------------------------------- install: pins, extras, metadata


def test_readme_and_constraints_name_the_versions_ci_runs():
    pins = dict(re.findall(r"^([A-Za-z0-9_.-]+)==(\S+)$", (ROOT / "constraints.txt").read_text(), re.M))
    assert {"torch", "diffusers", "transformers"} <= set(pins)
    readme = " ".join((ROOT / "README.md").read_text().replace("*", "").split())
    for name in ("torch", "diffusers", "transformers"):
        assert f"{name} {pins[name]}" in readme, name
        installed = importlib.metadata.version(name).split("+")[0]
        assert installed == pins[name], f"{name} {installed} installed, constraints.txt pins {pins[name]}"
    ci = (ROOT / ".ci" / "run").read_text()
    assert ci.count("-c constraints.txt") >= 2 and ".[dev]" in ci


def test_pyproject_license_is_spdx_and_the_test_extra_is_the_least_the_suite_needs():
    project = cfg.tomllib.loads((ROOT / "pyproject.toml").read_text())
    assert project["project"]["license"] == "Apache-2.0"  # a string: no setuptools deprecation warning
    requires = project["build-system"]["requires"]
    assert any(re.fullmatch(r"setuptools>=(7[7-9]|[89]\d|\d{3,})(\.\d+)*", r) for r in requires), requires
    extras = project["project"]["optional-dependencies"]
    assert not any(r.startswith(("ray", "ruff", "gradio", "sah[ray", "sah[ui")) for r in extras["test"]), extras["test"]
    dev = " ".join(extras["dev"])
    assert "test" in dev and "ray" in dev and "ruff" in dev


# --------------------------------------------------------------------------- reference data: a failure, not a skip


def test_missing_reference_data_fails_instead_of_skipping(tmp_path):
    tests = tmp_path / "tests"
    tests.mkdir()
    for name in ("conftest.py", "reference.py"):
        shutil.copy(ROOT / "tests" / name, tests / name)
    (tests / "test_needs_reference.py").write_text(textwrap.dedent("""
        import pytest
        from reference import reference_dir

        def test_uses_it():
            folder = reference_dir() / "imagebind"
            if not (folder / "tiny_state_dict.safetensors").is_file():
                pytest.skip(f"tiny ImageBind reference not found at {folder}")

        def test_other_skip():
            pytest.skip("no chromium here")
        """))
    env = {**os.environ, "SAH_REFERENCE_DIR": str(tmp_path / "nowhere")}
    done = subprocess.run([sys.executable, "-m", "pytest", "-q", "-p", "no:cacheprovider", str(tests)], cwd=tmp_path,
                          env=env, capture_output=True, text=True, timeout=300)
    assert done.returncode == 1, done.stdout
    assert "1 failed, 1 skipped" in done.stdout, done.stdout
    assert "SAH_REFERENCE_DIR" in done.stdout

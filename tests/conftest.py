import os
from pathlib import Path

import pytest
import torch
from reference import reference_dir

torch.set_num_threads(1)
os.environ.setdefault("OMP_NUM_THREADS", "1")


@pytest.fixture(autouse=True, scope="session")
def _session_outside_the_checkout(tmp_path_factory):
    """Tests never write into, or read from, the folder pytest was started in (the README has users
    run `sah run ... --out outputs` there first): the session, its module fixtures included, runs in
    an empty folder of its own, and each test in one of its own (below)."""
    with pytest.MonkeyPatch.context() as patch:
        patch.chdir(tmp_path_factory.mktemp("session-cwd"))
        yield


@pytest.fixture(autouse=True)
def _outside_the_checkout(tmp_path_factory, monkeypatch):
    monkeypatch.chdir(tmp_path_factory.mktemp("cwd"))


@pytest.fixture(autouse=True)
def _fresh_registry(monkeypatch):
    """Each test sees plugins as the environment defines them, not as a previous test left them."""
    import sah.registry

    monkeypatch.setattr(sah.registry, "_cached", None)
    yield


@pytest.hookimpl(hookwrapper=True)
def pytest_runtest_makereport(item, call):
    """Missing reference data (tests/reference.py: $SAH_REFERENCE_DIR, else ../shared/reference beside
    the checkout) is a failure, not a skip: a test that skips naming the reference folder fails."""
    outcome = yield
    report = outcome.get_result()
    if not report.skipped or getattr(report, "wasxfail", None) is not None:
        return
    reason = report.longrepr[2] if isinstance(report.longrepr, tuple) else str(report.longrepr)
    folder = str(reference_dir())
    if folder in reason or str(Path(folder).resolve()) in reason:
        report.outcome = "failed"
        report.longrepr = (f"{reason}\nreference data is required, not optional: put the reference folder at "
                           f"{folder} or point $SAH_REFERENCE_DIR at it (see tests/reference.py)")

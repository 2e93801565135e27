import os

import pytest
import torch

torch.set_num_threads(1)
os.environ.setdefault("OMP_NUM_THREADS", "1")


@pytest.fixture(autouse=True)
def _fresh_registry(monkeypatch):
    """Each test sees plugins as the environment defines them, not as a previous test left them."""
    import sah.registry

    monkeypatch.setattr(sah.registry, "_cached", None)
    yield

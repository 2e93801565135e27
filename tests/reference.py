"""Where the reference data of official implementations lies: `$SAH_REFERENCE_DIR`, else
`shared/reference` beside the checkout (the project's layout). Tests read it; sah never does.

It is required: a test that finds it missing fails (tests/conftest.py turns a skip that names this
folder into a failure), so a run without it cannot pass by skipping the parity tests."""

import os
from pathlib import Path


def reference_dir() -> Path:
    if os.environ.get("SAH_REFERENCE_DIR"):
        return Path(os.environ["SAH_REFERENCE_DIR"]).expanduser()
    return Path(__file__).resolve().parents[2] / "shared" / "reference"


IMAGEBIND_REFERENCE = reference_dir() / "imagebind"

"""Loading pretrained weights by hub id or local path, with one clear error when they are absent.

Every plugin that calls a `from_pretrained` goes through `load_pretrained`, so a user offline
with an empty cache reads the same one-line advice whatever the backend.
"""

from __future__ import annotations

import os
from collections.abc import Callable
from pathlib import Path
from typing import Any, TypeVar

from sah.errors import SahError

T = TypeVar("T")


def is_local_path(model: str) -> bool:
    """A model name that names a filesystem location rather than a hub id."""
    return model.startswith((".", "/", "~")) or Path(model).expanduser().exists()


def load_pretrained(loader: Callable[..., T], model: str, *, flag: str, what: str = "model", **kwargs: Any) -> T:
    """`loader(model, **kwargs)` — e.g. `SomeModel.from_pretrained` — turning a missing local path
    or an unreachable, uncached hub id into a one-line SahError that says how to fix it.

    `flag` is the CLI flag that picks this model (e.g. "--audio-model"), named in the advice."""
    if is_local_path(model):
        path = Path(model).expanduser()
        if not path.exists():
            raise SahError(f"{what} path {model!r} does not exist")
        model = str(path)
    try:
        return loader(model, **kwargs)
    except SahError:
        raise
    except (OSError, ValueError) as exc:
        first = (str(exc).strip().splitlines() or [type(exc).__name__])[0]
        if Path(model).exists():
            raise SahError(f"{what} at {model!r} could not be loaded: {first}") from exc
        offline = os.environ.get("HF_HUB_OFFLINE", "").lower() in ("1", "true", "yes")
        reason = "HF_HUB_OFFLINE is set" if offline else "the hub could not be reached or has no such repository"
        raise SahError(
            f"{what} {model!r} is not in the local Hugging Face cache and {reason}; download it where there is "
            f"internet (huggingface-cli download {model}) or pass a local copy with {flag} PATH"
        ) from exc

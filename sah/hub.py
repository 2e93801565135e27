"""Loading pretrained weights by hub id or local path, with one clear error when they are absent.

Every plugin that calls a `from_pretrained` goes through `load_pretrained`, so a user offline
with an empty cache reads the same one-line advice whatever the backend.
"""

from __future__ import annotations

import functools
import os
import re
import socket
from collections.abc import Callable
from pathlib import Path
from typing import Any, TypeVar
from urllib.parse import urlparse

from sah.errors import SahError, first_line

T = TypeVar("T")


def offline() -> bool:
    """Whether the user asked for no network, the way huggingface_hub reads HF_HUB_OFFLINE."""
    return os.environ.get("HF_HUB_OFFLINE", "").lower() in ("1", "true", "yes", "on")


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
        first = first_line(exc)
        if Path(model).exists():
            raise SahError(f"{what} at {model!r} could not be loaded: {first}") from exc
        reason = "HF_HUB_OFFLINE is set" if offline() else "the hub could not be reached or has no such repository"
        raise SahError(
            f"{what} {model!r} is not in the local Hugging Face cache and {reason}; download it where there is "
            f"internet (huggingface-cli download {model}) or pass a local copy with {flag} PATH"
        ) from exc


_HUB_ID = re.compile(r"^[A-Za-z0-9][\w.-]*/[\w.-]+$")


def is_hub_id(ref: str) -> bool:
    """`owner/name` that is not a path on this machine."""
    return bool(_HUB_ID.match(ref)) and not Path(ref).expanduser().exists()


def available_locally(ref: str) -> bool:
    """A local path that exists, or a hub id with a snapshot in the Hugging Face cache."""
    if Path(ref).expanduser().exists():
        return True
    if not is_hub_id(ref):
        return False
    from huggingface_hub import snapshot_download
    from huggingface_hub.errors import LocalEntryNotFoundError

    try:
        snapshot_download(ref, local_files_only=True)
    except (LocalEntryNotFoundError, OSError, ValueError):
        return False
    return True


def is_url(ref: str) -> bool:
    return ref.startswith(("https://", "http://"))


@functools.lru_cache(maxsize=8)
def reachable(url: str | None = None, timeout: float = 2.0) -> bool:
    """Whether a download from `url` (default: the Hugging Face endpoint) could work: HF_HUB_OFFLINE
    is unset and the host accepts a TCP connection."""
    if offline():
        return False
    host = urlparse(url or os.environ.get("HF_ENDPOINT") or "https://huggingface.co")
    try:
        socket.create_connection((host.hostname, host.port or (80 if host.scheme == "http" else 443)),
                                 timeout=timeout).close()
    except OSError:
        return False
    return True


def _fetchable(ref: str) -> bool:
    return (is_url(ref) and reachable(ref)) or (is_hub_id(ref) and reachable())


def _why_missing(ref: str) -> str:
    if is_url(ref):
        return "not downloaded yet"
    return "not in the Hugging Face cache" if is_hub_id(ref) else "no such path"


def check_weights(refs: list[tuple[str, str]]) -> None:
    """Raise one SahError naming every weight in `refs` (`(id, path or URL, flag)`) that a load could
    not get: missing local paths always, uncached hub ids and URLs when they cannot be reached."""
    missing = [(ref, flag) for ref, flag in dict.fromkeys(refs) if is_url(ref) or not available_locally(ref)]
    if all(_fetchable(ref) for ref, _ in missing):
        return
    names = "; ".join(f"{ref!r} ({flag}): {_why_missing(ref)}" for ref, flag in missing)
    raise SahError(f"model weights not available offline: {names}; download them where there is internet, or "
                   "pass local copies with the flags named (HF_HUB_OFFLINE=1 skips the network)")

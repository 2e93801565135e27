"""Loading pretrained weights by hub id or local path, with one clear error when they are absent.

Every plugin that calls a `from_pretrained` goes through `load_pretrained`, so a user offline
with an empty cache reads the same one-line advice whatever the backend.
"""

from __future__ import annotations

import contextlib
import functools
import os
import re
import socket
import sys
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any, TypeVar
from urllib.parse import urlparse

from sah.errors import SahError, first_line

T = TypeVar("T")


def offline() -> bool:
    """Whether the user asked for no network, the way huggingface_hub reads HF_HUB_OFFLINE."""
    return os.environ.get("HF_HUB_OFFLINE", "").lower() in ("1", "true", "yes", "on")


def _home(path: Path) -> str:
    """A path as a user types it: under the home folder as `~/...`."""
    try:
        return "~/" + path.expanduser().relative_to(Path.home()).as_posix()
    except ValueError:
        return str(path)


def hf_cache_dir() -> Path:
    """Where huggingface_hub keeps downloads ($HF_HUB_CACHE, else $HF_HOME/hub, else ~/.cache/huggingface/hub)."""
    from huggingface_hub import constants

    return Path(constants.HF_HUB_CACHE)


def sah_cache_dir() -> Path:
    """Where sah keeps files it downloads itself: $SAH_CACHE, else $XDG_CACHE_HOME/sah, else ~/.cache/sah."""
    if os.environ.get("SAH_CACHE"):
        return Path(os.environ["SAH_CACHE"]).expanduser()
    return Path(os.environ.get("XDG_CACHE_HOME") or Path.home() / ".cache").expanduser() / "sah"


def download_target(url: str) -> Path:
    """Where sah puts (and looks for) the file at `url`: SAH_CACHE/<the URL's last folder>/<its name>,
    e.g. ~/.cache/sah/imagebind/imagebind_huge.pth for ImageBind's checkpoint."""
    parts = [p for p in urlparse(url).path.split("/") if p]
    return sah_cache_dir().joinpath(*parts[-2:]) if parts else sah_cache_dir()


def hf_download_command(repo_id: str) -> str:
    """The command that fetches a hub repository into the cache: `hf download ID` (huggingface_hub 1.0
    renamed `huggingface-cli download ID` to that)."""
    import importlib.metadata

    try:
        major = int(importlib.metadata.version("huggingface_hub").split(".")[0])
    except (importlib.metadata.PackageNotFoundError, ValueError):
        major = 1
    return f"{'hf' if major >= 1 else 'huggingface-cli'} download {repo_id}"


def fetch_advice(ref: str) -> str:
    """How to get one missing weight: the exact command and where it puts the files."""
    if is_url(ref):
        target = _home(download_target(ref))
        return f"fetch it with `curl -L --create-dirs -o {target} {ref}`"
    if is_hub_id(ref):
        return f"fetch it with `{hf_download_command(ref)}` (into {_home(hf_cache_dir())})"
    return ""


def is_local_path(model: str) -> bool:
    """A model name that names a filesystem location rather than a hub id."""
    return model.startswith((".", "/", "~")) or Path(model).expanduser().exists()


def load_pretrained(loader: Callable[..., T], model: str, *, flag: str, what: str = "model", **kwargs: Any) -> T:
    """`loader(model, **kwargs)` — e.g. `SomeModel.from_pretrained` — quietly (no progress bars or
    advice from transformers and diffusers), turning a missing local path, a local folder without
    the files a component needs, or an unreachable, uncached hub id into a one-line SahError that
    says how to fix it.

    `flag` is the CLI flag that picks this model (e.g. "--audio-model"), named in the advice."""
    if is_local_path(model):
        path = Path(model).expanduser()
        if not path.exists():
            raise SahError(f"{what} path {model!r} does not exist")
        model = str(path)
    try:
        with _quiet():
            return loader(model, **kwargs)
    except SahError:
        raise
    except (OSError, ValueError) as exc:
        if Path(model).exists():
            missing = _missing_in_folder(Path(model), kwargs.get("subfolder"))
            raise SahError(f"{what} at {model!r} could not be loaded: {missing or first_line(exc)}") from exc
        reason = "HF_HUB_OFFLINE is set" if offline() else "the hub could not be reached or has no such repository"
        raise SahError(
            f"{what} {model!r} is not in the local Hugging Face cache and {reason}; where there is internet, "
            f"{fetch_advice(model)}, or pass a local copy with {flag} PATH"
        ) from exc


_WEIGHT_SUFFIXES = (".safetensors", ".bin", ".pth", ".ckpt", ".pt")


def _missing_in_folder(root: Path, subfolder: str | None) -> str | None:
    """What a local model folder lacks for a component, said plainly (a framework's own error
    names one file format it tried, e.g. a `.bin`, when the folder has none at all)."""
    folder = root / subfolder if subfolder else root
    if not folder.is_dir():
        return f"it has no {subfolder}/ folder" if subfolder else "it is not a folder"
    if (folder / "config.json").is_file() and not any(f.suffix in _WEIGHT_SUFFIXES for f in folder.iterdir()):
        where = f"{subfolder}/" if subfolder else "the folder"
        return f"{where} has a config.json but no weights file (*.safetensors or *.bin)"
    return None


@contextlib.contextmanager
def _quiet() -> Iterator[None]:
    """transformers' and diffusers' loaders print progress bars and advice (install accelerate, a
    model type that differs from the class); `sah run` has its own progress line."""
    saved = []
    for name in ("transformers", "diffusers"):
        module = sys.modules.get(name)
        logging = getattr(getattr(module, "utils", None), "logging", None) if module is not None else None
        if logging is None:
            continue
        saved.append((logging, logging.get_verbosity(), logging.is_progress_bar_enabled()))
        logging.set_verbosity(50)  # CRITICAL: a failed load is one line of sah's, not theirs too
        logging.disable_progress_bar()
    try:
        yield
    finally:
        for logging, verbosity, bars in saved:
            logging.set_verbosity(verbosity)
            if bars:
                logging.enable_progress_bar()


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
    names = "; ".join(f"{ref!r} ({flag}): {_why_missing(ref)}" + (f", {fetch_advice(ref)}" if fetch_advice(ref) else "")
                      for ref, flag in missing)
    if not any(fetch_advice(ref) for ref, _ in missing):
        raise SahError(f"model weights not available offline: {names}; pass existing paths with the flags named")
    why = "HF_HUB_OFFLINE is set" if offline() else \
        "the network could not be reached; HF_HUB_OFFLINE=1 skips this check"
    raise SahError(f"model weights not available offline: {names}; run the commands where there is internet and copy "
                   f"what they fetch to the same place here, or pass local copies with the flags named ({why})")


def diffusers_load_kwargs() -> dict[str, Any]:
    """Keyword arguments for a diffusers `from_pretrained`: without `accelerate` diffusers falls
    back to `low_cpu_mem_usage=False` anyway but warns on every load, so ask for it explicitly."""
    import importlib.util

    return {} if importlib.util.find_spec("accelerate") else {"low_cpu_mem_usage": False}

"""Named configs shipped with sah: `sah run --preset NAME`, `sah config show --preset NAME`.

A preset is an ordinary TOML config file in this package (`NAME.toml`); its leading comment block
says what it is and why its settings were chosen. It is one config layer:
defaults < preset < --config < CLI flags < --set.
"""

from __future__ import annotations

import sys
from importlib import resources
from typing import Any

from sah.errors import ConfigError

if sys.version_info >= (3, 11):
    import tomllib
else:  # pragma: no cover
    import tomli as tomllib


def _files() -> dict[str, Any]:
    return {f.name[:-len(".toml")]: f for f in resources.files(__name__).iterdir() if f.name.endswith(".toml")}


def list_presets() -> list[str]:
    """The names of the shipped presets, sorted."""
    return sorted(_files())


def preset_text(name: str) -> str:
    """The preset's TOML text, comments included."""
    files = _files()
    if name not in files:
        raise ConfigError(f"unknown preset {name!r}; known presets: {', '.join(sorted(files))}")
    return files[name].read_text(encoding="utf-8")


def preset_summary(name: str) -> str:
    """The first comment line of a preset, without its leading `# NAME — `."""
    first = next((line for line in preset_text(name).splitlines() if line.startswith("#")), "")
    return first.lstrip("# ").split(" — ", 1)[-1].strip()


def load_preset(name: str) -> dict[str, Any]:
    """The preset as a config layer (a nested dict, not yet resolved)."""
    try:
        return tomllib.loads(preset_text(name))
    except tomllib.TOMLDecodeError as exc:  # a broken shipped file is a bug, but say which
        raise ConfigError(f"preset {name!r} is not valid TOML: {exc}") from None


__all__ = ["list_presets", "load_preset", "preset_summary", "preset_text"]

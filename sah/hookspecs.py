"""pluggy hook specifications. A plugin module implements any of these with `@hookimpl`."""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

import pluggy

hookspec = pluggy.HookspecMarker("sah")
hookimpl = pluggy.HookimplMarker("sah")


@hookspec
def register_generators(register: Callable[[type], None]) -> None:
    """Call `register(GeneratorSubclass)` for each generator the plugin provides."""


@hookspec
def register_binders(register: Callable[[type], None]) -> None:
    """Call `register(BinderSubclass)` for each binder the plugin provides."""


@hookspec
def register_commands(cli: Any) -> None:
    """Add commands to the `sah` click group, e.g. `@cli.command() def mine(): ...`."""

"""Placeholder: being written (issue 15). Registers nothing yet."""

from __future__ import annotations

from typing import Any

from sah.hookspecs import hookimpl


@hookimpl
def register_generators(register: Any) -> None:
    return None

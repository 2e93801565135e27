"""Modules imported on first use, so that commands needing no model (`sah plugins`, `sah config
show`, a bad-input error) never pay for torch.

    torch = lazy_import("torch")      # at module level, in place of `import torch`
    F = lazy_import("torch.nn.functional")

The name behaves as the module from its first attribute access on. Plugin authors can do the same
in their plugin's module (docs/plugins.md, "Keep `sah plugins` fast"). What must then not run at
import time: `from torch import Tensor` (put it under `if TYPE_CHECKING:`), defaults such as
`dtype=torch.float32`, and classes deriving from `torch.nn.Module` (keep those in a module the
plugin imports when it loads its weights).
"""

from __future__ import annotations

import importlib
import sys
from types import ModuleType
from typing import Any


class LazyModule:
    """Stands for the module `name` and imports it on the first attribute access."""

    __slots__ = ("_sah_name", "_sah_module")

    def __init__(self, name: str) -> None:
        object.__setattr__(self, "_sah_name", name)
        object.__setattr__(self, "_sah_module", None)

    def __getattribute__(self, attr: str) -> Any:
        # Every access comes here (a failed lookup falling through to __getattr__ costs an
        # exception each time); the module is kept, its attributes are not, so a test that
        # monkeypatches torch is seen.
        module = object.__getattribute__(self, "_sah_module")
        if module is None:
            module = _load(self)
        return getattr(module, attr)

    def __setattr__(self, attr: str, value: Any) -> None:
        setattr(_load(self), attr, value)

    def __dir__(self) -> list[str]:
        return dir(_load(self))

    def __repr__(self) -> str:
        return f"<lazy module {object.__getattribute__(self, '_sah_name')!r}>"


def _load(lazy: LazyModule) -> ModuleType:
    module = object.__getattribute__(lazy, "_sah_module")
    if module is None:
        module = importlib.import_module(object.__getattribute__(lazy, "_sah_name"))
        object.__setattr__(lazy, "_sah_module", module)
    return module


def lazy_import(name: str) -> Any:
    """The module `name` if it is imported already, else a stand-in that imports it on first use."""
    module = sys.modules.get(name)
    return module if module is not None else LazyModule(name)

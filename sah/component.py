"""What generators and binders share: a name, declared options, and a load from a model id."""

from __future__ import annotations

from abc import ABC
from dataclasses import dataclass
from typing import Any, ClassVar

import torch


@dataclass(frozen=True)
class Licence:
    """The licences a plugin runs under: of its own code and of the weights it loads (SPDX ids
    where there is one), and whether those weights may be used commercially."""

    code: str
    weights: str
    commercial: bool
    url: str = ""  # where the weights' licence is stated


class Component(ABC):
    """A loadable backend. Subclasses set `name` (what users type), `description`,
    `default_model` and `options` (extra config keys of their section, with defaults), and load
    their weights in `__init__`."""

    name: ClassVar[str]
    description: ClassVar[str] = ""
    default_model: ClassVar[str | None] = None
    options: ClassVar[dict[str, Any]] = {}
    #: None: not declared, which a run restricted to commercially usable weights refuses
    licence: ClassVar[Licence | None] = None

    def __init__(self, model: str | None = None, device: str | torch.device = "cpu",
                 dtype: torch.dtype = torch.float32, **options: Any) -> None:
        unknown = set(options) - set(self.options)
        if unknown:
            raise TypeError(f"{self.name}: unknown options {sorted(unknown)}")
        self.model = model or self.default_model
        self.device = torch.device(device)
        self.dtype = dtype
        self.config = {**self.options, **options}
        self.check_options(self.config)

    @classmethod
    def check_options(cls, options: dict[str, Any]) -> None:
        """Raise a one-line SahError for option values a load would refuse. `sah.plan` calls it
        before any weights are read; `__init__` calls it too, for direct construction."""
        return None  # a plugin with nothing to check accepts every value of its declared types

    @classmethod
    def licence_for(cls, model: str | None) -> Licence | None:
        """The licence that applies to loading `model` (a plugin whose checkpoints differ in
        licence overrides this). Default: the class's `licence`."""
        return cls.licence

    @classmethod
    def weights(cls, model: str | None, options: dict[str, Any]) -> list[tuple[str, str | None]]:
        """The weights a load with this `model` and these options would read, each a hub id or a
        local path with the config key or flag that sets it (None: the section's model flag).
        `sah.plan` checks them all before anything loads, so an offline user learns of every
        missing one at once. Default: the model id."""
        name = model or cls.default_model
        return [(name, None)] if name else []

"""What generators and binders share: a name, declared options, and a load from a model id."""

from __future__ import annotations

import copy
import math
from abc import ABC
from collections.abc import Mapping
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any, ClassVar

from sah.errors import SahError
from sah.lazy import lazy_import

if TYPE_CHECKING:
    import torch
else:
    torch = lazy_import("torch")


@dataclass(frozen=True)
class Licence:
    """The licences a plugin runs under: of its own code and of the weights it loads (SPDX ids
    where there is one), and whether those weights may be used commercially."""

    code: str
    weights: str
    commercial: bool
    url: str = ""  # where the weights' licence is stated


_TYPE_NAMES = {bool: "true or false", int: "an integer", float: "a number", str: "text", list: "a list",
               dict: "a table"}


@dataclass(frozen=True)
class Option:
    """A plugin option: its default, one line of help, and the values it takes.

    A value is taken if it is one of `choices`, or of `type` (ints count as floats) and within
    [`min`, `max`] for numbers. Without choices, `type` is the default's: `Option(0.5, min=0)`
    takes numbers ≥ 0; with choices and no `type`, only the choices: `Option("ddim", choices=(
    "ddim", "dpm"))`; both: `Option("auto", choices=("auto",), type=int, min=1)` takes "auto" or
    an integer ≥ 1. A default of None is always taken. The core checks every value before any
    weights load; `Component.check_options` is left for rules across options."""

    default: Any
    help: str = ""
    choices: tuple[Any, ...] = ()
    type: type | None = None
    min: float | None = None
    max: float | None = None

    def __post_init__(self) -> None:
        object.__setattr__(self, "choices", tuple(self.choices))
        if self.type is None and not self.choices and self.default is not None:
            kind = type(self.default)
            object.__setattr__(self, "type", list if kind is tuple else kind)
        if self.type not in (None, *_TYPE_NAMES):
            raise TypeError(f"Option type must be one of bool, int, float, str, list, dict; got {self.type!r}")

    def coerce(self, value: Any) -> Any:
        """`value` as the option holds it (an int given for a float option becomes a float);
        ValueError naming what the option takes if it is not taken."""
        if value is None and self.default is None:
            return None
        if any(type(value) is type(choice) and value == choice for choice in self.choices):
            return value  # of the choice's own type: neither True nor 3.0 passes as 1 or 3
        kind = self.type
        if kind is None or not _is_type(value, kind):
            raise ValueError(self.describe())
        if kind in (int, float):
            if not math.isfinite(value) or (self.min is not None and value < self.min) or \
                    (self.max is not None and value > self.max):
                raise ValueError(self.describe())
            return float(value) if kind is float else value
        return value

    def describe(self) -> str:
        """What the option takes, in words: 'one of "ddim", "dpm"', '"auto" or an integer >= 1'."""
        parts = []
        if self.choices:
            listed = ", ".join(_literal(c) for c in self.choices)
            parts.append(listed if len(self.choices) == 1 and self.type else f"one of {listed}")
        if self.type is not None:
            words = _TYPE_NAMES[self.type]
            if self.min is not None and self.max is not None:
                words += f" from {self.min:g} to {self.max:g}"
            elif self.min is not None:
                words += f" >= {self.min:g}"
            elif self.max is not None:
                words += f" <= {self.max:g}"
            parts.append(words)
        return " or ".join(parts) or "anything"


def _is_type(value: Any, kind: type) -> bool:
    if kind is bool or isinstance(value, bool):
        return kind is bool and isinstance(value, bool)
    if kind is float:
        return isinstance(value, (int, float))
    return isinstance(value, kind)


def _literal(value: Any) -> str:
    if isinstance(value, str):
        return f'"{value}"'
    if isinstance(value, bool):
        return "true" if value else "false"
    return repr(value)


#: core keys a caller might pass at load, and where they go instead
_PER_RUN = {"cfg_scale": "GenerationRequest.cfg_scale", "steps": "GenerationRequest.num_steps"}


def option_spec(declared: Any) -> Option:
    """A declared option as an `Option`: a bare default (the older spelling) is its own default."""
    return declared if isinstance(declared, Option) else Option(declared)


class Component(ABC):
    """A loadable backend. Subclasses set `name` (what users type), `description`,
    `default_model` and `options` (extra config keys of their section: an `Option` each, or a bare
    default), and load their weights in `__init__`."""

    name: ClassVar[str]
    description: ClassVar[str] = ""
    default_model: ClassVar[str | None] = None
    options: ClassVar[dict[str, Any]] = {}
    #: None: not declared, which a run restricted to commercially usable weights refuses
    licence: ClassVar[Licence | None] = None

    def __init__(self, model: str | None = None, device: str | torch.device = "cpu",
                 dtype: torch.dtype | None = None, **options: Any) -> None:
        self.config = self.resolve_options(options)
        self.model = model or self.default_model
        self.device = torch.device(device)
        self.dtype = dtype if dtype is not None else torch.float32

    @classmethod
    def option_specs(cls) -> dict[str, Option]:
        return {key: option_spec(declared) for key, declared in cls.options.items()}

    @classmethod
    def option_defaults(cls) -> dict[str, Any]:
        return {key: copy.deepcopy(spec.default) for key, spec in cls.option_specs().items()}

    @classmethod
    def resolve_options(cls, given: Mapping[str, Any], label: str = "") -> dict[str, Any]:
        """The defaults with `given` over them, each value checked against its `Option`, then
        `check_options`. `label` prefixes the names in errors (`"binder."` in a config); without
        it they are the plugin's. Unknown names are a TypeError, as for any Python call."""
        specs = cls.option_specs()
        unknown = sorted(set(given) - set(specs))
        if unknown:
            per_run = [f"{k} is set per run ({_PER_RUN[k]})" for k in unknown if k in _PER_RUN]
            raise TypeError(f"{cls.name}: unknown options {unknown}; it takes {sorted(specs) or 'none'}"
                            + "".join(f"; {why}" for why in per_run))
        values = cls.option_defaults()
        for key, value in given.items():
            try:
                values[key] = specs[key].coerce(value)
            except ValueError as exc:
                where = f"{label}{key}" if label else f"{cls.name} option '{key}'"
                raise SahError(f"{where} must be {exc}, got {_literal(value)}") from None
        cls.check_options(values)
        return values

    @classmethod
    def check_options(cls, options: dict[str, Any]) -> None:
        """Raise a one-line SahError for option values a load would refuse that their `Option`s
        cannot say (rules across options, a file that must exist). `sah.plan` calls it before any
        weights are read; `__init__` calls it too, for direct construction."""
        return None

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

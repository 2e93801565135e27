"""Plugin discovery: entry points in the `sah` group, loaded through pluggy.

Built-in plugins are found the same way as third-party ones. A plugin that fails to import or to
register is recorded as broken (name, entry point, error) and everything else keeps working.
"""

from __future__ import annotations

import difflib
import importlib.metadata
import inspect
import os
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

import pluggy

from sah import hookspecs
from sah.binder import Binder
from sah.errors import PluginError, first_line
from sah.generator import Generator
from sah.lazy import LazyModule
from sah.media import Modality

ENTRY_POINT_GROUP = "sah"


@dataclass
class PluginInfo:
    """Where a plugin came from: its entry point and the distribution that provides it."""

    name: str
    entry_point: str
    package: str
    version: str


@dataclass
class BrokenPlugin:
    name: str
    entry_point: str
    package: str
    error: str


@dataclass
class Registry:
    """What the loaded plugins provide, by the name a user types."""

    generators: dict[str, type[Generator]] = field(default_factory=dict)
    binders: dict[str, type[Binder]] = field(default_factory=dict)
    sources: dict[str, PluginInfo] = field(default_factory=dict)  # component name → plugin
    broken: list[BrokenPlugin] = field(default_factory=list)
    plugin_manager: pluggy.PluginManager | None = None

    def generator(self, name: str, modality: Modality | None = None) -> type[Generator]:
        choices = {n: c for n, c in self.generators.items() if modality is None or c.modality == modality}
        return self._lookup(name, choices, f"{modality} generator" if modality else "generator")

    def binder(self, name: str) -> type[Binder]:
        return self._lookup(name, self.binders, "binder")

    def component(self, name: str) -> type[Generator] | type[Binder]:
        """The generator or binder called `name`."""
        return self._lookup(name, {**self.generators, **self.binders}, "generator or binder")

    def _lookup(self, name: str, choices: dict[str, Any], kind: str) -> Any:
        if name in choices:
            return choices[name]
        broken = [b for b in self.broken if b.name == name or name in b.entry_point]
        if broken:
            raise PluginError(f"{kind} {name!r} is unavailable: plugin {broken[0].name!r} failed to load: "
                              f"{broken[0].error}")
        known = ", ".join(sorted(choices)) or "none installed"
        close = difflib.get_close_matches(name, list(choices), n=1)
        hint = f" (did you mean {close[0]!r}?)" if close else ""
        raise PluginError(f"unknown {kind} {name!r}{hint}; known: {known}")


def _one_line(exc: BaseException) -> str:
    return f"{type(exc).__name__}: {first_line(exc)}" if str(exc).strip() else type(exc).__name__


def _allowed() -> set[str] | None:
    value = os.environ.get("SAH_LOAD_PLUGINS")
    if value is None:
        return None
    return {n.strip() for n in value.split(",") if n.strip()}


class _PluginManager(pluggy.PluginManager):
    """pluggy's manager, except that a module a plugin imports on use (`sah.lazy.lazy_import`) is
    passed over unseen when the plugin's names are searched for hooks: pluggy's `isinstance` checks
    would ask it for its `__class__`, and so import torch for `sah plugins`."""

    def parse_hookimpl_opts(self, plugin: Any, name: str) -> Any:
        if type(inspect.getattr_static(plugin, name, None)) is LazyModule:
            return None
        return super().parse_hookimpl_opts(plugin, name)


def load_registry(extra_plugins: list[Any] | None = None) -> Registry:
    """Discover entry-point plugins (restricted by `SAH_LOAD_PLUGINS`), add `extra_plugins`
    (modules or objects with hookimpls, as tests and notebooks register them), and collect
    their generators and binders."""
    pm = _PluginManager(ENTRY_POINT_GROUP)
    pm.add_hookspecs(hookspecs)
    registry = Registry(plugin_manager=pm)
    allowed = _allowed()
    infos: dict[str, PluginInfo] = {}

    for ep in importlib.metadata.entry_points(group=ENTRY_POINT_GROUP):
        if allowed is not None and ep.name not in allowed:
            continue
        dist = getattr(ep, "dist", None)
        package = dist.metadata["Name"] if dist is not None else "?"
        version = dist.version if dist is not None else "?"
        if pm.has_plugin(ep.name):
            continue
        try:
            module = ep.load()
            pm.register(module, name=ep.name)
        except Exception as exc:  # a broken plugin must not take the others down
            registry.broken.append(BrokenPlugin(ep.name, ep.value, package, _one_line(exc)))
            continue
        infos[ep.name] = PluginInfo(ep.name, ep.value, package, version)

    for plugin in extra_plugins or []:
        name = getattr(plugin, "__name__", None) or type(plugin).__name__
        if not pm.is_registered(plugin):
            pm.register(plugin, name=name)
        infos.setdefault(pm.get_name(plugin), PluginInfo(pm.get_name(plugin), name, "(in-process)", "-"))

    _collect(registry, pm, "register_generators", Generator, registry.generators, infos)
    _collect(registry, pm, "register_binders", Binder, registry.binders, infos)
    return registry


def _collect(registry: Registry, pm: pluggy.PluginManager, hook_name: str, base: type,
             into: dict[str, Any], infos: dict[str, PluginInfo]) -> None:
    # Each hookimpl is called on its own so that one plugin raising cannot hide the others.
    for impl in getattr(pm.hook, hook_name).get_hookimpls():
        info = infos.get(impl.plugin_name) or PluginInfo(impl.plugin_name, impl.plugin_name, "?", "?")
        found: list[type] = []

        def register(cls: type, _found: list[type] = found) -> None:
            if not (isinstance(cls, type) and issubclass(cls, base)):
                raise TypeError(f"{cls!r} is not a {base.__name__} subclass")
            if not getattr(cls, "name", None):
                raise TypeError(f"{cls.__name__} has no `name`")
            _check_declaration(cls, "binder" if base is Binder else "audio")
            _found.append(cls)

        try:
            impl.function(register=register)
        except Exception as exc:
            registry.broken.append(BrokenPlugin(info.name, info.entry_point, info.package, _one_line(exc)))
            continue
        for cls in found:
            into[cls.name] = cls
            registry.sources[cls.name] = info


#: core keys a generator may give its own default for (`Generator.core_defaults`)
_OVERRIDABLE = frozenset({"cfg_scale", "steps"})


def _check_declaration(cls: Any, section: str) -> None:
    """A plugin's options must not share a name with its section's core keys (which reach it
    otherwise, so an option of that name would be set and ignored), and each declared default
    must be a value its own `Option` takes."""
    from sah.config import DEFAULTS

    core = set(DEFAULTS[section])
    clash = sorted(core & set(cls.options))
    if clash:
        hint = " (declare its default in `core_defaults`)" if set(clash) <= _OVERRIDABLE else ""
        raise TypeError(f"{cls.name}: options {clash} are core keys of the section{hint}")
    odd = sorted(set(getattr(cls, "core_defaults", {})) - _OVERRIDABLE)
    if odd:
        raise TypeError(f"{cls.name}: core_defaults may set {sorted(_OVERRIDABLE)}, not {odd}")
    for key, spec in cls.option_specs().items():
        try:
            spec.coerce(spec.default)
        except ValueError as exc:
            raise TypeError(f"{cls.name}: the default of option {key!r} is not a value it takes ({exc})") from None


_cached: Registry | None = None


def get_registry(refresh: bool = False) -> Registry:
    """The process-wide registry of entry-point plugins, loaded on first use."""
    global _cached
    if _cached is None or refresh:
        _cached = load_registry()
    return _cached


def add_commands(cli: Any, registry: Registry, on_error: Callable[[str, str], None] | None = None) -> None:
    """Let every plugin add CLI commands; a plugin failing here is reported, not fatal."""
    assert registry.plugin_manager is not None
    for impl in registry.plugin_manager.hook.register_commands.get_hookimpls():
        try:
            impl.function(cli=cli)
        except Exception as exc:
            registry.broken.append(BrokenPlugin(impl.plugin_name, impl.plugin_name, "?", _one_line(exc)))
            if on_error:
                on_error(impl.plugin_name, _one_line(exc))

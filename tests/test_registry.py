import textwrap

import dummy_plugins
import pytest

from sah.errors import PluginError
from sah.registry import load_registry


def install_fake_distribution(root, monkeypatch, name, entry_points, modules):
    """A real installed distribution, as pip would lay it out: a dist-info folder with METADATA
    and entry_points.txt on sys.path, beside the plugin's modules."""
    for module, code in modules.items():
        (root / f"{module}.py").write_text(textwrap.dedent(code))
    info = root / f"{name.replace('-', '_')}-1.2.3.dist-info"
    info.mkdir()
    (info / "METADATA").write_text(f"Metadata-Version: 2.1\nName: {name}\nVersion: 1.2.3\n")
    lines = "\n".join(f"{k} = {v}" for k, v in entry_points.items())
    (info / "entry_points.txt").write_text(f"[sah]\n{lines}\n")
    monkeypatch.syspath_prepend(str(root))


GOOD = """
    from sah import hookimpl
    from dummy_plugins import DummyBinder

    class OtherBinder(DummyBinder):
        name = "other"

    @hookimpl
    def register_binders(register):
        register(OtherBinder)
"""


def test_entry_point_plugins_and_broken_ones(tmp_path, monkeypatch):
    install_fake_distribution(tmp_path, monkeypatch, "sah-fake", {
        "good": "fake_good",
        "explodes": "fake_explodes",
        "missing": "fake_not_there",
        "bad-register": "fake_bad_register",
    }, {
        "fake_good": GOOD,
        "fake_explodes": "raise RuntimeError('boom at import')\n",
        "fake_bad_register": """
            from sah import hookimpl

            @hookimpl
            def register_generators(register):
                raise ValueError("cannot register")
        """,
    })
    registry = load_registry()
    assert "other" in registry.binders
    assert registry.sources["other"].package == "sah-fake"
    assert registry.sources["other"].version == "1.2.3"
    broken = {b.name: b for b in registry.broken}
    assert broken["explodes"].error == "RuntimeError: boom at import"
    assert broken["explodes"].entry_point == "fake_explodes"
    assert "ModuleNotFoundError" in broken["missing"].error
    assert broken["bad-register"].error == "ValueError: cannot register"
    with pytest.raises(PluginError, match="'explodes' failed to load: RuntimeError: boom at import"):
        registry.binder("explodes")


def test_sah_load_plugins_restricts(tmp_path, monkeypatch):
    install_fake_distribution(tmp_path, monkeypatch, "sah-fake", {"good": "fake_good",
                                                                   "explodes": "fake_explodes"},
                              {"fake_good": GOOD, "fake_explodes": "raise RuntimeError('boom')\n"})
    monkeypatch.setenv("SAH_LOAD_PLUGINS", "good")
    registry = load_registry()
    assert set(registry.binders) == {"other"}
    assert registry.broken == []


def test_in_process_plugin_and_unknown_names():
    registry = load_registry(extra_plugins=[dummy_plugins])
    assert {"dummy-audio", "dummy-video"} <= set(registry.generators)
    with pytest.raises(PluginError) as info:
        registry.generator("dummy-audoi")
    assert "did you mean 'dummy-audio'" in str(info.value) and "known:" in str(info.value)
    from sah.media import Modality

    with pytest.raises(PluginError, match="unknown video generator 'dummy-audio'"):
        registry.generator("dummy-audio", Modality.VIDEO)

"""Typed plugin options: one declaration (`sah.component.Option`) that the core checks in every
way a value arrives (config file, --set, direct construction), that `sah plugins NAME` shows, and
that no core key can shadow."""

import json
import types

import pytest
from click.testing import CliRunner
from dummy_plugins import DummyAudio, DummyBinder

from sah import hookimpl
from sah.cli import cli
from sah.component import Option
from sah.config import resolve
from sah.errors import ConfigError, SahError
from sah.generator import GenerationRequest
from sah.registry import load_registry


class TypedAudio(DummyAudio):
    name = "typed-audio"
    description = "registered only inside test_options"
    core_defaults = {"cfg_scale": 3.0}
    options = {
        "scheduler": Option("ddim", help="the sampler", choices=("ddim", "dpm")),
        "loudness": Option(0.5, help="peak level", min=0.0, max=1.0),
        "clips": Option("auto", help="clips embedded", choices=("auto",), type=int, min=1),
        "crops": Option(3, choices=(1, 3, "squash")),
        "taps": 4,  # a bare default: Option(4)
    }


def plugin(*classes: type) -> types.SimpleNamespace:
    @hookimpl
    def register_generators(register):
        for cls in classes:
            register(cls)

    names = "_".join(cls.name for cls in classes)
    return types.SimpleNamespace(register_generators=register_generators, __name__=f"test_options_{names}")


@pytest.fixture
def registry():
    return load_registry(extra_plugins=[plugin(TypedAudio)])


@pytest.mark.parametrize("spec, taken, refused", [
    (Option("ddim", choices=("ddim", "dpm")), ["ddim", "dpm"], ["DDIM", "", 1, None]),
    (Option(0.5, min=0.0, max=1.0), [0, 0.0, 1, 0.25], [-0.01, 1.5, float("nan"), float("inf"), True, "0.5"]),
    (Option("auto", choices=("auto",), type=int, min=1), ["auto", 1, 7], [0, -1, 2.0, True, "4", "Auto"]),
    (Option(3, choices=(1, 3, "squash")), [1, 3, "squash"], [2, True, 3.0, "3"]),
    (Option(False), [True, False], [0, 1, "true"]),
    (Option(4), [0, -3, 4], [4.0, True, "4"]),
    (Option([1, 2]), [[], [3]], [(1, 2), "1,2"]),
    (Option(None, type=str), [None, "x"], [1]),
])
def test_an_option_takes_exactly_what_it_says(spec, taken, refused):
    for value in taken:
        assert spec.coerce(value) == value
    for value in refused:
        with pytest.raises(ValueError) as info:
            spec.coerce(value)
        assert str(info.value) == spec.describe()
    assert isinstance(spec.coerce(1) if spec.type is float else 0.0, float)  # an int given for a float: a float


def test_describe_reads_as_a_sentence():
    assert Option("auto", choices=("auto",), type=int, min=1).describe() == '"auto" or an integer >= 1'
    assert Option(0.5, min=0.0, max=1.0).describe() == "a number from 0 to 1"
    assert Option("ddim", choices=("ddim", "dpm")).describe() == 'one of "ddim", "dpm"'
    assert Option(True).describe() == "true or false"


def test_config_checks_plugin_options_against_their_declaration(registry):
    base = {"run": {"task": "i2a"}, "audio": {"generator": "typed-audio"}}
    config = resolve(base, {"audio": {"clips": 4, "crops": "squash", "loudness": 1}}, registry=registry)
    assert config["audio"]["clips"] == 4 and config["audio"]["crops"] == "squash"
    assert config["audio"]["loudness"] == 1.0 and isinstance(config["audio"]["loudness"], float)
    assert config["audio"]["cfg_scale"] == 3.0  # the generator's core default fills the core key
    assert resolve(base, registry=registry)["audio"]["clips"] == "auto"
    for key, value, says in [("clips", 0, '"auto" or an integer >= 1, got 0'),
                             ("scheduler", "euler", "one of \"ddim\", \"dpm\", got 'euler'"),
                             ("loudness", 2.0, "a number from 0 to 1, got 2.0"),
                             ("taps", 1.5, "an integer, got 1.5")]:
        with pytest.raises(ConfigError) as info:
            resolve(base, {"audio": {key: value}}, registry=registry)
        assert str(info.value) == f"config key 'audio.{key}' must be {says}"


def test_direct_construction_checks_values_and_refuses_core_keys():
    assert TypedAudio(clips=2).config["clips"] == 2
    with pytest.raises(SahError, match=r"^typed-audio option 'clips' must be \"auto\" or an integer >= 1, got 0$"):
        TypedAudio(clips=0)
    with pytest.raises(TypeError, match=r"unknown options \['cfg_scale'\].*cfg_scale is set per run "
                                        r"\(GenerationRequest.cfg_scale\)"):
        TypedAudio(cfg_scale=2.0)


def test_a_request_without_cfg_scale_gets_the_generators_own():
    generator = TypedAudio()
    assert generator.cfg_scale(GenerationRequest(["a"], [0])) == 3.0
    assert generator.cfg_scale(GenerationRequest(["a"], [0], cfg_scale=1.5)) == 1.5
    assert DummyAudio().cfg_scale(GenerationRequest(["a"], [0])) == 1.0


def test_registry_refuses_options_named_like_core_keys_and_defaults_they_do_not_take():
    class Shadowing(DummyAudio):
        name = "shadowing"
        options = {"cfg_scale": 2.5}

    class BadDefault(DummyAudio):
        name = "bad-default"
        options = {"mode": Option("loud", choices=("soft", "hard"))}

    class BadCoreDefault(DummyAudio):
        name = "bad-core-default"
        core_defaults = {"model": "x"}

    class ShadowingBinder(DummyBinder):
        name = "shadowing-binder"
        options = {"model": "y"}

    @hookimpl
    def register_binders(register):
        register(ShadowingBinder)

    registry = load_registry(extra_plugins=[
        plugin(Shadowing), plugin(BadDefault), plugin(BadCoreDefault),
        types.SimpleNamespace(register_binders=register_binders, __name__="binders")])
    errors = " | ".join(b.error for b in registry.broken)
    assert "shadowing: options ['cfg_scale'] are core keys of the section (declare its default in `core_defaults`)" \
        in errors
    assert "bad-default: the default of option 'mode' is not a value it takes (one of \"soft\", \"hard\")" in errors
    assert "bad-core-default: core_defaults may set ['cfg_scale', 'steps'], not ['model']" in errors
    assert "shadowing-binder: options ['model'] are core keys of the section" in errors
    assert not {"shadowing", "bad-default", "bad-core-default"} & set(registry.generators)


def test_sah_plugins_name_shows_each_option(monkeypatch, registry):
    monkeypatch.setattr("sah.registry.get_registry", lambda refresh=False: registry)
    result = CliRunner().invoke(cli, ["plugins", "typed-audio", "--json"])
    assert result.exit_code == 0, result.output
    row = json.loads(result.output)
    assert row["core_defaults"] == {"cfg_scale": 3.0}
    assert row["options"]["clips"] == {"default": "auto", "help": "clips embedded",
                                       "takes": '"auto" or an integer >= 1', "choices": ["auto"], "type": "int",
                                       "min": 1, "max": None}
    assert row["options"]["taps"]["takes"] == "an integer"
    text = CliRunner().invoke(cli, ["plugins", "typed-audio"], terminal_width=200).output
    assert "typed-audio — generator (audio)" in text and "sets the default of audio.cfg_scale to 3.0" in text
    assert "--set audio.KEY=VALUE" in text
    for line in ('scheduler', '"ddim"', 'one of "ddim", "dpm"', "the sampler", "a number from 0 to 1"):
        assert line in text
    wrong = CliRunner().invoke(cli, ["plugins", "typed-audoi"])
    assert wrong.exit_code != 0
    assert "unknown generator or binder 'typed-audoi' (did you mean 'typed-audio'?)" in wrong.output


def test_config_show_says_what_each_plugin_option_does_and_still_reads_back(monkeypatch, registry):
    monkeypatch.setattr("sah.registry.get_registry", lambda refresh=False: registry)
    args = ["config", "show", "--gen-audio", "typed-audio", "--task", "i2a", "--set", "audio.clips=2"]
    result = CliRunner().invoke(cli, args)
    assert result.exit_code == 0, result.output
    lines = result.output.splitlines()
    assert 'clips = 2  # clips embedded; takes "auto" or an integer >= 1' in lines
    assert 'scheduler = "ddim"  # the sampler; takes one of "ddim", "dpm"' in lines
    assert "taps = 4  # takes an integer" in lines
    assert "cfg_scale = 3.0  # typed-audio's default is 3.0" in lines
    import tomllib

    shown = tomllib.loads(result.output)
    assert shown == resolve({"run": {"task": "i2a"}, "audio": {"generator": "typed-audio", "clips": 2}},
                            registry=registry)

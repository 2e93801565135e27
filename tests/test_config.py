import pytest

from sah import config as cfg
from sah.errors import ConfigError
from sah.registry import load_registry


def test_defaults_resolve_and_round_trip(tmp_path):
    resolved = cfg.resolve()
    path = tmp_path / "c.toml"
    path.write_text(cfg.to_toml(resolved))
    assert cfg.resolve(cfg.load_toml(path)) == resolved


def test_precedence_file_then_flags_then_set(tmp_path):
    path = tmp_path / "c.toml"
    path.write_text('[run]\nsteps = 10\nseed = 3\n[guidance]\nlr = 0.1\n')
    resolved = cfg.resolve(cfg.load_toml(path), {"run": {"steps": 20}}, cfg.parse_set("run.steps=30"),
                           cfg.parse_set("guidance.lr.video=0.01"))
    assert resolved["run"]["steps"] == 30
    assert resolved["run"]["seed"] == 3
    assert resolved["guidance"]["lr"] == {"audio": 0.1, "video": 0.01}


@pytest.mark.parametrize("layer, message", [
    ({"guidance": {"lrr": 0.1}}, "unknown config key 'guidance.lrr' (did you mean 'guidance.lr'?)"),
    ({"guidanse": {}}, "unknown config key 'guidanse' (did you mean 'guidance'?)"),
    ({"guidance": {"weights": {"txt": 1.0}}}, "'guidance.weights.txt' (did you mean 'guidance.weights.text'?)"),
    ({"run": {"steps": "ten"}}, "'run.steps' must be an integer"),
    ({"run": {"steps": -1}}, "run.steps must be at least 1"),
    ({"guidance": {"lr": float("nan")}}, "guidance.lr.audio must be a finite number"),
    ({"guidance": {"optimizer": "lbfgs"}}, "guidance.optimizer must be one of"),
    ({"guidance": {"start": 0.9, "end": 0.5}}, "start <= end"),
    ({"run": {"device": "gpu"}}, "run.device must be"),
    ({"output": {"formats": ["avi"]}}, "output.formats"),
    ({"run": 3}, "section '[run]' must be a table"),
])
def test_bad_config_is_one_line_error(layer, message):
    with pytest.raises(ConfigError) as info:
        cfg.resolve(layer)
    assert message in str(info.value)
    assert "\n" not in str(info.value)


def test_parse_set_values():
    assert cfg.parse_set("run.prompt=a dog barks") == {"run": {"prompt": "a dog barks"}}
    assert cfg.parse_set("guidance.enabled=false") == {"guidance": {"enabled": False}}
    assert cfg.parse_set("output.formats=['wav']") == {"output": {"formats": ["wav"]}}
    with pytest.raises(ConfigError):
        cfg.parse_set("steps")


def test_plugin_options_join_their_section():
    import dummy_plugins

    registry = load_registry(extra_plugins=[dummy_plugins])
    dummies = {"audio": {"generator": "dummy-audio"}, "binder": {"name": "dummy"}}
    resolved = cfg.resolve(dummies, {"video": {"generator": "dummy-video", "brightness": 0.7}}, registry=registry)
    assert resolved["video"]["brightness"] == 0.7
    with pytest.raises(ConfigError, match="did you mean 'video.brightness'"):
        cfg.resolve(dummies, {"video": {"generator": "dummy-video", "brightnes": 0.7}}, registry=registry)
    # the option belongs to dummy-video only
    with pytest.raises(ConfigError, match="unknown config key 'audio.brightness'"):
        cfg.resolve(dummies, {"video": {"generator": "dummy-video"}, "audio": {"brightness": 0.7}},
                    registry=registry)

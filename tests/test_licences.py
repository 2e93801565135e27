"""Every plugin declares its licences; `run.commercial_only` refuses weights that do not allow
commercial use, in one line, before anything loads."""

from __future__ import annotations

import json

import pytest
from click.testing import CliRunner

import sah
from sah import config as cfg
from sah.api import _check_licences
from sah.cli import cli
from sah.errors import SahError
from sah.media import Modality
from sah.registry import get_registry


def test_every_built_in_plugin_declares_its_licences():
    result = CliRunner().invoke(cli, ["plugins", "--json"])
    assert result.exit_code == 0, result.output
    rows = json.loads(result.output)["plugins"]
    assert rows and all(row["licence"] is not None for row in rows), [r["name"] for r in rows if not r["licence"]]
    by_name = {row["name"]: row["licence"] for row in rows}
    assert by_name["imagebind"]["weights"] == "CC-BY-NC-SA-4.0" and not by_name["imagebind"]["commercial"]
    assert by_name["clip+clap"]["commercial"] and by_name["toy"]["commercial"]
    table = CliRunner(env={"COLUMNS": "400"}).invoke(cli, ["plugins"]).output
    assert "CC-BY-NC-SA-4.0" in table and "(non-commercial)" in table


def test_commercial_only_refuses_imagebind_before_anything_loads(tmp_path, monkeypatch):
    from sah.plugins.binders.imagebind import ImageBindBinder

    monkeypatch.setattr(ImageBindBinder, "__init__", lambda *a, **k: pytest.fail("a model was constructed"))
    with pytest.raises(SahError) as info:
        sah.plan({"run": {"prompt": "north", "commercial_only": True}, "binder": {"name": "imagebind"},
                  "output": {"dir": str(tmp_path / "out")}})
    message = str(info.value)
    assert "\n" not in message and "imagebind" in message and "CC-BY-NC-SA-4.0" in message
    assert "commercial_only" in message and not (tmp_path / "out").exists()
    # and through the CLI: one line, exit 2
    result = CliRunner().invoke(cli, ["run", "--binder", "imagebind", "--set", "run.commercial_only=true",
                                      "--out", str(tmp_path / "out"), "--quiet"])
    assert result.exit_code == 2 and len(result.output.strip().splitlines()) == 1


def test_commercial_only_accepts_clip_clap_with_a_commercially_usable_pair():
    registry = get_registry()
    config = cfg.resolve({"run": {"commercial_only": True}, "binder": {"name": "clip+clap"}}, registry=registry)
    generators = {m: registry.generator(config[m.value]["generator"], m) for m in (Modality.AUDIO, Modality.VIDEO)}
    _check_licences(config, generators, registry.binder("clip+clap"))  # the toy pair and clip+clap: accepted
    with pytest.raises(SahError, match="audioldm loads weights under"):
        _check_licences(config, {Modality.AUDIO: registry.generator("audioldm", Modality.AUDIO)},
                        registry.binder("clip+clap"))
    # without the restriction nothing is refused
    _check_licences(cfg.resolve({}, registry=registry), {}, registry.binder("imagebind"))


def test_the_wan_stable_audio_preset_is_refused_only_for_stable_audio_under_commercial_only():
    from sah.presets import load_preset

    registry = get_registry()
    config = cfg.resolve(load_preset("joint-wan-stable-audio"), {"run": {"commercial_only": True}}, registry=registry)
    video = {Modality.VIDEO: registry.generator("wan", Modality.VIDEO)}
    _check_licences(config, video, registry.binder("clip+clap"))  # Wan (Apache-2.0) and clip+clap pass
    with pytest.raises(SahError, match="stable-audio loads weights under Stability AI Community License"):
        _check_licences(config, {**video, Modality.AUDIO: registry.generator("stable-audio", Modality.AUDIO)},
                        registry.binder("clip+clap"))

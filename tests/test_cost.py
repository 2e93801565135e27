"""Every run accounts its cost: seconds per stage and peak memory, in the result, the sidecar, the
plot's title, the report and `sah run`'s last line."""

from __future__ import annotations

import json
import time

from click.testing import CliRunner

import sah
from sah import cost
from sah.cli import cli
from sah.report import write


def test_stages_do_not_nest_so_they_add_up_to_at_most_the_whole():
    with cost.accounting() as account:
        with cost.stage("outer"):
            time.sleep(0.02)
            with cost.stage("inner"):  # counted in "outer" only
                time.sleep(0.02)
        with cost.stage("other"):
            time.sleep(0.01)
    assert set(account.seconds) == {"outer", "other"}
    assert account.seconds["outer"] >= 0.04 and sum(account.seconds.values()) <= account.total
    with cost.stage("outside"):  # no open account: nothing is recorded anywhere
        pass


def test_a_guided_run_accounts_its_stages_and_an_unguided_one_has_no_guidance_stages(tmp_path):
    guided = sah.generate(sah.plan({"run": {"prompt": "north", "steps": 6}, "output": {"dir": str(tmp_path)}}))
    stages = set(guided.cost.seconds)
    assert {"denoiser", "scheduler", "x0", "decode", "binder forward", "backward", "update"} <= stages
    assert sum(guided.cost.seconds.values()) <= guided.cost.total <= guided.seconds + 1e-6
    plain = sah.generate(sah.plan({"run": {"steps": 6}, "guidance": {"enabled": False},
                                   "output": {"dir": str(tmp_path)}}))
    assert not {"x0", "backward", "update", "binder forward"} & set(plain.cost.seconds)


def test_the_sidecar_report_and_cli_show_the_cost(tmp_path):
    out = tmp_path / "out"
    result = CliRunner().invoke(cli, ["run", "--prompt", "north", "--steps", "4", "--out", str(out)])
    assert result.exit_code == 0, result.output
    assert result.output.strip().splitlines()[-1].startswith("cost ")
    sidecar = json.loads((out / "joint-0.json").read_text())
    seconds = sidecar["cost"]["seconds"]
    assert sidecar["cost"]["total_seconds"] >= sum(seconds.values()) and "backward" in seconds
    page = write(out).read_text()
    assert "<dt>cost</dt>" in page and f"{sidecar['cost']['total_seconds']:.1f} s" in page


# --------------------------------------------------------------------------- what a run frees once it is embedded


def _recording_registry(calls: list):
    import types

    import dummy_plugins

    from sah import hookimpl
    from sah.media import Text
    from sah.registry import load_registry

    class RecordingBinder(dummy_plugins.DummyBinder):
        name = "recording"

        def embed(self, media):
            calls.append(("embed", "text" if isinstance(media, Text) else media.modality.value))
            return super().embed(media)

        def release(self, keep):
            calls.append(("release", sorted(m.value for m in keep)))

    @hookimpl
    def register_binders(register):
        register(RecordingBinder)

    plugin = types.SimpleNamespace(register_binders=register_binders, __name__="test_cost_recording")
    return load_registry(extra_plugins=[dummy_plugins, plugin])


def test_a_run_releases_the_prompt_then_the_condition_modality_before_guidance(tmp_path):
    """A V2A run guided toward its video and its prompt: the text path is released before the
    video is embedded (so the two never sit in memory together), the video path before the
    guidance, which embeds audio only; models passed in (a UI or batch session) are kept."""
    from sah.testing import blob_video

    calls: list = []
    registry = _recording_registry(calls)
    layers = {"run": {"task": "v2a", "prompt": "a", "steps": 4}, "audio": {"generator": "dummy-audio"},
              "binder": {"name": "recording"}, "guidance": {"weights": {"text": 1.0}},
              "output": {"dir": str(tmp_path)}}
    condition = blob_video(8, 16, 16)
    plan = sah.plan(layers, condition=condition, registry=registry)
    assert {t.target for t in plan.terms} >= {"condition", "text"}
    sah.generate(plan)
    before_guidance = calls[:calls.index(("release", ["audio"])) + 1]
    assert before_guidance == [("embed", "text"), ("release", ["audio", "video"]), ("embed", "video"),
                               ("release", ["audio"])]
    assert set(calls[len(before_guidance):]) == {("embed", "audio")}
    calls.clear()
    sah.generate(plan, sah.load(plan))  # the caller owns these models: nothing is released
    assert not [c for c in calls if c[0] == "release"]
    sah.generate(plan, sah.load(plan), release=True)
    assert ("release", ["audio"]) in calls

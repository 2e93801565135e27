"""`sah run`, `sah plugins` and `sah config show` end to end, on the toy world."""

import json
import os
import shutil
import subprocess
import sys
from pathlib import Path

import av
import pytest
from click.testing import CliRunner
from media_helpers import blob_frames, tone, write_mp4, write_wav

import sah.registry
from sah.cli import cli
from sah.io import read_audio, read_video
from sah.plugins.toy import oracle, world

NORTH = world.CLASS_NAMES.index("north")


def invoke(*args):
    result = CliRunner().invoke(cli, [str(a) for a in args], catch_exceptions=False)
    return result


def test_joint_with_prompt_writes_agreeing_playable_outputs(tmp_path):
    out = tmp_path / "out"
    result = invoke("run", "--gen-audio", "toy-audio", "--gen-video", "toy-video", "--binder", "toy",
                    "--prompt", "north", "--out", out, "--quiet")
    assert result.exit_code == 0, result.output
    assert sorted(p.name for p in out.iterdir()) == ["joint-0.json", "joint-0.mp4", "joint-0.png", "joint-0.wav"]
    with av.open(str(out / "joint-0.mp4")) as container:
        assert {s.type: s.codec_context.name for s in container.streams} == {"video": "h264", "audio": "aac"}
    video = read_video(out / "joint-0.mp4")
    audio = read_audio(out / "joint-0.wav")
    assert video.num_frames == world.NUM_FRAMES and video.fps == world.FPS
    assert int(oracle.video_class(video)[0]) == int(oracle.audio_class(audio)[0]) == NORTH
    assert int(oracle.audio_class(video.audio)[0]) == NORTH  # the muxed AAC track is the same sound
    sidecar = json.loads((out / "joint-0.json").read_text())
    assert sidecar["task"] == "joint" and sidecar["seed"] == 0 and sidecar["prompt"] == "north"
    assert sidecar["config"]["run"]["steps"] == 50
    assert sidecar["versions"]["sah"] and sidecar["versions"]["torch"]
    assert len(sidecar["trace"]) == 40  # steps 10..49 of 50 are guided
    assert set(sidecar["trace"][0]["similarity"]) == {"audio~video", "audio~text", "video~text"}


def test_v2a_on_foreign_video(tmp_path):
    clip = write_mp4(tmp_path / "clip.mp4", blob_frames(5, 30, 64, 48), fps=24,
                     audio=tone(440, 1.25, 44100, channels=2))
    out = tmp_path / "out"
    result = invoke("run", "--video", clip, "--out", out, "--quiet")
    assert result.exit_code == 0, result.output
    audio = read_audio(out / "v2a-0.wav")
    assert int(oracle.audio_class(audio)[0]) == 5
    dubbed = read_video(out / "v2a-0.mp4")
    assert dubbed.num_frames == 30 and abs(dubbed.fps - 24) < 1e-6
    assert int(oracle.audio_class(dubbed.audio)[0]) == 5  # the new soundtrack replaced the 440 Hz one


@pytest.mark.parametrize("rate, channels", [(44100, 2), (8000, 1)])
def test_a2v_on_foreign_audio(tmp_path, rate, channels):
    wav = write_wav(tmp_path / "clip.wav", tone(world.FREQUENCIES[6], 2.0, rate, channels), rate)
    out = tmp_path / "out"
    result = invoke("run", "--audio", wav, "--out", out, "--quiet")
    assert result.exit_code == 0, result.output
    video = read_video(out / "a2v-0.mp4")
    assert int(oracle.video_class(video)[0]) == 6
    assert video.audio is not None and abs(video.audio.duration - 1.0) < 0.1  # condition trimmed to the video


def _bad_cases(tmp):
    empty = tmp / "empty.mp4"
    empty.write_bytes(b"")
    text = tmp / "notes.mp4"
    text.write_text("this is not a video\n")
    silent = write_mp4(tmp / "silent.mp4", blob_frames(1, 8, 32, 32), fps=8)
    wav = write_wav(tmp / "tone.wav", tone(500, 1.0, 16000), 16000)
    return [
        (["--video", tmp / "missing.mp4"], "missing.mp4"),
        (["--video", empty], "empty.mp4"),
        (["--video", text], "notes.mp4"),
        (["--video", tmp], "directory"),
        (["--audio", silent], "has no audio stream"),
        (["--video", wav], "has no video stream"),
        (["--gen-audio", "audiolm"], "unknown audio generator 'audiolm'"),
        (["--binder", "imagebnd"], "known: "),
        (["--set", "guidance.lrr=0.1"], "did you mean 'guidance.lr'"),
        (["--steps", "-3"], "run.steps must be at least 1"),
        (["--set", "guidance.lr=nan"], "guidance.lr.audio must be a finite number"),
        (["--video", wav, "--audio", wav], "at most one condition"),
        (["--task", "a2v", "--video", silent], "task a2v needs --audio PATH, not --video"),
    ]


def test_bad_input_is_one_line_exit_2_before_any_model_loads(tmp_path, monkeypatch):
    from sah.plugins.binders.toy import ToyBinder
    from sah.plugins.generators.toy import ToyAudioGenerator, ToyVideoGenerator

    def refuse(*args, **kwargs):
        raise AssertionError("a model was loaded")

    for cls in (ToyAudioGenerator, ToyVideoGenerator, ToyBinder):
        monkeypatch.setattr(cls, "__init__", refuse)
    out = tmp_path / "out"
    for args, message in _bad_cases(tmp_path):
        result = CliRunner().invoke(cli, ["run", *map(str, args), "--out", str(out), "--quiet"])
        assert result.exit_code == 2, (args, result.output, result.exception)
        assert message in result.stderr, (args, result.stderr)
        assert len(result.stderr.strip().splitlines()) == 1, result.stderr
        assert not out.exists()


def test_binder_that_cannot_embed_the_condition(tmp_path, monkeypatch):
    import dummy_plugins

    monkeypatch.setattr(sah.registry, "_cached", sah.registry.load_registry(extra_plugins=[dummy_plugins]))
    image = tmp_path / "frame.png"
    with av.open(str(image), "w", format="image2") as container:
        stream = container.add_stream("png", rate=1)
        stream.width, stream.height, stream.pix_fmt = 32, 32, "rgb24"
        for packet in stream.encode(av.VideoFrame.from_ndarray(blob_frames(0, 1, 32, 32)[0], format="rgb24")):
            container.mux(packet)
        for packet in stream.encode(None):
            container.mux(packet)
    result = CliRunner().invoke(cli, ["run", "--image", str(image), "--binder", "dummy", "--out", str(tmp_path / "o")])
    assert result.exit_code == 2
    assert "binder 'dummy' cannot embed image" in result.stderr


def test_existing_outputs_are_kept_without_overwrite(tmp_path):
    out = tmp_path / "out"
    args = ["run", "--prompt", "east", "--out", out, "--steps", 10, "--quiet"]
    assert invoke(*args).exit_code == 0
    before = {p.name: p.read_bytes() for p in out.iterdir()}
    result = CliRunner().invoke(cli, [str(a) for a in args] + ["--seed", "0"])
    assert result.exit_code == 2 and "already exists; pass --overwrite" in result.stderr
    assert {p.name: p.read_bytes() for p in out.iterdir()} == before
    assert invoke(*args, "--prompt", "west", "--overwrite").exit_code == 0
    assert json.loads((out / "joint-0.json").read_text())["prompt"] == "west"
    assert not [p for p in out.iterdir() if p.name.startswith(".")]  # no temp files left


def test_unconditional_joint_agrees_far_more_often_than_chance():
    from sah import concat, run

    result = run({"run": {"num_samples": 32, "steps": 30}})
    audio = concat([s.audio for s in result.samples])
    video = concat([s.video for s in result.samples])
    match = (oracle.audio_class(audio) == oracle.video_class(video)).float().mean().item()
    assert match >= 0.6  # chance is 1/8


def test_plugins_table_and_json():
    result = invoke("plugins", "--json")
    data = json.loads(result.output)
    rows = {r["name"]: r for r in data["plugins"]}
    assert rows["toy-audio"]["kind"] == "generator" and rows["toy-audio"]["modalities"] == ["audio"]
    assert rows["toy"]["modalities"] == ["audio", "image", "text", "video"]
    assert rows["toy-video"]["package"] == "sah"
    assert "toy-audio" in invoke("plugins").output


def test_config_show(tmp_path):
    path = tmp_path / "c.toml"
    path.write_text("[run]\nsteps = 12\n")
    result = invoke("config", "show", "--config", path, "--set", "guidance.optimizer='adam'")
    assert "steps = 12" in result.output and 'optimizer = "adam"' in result.output
    assert "[output]" in result.output


@pytest.mark.slow
def test_third_party_plugin_installs_and_runs(tmp_path):
    root = Path(__file__).resolve().parents[1]
    source = shutil.copytree(root / "examples" / "sah-plugin-example", tmp_path / "example")  # builds leave no trace
    target = tmp_path / "site"
    subprocess.run([sys.executable, "-m", "pip", "install", "-q", "--no-deps", "--no-build-isolation",
                    "--target", str(target), str(source)], check=True)
    env = {**os.environ, "PYTHONPATH": str(target)}
    sah_cmd = [sys.executable, "-c", "from sah.cli import main; main()"]
    listing = subprocess.run([*sah_cmd, "plugins", "--json"], env=env, capture_output=True, text=True, check=True)
    rows = {r["name"]: r for r in json.loads(listing.stdout)["plugins"]}
    assert rows["example-tones"]["package"] == "sah-plugin-example"
    out = tmp_path / "out"
    wav = write_wav(tmp_path / "c.wav", tone(world.FREQUENCIES[3], 1.0, 16000), 16000)
    clip = write_mp4(tmp_path / "clip.mp4", blob_frames(3, 8, 32, 32), fps=8)
    del wav
    done = subprocess.run([*sah_cmd, "run", "--gen-audio", "example-tones", "--video", str(clip), "--steps", "30",
                           "--out", str(out), "--quiet"], env=env, capture_output=True, text=True)
    assert done.returncode == 0, done.stderr
    assert int(oracle.audio_class(read_audio(out / "v2a-0.wav"))[0]) == 3

"""`sah run`, `sah plugins` and `sah config show` end to end, on the toy world."""

import json
import os
import shutil
import subprocess
import sys
from pathlib import Path

import av
import numpy as np
import pytest
from click.testing import CliRunner
from media_helpers import blob_frames, tone, write_mp4, write_wav

import sah.registry
from sah import config as cfg
from sah.cli import cli
from sah.errors import SahError
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
    # the condition is the mp4's sound, trimmed to the picture
    assert video.audio is not None and abs(video.audio.duration - video.num_frames / video.fps) < 0.1


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


def test_existing_outputs_are_kept_and_the_run_numbers_on(tmp_path):
    """Same prompt, other --steps, same folder: a new name, said on stderr; --overwrite replaces."""
    out = tmp_path / "out"
    args = ["run", "--prompt", "east", "--out", out, "--steps", 10, "--quiet"]
    assert invoke(*args).exit_code == 0
    before = {p.name: p.read_bytes() for p in out.iterdir()}
    result = CliRunner().invoke(cli, [str(a) for a in args] + ["--steps", "6"])
    assert result.exit_code == 0, result.output
    assert f"{out / 'joint-0'}.* already exist: writing joint-1 instead (--overwrite replaces them)" in result.stderr
    assert {p.name: p.read_bytes() for p in out.iterdir() if p.name in before} == before
    assert json.loads((out / "joint-1.json").read_text())["config"]["run"]["steps"] == 6
    assert invoke(*args, "--prompt", "west", "--overwrite").exit_code == 0
    assert json.loads((out / "joint-0.json").read_text())["prompt"] == "west"
    assert sorted(p.stem for p in out.glob("*.json")) == ["joint-0", "joint-1"]
    assert not [p for p in out.iterdir() if p.name.startswith(".")]  # no temp files left


def test_one_numbering_rule_for_default_and_given_names(tmp_path):
    """NAME-0, NAME-1, ... by sample for the task's name and for --name alike (a --name for one sample
    is used as given); the seed is in the sidecar, not the name; a second run numbers on."""
    clip = write_mp4(tmp_path / "clip.mp4", blob_frames(2, 8, 32, 32), fps=8)
    out = tmp_path / "out"
    base = ["--out", out, "--steps", 3, "--no-plot", "--quiet"]
    for _ in range(2):  # a second V2A clip with the same seed into the same folder
        assert invoke("run", "--video", clip, *base).exit_code == 0
    assert invoke("run", "--name", "ns", "--num-samples", 3, "--seed", 7, *base).exit_code == 0
    assert invoke("run", "--name", "ns", "--num-samples", 2, "--seed", 7, *base).exit_code == 0
    assert invoke("run", "--name", "take", *base).exit_code == 0
    assert invoke("run", "--name", "take", *base).exit_code == 0
    assert invoke("run", "--num-samples", 2, "--seed", 5, *base).exit_code == 0
    stems = sorted(p.stem for p in out.glob("*.json"))
    assert stems == ["joint-0", "joint-1", "ns-0", "ns-1", "ns-2", "ns-3", "ns-4", "take", "take-1", "v2a-0", "v2a-1"]
    seeds = {stem: json.loads((out / f"{stem}.json").read_text())["seed"] for stem in stems}
    assert [seeds[f"ns-{i}"] for i in range(5)] == [7, 8, 9, 7, 8] and [seeds["joint-0"], seeds["joint-1"]] == [5, 6]


def test_python_run_is_not_blocked_by_outputs_in_the_working_directory():
    """The README's first run leaves outputs/joint-0.* where the user works; `sah.run` (which writes
    nothing) must still run there, and `sah.save` numbers on instead of replacing them."""
    import sah

    os.makedirs("outputs")
    for suffix in ("wav", "mp4", "png", "json"):
        Path(f"outputs/joint-0.{suffix}").write_text("the README's first run")
    result = sah.run({"run": {"steps": 3}, "output": {"plot": False}})
    assert result.plan.renamed == {"joint-0": "joint-1"}
    written = sah.save(result)
    assert sorted(p.name for p in written) == ["joint-1.json", "joint-1.mp4", "joint-1.wav"]
    assert Path("outputs/joint-0.json").read_text() == "the README's first run"


def test_save_refuses_in_python_words_and_the_cli_in_flags(tmp_path):
    import sah
    from sah.cli import SahGroup

    result = sah.run({"run": {"steps": 3}, "output": {"dir": str(tmp_path), "plot": False}})
    sah.save(result)
    with pytest.raises(sah.SahError) as caught:
        sah.save(result)  # the same result again: its files exist now
    message = str(caught.value)
    assert "already exists" in message and "overwrite=True" in message and "--overwrite" not in message
    assert "--overwrite" in caught.value.cli_message() and "overwrite=True" not in caught.value.cli_message()
    assert sah.save(result, overwrite=True)

    group = SahGroup()

    @group.command()
    def fail():
        raise caught.value

    printed = CliRunner().invoke(group, ["fail"])
    assert printed.exit_code == 2 and printed.stderr.strip() == f"Error: {caught.value.cli_message()}"


def test_unconditional_joint_agrees_far_more_often_than_chance():
    from sah import concat, run

    assert not Path.cwd().resolve().is_relative_to(Path(__file__).resolve().parents[1])  # tests/conftest.py
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


def test_config_show_takes_every_flag_of_run_and_shows_what_run_would_run(tmp_path):
    import sah.cli

    run_flags = {o.name for o in sah.cli.run.params} - {"quiet"}
    assert {o.name for o in sah.cli.config_show.params} == run_flags
    args = ["--gen-audio", "toy-audio", "--gen-video", "", "--prompt", "west", "--steps", 7, "--seed", 3,
            "--num-samples", 2, "--out", tmp_path / "o", "--name", "x", "--overwrite", "--no-plot",
            "--video-model", "m", "--dtype", "bfloat16", "--task", "t2a", "--set", "guidance.lr=0.2"]
    shown = cfg.tomllib.loads(invoke("config", "show", *args).output)
    assert shown["run"] == {**shown["run"], "prompt": "west", "steps": 7, "seed": 3, "num_samples": 2,
                            "dtype": "bfloat16", "task": "t2a"}
    assert shown["output"]["name"] == "x" and shown["output"]["overwrite"] and not shown["output"]["plot"]
    assert shown["video"]["generator"] == "" and shown["video"]["model"] == "m"
    assert shown["guidance"]["lr"] == {"audio": 0.2, "video": 0.2}
    out = tmp_path / "ran"
    args = [str(a) for a in args[:-2]] + ["--out", str(out), "--video-model", ""]
    assert invoke("run", *args, "--quiet").exit_code == 0
    ran = json.loads((out / "x-0.json").read_text())["config"]
    assert ran == cfg.tomllib.loads(invoke("config", "show", *args).output)


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
    # the installed plugin keeps the contract (`sah.testing`; it does not yet honour request.duration)
    checked = subprocess.run([sys.executable, "-c", "from sah.testing import check_generator; "
                              "from sah_plugin_example import ExampleTones; "
                              "print(check_generator(ExampleTones(), bad_options={'duration': -1.0}).passed)"],
                             env=env, capture_output=True, text=True)
    assert checked.returncode == 0, checked.stderr
    out = tmp_path / "out"
    wav = write_wav(tmp_path / "c.wav", tone(world.FREQUENCIES[3], 1.0, 16000), 16000)
    clip = write_mp4(tmp_path / "clip.mp4", blob_frames(3, 8, 32, 32), fps=8)
    del wav
    done = subprocess.run([*sah_cmd, "run", "--gen-audio", "example-tones", "--video", str(clip), "--steps", "30",
                           "--out", str(out), "--quiet"], env=env, capture_output=True, text=True)
    assert done.returncode == 0, done.stderr
    assert int(oracle.audio_class(read_audio(out / "v2a-0.wav"))[0]) == 3


# --------------------------------------------------------------------------- precedence of the config layers


def _guided_steps(steps: int, start: float, end: float = 1.0) -> int:
    """How many of `steps` denoising steps the "progress" window guides: start <= i/N < end."""
    return sum(start <= i / steps < end for i in range(steps))


def _run_layers(tmp_path, name, *args):
    out = tmp_path / name
    result = invoke("run", "--out", out, "--no-plot", "--quiet", *args)
    assert result.exit_code == 0, result.output
    (sidecar,) = out.glob("*.json")
    return sidecar.stem, json.loads(sidecar.read_text())


def test_layers_preset_config_flags_set_each_win_over_the_one_before(tmp_path, monkeypatch):
    """defaults < --preset < --config < flags < --set, for run keys that have flags (steps, seed,
    prompt) and guidance keys that only --config and --set reach. Checked on what ran: the trace
    has one record per guided step, and the sidecar records the seed."""
    import sah.cli

    # the shipped presets name real models; a toy one exercises the same layer
    preset = {"run": {"steps": 6, "seed": 11, "prompt": "east"},
              "guidance": {"start": 0.5, "optimizer": "ngd", "lr": 0.3}}
    monkeypatch.setattr(sah.cli, "load_preset", lambda name: preset if name == "toy" else pytest.fail(name))
    config_file = tmp_path / "mine.toml"
    config_file.write_text('[run]\nsteps = 5\nseed = 12\nprompt = "west"\n[guidance]\nstart = 0.25\nlr = 0.2\n')
    flags = ["--steps", 3, "--seed", 13, "--prompt", "north"]
    sets = ["--set", "run.steps=4", "--set", "run.seed=14", "--set", 'run.prompt="south"',
            "--set", "guidance.start=0.0", "--set", 'guidance.optimizer="sgd"']

    cases = {  # args: (steps, seed, prompt, start, optimizer, lr)
        "preset": (["--preset", "toy"], (6, 11, "east", 0.5, "ngd", 0.3)),
        "config": (["--preset", "toy", "--config", config_file], (5, 12, "west", 0.25, "ngd", 0.2)),
        "flags": (["--preset", "toy", "--config", config_file, *flags], (3, 13, "north", 0.25, "ngd", 0.2)),
        "set": (["--preset", "toy", "--config", config_file, *flags, *sets], (4, 14, "south", 0.0, "sgd", 0.2)),
        "flags-after-set": ([*sets, *flags], (4, 14, "south", 0.0, "sgd", 0.1)),  # order on the line is no matter
        "flags-over-preset": (["--preset", "toy", *flags], (3, 13, "north", 0.5, "ngd", 0.3)),
    }
    for name, (args, (steps, seed, prompt, start, optimizer, lr)) in cases.items():
        stem, sidecar = _run_layers(tmp_path, name, *args)
        run, guidance = sidecar["config"]["run"], sidecar["config"]["guidance"]
        assert (run["steps"], run["seed"], run["prompt"]) == (steps, seed, prompt), name
        assert (guidance["start"], guidance["optimizer"], guidance["lr"]["audio"]) == (start, optimizer, lr), name
        assert stem == "joint-0" and sidecar["seed"] == seed and sidecar["prompt"] == prompt, name
        assert len(sidecar["trace"]) == _guided_steps(steps, start), name  # the steps and window that ran


@pytest.mark.slow
def test_batch_layers_config_flags_set_then_the_row(tmp_path, monkeypatch):
    """`sah batch`: defaults < --config < --steps < --set (all rows) < the row's own `set`."""
    monkeypatch.setenv("SAH_LOAD_PLUGINS", "toy-generators,toy-binder")
    manifest = tmp_path / "jobs.jsonl"
    manifest.write_text('{"id": "plain", "prompt": "north"}\n'
                        '{"id": "own", "prompt": "north", "set": {"run.steps": 5, "guidance.start": 0.4}}\n')
    config_file = tmp_path / "mine.toml"
    config_file.write_text("[run]\nsteps = 2\nseed = 9\n[guidance]\nstart = 0.5\n")

    def batch(name, *args):
        out = tmp_path / name
        result = invoke("batch", manifest, "--out", out, "--quiet", "--config", config_file, *args)
        assert result.exit_code == 0, result.output
        return {p.stem: json.loads(p.read_text()) for p in out.glob("*.json")}

    def ran(sidecar):
        run, guidance = sidecar["config"]["run"], sidecar["config"]["guidance"]
        assert len(sidecar["trace"]) == _guided_steps(run["steps"], guidance["start"])
        return run["steps"], run["seed"], guidance["start"]

    only_config = batch("config")
    assert ran(only_config["plain"]) == (2, 9, 0.5) and ran(only_config["own"]) == (5, 9, 0.4)
    with_flag = batch("flag", "--steps", 3)
    assert ran(with_flag["plain"]) == (3, 9, 0.5) and ran(with_flag["own"]) == (5, 9, 0.4)
    with_set = batch("set", "--steps", 3, "--set", "run.steps=4", "--set", "guidance.start=0.0")
    assert ran(with_set["plain"]) == (4, 9, 0.0) and ran(with_set["own"]) == (5, 9, 0.4)


# --------------------------------------------------------------------------- start-up: no torch before it is needed

_PROBE = """
import sys
from sah.cli import main
sys.argv = ["sah", *sys.argv[1:]]
try:
    main()
except SystemExit as exc:
    code = exc.code
else:
    code = 0
heavy = sorted(m for m in ("torch", "diffusers", "transformers") if m in sys.modules)
print("HEAVY=" + ",".join(heavy), "CODE=" + str(code), file=sys.stderr)
"""


def _heavy_modules(*args: str) -> tuple[list[str], str]:
    done = subprocess.run([sys.executable, "-c", _PROBE, *args], capture_output=True, text=True, timeout=120)
    last = done.stderr.strip().splitlines()[-1]
    heavy = last.split()[0].removeprefix("HEAVY=")
    return [m for m in heavy.split(",") if m], done.stderr


@pytest.mark.parametrize("args, says", [
    (["--help"], ""),
    (["config", "presets"], ""),
    (["run", "--help"], ""),
    (["run", "--video", "missing.mp4"], "Error: missing.mp4: no such file"),
    (["run", "--audio", "."], "is a directory"),
    (["run", "--config", "missing.toml"], "config file 'missing.toml' does not exist"),
    (["run", "--set", "guidance.lrr=0.1"], "did you mean 'guidance.lr'"),
    (["run", "--steps", "-3"], "run.steps must be at least 1"),
    (["run", "--preset", "nope"], "unknown preset 'nope'"),
    (["eval", "missing/"], "no such file or folder"),
    (["report", "missing/"], "not a folder"),
])
def test_help_and_bad_input_answer_without_importing_torch(args, says):
    heavy, stderr = _heavy_modules(*args)
    assert heavy == [], stderr
    assert says in stderr


@pytest.mark.parametrize("args", [["plugins"], ["config", "show"]])
def test_plugins_and_config_show_without_importing_torch(args):
    heavy, stderr = _heavy_modules(*args)
    assert heavy == [], stderr


def test_startup_benchmark_runs_and_prints_ratios():
    script = Path(__file__).resolve().parents[1] / "benchmarks" / "startup.py"
    done = subprocess.run([sys.executable, str(script), "--repeat", "1"], capture_output=True, text=True, timeout=300)
    assert done.returncode == 0, done.stderr
    for label in ("sah --help", "sah plugins", "sah config show", "missing input file", "import torch"):
        assert label in done.stdout
    assert "x import torch" in done.stdout


# --------------------------------------------------------------------------- the toy world says it is a toy


def test_toy_world_says_so_once_on_a_clip_it_did_not_make(tmp_path):
    rng = np.random.default_rng(0)
    real = write_mp4(tmp_path / "my real clip.mp4", (rng.random((10, 48, 64, 3)) * 255).astype(np.uint8), fps=24)
    result = CliRunner().invoke(cli, ["run", "--video", str(real), "--steps", "3", "--out", str(tmp_path / "o"),
                                      "--quiet", "--no-plot"])
    assert result.exit_code == 0, result.output
    notes = [line for line in result.stderr.splitlines() if line.startswith("Note:")]
    assert len(notes) == 1, result.stderr
    assert "my real clip.mp4" in notes[0] and "toy world" in notes[0]
    assert "--preset paper-v2a" in notes[0] and "--gen-audio audioldm --binder imagebind" in notes[0]

    made = tmp_path / "made"  # clips the toy world made (the README's first run): nothing to say
    assert invoke("run", "--prompt", "north", "--steps", 20, "--out", made, "--quiet", "--no-plot").exit_code == 0
    for flag, clip in (("--video", made / "joint-0.mp4"), ("--audio", made / "joint-0.wav"),
                       ("--image", made / "joint-0.mp4")):
        again = CliRunner().invoke(cli, ["run", flag, str(clip), "--steps", "3", "--out", str(tmp_path / "p"),
                                         "--quiet", "--no-plot"])
        assert again.exit_code == 0 and "Note:" not in again.stderr, again.stderr


def test_toy_binder_warns_once_on_a_prompt_that_is_not_a_class():
    from sah.media import Text
    from sah.plugins.binders.toy import ToyBinder

    binder = ToyBinder()
    match = r"prompt .a dog barking. names none of them.*--binder imagebind, or binder.name"
    with pytest.warns(UserWarning, match=match) as caught:
        binder.embed(Text(["a dog barking", "a dog barking", "north by northwest", ""]))
        binder.embed(Text(["a dog barking"]))
    assert len([w for w in caught if "names none" in str(w.message)]) == 1
    assert all(name in str(caught[0].message) for name in world.CLASS_NAMES)


# --------------------------------------------------------------------------- offline advice


def test_offline_advice_names_the_command_and_where_each_weight_goes(tmp_path, monkeypatch):
    from sah import hub
    from sah.plugins.binders import imagebind

    monkeypatch.setenv("HOME", str(tmp_path / "home"))
    for name in ("HF_HOME", "HF_HUB_CACHE", "SAH_CACHE", "XDG_CACHE_HOME"):
        monkeypatch.delenv(name, raising=False)
    monkeypatch.setattr(hub, "hf_cache_dir", lambda: tmp_path / "home" / ".cache" / "huggingface" / "hub")
    monkeypatch.setattr(hub, "available_locally", lambda ref: False)
    url = imagebind.CHECKPOINT_URL
    refs = [("cvssp/audioldm-m-full", "--audio-model"), (url, "--binder-model"), ("/no/such/model", "--video-model")]
    for offline in (True, False):
        monkeypatch.setattr(hub, "offline", lambda offline=offline: offline)
        monkeypatch.setattr(hub, "reachable", lambda url=None, timeout=2.0: False)
        with pytest.raises(SahError) as caught:
            hub.check_weights(refs)
        message = str(caught.value)
        assert "\n" not in message
        assert "'cvssp/audioldm-m-full' (--audio-model): not in the Hugging Face cache, fetch it with " \
               f"`{hub.hf_download_command('cvssp/audioldm-m-full')}` (into ~/.cache/huggingface/hub)" in message
        assert f"not downloaded yet, fetch it with `curl -L --create-dirs -o ~/.cache/sah/imagebind/" \
               f"imagebind_huge.pth {url}`" in message
        assert "'/no/such/model' (--video-model): no such path;" in message
        assert ("HF_HUB_OFFLINE=1" in message) is not offline  # never advised when it is already set
    # the file goes where the ImageBind binder looks for it
    assert hub.download_target(url) == imagebind.cache_dir() / imagebind.CHECKPOINT_NAME
    assert hub.hf_download_command("a/b") in ("hf download a/b", "huggingface-cli download a/b")

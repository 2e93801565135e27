"""The shipped presets: what they say, how they layer, and all of them run end to end through the CLI on tiny
random-weight models of the real architectures (AudioLDM, AnimateDiff, ImageBind)."""

from __future__ import annotations

import json
import math
import shutil
from pathlib import Path

import pytest
from click.testing import CliRunner
from media_helpers import blob_frames, tone, write_mp4, write_wav
from reference import IMAGEBIND_REFERENCE
from test_audioldm import save_tiny_audioldm
from test_video_generators import make_animatediff

from sah import config as cfg
from sah.cli import cli
from sah.errors import ConfigError
from sah.io import read_audio, read_video
from sah.presets import list_presets, load_preset, preset_text
from sah.registry import get_registry

REFERENCE = IMAGEBIND_REFERENCE
TASKS = ("v2a", "i2a", "a2v", "joint")


def invoke(*args):
    return CliRunner().invoke(cli, [str(a) for a in args], catch_exceptions=False)


# -- what the presets say --------------------------------------------------------------------------

def test_every_task_has_a_paper_and_a_fast_preset_that_resolves():
    recipes = {f"{kind}-{task}" for kind in ("paper", "fast") for task in TASKS}
    assert recipes <= set(list_presets())
    for name in recipes:
        config = cfg.resolve(load_preset(name), registry=get_registry())
        assert config["run"]["task"] == name.split("-")[1]
        assert config["binder"]["name"] == "imagebind"
    for name in list_presets():  # the other presets (other generators) resolve too
        config = cfg.resolve(load_preset(name), registry=get_registry())
        assert config["run"]["task"] in TASKS
        assert preset_text(name).startswith(f"# {name} — ")  # the comment says what it is


@pytest.mark.parametrize("task", ["v2a", "i2a"])
def test_paper_audio_presets_are_the_papers_v2a_recipe(task):
    c = cfg.resolve(load_preset(f"paper-{task}"), registry=get_registry())
    assert (c["audio"]["generator"], c["audio"]["model"]) == ("audioldm", "cvssp/audioldm-m-full")
    assert (c["run"]["steps"], c["audio"]["scheduler"], c["audio"]["cfg_scale"]) == (30, "ddim", 2.5)
    g = c["guidance"]
    assert (g["optimizer"], g["lr"]["audio"], g["opt_steps"], g["start"], g["end"]) == ("adam", 0.1, 1, 0.2, 1.0)
    assert g["weights"]["condition"] == g["weights"]["text"] == 1.0  # the dual loss
    assert not g["prompt_tuning"]


def test_paper_a2v_and_joint_presets():
    a2v = cfg.resolve(load_preset("paper-a2v"), registry=get_registry())
    assert a2v["video"]["generator"] == "animatediff" and a2v["run"]["steps"] == 25
    assert (a2v["guidance"]["optimizer"], a2v["guidance"]["lr"]["video"]) == ("adam", 0.01)
    assert a2v["guidance"]["prompt_tuning"]
    joint = cfg.resolve(load_preset("paper-joint"), registry=get_registry())
    assert (joint["audio"]["generator"], joint["video"]["generator"]) == ("audioldm", "animatediff")
    assert joint["run"]["steps"] == 25 and joint["guidance"]["lr"] == {"audio": 0.1, "video": 0.01}
    assert joint["guidance"]["weights"]["pair"] == joint["guidance"]["weights"]["text"] == 1.0  # the triangle
    assert (joint["video"]["frames"], joint["video"]["height"], joint["video"]["width"]) == (16, 512, 512)
    assert joint["audio"]["duration"] == joint["video"]["frames"] / joint["video"]["fps"]


# -- layering and errors ---------------------------------------------------------------------------

def test_config_show_layers_preset_under_config_file_flags_and_set(tmp_path):
    shown = invoke("config", "show", "--preset", "paper-v2a")
    assert shown.exit_code == 0, shown.output
    assert 'model = "cvssp/audioldm-m-full"' in shown.output and "steps = 30" in shown.output

    config_file = tmp_path / "mine.toml"
    config_file.write_text('[run]\nsteps = 12\nseed = 5\n[audio]\nduration = 3.0\n')
    shown = invoke("config", "show", "--preset", "paper-v2a", "--config", config_file, "--set", "run.seed=9")
    resolved = cfg.tomllib.loads(shown.output)
    assert resolved["run"]["steps"] == 12 and resolved["audio"]["duration"] == 3.0  # --config over the preset
    assert resolved["run"]["seed"] == 9  # --set over --config
    assert resolved["guidance"]["optimizer"] == "adam"  # the preset shows through where nothing overrides it


def test_unknown_preset_is_one_line_listing_the_known_ones():
    for args in (["config", "show"], ["run"]):
        result = CliRunner().invoke(cli, [*args, "--preset", "paper-v2x"])
        assert result.exit_code == 2
        lines = result.output.strip().splitlines()
        assert len(lines) == 1 and "unknown preset 'paper-v2x'" in lines[0] and "paper-v2a" in lines[0]
    with pytest.raises(ConfigError):
        load_preset("../pyproject")


def test_config_presets_lists_and_shows():
    listed = invoke("config", "presets")
    assert [line.split()[0] for line in listed.output.splitlines()] == list_presets()
    shown = invoke("config", "presets", "--show", "fast-a2v")
    assert shown.output == preset_text("fast-a2v")


@pytest.mark.parametrize("preset, condition, names", [
    ("paper-v2a", "--video", ["'cvssp/audioldm-m-full' (--audio-model): not in the Hugging Face cache",
                              "'https://dl.fbaipublicfiles.com/imagebind/imagebind_huge.pth' (--binder-model): "
                              "not downloaded yet"]),
    ("paper-joint", None, ["'cvssp/audioldm-m-full' (--audio-model)",
                           "'stable-diffusion-v1-5/stable-diffusion-v1-5' (--video-model)",
                           "'guoyww/animatediff-motion-adapter-v1-5-2' (video.motion_adapter)",
                           "imagebind_huge.pth' (--binder-model)"]),
])
def test_missing_weights_fail_in_one_line_before_any_model_loads(tmp_path, monkeypatch, preset, condition, names):
    """Offline with empty caches: one line naming every missing weight, before any model loads."""
    import huggingface_hub.constants

    from sah import hub
    from sah.plugins.binders.imagebind import ImageBindBinder
    from sah.plugins.generators.animatediff import AnimateDiffGenerator
    from sah.plugins.generators.audioldm import AudioLDMGenerator

    def refuse(*args, **kwargs):
        raise AssertionError("a model was loaded")

    for cls in (AudioLDMGenerator, AnimateDiffGenerator, ImageBindBinder):
        monkeypatch.setattr(cls, "__init__", refuse)
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    monkeypatch.setattr(huggingface_hub.constants, "HF_HUB_OFFLINE", True)  # read at import: patch it too
    monkeypatch.setattr(huggingface_hub.constants, "HF_HUB_CACHE", str(tmp_path / "hf"))
    monkeypatch.setenv("SAH_CACHE", str(tmp_path / "sah-cache"))
    hub.reachable.cache_clear()
    args = ["run", "--preset", preset, "--prompt", "a dog", "--out", str(tmp_path / "out"), "--quiet"]
    if condition:
        args += [condition, str(write_mp4(tmp_path / "clip.mp4", blob_frames(2, 8, 32, 32), fps=8))]
    result = CliRunner().invoke(cli, args)
    assert result.exit_code == 2, result.output
    lines = result.stderr.strip().splitlines()
    assert len(lines) == 1 and "Traceback" not in result.output
    assert lines[0].startswith("Error: model weights not available offline: ")
    assert all(name in lines[0] for name in names), lines[0]
    assert not (tmp_path / "out").exists()


# -- end to end on tiny real architectures ---------------------------------------------------------

@pytest.fixture(scope="module")
def tiny_models(tmp_path_factory) -> dict[str, Path]:
    if not (REFERENCE / "tiny_state_dict.safetensors").is_file():
        pytest.skip(f"tiny ImageBind reference not found at {REFERENCE}")
    root = tmp_path_factory.mktemp("preset-models")
    base, adapter = make_animatediff(root)
    imagebind = root / "imagebind" / "tiny.safetensors"
    imagebind.parent.mkdir()
    shutil.copy(REFERENCE / "tiny_state_dict.safetensors", imagebind)
    shutil.copy(REFERENCE / "tiny_config.json", imagebind.with_suffix(".json"))  # selects the tiny config
    return {"audioldm": save_tiny_audioldm(root / "audioldm"), "sd": base, "adapter": adapter,
            "imagebind": imagebind}


FRAMES, SIZE, FPS = 4, 32, 8.0
AUDIO_SECONDS = {"v2a": 0.5, "i2a": 0.5, "joint": FRAMES / FPS}
CLIP_SECONDS = 0.5  # the V2A condition: its audio lasts as long (fast), or ceil of it (paper, as the authors)


def tiny_overrides(task: str, models: dict[str, Path]) -> list[str]:
    """Swap the preset's hub models for the tiny ones and shrink lengths; everything else is the preset's."""
    args = ["--binder-model", models["imagebind"], "--steps", 4]
    if task != "a2v":
        args += ["--audio-model", models["audioldm"], "--set", f"audio.duration={AUDIO_SECONDS[task]}"]
    if task in ("a2v", "joint"):
        args += ["--video-model", models["sd"], "--set", f"video.motion_adapter={json.dumps(str(models['adapter']))}",
                 "--set", f"video.frames={FRAMES}", "--set", f"video.height={SIZE}", "--set", f"video.width={SIZE}"]
    return args


def condition_args(task: str, folder: Path) -> list:
    if task == "v2a":
        return ["--video", write_mp4(folder / "clip.mp4", blob_frames(2, int(CLIP_SECONDS * 8), 48, 32), fps=8)]
    if task == "i2a":
        from PIL import Image as PILImage

        path = folder / "still.png"
        PILImage.fromarray(blob_frames(2, 1, 48, 32)[0]).save(path)
        return ["--image", path]
    if task == "a2v":
        return ["--audio", write_wav(folder / "clip.wav", tone(440, 1.0, 16000), 16000)]
    return []


@pytest.mark.slow
@pytest.mark.parametrize("kind", ["paper", "fast"])
@pytest.mark.parametrize("task", TASKS)
def test_preset_runs_end_to_end_on_tiny_real_architectures(task, kind, tiny_models, tmp_path):
    out = tmp_path / "out"
    result = invoke("run", "--preset", f"{kind}-{task}", *condition_args(task, tmp_path), "--prompt", "a dog",
                    "--out", out, "--no-plot", "--quiet", "--device", "cpu", *tiny_overrides(task, tiny_models))
    assert result.exit_code == 0, result.output

    expected = {"json"} | ({"wav"} if task != "a2v" else set()) | ({"mp4"} if task != "i2a" else set())
    assert {p.name for p in out.iterdir()} == {f"{task}-0.{ext}" for ext in expected}
    sidecar = json.loads((out / f"{task}-0.json").read_text())
    preset = load_preset(f"{kind}-{task}")
    assert sidecar["task"] == task
    assert sidecar["config"]["guidance"]["optimizer"] == preset["guidance"]["optimizer"]  # the preset was used
    assert sidecar["config"]["guidance"]["prompt_tuning"] == preset["guidance"]["prompt_tuning"]
    assert sidecar["config"]["run"]["steps"] == 4  # ... under the flag

    if task != "a2v":
        audio = read_audio(out / f"{task}-0.wav")
        seconds = AUDIO_SECONDS[task] if task != "v2a" else math.ceil(CLIP_SECONDS) if kind == "paper" else CLIP_SECONDS
        assert audio.sample_rate == 16000 and abs(audio.duration - seconds) < 1e-3
    if task == "v2a":  # the mp4 ends with its picture, whatever the audio's length
        clip = read_video(out / "v2a-0.mp4")
        assert abs(clip.duration - CLIP_SECONDS) < 1e-6 and abs(clip.audio.duration - CLIP_SECONDS) < 0.03
    if task in ("a2v", "joint"):
        video = read_video(out / f"{task}-0.mp4")
        # A2V: as many frames as the 1 s tone lasts (windows of video.frames, fused); joint: video.frames
        frames = round(1.0 * FPS) if task == "a2v" else FRAMES
        assert video.num_frames == frames and (video.width, video.height) == (SIZE, SIZE) and video.fps == FPS
        assert video.audio is not None and abs(video.audio.duration - frames / FPS) < 0.05
        assert sidecar["video"]["frames"] == frames

    expected_terms = {"v2a": {"audio~condition", "audio~text"}, "i2a": {"audio~condition", "audio~text"},
                      "a2v": {"video~condition", "video~text"}, "joint": {"audio~video", "audio~text", "video~text"}}
    guided = [r for r in sidecar["trace"] if not r["skipped"]]
    assert len(guided) == 3  # steps 1..3 of 4: guidance starts at 20 %
    for record in guided:
        assert set(record["similarity"]) == expected_terms[task]
        assert all(math.isfinite(v) and -1.0 <= v <= 1.0 for v in record["similarity"].values())
    assert set(sidecar["final_similarity"]) == expected_terms[task]
    assert all(math.isfinite(v) for v in sidecar["final_similarity"].values())

"""Hardening: what `sah run` does with bad media, interruptions, full or read-only disks, untrusted
files, faulty plugins and numerical faults. Every input is generated here (tests/media_helpers.py);
no binary is checked in. "Refused" means: exit code 2, one line on stderr naming the problem, no
model constructed (the toy plugins' `__init__` is patched to fail), nothing created under `--out`.

| case                                          | expected behaviour                                              |
|-----------------------------------------------|-----------------------------------------------------------------|
| truncated mp4 (index at the end / the front)  | refused: "not a media file or corrupt" / "corrupt or truncated" |
| mp4 with no video stream, given as --video    | refused: "has no video stream"                                  |
| video with zero frames                        | refused, naming the file                                        |
| audio with zero samples                       | refused: "audio stream has no samples"                          |
| text file renamed .mp4                        | refused: "not a media file"                                     |
| a directory where a file is expected          | refused: "is a directory"                                       |
| non-UTF-8 config (prompt) file                | refused: "is not valid TOML: 'utf-8' codec can't decode ..."    |
| config value of the wrong type                | refused: "must be an integer"                                   |
| negative step count                           | refused: "run.steps must be at least 1"                         |
| guidance.lr = nan                             | refused: "guidance.lr.audio must be a finite number"            |
| input.max_seconds < 0                         | refused                                                         |
| --out is a file / a read-only folder          | refused: "is not a folder" / "is not writable"                  |
| a video window too big for half the RAM       | refused before decoding: "... GiB as float32 frames"            |
| 8-bit, 24-bit, float WAV; 6 ch; 8 / 192 kHz   | a2v output as for the plain 16-bit 16 kHz mono tone             |
| 1×1 video                                     | v2a output: finite 1 s wav, playable mp4 padded to 2×2          |
| one 4K frame (png)                            | i2a output of the blob's class                                  |
| 10-minute audio / video                       | read whole by default (long outputs are windowed); with         |
|                                               | input.max_seconds=30 only 30 s read, one warning; right class   |
| spaces and unicode in input and --out paths   | v2a output of the right class                                   |
| empty prompt                                  | joint output, no text term                                      |
| 5,000-character prompt                        | joint output; sidecar keeps it whole (tokenizers truncate)      |
| SIGINT / SIGTERM mid-run (subprocess)         | stops within one step, exit 130 / 143, earlier outputs          |
|                                               | byte-identical, no temp files                                   |
| Ctrl-C while saving                           | this sample's new files removed, earlier ones kept              |
| disk full (tmpfs; RLIMIT_FSIZE)               | "cannot write (No space left on device / File too large)",      |
|                                               | exit 2, no partial file                                         |
| folder turns read-only before saving          | "cannot write (Read-only file system)", no file                 |
| malicious pickle as a checkpoint              | refused by weights-only loads (torch, ImageBind, diffusers);    |
|                                               | the payload never runs                                          |
| the source tree                               | every torch.load weights_only=True; no pickle/eval/exec         |
| code in --set / config strings                | kept as text, never run                                         |
| --name "../../evil name"                      | written as evil_name.* inside --out                             |
| plugin raising at import                      | `sah plugins` lists it as broken; using it: exit 2 naming it;   |
|                                               | other plugins work                                              |
| plugin raising in __init__ / decode / embed   | exit 2: "generator 'x' failed to load" / "... failed in decode" |
|                                               | / "binder 'y' failed in embed"; other plugins work              |
| denoiser returning inf                        | exit 2: "generator 'x' produced non-finite latents at step 6"   |
| non-finite guidance gradient                  | update skipped, warned once per run, finite output, sidecar     |
|                                               | "skipped_updates" = skips in the trace                          |
"""

from __future__ import annotations

import contextlib
import json
import os
import pickle
import re
import resource
import signal
import subprocess
import sys
import time
import warnings
from pathlib import Path

import hardening_plugins
import numpy as np
import pytest
import torch
from click.testing import CliRunner
from media_helpers import (
    blob_frames,
    tone,
    truncate_file,
    write_audio_only_mp4,
    write_lossless_video,
    write_mp4,
    write_pcm_wav,
    write_png,
)

import sah.registry
from sah import api, io
from sah.cli import cli
from sah.errors import MediaError, SahError
from sah.media import Audio, Video
from sah.plugins.toy import oracle, world

ROOT = Path(__file__).resolve().parents[1]
TESTS = Path(__file__).resolve().parent


def run_cli(*args: object) -> object:
    return CliRunner().invoke(cli, ["run", *map(str, args)])


def assert_refused(result: object, message: str, out: Path | None = None) -> None:
    assert result.exit_code == 2, (result.output, result.exception)
    assert message in result.stderr, result.stderr
    assert len(result.stderr.strip().splitlines()) == 1, result.stderr
    if out is not None:
        assert not out.exists()


def assert_no_temp_files(folder: Path) -> None:
    assert not [p.name for p in folder.rglob(".*")], list(folder.rglob(".*"))


@pytest.fixture
def no_models(monkeypatch):
    """Constructing any toy model fails the test: refusals must come before loading."""
    from sah.plugins.binders.toy import ToyBinder
    from sah.plugins.generators.toy import ToyAudioGenerator, ToyVideoGenerator

    def refuse(*args, **kwargs):
        raise AssertionError("a model was loaded")

    for cls in (ToyAudioGenerator, ToyVideoGenerator, ToyBinder):
        monkeypatch.setattr(cls, "__init__", refuse)


@pytest.fixture
def fault_registry(monkeypatch):
    registry = sah.registry.load_registry(extra_plugins=[hardening_plugins])
    monkeypatch.setattr(sah.registry, "_cached", registry)
    return registry


def blob_video(k: int, frames: int, width: int, height: int, fps: float) -> Video:
    pixels = torch.from_numpy(blob_frames(k, frames, width, height)).permute(0, 3, 1, 2).float() / 255
    return Video(pixels, fps)


# --------------------------------------------------------------------------- refused inputs


def _truncated_at_end(tmp: Path) -> tuple[list, str]:
    clip = write_mp4(tmp / "cut-end.mp4", blob_frames(1, 48, 64, 64), fps=8)  # index written last
    return ["--video", truncate_file(clip, 0.5)], "cut-end.mp4: not a media file or corrupt"


def _truncated_at_front(tmp: Path) -> tuple[list, str]:
    track = Audio(torch.from_numpy(tone(500, 6.0, 44100)), 44100)
    clip = io.write_mp4(tmp / "cut-front.mp4", blob_video(1, 48, 64, 64, 8), track)  # faststart: index first
    return ["--video", truncate_file(clip, 0.4)], "cut-front.mp4: corrupt or truncated"


def _config(tmp: Path, name: str, data: bytes) -> Path:
    path = tmp / name
    path.write_bytes(data)
    return path


REFUSED = {
    "truncated mp4, index at the end": _truncated_at_end,
    "truncated mp4, index at the front": _truncated_at_front,
    "mp4 with no video stream": lambda tmp: (
        ["--video", write_audio_only_mp4(tmp / "voice.mp4", tone(500, 1.0, 44100))], "voice.mp4: has no video stream"),
    "video with zero frames": lambda tmp: (
        ["--video", write_lossless_video(tmp / "zero.mkv", blob_frames(1, 0, 32, 32), 8)], "zero.mkv: "),
    "audio with zero samples": lambda tmp: (
        ["--audio", write_pcm_wav(tmp / "silence.wav", np.zeros((1, 0), np.float32), 16000, "pcm_s16le")],
        "silence.wav: audio stream has no samples"),
    "text file renamed .mp4": lambda tmp: (
        ["--video", _config(tmp, "notes.mp4", b"meeting notes\n")], "notes.mp4: not a media file"),
    "directory where a file is expected": lambda tmp: (["--audio", tmp], "is a directory"),
    "non-UTF-8 prompt in the config file": lambda tmp: (
        ["--config", _config(tmp, "latin1.toml", '[run]\nprompt = "café north"\n'.encode("latin-1"))],
        "is not valid TOML: 'utf-8' codec can't decode"),
    "config value of the wrong type": lambda tmp: (
        ["--config", _config(tmp, "typo.toml", b'[run]\nsteps = "ten"\n')], "'run.steps' must be an integer"),
    "negative step count": lambda tmp: (["--steps", -3], "run.steps must be at least 1"),
    "lr = nan": lambda tmp: (
        ["--config", _config(tmp, "nan.toml", b"[guidance]\nlr = nan\n")], "guidance.lr.audio must be a finite number"),
    "negative input.max_seconds": lambda tmp: (["--set", "input.max_seconds=-1"], "input.max_seconds must be"),
}


@pytest.mark.parametrize("case", REFUSED)
def test_bad_input_is_refused_before_any_model_loads(case, tmp_path, no_models):
    args, message = REFUSED[case](tmp_path)
    out = tmp_path / "out"
    assert_refused(run_cli(*args, "--out", out, "--quiet"), message, out)


def test_out_that_is_a_file_is_refused(tmp_path, no_models):
    out = tmp_path / "results"
    out.write_text("not a folder")
    assert_refused(run_cli("--prompt", "north", "--out", out / "sub"), "is not a folder")
    assert out.read_text() == "not a folder"


def test_video_too_big_for_memory_is_refused_before_decoding(tmp_path, no_models, monkeypatch):
    clip = write_mp4(tmp_path / "big.mp4", blob_frames(1, 16, 64, 64), fps=8)
    monkeypatch.setattr(api, "_memory_bytes", lambda: 1_000_000)  # 16 frames of 64×64 float32: 786 kB > half
    monkeypatch.setattr(io, "read_video", lambda *a, **k: pytest.fail("decoded anyway"))
    out = tmp_path / "out"
    assert_refused(run_cli("--video", clip, "--out", out), "needs 0.0 GiB as float32 frames, over half", out)


# --------------------------------------------------------------------------- usable inputs


def _run_ok(*args: object) -> Path:
    result = run_cli(*args, "--steps", 30, "--quiet", "--no-plot")
    assert result.exit_code == 0, (result.output, result.exception)
    return Path(str(args[args.index("--out") + 1]))


def _a2v_class(wav: Path, out: Path) -> int:
    _run_ok("--audio", wav, "--out", out)
    return int(oracle.video_class(io.read_video(out / "a2v-0.mp4"))[0])


@pytest.fixture(scope="module")
def plain_a2v_class(tmp_path_factory) -> int:
    """The a2v output class for a plain 16-bit 16 kHz mono tone of class 3: an unusual encoding of
    the same tone must give the same output (the toy world's own accuracy is tested elsewhere)."""
    tmp = tmp_path_factory.mktemp("plain")
    wav = write_pcm_wav(tmp / "plain.wav", tone(world.FREQUENCIES[3], 1.5, 16000), 16000, "pcm_s16le")
    return _a2v_class(wav, tmp / "out")


@pytest.mark.parametrize("codec, rate, channels", [
    ("pcm_u8", 16000, 1), ("pcm_s24le", 16000, 1), ("pcm_f32le", 16000, 1),
    ("pcm_s16le", 48000, 6), ("pcm_s16le", 8000, 1), ("pcm_s16le", 192000, 2),
])
def test_unusual_wav_is_a_usable_condition(tmp_path, codec, rate, channels, plain_a2v_class):
    wav = write_pcm_wav(tmp_path / "in.wav", tone(world.FREQUENCIES[3], 1.5, rate, channels), rate, codec)
    assert _a2v_class(wav, tmp_path / "out") == plain_a2v_class


def test_one_pixel_video_gives_a_finite_playable_output(tmp_path):
    clip = write_lossless_video(tmp_path / "dot.mkv", blob_frames(0, 8, 1, 1), 8)
    out = _run_ok("--video", clip, "--out", tmp_path / "out")
    audio = io.read_audio(out / "v2a-0.wav")
    assert torch.isfinite(audio.waveform).all() and abs(audio.duration - world.DURATION) < 1e-3
    dubbed = io.read_video(out / "v2a-0.mp4")
    assert (dubbed.width, dubbed.height, dubbed.num_frames) == (2, 2, 8) and dubbed.audio is not None


def test_4k_frame_is_a_usable_condition(tmp_path):
    image = write_png(tmp_path / "big.png", blob_frames(3, 1, 3840, 2160)[0])
    out = _run_ok("--image", image, "--out", tmp_path / "out")
    assert int(oracle.audio_class(io.read_audio(out / "i2a-0.wav"))[0]) == 3


def test_paths_with_spaces_and_unicode(tmp_path):
    folder = tmp_path / "my clips ✓"
    folder.mkdir()
    clip = write_mp4(folder / "vidéo 北 1.mp4", blob_frames(4, 8, 48, 32), fps=8)
    out = _run_ok("--video", clip, "--out", tmp_path / "sortie été")
    assert int(oracle.audio_class(io.read_audio(out / "v2a-0.wav"))[0]) == 4
    assert json.loads((out / "v2a-0.json").read_text())["condition"] == str(clip)


def test_empty_and_very_long_prompts(tmp_path):
    out = _run_ok("--prompt", "", "--out", tmp_path / "empty")
    sidecar = json.loads((out / "joint-0.json").read_text())
    assert sidecar["prompt"] == "" and sidecar["terms"] == ["audio~video"]
    long_prompt = ("north " * 834)[:5000]
    out = _run_ok("--prompt", long_prompt, "--out", tmp_path / "long")
    sidecar = json.loads((out / "joint-0.json").read_text())
    assert sidecar["prompt"] == long_prompt  # kept whole; only the tokenizers cut it
    north = world.CLASS_NAMES.index("north")
    assert int(oracle.audio_class(io.read_audio(out / "joint-0.wav"))[0]) == north
    assert int(oracle.video_class(io.read_video(out / "joint-0.mp4"))[0]) == north


def test_ten_minute_inputs_are_read_as_a_window(tmp_path, plain_a2v_class):
    wav = write_pcm_wav(tmp_path / "long.wav", tone(world.FREQUENCIES[3], 600.0, 8000), 8000, "pcm_s16le")
    clip = write_lossless_video(tmp_path / "long.mkv", blob_frames(2, 1200, 32, 32), 2)  # 10 min at 2 fps
    with warnings.catch_warnings():
        warnings.simplefilter("error", UserWarning)  # the whole file, without a word
        assert api.plan({"input": {"audio": str(wav)}}).condition.num_samples == 600 * 8000
    with pytest.warns(UserWarning, match=r"600\.0 s long; only its first 30 s are used"):
        planned = api.plan({"input": {"audio": str(wav), "max_seconds": 30.0}})
    assert planned.condition.num_samples == 30 * 8000
    with pytest.warns(UserWarning, match="only its first 30 s"):
        planned = api.plan({"input": {"video": str(clip), "max_seconds": 30.0}})
    assert planned.condition.num_frames == 60
    with pytest.warns(UserWarning, match="only its first 5 s"):
        assert api.plan({"input": {"video": str(clip), "max_seconds": 5.0}}).condition.num_frames == 10
    assert api.plan({"input": {"audio": str(wav), "max_seconds": 0.0}}).condition.num_samples == 600 * 8000
    out = tmp_path / "out"
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", UserWarning)
        _run_ok("--audio", wav, "--out", out, "--set", "input.max_seconds=30")
        _run_ok("--video", clip, "--out", out, "--set", "input.max_seconds=30")
    assert int(oracle.video_class(io.read_video(out / "a2v-0.mp4"))[0]) == plain_a2v_class
    assert int(oracle.audio_class(io.read_audio(out / "v2a-0.wav"))[0]) == 2
    assert io.read_video(out / "v2a-0.mp4").num_frames == 60  # the dubbed clip is the window


# --------------------------------------------------------------------------- interruptions


def _default_sigint() -> None:
    # A shell running this suite in the background (`.ci/run &`) starts it with SIGINT ignored, and
    # children inherit that: give the child the disposition a terminal user's `sah run` has.
    signal.signal(signal.SIGINT, signal.SIG_DFL)


def _sah_subprocess(args: list[str], env: dict[str, str]) -> subprocess.Popen:
    return subprocess.Popen([sys.executable, "-c", "from sah.cli import main; main()", *args], env=env,
                            stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, preexec_fn=_default_sigint)


def _fixture_env(tmp: Path, **extra: str) -> dict[str, str]:
    site = hardening_plugins.install_entry_points(tmp / "site", {"hardening": "hardening_plugins"})
    path = os.pathsep.join([str(site), str(TESTS), os.environ.get("PYTHONPATH", "")])
    return {**os.environ, "PYTHONPATH": path, "OMP_NUM_THREADS": "1", **extra}


@pytest.mark.slow
@pytest.mark.parametrize("signum, code", [(signal.SIGINT, 130), (signal.SIGTERM, 143)])
def test_signal_mid_run_stops_within_a_step_and_keeps_earlier_outputs(tmp_path, signum, code):
    out, log = tmp_path / "out", tmp_path / "steps.log"
    args = ["run", "--gen-audio", "slow-audio", "--gen-video", "", "--prompt", "north", "--out", str(out),
            "--quiet", "--no-plot"]
    first = _sah_subprocess([*args, "--steps", "10"], _fixture_env(tmp_path))
    assert first.wait(timeout=300) == 0, first.stderr.read()
    earlier = {p.name: p.read_bytes() for p in out.iterdir()}
    assert set(earlier) == {"t2a-0.wav", "t2a-0.json"}

    env = _fixture_env(tmp_path, SAH_TEST_STEP_LOG=str(log), SAH_TEST_STEP_SECONDS="0.3")
    proc = _sah_subprocess([*args, "--steps", "500", "--overwrite"], env)
    try:
        deadline = time.monotonic() + 300
        while not (log.exists() and len(log.read_text().split()) >= 3):
            assert proc.poll() is None and time.monotonic() < deadline, proc.stderr.read()
            time.sleep(0.05)
        steps_at_signal = len(log.read_text().split())
        proc.send_signal(signum)
        assert proc.wait(timeout=120) == code
    finally:
        if proc.poll() is None:
            proc.kill()
    assert len(log.read_text().split()) <= steps_at_signal + 1  # stopped within one denoising step
    assert proc.stderr.read().strip().splitlines()[-1] == ("Interrupted." if code == 130 else "Terminated.")
    assert {p.name: p.read_bytes() for p in out.iterdir()} == earlier  # untouched, and no temp files


def test_interrupt_while_saving_leaves_no_partial_sample(tmp_path, monkeypatch):
    out = tmp_path / "out"
    result = api.run({"run": {"steps": 10}, "output": {"dir": str(out), "plot": False, "name": "keep"}})
    api.save(result)
    earlier = {p.name: p.read_bytes() for p in out.iterdir()}
    result = api.run({"run": {"steps": 10}, "output": {"dir": str(out), "plot": False, "name": "new"}})

    def interrupted(*args, **kwargs):
        raise KeyboardInterrupt

    monkeypatch.setattr(io, "write_mp4", interrupted)  # after new.wav, before new.mp4 and new.json
    with pytest.raises(KeyboardInterrupt):
        api.save(result)
    assert {p.name: p.read_bytes() for p in out.iterdir()} == earlier


# --------------------------------------------------------------------------- full and read-only disks


@contextlib.contextmanager
def tmpfs(path: Path, options: str):
    path.mkdir(parents=True, exist_ok=True)
    mounted = subprocess.run(["mount", "-t", "tmpfs", "-o", options, "tmpfs", str(path)], capture_output=True)
    if mounted.returncode != 0:
        pytest.skip(f"cannot mount a tmpfs here ({mounted.stderr.decode().strip()})")
    try:
        yield path
    finally:
        subprocess.run(["umount", str(path)], check=True)


def _planned_result(out: Path) -> api.RunResult:
    return api.run({"run": {"steps": 10}, "output": {"dir": str(out), "plot": False}})


@pytest.mark.skipif(os.geteuid() != 0, reason="mounting a tmpfs needs root")
def test_disk_full_is_one_line_and_leaves_no_partial_file(tmp_path):
    with tmpfs(tmp_path / "disk", "size=64k") as disk:
        (disk / "filler").write_bytes(b"\0" * 48 * 1024)  # room for the plan's checks, not for a 1 s wav
        result = run_cli("--prompt", "north", "--steps", 10, "--out", disk / "out", "--quiet", "--no-plot")
        assert_refused(result, "cannot write (No space left on device)")
        assert sorted(p.name for p in disk.rglob("*") if p.is_file()) == ["filler"]


def test_file_size_limit_is_one_line_and_leaves_no_partial_file(tmp_path):
    out = tmp_path / "out"
    result = _planned_result(out)
    soft, hard = resource.getrlimit(resource.RLIMIT_FSIZE)
    resource.setrlimit(resource.RLIMIT_FSIZE, (16 * 1024, hard))  # Python ignores SIGXFSZ: writes get EFBIG
    try:
        with pytest.raises(MediaError, match=r"cannot write \(File too large\)") as caught:
            api.save(result)
    finally:
        resource.setrlimit(resource.RLIMIT_FSIZE, (soft, hard))
    assert "\n" not in str(caught.value)
    assert not [p for p in out.rglob("*") if p.is_file()]


def test_read_only_output_folder(tmp_path, no_models):
    if os.geteuid() == 0:
        context = tmpfs(tmp_path / "ro", "ro,size=64k")
    else:
        (tmp_path / "ro").mkdir()
        os.chmod(tmp_path / "ro", 0o555)
        context = contextlib.nullcontext(tmp_path / "ro")
    with context as folder:
        assert_refused(run_cli("--prompt", "north", "--out", folder / "out"), "is not writable", folder / "out")


@pytest.mark.skipif(os.geteuid() != 0, reason="remounting needs root")
def test_folder_turning_read_only_before_save(tmp_path):
    with tmpfs(tmp_path / "disk", "size=1m") as disk:
        result = _planned_result(disk / "out")
        subprocess.run(["mount", "-o", "remount,ro", str(disk)], check=True)
        with pytest.raises(SahError, match=r"cannot write \(Read-only file system\)"):
            api.save(result)
        assert not list(disk.rglob("*"))


# --------------------------------------------------------------------------- untrusted files


class _Payload:
    """Unpickling this creates a file: the proof that a pickle ran code."""

    def __init__(self, marker: Path) -> None:
        self.marker = marker

    def __reduce__(self):
        return (open, (str(self.marker), "w"))


def test_malicious_pickle_is_refused(tmp_path):
    marker = tmp_path / "pwned"
    evil = tmp_path / "imagebind_huge.pth"
    torch.save({"model": _Payload(marker)}, evil)
    with pytest.raises(pickle.UnpicklingError):
        torch.load(evil, weights_only=True)
    from sah.plugins.binders.imagebind import _Checkpoint

    with pytest.raises(SahError, match="could not be read as a weights-only torch file") as caught:
        _Checkpoint(evil)
    assert "\n" not in str(caught.value)
    from diffusers.models.model_loading_utils import load_state_dict

    with pytest.raises(OSError, match="Unable to load weights"):  # diffusers' .bin path is weights-only too
        load_state_dict(str(evil))
    assert not marker.exists()


def test_source_never_unpickles_or_evaluates():
    """Every checkpoint load in sah and its plugins is safetensors or weights-only torch.load."""
    offenders = []
    for path in [*ROOT.joinpath("sah").rglob("*.py"), *ROOT.joinpath("plugins").rglob("*.py"),
                 *ROOT.joinpath("cli").rglob("*.py")]:
        text = path.read_text(encoding="utf-8")
        for match in re.finditer(r"torch\.load\(([^()]|\([^()]*\))*\)", text):
            if "weights_only=True" not in match.group(0):
                offenders.append(f"{path}: {match.group(0)}")
        for pattern in (r"^\s*import (c?pickle|dill|marshal)\b", r"^\s*from (c?pickle|dill) import",
                        r"(?<![\w.])(eval|exec)\(", r"yaml\.(unsafe_)?load\(", r"np\.load\([^)]*allow_pickle=True"):
            offenders += [f"{path}: {m.group(0)}" for m in re.finditer(pattern, text, re.MULTILINE)]
    assert not offenders, offenders


def test_config_text_is_never_code_and_names_are_sanitised(tmp_path):
    marker = tmp_path / "pwned"
    code = f"__import__('os').system('touch {marker}')"
    out = tmp_path / "out"
    config = tmp_path / "c.toml"
    config.write_text(f'[run]\nnegative_prompt = "{code}"\n')
    result = run_cli("--config", config, "--set", f"run.prompt={code}", "--name", "../../evil name", "--out", out,
                     "--steps", 10, "--quiet", "--no-plot")
    assert result.exit_code == 0, result.output
    assert not marker.exists()
    assert sorted(p.name for p in tmp_path.rglob("*") if p.is_file() and p.suffix != ".toml") == \
        ["evil_name.json", "evil_name.mp4", "evil_name.wav"]
    sidecar = json.loads((out / "evil_name.json").read_text())
    assert sidecar["prompt"] == code and sidecar["config"]["run"]["negative_prompt"] == code
    assert api.sanitize_name("..") == "sample" and api.sanitize_name("a/b\\c\0d") == "a_b_c_d"


# --------------------------------------------------------------------------- plugin faults


def test_plugin_failing_at_import_is_listed_and_the_rest_work(tmp_path, monkeypatch):
    site = hardening_plugins.install_entry_points(
        tmp_path / "site", {"broken-at-import": "hardening_broken_import", "hardening": "hardening_plugins"})
    monkeypatch.syspath_prepend(str(site))
    registry = sah.registry.load_registry()
    monkeypatch.setattr(sah.registry, "_cached", registry)
    assert [b.name for b in registry.broken] == ["broken-at-import"]
    listing = CliRunner().invoke(cli, ["plugins", "--json"])
    broken = json.loads(listing.output)["broken"]
    assert broken[0]["name"] == "broken-at-import" and "definitely_not_installed" in broken[0]["error"]
    assert "broken-at-import" in CliRunner().invoke(cli, ["plugins"]).output
    assert_refused(run_cli("--gen-audio", "broken-at-import", "--out", tmp_path / "o"),
                   "'broken-at-import' is unavailable: plugin 'broken-at-import' failed to load: ImportError")
    assert "slow-audio" in registry.generators  # the fixture's other plugin loaded
    _run_ok("--prompt", "north", "--out", tmp_path / "ok")


@pytest.mark.parametrize("args, message", [
    (["--gen-audio", "fails-to-load"],
     "generator 'fails-to-load' failed to load: RuntimeError: checkpoint shard 3 missing (a second line"),
    (["--gen-audio", "fails-in-decode"], "generator 'fails-in-decode' failed in decode: IndexError: vocoder window"),
    (["--binder", "fails-in-embed"], "binder 'fails-in-embed' failed in embed: ValueError: mel filterbank has 0 bins"),
    (["--gen-audio", "nan-denoiser"], "generator 'nan-denoiser' produced non-finite latents at step 6 of 30"),
])
def test_plugin_fault_names_the_plugin_and_the_rest_work(tmp_path, fault_registry, args, message):
    out = tmp_path / "out"
    result = run_cli(*args, "--prompt", "north", "--steps", 30, "--out", out, "--quiet", "--no-plot")
    assert_refused(result, message, out)
    _run_ok("--prompt", "north", "--out", tmp_path / "ok")


def test_non_finite_guidance_is_skipped_warned_once_and_recorded(tmp_path, fault_registry):
    out = tmp_path / "out"
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        result = api.run({"run": {"prompt": "north", "steps": 30}, "binder": {"name": "nan-on-audio"},
                          "output": {"dir": str(out), "plot": False}})
        api.save(result)
    skips = [w for w in caught if "non-finite guidance update" in str(w.message)]
    assert len(skips) == 1
    sample = result.samples[0]
    assert torch.isfinite(sample.audio.waveform).all() and torch.isfinite(sample.video.frames).all()

    def no_nan(token: str) -> None:
        raise AssertionError(f"sidecar holds {token}")

    sidecar = json.loads((out / "joint-0.json").read_text(), parse_constant=no_nan)
    skipped = sum(len(r["skipped"]) for r in sidecar["trace"])
    assert sidecar["skipped_updates"] == skipped and 0 < skipped < 2 * len(sidecar["trace"])

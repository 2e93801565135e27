"""`paper-v2a` reproduces the authors' released V2A code (yzxing87/Seeing-and-Hearing @ 75cdbbc).

The fixture `shared/reference/seeing-and-hearing/` was made by running their code unmodified on a
tiny random-weight AudioLDM and the tiny official ImageBind (10 DDIM steps, 4 s, seed 30). Here
the preset's settings drive those models through `sah.plan` / `sah.load` / `sah.generate` —
configuration only; the generator is wrapped only to record the latents it is handed.
"""

from __future__ import annotations

import shutil
from pathlib import Path

import pytest
import torch
from media_helpers import blob_frames, write_mp4
from reference import reference_dir
from safetensors.torch import load_file

import sah
from sah.generator import fit_duration
from sah.io import read_audio, read_video
from sah.media import Modality, Text
from sah.presets import load_preset

FIXTURE = reference_dir() / "seeing-and-hearing"
IMAGEBIND = reference_dir() / "imagebind"
PROMPT = "a dog barking"


@pytest.fixture(scope="module")
def official() -> dict[str, torch.Tensor]:
    path = FIXTURE / "official_v2a_tiny.safetensors"
    assert path.is_file(), f"reference data missing: {path} (set $SAH_REFERENCE_DIR to the reference folder)"
    return load_file(path)


@pytest.fixture(scope="module")
def tiny_imagebind(tmp_path_factory) -> Path:
    """The tiny official ImageBind as a checkpoint with its config beside it."""
    folder = tmp_path_factory.mktemp("imagebind")
    shutil.copy(IMAGEBIND / "tiny_state_dict.safetensors", folder / "tiny.safetensors")
    shutil.copy(IMAGEBIND / "tiny_config.json", folder / "tiny.json")
    return folder / "tiny.safetensors"


def paper_plan(tmp_path: Path, imagebind: Path, guided: bool = True) -> sah.RunPlan:
    """paper-v2a on the fixture's models, condition, prompt, seed and length (10 steps × 4 s)."""
    layer = {"run": {"steps": 10, "seed": 30, "prompt": PROMPT, "device": "cpu"},
             "input": {"video": str(FIXTURE / "cond.mp4")},
             "audio": {"model": str(FIXTURE / "tiny_audioldm")},
             "binder": {"model": str(imagebind)},
             "output": {"dir": str(tmp_path / "out")}}
    if not guided:
        layer["guidance"] = {"enabled": False}
    return sah.plan(load_preset("paper-v2a"), layer)


def run_recording(plan: sah.RunPlan) -> tuple[sah.RunResult, list[torch.Tensor], torch.Tensor]:
    """Generate, recording the latent each denoising step starts from and the latent decoded last."""
    models = sah.load(plan)
    generator = models.generators[Modality.AUDIO]
    inputs: list[torch.Tensor] = []
    decoded: list[torch.Tensor] = []
    predict_noise, decode = generator.predict_noise, generator.decode

    def recording_predict_noise(trajectory, latents, index):
        if not torch.is_grad_enabled():  # the step's own prediction, not a prompt-tuning re-run
            inputs.append(latents.detach().clone())
        return predict_noise(trajectory, latents, index)

    def recording_decode(latents, *args, **kwargs):
        decoded.append(latents.detach().clone())
        return decode(latents, *args, **kwargs)

    generator.predict_noise, generator.decode = recording_predict_noise, recording_decode
    result = sah.generate(plan, models)
    return result, inputs, decoded[-1]


def test_paper_v2a_unguided_matches_the_authors_pipeline(tmp_path, tiny_imagebind, official):
    plan = paper_plan(tmp_path, tiny_imagebind, guided=False)
    result, inputs, final = run_recording(plan)
    torch.testing.assert_close(inputs[0], official["input.init_latents"], rtol=0, atol=0)
    # what step i+1 starts from is the latent after step i
    per_step = torch.stack([*inputs[1:], final])
    error = (per_step - official["off.latents_per_step"]).abs().max()
    assert error < 2e-4, f"max |Δ| per-step latents {error:.2e}"  # measured 1.1e-4 (latents ~137)
    wave = result.samples[0].audio.waveform[0, 0]
    reference = official["off.waveform"]
    assert wave.shape == reference.shape == (64000,)  # ceil(4.0 s) of audio, cut to 4 s as they cut it
    assert (wave - reference).abs().max() <= 1e-5 * reference.abs().max()


def test_paper_v2a_guided_matches_the_authors_code_at_every_step(tmp_path, tiny_imagebind, official):
    plan = paper_plan(tmp_path, tiny_imagebind)
    result, inputs, final = run_recording(plan)
    torch.testing.assert_close(inputs[0], official["input.init_latents"], rtol=0, atol=0)
    per_step = torch.stack([*inputs[1:], final])
    reference = official["guided.latents_per_step"]
    errors = (per_step - reference).abs().flatten(1).amax(dim=1)
    # guidance moves the authors' latent by about 1 (its Adam step is ±0.1 per element per step);
    # an implementation that differs in order, window, clips or waveform is 2-3.5 away
    assert float((official["guided.final_latents"] - official["off.final_latents"]).abs().max()) > 0.5
    assert errors.max() < 1e-3, f"max |Δ| per step {[f'{e:.1e}' for e in errors]}"
    steps = [r["steps"]["audio"] for r in result.samples[0].trace]
    assert steps == [3, 4, 5, 6, 7, 8, 9]  # the authors' window: i > int(0.2 · 10)
    wave = result.samples[0].audio.waveform[0, 0]
    target = official["guided.waveform"]
    assert wave.shape == target.shape
    assert (wave - target).abs().max() <= 1e-5 * target.abs().max()


def test_paper_v2a_teacher_forced_step_gradient(tmp_path, tiny_imagebind, official):
    """Step 3 from the authors' own stepped latent and noise prediction: x̂0, its waveform, the
    loss and its gradient, computed by the pieces the aligner calls."""
    plan = paper_plan(tmp_path, tiny_imagebind)
    models = sah.load(plan)
    generator, binder = models.generators[Modality.AUDIO], models.binder
    trajectory = generator.prepare(sah.generator.GenerationRequest([PROMPT], [30], num_steps=10, cfg_scale=2.5,
                                                                   duration=4.0))
    latents = official["guided.prev_sample_per_step"][3].clone().requires_grad_(True)
    x0 = generator.predict_x0(trajectory, latents, official["guided.noise_pred_per_step"][3], 3)
    torch.testing.assert_close(x0.detach(), official["probe3.x0"], rtol=1e-5, atol=1e-4)
    audio = generator.decode(x0, trajectory=trajectory)
    assert generator.guide_whole_decode  # the preset's: the binder sees all 64032 samples
    torch.testing.assert_close(audio.waveform[:, 0].detach(), official["probe3.x0_waveform"], rtol=0, atol=1e-5)
    assert fit_duration(audio, trajectory.duration).num_samples == 64000  # what a trimmed run would embed

    with torch.no_grad():
        video = binder.embed(plan.condition)
        text = binder.embed(Text([PROMPT]))
    torch.testing.assert_close(video, official["guided.emb_vision"][:1], rtol=0, atol=1e-4)
    torch.testing.assert_close(text, official["guided.emb_text"][:1], rtol=0, atol=1e-5)
    embedding = binder.embed(audio)
    loss = sum(1 - binder.similarity(embedding, target) for target in (text, video))
    torch.testing.assert_close(loss.detach(), official["probe3.loss"], rtol=0, atol=1e-5)
    (grad,) = torch.autograd.grad(loss.sum(), latents)
    reference = official["probe3.grad"]
    relative = float((grad - reference).norm() / reference.norm())
    assert relative < 1e-4, f"relative L2 {relative:.2e}"


@pytest.mark.parametrize("frames, fps", [(24, 8), (16, 5)])  # 3 s and 3.2 s
def test_v2a_audio_lasts_as_long_as_its_video(tmp_path, frames, fps):
    """sah's default (the toy world here): the soundtrack follows the video, to the sample."""
    clip = write_mp4(tmp_path / "clip.mp4", blob_frames(2, frames, 48, 32), fps=fps)
    plan = sah.plan({"input": {"video": str(clip)}, "output": {"dir": str(tmp_path / "out"), "plot": False}})
    sah.save(sah.generate(plan))
    seconds = frames / fps
    assert read_audio(tmp_path / "out" / "v2a-0.wav").num_samples == int(seconds * 16000)
    video = read_video(tmp_path / "out" / "v2a-0.mp4")
    assert video.duration == seconds and abs(video.audio.duration - seconds) < 0.03


@pytest.mark.parametrize("frames, fps, generated", [(24, 8, 3.0), (16, 5, 4.0)])
def test_paper_v2a_generates_whole_seconds_and_the_mp4_ends_with_the_video(tmp_path, tiny_imagebind, frames, fps,
                                                                           generated):
    """The authors generate ceil(video seconds) of audio: 4 s for a 3.2 s video; the mp4 ends with its picture."""
    clip = write_mp4(tmp_path / "clip.mp4", blob_frames(2, frames, 48, 32), fps=fps)
    plan = sah.plan(load_preset("paper-v2a"), {
        "run": {"steps": 2, "prompt": PROMPT, "device": "cpu"}, "input": {"video": str(clip)},
        "audio": {"model": str(FIXTURE / "tiny_audioldm")}, "binder": {"model": str(tiny_imagebind)},
        "output": {"dir": str(tmp_path / "out"), "plot": False}})
    sah.save(sah.generate(plan))
    assert read_audio(tmp_path / "out" / "v2a-0.wav").num_samples == int(generated * 16000)
    video = read_video(tmp_path / "out" / "v2a-0.mp4")
    seconds = frames / fps
    assert video.duration == seconds and abs(video.audio.duration - seconds) < 0.03


def test_paper_presets_share_the_v2a_codes_conventions():
    """paper-i2a is the authors' V2A code with an image; paper-a2v and paper-joint carry its loop and
    binder conventions over. A preset drifting from paper-v2a in any of them fails here."""
    v2a = load_preset("paper-v2a")
    loop = {k: v2a["guidance"][k] for k in ("nudge", "window", "start", "end", "optimizer", "opt_steps")}
    for name in ("paper-i2a", "paper-a2v", "paper-joint"):
        preset = load_preset(name)
        assert {k: preset["guidance"][k] for k in loop} == loop, name
        assert preset["binder"] == v2a["binder"], name
    i2a = load_preset("paper-i2a")
    assert i2a["guidance"] == v2a["guidance"]
    assert {k: v for k, v in i2a["audio"].items() if k != "duration"} == v2a["audio"]
    assert i2a["run"]["steps"] == v2a["run"]["steps"] == 30

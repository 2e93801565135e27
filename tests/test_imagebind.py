"""The ImageBind binder: parity with reference outputs of the official implementation
(../shared/reference/imagebind), full-size structure, preprocessing, tokenizer, gradients, CLI."""

import hashlib
import json
import shutil

import click
import pytest
import torch
from click.testing import CliRunner
from media_helpers import blob_frames, tone, write_mp4
from reference import IMAGEBIND_REFERENCE
from safetensors.torch import load_file

from sah.cli import cli
from sah.errors import SahError
from sah.media import Audio, Image, Text, Video
from sah.plugins.binders import imagebind as imagebind_plugin
from sah.plugins.binders.imagebind import ImageBindBinder, load_towers, save_checkpoint, tokenizer
from sah.plugins.binders.imagebind import preprocess as P
from sah.plugins.binders.imagebind.model import TOWERS, ImageBindConfig, ImageBindModel, tower_prefixes

REFERENCE = IMAGEBIND_REFERENCE
needs_reference = pytest.mark.skipif(not (REFERENCE / "README.md").is_file(),
                                     reason=f"ImageBind reference fixtures not found at {REFERENCE}")
TINY = ImageBindConfig(out_embed_dim=24, vision_embed_dim=48, vision_num_blocks=2, vision_num_heads=3,
                       audio_embed_dim=40, audio_num_blocks=2, audio_num_heads=4, text_embed_dim=16,
                       text_num_blocks=2, text_num_heads=2)


@pytest.fixture(scope="module")
def reference_model():
    if not (REFERENCE / "README.md").is_file():
        pytest.skip(f"ImageBind reference fixtures not found at {REFERENCE}")
    config = ImageBindConfig.from_json(REFERENCE / "tiny_config.json")
    return load_towers(REFERENCE / "tiny_state_dict.safetensors", TOWERS, config)


@pytest.fixture
def random_checkpoint(tmp_path):
    """A tiny randomly initialised model saved the way `save_checkpoint` writes one."""
    torch.manual_seed(0)
    return save_checkpoint(ImageBindModel(TINY), tmp_path / "tiny.safetensors")


@needs_reference
@pytest.mark.parametrize("key, tower", [("vision_video", "vision"), ("vision_image", "vision"),
                                        ("audio", "audio"), ("text", "text")])
def test_tiny_reference_outputs(reference_model, key, tower):
    io = load_file(REFERENCE / "tiny_io.safetensors")
    x = io[f"input.{key}"]
    x = x.float() if x.is_floating_point() else x
    with torch.no_grad():
        out = reference_model({tower: x})[tower]
    torch.testing.assert_close(out, io[f"output.{key}"], rtol=1e-5, atol=1e-5)


@needs_reference
def test_binder_text_path_matches_reference(tmp_path):
    """Tokenizer + checkpoint found through the binder's own loading path (config JSON beside it)."""
    shutil.copy(REFERENCE / "tiny_state_dict.safetensors", tmp_path / "tiny.safetensors")
    shutil.copy(REFERENCE / "tiny_config.json", tmp_path / "tiny.json")
    io = load_file(REFERENCE / "tiny_io.safetensors")
    texts = json.loads(load_meta(REFERENCE / "tiny_io.safetensors")["texts"])
    binder = ImageBindBinder(str(tmp_path / "tiny.safetensors"))
    with torch.no_grad():
        out = binder.embed(Text(texts))
    torch.testing.assert_close(out, io["output.text"], rtol=1e-5, atol=1e-5)
    assert set(binder._towers) == {"text"}  # only the tower that was used was read


def load_meta(path):
    from safetensors import safe_open

    with safe_open(str(path), framework="pt") as f:
        return f.metadata()


@needs_reference
def test_huge_model_on_meta_matches_checkpoint_keys_and_shapes():
    reference = json.loads((REFERENCE / "huge_state_dict_shapes.json").read_text())["state_dict"]
    prefixes = tuple(p for tower in TOWERS for p in tower_prefixes(tower))
    expected = {k: v for k, v in reference.items() if k.startswith(prefixes)}
    with torch.device("meta"):
        model = ImageBindModel()
    assert len(expected) == 864
    assert {k: list(v.shape) for k, v in model.state_dict().items()} == {k: v["shape"] for k, v in expected.items()}
    buffers = {k for k, _ in model.named_buffers()}
    assert buffers == {k for k, v in expected.items() if v["kind"] == "buffer"}


@needs_reference
@pytest.mark.parametrize("name, rate", [("wav_a", 16000), ("wav_b", 16000), ("wav_c", 44100)])
def test_official_audio_preprocessing(name, rate):
    io = load_file(REFERENCE / "audio_preproc_io.safetensors")
    wave = (io[f"{name}.pcm_int16"].float() / 32768)[None, None]
    resampled = P.hann_sinc_resample(wave, rate, P.SAMPLE_RATE)
    assert P.audio_clip_ranges(resampled.shape[-1], 3) == [tuple(r) for r in io[f"{name}.clip_sample_ranges"].tolist()]
    mel, weights = P.audio_to_mel(wave, rate, clips=3, mode="official")
    diff = (mel[0] - io[f"{name}.output"]).abs()
    assert diff.max() < 2e-3 and diff.mean() < 2e-5
    torch.testing.assert_close(weights, torch.full((3,), 1 / 3))


@needs_reference
def test_fbank_pieces_match_reference():
    io = load_file(REFERENCE / "audio_preproc_io.safetensors")
    torch.testing.assert_close(P.kaldi_mel_banks(), io["kaldi_mel_banks_128x257"], rtol=0, atol=1e-6)
    resampled = P.hann_sinc_resample((io["wav_c.pcm_int16"].float() / 32768)[None], 44100, 16000)[0]
    torch.testing.assert_close(resampled, io["wav_c.resampled_16k"], rtol=0, atol=1e-6)
    clip = (io["wav_a.pcm_int16"].float() / 32768)[None, :32000]
    torch.testing.assert_close(P.fbank(clip - clip.mean())[0], io["wav_a.clip0_raw_fbank"], rtol=0, atol=1e-4)


def test_sah_audio_clips_do_not_leak_into_each_other():
    """In "sah" mode clip 1 of a 5 s waveform is exactly that 2 s span embedded on its own."""
    torch.manual_seed(1)
    wave = 0.3 * torch.randn(1, 1, 80000) + 0.05
    mel, weights = P.audio_to_mel(wave, 16000, clips=3, mode="sah")
    alone, _ = P.audio_to_mel(wave[..., 16000:48000], 16000, clips=3, mode="sah")
    assert mel.shape == (1, 3, 1, 128, 204) and alone.shape[1] == 1  # 2 s: three equal clips embedded once
    torch.testing.assert_close(mel[:, 1], alone[:, 0])
    official, _ = P.audio_to_mel(wave, 16000, clips=3, mode="official")
    assert (official[:, 1] - mel[:, 1]).abs().max() > 1e-2  # the reference's in-place leak is real


@needs_reference
def test_tokenizer_cases_and_shipped_vocabulary():
    data = json.loads((REFERENCE / "text_tokenizer_io.json").read_text())
    shipped = tokenizer.VOCAB_PATH.read_bytes()
    assert hashlib.sha256(shipped).hexdigest() == data["bpe_file_sha256"]
    tok = tokenizer.ClipTokenizer()
    assert tok.vocab_size == data["vocab_size"] and (tok.sot_id, tok.eot_id) == (data["sot_id"], data["eot_id"])
    for item in data["items"]:
        assert tok.encode(item["text"]) == item["bpe_ids"], item["text"]
        ids = tok([item["text"]])[0]
        assert ids.tolist() == item["ids_77"], item["text"]
        assert int(ids.argmax()) == item["eot_position_argmax"]
        assert tok.decode(item["bpe_ids"]) == item["decoded"]


def test_video_clip_sampling_rule():
    # 8 frames at 8 fps is shorter than a clip: every clip spans the whole video, first and last frame
    assert P.video_clip_frames(8, 8.0) == [(0, 7)] * 5
    # 10 s at 10 fps: starts k * 8 / 5 s, frames ceil(10 s) .. ceil(10 (s + 2)) - 1
    assert P.video_clip_frames(100, 10.0) == [(0, 19), (16, 35), (32, 51), (48, 67), (64, 83)]
    assert P.crop_offsets(224, 298, 3) == [(0, 0), (0, 37), (0, 74)]
    assert P.crop_offsets(300, 224, 3) == [(0, 0), (38, 0), (76, 0)]


def test_frame_subset_gives_the_same_embedding(random_checkpoint):
    binder = ImageBindBinder(str(random_checkpoint))
    torch.manual_seed(2)
    frames = torch.rand(1, 40, 3, 48, 64)
    index = binder.video_frames(40, 10.0)
    assert index == [0, 4, 8, 12, 16, 19, 23, 27, 31, 35]  # starts 0, 0.4, ... 1.6 s; first and last frame
    with torch.no_grad():
        full = binder.embed(Video(frames, 10.0))
        subset = binder.embed(Video(frames[:, index], 10.0, frame_indices=index, total_frames=40))
    torch.testing.assert_close(full, subset)
    with pytest.raises(ValueError, match="lacks frames"):
        binder.embed(Video(frames[:, :3], 10.0, frame_indices=(0, 1, 2), total_frames=40))


@pytest.mark.parametrize("preprocess", ["sah", "official"])
def test_gradients_reach_raw_waveform_and_frames(random_checkpoint, preprocess):
    binder = ImageBindBinder(str(random_checkpoint), preprocess=preprocess)
    torch.manual_seed(3)
    wave = (0.2 * torch.randn(1, 2, 44100 * 3)).requires_grad_(True)  # stereo, 44.1 kHz, 3 s
    frames = torch.rand(1, 12, 3, 40, 72).requires_grad_(True)  # any size, 6 fps
    pixels = torch.rand(1, 3, 100, 80).requires_grad_(True)
    audio_emb = binder.embed(Audio(wave, 44100))
    video_emb = binder.embed(Video(frames, 6.0))
    image_emb = binder.embed(Image(pixels))
    loss = (1 - binder.similarity(audio_emb, video_emb)).sum() + (1 - binder.similarity(image_emb, video_emb)).sum()
    loss.backward()
    for grad in (wave.grad, frames.grad, pixels.grad):
        assert torch.isfinite(grad).all() and grad.abs().sum() > 0
    if preprocess == "sah":
        torch.testing.assert_close(wave.grad[:, 0], wave.grad[:, 1])  # channels are averaged


def test_bfloat16_towers_give_float32_embeddings(random_checkpoint):
    binder = ImageBindBinder(str(random_checkpoint), dtype=torch.bfloat16)
    full = ImageBindBinder(str(random_checkpoint))
    audio = Audio(torch.from_numpy(tone(440, 1.0, 22050)), 22050)
    with torch.no_grad():
        low, high = binder.embed(audio), full.embed(audio)
    weight = binder.tower("audio").modality_trunks["audio"].blocks[0].mlp.fc1.weight
    assert low.dtype == torch.float32 and weight.dtype == torch.bfloat16
    assert float(binder.similarity(low, high)) > 0.99


def test_pth_checkpoint_and_errors(tmp_path, random_checkpoint, monkeypatch):
    state = load_file(random_checkpoint)
    pth = tmp_path / "tiny.pth"
    torch.save(state, pth)
    # tiny.json beside it (written by save_checkpoint) selects the tiny config for the .pth too
    with torch.no_grad():
        a = ImageBindBinder(str(pth)).embed(Text(["a dog barks"]))
        b = ImageBindBinder(str(random_checkpoint)).embed(Text(["a dog barks"]))
    torch.testing.assert_close(a, b, rtol=0, atol=0)

    monkeypatch.setenv("SAH_CACHE", str(tmp_path / "cache"))
    with pytest.raises(SahError, match=r"dl\.fbaipublicfiles\.com/imagebind/imagebind_huge\.pth.*--binder-model PATH"):
        ImageBindBinder()
    evil = tmp_path / "evil.pth"
    torch.save({"w": torch.zeros(1), "obj": ImageBindConfig()}, evil)
    with pytest.raises(SahError, match="weights-only"):
        ImageBindBinder(str(evil))
    with pytest.raises(SahError, match="wrong file or config"):
        ImageBindBinder(str(random_checkpoint), config="huge").tower("audio")
    with pytest.raises(SahError, match="preprocess must be"):
        ImageBindBinder(str(random_checkpoint), preprocess="torchaudio")


def test_convert_command_keeps_only_the_asked_towers(tmp_path, random_checkpoint):
    group = click.Group()
    imagebind_plugin.register_commands(group)
    pth = tmp_path / "full.pth"
    torch.save(load_file(random_checkpoint), pth)
    target = tmp_path / "av.safetensors"
    result = CliRunner().invoke(group, ["imagebind", "convert", str(pth), str(target), "--towers", "audio,vision",
                                        "--config", str(random_checkpoint.with_suffix(".json"))])
    assert result.exit_code == 0, result.output
    keys = set(load_file(target))
    assert keys and all(k.split(".")[1] in ("audio", "vision") for k in keys)
    binder = ImageBindBinder(str(target))  # av.json beside it selects the tiny config
    wave = Audio(torch.from_numpy(tone(300, 1.5, 16000)), 16000)
    with torch.no_grad():
        torch.testing.assert_close(binder.embed(wave), ImageBindBinder(str(random_checkpoint)).embed(wave))
    with pytest.raises(SahError, match="no text tower|lacks"):
        binder.embed(Text(["a dog"]))


@pytest.mark.slow
def test_cli_v2a_end_to_end(tmp_path, random_checkpoint):
    clip = write_mp4(tmp_path / "clip.mp4", blob_frames(3, 16, 64, 48), fps=8, audio=tone(440, 2.0, 44100))
    out = tmp_path / "out"
    result = CliRunner().invoke(cli, ["run", "--gen-audio", "toy-audio", "--binder", "imagebind", "--binder-model",
                                      str(random_checkpoint), "--video", str(clip), "--steps", "5", "--out", str(out),
                                      "--quiet"], catch_exceptions=False)
    assert result.exit_code == 0, result.output
    assert {p.suffix for p in out.iterdir()} == {".wav", ".mp4", ".png", ".json"}
    sidecar = json.loads((out / "v2a-0.json").read_text())
    assert sidecar["trace"] and all("audio~condition" in step["similarity"] for step in sidecar["trace"])
    assert -1.0 <= sidecar["final_similarity"]["audio~condition"] <= 1.0


def test_default_checkpoint_downloads_once_into_the_cache(tmp_path, monkeypatch):
    """No --binder-model: the official URL is fetched once into $SAH_CACHE (served here from
    localhost), then found there without a network."""
    import functools
    import http.server
    import threading

    from sah import hub

    torch.manual_seed(0)
    model = ImageBindModel(TINY)
    served = tmp_path / "served"
    served.mkdir()
    torch.save(model.state_dict(), served / "imagebind_huge.pth")
    config = tmp_path / "tiny-config.json"
    config.write_text(json.dumps(TINY.to_dict()))
    handler = functools.partial(http.server.SimpleHTTPRequestHandler, directory=str(served))
    server = http.server.ThreadingHTTPServer(("127.0.0.1", 0), handler)
    threading.Thread(target=server.serve_forever, daemon=True).start()
    url = f"http://127.0.0.1:{server.server_port}/imagebind_huge.pth"
    monkeypatch.setattr(imagebind_plugin, "CHECKPOINT_URL", url)
    monkeypatch.setenv("SAH_CACHE", str(tmp_path / "cache"))
    monkeypatch.delenv("HF_HUB_OFFLINE", raising=False)
    hub.reachable.cache_clear()
    cached = tmp_path / "cache" / "imagebind" / "imagebind_huge.pth"
    try:
        assert ImageBindBinder.weights(None, {}) == [(url, None)]
        hub.check_weights([(url, "--binder-model")])  # reachable: the up-front check lets it through
        first = ImageBindBinder(config=str(config)).embed(Text(["a dog barks"]))
    finally:
        server.shutdown()
        server.server_close()
    assert cached.is_file() and not [p for p in cached.parent.iterdir() if p.name.startswith(".")]
    assert ImageBindBinder.weights(None, {}) == [(str(cached), None)]
    again = ImageBindBinder(config=str(config)).embed(Text(["a dog barks"]))  # no server now
    assert torch.equal(first, again)
    # the downloaded weights are the served ones: the same as a checkpoint passed by path
    direct = ImageBindBinder(model=str(save_checkpoint(model, tmp_path / "direct.safetensors")))
    assert torch.allclose(first, direct.embed(Text(["a dog barks"])), atol=1e-6)


def test_default_checkpoint_offline_is_one_line(tmp_path, monkeypatch):
    monkeypatch.setenv("SAH_CACHE", str(tmp_path / "cache"))
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    with pytest.raises(SahError) as info:
        ImageBindBinder()
    message = str(info.value)
    assert "\n" not in message and imagebind_plugin.CHECKPOINT_URL in message and "--binder-model PATH" in message
    assert not (tmp_path / "cache" / "imagebind" / "imagebind_huge.pth").exists()

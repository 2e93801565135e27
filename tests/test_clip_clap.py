"""The `clip`, `clap` and `clip+clap` binders on tiny, randomly initialised CLIPModel / ClapModel
built from config here, saved, and loaded back through the plugins' own loading path."""

import json
import math

import numpy as np
import pytest
import torch
import torch.nn.functional as F
from click.testing import CliRunner
from media_helpers import blob_frames, tone, write_mp4
from transformers import (
    ClapConfig,
    ClapFeatureExtractor,
    ClapModel,
    CLIPConfig,
    CLIPImageProcessor,
    CLIPModel,
    CLIPTokenizer,
    RobertaTokenizer,
)

from sah.aligner import ngd
from sah.cli import cli
from sah.errors import SahError
from sah.generator import GenerationRequest
from sah.media import Audio, Image, Text, Video
from sah.plugins.binders.clap import ClapBinder, ClapFrontEnd
from sah.plugins.binders.clip import ClipBinder, ClipPreprocess, evenly_spaced
from sah.plugins.binders.pivot import ClipClapBinder, label_distribution, read_labels, split_models
from sah.plugins.generators.toy import ToyAudioGenerator

LETTERS = list("abcdefghijklmnopqrstuvwxyz.,")
LABELS = ["dog barking", "rain falling", "car engine", "bell ringing"]


def _clip_tokenizer(folder):
    # a character-level BPE: no merges, every letter a token, `</w>` marking word ends
    vocab = ["<|startoftext|>", "<|endoftext|>", *LETTERS, *(c + "</w>" for c in LETTERS)]
    (folder / "vocab.json").write_text(json.dumps({t: i for i, t in enumerate(vocab)}))
    (folder / "merges.txt").write_text("#version: 0.2\n")
    return CLIPTokenizer(str(folder / "vocab.json"), str(folder / "merges.txt")), len(vocab)


def _roberta_tokenizer(folder):
    vocab = ["<s>", "<pad>", "</s>", "<unk>", "<mask>", *LETTERS, *("\u0120" + c for c in LETTERS), "\u0120"]
    (folder / "vocab.json").write_text(json.dumps({t: i for i, t in enumerate(vocab)}))
    (folder / "merges.txt").write_text("#version: 0.2\n")
    return RobertaTokenizer(str(folder / "vocab.json"), str(folder / "merges.txt")), len(vocab)


@pytest.fixture(scope="module")
def tiny_clip(tmp_path_factory):
    folder = tmp_path_factory.mktemp("tiny-clip")
    tokenizer, vocab_size = _clip_tokenizer(folder)
    torch.manual_seed(0)
    config = CLIPConfig(
        text_config=dict(vocab_size=vocab_size, hidden_size=32, intermediate_size=37, num_hidden_layers=2,
                         num_attention_heads=4, max_position_embeddings=77, bos_token_id=0, eos_token_id=1,
                         pad_token_id=1),
        vision_config=dict(image_size=32, patch_size=8, hidden_size=32, intermediate_size=37, num_hidden_layers=2,
                           num_attention_heads=4),
        projection_dim=16)
    CLIPModel(config).save_pretrained(folder)
    tokenizer.save_pretrained(folder)
    CLIPImageProcessor(size={"shortest_edge": 32}, crop_size={"height": 32, "width": 32}).save_pretrained(folder)
    return folder


def _save_tiny_clap(folder, fusion):
    tokenizer, vocab_size = _roberta_tokenizer(folder)
    torch.manual_seed(1)
    config = ClapConfig(
        text_config=dict(vocab_size=vocab_size, hidden_size=32, intermediate_size=37, num_hidden_layers=2,
                         num_attention_heads=4, max_position_embeddings=64),
        audio_config=dict(spec_size=128, num_mel_bins=64, window_size=4, patch_size=8, patch_stride=8, hidden_size=32,
                          depths=[1, 1], num_attention_heads=[2, 2], patch_embeds_hidden_size=16,
                          enable_fusion=fusion, fusion_type="aff_2d" if fusion else None),
        projection_dim=16)
    ClapModel(config).save_pretrained(folder)
    tokenizer.save_pretrained(folder)
    # as laion/clap-htsat-*: 48 kHz, 64 mels from 50 Hz to 14 kHz; 1 s windows keep the tiny model fast
    ClapFeatureExtractor(max_length_s=1, frequency_min=50, frequency_max=14000,
                         truncation="fusion" if fusion else "rand_trunc").save_pretrained(folder)
    return folder


@pytest.fixture(scope="module")
def tiny_clap(tmp_path_factory):
    return _save_tiny_clap(tmp_path_factory.mktemp("tiny-clap"), fusion=False)


@pytest.fixture(scope="module")
def label_file(tmp_path_factory):
    path = tmp_path_factory.mktemp("labels") / "labels.txt"
    path.write_text("# a tiny vocabulary\n" + "\n".join(LABELS) + "\n\ndog barking\n")
    return path


def _image_u8(h, w, seed):
    """A smooth random 8-bit image `[H, W, 3]`, like a frame of natural video."""
    g = torch.Generator().manual_seed(seed)
    low = torch.rand(1, 3, max(2, h // 8), max(2, w // 8), generator=g)
    return (F.interpolate(low, size=(h, w), mode="bilinear") * 255).round().byte()[0].permute(1, 2, 0).numpy()


def _as_float(image_u8):
    return torch.from_numpy(image_u8).permute(2, 0, 1).float() / 255


# --- front ends --------------------------------------------------------------------------------


@pytest.mark.parametrize("shortest", [224, 32])
@pytest.mark.parametrize("kind", ["smooth", "noise"])
def test_clip_preprocessing_matches_clip_image_processor(shortest, kind):
    processor = CLIPImageProcessor(size={"shortest_edge": shortest}, crop_size={"height": shortest, "width": shortest})
    preprocess = ClipPreprocess.from_processor(processor)
    std = np.asarray(processor.image_std).reshape(3, 1, 1)
    rng = np.random.default_rng(shortest)
    for h, w in [(300, 400), (480, 270), (37, 53), (20, 20), (223, 225), (24, 64)]:
        image = _image_u8(h, w, h * w) if kind == "smooth" else (rng.random((h, w, 3)) * 255).astype(np.uint8)
        reference = processor(images=image, return_tensors="np")["pixel_values"][0]
        ours = preprocess(_as_float(image)[None])[0].numpy()
        assert ours.shape == reference.shape == (3, shortest, shortest)
        # in 8-bit steps before normalisation: the processor rounds after each of PIL's two passes
        steps = np.abs(ours - reference) * std * 255
        assert steps.max() <= 1.25 and steps.mean() <= 0.6, ((h, w), steps.max(), steps.mean())


@pytest.mark.parametrize("truncation", ["rand_trunc", "fusion"])
@pytest.mark.parametrize("padding", ["repeatpad", "repeat", "pad"])
def test_clap_front_end_matches_feature_extractor(truncation, padding, monkeypatch):
    extractor = ClapFeatureExtractor(max_length_s=1, frequency_min=50, truncation=truncation, padding=padding)
    front_end = ClapFrontEnd.from_feature_extractor(extractor)
    # the extractor's random fusion crops, pinned to the front end's documented middle-of-range choice
    monkeypatch.setattr(np.random, "choice", lambda r: r[len(r) // 2])
    rng = np.random.default_rng(0)
    # short, exact, less than a hop longer (fusion: still "not longer"), longer
    for n, longer_expected in ((20_000, False), (48_000, False), (48_300, truncation == "rand_trunc"),
                               (70_000, True)):
        wave = (0.1 * rng.standard_normal(n)).astype(np.float32)
        # rand_trunc's random crop is pinned to the start: compare with the extractor on that crop
        given = wave[:48_000] if truncation == "rand_trunc" else wave
        reference = extractor(given, sampling_rate=48_000, return_tensors="np")["input_features"][0]
        ours, longer = front_end(torch.from_numpy(wave)[None])
        assert ours.shape[1:] == reference.shape
        np.testing.assert_allclose(ours[0].numpy(), reference, atol=1e-3)  # dB; measured < 1e-4
        assert bool(longer[0, 0]) == longer_expected


def test_clap_front_end_matches_at_the_real_ten_second_setting():
    extractor = ClapFeatureExtractor(frequency_min=50, truncation="rand_trunc")  # laion/clap-htsat-unfused
    wave = tone(440, 3.2, 48_000)[0] + 0.05 * np.random.default_rng(1).standard_normal(153_600).astype(np.float32)
    reference = extractor(wave, sampling_rate=48_000, return_tensors="np")["input_features"][0]
    ours, _ = ClapFrontEnd.from_feature_extractor(extractor)(torch.from_numpy(wave)[None])
    assert ours.shape[1:] == reference.shape == (1, 1001, 64)
    np.testing.assert_allclose(ours[0].numpy(), reference, atol=1e-3)


def test_evenly_spaced_frames():
    assert evenly_spaced(30, 8) == [0, 4, 8, 12, 17, 21, 25, 29]
    assert evenly_spaced(3, 8) == [0, 1, 2]
    assert evenly_spaced(9, 1) == [4]
    assert evenly_spaced(1, 8) == [0]


# --- loading and embedding ---------------------------------------------------------------------


def test_clip_binder_loads_tiny_model_and_matches_transformers(tiny_clip):
    binder = ClipBinder(str(tiny_clip))
    model, processor = CLIPModel.from_pretrained(tiny_clip), CLIPImageProcessor.from_pretrained(tiny_clip)
    tokenizer = CLIPTokenizer.from_pretrained(tiny_clip)
    images = [_image_u8(32, 32, s) for s in (1, 2)]  # the crop size: no resampling on either side
    with torch.no_grad():
        expected = model.get_image_features(**processor(images=images, return_tensors="pt")).pooler_output
        text = model.get_text_features(**tokenizer(["a dog barks"], return_tensors="pt")).pooler_output
        ours = binder.embed(Image(torch.stack([_as_float(i) for i in images])))
    torch.testing.assert_close(ours, F.normalize(expected, dim=-1), atol=1e-5, rtol=0)
    torch.testing.assert_close(binder.embed(Text(["a dog barks"])), F.normalize(text, dim=-1), atol=1e-5, rtol=0)
    # a video is the normalised mean of its sampled frames' unit embeddings
    clip = torch.stack([_as_float(i) for i in images])[None]
    torch.testing.assert_close(binder.embed(Video(clip, fps=2.0)), F.normalize(ours.mean(0, keepdim=True), dim=-1))


@pytest.mark.parametrize("fusion", [False, True])
def test_clap_binder_loads_tiny_model_and_matches_transformers(fusion, tiny_clap, tmp_path):
    folder = tiny_clap if not fusion else _save_tiny_clap(tmp_path, fusion=True)
    binder = ClapBinder(str(folder))
    model, extractor = ClapModel.from_pretrained(folder), ClapFeatureExtractor.from_pretrained(folder)
    wave = tone(660, 0.6, 48_000)[0]
    features = extractor(wave, sampling_rate=48_000, return_tensors="pt")
    with torch.no_grad():
        # is_longer pinned False for short clips (the extractor marks a random one in a short batch)
        expected = model.get_audio_features(input_features=features["input_features"],
                                            is_longer=torch.zeros(1, 1, dtype=torch.bool)).pooler_output
        ours = binder.embed(Audio(torch.from_numpy(wave)[None], 48_000))
    assert features["input_features"].shape[1] == (4 if fusion else 1)
    torch.testing.assert_close(ours, F.normalize(expected, dim=-1), atol=1e-4, rtol=0)
    assert binder.embed(Text(["rain", "a dog barks"])).shape == (2, 16)


def test_gradients_reach_raw_frames_and_raw_waveform(tiny_clip, tiny_clap):
    clip = ClipBinder(str(tiny_clip), frames=4)
    frames = torch.rand(2, 10, 3, 40, 56, requires_grad=True)
    clip.embed(Video(frames, fps=10.0)).sum().backward()
    used = frames.grad.abs().sum(dim=(0, 2, 3, 4))
    assert torch.isfinite(frames.grad).all()
    assert (used[[0, 3, 6, 9]] > 0).all() and used[[1, 2, 4, 5, 7, 8]].eq(0).all()  # only the sampled frames

    clap = ClapBinder(str(tiny_clap))
    wave = (0.3 * torch.randn(1, 2, 12_000)).requires_grad_(True)  # stereo, 16 kHz, repeat-padded to 1 s
    clap.embed(Audio(wave, 16_000)).sum().backward()
    assert torch.isfinite(wave.grad).all() and wave.grad.abs().sum(dim=-1).gt(0).all()  # both channels


def test_missing_models_are_one_line_errors(tmp_path, monkeypatch):
    import huggingface_hub.constants

    with pytest.raises(SahError, match="does not exist"):
        ClipBinder(str(tmp_path / "no-such-clip"))
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    monkeypatch.setattr(huggingface_hub.constants, "HF_HUB_OFFLINE", True)
    for cls, name in ((ClipBinder, "sah-tests/no-such-clip"), (ClapBinder, "sah-tests/no-such-clap")):
        with pytest.raises(SahError) as info:
            cls(name)
        assert "\n" not in str(info.value) and f"'{name}'" in str(info.value)
        assert "--binder-model PATH" in str(info.value)


def test_open_clip_names_say_open_clip_is_missing():
    with pytest.raises(SahError, match=r"needs the open_clip package, which is not installed") as info:
        ClipBinder("open_clip:ViT-B-32/laion2b_s34b_b79k")
    assert "\n" not in str(info.value)
    with pytest.raises(SahError, match="open_clip:ARCH/PRETRAINED"):
        ClipBinder("open_clip:ViT-B-32")


# --- the text pivot ----------------------------------------------------------------------------


def test_labels_and_model_names():
    shipped = read_labels()
    assert len(shipped) >= 300 and "dog barking" in shipped and len(set(shipped)) == len(shipped)
    assert split_models("a,b", "", "") == ("a", "b")
    assert split_models(",b", "opt-clip", "") == ("opt-clip", "b")
    assert split_models(None, "", "opt-clap") == ("openai/clip-vit-large-patch14", "opt-clap")
    with pytest.raises(SahError, match="CLIP_ID,CLAP_ID"):
        split_models("only-one", "", "")


def test_bad_pivot_options_fail_before_loading(tmp_path):
    cases = [({"model": "a,b,c"}, "CLIP_ID,CLAP_ID"), ({"labels": str(tmp_path / "nope.txt")}, "does not exist"),
             ({"space": "audio"}, "binder.space"), ({"temperature": 0.0}, "binder.temperature"),
             ({"clap_template": "the sound of"}, "{label}"), ({"clip_template": "{label} {x}"}, "{label}")]
    for kwargs, message in cases:
        model = kwargs.pop("model", "/nonexistent-clip,/nonexistent-clap")  # loading would fail differently
        with pytest.raises(SahError, match=message):
            ClipClapBinder(model, **kwargs)


def test_label_distribution_keeps_top_k():
    labels = F.normalize(torch.eye(4), dim=-1)
    x = torch.tensor([[0.9, 0.5, 0.1, -0.2]])
    p = label_distribution(x, labels, temperature=0.1, top_k=2)
    expected = torch.softmax(F.normalize(x, dim=-1)[:, :2] / 0.1, dim=-1)
    torch.testing.assert_close(p[:, :2], expected)
    assert p[:, 2:].eq(0).all()
    assert label_distribution(x, labels, 0.1, 0).gt(0).all()


@pytest.fixture(scope="module")
def pivot(tiny_clip, tiny_clap, label_file):
    return ClipClapBinder(f"{tiny_clip},{tiny_clap}", labels=str(label_file), temperature=0.05, top_k=2)


def test_pivot_embeddings_are_the_documented_mixtures(pivot, tiny_clip, tiny_clap):
    assert pivot.labels == LABELS  # comment, blank line and duplicate dropped
    clip, processor = CLIPModel.from_pretrained(tiny_clip), CLIPImageProcessor.from_pretrained(tiny_clip)
    clip_tok = CLIPTokenizer.from_pretrained(tiny_clip)
    clap, extractor = ClapModel.from_pretrained(tiny_clap), ClapFeatureExtractor.from_pretrained(tiny_clap)
    clap_tok = RobertaTokenizer.from_pretrained(tiny_clap)
    unit = lambda t: F.normalize(t, dim=-1)  # noqa: E731

    frames = [_image_u8(32, 32, 10 + i) for i in range(3)]
    wave = tone(300, 0.8, 48_000)[0]
    with torch.no_grad():
        per_frame = unit(clip.get_image_features(**processor(images=frames, return_tensors="pt")).pooler_output)
        c_v = unit(per_frame.mean(0, keepdim=True))
        clip_labels = unit(torch.cat([clip.get_text_features(**clip_tok([f"a photo of {x}."], return_tensors="pt"))
                                      .pooler_output for x in LABELS]))
        clap_labels = unit(torch.cat([clap.get_text_features(
            **clap_tok([f"This is a sound of {x}."], return_tensors="pt")).pooler_output for x in LABELS]))
        c_a = unit(clap.get_audio_features(**extractor(wave, sampling_rate=48_000, return_tensors="pt")).pooler_output)

        def top2_softmax(c, table):
            logits = c @ table.T / 0.05
            keep = logits >= logits.topk(2).values[:, -1:]
            return torch.where(keep, logits, torch.tensor(-math.inf)).softmax(-1)

        p_v, q_a = top2_softmax(c_v, clip_labels), top2_softmax(c_a, clap_labels)
        m_v, m_a = unit(p_v @ clap_labels), unit(q_a @ clip_labels)
        video = Video(torch.stack([_as_float(f) for f in frames])[None], fps=3.0)
        e_v = pivot.embed(video)
        e_a = pivot.embed(Audio(torch.from_numpy(wave)[None], 48_000))

    assert int((p_v > 0).sum()) == int((q_a > 0).sum()) == 2
    half = math.sqrt(0.5)
    torch.testing.assert_close(e_v, torch.cat([half * m_v, half * c_v], dim=-1), atol=2e-5, rtol=0)
    torch.testing.assert_close(e_a, torch.cat([half * c_a, half * m_a], dim=-1), atol=2e-5, rtol=0)
    # the aligner's cosine is the mean of the two pivot cosines
    expected = 0.5 * F.cosine_similarity(c_a, m_v) + 0.5 * F.cosine_similarity(c_v, m_a)
    torch.testing.assert_close(pivot.similarity(e_a, e_v), expected, atol=1e-5, rtol=0)


def test_pivot_space_clap_is_the_v2a_pivot_alone(tiny_clip, tiny_clap, label_file, pivot):
    clap_only = ClipClapBinder(f"{tiny_clip},{tiny_clap}", labels=str(label_file), temperature=0.05, top_k=2,
                               space="clap")
    video = Video(torch.rand(1, 4, 3, 40, 48), fps=4.0)
    audio = Audio(0.2 * torch.randn(1, 1, 16_000), 16_000)
    with torch.no_grad():
        e_v, e_a, both_v, both_a = (clap_only.embed(video), clap_only.embed(audio), pivot.embed(video),
                                    pivot.embed(audio))
    d_clap = 16
    assert e_v[:, d_clap:].eq(0).all() and e_a[:, d_clap:].eq(0).all()
    # the CLAP-space halves agree with the "both" binder's, up to the √α weight
    torch.testing.assert_close(e_v[:, :d_clap], both_v[:, :d_clap] * math.sqrt(2), atol=1e-5, rtol=0)
    torch.testing.assert_close(e_a[:, :d_clap], both_a[:, :d_clap] * math.sqrt(2), atol=1e-5, rtol=0)
    text = clap_only.embed(Text(["dog barking"]))
    assert text.shape == (1, 32) and torch.isclose(text.norm(), torch.tensor(1.0))


def test_a_guided_v2a_step_lowers_the_pivot_loss(pivot):
    condition = Video(torch.from_numpy(blob_frames(3, 6, 48, 40)).permute(0, 3, 1, 2).float() / 255, fps=6.0)
    with torch.no_grad():
        target = pivot.embed(condition)
    generator = ToyAudioGenerator()
    trajectory = generator.prepare(GenerationRequest(prompts=[""], seeds=[7], num_steps=10))
    latents = trajectory.latents
    for i in range(5):
        latents = generator.denoise_step(trajectory, latents, i)[1]
    with torch.no_grad():
        noise = generator.predict_noise(trajectory, latents, 5)

    def loss(z):
        audio = generator.decode(generator.predict_x0(trajectory, z, noise, 5))
        return 1 - pivot.similarity(pivot.embed(audio), target)

    z = latents.detach().requires_grad_(True)
    before = loss(z)
    (grad,) = torch.autograd.grad(before.sum(), z)
    before = before.detach()
    assert torch.isfinite(grad).all() and grad.norm() > 0
    with torch.no_grad():
        after = loss(ngd(z.detach(), grad, {}, lr=0.002))
    assert float(after) < float(before)


# --- the command line --------------------------------------------------------------------------


def test_sah_run_v2a_with_the_text_pivot_end_to_end(tiny_clip, tiny_clap, tmp_path):
    clip_mp4 = write_mp4(tmp_path / "clip.mp4", blob_frames(2, 12, 48, 40), fps=12,
                         audio=tone(440, 1.0, 44_100, channels=2))
    out = tmp_path / "out"
    result = CliRunner().invoke(cli, ["run", "--gen-audio", "toy-audio", "--binder", "clip+clap", "--binder-model",
                                      f"{tiny_clip},{tiny_clap}", "--video", str(clip_mp4), "--steps", "5",
                                      "--out", str(out), "--quiet"], catch_exceptions=False)
    assert result.exit_code == 0, result.output
    assert sorted(p.name for p in out.iterdir()) == ["v2a-0.json", "v2a-0.mp4", "v2a-0.png", "v2a-0.wav"]
    sidecar = json.loads((out / "v2a-0.json").read_text())
    assert sidecar["config"]["binder"]["name"] == "clip+clap"
    assert sidecar["config"]["binder"]["model"] == f"{tiny_clip},{tiny_clap}"
    assert sidecar["terms"] == ["audio~condition"]
    assert len(sidecar["trace"]) == 4  # steps 1..4 of 5 are guided (start 0.2)
    sims = [r["similarity"]["audio~condition"] for r in sidecar["trace"]] + [
        sidecar["final_similarity"]["audio~condition"]]
    assert all(math.isfinite(s) and -1 <= s <= 1 for s in sims)


@pytest.mark.parametrize("binder, missing", [("clip", "audio"), ("clap", "video")])
def test_sah_run_refuses_a_binder_that_cannot_bridge_v2a_before_loading(binder, missing, tmp_path, monkeypatch):
    def refuse(*args, **kwargs):
        raise AssertionError("a model was loaded")

    for cls in (ClipBinder, ClapBinder, ToyAudioGenerator):
        monkeypatch.setattr(cls, "__init__", refuse)
    clip_mp4 = write_mp4(tmp_path / "clip.mp4", blob_frames(1, 4, 32, 32), fps=4)
    result = CliRunner().invoke(cli, ["run", "--binder", binder, "--video", str(clip_mp4), "--out",
                                      str(tmp_path / "out"), "--quiet"])
    assert result.exit_code == 2, (result.output, result.exception)
    assert f"binder '{binder}' cannot embed {missing}" in result.stderr
    assert len(result.stderr.strip().splitlines()) == 1


def test_sah_plugins_lists_the_three_binders_with_their_modalities():
    result = CliRunner().invoke(cli, ["plugins", "--json"])
    assert result.exit_code == 0
    rows = {r["name"]: r for r in json.loads(result.output)["plugins"] if r["kind"] == "binder"}
    assert rows["clip"]["modalities"] == ["image", "text", "video"]
    assert rows["clap"]["modalities"] == ["audio", "text"]
    assert rows["clip+clap"]["modalities"] == ["audio", "image", "text", "video"]

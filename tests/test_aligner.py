import math
import warnings

import pytest
import torch
from dummy_plugins import DummyAudio, DummyBinder, DummyVideo, _basis
from media_helpers import span_mask

from sah import GenerationRequest, GuidanceSettings, Modality, Term, align
from sah.aligner import adam, lockstep, ngd, sgd

A, V = Modality.AUDIO, Modality.VIDEO


def request(n=2, steps=10, seed=0):
    return GenerationRequest(prompts=[""] * n, seeds=list(range(seed, seed + n)), num_steps=steps)


def test_lockstep_matches_by_progress():
    ticks = lockstep({A: 4, V: 2})
    assert ticks == [{A: 0}, {A: 1, V: 0}, {A: 2}, {A: 3, V: 1}]
    assert lockstep({A: 3, V: 3}) == [{A: i, V: i} for i in range(3)]


def test_update_rules():
    z = torch.zeros(2, 4)
    g = torch.tensor([[3.0, 4.0, 0, 0], [0, 0, 0, 1e-3]])
    assert torch.allclose(sgd(z, g, {}, 0.5), -0.5 * g)
    step = ngd(z, g, {}, 0.1)
    # every sample moves by lr·√d whatever the gradient's magnitude
    assert torch.allclose(step.norm(dim=1), torch.full((2,), 0.1 * math.sqrt(4)))
    first = adam(z, g, {}, 0.1)
    assert torch.allclose(first[g != 0].abs(), torch.full_like(first[g != 0], 0.1), atol=1e-5)


def test_unguided_matches_plain_sampling():
    gen = DummyAudio()
    out = align({A: gen}, {A: request()}, settings=GuidanceSettings(enabled=False))
    traj = gen.prepare(request())
    z = traj.latents
    for i in range(traj.num_steps):
        _, z = gen.denoise_step(traj, z, i)
    assert torch.allclose(out.latents[A], z)
    assert out.trace == []


def test_condition_guidance_raises_similarity_and_respects_window():
    gen, binder = DummyAudio(), DummyBinder()
    target = torch.tensor([[1.0, -1.0, 1.0, -1.0]])
    settings = GuidanceSettings(start=0.2, end=0.8, lr={"audio": 0.4})
    terms = [Term(A, "condition")]
    guided = align({A: gen}, {A: request(steps=10)}, binder, terms, {"condition": target}, settings)
    plain = align({A: DummyAudio()}, {A: request(steps=10)}, DummyBinder(), terms, {"condition": target},
                  GuidanceSettings(enabled=False))
    assert [r["steps"]["audio"] for r in guided.trace] == [2, 3, 4, 5, 6, 7]
    assert min(guided.final_similarity["audio~condition"]) > 0.9
    assert max(plain.final_similarity["audio~condition"]) < 0.9
    # the trace's similarity rises while guided
    first, last = guided.trace[0]["similarity"]["audio~condition"], guided.trace[-1]["similarity"]["audio~condition"]
    assert all(b > a for a, b in zip(first, last))


def test_condition_embedding_is_not_recomputed_per_step():
    gen, binder = DummyAudio(), DummyBinder()
    align({A: gen}, {A: request(steps=8)}, binder, [Term(A, "condition")], {"condition": torch.ones(1, 4)})
    # one audio embed per guided step plus one for the final similarity; never a video/text embed
    guided_steps = sum(1 for i in range(8) if i / 8 >= 0.2)
    assert binder.calls[Modality.AUDIO] == guided_steps + 1
    assert binder.calls[Modality.VIDEO] == binder.calls[Modality.TEXT] == 0


def test_joint_guides_both_and_decodes_only_binder_frames():
    audio, video, binder = DummyAudio(), DummyVideo(), DummyBinder()
    result = align({A: audio, V: video}, {A: request(steps=6), V: request(steps=3)}, binder,
                   [Term(A, "video")], {}, GuidanceSettings(start=0.0))
    assert len(result.trace) == 6  # every tick has a guided stepping generator
    assert result.media[V].num_frames == 6  # the final decode is full
    assert [f for f in binder.frames_seen[:-1] if f is not None] and all(
        f == (0, 2, 3) for f in binder.frames_seen[:-1])
    assert binder.frames_seen[-1] is None


def test_nan_guard_skips_update_and_output_is_finite():
    class NaNBinder(DummyBinder):
        def embed(self, media):
            return super().embed(media) * float("nan")

    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        result = align({A: DummyAudio()}, {A: request()}, NaNBinder(), [Term(A, "condition")],
                       {"condition": torch.ones(1, 4)}, GuidanceSettings(start=0.0))
    assert any("non-finite" in str(w.message) for w in caught)
    assert all(r["skipped"] == ["audio"] for r in result.trace)
    assert torch.isfinite(result.media[A].waveform).all()
    unguided = align({A: DummyAudio()}, {A: request()}, settings=GuidanceSettings(enabled=False))
    assert torch.allclose(result.latents[A], unguided.latents[A])


@pytest.mark.parametrize("optimizer", ["adam", "sgd", "ngd"])
def test_each_update_rule_and_opt_steps(optimizer):
    binder = DummyBinder()
    target = torch.tensor([[1.0, 1.0, -1.0, -1.0]])
    result = align({A: DummyAudio()}, {A: request()}, binder, [Term(A, "condition")], {"condition": target},
                   GuidanceSettings(optimizer=optimizer, lr={"audio": 0.4 if optimizer != "sgd" else 2.0},
                                    opt_steps=2, start=0.0))
    assert min(result.final_similarity["audio~condition"]) > 0.8


def test_prompt_tuning_updates_prompt_embeddings():
    gen = DummyAudio()
    binder = DummyBinder()
    req = request(steps=6)
    result = align({A: gen}, {A: req}, binder, [Term(A, "text")], {"text": torch.ones(1, 4)},
                   GuidanceSettings(start=0.0, prompt_tuning=True, prompt_lr=0.5, lr={"audio": 0.0}))
    plain = align({A: DummyAudio()}, {A: req}, DummyBinder(), [Term(A, "text")], {"text": torch.ones(1, 4)},
                  GuidanceSettings(enabled=False))
    # the latent's own lr is 0: the samples moved toward the text only through the prompt embeddings
    gains = [a - b for a, b in zip(result.final_similarity["audio~text"], plain.final_similarity["audio~text"])]
    assert min(gains) > 0.1


def test_clip_limits_gradient_norm():
    torch.manual_seed(0)
    results = []
    for clip in (0.0, 1e-6):
        r = align({A: DummyAudio()}, {A: request()}, DummyBinder(), [Term(A, "condition")],
                  {"condition": torch.ones(1, 4)}, GuidanceSettings(optimizer="sgd", lr={"audio": 1.0},
                                                                     clip=clip, start=0.0))
        results.append(r.latents[A])
    base = align({A: DummyAudio()}, {A: request()}, settings=GuidanceSettings(enabled=False)).latents[A]
    assert (results[1] - base).abs().max() < 1e-4 < (results[0] - base).abs().max()


def test_window_counts_as_configured():
    """The released code guides i > int(0.2·N): 23 of 30 steps; sah's progress window 0.2 <= i/N: 24."""
    progress, after = GuidanceSettings(start=0.2), GuidanceSettings(start=0.2, window="after")
    assert [i for i in range(30) if progress.guides(i, 30)] == list(range(6, 30))
    assert [i for i in range(30) if after.guides(i, 30)] == list(range(7, 30))
    assert [i for i in range(10) if after.guides(i, 10)] == list(range(3, 10))
    assert [i for i in range(10) if GuidanceSettings(start=0.2, end=0.8, window="after").guides(i, 10)] == \
        [3, 4, 5, 6, 7]


@pytest.mark.parametrize("nudge", ["current", "stepped"])
def test_nudge_acts_where_configured(nudge):
    """Only the last step guided, sgd: the final latent, computed by hand from the DDIM formulas.
    "current" nudges x_t and then steps; "stepped" steps, then nudges the stepped latent with x̂0
    from ᾱ and ε of the step just taken (the authors' two noise levels)."""
    gen, binder = DummyAudio(), DummyBinder()
    target = torch.tensor([[1.0, -1.0, 1.0, -1.0]])
    settings = GuidanceSettings(start=0.9, optimizer="sgd", lr={"audio": 3.0}, nudge=nudge)
    out = align({A: gen}, {A: request(steps=10)}, binder, [Term(A, "condition")], {"condition": target}, settings)

    traj = gen.prepare(request(steps=10))
    z = traj.latents
    for i in range(9):
        _, z = gen.denoise_step(traj, z, i)
    scheduler, t = traj.state["scheduler"], int(traj.timesteps[9])
    eps = gen.predict_noise(traj, z, 9)
    a_t = scheduler.alphas_cumprod[t]
    a_prev = scheduler.final_alpha_cumprod  # DDIM's last step goes to ᾱ = final_alpha_cumprod

    def loss_grad(latent: torch.Tensor) -> torch.Tensor:
        latent = latent.detach().requires_grad_(True)
        x0 = (latent - (1 - a_t).sqrt() * eps) / a_t.sqrt()
        embedding = binder.embed(gen.decode(x0))
        loss = (1 - torch.nn.functional.cosine_similarity(embedding, target)).sum()
        return torch.autograd.grad(loss, latent)[0]

    def ddim(latent: torch.Tensor) -> torch.Tensor:
        x0 = ((latent - (1 - a_t).sqrt() * eps) / a_t.sqrt()).clamp(-1, 1)  # DDIMScheduler's clip_sample
        return a_prev.sqrt() * x0 + (1 - a_prev).sqrt() * eps

    if nudge == "current":
        expected = ddim(z - 3.0 * loss_grad(z))
    else:
        stepped = ddim(z)
        expected = stepped - 3.0 * loss_grad(stepped)
    torch.testing.assert_close(out.latents[A], expected, rtol=1e-5, atol=1e-6)
    # the two differ by far more than the tolerance, so the test tells them apart
    assert (ddim(z - 3.0 * loss_grad(z)) - (ddim(z) - 3.0 * loss_grad(ddim(z)))).abs().max() > 1e-2


def test_recorded_loss_is_the_weighted_sum_of_the_recorded_similarities():
    gen, binder = DummyAudio(), DummyBinder()
    terms = [Term(A, "condition", 0.3), Term(A, "text", 2.0)]
    targets = {"condition": torch.tensor([[1.0, -1.0, 1.0, -1.0]]), "text": torch.ones(1, 4)}
    out = align({A: gen}, {A: request(steps=5)}, binder, terms, targets, GuidanceSettings(start=0.0))
    assert len(out.trace) == 5
    for record in out.trace:
        sims = record["similarity"]
        for i, loss in enumerate(record["loss"]):
            expected = 0.3 * (1 - sims["audio~condition"][i]) + 2.0 * (1 - sims["audio~text"][i])
            assert loss == pytest.approx(expected, rel=1e-6)
        # and the similarities are the binder's cosine of x̂0's embedding, not another number
    z = torch.randn(2, 4)
    assert torch.allclose(binder.similarity(z, targets["text"]),
                          torch.nn.functional.cosine_similarity(z, targets["text"]))


class _CurvedAudio(DummyAudio):
    """The dummy with a denoiser that is non-linear in the latent, so a latent gradient leaking
    through it would change the update."""

    def predict_noise(self, trajectory, latents, index):
        return super().predict_noise(trajectory, latents, index) + 0.3 * torch.tanh(latents * trajectory.prompt_embeds
                                                                                      + latents ** 2)


def test_prompt_tuning_moves_the_latent_by_the_fixed_noise_gradient_only():
    """With prompt tuning on and the latent's lr above 0: the latent's step uses ∂L/∂z with ε held
    fixed, the prompt's ∂L/∂y through the denoiser (as the paper says), computed here by hand."""
    gen, binder = _CurvedAudio(), DummyBinder()
    target = {"text": torch.tensor([[1.0, -1.0, 1.0, -1.0]])}
    settings = GuidanceSettings(start=0.9, optimizer="sgd", lr={"audio": 2.0}, prompt_tuning=True, prompt_lr=0.7)
    prepared = []
    gen.prepare = lambda request, prepare=gen.prepare: prepared.append(prepare(request)) or prepared[-1]
    out = align({A: gen}, {A: request(steps=10)}, binder, [Term(A, "text")], target, settings)
    del gen.prepare

    traj = gen.prepare(request(steps=10))
    z = traj.latents
    for i in range(9):
        _, z = gen.denoise_step(traj, z, i)
    y = traj.prompt_embeds.clone()

    def loss(latent, eps):
        x0 = gen.predict_x0(traj, latent, eps, 9)
        return (1 - binder.similarity(binder.embed(gen.decode(x0)), target["text"])).sum()

    leaf = z.detach().requires_grad_(True)
    with torch.no_grad():
        eps_fixed = gen.predict_noise(traj, z, 9)
    (g_z,) = torch.autograd.grad(loss(leaf, eps_fixed), leaf)
    y_leaf = y.detach().requires_grad_(True)
    traj.prompt_embeds = y_leaf
    (g_y,) = torch.autograd.grad(loss(z, gen.predict_noise(traj, z, 9)), y_leaf)
    traj.prompt_embeds = y
    # the scheduler's last step uses the noise predicted before the prompt moved
    expected = gen.step(traj, z - 2.0 * g_z, eps_fixed, 9)
    torch.testing.assert_close(out.latents[A], expected, rtol=1e-5, atol=1e-6)
    # a latent gradient through the denoiser would differ by more than the tolerance
    (g_through,) = torch.autograd.grad(loss(leaf, gen.predict_noise(traj, leaf, 9)), leaf)
    assert (g_through - g_z).abs().max() > 1e-3
    torch.testing.assert_close(prepared[0].prompt_embeds, y - 0.7 * g_y, rtol=1e-5, atol=1e-6)
    assert g_y.abs().max() > 1e-3  # the prompt did move, so its update is exercised


# --------------------------------------------------------------------------- decoding only the audio a binder reads

class _SpanAudio(DummyAudio):
    """1 s of audio whose decode of `spans` is exact (the linear decode masked), recording each
    decode's spans; with `exact=False` the silence is only where the binder does not look."""

    supports_audio_spans = True

    def __init__(self, **options):
        super().__init__(**options)
        self.spans_seen: list = []

    def prepare(self, request):
        trajectory = super().prepare(request)
        trajectory.duration = 1.0
        return trajectory

    def decode(self, latents, frames=None, trajectory=None, spans=None):
        self.spans_seen.append(None if spans is None else list(spans))
        audio = super().decode(latents, frames, trajectory)
        if spans is None:
            return audio
        return type(audio)(audio.waveform * span_mask(audio.num_samples, audio.sample_rate, spans), audio.sample_rate)


class _FirstHalfBinder(DummyBinder):
    """Reads only the first 0.5 s of audio (and says so), counting its `audio_spans` calls."""

    def __init__(self, spans=((0.0, 0.5),), **options):
        super().__init__(**options)
        self.spans, self.span_calls = [tuple(s) for s in spans], 0

    def audio_spans(self, duration):
        self.span_calls += 1
        return list(self.spans)

    def embed(self, media):
        if media.modality is not Modality.AUDIO:
            return super().embed(media)
        half = media.sample_rate // 2
        wav = media.mono().waveform[:, 0, :half]
        return wav @ _basis()[:, :half].T


def _span_run(gen, binder):
    target = torch.tensor([[1.0, -1.0, 1.0, -1.0]])
    return align({A: gen}, {A: request(steps=6)}, binder, [Term(A, "condition")], {"condition": target},
                 GuidanceSettings(start=0.0, end=1.0, lr={"audio": 0.4}))


def test_guidance_decodes_only_the_audio_the_binder_reads_and_moves_the_latent_as_a_whole_decode_does():
    partial, binder = _SpanAudio(), _FirstHalfBinder()
    whole = _SpanAudio()
    whole.supports_audio_spans = False
    out = _span_run(partial, binder)
    reference = _span_run(whole, _FirstHalfBinder())
    torch.testing.assert_close(out.latents[A], reference.latents[A], rtol=0, atol=1e-6)
    guided = [s for s in partial.spans_seen if s is not None]
    assert guided == [[(0.0, 0.5)]] * 6 and partial.spans_seen[-1] is None  # the output is decoded whole
    assert binder.span_calls == 1  # asked once per run, not per step
    assert all(s is None for s in whole.spans_seen)


@pytest.mark.parametrize("spans, passed", [
    ([(0.6, 0.9), (-0.2, 0.1), (0.05, 0.3)], [(0.0, 0.3), (0.6, 0.9)]),  # clipped, sorted, merged
    ([(0.0, 0.5), (0.4, 1.2)], None),  # all of it: decoded whole
])
def test_the_binders_spans_reach_the_decode_clipped_and_merged(spans, passed):
    gen = _SpanAudio()
    _span_run(gen, _FirstHalfBinder(spans))
    assert gen.spans_seen[0] == passed


def test_no_spans_when_the_binder_sees_the_whole_decode():
    gen = _SpanAudio()
    gen.guide_whole_decode = True  # the binder sees all that decode gives, whose length is not known before
    _span_run(gen, _FirstHalfBinder())
    assert all(s is None for s in gen.spans_seen)


def test_a_binder_raising_in_audio_spans_is_one_line_naming_it():
    class Broken(_FirstHalfBinder):
        name = "broken-spans"

        def audio_spans(self, duration):
            raise ZeroDivisionError("no clips")

    from sah.errors import SahError

    with pytest.raises(SahError, match=r"^binder 'broken-spans' failed in audio_spans: ZeroDivisionError: no clips$"):
        _span_run(_SpanAudio(), Broken())

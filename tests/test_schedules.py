"""x̂0, noise level and latent scale for every scheduler family sah guides, checked with oracle
denoisers: given a known x0 and noise, a model output that is the true ε / v / velocity / EDM F
must give back x0 at every step. The forward processes are written out here from the families'
definitions, independently of `sah.schedules`."""

from __future__ import annotations

import math

import diffusers
import pytest
import torch
from dummy_plugins import DummyAudio, DummyBinder

from sah import GenerationRequest, GuidanceSettings, Modality, Term, Trajectory, align
from sah import schedules as S
from sah.errors import SahError
from sah.generator import predict_x0_from_scheduler, seeded_noise

A = Modality.AUDIO

# (scheduler class, constructor settings, family, prediction types to check)
CASES = [
    ("DDIMScheduler", {}, S.VP, ["epsilon", "v_prediction", "sample"]),
    ("DDPMScheduler", {}, S.VP, ["epsilon", "v_prediction"]),
    ("PNDMScheduler", {"skip_prk_steps": True}, S.VP, ["epsilon"]),
    ("DPMSolverMultistepScheduler", {}, S.VP, ["epsilon", "v_prediction"]),
    ("DPMSolverSinglestepScheduler", {}, S.VP, ["epsilon"]),
    ("UniPCMultistepScheduler", {}, S.VP, ["epsilon"]),
    ("DEISMultistepScheduler", {}, S.VP, ["epsilon"]),
    ("EulerDiscreteScheduler", {}, S.SIGMA, ["epsilon", "v_prediction"]),
    ("EulerAncestralDiscreteScheduler", {}, S.SIGMA, ["epsilon"]),
    ("HeunDiscreteScheduler", {}, S.SIGMA, ["epsilon", "v_prediction"]),
    ("KDPM2DiscreteScheduler", {}, S.SIGMA, ["epsilon"]),
    ("LMSDiscreteScheduler", {}, S.SIGMA, ["epsilon"]),
    ("EDMEulerScheduler", {}, S.EDM, ["epsilon", "v_prediction"]),
    ("EDMDPMSolverMultistepScheduler", {}, S.EDM, ["epsilon"]),
    ("CosineDPMSolverMultistepScheduler", {}, S.EDM, ["v_prediction"]),  # Stable Audio Open's sampler
    ("FlowMatchEulerDiscreteScheduler", {"shift": 3.0}, S.FLOW, [None]),
    ("FlowMatchHeunDiscreteScheduler", {}, S.FLOW, [None]),
    ("UniPCMultistepScheduler", {"use_flow_sigmas": True, "prediction_type": "flow_prediction"}, S.FLOW, [None]),
]


def make(name: str, settings: dict, prediction: str | None, steps: int = 8):
    kwargs = dict(settings)
    if prediction is not None:
        kwargs["prediction_type"] = prediction
    scheduler = getattr(diffusers, name)(**kwargs)
    scheduler.set_timesteps(steps)
    return scheduler


def forward(scheduler, kind: str, index: int) -> tuple[float, float]:
    """(a, b) of x = a·x0 + b·ε at step `index`, from each family's definition."""
    if kind == S.VP:
        alpha_bar = float(scheduler.alphas_cumprod[int(scheduler.timesteps[index])])
        return math.sqrt(alpha_bar), math.sqrt(1 - alpha_bar)
    sigma = float(scheduler.sigmas[index])
    return (1 - sigma, sigma) if kind == S.FLOW else (1.0, sigma)


def true_output(scheduler, kind: str, prediction: str | None, index: int, x0, eps, x):
    a, b = forward(scheduler, kind, index)
    if kind == S.FLOW:
        return eps - x0  # the velocity dx/dσ
    if kind == S.EDM:
        sd = scheduler.config.sigma_data
        c_skip = sd**2 / (b**2 + sd**2)
        c_out = b * sd / math.sqrt(b**2 + sd**2) * (-1 if prediction == "v_prediction" else 1)
        return (x0 - c_skip * x) / c_out  # what an EDM network is trained to output
    if prediction == "epsilon":
        return eps
    if prediction == "sample":
        return x0
    # v = α·ε − σ·x0 of the variance-preserving latent; σ-space latents are that latent × √(1+σ²)
    alpha, sigma = (a, b) if kind == S.VP else (1 / math.sqrt(1 + b * b), b / math.sqrt(1 + b * b))
    return alpha * eps - sigma * x0


@pytest.mark.parametrize("name, settings, kind, predictions", CASES, ids=[f"{c[0]}{c[1] or ''}" for c in CASES])
def test_oracle_denoiser_gives_back_x0_at_every_step(name, settings, kind, predictions):
    generator = torch.Generator().manual_seed(0)
    x0 = torch.randn(2, 4, 8, generator=generator, dtype=torch.float64)
    eps = torch.randn(2, 4, 8, generator=generator, dtype=torch.float64)
    for prediction in predictions:
        scheduler = make(name, settings, prediction)
        assert S.family(scheduler) == kind
        for index in range(len(scheduler.timesteps)):
            a, b = forward(scheduler, kind, index)
            x = a * x0 + b * eps
            output = true_output(scheduler, kind, prediction, index, x0, eps, x)
            estimate = predict_x0_from_scheduler(scheduler, x, output, scheduler.timesteps[index], index=index)
            torch.testing.assert_close(estimate, x0, rtol=1e-6, atol=1e-6 * (1 + b))
            # noise level and scale: b/√(a²s²+b²) and √(a²s²+b²)/s, s the data's scale
            s = scheduler.config.get("sigma_data", 1.0) if kind == S.EDM else 1.0
            assert S.noise_level(scheduler, index) == pytest.approx(b / math.sqrt(a * a * s * s + b * b))
            assert S.latent_scale(scheduler, index) == pytest.approx(math.sqrt(a * a * s * s + b * b) / s)


def test_a_scheduler_of_no_known_family_is_refused_in_one_line():
    class MadeUpScheduler:
        config = {"prediction_type": "epsilon"}

    with pytest.raises(SahError) as info:
        predict_x0_from_scheduler(MadeUpScheduler(), torch.zeros(1, 2), torch.zeros(1, 2), 0, index=0)
    assert "\n" not in str(info.value) and "MadeUpScheduler cannot be guided" in str(info.value)
    with pytest.raises(SahError, match="cannot be guided"):
        S.latent_scale(MadeUpScheduler(), 0)


class OracleAudio(DummyAudio):
    """The dummy audio generator driven by any scheduler, with the exact denoiser of data ~ N(y, I)
    written for that scheduler's family: E[x0 | x] = y + a/(a² + b²)·(x − a·y)."""

    def __init__(self, name: str, settings: dict, kind: str, prediction: str | None):
        super().__init__()
        self.scheduler_args = (name, settings, prediction)
        self.kind, self.prediction = kind, prediction

    def prepare(self, request: GenerationRequest) -> Trajectory:
        scheduler = make(*self.scheduler_args, steps=request.num_steps)
        latents = seeded_noise((4,), request.seeds, dtype=torch.float32) * getattr(scheduler, "init_noise_sigma", 1.0)
        embeds = torch.zeros(request.batch_size, 4)
        return Trajectory(latents, scheduler.timesteps.clone(), embeds, {"scheduler": scheduler})

    def predict_noise(self, trajectory, latents, index):
        scheduler = trajectory.state["scheduler"]
        a, b = forward(scheduler, self.kind, index)
        y = trajectory.prompt_embeds
        x0 = y + a / (a * a + b * b) * (latents - a * y)
        eps = (latents - a * x0) / b
        return true_output(scheduler, self.kind, self.prediction, index, x0, eps, latents).float()

    def step(self, trajectory, latents, noise_pred, index):
        t = trajectory.timesteps[index]
        return trajectory.state["scheduler"].step(noise_pred, t, latents).prev_sample


FAMILY_RUNS = [("DDIMScheduler", {}, S.VP, "epsilon"), ("EulerDiscreteScheduler", {}, S.SIGMA, "epsilon"),
               ("EDMEulerScheduler", {}, S.EDM, "epsilon"), ("FlowMatchEulerDiscreteScheduler", {"shift": 3.0},
                                                            S.FLOW, None)]


@pytest.mark.parametrize("name, settings, kind, prediction", FAMILY_RUNS, ids=[c[0] for c in FAMILY_RUNS])
def test_guidance_raises_similarity_with_every_family(name, settings, kind, prediction):
    """Through the aligner, 12 steps, guidance in the noise-level window: the guided samples reach
    the target while the lr = 0 control does not."""
    target = torch.tensor([[1.0, -1.0, 1.0, -1.0]])
    request = GenerationRequest([""] * 4, [0, 1, 2, 3], num_steps=12)
    runs = {}
    for lr in (0.0, 0.3):
        settings_ = GuidanceSettings(window="noise", start=0.0, end=0.95, optimizer="adam", lr={"audio": lr})
        runs[lr] = align({A: OracleAudio(name, settings, kind, prediction)}, {A: request}, DummyBinder(),
                         [Term(A, "condition")], {"condition": target}, settings_).final_similarity["audio~condition"]
    assert max(runs[0.0]) < 0.9 < min(runs[0.3]), runs


def test_a_guidance_step_has_the_same_relative_size_at_every_noise_level():
    """Euler's latent is x0 + σ·ε with σ from 14.6 down to 0.03: a fixed ±lr step would be noise
    early and a blow late. Each of Adam's first steps moves every element by lr·√(1 + σ_i²)."""
    gen = OracleAudio("EulerDiscreteScheduler", {}, S.SIGMA, "epsilon")
    moves = []
    step = gen.step

    def recording_step(trajectory, latents, noise_pred, index):
        moves.append((index, latents.clone()))
        return step(trajectory, latents, noise_pred, index)

    gen.step = recording_step
    inputs = []
    predict = gen.predict_noise
    gen.predict_noise = lambda trajectory, latents, index: inputs.append(latents.clone()) or predict(
        trajectory, latents, index)
    request = GenerationRequest([""] * 2, [0, 1], num_steps=10)
    align({A: gen}, {A: request}, DummyBinder(), [Term(A, "condition")], {"condition": torch.ones(1, 4)},
          GuidanceSettings(start=0.0, optimizer="adam", lr={"audio": 0.05}))
    scheduler = make("EulerDiscreteScheduler", {}, "epsilon", steps=10)
    for (index, stepped_from), before in zip(moves, inputs):
        delta = (stepped_from - before).abs()
        expected = 0.05 * math.sqrt(1 + float(scheduler.sigmas[index]) ** 2)
        torch.testing.assert_close(delta, torch.full_like(delta, expected), rtol=1e-4, atol=0)

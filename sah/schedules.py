"""What a diffusers scheduler's latent is made of at each step, for every family sah can guide.

Every sampler diffusers ships writes the latent at step i as x_i = a·x0 + b·ε for a family-specific
pair (a, b): variance-preserving (DDIM, DDPM, PNDM, DPM-Solver, UniPC, DEIS: a = √ᾱ_t, b = √(1−ᾱ_t)),
σ-space (Euler, Heun, KDPM2, LMS: a = 1, b = σ_i), EDM-preconditioned (EDM Euler / DPM-Solver, the
cosine DPM solver of Stable Audio: a = 1, b = σ_i, x̂0 = c_skip·x + c_out·F) and rectified flow
(FlowMatch*, or a solver with `use_flow_sigmas`: a = 1 − σ_i, b = σ_i, the model predicts the
velocity ε − x0). From (a, b) follow the clean-sample estimate, the normalised noise level and the
latent's scale that the aligner needs; a scheduler of no known family is refused in one line.
"""

from __future__ import annotations

import math
from typing import TYPE_CHECKING, Any

from sah.errors import SahError
from sah.lazy import lazy_import

if TYPE_CHECKING:
    import torch
    from torch import Tensor
else:
    torch = lazy_import("torch")

VP, SIGMA, EDM, FLOW = "variance-preserving", "sigma", "edm", "flow"

_VP = {"DDIMScheduler", "DDPMScheduler", "PNDMScheduler", "DPMSolverMultistepScheduler",
       "DPMSolverSinglestepScheduler", "UniPCMultistepScheduler", "DEISMultistepScheduler",
       "DDIMParallelScheduler", "DDPMParallelScheduler", "DDIMInverseScheduler", "LCMScheduler", "TCDScheduler"}
_SIGMA = {"EulerDiscreteScheduler", "EulerAncestralDiscreteScheduler", "HeunDiscreteScheduler",
          "LMSDiscreteScheduler", "KDPM2DiscreteScheduler", "KDPM2AncestralDiscreteScheduler",
          "DPMSolverSDEScheduler"}


def scheduler_class_name(name: str, choices: dict[str, str], plugin: str) -> str:
    """The diffusers class name for a plugin's short name (`ddim`) or the class name itself, among
    `choices` ({short name: class name}); checked without importing diffusers, so a plugin's
    `check_options` stays cheap. Anything else is a one-line SahError naming the choices."""
    by_class = {cls.lower(): cls for cls in choices.values()}
    key = name.strip().lower()
    class_name = choices.get(key) or by_class.get(key)
    if class_name is None:
        raise SahError(f"{plugin}: scheduler {name!r} is not supported for guidance (choose from "
                       f"{', '.join(choices)}, or the diffusers class name of one of them)")
    return class_name


def scheduler_class(name: str, choices: dict[str, str], plugin: str) -> type:
    """The diffusers scheduler class `scheduler_class_name` names (diffusers imported on use)."""
    class_name = scheduler_class_name(name, choices, plugin)
    import diffusers

    return getattr(diffusers, class_name)


def family(scheduler: Any) -> str:
    """The scheduler's family, or a one-line SahError for one sah cannot guide."""
    name = type(scheduler).__name__
    config = scheduler.config
    if name.startswith("FlowMatch") or config.get("use_flow_sigmas", False) \
            or config.get("prediction_type") == "flow_prediction":
        return FLOW
    if hasattr(scheduler, "precondition_outputs"):
        return EDM
    if name in _SIGMA:
        return SIGMA
    if name in _VP:
        return VP
    raise SahError(f"scheduler {name} cannot be guided: sah knows x̂0 for variance-preserving (DDIM, DDPM, PNDM, "
                   "DPM-Solver, UniPC, DEIS), σ-space (Euler, Heun, KDPM2, LMS), EDM (EDM Euler/DPM-Solver, "
                   "cosine DPM-Solver) and flow-matching samplers")


def _sigma(scheduler: Any, index: int | None) -> Tensor:
    if index is None:
        raise ValueError(f"{type(scheduler).__name__} needs the step index to find its σ")
    return scheduler.sigmas[index].to(torch.float64)


def coefficients(scheduler: Any, index: int | None, timestep: Tensor | int | None = None) -> tuple[float, float]:
    """(a, b) with x = a·x0 + b·ε for the latent handed to the model at step `index` (timestep
    `timestep` of the scheduler's `timesteps`, needed for variance-preserving samplers)."""
    kind = family(scheduler)
    if kind == VP:
        if timestep is None:
            timestep = scheduler.timesteps[index]
        alpha_bar = float(scheduler.alphas_cumprod[int(timestep)])
        return math.sqrt(alpha_bar), math.sqrt(1 - alpha_bar)
    sigma = float(_sigma(scheduler, index))
    return (1 - sigma, sigma) if kind == FLOW else (1.0, sigma)


def _data_std(scheduler: Any) -> float:
    return float(scheduler.config.get("sigma_data", 1.0)) if family(scheduler) == EDM else 1.0


def noise_level(scheduler: Any, index: int, timestep: Tensor | int | None = None) -> float:
    """How much of the latent is noise, in [0, 1]: b / √(a²·s² + b²), s the data's scale (1 = pure noise)."""
    a, b = coefficients(scheduler, index, timestep)
    s = _data_std(scheduler)
    return b / math.sqrt(a * a * s * s + b * b)


def latent_scale(scheduler: Any, index: int, timestep: Tensor | int | None = None) -> float:
    """The latent's expected RMS at step `index` relative to the data's, √(a²·s² + b²) / s: 1 at
    every step of a variance-preserving sampler, up to √(1 + σ²) in σ-space (σ up to ~157 for
    Stable Diffusion's Euler), below 1 mid-way through a flow."""
    a, b = coefficients(scheduler, index, timestep)
    s = _data_std(scheduler)
    return math.sqrt(a * a * s * s + b * b) / s


def predict_x0(scheduler: Any, latents: Tensor, model_output: Tensor, index: int | None,
               timestep: Tensor | int | None = None) -> Tensor:
    """x̂0 from the model's output for the latent at step `index`, differentiable in `latents`."""
    dtype = torch.promote_types(latents.dtype, torch.float32)  # float16 would lose the small ᾱ of early steps
    z, out = latents.to(dtype), model_output.to(dtype)
    kind = family(scheduler)
    prediction = scheduler.config.get("prediction_type", "epsilon")
    if kind == FLOW:
        x0 = z - float(_sigma(scheduler, index)) * out
    elif kind == EDM:
        x0 = scheduler.precondition_outputs(z, out, _sigma(scheduler, index).to(dtype))
    else:
        a, b = coefficients(scheduler, index, timestep)
        if prediction == "epsilon":
            x0 = (z - b * out) / a
        elif prediction == "v_prediction":
            # VP: x0 = a·z − b·v; σ-space (a = 1, b = σ): the same with the model input scaled by 1/√(1+σ²)
            c = 1.0 if kind == VP else 1.0 / math.sqrt(1 + b * b)
            x0 = (a * c) * (c * z) - (b * c) * out
        elif prediction == "sample":
            x0 = out
        else:
            raise SahError(f"scheduler {type(scheduler).__name__}: prediction_type {prediction!r} cannot be guided")
    return x0.to(latents.dtype)

"""The diffusion latent aligner: one guidance loop for every task.

One or two generators are stepped in lockstep. Inside the guidance window the latent is nudged
to lower a weighted sum of `1 - cos` terms between binder embeddings of the decoded clean-sample
estimate x̂0 and its targets (a condition, the other generated modality, the prompt). The noise
prediction is held fixed: the gradient flows through `predict_x0` and `decode` into the binder,
never through the denoiser (except into the prompt embeddings when guided prompt tuning is on, as
in the paper).

Where the nudge acts is a setting (`nudge`): on the current latent x_{t_i} before the scheduler
step ("current", x̂0 at the latent's own noise level), or, as the authors' released code does, on
the stepped latent x_{t_{i+1}} after it ("stepped", x̂0 from ᾱ_{t_i} and ε_i of the step just taken,
so the last update follows the final step). How the window is counted is another (`window`).

Update rules are plain functions `rule(z, g, state, lr) -> z`; `state` is a fresh dict at every
denoising step, which makes `adam` the paper's "new Adam per step".
"""

from __future__ import annotations

import contextlib
import math
import warnings
from collections.abc import Callable, Iterator, Mapping, Sequence
from dataclasses import dataclass, field, replace
from fractions import Fraction
from typing import TYPE_CHECKING, Any

from sah import cost, longform
from sah.binder import Binder, merge_spans
from sah.config import DEFAULTS
from sah.errors import PluginError, SahError, plugin_failure
from sah.generator import GenerationRequest, Generator, Trajectory, fit_duration
from sah.lazy import lazy_import
from sah.longform import Window
from sah.media import Audio, Modality, Video

if TYPE_CHECKING:
    import torch
    from torch import Tensor
else:
    torch = lazy_import("torch")

UpdateRule = Callable[["Tensor", "Tensor", dict, float], "Tensor"]


def _per_sample_norm(g: Tensor) -> Tensor:
    return g.flatten(1).norm(dim=1).clamp_min(1e-12).reshape((-1,) + (1,) * (g.ndim - 1))


def sgd(z: Tensor, g: Tensor, state: dict, lr: float) -> Tensor:
    return z - lr * g


def ngd(z: Tensor, g: Tensor, state: dict, lr: float) -> Tensor:
    """A step of fixed size `lr·√d` along the normalised gradient, per sample: its length does
    not depend on how steep the binder's loss happens to be at this noise level."""
    d = g[0].numel()
    return z - lr * math.sqrt(d) * g / _per_sample_norm(g)


def adam(z: Tensor, g: Tensor, state: dict, lr: float, betas: tuple[float, float] = (0.9, 0.999),
         eps: float = 1e-8) -> Tensor:
    """Adam with bias correction; its first step moves every element by about ±lr."""
    t = state["t"] = state.get("t", 0) + 1
    m = state["m"] = betas[0] * state.get("m", torch.zeros_like(g)) + (1 - betas[0]) * g
    v = state["v"] = betas[1] * state.get("v", torch.zeros_like(g)) + (1 - betas[1]) * g * g
    m_hat = m / (1 - betas[0] ** t)
    v_hat = v / (1 - betas[1] ** t)
    return z - lr * m_hat / (v_hat.sqrt() + eps)


UPDATE_RULES: dict[str, UpdateRule] = {"adam": adam, "sgd": sgd, "ngd": ngd}
_DEFAULTS = DEFAULTS["guidance"]


@dataclass
class Term:
    """One `weight · (1 - cos)` loss term between a generated modality and a target.

    `target` is another generated modality ("audio"/"video") or the name of a fixed embedding
    passed to `align` (e.g. "condition", "text")."""

    generated: Modality
    target: str
    weight: float = 1.0

    @property
    def name(self) -> str:
        return f"{self.generated.value}~{self.target}"


@dataclass
class GuidanceSettings:
    """The `[guidance]` config section as the loop reads it; the defaults are the config's own."""

    enabled: bool = _DEFAULTS["enabled"]
    start: float = _DEFAULTS["start"]
    end: float = _DEFAULTS["end"]
    nudge: str = _DEFAULTS["nudge"]
    window: str = _DEFAULTS["window"]
    optimizer: str = _DEFAULTS["optimizer"]
    lr: dict[str, float] = field(default_factory=lambda: dict(_DEFAULTS["lr"]))
    opt_steps: int = _DEFAULTS["opt_steps"]
    clip: float = _DEFAULTS["clip"]
    prompt_tuning: bool = _DEFAULTS["prompt_tuning"]
    prompt_lr: float = _DEFAULTS["prompt_lr"]

    @classmethod
    def from_config(cls, guidance: Mapping[str, Any]) -> GuidanceSettings:
        keys = cls.__dataclass_fields__
        return cls(**{k: v for k, v in guidance.items() if k in keys})

    def guides(self, index: int, num_steps: int, noise_level: float | None = None) -> bool:
        """Whether step `index` of `num_steps` is guided: `start <= index/num_steps < end` for the
        "progress" window; for "after", the released code's count, `index > int(start·num_steps)`
        (30 steps from 0.2: 23 guided, not 24) and the same end; for "noise", `start <= 1 − ν < end`
        with ν the latent's noise level in [0, 1] (1: pure noise), so a shifted flow schedule is
        guided over the same noise levels as an unshifted one."""
        if not self.enabled:
            return False
        if self.window == "noise":
            if noise_level is None:
                raise ValueError('guidance.window = "noise" needs the step\'s noise level')
            return self.start <= 1 - noise_level < self.end
        if not index / num_steps < self.end:
            return False
        if self.window == "after":
            return index > int(self.start * num_steps)
        return self.start <= index / num_steps


@dataclass
class AlignResult:
    media: dict[Modality, Audio | Video]
    latents: dict[Modality, Tensor]
    trace: list[dict[str, Any]]
    final_similarity: dict[str, list[float]]


@dataclass(frozen=True)
class _Part:
    """Windows `windows` of a stream as one slice of its latent: batch rows (each window its own
    sample) or frames along the time axis (windows of one latent)."""

    windows: range
    rows: tuple[int, int] | None = None
    span: tuple[int, int] | None = None


@dataclass
class _Stream:
    """One generator's run. Its output is one window, or several overlapping ones (`sah.longform`):
    with a latent time axis, one latent for the whole output whose windows are slices (`spans`,
    fused with `weights`); without one, each window is its own batch of samples, all of them in
    one trajectory (`batch` samples per window)."""

    generator: Generator
    trajectory: Trajectory
    latents: Tensor
    windows: list[Window]
    batch: int
    spans: list[tuple[int, int]] | None = None
    weights: list[Tensor] | None = None
    noise_pred: Tensor | None = None
    noise_input: Tensor | None = None  # the latent `noise_pred` was predicted from
    embedding: dict[int, Tensor] = field(default_factory=dict)  # per part, of the latest x̂0, detached
    frames: list[int] | None = None
    audio_spans: dict[float, list[tuple[float, float]] | None] = field(default_factory=dict)  # per seconds

    @property
    def num_steps(self) -> int:
        return self.trajectory.num_steps

    @property
    def stacked(self) -> bool:
        return len(self.windows) > 1 and self.spans is None

    def parts(self, size: int) -> list[_Part]:
        count = len(self.windows)
        if self.spans is not None:
            return [_Part(range(k, k + 1), span=span) for k, span in enumerate(self.spans)]
        if count == 1:
            return [_Part(range(1))]
        return [_Part(range(k, min(count, k + size)), rows=(k * self.batch, min(count, k + size) * self.batch))
                for k in range(0, count, size)]

    def select(self, tensor: Tensor, part: _Part) -> Tensor:
        if part.rows is not None:
            return tensor[part.rows[0]:part.rows[1]]
        if part.span is not None:
            return tensor.narrow(self.generator.time_axis, part.span[0], part.span[1] - part.span[0])
        return tensor

    def seconds(self, part: _Part) -> float | None:
        """How long each window's media in `part` is: the run's duration for a single window."""
        if len(self.windows) == 1:
            return self.trajectory.duration
        return self.windows[part.windows[0]].seconds + 1e-9  # 0.39999…·rate must not truncate a sample


def lockstep(step_counts: Mapping[Modality, int]) -> list[dict[Modality, int]]:
    """Ticks of a joint schedule: each tick maps the generators that step on it to their step
    index. Generators with different step counts are matched by progress fraction."""
    events: dict[Fraction, dict[Modality, int]] = {}
    for modality, count in step_counts.items():
        for i in range(count):
            events.setdefault(Fraction(i + 1, count), {})[modality] = i
    return [events[p] for p in sorted(events)]


def _finite(t: Tensor) -> bool:
    return bool(torch.isfinite(t).all())


@contextlib.contextmanager
def plugin_call(owner: Generator | Binder, what: str) -> Iterator[None]:
    """Turn an exception a plugin raises inside its code into one line naming the plugin, so a
    fault mid-run reads like any other user-facing error (the original stays as `__cause__`)."""
    try:
        with cost.stage(cost.STAGES.get(what, "other")):
            yield
    except SahError:
        raise
    except Exception as exc:
        kind = "binder" if isinstance(owner, Binder) else "generator"
        raise plugin_failure(kind, getattr(owner, "name", type(owner).__name__), f"in {what}", exc) from exc


class _SkipWarning:
    """Warns about a skipped (non-finite) update once per run; the trace counts every skip."""

    def __init__(self) -> None:
        self.warned = False

    def __call__(self, name: str) -> None:
        if not self.warned:
            self.warned = True
            warnings.warn(f"non-finite guidance update for {name} skipped; later skips in this run are only "
                          "counted (trace 'skipped', sidecar 'skipped_updates')", RuntimeWarning, stacklevel=3)


def align(
    generators: Mapping[Modality, Generator],
    requests: Mapping[Modality, GenerationRequest],
    binder: Binder | None = None,
    terms: list[Term] | None = None,
    targets: Mapping[str, Tensor | Sequence[Tensor]] | None = None,
    settings: GuidanceSettings | None = None,
    on_step: Callable[[int, int, dict[str, float]], None] | None = None,
    should_stop: Callable[[], bool] | None = None,
    windows: Sequence[Window] | None = None,
    window_batch: int = 8,
) -> AlignResult:
    """Run the generators' samplers in lockstep with latent alignment.

    `targets` holds fixed embeddings `[1 or B, D]` (computed once per run by the caller) that
    terms name; a sequence of them holds one per window. `windows` (`sah.longform.plan`) splits
    a long output into overlapping windows, each guided toward its own targets; None: one.
    Windows that are samples of their own are decoded and embedded `window_batch` at a time.
    `on_step(tick, num_ticks, similarities)` reports progress. `should_stop` is polled once per
    tick so an interrupt stops within one denoising step.
    """
    settings = settings or GuidanceSettings()
    terms = [t for t in (terms or []) if t.weight > 0]
    targets = dict(targets or {})
    if terms and binder is None:
        raise ValueError("guidance terms need a binder")
    update = UPDATE_RULES[settings.optimizer]

    streams = {m: _prepare(g, requests[m], list(windows or []), binder) for m, g in generators.items()}
    # windows of one latent are guided one at a time, windows that are samples of their own a few at a time
    part_size = 1 if any(s.spans is not None for s in streams.values()) else max(1, int(window_batch))
    warn_skip = _SkipWarning()

    ticks = lockstep({m: s.num_steps for m, s in streams.items()})
    trace: list[dict[str, Any]] = []
    last: dict[str, float] = {}
    for tick_no, tick in enumerate(ticks):
        if should_stop is not None and should_stop():
            raise KeyboardInterrupt
        for modality, index in tick.items():
            _predict_noise(streams[modality], index)
        guided = [m for m, i in tick.items()
                  if settings.guides(i, streams[m].num_steps, _noise_level(settings, streams[m], i))
                  and any(_involves(t, m) for t in terms)]
        if settings.nudge == "stepped":
            _step(streams, tick)
        if guided:
            record = _guide(streams, guided, tick, binder, terms, targets, settings, update, warn_skip, part_size)
            record.update(tick=tick_no, progress=float(max(Fraction(i + 1, streams[m].num_steps)
                                                            for m, i in tick.items())),
                          steps={m.value: i for m, i in tick.items()})
            trace.append(record)
            last = {name: float(sum(v) / len(v)) for name, v in record["similarity"].items()}
        if settings.nudge == "current":
            _step(streams, tick)
        if on_step is not None:
            on_step(tick_no + 1, len(ticks), last)

    media: dict[Modality, Audio | Video] = {m: _decode_output(s, part_size) for m, s in streams.items()}
    with torch.no_grad():
        final = _final_similarity(media, binder, terms, targets, list(windows or []))
    return AlignResult(media, {m: s.latents for m, s in streams.items()}, trace, final)


def _prepare(generator: Generator, request: GenerationRequest, windows: list[Window],
             binder: Binder | None) -> _Stream:
    """The trajectory and latent for the output, whole or in windows."""
    if len(windows) > 1 and generator.time_axis is None:
        # each window its own samples: window k's seeds derived from the run's (window 0 keeps them);
        # audio a little longer than the window, for the phase alignment of the join
        seeds = [s if k == 0 else _window_seed(s, k) for k in range(len(windows)) for s in request.seeds]
        margin = longform.ALIGN_SECONDS if generator.modality is Modality.AUDIO else 0.0
        request = replace(request, prompts=list(request.prompts) * len(windows), seeds=seeds,
                          duration=windows[0].seconds + margin)
    with plugin_call(generator, "prepare"):
        trajectory = generator.prepare(request)
    frame_count = generator.num_frames()  # asked after prepare: a run's length may set it
    stream = _Stream(generator, trajectory, trajectory.latents, windows or [Window(0.0, 0.0)],
                     len(request.seeds) // max(1, len(windows)) if len(windows) > 1 else len(request.seeds))
    if len(windows) > 1 and generator.time_axis is not None:
        # one latent for the whole output; a window is a slice of it
        with plugin_call(generator, "latent_frame_seconds"):
            frame_seconds = generator.latent_frame_seconds()
        total = trajectory.latents.shape[generator.time_axis]
        width = min(total, max(1, round(windows[0].seconds / frame_seconds)))
        stream.spans = longform.frame_spans(windows, total, width)
        stream.windows = [Window(lo * frame_seconds, hi * frame_seconds) for lo, hi in stream.spans]
        stream.weights = longform.fusion_weights(stream.spans, total)
        frame_count = width if frame_count else None
    elif frame_count and generator.time_axis is not None and len(windows) <= 1:
        frame_count = trajectory.latents.shape[generator.time_axis]  # the run's own length
    if binder is not None and generator.supports_frame_subset and frame_count:
        with plugin_call(binder, "video_frames"):
            stream.frames = binder.video_frames(frame_count, generator.fps() or 1.0)
    return stream


def _window_seed(seed: int, k: int) -> int:
    return (int(seed) * 1_000_003 + 7919 * k) % (2**63 - 1)


def _predict_noise(stream: _Stream, index: int) -> None:
    generator = stream.generator
    stream.noise_input = stream.latents
    with torch.no_grad(), plugin_call(generator, "predict_noise"):
        if stream.spans is None:
            stream.noise_pred = generator.predict_noise(stream.trajectory, stream.latents, index)
            return
        # the windows' predictions averaged where they overlap, with weights that sum to 1
        z, fused = stream.latents, None
        shape = [1] * z.ndim
        shape[generator.time_axis] = -1
        for k, weight in enumerate(stream.weights):
            part = _Part(range(k, k + 1), span=stream.spans[k])
            eps = generator.predict_noise(stream.trajectory, stream.select(z, part), index)
            fused = eps.new_zeros(z.shape) if fused is None else fused
            stream.select(fused, part).add_(eps * weight.to(eps).reshape(shape))
        stream.noise_pred = fused


def _decode_output(stream: _Stream, part_size: int) -> Audio | Video:
    """The final media: decoded a part at a time and joined as they come, so memory holds the
    output and one part."""
    generator = stream.generator
    margin = longform.ALIGN_SECONDS if stream.stacked and generator.modality is Modality.AUDIO else 0.0
    total = stream.windows[-1].end
    joiner = longform.Joiner(total, align=stream.stacked)
    with torch.no_grad():
        for part in stream.parts(part_size):
            with plugin_call(generator, "decode"):
                decoded = generator.decode(stream.select(stream.latents, part), trajectory=stream.trajectory)
            seconds = stream.seconds(part)
            decoded = fit_duration(decoded, None if seconds is None else seconds + margin)
            if len(stream.windows) == 1:
                return decoded
            for k, piece in zip(part.windows, _split(decoded, len(part.windows))):
                joiner.add(piece, stream.windows[k])
    return fit_duration(joiner.result(), total)


def _split(media: Audio | Video, count: int) -> list[Audio | Video]:
    """A part's media, one item per window (the rows of a batch of windows)."""
    if count == 1:
        return [media]
    if isinstance(media, Audio):
        return [Audio(w, media.sample_rate) for w in media.waveform.chunk(count)]
    return [Video(f, media.fps) for f in media.frames.chunk(count)]


def _noise_level(settings: GuidanceSettings, stream: _Stream, index: int) -> float | None:
    if settings.window != "noise" or not settings.enabled:
        return None
    with plugin_call(stream.generator, "noise_level"):
        return stream.generator.noise_level(stream.trajectory, index)


def _step(streams: dict[Modality, _Stream], tick: dict[Modality, int]) -> None:
    """The scheduler step of each stream on this tick."""
    for modality, index in tick.items():
        stream = streams[modality]
        with torch.no_grad(), plugin_call(stream.generator, "step"):
            stream.latents = stream.generator.step(stream.trajectory, stream.latents, stream.noise_pred, index)
        if not _finite(stream.latents):
            # guidance never applies a non-finite update, so this came from the denoiser or scheduler
            raise PluginError(f"generator {stream.generator.name!r} produced non-finite latents at step "
                              f"{index + 1} of {stream.num_steps} (with float16, try --dtype float32)")


def prompt_tensors(embeds: Any) -> list[tuple[Any, Tensor]]:
    """The tunable tensors of a trajectory's `prompt_embeds`: the tensor itself (key None), or the
    floating-point entries of a tuple/list (key: position) or a dict (key: name). Masks and ids
    are left alone."""
    if isinstance(embeds, torch.Tensor):
        return [(None, embeds)]
    items = embeds.items() if isinstance(embeds, Mapping) else enumerate(embeds)
    return [(k, v) for k, v in items if isinstance(v, torch.Tensor) and v.is_floating_point()]


def replace_prompt_tensor(embeds: Any, key: Any, tensor: Tensor) -> Any:
    if key is None:
        return tensor
    if isinstance(embeds, Mapping):
        return {**embeds, key: tensor}
    return type(embeds)(tensor if i == key else v for i, v in enumerate(embeds))


def map_prompt_tensors(embeds: Any, fn: Callable[[Tensor], Tensor]) -> Any:
    for key, tensor in prompt_tensors(embeds):
        embeds = replace_prompt_tensor(embeds, key, fn(tensor))
    return embeds


def _involves(term: Term, modality: Modality) -> bool:
    return term.generated == modality or term.target == modality.value


def _target(targets: Mapping[str, Any], name: str, part: _Part, batch: int) -> Tensor | None:
    """The target `name` for the windows of `part`: a window's own (a list holds one per window)
    or the run's, repeated for each window of a batch of windows."""
    value = targets.get(name)
    if value is None:
        return None
    rows = [value[k] if isinstance(value, (list, tuple)) else value for k in part.windows]
    if part.rows is None:
        return rows[0]
    return torch.cat([t.expand(batch, -1) for t in rows])


def _audio_spans(stream: _Stream, part: _Part, binder: Binder) -> list[tuple[float, float]] | None:
    """The stretches of the part's audio the binder reads, when the generator can decode only
    those and the binder sees the run's seconds (not the whole decode, whose length is unknown
    before it is decoded); None: decode it all."""
    generator = stream.generator
    if generator.modality is not Modality.AUDIO or not generator.supports_audio_spans or \
            generator.guide_whole_decode:
        return None
    seconds = stream.seconds(part)
    if seconds is None:
        return None
    if seconds not in stream.audio_spans:
        with plugin_call(binder, "audio_spans"):
            spans = binder.audio_spans(seconds)
        stream.audio_spans[seconds] = None if spans is None else merge_spans(spans, seconds) or None
    return stream.audio_spans[seconds]


def _guide(streams: dict[Modality, _Stream], guided: list[Modality], tick: dict[Modality, int],
           binder: Binder, terms: list[Term], targets: Mapping[str, Any], settings: GuidanceSettings,
           update: UpdateRule, warn_skip: Callable[[str], None], part_size: int) -> dict[str, Any]:
    """Optimise the guided streams' latents (and prompt embeddings) for one denoising step.

    Part by part (one window, or a few that are samples of their own): x̂0 of the part's slice,
    decoded, embedded and compared with its windows' own targets; each part's backward pass runs
    before the next part is decoded, so memory is that of one part, and the gradients add up."""
    states: dict[Any, dict] = {}
    first = next(iter(streams.values()))
    parts, batch = first.parts(part_size), first.batch
    record: dict[str, Any] = {"similarity": {}, "loss": None, "skipped": []}
    per_window: dict[str, list[list[float]]] = {}
    for opt_step in range(settings.opt_steps):
        leaves = {m: streams[m].latents.detach().requires_grad_(True) for m in guided}
        prompts: dict[tuple[Modality, Any], Tensor] = {}
        tuned_noise: dict[Modality, Tensor] = {}
        for m in guided:
            stream = streams[m]
            trajectory = stream.trajectory
            if settings.prompt_tuning and stream.generator.supports_prompt_tuning and \
                    trajectory.prompt_embeds is not None:
                # The prompt's gradient must pass through the denoiser; the latent's must not.
                trajectory.prompt_embeds = map_prompt_tensors(trajectory.prompt_embeds,
                                                              lambda t: t.detach().requires_grad_(True))
                for key, tensor in prompt_tensors(trajectory.prompt_embeds):
                    prompts[(m, key)] = tensor
                if stream.spans is None:  # the whole batch at once: the prompt rows belong to it
                    with torch.enable_grad(), plugin_call(stream.generator, "predict_noise"):
                        tuned_noise[m] = stream.generator.predict_noise(trajectory, stream.noise_input.detach(),
                                                                        tick[m])
        params = [*leaves.values(), *prompts.values()]
        grads: list[Tensor | None] = [None] * len(params)
        losses: list[Tensor] = []
        for p_index, part in enumerate(parts):
            embeddings: dict[str, Tensor] = {}
            for m in guided:
                stream = streams[m]
                generator, trajectory, index = stream.generator, stream.trajectory, tick[m]
                noise_pred = stream.select(tuned_noise.get(m, stream.noise_pred), part)
                if m not in tuned_noise and any(key[0] == m for key in prompts):
                    with torch.enable_grad(), plugin_call(generator, "predict_noise"):
                        noise_pred = generator.predict_noise(trajectory, stream.select(stream.noise_input, part)
                                                             .detach(), index)
                with torch.enable_grad():
                    with plugin_call(generator, "predict_x0"):
                        x0 = generator.predict_x0(trajectory, stream.select(leaves[m], part), noise_pred, index)
                    spans = _audio_spans(stream, part, binder)
                    with plugin_call(generator, "decode"):
                        decoded = generator.decode(x0, frames=stream.frames, trajectory=trajectory,
                                                   **({} if spans is None else {"spans": spans}))
                    if not generator.guide_whole_decode:
                        decoded = fit_duration(decoded, stream.seconds(part))
                    with plugin_call(binder, "embed"):
                        embeddings[m.value] = binder.embed(decoded)
                stream.embedding[p_index] = embeddings[m.value].detach()
            for m, stream in streams.items():
                if m not in guided and p_index in stream.embedding:
                    embeddings[m.value] = stream.embedding[p_index]

            with torch.enable_grad():
                loss = 0.0
                for term in terms:
                    if not any(_involves(term, m) for m in guided):
                        continue
                    generated = embeddings.get(term.generated.value)
                    target = embeddings.get(term.target, _target(targets, term.target, part, batch))
                    if generated is None or target is None:
                        continue
                    with plugin_call(binder, "similarity"):
                        sim = binder.similarity(generated, target)
                    loss = loss + term.weight * (1 - sim)
                    if opt_step == 0:
                        per_window.setdefault(term.name, []).extend(
                            [float(v) for v in row] for row in sim.detach().reshape(len(part.windows), -1))
                if not isinstance(loss, torch.Tensor):
                    continue
                losses.extend(loss.detach().reshape(len(part.windows), -1))
                # the backward pass runs through the decoders and the binder: name the binder, whose
                # preprocessing is the usual culprit
                with plugin_call(binder, "the guidance backward pass"):
                    part_grads = torch.autograd.grad(loss.sum(), params, allow_unused=True,
                                                     retain_graph=bool(tuned_noise) and p_index + 1 < len(parts))
            grads = [g if acc is None else acc if g is None else acc + g for acc, g in zip(grads, part_grads)]
        if not losses:
            break
        if opt_step == 0:
            record["loss"] = [float(v) for v in torch.stack(losses).sum(0)]
            record["similarity"] = {name: [sum(w[i] for w in rows) / len(rows) for i in range(len(rows[0]))]
                                    for name, rows in per_window.items()}
            if len(first.windows) > 1:
                record["windows"] = {name: [[w[i] for w in rows] for i in range(len(rows[0]))]
                                     for name, rows in per_window.items()}

        # a latent's step is scaled by the latent's own scale at this step (1 for variance-preserving
        # samplers), so it has the same relative size at every noise level
        named = [*((m, None, m.value, settings.lr.get(m.value, 0.0)
                    * streams[m].generator.latent_scale(streams[m].trajectory, tick[m])) for m in leaves),
                 *((m, key, f"{m.value}.prompt" + ("" if key is None else f"[{key}]"), settings.prompt_lr)
                   for m, key in prompts)]
        with cost.stage("update"):
            for (modality, key, name, lr), param, grad in zip(named, params, grads):
                if grad is None or lr == 0:
                    continue
                grad = grad.float()
                if settings.clip > 0:
                    grad = grad * (settings.clip / _per_sample_norm(grad)).clamp(max=1.0)
                new = update(param.detach().float(), grad, states.setdefault(name, {}), lr) if _finite(grad) else None
                if new is None or not _finite(new):
                    warn_skip(name)
                    record["skipped"].append(name)
                    continue
                new = new.to(param.dtype)
                if ".prompt" in name:
                    trajectory = streams[modality].trajectory
                    trajectory.prompt_embeds = replace_prompt_tensor(trajectory.prompt_embeds, key, new)
                else:
                    streams[modality].latents = new
    for stream in streams.values():
        if stream.trajectory.prompt_embeds is not None:
            stream.trajectory.prompt_embeds = map_prompt_tensors(stream.trajectory.prompt_embeds, torch.Tensor.detach)
    return record


def _final_similarity(media: Mapping[Modality, Audio | Video], binder: Binder | None, terms: list[Term],
                      targets: Mapping[str, Any], windows: list[Window]) -> dict[str, list[float]]:
    """Each term's similarity on the final media; over several windows, its mean over them, each
    window's stretch of the output against that window's targets."""
    if binder is None or not terms:
        return {}
    spans = windows if len(windows) > 1 else [None]
    rows: dict[str, list[list[float]]] = {}
    for k, window in enumerate(spans):
        embeddings = {}
        for modality, item in media.items():
            if binder.can_embed(modality):
                part = item if window is None else longform.segment(item, window)
                with plugin_call(binder, "embed"):
                    embeddings[modality.value] = binder.embed(part)
        for term in terms:
            generated = embeddings.get(term.generated.value)
            target = embeddings.get(term.target, _target(targets, term.target, _Part(range(k, k + 1)), 1))
            if generated is not None and target is not None:
                rows.setdefault(term.name, []).append([float(s) for s in binder.similarity(generated, target)])
    return {name: [sum(r[i] for r in per) / len(per) for i in range(len(per[0]))] for name, per in rows.items()}

"""A plugin author's kit: contract checks for a generator or binder, and offline test media.

Run the checks from your own tests::

    from sah.testing import check_binder, check_generator

    def test_my_generator_keeps_the_contract():
        check_generator(MyGenerator(model=tiny_checkpoint), bad_options={"duration": -1.0})

Each check raises `AssertionError` with one line naming what is wrong; the first failing check
stops the run. Both functions return a `Report` of the checks that passed and of those skipped
(with why). `skip=` names checks to leave out (`GENERATOR_CHECKS`, `BINDER_CHECKS`).
"""

from __future__ import annotations

import math
import numbers
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any

from sah.binder import Binder, merge_spans
from sah.component import Component, Licence
from sah.errors import SahError
from sah.generator import GenerationRequest, Generator, Trajectory, fit_duration, predict_x0_from_scheduler
from sah.lazy import lazy_import
from sah.media import Audio, Media, Modality, Text, Video

if TYPE_CHECKING:
    import torch
    from torch import Tensor
else:
    torch = lazy_import("torch")

__all__ = ["BINDER_CHECKS", "GENERATOR_CHECKS", "Report", "blob_video", "check_binder", "check_generator",
           "tone_audio"]

GENERATOR_CHECKS = ("options", "weights", "licence", "prepare", "noise", "duration", "predict_x0", "decode",
                    "spans")
BINDER_CHECKS = ("options", "weights", "licence", "embed", "gradient", "video_frames", "audio_spans", "release")


@dataclass
class Report:
    """What a check run did: the checks that passed, and those skipped with the reason."""

    passed: list[str] = field(default_factory=list)
    skipped: dict[str, str] = field(default_factory=dict)


# --------------------------------------------------------------------------- test media


def tone_audio(frequency: float = 440.0, seconds: float = 1.0, sample_rate: int = 16_000, batch: int = 1,
               channels: int = 1, amplitude: float = 0.4) -> Audio:
    """A sine tone `[batch, channels, samples]`; sample b is at `frequency · (b + 1)`."""
    t = torch.arange(int(seconds * sample_rate)) / sample_rate
    rows = [amplitude * torch.sin(2 * math.pi * frequency * (b + 1) * t + 0.3) for b in range(batch)]
    return Audio(torch.stack(rows)[:, None].expand(-1, channels, -1).contiguous(), sample_rate)


def blob_video(frames: int = 8, height: int = 32, width: int = 32, fps: float = 8.0, batch: int = 1,
               angle: float = 0.0) -> Video:
    """A white Gaussian blob on a ring around the centre, at `angle` radians (sample b turned by a
    further 2πb/8) in every frame: `[batch, frames, 3, H, W]` in [0, 1]."""
    side = min(height, width)
    radius, sigma = 10 / 32 * side, 2.2 / 32 * side
    yy, xx = torch.meshgrid(torch.arange(height, dtype=torch.float32), torch.arange(width, dtype=torch.float32),
                            indexing="ij")
    images = []
    for b in range(batch):
        a = angle + 2 * math.pi * b / 8
        cx, cy = width / 2 - 0.5 + radius * math.cos(a), height / 2 - 0.5 - radius * math.sin(a)
        images.append(torch.exp(-((xx - cx) ** 2 + (yy - cy) ** 2) / (2 * sigma**2)).clamp(0, 1))
    pixels = torch.stack(images)[:, None, None].expand(-1, frames, 3, -1, -1).contiguous()
    return Video(pixels, fps=fps)


# --------------------------------------------------------------------------- shared helpers


def sample_unguided(generator: Generator, request: GenerationRequest | Trajectory) -> Audio | Video:
    """Unguided sampling through the Generator interface, step by step as the aligner drives it,
    and the decoded media cut to the run's duration: what a plugin's pipeline-parity test compares."""
    trajectory = request if isinstance(request, Trajectory) else generator.prepare(request)
    latents = trajectory.latents
    for i in range(trajectory.num_steps):
        _, latents = generator.denoise_step(trajectory, latents, i)
    with torch.no_grad():
        return fit_duration(generator.decode(latents, trajectory=trajectory), trajectory.duration)


def _fail(what: str) -> None:
    raise AssertionError(what)


def _skips(skip: Iterable[str], known: Sequence[str]) -> set[str]:
    skip = set(skip)
    unknown = skip - set(known)
    if unknown:
        raise ValueError(f"unknown checks {sorted(unknown)}; the checks are {', '.join(known)}")
    return skip


def _check_options(component: Component, bad_options: Mapping[str, Any] | None, report: Report) -> None:
    """The declared defaults are taken, and a bad value is refused with a SahError by the class
    alone (`resolve_options`: the `Option`s, then `check_options`), so before anything loads."""
    cls, label = type(component), type(component).__name__
    try:
        cls.resolve_options({})
    except SahError as exc:
        _fail(f"{label} refuses its own declared defaults {cls.option_defaults()}: {exc}")
    if bad_options is None:
        report.skipped["options"] = "no bad_options example given: only the defaults were checked"
        return
    undeclared = set(bad_options) - set(cls.options)
    if undeclared:
        raise ValueError(f"bad_options names options {cls.__name__} does not declare: {sorted(undeclared)}")
    try:
        cls.resolve_options(dict(bad_options))
    except SahError:
        report.passed.append("options")
        return
    except Exception as exc:  # noqa: BLE001 - any other type is the failure being reported
        _fail(f"{label} raised {type(exc).__name__}, not sah.errors.SahError, for the options {dict(bad_options)}")
    _fail(f"{label} accepted the bad options {dict(bad_options)}: its Options or check_options must raise "
          "sah.errors.SahError before anything loads")


def _check_weights(component: Component, report: Report) -> None:
    label = type(component).__name__
    refs = type(component).weights(component.model, dict(component.config))
    if not isinstance(refs, list) or not all(
            isinstance(r, tuple) and len(r) == 2 and isinstance(r[0], str) and (r[1] is None or isinstance(r[1], str))
            for r in refs):
        _fail(f"{label}.weights() must return a list of (ref, flag) tuples of str and str | None, got {refs!r}")
    report.passed.append("weights")


def _check_licence(component: Component, report: Report) -> None:
    licence = type(component).licence_for(component.model)
    if not isinstance(licence, Licence):
        _fail(f"{type(component).__name__} declares no licence: set `licence = sah.component.Licence(code, weights, "
              f"commercial)` (got {licence!r})")
    report.passed.append("licence")


def _directional_check(fn: Any, x: Tensor, what: str, rtol: float, media: bool = False, seed: int = 0) -> None:
    """`fn(x)` (a tensor) is differentiable in `x`, and its autograd derivative along a random
    direction agrees with a central finite difference. For media the direction is a random mix of
    the media shifted along its last two axes (white noise would leave the signal's band, where a
    log spectrogram is far from linear); for latents it is Gaussian."""
    g = torch.Generator().manual_seed(seed)
    x = x.detach()
    if media:
        shape = (x.shape[0],) + (1,) * (x.ndim - 1)
        direction = (torch.randn(shape, generator=g).to(x) * x.roll(3, -1)
                     + torch.randn(shape, generator=g).to(x) * x.roll(5, -2))
    else:
        direction = torch.randn(x.shape, generator=g).to(x)
    leaf = x.clone().requires_grad_(True)
    with torch.enable_grad():
        out = fn(leaf)
        probe = torch.randn(out.shape, generator=g).to(out.device, torch.float64)
        loss = (out.double() * probe).sum()
        magnitude = float((out.detach().double() * probe).abs().sum())
        if not loss.requires_grad:
            _fail(f"{what} is not differentiable: its output carries no gradient (detached, or computed under no_grad)")
        (grad,) = torch.autograd.grad(loss, leaf, allow_unused=True)
    if grad is None:
        _fail(f"{what} is not differentiable: no gradient reaches the input tensor")
    autograd = float((grad.double() * direction.double()).sum())
    h = 1e-2 * max(1.0, float(x.float().pow(2).mean().sqrt()))
    with torch.no_grad():
        plus = float((fn(x + h * direction).double() * probe).sum())
        minus = float((fn(x - h * direction).double() * probe).sum())
    finite = (plus - minus) / (2 * h)
    # the finite difference's own rounding error in float32: of the output, and of the shifted input
    eps = torch.finfo(torch.float32).eps
    floor = 4 * eps * (magnitude + float((grad.double() * x.double()).norm())) / h
    if abs(finite) <= floor and not bool(grad.any()):
        _fail(f"{what} does not change with its input along a random direction: its gradient cannot be tested")
    if abs(autograd - finite) > rtol * max(abs(finite), abs(autograd)) + floor:
        _fail(f"{what}'s gradient disagrees with a central finite difference along a random direction: "
              f"autograd {autograd:.6g}, finite difference {finite:.6g}")


def _media_tensor(media: Audio | Video) -> Tensor:
    return media.waveform if isinstance(media, Audio) else media.frames


# --------------------------------------------------------------------------- generators


def _has_length(generator: Generator) -> bool:
    return ("duration" in type(generator).options or generator.time_axis is not None
            or (generator.modality == Modality.AUDIO and generator.max_duration is not None))


def check_generator(generator: Generator, request: GenerationRequest | None = None, *,
                    bad_options: Mapping[str, Any] | None = None, duration: float | None = None,
                    has_length: bool | None = None, skip: Iterable[str] = (), rtol: float = 5e-2,
                    span_rtol: float = 5e-2) -> Report:
    """Check a loaded generator against the contract the aligner relies on.

    `request` (default: two prompts, seeds 0 and 1, 10 steps) is what it prepares. `bad_options`
    is a bad value of a declared option, which `check_options` must refuse with a `SahError`.
    `duration` is the run length asked of a generator that has a length (default: ¾ of
    `max_duration`, else 1.5 s); `has_length` says whether it has one (default: it declares a
    `duration` option, a `time_axis`, or is audio with a `max_duration`). `rtol` bounds the
    gradient check's relative disagreement, `span_rtol` that of a decode of audio spans, and of its
    gradient, from the whole decode's under them (a decoder whose normalisation or attention sees
    the whole latent differs a little when it decodes only a stretch of it)."""
    skip = _skips(skip, GENERATOR_CHECKS)
    report = Report()
    label = type(generator).__name__
    if request is None:
        request = GenerationRequest(prompts=["north", "east"], seeds=[0, 1], num_steps=10)
    if request.batch_size < 2:
        raise ValueError("check_generator needs a request of at least two samples to check batch independence")

    steps: list[tuple[str, Any]] = [
        ("options", lambda: _check_options(generator, bad_options, report)),
        ("weights", lambda: _check_weights(generator, report)),
        ("licence", lambda: _check_licence(generator, report)),
    ]
    for name, run in steps:
        if name not in skip:
            run()

    trajectory = generator.prepare(request)
    if "prepare" not in skip:
        _check_trajectory(generator, request, trajectory)
        report.passed.append("prepare")
    if "noise" not in skip:
        _check_noise(generator, request, trajectory)
        report.passed.append("noise")
    if "duration" not in skip:
        _check_duration(generator, request, duration, has_length, report)
    if "predict_x0" not in skip:
        _check_predict_x0(generator, trajectory, report, rtol)
    if "decode" not in skip:
        _directional_check(lambda z: _media_tensor(generator.decode(z, trajectory=trajectory)),
                           trajectory.latents, f"{label}.decode", rtol)
        report.passed.append("decode")
    if "spans" not in skip:
        _check_spans(generator, trajectory, report, span_rtol)
    return report


def _check_spans(generator: Generator, trajectory: Trajectory, report: Report, span_rtol: float) -> None:
    """`decode(..., spans=...)` keeps the whole decode's length, and its samples under the spans and
    their gradient are the whole decode's (within `span_rtol`)."""
    label = type(generator).__name__
    if generator.modality is not Modality.AUDIO or not generator.supports_audio_spans:
        report.skipped["spans"] = f"{label} does not decode audio spans (supports_audio_spans)"
        return
    leaf = trajectory.latents.detach().clone().requires_grad_(True)
    with torch.enable_grad():
        whole = generator.decode(leaf, trajectory=trajectory)
        d, rate = whole.duration, whole.sample_rate
        spans = [(0.2 * d, 0.35 * d), (0.6 * d, 0.7 * d)]
        part = generator.decode(leaf, trajectory=trajectory, spans=spans)
        if not isinstance(part, Audio) or part.waveform.shape != whole.waveform.shape:
            _fail(f"{label}.decode(spans=...) must give audio of the whole decode's shape "
                  f"{tuple(whole.waveform.shape)}, got {tuple(getattr(part, 'waveform', part).shape)}")
        cuts = [slice(math.ceil(a * rate), int(b * rate)) for a, b in spans]
        for (a, b), cut in zip(spans, cuts):
            if _relative_error(part.waveform[..., cut], whole.waveform[..., cut]) > span_rtol:
                _fail(f"{label}.decode(spans=...) differs from the whole decode over {a:.3g}-{b:.3g} s by "
                      f"{_relative_error(part.waveform[..., cut], whole.waveform[..., cut]):.3g} (relative), "
                      f"more than span_rtol={span_rtol:g}")
        probe = torch.randn(whole.waveform.shape, generator=torch.Generator().manual_seed(0)).to(whole.waveform)
        under = sum((part.waveform[..., c] * probe[..., c]).sum() for c in cuts)
        if not under.requires_grad:
            _fail(f"{label}.decode(spans=...) is not differentiable: its output carries no gradient")
        (got,) = torch.autograd.grad(under, leaf, allow_unused=True)
        (expected,) = torch.autograd.grad(sum((whole.waveform[..., c] * probe[..., c]).sum() for c in cuts), leaf)
    if got is None or _relative_error(got, expected) > span_rtol:
        error = "no gradient reaches the latents" if got is None else f"{_relative_error(got, expected):.3g}"
        _fail(f"{label}.decode(spans=...)'s gradient under the spans differs from the whole decode's: {error} "
              f"(relative), more than span_rtol={span_rtol:g}")
    report.passed.append("spans")


def _relative_error(got: Tensor, expected: Tensor) -> float:
    return float((got - expected).double().norm() / expected.double().norm().clamp_min(1e-12))


def _check_trajectory(generator: Generator, request: GenerationRequest, trajectory: Trajectory) -> None:
    label = type(generator).__name__
    if not isinstance(trajectory, Trajectory):
        _fail(f"{label}.prepare must return a sah.Trajectory, got {type(trajectory).__name__}")
    if not isinstance(trajectory.latents, torch.Tensor) or trajectory.latents.shape[0] != request.batch_size:
        shape = getattr(trajectory.latents, "shape", None)
        _fail(f"{label}.prepare's latents must have one row per seed ({request.batch_size}), got shape {shape}")
    if len(trajectory.timesteps) < 1:
        _fail(f"{label}.prepare set no timesteps")
    if generator.supports_prompt_tuning and trajectory.prompt_embeds is None:
        _fail(f"{label} declares supports_prompt_tuning but its trajectory has no prompt_embeds")


def _check_noise(generator: Generator, request: GenerationRequest, trajectory: Trajectory) -> None:
    label = type(generator).__name__
    again = generator.prepare(request).latents
    if not torch.equal(again, trajectory.latents):
        _fail(f"{label}.prepare's initial noise is not seeded: the same request drew different latents")
    for i, (prompt, seed) in enumerate(zip(request.prompts, request.seeds)):
        alone = generator.prepare(GenerationRequest([prompt], [seed], request.negative_prompt, request.num_steps,
                                                    request.cfg_scale, request.duration)).latents
        if not torch.allclose(alone[0], trajectory.latents[i], rtol=1e-5, atol=1e-6):
            _fail(f"{label}.prepare's initial noise depends on the batch: sample {i} (seed {seed}) differs from the "
                  "same seed drawn alone (use sah.generator.seeded_noise)")
    if len(set(request.seeds)) > 1 and torch.equal(trajectory.latents[0], trajectory.latents[1]) \
            and request.seeds[0] != request.seeds[1]:
        _fail(f"{label}.prepare ignores the seeds: samples with seeds {request.seeds[:2]} have the same noise")


def _check_duration(generator: Generator, request: GenerationRequest, duration: float | None,
                    has_length: bool | None, report: Report) -> None:
    label = type(generator).__name__
    length = _has_length(generator) if has_length is None else has_length
    if not length:
        report.skipped["duration"] = f"{label} declares no length (no duration option, time_axis or audio max_duration)"
        return
    seconds = duration if duration is not None else (0.75 * generator.max_duration if generator.max_duration
                                                     else 1.5)
    asked = GenerationRequest(request.prompts, request.seeds, request.negative_prompt, request.num_steps,
                              request.cfg_scale, seconds)
    trajectory = generator.prepare(asked)
    fps = generator.fps()
    tolerance = max(0.02 * seconds, 1.0 / fps if fps else 0.0)
    if trajectory.duration is None or abs(trajectory.duration - seconds) > tolerance:
        _fail(f"{label}.prepare does not honour request.duration: asked for {seconds:g} s, trajectory.duration is "
              f"{trajectory.duration}")
    if generator.modality == Modality.AUDIO:
        with torch.no_grad():
            audio = generator.decode(trajectory.latents, trajectory=trajectory)
        if audio.num_samples < int(trajectory.duration * audio.sample_rate):
            _fail(f"{label}.decode's audio lasts {audio.duration:g} s, less than trajectory.duration "
                  f"{trajectory.duration:g} s")
    report.passed.append("duration")


def _check_predict_x0(generator: Generator, trajectory: Trajectory, report: Report, rtol: float) -> None:
    label = type(generator).__name__
    scheduler = trajectory.state.get("scheduler")
    if scheduler is None:
        report.skipped["predict_x0"] = f"{label} keeps no scheduler in trajectory.state['scheduler']"
        return
    g = torch.Generator().manual_seed(1)
    n = trajectory.num_steps
    for index in sorted({0, n // 2, max(0, n - 2)}):
        latents = torch.randn(trajectory.latents.shape, generator=g).to(trajectory.latents)
        noise = torch.randn(trajectory.latents.shape, generator=g).to(trajectory.latents)
        try:
            expected = predict_x0_from_scheduler(scheduler, latents, noise, trajectory.timesteps[index], index=index)
        except SahError as exc:
            report.skipped["predict_x0"] = f"sah cannot compute x̂0 for this scheduler: {exc}"
            return
        leaf = latents.clone().requires_grad_(True)
        with torch.enable_grad():
            got = generator.predict_x0(trajectory, leaf, noise, index)
            if not got.requires_grad:
                _fail(f"{label}.predict_x0 is not differentiable in the latents")
        if not torch.allclose(got.detach().float(), expected.float(), rtol=1e-3, atol=1e-4):
            err = float((got.detach().float() - expected.float()).abs().max())
            _fail(f"{label}.predict_x0 is not x̂0 at step {index}'s own noise level (timestep "
                  f"{int(trajectory.timesteps[index])}): it differs from predict_x0_from_scheduler by up to {err:.3g}")
    report.passed.append("predict_x0")


# --------------------------------------------------------------------------- binders


def _default_media(binder: Binder) -> list[Media]:
    media: list[Media] = []
    if binder.can_embed(Modality.AUDIO):
        media.append(tone_audio(batch=2))
    if binder.can_embed(Modality.VIDEO):
        media.append(blob_video(batch=2))
    if binder.can_embed(Modality.TEXT):
        media.append(Text(["north", "east"]))
    return media


def check_binder(binder: Binder, media: Sequence[Media] | None = None, *,
                 bad_options: Mapping[str, Any] | None = None,
                 frame_counts: Sequence[int] = (6, 8, 16, 49), skip: Iterable[str] = (),
                 rtol: float = 5e-2) -> Report:
    """Check a loaded binder: `embed` gives `[B, D]` floats for each of `media` (default: a tone,
    a blob clip and two prompts, for the modalities it declares), differentiable in the media
    tensor for audio and video; `video_frames` picks indices inside clips of `frame_counts`
    frames; options, weights and licence as for `check_generator`."""
    skip = _skips(skip, BINDER_CHECKS)
    report = Report()
    label = type(binder).__name__
    for name, run in [("options", lambda: _check_options(binder, bad_options, report)),
                      ("weights", lambda: _check_weights(binder, report)),
                      ("licence", lambda: _check_licence(binder, report))]:
        if name not in skip:
            run()
    items = list(_default_media(binder) if media is None else media)
    if "embed" not in skip:
        for item in items:
            with torch.no_grad():
                out = binder.embed(item)
            batch = item.batch_size if not isinstance(item, Text) else len(item.prompts)
            if not isinstance(out, torch.Tensor) or out.ndim != 2 or out.shape[0] != batch:
                _fail(f"{label}.embed({type(item).__name__}) must return [B, D] with B = {batch}, got "
                      f"{getattr(out, 'shape', type(out).__name__)}")
            if not out.is_floating_point() or not bool(torch.isfinite(out).all()):
                _fail(f"{label}.embed({type(item).__name__}) must return finite floats, got {out.dtype}")
        report.passed.append("embed")
    if "gradient" not in skip:
        for item in items:
            if isinstance(item, Audio):
                _directional_check(lambda w, a=item: binder.embed(Audio(w, a.sample_rate)), item.waveform,
                                   f"{label}.embed(Audio)", rtol, media=True)
            elif isinstance(item, Video):
                _directional_check(lambda f, v=item: binder.embed(Video(f, v.fps, frame_indices=v.frame_indices,
                                                                        total_frames=v.total_frames)),
                                   item.frames, f"{label}.embed(Video)", rtol, media=True)
        report.passed.append("gradient")
    if "video_frames" not in skip:
        if binder.can_embed(Modality.VIDEO):
            for count in frame_counts:
                picked = binder.video_frames(count, 8.0)
                if picked is not None:
                    bad = [i for i in picked if not (isinstance(i, numbers.Integral) and 0 <= i < count)]
                    if bad:
                        _fail(f"{label}.video_frames({count}, 8.0) picks indices outside 0..{count - 1}: {bad}")
            report.passed.append("video_frames")
        else:
            report.skipped["video_frames"] = f"{label} does not embed video"
    if "audio_spans" not in skip:
        _check_audio_spans(binder, report)
    if "release" not in skip:
        _check_release(binder, items)
        report.passed.append("release")
    return report


def _check_audio_spans(binder: Binder, report: Report) -> None:
    """Audio whose samples outside `audio_spans(d)` are replaced by noise embeds as the audio itself,
    at a few lengths and two sample rates."""
    label = type(binder).__name__
    if not binder.can_embed(Modality.AUDIO):
        report.skipped["audio_spans"] = f"{label} does not embed audio"
        return
    checked = False
    for seconds in (1.0, 2.5, 7.3):
        spans = binder.audio_spans(seconds)
        if spans is None:
            continue
        merged = merge_spans(spans, seconds)
        if merged is None:  # all of it
            continue
        for rate in (16_000, 44_100):
            audio = tone_audio(330.0, seconds, rate, batch=2)
            keep = torch.zeros(audio.num_samples, dtype=torch.bool)
            for a, b in merged:
                keep[max(0, math.floor(a * rate)):math.ceil(b * rate)] = True
            noise = 0.5 * torch.randn(audio.waveform.shape, generator=torch.Generator().manual_seed(0))
            masked = Audio(torch.where(keep, audio.waveform, noise), rate)
            with torch.no_grad():
                expected, got = binder.embed(audio), binder.embed(masked)
            if not torch.allclose(got, expected, rtol=1e-4, atol=1e-5):
                _fail(f"{label}.embed reads {seconds:g} s of audio at {rate} Hz outside audio_spans({seconds:g}) = "
                      f"{[(round(a, 4), round(b, 4)) for a, b in merged]}: noise there changes its embedding")
        checked = True
    if checked:
        report.passed.append("audio_spans")
    else:
        report.skipped["audio_spans"] = f"{label}.audio_spans is None: it reads all of the audio"


def _check_release(binder: Binder, items: Sequence[Media]) -> None:
    """After `release(keep)` every modality still embeds as before: what was kept, and what was
    released (loaded again). Each modality is kept alone in turn."""
    label = type(binder).__name__
    with torch.no_grad():
        before = [binder.embed(item) for item in items]
        for keep in sorted({_modality_of(item) for item in items}, key=lambda m: m.value):
            binder.release(frozenset({keep}))
            for item, expected in zip(items, before):
                again = binder.embed(item)
                if not torch.allclose(again, expected, rtol=1e-4, atol=1e-5):
                    _fail(f"{label}.embed({type(item).__name__}) changed after release(keep={{{keep.value}}}): "
                          "a released modality must embed as before once loaded again")


def _modality_of(item: Media) -> Modality:
    return item.modality

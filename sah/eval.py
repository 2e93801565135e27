"""Scoring generated clips: binder similarities, AV-Align and the toy world's oracle.

    items = find_items(["outputs/"])          # sah outputs (sidecar JSON) or any mp4/wav pairs
    report = evaluate(items, ["toy-av", "av-align", "toy-hit"])
    report.rows[0]["scores"], report.summary["av-align"]

Metric names:
- `BINDER-av`, `BINDER-tv`, `BINDER-ta` for every installed binder that embeds both modalities
  (a = audio, v = video, t = the prompt): cosine similarity of the two embeddings, ×100 as papers
  report ImageBind/CLIP/CLAP scores.
- `av-align`: AV-Align (see sah.avalign), in [0, 1].
- `toy-hit`: 1 when every class the toy oracle reads (audio tone, video blob) and the class the prompt
  names agree, else 0; `toy-valid`: 1 when all media present are clean toy-world media.
"""

from __future__ import annotations

import csv
import glob
import json
import math
import os
from collections.abc import Iterable, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import torch

from sah import io
from sah.binder import Binder
from sah.errors import SahError
from sah.media import Audio, Modality, Text, Video, concat
from sah.registry import Registry, get_registry

VIDEO_SUFFIXES = (".mp4", ".mov", ".mkv", ".webm", ".avi", ".m4v")
AUDIO_SUFFIXES = (".wav", ".flac", ".mp3", ".ogg", ".m4a", ".opus")
PAIRS = {"av": (Modality.AUDIO, Modality.VIDEO), "tv": (Modality.TEXT, Modality.VIDEO),
         "ta": (Modality.TEXT, Modality.AUDIO)}
TOY_METRICS = ("toy-hit", "toy-valid")
AV_ALIGN = "av-align"


@dataclass
class Item:
    """One clip to score: a video file, an audio file, or both, and the sah sidecar if there is one."""

    name: str
    video: Path | None = None
    audio: Path | None = None
    sidecar: Path | None = None
    meta: dict[str, Any] = field(default_factory=dict)
    error: str | None = None  # why it cannot be scored (an unreadable file): its row says so, the rest go on

    @property
    def prompt(self) -> str:
        return str(self.meta.get("prompt") or "")

    @property
    def task(self) -> str:
        return str(self.meta.get("task") or "")

    @property
    def key(self) -> str:
        """The path that identifies the item: its sidecar, else its video, else its audio."""
        return os.fspath(self.sidecar or self.video or self.audio)


@dataclass
class EvalReport:
    metrics: list[str]
    rows: list[dict[str, Any]]  # name, files, task, prompt, scores {metric: value or None}
    summary: dict[str, dict[str, float | int | None]]  # metric -> mean, std, n

    def to_json(self) -> dict[str, Any]:
        return {"metrics": self.metrics, "scale": {"binder": "cosine x 100", AV_ALIGN: "[0, 1]",
                                                    "toy": "0 or 1 per clip"},
                "summary": self.summary, "items": self.rows}


# --------------------------------------------------------------------------- finding clips


def _read_sidecar(path: Path) -> dict[str, Any] | None:
    """The sidecar's contents, or None for a JSON file that is not a sah sidecar (an eval result, say)."""
    try:
        data = json.loads(path.read_text(encoding="utf-8"))
    except (OSError, UnicodeDecodeError, json.JSONDecodeError):
        return None
    return data if isinstance(data, dict) and isinstance(data.get("files"), dict) and "task" in data else None


def _from_sidecar(path: Path, meta: dict[str, Any]) -> Item:
    files = {fmt: path.parent / str(name) for fmt, name in meta["files"].items()}
    video = files.get("mp4") if files.get("mp4") and files["mp4"].exists() else None
    audio = files.get("wav") if files.get("wav") and files["wav"].exists() else None
    item = Item(str(meta.get("name") or path.stem), video, audio, path, meta)
    if video is None and audio is None:
        item.error = "the sidecar's media files are missing"
    return item


def _group(files: Iterable[Path]) -> list[Item]:
    """One item per sah sidecar (with the media it lists), per video + audio pair of one stem, and
    per other media file. Two videos (or two audios) of one stem, `test.mp4` and `test.webm`, are
    two items, named with their suffixes: nothing says which belongs with which."""
    by_stem: dict[Path, dict[str, list[Path]]] = {}
    for file in files:
        if file.name.startswith("."):  # hidden temp files of an atomic write in progress
            continue
        suffix = file.suffix.lower()
        kind = "json" if suffix == ".json" else "video" if suffix in VIDEO_SUFFIXES else \
            "audio" if suffix in AUDIO_SUFFIXES else None
        if kind:
            by_stem.setdefault(file.with_suffix(""), {}).setdefault(kind, []).append(file)
    items = []
    for stem, found in sorted(by_stem.items()):
        media = sorted(found.get("video", []) + found.get("audio", []))
        meta = _read_sidecar(found["json"][0]) if "json" in found else None
        if meta is not None:
            item = _from_sidecar(found["json"][0], meta)
            items.append(item)
            media = [m for m in media if m not in (item.video, item.audio)]
        videos = [m for m in media if m.suffix.lower() in VIDEO_SUFFIXES]
        audios = [m for m in media if m.suffix.lower() in AUDIO_SUFFIXES]
        if meta is None and len(videos) <= 1 and len(audios) <= 1 and media:
            items.append(Item(stem.name, videos[0] if videos else None, audios[0] if audios else None))
        else:
            items.extend(Item(m.name, m if m in videos else None, m if m in audios else None) for m in media)
    return items


def find_items(paths: Sequence[str | os.PathLike]) -> list[Item]:
    """Clips under `paths` (files or folders, searched recursively): a sah sidecar with its media, or an
    mp4 with a wav of the same stem, or a lone mp4 (its own audio track) or wav."""
    files: list[Path] = []
    given: set[Path] = set()
    for raw in paths:
        path = Path(raw)
        if path.is_dir():
            found = [p for p in sorted(path.rglob("*")) if p.is_file()]
            files.extend(found)
            given.update(found)
        elif path.is_file():
            files.append(path)
            given.add(path)
            # a file named alone still pairs with its wav (or mp4) and sidecar of the same stem
            files.extend(p for p in path.parent.glob(f"{glob.escape(path.stem)}.*") if p != path and p.is_file())
        else:
            raise SahError(f"{path}: no such file or folder")
    items = [item for item in _group(dict.fromkeys(files))
             if given & {p for p in (item.video, item.audio, item.sidecar) if p is not None}]
    items = list({item.key: item for item in items}.values())
    if not items:
        raise SahError(f"no sah outputs or mp4/wav files under {', '.join(map(str, paths))}")
    return items


# --------------------------------------------------------------------------- metrics


def binder_metrics(registry: Registry | None = None) -> list[str]:
    registry = registry or get_registry()
    return [f"{name}-{pair}" for name, cls in sorted(registry.binders.items())
            for pair, (a, b) in PAIRS.items() if cls.can_embed(a) and cls.can_embed(b)]


def _toy_available() -> bool:
    try:
        import sah.plugins.toy.oracle  # noqa: F401
    except ImportError:
        return False
    return True


def available_metrics(registry: Registry | None = None) -> list[str]:
    return [*binder_metrics(registry), AV_ALIGN, *(TOY_METRICS if _toy_available() else ())]


def default_metrics(items: Sequence[Item], registry: Registry | None = None) -> list[str]:
    """What the clips themselves suggest: the binder that guided them (its pairs the clips have),
    AV-Align where audio and video are both there, and the oracle for toy-world clips."""
    registry = registry or get_registry()
    chosen: list[str] = []
    for item in items:
        config = item.meta.get("config") or {}
        binder = (config.get("binder") or {}).get("name")
        if binder in registry.binders:
            have = {Modality.AUDIO} if item.audio or _mp4_has_audio(item) else set()
            have |= {Modality.VIDEO} if item.video else set()
            have |= {Modality.TEXT} if item.prompt.strip() else set()
            chosen += [f"{binder}-{pair}" for pair, (a, b) in PAIRS.items()
                       if {a, b} <= have and registry.binders[binder].can_embed(a) and
                       registry.binders[binder].can_embed(b)]
        if item.video is not None and (item.audio is not None or _mp4_has_audio(item)):
            chosen.append(AV_ALIGN)
        generators = {(config.get(m) or {}).get("generator") for m in ("audio", "video")}
        if _toy_available() and generators & {"toy-audio", "toy-video"}:
            chosen += list(TOY_METRICS)
    ordered = [m for m in available_metrics(registry) if m in chosen]
    return ordered or [AV_ALIGN]


def _mp4_has_audio(item: Item) -> bool:
    if item.video is None or item.error:
        return False
    try:
        return io.probe(item.video)["audio"] is not None
    except SahError as exc:  # unreadable: `evaluate` reports it in the item's row
        item.error = str(exc)
        return False


def check_metrics(metrics: Sequence[str], registry: Registry | None = None) -> list[str]:
    known = available_metrics(registry)
    unknown = [m for m in metrics if m not in known]
    if unknown:
        raise SahError(f"unknown metric {unknown[0]!r}; available: {', '.join(known)}")
    if AV_ALIGN in metrics:
        from sah.avalign import _cv2

        _cv2()
    return list(dict.fromkeys(metrics))


@dataclass
class _Clip:
    item: Item
    audio: Audio | None
    video: Video | None


def _load(item: Item) -> _Clip:
    """The item's media, or, for a file that cannot be read, an empty clip with `item.error` set."""
    if item.error:
        return _Clip(item, None, None)
    try:
        return _read(item)
    except SahError as exc:
        item.error = str(exc)
        return _Clip(item, None, None)


def _read(item: Item) -> _Clip:
    video = io.read_video(item.video) if item.video is not None else None
    audio = io.read_audio(item.audio) if item.audio is not None else video.audio if video is not None else None
    if video is not None:
        video = Video(video.frames, video.fps)  # the track is held once, as `audio`
    return _Clip(item, audio, video)


def _shape_key(media: Audio | Video) -> tuple:
    if isinstance(media, Audio):
        return ("audio", media.sample_rate, tuple(media.waveform.shape[1:]))
    return ("video", media.fps, tuple(media.frames.shape[1:]))


def _embed_all(binder: Binder, media: list[Audio | Video], batch_size: int) -> list[torch.Tensor]:
    """Embeddings of each clip, batching clips of one shape together."""
    out: list[torch.Tensor | None] = [None] * len(media)
    groups: dict[tuple, list[int]] = {}
    for i, m in enumerate(media):
        groups.setdefault(_shape_key(m), []).append(i)
    with torch.no_grad():
        for index in groups.values():
            for start in range(0, len(index), batch_size):
                chunk = index[start:start + batch_size]
                batch = concat([media[i] for i in chunk]).to(binder.device)
                for i, row in zip(chunk, binder.embed(batch).float().cpu()):
                    out[i] = row
    return out  # type: ignore[return-value]


def _binder_scores(binder: Binder, pairs: list[str], clips: list[_Clip], batch_size: int,
                   scores: list[dict[str, float | None]]) -> None:
    name = binder.name
    needs = {m for pair in pairs for m in PAIRS[pair]}
    embedded: dict[Modality, dict[int, torch.Tensor]] = {}
    for modality in needs - {Modality.TEXT}:
        have = [i for i, c in enumerate(clips) if getattr(c, modality.value) is not None]
        rows = _embed_all(binder, [getattr(clips[i], modality.value) for i in have], batch_size)
        embedded[modality] = dict(zip(have, rows))
    if Modality.TEXT in needs:
        have = [i for i, c in enumerate(clips) if c.item.prompt.strip()]
        prompts = sorted({clips[i].item.prompt for i in have})
        if prompts:
            with torch.no_grad():
                table = binder.embed(Text(prompts)).float().cpu()
            embedded[Modality.TEXT] = {i: table[prompts.index(clips[i].item.prompt)] for i in have}
        else:
            embedded[Modality.TEXT] = {}
    for pair in pairs:
        a, b = PAIRS[pair]
        for i in range(len(clips)):
            ea, eb = embedded[a].get(i), embedded[b].get(i)
            scores[i][f"{name}-{pair}"] = None if ea is None or eb is None else \
                round(100.0 * float(binder.similarity(ea[None], eb[None])[0]), 4)


def _toy_scores(clip: _Clip) -> dict[str, float | None]:
    from sah.plugins.toy import oracle, world

    classes, valid = [], []
    if clip.audio is not None:
        classes.append(int(oracle.audio_class(clip.audio)[0]))
        valid.append(bool(oracle.audio_valid(clip.audio)[0]))
    if clip.video is not None:
        classes.append(int(oracle.video_class(clip.video)[0]))
        valid.append(bool(oracle.video_valid(clip.video)[0]))
    named = world.class_of_prompt(clip.item.prompt)
    if named is not None:
        classes.append(named)
    return {"toy-hit": float(len(set(classes)) == 1) if len(classes) >= 2 else None,
            "toy-valid": float(all(valid)) if valid else None}


def _av_align_score(clip: _Clip) -> float | None:
    from sah.avalign import av_align

    if clip.audio is None or clip.video is None:
        return None
    result = av_align(clip.audio.waveform[0], clip.audio.sample_rate, clip.video.frames[0], clip.video.fps)
    return None if math.isnan(result.score) else round(result.score, 6)


def load_binders(metrics: Sequence[str], registry: Registry | None = None, device: str = "auto",
                 models: dict[str, str] | None = None, options: dict[str, dict[str, Any]] | None = None
                 ) -> dict[str, Binder]:
    """One instance of each binder the metrics name. `models`/`options` are by binder name."""
    from sah.api import resolve_device

    registry = registry or get_registry()
    names = sorted({m.rsplit("-", 1)[0] for m in metrics if m.rsplit("-", 1)[-1] in PAIRS and
                    m.rsplit("-", 1)[0] in registry.binders})
    binders = {}
    for name in names:
        cls = registry.binder(name)
        opts = {k: v for k, v in ((options or {}).get(name) or {}).items() if k in cls.options}
        try:
            binders[name] = cls(model=(models or {}).get(name) or None, device=resolve_device(device),
                                dtype=torch.float32, **opts)
        except SahError:
            raise
        except Exception as exc:
            raise SahError(f"binder {name!r} failed to load: {type(exc).__name__}: {exc}") from exc
    return binders


def evaluate(items: Sequence[Item], metrics: Sequence[str], binders: dict[str, Binder] | None = None,
             batch_size: int = 8, registry: Registry | None = None) -> EvalReport:
    """Score every item on every metric (None where a metric does not apply to an item).

    Clips are decoded `batch_size` at a time, so memory stays bounded; each binder is loaded once."""
    metrics = check_metrics(metrics, registry)
    binders = binders if binders is not None else load_binders(metrics, registry)
    by_binder: dict[str, list[str]] = {}
    for m in metrics:
        prefix, _, pair = m.rpartition("-")
        if pair in PAIRS and prefix in binders:
            by_binder.setdefault(prefix, []).append(pair)
    rows = []
    for start in range(0, len(items), batch_size):
        clips = [_load(item) for item in items[start:start + batch_size]]
        scores: list[dict[str, float | None]] = [{} for _ in clips]
        for name, pairs in by_binder.items():
            _binder_scores(binders[name], pairs, clips, batch_size, scores)
        for clip, score in zip(clips, scores):
            if AV_ALIGN in metrics:
                score[AV_ALIGN] = _av_align_score(clip)
            if set(TOY_METRICS) & set(metrics):
                score.update({k: v for k, v in _toy_scores(clip).items() if k in metrics})
            item = clip.item
            rows.append({"name": item.name, "task": item.task, "prompt": item.prompt,
                         "seed": item.meta.get("seed"),
                         "files": {k: os.fspath(p) for k, p in (("video", item.video), ("audio", item.audio),
                                                                ("sidecar", item.sidecar)) if p is not None},
                         "scores": {m: None if item.error else score.get(m) for m in metrics},
                         "error": item.error})
    return EvalReport(list(metrics), rows, summarize(rows, metrics))


def summarize(rows: Sequence[dict[str, Any]], metrics: Sequence[str]) -> dict[str, dict[str, float | int | None]]:
    """Mean and sample standard deviation (n - 1) of each metric over the items it applies to."""
    summary: dict[str, dict[str, float | int | None]] = {}
    for metric in metrics:
        values = [r["scores"][metric] for r in rows if r["scores"].get(metric) is not None]
        n = len(values)
        mean = sum(values) / n if n else None
        std = math.sqrt(sum((v - mean) ** 2 for v in values) / (n - 1)) if n > 1 else (0.0 if n else None)
        summary[metric] = {"mean": mean, "std": std, "n": n}
    return summary


def write_json(report: EvalReport, path: str | os.PathLike, overwrite: bool = True) -> Path:
    return io.write_text_atomic(path, json.dumps(report.to_json(), indent=2) + "\n", overwrite=overwrite)


FOLDER_SCORES = "eval.json"


def update_folder_scores(report: EvalReport, folder: str | os.PathLike) -> Path | None:
    """Write or update FOLDER/eval.json, the scores `sah report FOLDER` shows, with the rows of the
    clips under FOLDER. Rows of clips scored before and not now are kept while their files exist,
    so scoring a folder bit by bit, or with one metric and then another, adds up. Paths in this file
    are relative to FOLDER (`"base": "."`), so the folder can be moved. None when no clip is there."""
    root = Path(folder).resolve()
    path = root / FOLDER_SCORES

    def inside(file: str) -> bool:
        return Path(file).resolve().is_relative_to(root)

    def rebased(row: dict[str, Any], base: Path) -> dict[str, Any]:
        files = {k: os.path.relpath((base / v).resolve(), root) for k, v in row["files"].items()}
        return {**row, "files": files}

    new = [rebased(r, Path.cwd()) for r in report.rows if r["files"] and all(inside(f) for f in r["files"].values())]
    if not new:
        return None
    metrics = list(report.metrics)
    old_rows: list[dict[str, Any]] = []
    try:
        old = json.loads(path.read_text(encoding="utf-8")) if path.is_file() else {}
        base = root if old.get("base") == "." else Path.cwd()
        old_rows = [rebased(r, base) for r in old.get("items", [])]
        metrics += [m for m in old.get("metrics", []) if m not in metrics]
    except (OSError, ValueError, KeyError, TypeError, AttributeError):
        old_rows = []  # not a scores file of ours: replaced
    before = {_row_key(r): r for r in old_rows}
    # a clip scored again keeps its scores on the metrics not asked for this time
    new = [{**r, "scores": {**before.get(_row_key(r), {}).get("scores", {}), **r["scores"]}} for r in new]
    scored = {_row_key(r) for r in new}
    kept = [r for r in old_rows if _row_key(r) not in scored and all((root / f).exists() for f in r["files"].values())]
    rows = sorted([*new, *kept], key=lambda r: (r["files"].get("sidecar") or r["files"].get("video")
                                                or r["files"].get("audio") or ""))
    rows = [{**r, "scores": {m: r.get("scores", {}).get(m) for m in metrics}} for r in rows]
    merged = EvalReport(metrics, rows, summarize(rows, metrics))
    text = json.dumps({**merged.to_json(), "base": "."}, indent=2) + "\n"
    return io.write_text_atomic(path, text, overwrite=True)


def _row_key(row: dict[str, Any]) -> str:
    files = row["files"]
    return str(files.get("sidecar") or files.get("video") or files.get("audio"))


def write_csv(report: EvalReport, path: str | os.PathLike, overwrite: bool = True) -> Path:
    """One row per item: name, task, prompt, seed, video, audio, one column per metric (empty = n/a),
    then why the item could not be scored (empty when it was)."""
    import io as stdio

    buffer = stdio.StringIO()
    writer = csv.writer(buffer, lineterminator="\n")
    writer.writerow(["name", "task", "prompt", "seed", "video", "audio", *report.metrics, "error"])
    for row in report.rows:
        writer.writerow([row["name"], row["task"], row["prompt"], "" if row["seed"] is None else row["seed"],
                         row["files"].get("video", ""), row["files"].get("audio", ""),
                         *("" if row["scores"][m] is None else row["scores"][m] for m in report.metrics),
                         row.get("error") or ""])
    return io.write_text_atomic(path, buffer.getvalue(), overwrite=overwrite)


__all__ = ["AV_ALIGN", "FOLDER_SCORES", "EvalReport", "Item", "available_metrics", "binder_metrics", "default_metrics",
           "evaluate", "find_items", "load_binders", "summarize", "update_folder_scores", "write_csv", "write_json"]

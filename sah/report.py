"""`sah report DIR`: one self-contained static HTML page (DIR/index.html) with a card per clip.

No server, no CDN: CSS and the sorting script are inline and every media link is relative to DIR,
so the folder can be zipped, moved or opened straight from disk. Scores come from DIR/eval.json,
which `sah eval DIR` keeps, or another `sah eval --json` file. Each video gets a poster (its first
frame, DIR/posters/NAME.png) so the page shows pictures before anything plays; a card also shows the
run's condition (the input video, sound or image) when the file is still where the run read it.
"""

from __future__ import annotations

import html
import json
import os
from pathlib import Path
from typing import Any

from sah import io
from sah.errors import SahError
from sah.eval import AUDIO_SUFFIXES, FOLDER_SCORES, VIDEO_SUFFIXES, Item, find_items

POSTERS = "posters"
POSTER_WIDTH = 480  # wider first frames are scaled down: a poster is a preview

_STYLE = """
body{font-family:system-ui,sans-serif;margin:1.5rem;background:#f6f6f4;color:#222}
header{display:flex;gap:1rem;align-items:baseline;flex-wrap:wrap}
#cards{display:grid;grid-template-columns:repeat(auto-fill,minmax(380px,1fr));gap:1rem;margin-top:1rem}
.card{background:#fff;border-radius:8px;padding:.8rem;box-shadow:0 1px 3px #0002}
.card h2{font-size:1rem;margin:.2rem 0 .5rem}
.card video{width:100%;max-height:320px;background:#000;image-rendering:pixelated}
.card .condition{border-left:3px solid #aaa;padding-left:.5rem;margin:.4rem 0}
.card .condition p{font-size:.8rem;color:#666;margin:.1rem 0}
.card .condition img,.card .condition video{height:160px;width:auto;max-width:100%;image-rendering:pixelated}
.card audio{width:100%}
.card img{width:100%}
.card dl{display:grid;grid-template-columns:auto 1fr;gap:.1rem .6rem;font-size:.85rem;margin:.4rem 0}
.card dt{color:#666}
table.scores{font-size:.85rem;border-collapse:collapse}
table.scores td{padding:0 .5rem 0 0}
"""

_SCRIPT = """
function sortCards(){
  const key=document.getElementById('sort').value, desc=document.getElementById('desc').checked;
  const box=document.getElementById('cards');
  const cards=[...box.children];
  const val=c=>{const v=c.dataset[key]; if(key==='name') return v; return v===undefined||v===''?NaN:parseFloat(v);};
  cards.sort((a,b)=>{
    const x=val(a), y=val(b);
    if(key==='name') return desc? y.localeCompare(x): x.localeCompare(y);
    if(isNaN(x)) return isNaN(y)?0:1; if(isNaN(y)) return -1;   // clips without the score go last
    return desc? y-x: x-y;});
  cards.forEach(c=>box.appendChild(c));
}
"""


def _rel(path: Path, root: Path) -> str:
    return Path(os.path.relpath(path.resolve(), root.resolve())).as_posix()


def _data_key(metric: str) -> str:
    """A dataset key (data-m-toy-av -> dataset.mToyAv) the script can read back."""
    return "m-" + "".join(ch if ch.isalnum() else "-" for ch in metric.lower())


def _camel(data_key: str) -> str:
    head, *rest = data_key.split("-")
    return head + "".join(part[:1].upper() + part[1:] for part in rest)


def load_scores(path: Path | None) -> tuple[list[str], dict[str, dict[str, Any]]]:
    """Metrics and scores by resolved file path (sidecar, video and audio all map to the row).
    Relative paths are relative to the file's folder when it says `"base": "."` (what `sah eval`
    keeps in a folder), else to the working directory (a `--json` file)."""
    if path is None or not path.exists():
        return [], {}
    try:
        data = json.loads(path.read_text(encoding="utf-8"))
        metrics, by_path = list(data["metrics"]), {}
        base = path.parent if data.get("base") == "." else Path.cwd()
        for row in data["items"]:
            for file in row["files"].values():
                by_path[os.fspath((base / file).resolve())] = row["scores"]
    except (OSError, ValueError, KeyError, TypeError) as exc:
        raise SahError(f"{path}: not a `sah eval --json` file ({type(exc).__name__}: {exc})") from exc
    return metrics, by_path


def _backends(meta: dict[str, Any]) -> str:
    """The plugins behind a sah output: the generators of what it generated (the sidecar's `audio` /
    `video` entries are set only for generated media) and the binder."""
    config = meta.get("config") or {}
    parts = []
    for section, key in (("audio", "generator"), ("video", "generator"), ("binder", "name")):
        settings = config.get(section) or {}
        if settings.get(key) and (section == "binder" or meta.get(section)):
            parts.append(f"{section}: {settings[key]}" + (f" ({settings['model']})" if settings.get("model") else ""))
    return "; ".join(parts)


def _poster(video: Path, root: Path) -> Path | None:
    """ROOT/posters/<video's path under ROOT>.png: the video's first frame, written when missing or
    older than the video. None when the video cannot be decoded (the player then says so itself)."""
    import av

    name = _rel(video, root).replace("/", "__") + ".png"
    if name.startswith(".."):
        name = video.name + ".png"
    poster = root / POSTERS / name
    try:
        if poster.is_file() and poster.stat().st_mtime >= video.stat().st_mtime:
            return poster
        with av.open(os.fspath(video)) as container:
            frame = next(container.decode(video=0))
        if frame.width > POSTER_WIDTH:
            frame = frame.reformat(width=POSTER_WIDTH, height=max(2, round(frame.height * POSTER_WIDTH / frame.width)))
        with io.atomic_path(poster, overwrite=True) as temp:
            _write_png(frame, temp)
    except (OSError, StopIteration, av.FFmpegError, SahError, ValueError):
        return None
    return poster


def _write_png(frame: Any, path: Path) -> None:
    """A one-frame PNG through ffmpeg's encoder."""
    import av

    with av.open(os.fspath(path), "w", format="image2") as out:
        stream = out.add_stream("png", rate=1)
        stream.width, stream.height, stream.pix_fmt = frame.width, frame.height, "rgb24"
        for packet in stream.encode(frame.reformat(format="rgb24")):
            out.mux(packet)
        for packet in stream.encode(None):
            out.mux(packet)


def _condition_file(item: Item, root: Path) -> Path | None:
    """The run's condition file, if it is still there: the sidecar records it as given to `sah run`
    (absolute, or relative to where the run was started: tried from here, then from the folder)."""
    given = item.meta.get("condition")
    if not isinstance(given, str) or not given:
        return None
    path = Path(given).expanduser()
    for candidate in ([path] if path.is_absolute() else [Path.cwd() / path, root / path, root.parent / path]):
        if candidate.is_file():
            return candidate
    return None


def _condition(item: Item, root: Path) -> str:
    """The condition block of a card: a player or picture of the input, and its name."""
    given = item.meta.get("condition")
    if not isinstance(given, str) or not given:
        return ""
    esc = html.escape
    kind = {"v2a": "video", "a2v": "audio", "i2a": "image"}.get(item.task, "")
    path = _condition_file(item, root)
    body = ""
    if path is not None:
        link = esc(_rel(path, root))
        suffix = path.suffix.lower()
        if suffix in AUDIO_SUFFIXES:
            body = f'<audio controls preload="metadata" src="{link}"></audio>'
        elif suffix in VIDEO_SUFFIXES:
            poster = _poster(path, root)
            attr = f' poster="{esc(_rel(poster, root))}"' if poster is not None else ""
            body = f'<video controls muted preload="metadata"{attr} src="{link}"></video>'
        else:
            body = f'<img alt="condition image" src="{link}">'
    where = "" if path is not None else " (not found from here)"
    label = f"condition{f' ({kind})' if kind else ''}: {Path(given).name}{where}"
    return f'<div class="condition"><p>{esc(label)}</p>{body}</div>'


def _cost(meta: dict[str, Any]) -> str:
    """The sidecar's run cost: `3.1 s (backward 0.40, binder forward 0.21, …), +114 MiB`."""
    cost = meta.get("cost") or {}
    seconds = cost.get("seconds") or {}
    if not cost.get("total_seconds"):
        return ""
    top = ", ".join(f"{k} {v:.2f}" for k, v in sorted(seconds.items(), key=lambda kv: -kv[1])[:4])
    memory = "" if cost.get("peak_memory_mib") is None else f", +{cost['peak_memory_mib']:.0f} MiB"
    return f"{cost['total_seconds']:.1f} s ({top}){memory}"


def _card(item: Item, root: Path, metrics: list[str], scores: dict[str, Any]) -> str:
    esc = html.escape
    attrs = {"data-name": item.name}
    attrs.update({f"data-{_data_key(m)}": "" if scores.get(m) is None else str(scores[m]) for m in metrics})
    parts = [f'<article class="card" {" ".join(f"{k}={json.dumps(esc(v))}" for k, v in attrs.items())}>',
             f"<h2>{esc(item.name)}</h2>"]
    if item.video is not None:
        poster = _poster(item.video, root)
        attr = f' poster="{esc(_rel(poster, root))}"' if poster is not None else ""
        parts.append(f'<video controls preload="metadata"{attr} src="{esc(_rel(item.video, root))}"></video>')
    if item.audio is not None:
        parts.append(f'<audio controls preload="metadata" src="{esc(_rel(item.audio, root))}"></audio>')
    base = item.sidecar or item.video or item.audio
    plot = base.with_suffix(".png") if base is not None else None
    if plot is not None and plot.exists():
        parts.append(f'<img alt="similarity per step, frames and spectrogram" src="{esc(_rel(plot, root))}">')
    condition = _condition(item, root)
    if condition:
        parts.append(condition)
    meta = item.meta
    facts = [("prompt", item.prompt or "—"), ("task", item.task or "—"), ("backends", _backends(meta) or "—"),
             ("seed", "—" if meta.get("seed") is None else str(meta["seed"])), ("cost", _cost(meta) or "—")]
    parts.append("<dl>" + "".join(f"<dt>{esc(k)}</dt><dd>{esc(v)}</dd>" for k, v in facts) + "</dl>")
    if metrics:
        cells = "".join(f"<tr><td>{esc(m)}</td><td>{'n/a' if scores.get(m) is None else f'{scores[m]:.3f}'}</td></tr>"
                        for m in metrics)
        parts.append(f'<table class="scores">{cells}</table>')
    parts.append("</article>")
    return "\n".join(parts)


def build(folder: str | os.PathLike, scores: str | os.PathLike | None = None, title: str | None = None) -> str:
    """The page's HTML for the clips under `folder`; `scores` is a `sah eval --json` file."""
    root = Path(folder)
    if not root.is_dir():
        raise SahError(f"{root}: not a folder")
    score_file = Path(scores) if scores is not None else root / FOLDER_SCORES
    if scores is not None and not score_file.exists():
        raise SahError(f"{score_file}: no such file")
    metrics, by_path = load_scores(score_file)
    items = find_items([root])
    cards = []
    for item in items:
        found = next((by_path[k] for k in (os.fspath(p.resolve()) for p in (item.sidecar, item.video, item.audio)
                                           if p is not None) if k in by_path), {})
        cards.append(_card(item, root, metrics, found))
    options = '<option value="name">name</option>' + "".join(
        f'<option value="{_camel(_data_key(m))}">{html.escape(m)}</option>' for m in metrics)
    title = title or f"sah outputs: {root.resolve().name}"
    return f"""<!doctype html>
<html lang="en"><head><meta charset="utf-8"><title>{html.escape(title)}</title>
<style>{_STYLE}</style></head>
<body><header><h1>{html.escape(title)}</h1><span>{len(cards)} clip(s)</span>
<label>sort by <select id="sort" onchange="sortCards()">{options}</select></label>
<label><input type="checkbox" id="desc" onchange="sortCards()"> descending</label>
{'<span>binder scores: cosine x 100</span>' if metrics else ''}</header>
<main id="cards">
{chr(10).join(cards)}
</main>
<script>{_SCRIPT}</script>
</body></html>
"""


def write(folder: str | os.PathLike, scores: str | os.PathLike | None = None, title: str | None = None) -> Path:
    """Write FOLDER/index.html (replacing an older one) and return its path."""
    page = build(folder, scores, title)
    return io.write_text_atomic(Path(folder) / "index.html", page, overwrite=True)


__all__ = ["build", "load_scores", "write"]

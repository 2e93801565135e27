"""`sah report` opened in a real headless Chromium (Debian's, driven over the DevTools protocol)."""

import base64
import json
import os
import re
import shutil
import subprocess
import time
import urllib.request
from pathlib import Path

import pytest
from click.testing import CliRunner
from media_helpers import blob_frames, write_mp4

from sah.cli import cli

CHROMIUM = shutil.which("chromium") or shutil.which("chromium-browser")
FLAGS = ["--headless", "--no-sandbox", "--disable-gpu", "--no-first-run", "--disable-background-networking",
         "--disable-component-update", "--disable-sync", "--autoplay-policy=no-user-gesture-required",
         "--window-size=1280,1600"]


def invoke(*args):
    result = CliRunner().invoke(cli, [str(a) for a in args], catch_exceptions=False)
    assert result.exit_code == 0, result.output
    return result


@pytest.fixture(scope="module")
def gallery(tmp_path_factory):
    root = tmp_path_factory.mktemp("report")
    out = root / "out"
    for prompt, seed in (("north", 0), ("east", 1)):
        invoke("run", "--prompt", prompt, "--seed", seed, "--steps", 12, "--out", out, "--quiet")
    # a v2a run whose condition lies outside the folder, and an unguided one
    (root / "clips").mkdir()
    clip = write_mp4(root / "clips" / "input clip.mp4", blob_frames(5, 16, 48, 48), fps=8)
    invoke("run", "--video", clip, "--steps", 12, "--out", out, "--quiet")
    invoke("run", "--task", "t2a", "--prompt", "west", "--steps", 6, "--out", out, "--quiet")
    invoke("eval", out)  # the README's order: eval keeps out/eval.json, report shows it
    invoke("report", out)
    return out


@pytest.mark.slow
def test_page_is_self_contained_with_relative_links(gallery):
    page = (gallery / "index.html").read_text()
    assert page.count('class="card"') == 4
    links = re.findall(r' (?:src|href|poster)="([^"]+)"', page)
    outputs = [f"joint-{s}.{ext}" for s in (0, 1) for ext in ("mp4", "wav", "png")]
    outputs += [f"v2a-0.{ext}" for ext in ("mp4", "wav", "png")] + ["t2a-0.wav", "t2a-0.png"]
    posters = [f"posters/{name}.png" for name in ("joint-0.mp4", "joint-1.mp4", "v2a-0.mp4", "input clip.mp4")]
    assert sorted(links) == sorted([*outputs, *posters, "../clips/input clip.mp4"])
    assert all((gallery / link).is_file() for link in links)
    assert "://" not in page and str(gallery) not in page  # no CDN, no server, no absolute paths
    assert "north" in page and "toy-video" in page and "toy-hit" in page
    # every video shows a picture before it plays: its first frame as the poster, metadata preloaded
    for tag in re.findall(r"<video [^>]*>", page):
        assert 'poster="posters/' in tag and 'preload="metadata"' in tag, tag
    assert "condition (video): input clip.mp4" in page


class DevTools:
    """The few DevTools-protocol calls the test needs, over one page's websocket."""

    def __init__(self, url: str) -> None:
        import websocket

        self.ws = websocket.create_connection(url, timeout=60)
        self.next_id = 0

    def call(self, method: str, **params):
        self.next_id += 1
        self.ws.send(json.dumps({"id": self.next_id, "method": method, "params": params}))
        while True:
            reply = json.loads(self.ws.recv())
            if reply.get("id") == self.next_id:
                assert "error" not in reply, reply
                return reply["result"]

    def evaluate(self, expression: str):
        result = self.call("Runtime.evaluate", expression=expression, awaitPromise=True, returnByValue=True)
        assert "exceptionDetails" not in result, result
        return result["result"]["value"]


@pytest.fixture
def browser(tmp_path):
    if CHROMIUM is None:
        pytest.skip("Chromium is not installed (.ci/run installs Debian's chromium)")
    profile = tmp_path / "profile"
    proc = subprocess.Popen([CHROMIUM, *FLAGS, f"--user-data-dir={profile}", "--remote-debugging-port=0",
                             "about:blank"], stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    try:
        port_file = profile / "DevToolsActivePort"
        deadline = time.monotonic() + 60
        while not (port_file.exists() and len(port_file.read_text().split()) >= 2):
            assert proc.poll() is None, "chromium exited at start"
            assert time.monotonic() < deadline, "chromium did not open its DevTools port"
            time.sleep(0.1)
        port = port_file.read_text().split()[0]
        with urllib.request.urlopen(f"http://127.0.0.1:{port}/json/list", timeout=30) as reply:
            page = next(t for t in json.load(reply) if t["type"] == "page")
        tools = DevTools(page["webSocketDebuggerUrl"])
        yield tools
        tools.ws.close()
    finally:
        proc.terminate()
        try:
            proc.wait(timeout=10)
        except subprocess.TimeoutExpired:
            proc.kill()


MEDIA_STATE = """new Promise(done => {
  const media = [...document.querySelectorAll('video, audio')];
  const ready = m => new Promise(r => {
    if (m.readyState >= 2 || m.error) return r();
    m.addEventListener('loadeddata', r); m.addEventListener('error', r);
    setTimeout(r, 20000);
  });
  Promise.all(media.map(ready)).then(() => done({
    cards: [...document.querySelectorAll('.card')].map(c => ({
      name: c.dataset.name,
      media: [...c.querySelectorAll(':scope > video, :scope > audio')].map(m => ({
        tag: m.tagName, src: m.getAttribute('src'), duration: m.duration, error: m.error && m.error.code,
        ready: m.readyState, width: m.videoWidth || 0})),
      condition: [...c.querySelectorAll('.condition video, .condition audio')].map(m => ({
        tag: m.tagName, error: m.error && m.error.code, ready: m.readyState})),
      images: [...c.querySelectorAll('img')].map(i => i.naturalWidth)}))}));
})"""

POSTERS = """Promise.all([...document.querySelectorAll('video')].map(v => new Promise(r => {
  const i = new Image(); i.onload = () => r(i.naturalWidth); i.onerror = () => r(0); i.src = v.poster;
})))"""

PLAYED = """new Promise(done => {
  const v = document.querySelector('video'); v.muted = true;
  v.play().then(() => setTimeout(() => done(v.currentTime), 700), e => done('play failed: ' + e));
})"""


@pytest.mark.slow
def test_chromium_renders_every_card_with_playable_media(gallery, browser, tmp_path):
    browser.call("Page.enable")
    browser.call("Page.navigate", url=(gallery / "index.html").resolve().as_uri())
    browser.evaluate("new Promise(r => document.readyState === 'complete' ? r(1) : addEventListener('load', r))")
    state = browser.evaluate(MEDIA_STATE)
    cards = {card["name"]: card for card in state["cards"]}
    assert sorted(cards) == ["joint-0", "joint-1", "t2a-0", "v2a-0"]
    for name, card in cards.items():
        assert [m["tag"] for m in card["media"]] == (["AUDIO"] if name == "t2a-0" else ["VIDEO", "AUDIO"]), card
        for media in card["media"]:
            # H.264/AAC mp4 and PCM wav both decode in Debian's Chromium
            assert media["error"] is None and media["ready"] >= 2, media
            assert abs(media["duration"] - (2.0 if name == "v2a-0" else 1.0)) < 0.1, media
        assert card["images"] and all(w > 0 for w in card["images"]), card
    assert cards["joint-0"]["media"][0]["width"] == 32
    assert [(m["tag"], m["error"]) for m in cards["v2a-0"]["condition"]] == [("VIDEO", None)]
    assert all(width > 0 for width in browser.evaluate(POSTERS))  # every poster decodes
    assert browser.evaluate(PLAYED) > 0  # the video really plays, not just reports metadata

    # sorting by a score reorders the cards
    scores = json.loads((gallery / "eval.json").read_text())
    toy_av = [(r["scores"]["toy-av"], r["name"]) for r in scores["items"]]  # t2a-0 has no toy-av: it goes last
    by_score = [{"name": n} for v, n in sorted(toy_av, key=lambda p: (p[0] is None, -(p[0] or 0)))]
    order = browser.evaluate("""(() => { document.getElementById('sort').value = 'mToyAv';
        document.getElementById('desc').checked = true; sortCards();
        return [...document.querySelectorAll('.card')].map(c => c.dataset.name); })()""")
    assert order == [r["name"] for r in by_score]

    shot = base64.b64decode(browser.call("Page.captureScreenshot", format="png")["data"])
    assert shot[:8] == b"\x89PNG\r\n\x1a\n" and len(shot) > 10_000
    target = Path(os.environ.get("SAH_SCREENSHOT_DIR", tmp_path)) / "report.png"
    target.parent.mkdir(parents=True, exist_ok=True)
    target.write_bytes(shot)

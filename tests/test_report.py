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
    out = tmp_path_factory.mktemp("report") / "out"
    for prompt, seed in (("north", 0), ("east", 1)):
        invoke("run", "--prompt", prompt, "--seed", seed, "--steps", 12, "--out", out, "--quiet")
    invoke("eval", out, "--json", out / "eval.json")
    invoke("report", out)
    return out


@pytest.mark.slow
def test_page_is_self_contained_with_relative_links(gallery):
    page = (gallery / "index.html").read_text()
    assert page.count('class="card"') == 2
    links = re.findall(r'(?:src|href)="([^"]+)"', page)
    assert sorted(links) == sorted(f"joint-{s}.{ext}" for s in (0, 1) for ext in ("mp4", "wav", "png"))
    assert all((gallery / link).is_file() for link in links)
    assert "://" not in page and str(gallery) not in page  # no CDN, no server, no absolute paths
    assert "north" in page and "toy-video" in page and "toy-hit" in page


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
      media: [...c.querySelectorAll('video, audio')].map(m => ({
        tag: m.tagName, src: m.getAttribute('src'), duration: m.duration, error: m.error && m.error.code,
        ready: m.readyState, width: m.videoWidth || 0})),
      images: [...c.querySelectorAll('img')].map(i => i.naturalWidth)}))}));
})"""

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
    assert sorted(card["name"] for card in state["cards"]) == ["joint-0", "joint-1"]
    for card in state["cards"]:
        assert [m["tag"] for m in card["media"]] == ["VIDEO", "AUDIO"], card
        for media in card["media"]:
            # H.264/AAC mp4 and PCM wav both decode in Debian's Chromium: the toy clips last 1 s
            assert media["error"] is None and media["ready"] >= 2, media
            assert abs(media["duration"] - 1.0) < 0.1, media
        assert card["media"][0]["width"] == 32
        assert card["images"] and all(w > 0 for w in card["images"]), card
    assert browser.evaluate(PLAYED) > 0  # the video really plays, not just reports metadata

    # sorting by a score reorders the cards
    scores = json.loads((gallery / "eval.json").read_text())
    by_score = sorted(scores["items"], key=lambda r: -r["scores"]["toy-av"])
    order = browser.evaluate("""(() => { document.getElementById('sort').value = 'mToyAv';
        document.getElementById('desc').checked = true; sortCards();
        return [...document.querySelectorAll('.card')].map(c => c.dataset.name); })()""")
    assert order == [r["name"] for r in by_score]

    shot = base64.b64decode(browser.call("Page.captureScreenshot", format="png")["data"])
    assert shot[:8] == b"\x89PNG\r\n\x1a\n" and len(shot) > 10_000
    target = Path(os.environ.get("SAH_SCREENSHOT_DIR", tmp_path)) / "report.png"
    target.parent.mkdir(parents=True, exist_ok=True)
    target.write_bytes(shot)

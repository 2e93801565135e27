"""`sah ui`: the app's logic in-process, and the served app driven in Debian's headless Chromium over
the DevTools protocol (a real `sah ui` subprocess on a free local port, toy world, output in tmp)."""

from __future__ import annotations

import base64
import json
import os
import shutil
import socket
import subprocess
import sys
import textwrap
import time
import types
import urllib.error
import urllib.request
from pathlib import Path

import pytest
from click.testing import CliRunner
from dummy_plugins import DummyAudio, DummyBinder
from media_helpers import blob_frames, write_mp4

from sah import Modality, hookimpl
from sah.cli import cli
from sah.component import Option
from sah.errors import SahError
from sah.registry import load_registry

CHROMIUM = shutil.which("chromium") or shutil.which("chromium-browser")
FLAGS = ["--headless", "--no-sandbox", "--disable-gpu", "--disable-background-networking",
         "--disable-component-update", "--disable-sync", "--no-first-run",
         "--autoplay-policy=no-user-gesture-required", "--window-size=1280,1300"]


def require(what: str, present: bool) -> None:
    """CI installs Chromium and the `ui` extra: there a missing one fails; elsewhere it skips, saying why."""
    if present:
        return
    message = f"{what} is not installed (.ci/run installs Debian's chromium and the `test` extra, gradio included)"
    if os.environ.get("CI"):
        pytest.fail(message)
    pytest.skip(message)


def have_gradio() -> bool:
    import importlib.util

    return importlib.util.find_spec("gradio") is not None


# --------------------------------------------------------------------------- in-process: the app's logic


class UiTestAudio(DummyAudio):
    name = "ui-test-audio"
    description = "registered only inside test_ui"
    options = {"loudness": 0.5, "taps": 3, "boost": False,
               "mode": Option("soft", help="how the tone starts", choices=("soft", "hard")), "bands": [1, 2],
               "clips": Option("auto", choices=("auto",), type=int, min=1)}


class DeafBinder(DummyBinder):
    name = "ui-deaf"
    modalities = frozenset({Modality.AUDIO, Modality.TEXT})


def in_test_plugin() -> types.SimpleNamespace:
    @hookimpl
    def register_generators(register):
        register(UiTestAudio)

    @hookimpl
    def register_binders(register):
        register(DeafBinder)

    return types.SimpleNamespace(__name__="ui_in_test_plugin", register_generators=register_generators,
                                 register_binders=register_binders)


@pytest.fixture
def registry():
    return load_registry(extra_plugins=[in_test_plugin()])


def test_options_render_by_type_and_read_back_as_set_would():
    from sah import ui

    fields = {f.key: f for f in ui.option_fields(UiTestAudio, "audio")}
    assert {k: f.kind for k, f in fields.items()} == {
        "loudness": "float", "taps": "int", "boost": "bool", "mode": "choice", "bands": "toml", "clips": "str"}
    assert fields["mode"].choices == ("soft", "hard") and fields["mode"].help == "how the tone starts"
    assert fields["loudness"].label == "audio.loudness" and fields["loudness"].default == 0.5
    assert ui.field_value(fields["taps"], 4.0) == 4 and ui.field_value(fields["taps"], None) == 3
    assert ui.field_value(fields["clips"], "4") == 4 and ui.field_value(fields["clips"], "auto") == "auto"
    assert ui.field_value(fields["bands"], "[3, 4]") == [3, 4]
    assert ui.field_display(fields["bands"], [1, 2]) == "[1, 2]"
    with pytest.raises(SahError, match="audio.bands"):
        ui.field_value(fields["bands"], "[3,")


def test_app_lists_a_plugin_registered_in_the_test_with_its_options(registry, tmp_path):
    from sah import ui

    app = ui.App(tmp_path / "out", registry)
    assert ("ui-test-audio", "ui-test-audio") in app.plugin_choices("audio")
    assert ("toy-audio", "toy-audio") in app.plugin_choices("audio") and ("(none)", "") in app.plugin_choices("video")
    assert "ui-deaf" in dict(app.plugin_choices("binder"))
    assert [f.key for f in app.fields["audio"] if f.plugin == "ui-test-audio"] == list(UiTestAudio.options)
    # choosing it sends its options, typed, into [audio]; a plugin not chosen sends none
    values = {**app.initial, "gen_audio": "ui-test-audio", "audio:ui-test-audio:taps": 5.0,
              "audio:ui-test-audio:bands": "[7]", "audio:ui-test-audio:mode": "hard"}
    layers, _ = app.layers(values)
    form = layers[-1]
    assert form["audio"] == {"generator": "ui-test-audio", "model": "", "loudness": 0.5, "taps": 5, "boost": False,
                             "mode": "hard", "bands": [7], "clips": "auto"}


@pytest.mark.slow
def test_the_page_renders_the_in_test_plugin(registry, tmp_path, monkeypatch):
    require("gradio", have_gradio())
    import gradio as gr

    from sah import ui

    monkeypatch.chdir(tmp_path)
    demo = ui.App(tmp_path / "out", registry).build()
    assert ("ui-test-audio", "ui-test-audio") in demo.sah_components["gen_audio"].choices
    number = demo.sah_options["audio:ui-test-audio:loudness"]
    assert isinstance(number, gr.Number) and number.value == 0.5 and number.label == "audio.loudness"
    assert isinstance(demo.sah_options["audio:ui-test-audio:boost"], gr.Checkbox)
    assert isinstance(demo.sah_options["audio:ui-test-audio:taps"], gr.Number)
    dropdown = demo.sah_options["audio:ui-test-audio:mode"]
    assert isinstance(dropdown, gr.Dropdown) and [c[1] for c in dropdown.choices] == ["soft", "hard"]
    assert dropdown.info == "how the tone starts"  # the Option's help
    assert isinstance(demo.sah_options["audio:ui-test-audio:bands"], gr.Textbox)
    # its options show only while it is the chosen generator
    assert demo.sah_groups["audio"]["ui-test-audio"].visible is False
    assert demo.sah_groups["audio"]["toy-audio"].visible is True
    assert not list(tmp_path.glob(".gradio*"))  # nothing written where the app was built


def cli_error(*args) -> str:
    result = CliRunner().invoke(cli, ["run", *map(str, args)])
    assert result.exit_code == 2, result.output
    return result.output.strip().splitlines()[-1]


def test_errors_are_the_lines_the_cli_prints(registry, tmp_path, monkeypatch):
    from sah import ui

    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    monkeypatch.setattr("sah.registry._cached", registry)  # the CLI sees the in-test plugins too
    out = tmp_path / "out"
    app = ui.App(out, registry)
    corrupt = tmp_path / "broken.mp4"
    corrupt.write_bytes(b"\x00\x00\x00\x18ftypmp42" + os.urandom(3000))
    clip = write_mp4(tmp_path / "clip.mp4", blob_frames(1, 8, 32, 32), 8)

    def page_error(**changes) -> str:
        with pytest.raises(SahError) as caught:
            app.plan({**app.initial, **changes})
        return "Error: " + str(caught.value)

    cases = [
        (dict(file=str(corrupt)), ["--video", corrupt]),
        (dict(overrides="guidance.lrr=0.1"), ["--set", "guidance.lrr=0.1"]),
        (dict(overrides="audio.bogus=1"), ["--set", "audio.bogus=1"]),
        (dict(file=str(clip), binder="ui-deaf"), ["--video", clip, "--binder", "ui-deaf"]),
        (dict(gen_audio="audioldm", gen_video=""), ["--gen-audio", "audioldm", "--gen-video", ""]),
    ]
    for changes, args in cases:
        line = page_error(**changes)
        expected = cli_error(*args, "--out", out)
        if "file" in changes:  # the page names a dropped file by its name
            expected = expected.replace(changes["file"], Path(changes["file"]).name)
        assert line == expected, changes
        assert "\n" not in line
    assert "not available offline" in page_error(gen_audio="audioldm", gen_video="")
    assert "cannot embed video" in page_error(file=str(clip), binder="ui-deaf")
    # an upload's server-side path reads as the name that was dropped
    upload = tmp_path / "gradio" / "0123abcd" / "dropped.mp4"
    upload.parent.mkdir(parents=True)
    shutil.copy(corrupt, upload)
    line = page_error(file=str(upload))
    assert line.startswith("Error: dropped.mp4: ") and str(upload.parent) not in line
    assert not out.exists() or not any(out.iterdir())  # nothing loaded, nothing written


@pytest.mark.slow
def test_runs_reuse_loaded_models_and_never_overwrite(tmp_path):
    from sah import ui

    app = ui.App(tmp_path / "out", base_layers=[{"run": {"steps": 3}}])
    plans = []
    for _ in range(2):
        plan, _ = app.plan({**app.initial, "prompt": "north"})
        state = ui.RunState()
        app.run(plan, state)
        assert state.phase == "done", state.error
        assert state.tick == state.total == 3 and state.written
        plans.append(plan)
    assert app.cache.loads == 3  # audio generator, video generator, binder: loaded once for both runs
    first, second = (set(p.outputs[0].values()) for p in plans)
    assert first.isdisjoint(second) and all(p.exists() for p in first | second)
    plan, _ = app.plan({**app.initial, "steps": 2, "overrides": "video.cfg_scale=1.5"})
    app.run(plan, ui.RunState())
    assert app.cache.loads == 3  # cfg_scale is a per-run setting, not a load setting

    # the gallery is `sah report`'s page, with the scores `sah eval` keeps in the folder
    assert "scored 3 clip(s)" in app.score()
    page = ui.gallery_html(app.out_dir)
    assert page.count('class=&quot;card&quot;') == 3 and "toy-hit" in page
    assert "gradio_api/file=" + str(app.out_dir) in page  # its links are served from the output folder


def test_a_preset_fills_the_form(registry, tmp_path):
    from sah import ui

    app = ui.App(tmp_path / "out", registry)
    values = app.form_values("fast-v2a")
    assert (values["task"], values["gen_audio"], values["gen_video"], values["binder"]) == \
        ("v2a", "audioldm", "", "imagebind")
    assert (values["steps"], values["optimizer"], values["guidance_end"], values["lr_video"]) == (30, "ngd", 0.8, 0.01)
    # fast-v2a sets no audio.duration (the audio lasts as long as the video): the plugin's default shows
    assert values["audio:audioldm:duration"] == 5.0 and values["audio:audioldm:cfg_scale"] == 2.5
    assert app.form_values("fast-i2a")["audio:audioldm:duration"] == 10.0  # the preset's own value
    assert app.form_values("")["gen_audio"] == "toy-audio"
    # the app's own --set sits over the preset, under the form
    app = ui.App(tmp_path / "out", registry, base_layers=[{"run": {"steps": 7}}], preset="fast-v2a")
    assert app.initial["steps"] == 7 and app.initial["preset"] == "fast-v2a"
    with pytest.raises(SahError, match="unknown preset"):
        ui.App(tmp_path / "out", registry, preset="nope")


def test_fresh_names_and_the_command_line(tmp_path):
    from sah import ui

    out = tmp_path / "out"
    assert ui.fresh_name(out, "v2a", 0, 1) == ""  # sah's default where it is free
    out.mkdir()
    (out / "v2a-0.png").write_bytes(b"x")
    assert ui.fresh_name(out, "v2a", 0, 1) == "v2a-0-run2"
    assert ui.fresh_name(out, "v2a", 1, 1) == ""
    (out / "v2a-0-run2-1.json").write_text("{}")
    assert ui.fresh_name(out, "v2a", 0, 2) == "v2a-0-run3"

    # `sah ui` refuses what it cannot serve in one line, before Gradio is imported
    result = CliRunner().invoke(cli, ["ui", "--preset", "nope", "--out", str(out)])
    assert result.exit_code == 2 and result.output.startswith("Error: unknown preset 'nope'"), result.output
    with socket.socket() as taken:
        taken.bind(("127.0.0.1", 0))
        taken.listen()
        result = CliRunner().invoke(cli, ["ui", "--port", str(taken.getsockname()[1]), "--out", str(out)])
    assert result.exit_code == 2 and "cannot serve on 127.0.0.1:" in result.output, result.output
    listed = CliRunner().invoke(cli, ["--help"]).output.splitlines()
    assert any(line.split()[:1] == ["ui"] for line in listed), listed


@pytest.mark.slow
def test_stop_and_batch_in_process(tmp_path):
    from sah import ui

    app = ui.App(tmp_path / "out")
    plan, _ = app.plan({**app.initial, "steps": 500})
    state, stop = ui.RunState(), ui.threading.Event()
    stop.set()
    app.run(plan, state, stop)
    assert state.phase == "stopped" and not any(p.exists() for p in plan.outputs[0].values())

    manifest = tmp_path / "jobs.jsonl"
    manifest.write_text('{"id": "a", "prompt": "north"}\n{"id": "b", "prompt": "east", "promt": 1}\n')
    with pytest.raises(SahError, match="inside the output folder"):
        app.start_batch(None, str(manifest), "../elsewhere", 2, False, "")
    app.start_batch(None, str(manifest), "batch", 2, False, "")
    app.batch.thread.join(60)
    assert app.batch.phase == "error" and "promt" in app.batch.error  # a bad column stops it before it starts
    manifest.write_text('{"id": "a", "prompt": "north"}\n{"id": "b", "prompt": "east", "seed": 3}\n')
    app.start_batch(None, str(manifest), "batch", 2, False, "")
    app.batch.thread.join(120)
    assert app.batch.phase == "done", app.batch.error
    assert app.batch.summary.done == 2 and (tmp_path / "out" / "batch" / "b.json").is_file()
    app.start_batch(None, str(manifest), "batch", 2, False, "")  # resumed: nothing left to do
    app.batch.thread.join(60)
    assert app.batch.summary.already_done == 2 and app.batch.summary.done == 0
    assert "2/2 rows" in ui.batch_html(app.batch)

    # Stop ends a running batch within a step; its row is neither done nor failed, and runs on resume
    manifest.write_text('{"id": "long", "prompt": "west"}\n')
    app.start_batch(None, str(manifest), "batch", 1000, False, "")
    deadline = time.monotonic() + 60
    while app.batch.step[0] < 1:
        assert time.monotonic() < deadline and app.batch.phase == "running", app.batch.error
        time.sleep(0.05)
    app.batch.stop.set()
    app.batch.thread.join(30)
    assert app.batch.phase == "stopped" and not app.batch.failures
    assert not (tmp_path / "out" / "batch" / "long.json").exists()
    assert not (tmp_path / "out" / "batch" / "failures.jsonl").exists()
    assert "stopped" in ui.batch_html(app.batch)


# --------------------------------------------------------------------------- the served app in Chromium


PLUGIN = """
    from sah import hookimpl
    from sah.component import Option
    from sah.plugins.generators.toy import ToyAudioGenerator

    class EntryPointAudio(ToyAudioGenerator):
        name = "ep-test-audio"
        description = "registered by an entry point only this test installs"
        options = {"shimmer": 0.25, "label": Option("auto", choices=("auto",), type=int)}

    @hookimpl
    def register_generators(register):
        register(EntryPointAudio)
"""


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


@pytest.fixture(scope="module")
def server(tmp_path_factory):
    """`sah ui` in a subprocess, with one extra plugin installed as a distribution on PYTHONPATH."""
    require("gradio", have_gradio())
    root = tmp_path_factory.mktemp("ui")
    plugins = root / "site"
    plugins.mkdir()
    (plugins / "sah_ui_ep_plugin.py").write_text(textwrap.dedent(PLUGIN))
    info = plugins / "sah_ui_ep_plugin-0.1.dist-info"
    info.mkdir()
    (info / "METADATA").write_text("Metadata-Version: 2.1\nName: sah-ui-ep-plugin\nVersion: 0.1\n")
    (info / "entry_points.txt").write_text("[sah]\nui-ep = sah_ui_ep_plugin\n")
    out, port = root / "out", free_port()
    env = {**os.environ, "PYTHONPATH": os.pathsep.join(filter(None, [str(plugins), os.environ.get("PYTHONPATH")])),
           "GRADIO_TEMP_DIR": str(root / "gradio-tmp"), "OMP_NUM_THREADS": "1", "MPLCONFIGDIR": str(root / "mpl")}
    env.pop("SAH_LOAD_PLUGINS", None)
    log = open(root / "server.log", "w")
    proc = subprocess.Popen([sys.executable, "-c", "from sah.cli import main; main()", "ui", "--out", str(out),
                             "--port", str(port), "--set", "run.steps=8", "--max-upload-mb", "5", "-q"],
                            cwd=root, env=env, stdout=log, stderr=subprocess.STDOUT)
    url = f"http://127.0.0.1:{port}/"
    try:
        deadline = time.monotonic() + 120
        while True:
            assert proc.poll() is None, (root / "server.log").read_text()
            assert time.monotonic() < deadline, "sah ui did not answer in 120 s"
            try:
                with urllib.request.urlopen(url, timeout=5) as reply:
                    if reply.status == 200:
                        break
            except (urllib.error.URLError, ConnectionError, TimeoutError):
                time.sleep(0.3)
        yield types.SimpleNamespace(url=url, out=out, root=root, proc=proc, port=port)
    finally:
        proc.terminate()
        try:
            proc.wait(timeout=20)
        except subprocess.TimeoutExpired:
            proc.kill()
        log.close()


class DevTools:
    """The few DevTools-protocol calls the tests need, over one page's websocket."""

    def __init__(self, url: str) -> None:
        import websocket

        self.ws = websocket.create_connection(url, timeout=60)
        self.next_id = 0
        self.requested: list[str] = []  # every URL the page asked for (Network.enable)

    def call(self, method: str, **params):
        self.next_id += 1
        self.ws.send(json.dumps({"id": self.next_id, "method": method, "params": params}))
        while True:
            reply = json.loads(self.ws.recv())
            if reply.get("method") == "Network.requestWillBeSent":
                self.requested.append(reply["params"]["request"]["url"])
            if reply.get("id") == self.next_id:
                assert "error" not in reply, reply
                return reply["result"]

    def evaluate(self, expression: str):
        result = self.call("Runtime.evaluate", expression=expression, awaitPromise=True, returnByValue=True)
        assert "exceptionDetails" not in result, result
        return result["result"].get("value")

    def wait(self, expression: str, timeout: float = 60, what: str = ""):
        deadline = time.monotonic() + timeout
        while True:
            value = self.evaluate(expression)
            if value:
                return value
            assert time.monotonic() < deadline, f"timed out waiting for {what or expression}; status: {self.status()}"
            time.sleep(0.2)

    def open(self, url: str) -> None:
        self.call("Page.navigate", url=url)
        self.wait("!!document.querySelector('#sah-generate') && document.readyState === 'complete'", 60, "the app")

    def drop(self, selector: str, path: Path) -> None:
        """Put a file in a Gradio upload field, as a drop or the file chooser does, and wait for its upload."""
        field = json.dumps(selector + " input[type=file]")
        found = self.call("Runtime.evaluate", expression=f"document.querySelector({field})")
        self.call("DOM.setFileInputFiles", files=[str(path)], objectId=found["result"]["objectId"])
        name = json.dumps(path.name)
        self.wait(f"document.querySelector({json.dumps(selector)}).innerText.replace(/\\s/g, '').includes({name})",
                  30, f"the upload of {path.name}")

    def type_into(self, selector: str, text: str) -> None:
        """Replace a field's text by typing, as a person would (Gradio reads it on input and blur)."""
        self.wait(f"!!document.querySelector({json.dumps(selector)})", 10, selector)
        self.evaluate(f"(() => {{ const e = document.querySelector({json.dumps(selector)}); e.focus(); e.select();"
                      " return true; })()")
        self.call("Input.insertText", text=text)
        self.evaluate(f"(() => {{ document.querySelector({json.dumps(selector)}).blur(); return true; }})()")
        time.sleep(0.3)

    def choose(self, selector: str, option: str) -> None:
        """Pick an option of a Gradio dropdown: type it into the combobox, then Enter."""
        self.evaluate(f"(() => {{ const e = document.querySelector({json.dumps(selector)}); e.focus(); e.select();"
                      " return true; })()")
        self.call("Input.insertText", text=option)
        time.sleep(0.2)
        for kind in ("keyDown", "keyUp"):
            self.call("Input.dispatchKeyEvent", type=kind, key="Enter", code="Enter", windowsVirtualKeyCode=13)
        self.wait(f"document.querySelector({json.dumps(selector)}).value === {json.dumps(option)}", 10, option)

    def open_accordion(self, label: str) -> None:
        self.evaluate(f"""(() => {{ [...document.querySelectorAll('button.label-wrap')]
            .find(b => b.innerText.split('\\n')[0].trim() === {json.dumps(label)}).click(); return true; }})()""")

    def click(self, selector: str) -> None:
        assert self.evaluate(f"(() => {{ const b = document.querySelector({json.dumps(selector)}); "
                             "if (!b) return false; b.click(); return true; })()"), selector

    def status(self, selector: str = "#sah-status") -> list:
        return self.evaluate(f"(() => {{ const s = document.querySelector({json.dumps(selector)}); "
                             "return s ? [s.dataset.phase, s.innerText.trim()] : null; })()")

    def screenshot(self, name: str, fallback: Path) -> None:
        shot = base64.b64decode(self.call("Page.captureScreenshot", format="png")["data"])
        assert shot[:8] == b"\x89PNG\r\n\x1a\n" and len(shot) > 10_000
        target = Path(os.environ.get("SAH_SCREENSHOT_DIR", fallback)) / name
        target.parent.mkdir(parents=True, exist_ok=True)
        target.write_bytes(shot)


@pytest.fixture(scope="module")
def browser(tmp_path_factory):
    require("Chromium", CHROMIUM is not None)
    profile = tmp_path_factory.mktemp("chromium-profile")
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
        tools.call("Page.enable")
        tools.call("DOM.enable")
        tools.call("Network.enable")
        yield tools
        tools.ws.close()
    finally:
        proc.terminate()
        try:
            proc.wait(timeout=10)
        except subprocess.TimeoutExpired:
            proc.kill()


RESULT_VIDEO = """new Promise(done => {
  const v = document.querySelector('#sah-video video');
  if (!v) return done(null);
  const report = () => done({ready: v.readyState, duration: v.duration, width: v.videoWidth, height: v.videoHeight,
                              audioBytes: v.webkitAudioDecodedByteCount, videoBytes: v.webkitVideoDecodedByteCount,
                              time: v.currentTime, error: v.error && v.error.code});
  const play = () => { v.muted = true; v.play().then(() => setTimeout(report, 1000), report); };
  if (v.readyState >= 2) play(); else { v.addEventListener('loadeddata', play); setTimeout(report, 20000); }
})"""

GALLERY = """new Promise(done => {
  const frame = document.querySelector('#sah-gallery-frame');
  const doc = frame && frame.contentDocument;
  if (!doc || doc.readyState !== 'complete') return done(null);
  const cards = [...doc.querySelectorAll('.card')];
  const media = [...doc.querySelectorAll('.card > video, .card > audio')];
  const ready = m => new Promise(r => { if (m.readyState >= 2 || m.error) return r();
    m.addEventListener('loadeddata', r); m.addEventListener('error', r); setTimeout(r, 15000); });
  Promise.all(media.map(ready)).then(() => done({
    cards: cards.map(c => c.dataset.name),
    media: media.map(m => ({tag: m.tagName, ready: m.readyState, error: m.error && m.error.code,
                            duration: m.duration})),
    images: [...doc.querySelectorAll('.card > img')].map(i => i.naturalWidth)}));
})"""


def show_tab(browser: DevTools, label: str) -> None:
    browser.evaluate(f"""(() => {{ const b = [...document.querySelectorAll('button[role=tab], .tab-nav button')]
        .find(b => b.innerText.trim() === {json.dumps(label)}); b.click(); return true; }})()""")
    time.sleep(0.5)


@pytest.mark.slow
def test_chromium_drops_a_video_and_plays_the_result_with_sound(server, browser, tmp_path):
    clip = write_mp4(tmp_path / "clip.mp4", blob_frames(2, 12, 48, 40), 8)  # 1.5 s of a blob, no sound
    browser.open(server.url)
    assert server.out.as_posix() in browser.evaluate("document.body.innerText")  # the folder is on the page
    browser.drop("#sah-input", clip)
    browser.type_into("#sah-steps input", "40")  # long enough to watch the bar move
    browser.click("#sah-generate")
    seen = []
    deadline = time.monotonic() + 180
    while (state := browser.status())[0] not in ("done", "error", "stopped"):
        seen.append(state)
        assert time.monotonic() < deadline, state
        time.sleep(0.1)
    assert state[0] == "done", state
    assert "v2a" in state[1] and "audio~condition" in state[1]
    # a progress bar with the live similarities was shown while it ran
    assert any(phase == "sampling" and "audio~condition" in text for phase, text in seen), sorted(set(map(tuple, seen)))

    video = browser.wait(RESULT_VIDEO, 30, "the result's video")
    assert video["error"] is None and video["ready"] >= 2, video
    assert abs(video["duration"] - 1.5) < 0.1, video  # as long as the dropped video
    assert (video["width"], video["height"]) == (48, 40)
    assert video["time"] > 0 and video["audioBytes"] > 0, video  # it plays, and has decoded sound
    plot = browser.wait("(() => { const i = document.querySelector('#sah-plot img');"
                        " return i && i.complete && i.naturalWidth; })()", 30, "the plot")
    assert plot > 0
    wav = browser.evaluate("(() => { const a = document.querySelector('#sah-audio audio'); return !!a ||"
                           " !!document.querySelector('#sah-audio [data-testid=waveform-controls], #sah-audio "
                           "button'); })()")
    assert wav
    links = browser.evaluate("[...document.querySelectorAll('#sah-files a')].map(a => a.innerText + ' ' + a.href)")
    assert any("v2a-0.mp4" in link for link in links) and any("v2a-0.wav" in link for link in links), links
    facts = browser.evaluate("document.querySelector('#sah-facts').innerText")
    assert "v2a" in facts and "clip.mp4" in facts and "toy-audio" in facts
    files = {p.name for p in server.out.iterdir() if p.is_file()}
    assert {"v2a-0.json", "v2a-0.mp4", "v2a-0.png", "v2a-0.wav"} <= files, files
    assert sorted(server.out.glob("*.json")) == [server.out / "v2a-0.json"]
    sidecar = json.loads((server.out / "v2a-0.json").read_text())
    assert sidecar["task"] == "v2a" and sidecar["config"]["run"]["steps"] == 40
    browser.screenshot("ui-generate.png", tmp_path)
    # the page fetched nothing from anywhere but the app (no CDN, no fonts, no analytics)
    elsewhere = [u for u in browser.requested if not u.startswith((server.url, "data:", "blob:", "about:"))]
    assert browser.requested and not elsewhere, elsewhere

    # the gallery shows the run as `sah report` does, its media served from the output folder
    show_tab(browser, "Gallery")
    gallery = browser.wait(GALLERY, 30, "the gallery")
    assert gallery["cards"] == ["v2a-0"], gallery
    assert [m["tag"] for m in gallery["media"]] == ["VIDEO", "AUDIO"], gallery
    assert all(m["ready"] >= 2 and m["error"] is None for m in gallery["media"]), gallery
    assert gallery["images"] and all(w > 0 for w in gallery["images"]), gallery


@pytest.mark.slow
def test_chromium_shows_a_corrupt_file_as_the_cli_line_and_the_app_keeps_serving(server, browser, tmp_path):
    corrupt = tmp_path / "broken.mp4"
    corrupt.write_bytes(b"\x00\x00\x00\x18ftypmp42" + bytes(range(256)) * 12)
    expected = cli_error("--video", corrupt, "--out", tmp_path / "cli-out").replace(str(corrupt), corrupt.name)
    before = sorted(p.name for p in server.out.rglob("*")) if server.out.exists() else []
    browser.open(server.url)
    browser.drop("#sah-input", corrupt)
    browser.click("#sah-generate")
    state = browser.wait("(() => { const s = document.querySelector('#sah-status');"
                         " return s && s.dataset.phase === 'error' && s.innerText.trim(); })()", 60, "the error")
    assert state == expected and "\n" not in state
    assert state.startswith("Error: broken.mp4: ")

    # the server still answers: the page works on, and a missing weight offline is one line too
    with urllib.request.urlopen(server.url, timeout=10) as reply:
        assert reply.status == 200
    browser.open(server.url)
    browser.open_accordion("more")
    browser.type_into("#sah-overrides textarea", 'audio.generator="audioldm"\nvideo.generator=""')
    browser.click("#sah-generate")
    line = browser.wait("(() => { const s = document.querySelector('#sah-status');"
                        " return s && s.dataset.phase === 'error' && s.innerText.trim(); })()", 60, "the error")
    assert line.startswith("Error: model weights not available offline: ") and "\n" not in line

    # a long run stops at the press of Stop, and saves nothing
    browser.open(server.url)
    browser.type_into("#sah-steps input", "1000")  # the toy scheduler has 1000 timesteps
    browser.click("#sah-generate")
    browser.wait("(() => { const s = document.querySelector('#sah-status');"
                 " return s && s.dataset.phase === 'sampling' && s.querySelector('progress').value > 0; })()",
                 60, "sampling")
    browser.click("#sah-stop")
    assert browser.wait("(() => { const s = document.querySelector('#sah-status');"
                        " return s && s.dataset.phase === 'stopped' && s.innerText; })()", 30, "the stop")
    after = sorted(p.name for p in server.out.rglob("*")) if server.out.exists() else []
    assert after == before  # nothing was written

    # uploads over --max-upload-mb are refused; only the output folder (and Gradio's uploads) is served
    assert upload(server.url, b"\0" * (6 * 2**20)) == 413
    assert upload(server.url, b"fine") == 200
    outside = server.root / "server.log"
    assert fetch(f"{server.url}gradio_api/file={outside}") == 403
    assert fetch(f"{server.url}gradio_api/file={Path(__file__).resolve()}") == 403
    inside = next(server.out.glob("*.json"), None)
    if inside is not None:  # written by the first test
        assert fetch(f"{server.url}gradio_api/file={inside}") == 200


def fetch(url: str) -> int:
    try:
        with urllib.request.urlopen(url, timeout=10) as reply:
            return reply.status
    except urllib.error.HTTPError as exc:
        return exc.code


def upload(base: str, data: bytes) -> int:
    boundary = "sahtestboundary"
    body = (f"--{boundary}\r\nContent-Disposition: form-data; name=\"files\"; filename=\"big.bin\"\r\n"
            "Content-Type: application/octet-stream\r\n\r\n").encode() + data + f"\r\n--{boundary}--\r\n".encode()
    request = urllib.request.Request(f"{base}gradio_api/upload", data=body, method="POST",
                                     headers={"Content-Type": f"multipart/form-data; boundary={boundary}"})
    try:
        with urllib.request.urlopen(request, timeout=30) as reply:
            return reply.status
    except urllib.error.HTTPError as exc:
        return exc.code


@pytest.mark.slow
def test_chromium_lists_an_entry_point_plugin_and_runs_it_with_its_options(server, browser):
    browser.open(server.url)
    config = browser.evaluate("""(() => window.gradio_config.components.filter(c => c.props && c.props.label)
        .map(c => ({label: c.props.label, value: c.props.value, choices: c.props.choices || null})))()""")
    by_label = {}
    for component in config:
        by_label.setdefault(component["label"], []).append(component)
    generators = [c[1] for c in by_label["audio generator"][0]["choices"]]
    assert "ep-test-audio" in generators and "toy-audio" in generators
    assert [c["value"] for c in by_label["audio.shimmer"]] == [0.25]
    assert [c["value"] for c in by_label["audio.label"]] == ["auto"]

    group = "#sah-options-audio-ep_test_audio"
    assert browser.evaluate(f"!document.querySelector('{group}')")  # shown only once chosen
    browser.choose("#sah-gen_audio input", "ep-test-audio")
    text = browser.wait(f"(() => {{ const g = document.querySelector('{group}'); return g && g.innerText; }})()",
                        10, "its options")
    assert "audio.shimmer" in text and "audio.label" in text and "registered by an entry point" in text
    browser.type_into(f"{group.replace('options', 'opt')}-shimmer input", "0.75")
    browser.type_into(f"{group.replace('options', 'opt')}-label :is(input, textarea)", "4")
    browser.type_into("#sah-prompt :is(input, textarea)", "north")
    browser.click("#sah-generate")
    state = browser.wait("(() => { const s = document.querySelector('#sah-status');"
                         " return s && ['done', 'error'].includes(s.dataset.phase) && [s.dataset.phase, s.innerText]; "
                         "})()", 120, "the run")
    assert state[0] == "done", state
    name = next(n for n in state[1].split() if n.startswith("joint-"))
    sidecar = json.loads((server.out / f"{name}.json").read_text())
    assert sidecar["config"]["audio"]["generator"] == "ep-test-audio"
    assert sidecar["config"]["audio"]["shimmer"] == 0.75 and sidecar["config"]["audio"]["label"] == 4
    assert sidecar["prompt"] == "north"


@pytest.mark.slow
def test_chromium_runs_and_resumes_a_batch(server, browser, tmp_path):
    manifest = tmp_path / "jobs.jsonl"
    manifest.write_text('{"id": "north", "prompt": "north"}\n{"id": "east", "prompt": "east", "seed": 2}\n')
    browser.open(server.url)
    show_tab(browser, "Batch")
    browser.drop("#sah-manifest", manifest)
    browser.type_into("#sah-batch-steps input", "4")
    browser.click("#sah-batch-start")
    state = browser.wait("(() => { const s = document.querySelector('#sah-batch-status');"
                         " return s && ['done', 'error', 'stopped'].includes(s.dataset.phase) && "
                         "[s.dataset.phase, s.innerText]; })()", 120, "the batch")
    assert state[0] == "done", state
    assert "2/2 rows: 2 done now" in state[1], state
    batch = server.out / "batch"
    assert sorted(p.name for p in batch.glob("*.json")) == ["east.json", "north.json"]
    assert json.loads((batch / "east.json").read_text())["config"]["run"]["steps"] == 4
    browser.screenshot("ui-batch.png", tmp_path)

    browser.click("#sah-batch-start")  # again: resumed, nothing left to run
    state = browser.wait("(() => { const s = document.querySelector('#sah-batch-status');"
                         " return s && s.dataset.phase === 'done' && s.innerText.includes('2 already done') && "
                         "s.innerText; })()", 60, "the resumed batch")
    assert "0 done now" in state

    # the gallery picked the batch's runs up as they finished; scoring them shows the scores there
    show_tab(browser, "Gallery")
    gallery = browser.wait(f"{GALLERY}.then(g => g && g.cards.includes('east') && g.cards.includes('north') && g)",
                           30, "the batch's runs in the gallery")
    assert all(m["ready"] >= 2 and m["error"] is None for m in gallery["media"]), gallery
    browser.click("#sah-gallery-score")
    note = browser.wait("(() => { const n = document.querySelector('#sah-score-note-text');"
                        " return n && n.innerText; })()", 120, "the scores")
    assert note.startswith("scored "), note
    cards = len(gallery["cards"])
    scored = browser.wait(f"""(() => {{ const f = document.querySelector('#sah-gallery-frame');
        const d = f && f.contentDocument; return d && d.readyState === 'complete' &&
            d.querySelectorAll('.card table.scores').length === {cards} && {cards}; }})()""",
                          30, "scores in the gallery")
    assert scored == cards
    assert (server.out / "eval.json").is_file()
    browser.screenshot("ui-gallery.png", tmp_path)

"""AV-Align on media whose peaks are placed by hand, and `sah eval` on real `sah run` outputs."""

import csv
import json
import math

import numpy as np
import pytest
import torch
from click.testing import CliRunner
from media_helpers import write_wav
from PIL import Image

from sah import avalign, io
from sah import eval as evaluation
from sah.cli import cli
from sah.io import read_audio, read_video
from sah.media import Video
from sah.plugins.binders.toy import ToyBinder

FPS = 8
JUMP_FRAMES = (4, 9, 13)  # frame i differs from frame i-1 only here
CLICK_TIMES = (0.2, 0.5, 1.125, 1.9)  # 0.5 and 1.125 s are jump times (4/8, 9/8); 0.2 and 1.9 s are far from all
# by hand: video peaks {0.5, 1.125, 1.625}, audio peaks = the 4 clicks, hits 2 -> 2 / (4 + 3 - 2)
EXPECTED = 2 / (4 + 3 - 2)


def jumping_square(frames: int = 16, size: int = 64) -> np.ndarray:
    video = np.zeros((frames, size, size, 3), np.uint8)
    x = 8
    for i in range(frames):
        if i in JUMP_FRAMES:
            x += 12
        video[i, 8:24, x:x + 16] = 255
    return video


def clicks(rate: int, seconds: float = 2.0) -> np.ndarray:
    wave = np.zeros(int(rate * seconds), np.float32)
    for t in CLICK_TIMES:
        if t < seconds:
            wave[round(t * rate)] = 0.9
    return wave


def write_mp4(path, frames, fps):
    """Lossless H.264, so still frames decode identical and only the jumps move."""
    video = Video(torch.from_numpy(frames).permute(0, 3, 1, 2).float() / 255.0, fps)
    return io.write_mp4(path, video, crf=0)


def invoke(*args):
    return CliRunner().invoke(cli, [str(a) for a in args], catch_exceptions=False)


def test_peak_pick_follows_librosa_rules():
    x = np.array([0.0, 1.0, 0.2, 0.0, 0.0, 0.5, 0.45, 0.0, 0.9, 0.95])
    # n is a peak if x[n] = max x[n-1 : n+1] (the window looks back only) and x[n] >= mean x[n-1 : n+2] + 0.07:
    # 9 is the max of its window but not 0.07 above mean(0.9, 0.95); 8 is (0.9 >= 0.617 + 0.07)
    assert avalign.peak_pick(x, pre_max=1, post_max=1, pre_avg=1, post_avg=2, delta=0.07, wait=0).tolist() == \
        [1, 5, 8]
    # wait=4 skips frames 2..5 after the peak at 1
    assert avalign.peak_pick(x, pre_max=1, post_max=1, pre_avg=1, post_avg=2, delta=0.07, wait=4).tolist() == [1, 8]


def test_local_maxima_are_strict():
    assert avalign.local_maxima(np.array([0, 2, 1, 1, 3, 3, 0, 5])).tolist() == [1]


def test_video_peaks_are_the_jump_frames():
    mags = avalign.flow_magnitudes(jumping_square())
    assert mags[0] == mags[1]  # the published code repeats the first flow value
    assert set(np.argsort(mags)[-3:]) == set(JUMP_FRAMES)
    assert avalign.video_peaks(jumping_square(), FPS).tolist() == [i / FPS for i in JUMP_FRAMES]


@pytest.mark.parametrize("rate", [22050, 16000])
def test_audio_peaks_are_the_clicks(rate):
    peaks = avalign.audio_peaks(clicks(rate), rate)
    assert len(peaks) == len(CLICK_TIMES)
    hop = avalign.HOP_LENGTH / avalign.SAMPLE_RATE
    assert np.abs(peaks - np.array(CLICK_TIMES)).max() <= 1.5 * hop


def test_av_align_equals_hand_arithmetic_on_arrays():
    result = avalign.av_align(clicks(22050), 22050, jumping_square(), FPS)
    assert result.hits == 2
    assert result.score == pytest.approx(EXPECTED)
    silent = avalign.av_align(np.zeros(22050, np.float32), 22050, jumping_square(), FPS)
    assert silent.audio_peaks == [] and silent.score == 0.0
    assert math.isnan(avalign.av_align(np.zeros(22050), 22050, np.zeros((8, 16, 16, 3), np.uint8), FPS).score)


def test_sah_eval_av_align_on_synthetic_files(tmp_path):
    # lossless H.264 so still frames stay identical after decoding; wav at 16 kHz is resampled to 22050
    write_mp4(tmp_path / "clip.mp4", jumping_square(), fps=FPS)
    write_wav(tmp_path / "clip.wav", clicks(16000)[None], 16000)
    result = invoke("eval", tmp_path, "--metric", "av-align", "--json", tmp_path / "s.json",
                    "--csv", tmp_path / "s.csv")
    assert result.exit_code == 0, result.output
    data = json.loads((tmp_path / "s.json").read_text())
    assert data["items"][0]["files"]["audio"].endswith("clip.wav")
    assert data["items"][0]["scores"]["av-align"] == pytest.approx(EXPECTED, abs=1e-6)
    rows = list(csv.DictReader((tmp_path / "s.csv").open()))
    assert float(rows[0]["av-align"]) == pytest.approx(EXPECTED, abs=1e-6)


def test_find_items_pairs_by_stem_and_ignores_foreign_json(tmp_path):
    write_mp4(tmp_path / "a.mp4", jumping_square(4, 16), fps=FPS)
    write_wav(tmp_path / "a.wav", clicks(16000, 0.5)[None], 16000)
    write_mp4(tmp_path / "b.mp4", jumping_square(4, 16), fps=FPS)
    (tmp_path / "a.json").write_text('{"metrics": []}')
    (tmp_path / ".c.mp4.1234.tmp.mp4").write_bytes(b"partial")
    items = evaluation.find_items([tmp_path])
    assert [(i.name, i.video.name, i.audio and i.audio.name) for i in items] == \
        [("a", "a.mp4", "a.wav"), ("b", "b.mp4", None)]
    assert [i.name for i in evaluation.find_items([tmp_path / "a.mp4"])] == ["a"]


def test_bad_metric_and_missing_path_are_one_line_errors(tmp_path):
    write_mp4(tmp_path / "a.mp4", jumping_square(4, 16), fps=FPS)
    result = CliRunner().invoke(cli, ["eval", str(tmp_path), "--metric", "toy-avv"])
    assert result.exit_code == 2 and "unknown metric 'toy-avv'; available:" in result.output
    result = CliRunner().invoke(cli, ["eval", str(tmp_path / "nope")])
    assert result.exit_code == 2 and "no such file or folder" in result.output


def test_sah_eval_on_toy_run_outputs(tmp_path):
    out = tmp_path / "out"
    for prompt, seed in (("north", 0), ("southwest", 1)):
        result = invoke("run", "--prompt", prompt, "--seed", seed, "--steps", 16, "--out", out, "--quiet")
        assert result.exit_code == 0, result.output
    nothing = invoke("run", "--prompt", "west", "--seed", 5, "--steps", 4, "--out", out, "--quiet", "--no-plot")
    assert nothing.exit_code == 0
    # the third run into the folder is joint-2 (outputs are numbered by run and sample, the seed is in the sidecar)
    assert not (out / "joint-2.png").exists() and "png" not in json.loads((out / "joint-2.json").read_text())["files"]
    assert json.loads((out / "joint-2.json").read_text())["seed"] == 5
    (out / "joint-2.json").unlink()
    for stem in ("joint-2.mp4", "joint-2.wav"):
        (out / stem).unlink()

    for stem in ("joint-0", "joint-1"):  # the per-run plot
        sidecar = json.loads((out / f"{stem}.json").read_text())
        assert sidecar["files"]["png"] == f"{stem}.png"
        with Image.open(out / f"{stem}.png") as png:
            assert png.format == "PNG" and png.width >= 600 and png.height >= 600

    result = invoke("eval", out, "--json", tmp_path / "e.json", "--csv", tmp_path / "e.csv")
    assert result.exit_code == 0, result.output
    for heading in ("toy-av", "toy-hit", "av-align", "mean ± std"):
        assert heading in result.output
    data = json.loads((tmp_path / "e.json").read_text())
    assert data["metrics"] == ["toy-av", "toy-tv", "toy-ta", "av-align", "toy-hit", "toy-valid"]
    assert [r["name"] for r in data["items"]] == ["joint-0", "joint-1"]
    for row in data["items"]:
        assert row["scores"]["toy-hit"] == 1.0 and row["scores"]["toy-valid"] == 1.0
        audio, video = read_audio(row["files"]["audio"]), read_video(row["files"]["video"])
        expected = avalign.av_align(audio.waveform[0], audio.sample_rate, video.frames[0], video.fps)
        assert row["scores"]["av-align"] == pytest.approx(expected.score, abs=1e-6)
        # the binder score is 100 x the cosine of the toy binder's embeddings of the files
        binder = ToyBinder()
        with torch.no_grad():
            a, v = binder.embed(audio), binder.embed(video)
        assert row["scores"]["toy-av"] == pytest.approx(100 * float(torch.cosine_similarity(a, v)[0]), abs=1e-3)
    values = [r["scores"]["toy-av"] for r in data["items"]]
    assert data["summary"]["toy-av"]["mean"] == pytest.approx(np.mean(values))
    assert data["summary"]["toy-av"]["std"] == pytest.approx(np.std(values, ddof=1))
    assert data["summary"]["toy-hit"] == {"mean": 1.0, "std": 0.0, "n": 2}
    rows = list(csv.DictReader((tmp_path / "e.csv").open()))
    assert [r["name"] for r in rows] == ["joint-0", "joint-1"] and rows[1]["prompt"] == "southwest"
    assert float(rows[0]["toy-av"]) == pytest.approx(values[0])


def test_run_without_matplotlib_says_plots_are_off(tmp_path, monkeypatch):
    import sah.api
    import sah.cli

    # as if matplotlib were not installed: sah.plot.available() is what both layers ask
    monkeypatch.setattr(sah.api, "plot_available", lambda: False)
    monkeypatch.setattr(sah.cli, "plot_available", lambda: False)
    result = CliRunner().invoke(cli, ["run", "--prompt", "north", "--steps", "4", "--out", str(tmp_path)])
    assert result.exit_code == 0, result.output
    assert "matplotlib is not installed: plots are off" in result.output
    assert sorted(p.suffix for p in tmp_path.iterdir()) == [".json", ".mp4", ".wav"]


def test_list_metrics_needs_no_paths():
    result = invoke("eval", "--list-metrics")
    assert result.exit_code == 0, result.output
    assert {"toy-av", "av-align", "toy-hit"} <= set(result.output.split())
    missing = CliRunner().invoke(cli, ["eval"])
    assert missing.exit_code == 2 and "Missing argument 'PATHS...'" in missing.output


def test_an_unreadable_file_is_reported_in_its_row_and_the_rest_are_scored(tmp_path):
    write_mp4(tmp_path / "good.mp4", jumping_square(), fps=FPS)
    write_wav(tmp_path / "good.wav", clicks(16000)[None], 16000)
    (tmp_path / "broken.mp4").write_bytes(b"\x00\x00\x00\x18ftypmp42 this is not a video")
    (tmp_path / "empty.wav").write_bytes(b"")
    result = CliRunner().invoke(cli, ["eval", str(tmp_path), "--metric", "av-align", "--json", str(tmp_path / "s.json"),
                                      "--csv", str(tmp_path / "s.csv")])
    assert result.exit_code == 1, result.output  # some clips failed: said, and the exit code tells a script
    rows = {r["name"]: r for r in json.loads((tmp_path / "s.json").read_text())["items"]}
    assert set(rows) == {"good", "broken", "empty"}
    assert rows["good"]["error"] is None and rows["good"]["scores"]["av-align"] == pytest.approx(EXPECTED, abs=1e-6)
    assert "broken.mp4" in rows["broken"]["error"] and rows["broken"]["scores"] == {"av-align": None}
    assert "empty.wav" in rows["empty"]["error"] and "is empty" in rows["empty"]["error"]
    assert "could not score broken" in result.stderr and "2 of 3 clip(s) could not be scored" in result.stderr
    csv_rows = {r["name"]: r for r in csv.DictReader((tmp_path / "s.csv").open())}
    assert csv_rows["good"]["error"] == "" and csv_rows["broken"]["error"]
    assert json.loads((tmp_path / "s.json").read_text())["summary"]["av-align"]["n"] == 1


def test_files_sharing_a_stem_are_separate_rows(tmp_path):
    write_mp4(tmp_path / "test.mp4", jumping_square(4, 16), fps=FPS)
    write_mp4(tmp_path / "test.webm.mp4", jumping_square(4, 16), fps=FPS)
    (tmp_path / "test.webm.mp4").rename(tmp_path / "test.webm")  # any container: named by its suffix
    write_wav(tmp_path / "test.wav", clicks(16000, 0.5)[None], 16000)
    write_mp4(tmp_path / "pair.mp4", jumping_square(4, 16), fps=FPS)
    write_wav(tmp_path / "pair.wav", clicks(16000, 0.5)[None], 16000)
    items = evaluation.find_items([tmp_path])
    assert sorted((i.name, i.video and i.video.name, i.audio and i.audio.name) for i in items) == [
        ("pair", "pair.mp4", "pair.wav"), ("test.mp4", "test.mp4", None), ("test.wav", None, "test.wav"),
        ("test.webm", "test.webm", None)]
    # naming one file scores that file (with its pair), not its namesakes
    assert [i.name for i in evaluation.find_items([tmp_path / "test.mp4"])] == ["test.mp4"]
    assert [(i.name, i.audio.name) for i in evaluation.find_items([tmp_path / "pair.mp4"])] == [("pair", "pair.wav")]


def test_readme_order_eval_then_report_shows_the_scores(tmp_path):
    """`sah eval outputs/ --json scores.json` then `sah report outputs/`: the folder keeps its scores
    (outputs/eval.json, paths relative to it), later evals update it, and the page shows them."""
    out = tmp_path / "outputs"
    for prompt in ("north", "east"):
        assert invoke("run", "--prompt", prompt, "--steps", 8, "--out", out, "--quiet", "--no-plot").exit_code == 0
    result = invoke("eval", out, "--json", tmp_path / "scores.json", "--metric", "toy-hit")
    assert result.exit_code == 0, result.output
    kept = json.loads((out / "eval.json").read_text())
    assert kept["base"] == "." and [r["files"]["sidecar"] for r in kept["items"]] == ["joint-0.json", "joint-1.json"]
    assert invoke("eval", out / "joint-1.mp4", "--metric", "toy-valid").exit_code == 0  # a file: the folder's is kept
    assert invoke("eval", out, "--metric", "av-align").exit_code == 0  # another metric: added, not replacing
    kept = json.loads((out / "eval.json").read_text())
    assert kept["metrics"] == ["av-align", "toy-hit"] and all(r["scores"]["toy-hit"] == 1.0 for r in kept["items"])
    moved = tmp_path / "moved"
    out.rename(moved)  # the folder's scores travel with it
    page = CliRunner().invoke(cli, ["report", str(moved)])
    assert page.exit_code == 0 and "no scores" not in page.stderr
    html = (moved / "index.html").read_text()
    assert "toy-hit" in html and "av-align" in html and 'data-m-toy-hit="1.0"' in html
    empty = tmp_path / "fresh"
    assert invoke("run", "--steps", 3, "--out", empty, "--quiet", "--no-plot").exit_code == 0
    unscored = CliRunner().invoke(cli, ["report", str(empty)])
    assert unscored.exit_code == 0 and f"`sah eval {empty}` writes" in unscored.stderr
    assert invoke("eval", empty, "--no-save", "--metric", "toy-hit").exit_code == 0
    assert not (empty / "eval.json").exists()


def test_unguided_plot_has_no_guided_window_in_its_legend(tmp_path, monkeypatch):
    from matplotlib.figure import Figure

    from sah import plot
    from sah.media import Audio

    drawn = []
    monkeypatch.setattr(Figure, "savefig", lambda fig, *a, **k: drawn.append(fig))
    audio = Audio(torch.zeros(1, 1, 16000), 16000)
    plot.draw(tmp_path / "u.png", [], num_steps=10, window=(0.0, 0.0), audio=audio)
    plot.draw(tmp_path / "g.png", [{"progress": 0.5, "similarity": {"audio~text": 0.3}}], num_steps=10,
              window=(0.2, 1.0), audio=audio)
    unguided, guided = (fig.axes[0] for fig in drawn)
    assert unguided.get_legend() is None and not unguided.patches
    assert [t.get_text() for t in guided.get_legend().get_texts()] == ["guided window", "audio~text"]

"""Seconds per clip of the one-time video-condition embedding: batched (sah) vs one clip at a time.

sah embeds a video condition once per run, every clip and crop of it in ONE forward of ImageBind's
vision tower (`ImageBindBinder.embed(Video)`: `_weighted_clips` flattens clips x crops into the
batch). The loop it replaces fed the tower one clip at a time, batch 1. This benchmark times both
on the same video, after the same preprocessing (`video_to_clips`, counted in both), and checks
that they give the same embedding:

- batched: `binder.embed(video)`, what a run does;
- one at a time (batch 1): the same clips from `video_to_clips`, each (clip, crop) through
  `embed_vision` alone, then averaged with the same weights: the one-clip-at-a-time loop;
- per clip, its crops batched: each temporal clip's crops in one forward (what calling `embed`
  on each clip's own stretch of the video would run), shown for reference;
- with `--bfloat16-row`, batched again with the tower cast to bfloat16, as the binder's option
  `vision_dtype = "bfloat16"` runs it (tests/test_imagebind.py checks they are the same), and its
  cosine to the float32 embedding.

Note on the Seeing-and-Hearing authors' code (../shared/reference/seeing-and-hearing/README.md):
it passes the video as `[1, K, 3, 2, 224, 224]` (K 1 s clips, squashed, no crops) to ImageBind's
`forward`, which also flattens the K clips into one batch, but it does so on every guided step
(23 of 30), not once. "One at a time" here is the batch-1 loop, not their call.

A "clip" below is one input of the tower: one temporal clip (2 frames) of one spatial crop. The
video is `--clips` seconds at 8 fps, 224x398 (so that 3 crops differ), cut into `--clips` 1 s clips
x `--crops` crops. Full size: ImageBind huge's vision tower (632 M parameters) with random weights,
float32, no grad, on the CPU with `--threads` torch threads (1 by default). One batch-1 forward
warms up first (not timed).

    python benchmarks/condition_embed.py                   # full size: 4 clips x 3 crops, ~3 GB RAM
    python benchmarks/condition_embed.py --clips 8 --crops 1 --repeats 2 --bfloat16-row
    python benchmarks/condition_embed.py --tiny            # the tests' tiny ImageBind: seconds

Measured (2-core CPU, otherwise idle, 1 thread, 4 clips x 3 crops): 2.985 s per clip batched, 2.965
s one at a time (ratio 1.006): at batch 1 the tower's matrix products already have 257 rows (its
tokens), which keep one core busy, so batching saves nothing; in bfloat16, 1.119 s per clip (0.377x,
cosine 0.99998 to float32). A second run (short test runs beside it): 3.154, 3.425 and, in
bfloat16, 1.007 s per clip (0.294x, cosine 0.999983). docs/performance.md has both.
"""

from __future__ import annotations

import argparse
import statistics
import sys
import time
from pathlib import Path

import torch

from sah.media import Video

ROOT = Path(__file__).resolve().parents[1]
TARGET = 0.75  # issue 19: batched at most 0.75x the one-clip-at-a-time seconds per clip
BF16 = "batched, tower in bfloat16 (vision_dtype)"


def tiny_config():
    from sah.plugins.binders.imagebind import ImageBindConfig

    sys.path.insert(0, str(ROOT / "tests"))
    from reference import reference_dir  # tests/reference.py: $SAH_REFERENCE_DIR or ../shared/reference

    path = reference_dir() / "imagebind" / "tiny_config.json"
    if path.is_file():
        return ImageBindConfig.from_json(path)
    from test_imagebind import TINY

    return TINY


def make_binder(tiny: bool, crops: int | str, clips: int):
    from sah.plugins.binders.imagebind import ImageBindBinder, ImageBindConfig, ImageBindModel

    torch.manual_seed(0)
    config = tiny_config() if tiny else ImageBindConfig()
    model = ImageBindModel(config, towers=("vision",)).float().eval().requires_grad_(False)
    return ImageBindBinder.from_model(model, video_clip_seconds=1.0, video_clips=clips, video_crops=crops)


def make_video(clips: int) -> Video:
    """`clips` seconds at 8 fps, 224x398: a bright square moving over dim noise."""
    g = torch.Generator().manual_seed(0)
    n, h, w = 8 * clips, 224, 398
    frames = torch.rand(1, n, 3, h, w, generator=g) * 0.1
    for i in range(n):
        x = int((w - 56) * i / max(n - 1, 1))
        frames[0, i, :, 80:136, x:x + 56] = 1.0
    return Video(frames, fps=8.0)


def clips_of(binder, media: Video) -> tuple[torch.Tensor, torch.Tensor]:
    """What `ImageBindBinder.embed` feeds the tower: clips `[1, K·crops, 3, 2, 224, 224]` and weights."""
    from sah.plugins.binders.imagebind.preprocess import video_to_clips

    return video_to_clips(media.frames, media.fps, binder.config["video_clips"], binder.config["video_crops"],
                          binder.config["preprocess"], frames_per_clip=binder.model_config.video_frames,
                          clip_seconds=float(binder.config["video_clip_seconds"]))


def batched(binder, media: Video) -> torch.Tensor:
    return binder.embed(media)


def one_at_a_time(binder, media: Video) -> torch.Tensor:
    clips, weights = clips_of(binder, media)
    tower = binder.tower("vision")
    out = torch.cat([tower.embed_vision(clips[:, j]).float() for j in range(clips.shape[1])])
    return (out * weights[:, None]).sum(0, keepdim=True)


def per_clip(binder, media: Video, crops: int) -> torch.Tensor:
    clips, weights = clips_of(binder, media)
    tower = binder.tower("vision")
    groups = [clips[0, j:j + crops] for j in range(0, clips.shape[1], crops)]
    out = torch.cat([tower.embed_vision(group).float() for group in groups])
    return (out * weights[:, None]).sum(0, keepdim=True)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--tiny", action="store_true", help="the tests' tiny ImageBind (a smoke test)")
    parser.add_argument("--clips", type=int, default=4, help="1 s temporal clips in the video (default 4)")
    parser.add_argument("--crops", default="3", choices=["1", "3", "squash"],
                        help='spatial crops per clip: 3 (sah\'s default), 1, or "squash" (the authors\')')
    parser.add_argument("--threads", type=int, default=1, help="torch threads (default 1)")
    parser.add_argument("--repeats", type=int, default=1, help="timed repeats of each variant; the median counts")
    parser.add_argument("--bfloat16-row", action="store_true", help="also time the batched embedding with the "
                                                                   "tower in bfloat16")
    args = parser.parse_args()
    torch.set_num_threads(args.threads)
    crops = args.crops if args.crops == "squash" else int(args.crops)
    per = 1 if crops == "squash" else crops

    start = time.perf_counter()
    binder = make_binder(args.tiny, crops, args.clips)
    media = make_video(args.clips)
    build_s = time.perf_counter() - start
    clips, _ = clips_of(binder, media)
    n = clips.shape[1]
    assert n == args.clips * per, f"expected {args.clips} x {per} distinct clips, got {n}"

    variants = {"batched (sah: one forward)": batched, "one at a time (batch 1)": one_at_a_time}
    if per > 1:
        variants[f"per clip, its {per} crops batched"] = lambda b, m: per_clip(b, m, per)
    times: dict[str, list[float]] = {name: [] for name in variants}
    embeddings: dict[str, torch.Tensor] = {}
    with torch.no_grad():
        binder.tower("vision").embed_vision(clips[:, 0])  # warm-up, batch 1
        for _ in range(args.repeats):
            for name, fn in variants.items():
                t0 = time.perf_counter()
                embeddings[name] = fn(binder, media)
                times[name].append(time.perf_counter() - t0)
        if args.bfloat16_row:  # last: the tower is cast in place
            from sah.plugins.binders.imagebind import ImageBindBinder

            tower = binder.tower("vision").to(torch.bfloat16)
            half = ImageBindBinder.from_model(tower, **{k: binder.config[k] for k in
                                                        ("video_clip_seconds", "video_clips", "video_crops")})
            name = BF16
            variants[name], times[name] = batched, []
            tower.embed_vision(clips[:, 0].to(torch.bfloat16))  # warm-up, batch 1
            for _ in range(args.repeats):
                t0 = time.perf_counter()
                embeddings[name] = half.embed(media)
                times[name].append(time.perf_counter() - t0)

    size = "tiny" if args.tiny else "huge"
    params = sum(p.numel() for p in binder.tower("vision").parameters()) / 1e6
    print(f"video-condition embedding, ImageBind {size} vision tower ({params:.1f} M parameters, random weights), "
          f"float32, no grad, CPU, {args.threads} thread(s); video {args.clips} s at 8 fps 224x398 -> {args.clips} "
          f"clips x {per} crops = {n} tower inputs (a 'clip' below is one input); preprocessing counted in each; "
          f"median of {args.repeats}; model built in {build_s:.0f} s\n")
    reference = embeddings["batched (sah: one forward)"]
    print("| variant | forwards | batch | total s | s per clip | cosine to batched |")
    print("|---|---|---|---|---|---|")
    per_clip_s = {}
    for name in variants:
        total = statistics.median(times[name])
        per_clip_s[name] = total / n
        forwards, batch = (n // per, per) if name.startswith("per clip") else (n, 1) if "batch 1" in name else (1, n)
        cos = torch.nn.functional.cosine_similarity(embeddings[name], reference).item()
        print(f"| {name} | {forwards} | {batch} | {total:.4f} | {total / n:.5f} | {cos:.6f} |")
    names = list(variants)
    ratio = per_clip_s[names[0]] / per_clip_s[names[1]]
    verdict = "met" if ratio <= TARGET else "NOT met"
    print(f"\nbatched / one at a time, seconds per clip: {per_clip_s[names[0]]:.5f} / {per_clip_s[names[1]]:.5f} = "
          f"{ratio:.3f} (target <= {TARGET}: {verdict})")
    if per > 1:
        print(f"batched / per clip with its crops batched: {per_clip_s[names[0]] / per_clip_s[names[2]]:.3f}")
    if args.bfloat16_row:
        print(f"batched in bfloat16 / one at a time in float32, seconds per clip: {per_clip_s[BF16]:.5f} / "
              f"{per_clip_s[names[1]]:.5f} = {per_clip_s[BF16] / per_clip_s[names[1]]:.3f}")


if __name__ == "__main__":
    main()

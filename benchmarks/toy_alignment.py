"""Toy-world alignment benchmark: does guidance make sound and picture agree, and what does it cost?

For joint, V2A, A2V and I2A it prints, per update rule and loop convention, the oracle's hit (or
match) rate and validity over N samples, and the guided/unguided wall-time ratio measured in the
same run.

    python benchmarks/toy_alignment.py                 # 200 samples, 50 DDIM steps
    python benchmarks/toy_alignment.py --samples 50 --tasks v2a a2v
    python benchmarks/toy_alignment.py --rules unguided adam --conventions sah authors
"""

from __future__ import annotations

import argparse
import time

import torch

import sah
from sah.api import Models
from sah.media import Audio, Image, Video
from sah.plugins.toy import oracle, world

RULES = {
    "unguided": {"enabled": False},
    "adam": {"optimizer": "adam", "lr": 0.1},        # the paper's update: fresh Adam per step, lr 0.1
    "ngd-0.03": {"optimizer": "ngd", "lr": 0.03},    # the prototype's fixed-size step
    "ngd-0.1": {"optimizer": "ngd", "lr": 0.1},      # as far per step as Adam's first step, along the gradient
}

#: Where the nudge acts and how the window counts: sah's defaults, and the authors' released V2A code.
CONVENTIONS = {
    "sah": {"nudge": "current", "window": "progress"},
    "authors": {"nudge": "stepped", "window": "after"},
}


def conditions(task: str, n: int, seed: int) -> tuple[torch.Tensor, sah.media.Media | None]:
    g = torch.Generator().manual_seed(seed)
    classes = torch.randint(0, world.NUM_CLASSES, (n,), generator=g)
    if task == "v2a":
        return classes, Video(world.make_video(classes, g), fps=world.FPS)
    if task == "a2v":
        return classes, Audio(world.make_audio(classes, g), world.SAMPLE_RATE)
    if task == "i2a":
        return classes, Image(world.make_video(classes, g)[:, 0])
    return classes, None


def score(task: str, classes: torch.Tensor, result: sah.RunResult) -> tuple[float, float]:
    audio = sah.media.concat([s.audio for s in result.samples]) if result.samples[0].audio is not None else None
    video = sah.media.concat([s.video for s in result.samples]) if result.samples[0].video is not None else None
    if task == "joint":
        hit = oracle.audio_class(audio) == oracle.video_class(video)
        valid = oracle.audio_valid(audio) & oracle.video_valid(video)
    elif task == "a2v":
        hit, valid = oracle.video_class(video) == classes, oracle.video_valid(video)
    else:
        hit, valid = oracle.audio_class(audio) == classes, oracle.audio_valid(audio)
    return hit.float().mean().item(), valid.float().mean().item()


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--samples", type=int, default=200)
    parser.add_argument("--steps", type=int, default=50)
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--tasks", nargs="+", default=["joint", "v2a", "a2v", "i2a"])
    parser.add_argument("--rules", nargs="+", default=list(RULES))
    parser.add_argument("--conventions", nargs="+", default=["sah"], choices=list(CONVENTIONS))
    parser.add_argument("--threads", type=int, default=0, help="torch threads (0: torch's default)")
    args = parser.parse_args()
    if args.threads:
        torch.set_num_threads(args.threads)

    print(f"toy alignment: {args.samples} samples, DDIM {args.steps} steps, guidance from 20 % of steps, "
          f"1 optimisation step; hit = oracle class agrees (joint: audio and video agree)\n")
    print("| task | rule | convention | hit / match | valid | wall s | guided / unguided time |")
    print("|---|---|---|---|---|---|---|")
    for task in args.tasks:
        classes, condition = conditions(task, args.samples, args.seed + 1)
        base = {"run": {"task": task, "steps": args.steps, "num_samples": args.samples, "seed": args.seed,
                        "device": "cpu"}}
        models = None
        unguided_time = None
        runs = [(rule, c) for rule in args.rules
                for c in (["-"] if rule == "unguided" else args.conventions)]
        for rule, convention in runs:
            guidance = {**RULES[rule], **CONVENTIONS.get(convention, {})}
            plan = sah.plan(base, {"guidance": guidance}, condition=condition)
            if models is None:  # load once per task; every rule shares the same weights
                models = sah.load(sah.plan(base, condition=condition))
            binder = models.binder if plan.binder is not None else None
            start = time.perf_counter()
            result = sah.generate(plan, Models(models.generators, binder))
            seconds = time.perf_counter() - start
            if rule == "unguided":
                unguided_time = seconds
            hit, valid = score(task, classes, result)
            ratio = f"{seconds / unguided_time:.2f}×" if unguided_time and rule != "unguided" else "1"
            print(f"| {task} | {rule} | {convention} | {hit:.3f} | {valid:.3f} | {seconds:.1f} | {ratio} |",
                  flush=True)


if __name__ == "__main__":
    main()

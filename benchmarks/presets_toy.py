"""The presets' guidance recipes on the toy world: which update rule and settings make sound and picture agree?

The toy world (plugins/toy) has an oracle that says which class a clip shows or sounds like and
whether it is a valid clip at all, so an update rule can be scored; the real models cannot be here
(no weights). For each preset task this runs the preset's `[run] steps` and `[guidance]` table (and
a few candidate variants) with the toy generators and binder, on N samples, and prints the oracle's
hit (joint: audio and video agree) and validity rates and the guided/unguided wall time.

    python benchmarks/presets_toy.py --samples 200
    python benchmarks/presets_toy.py --samples 50 --tasks a2v --no-candidates

Caveat: the toy latents are 32-dimensional whitened PCA coordinates, not VAE latents, so learning
rates transfer to the real models only as a direction (more or less aggressive), not as numbers.
"""

from __future__ import annotations

import argparse
import sys
import time
from pathlib import Path
from typing import Any

import torch

import sah
from sah.api import Models
from sah.presets import load_preset

sys.path.insert(0, str(Path(__file__).resolve().parent))
from toy_alignment import CONVENTIONS, conditions, score  # noqa: E402  (the toy benchmark's inputs and scoring)

TASKS = ("v2a", "i2a", "a2v", "joint")

#: Variants tried besides the presets themselves: (label, steps or None for the preset's, guidance overrides).
CANDIDATES: dict[str, list[tuple[str, int | None, dict[str, Any]]]] = {
    "v2a": [("ngd 0.03", None, {"optimizer": "ngd", "lr": 0.03}),
            ("ngd 0.1", None, {"optimizer": "ngd", "lr": 0.1}),
            ("adam 0.1, 20 steps", 20, {}),
            ("adam 0.1, 15 steps", 15, {}),
            ("adam 0.1, end 0.8", None, {"end": 0.8}),
            ("ngd 0.1, end 0.8", None, {"optimizer": "ngd", "lr": 0.1, "end": 0.8}),
            ("ngd 0.1, 20 steps", 20, {"optimizer": "ngd", "lr": 0.1})],
    "a2v": [("adam 0.01, no prompt tuning", None, {"prompt_tuning": False}),
            ("adam 0.1", None, {"lr": 0.1}),
            ("ngd 0.03", None, {"optimizer": "ngd", "lr": 0.03}),
            ("ngd 0.1", None, {"optimizer": "ngd", "lr": 0.1}),
            ("ngd 0.1, no prompt tuning", None, {"optimizer": "ngd", "lr": 0.1, "prompt_tuning": False}),
            ("adam 0.1, 15 steps", 15, {"lr": 0.1}),
            ("ngd 0.03, no prompt tuning", None, {"optimizer": "ngd", "lr": 0.03, "prompt_tuning": False}),
            ("ngd 0.1, no prompt tuning, end 0.8", None, {"optimizer": "ngd", "lr": 0.1, "prompt_tuning": False,
                                                         "end": 0.8})],
    "joint": [("adam 0.1 / 0.1", None, {"lr": 0.1}),
              ("ngd 0.03 / 0.03", None, {"optimizer": "ngd", "lr": 0.03}),
              ("ngd 0.1 / 0.1", None, {"optimizer": "ngd", "lr": 0.1}),
              ("adam 0.1 / 0 (audio follows video), start 0.4", None, {"lr": {"audio": 0.1, "video": 0.0},
                                                                       "start": 0.4}),
              ("adam 0.1 / 0.01, prompt tuning", None, {"prompt_tuning": True}),
              ("ngd 0.1 / 0.03", None, {"optimizer": "ngd", "lr": {"audio": 0.1, "video": 0.03}}),
              ("adam 0.1 / 0.03", None, {"lr": {"audio": 0.1, "video": 0.03}})],
}
CANDIDATES["i2a"] = CANDIDATES["v2a"]


def toy_layer(preset: dict[str, Any], steps: int | None, overrides: dict[str, Any]) -> dict[str, Any]:
    """The preset's schedule and guidance on the toy generators and binder."""
    guidance = {**preset["guidance"], **overrides}
    return {"run": {"steps": steps or preset["run"]["steps"]}, "guidance": guidance}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--samples", type=int, default=200)
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--tasks", nargs="+", default=list(TASKS))
    parser.add_argument("--no-candidates", action="store_true", help="only the paper-* and fast-* presets")
    parser.add_argument("--threads", type=int, default=1, help="torch threads (0: torch's default)")
    args = parser.parse_args()
    if args.threads:
        torch.set_num_threads(args.threads)

    print(f"presets on the toy world: {args.samples} samples, seed {args.seed}; hit = oracle class agrees with "
          f"the condition (joint: audio and video agree); valid = the oracle accepts the generated clip(s)\n")
    print("| task | recipe | steps | hit / match | valid | wall s | guided / unguided time |")
    print("|---|---|---|---|---|---|---|")
    for task in args.tasks:
        classes, condition = conditions(task, args.samples, args.seed + 1)
        paper = load_preset(f"paper-{task}")
        rows: list[tuple[str, dict[str, Any]]] = [("unguided", {"run": {"steps": paper["run"]["steps"]},
                                                               "guidance": {"enabled": False}})]
        rows.append((f"paper-{task}", toy_layer(paper, None, {})))
        # the same recipe with sah's loop conventions instead of the authors' (nudge x_t before the
        # step, window counted as start <= i/N)
        rows.append((f"paper-{task}, sah's loop", toy_layer(paper, None, CONVENTIONS["sah"])))
        try:
            rows.append((f"fast-{task}", toy_layer(load_preset(f"fast-{task}"), None, {})))
        except sah.SahError:
            pass
        if not args.no_candidates:
            rows += [(f"paper-{task} + {label}", toy_layer(paper, steps, over))
                     for label, steps, over in CANDIDATES[task]]
        base = {"run": {"task": task, "num_samples": args.samples, "seed": args.seed, "device": "cpu"}}
        models = sah.load(sah.plan(base, condition=condition))  # loaded once; every row shares the weights
        unguided = None
        for label, layer in rows:
            plan = sah.plan(base, layer, condition=condition)
            start = time.perf_counter()
            result = sah.generate(plan, Models(models.generators, models.binder if plan.binder else None))
            seconds = time.perf_counter() - start
            unguided = unguided or seconds
            hit, valid = score(task, classes, result)
            print(f"| {task} | {label} | {layer['run']['steps']} | {hit:.3f} | {valid:.3f} | {seconds:.1f} | "
                  f"{seconds / unguided:.2f}× |", flush=True)


if __name__ == "__main__":
    main()

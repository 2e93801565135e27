"""What does each preset cost? Seconds per sample and peak memory, guided vs unguided, in one table.

Builds the presets' models with random weights and FULL-SIZE architectures (no download; compute and
memory equal the real models'): AudioLDM-m (UNet 192·[1, 2, 3, 5] channels, 8-channel latents, the
mel VAE, HiFi-GAN with hop 160, CLAP-RoBERTa text encoder), Stable Diffusion 1.5 + the v1-5-2 motion
adapter (AnimateDiff), and ImageBind huge. They are saved to a temporary folder (float16 on disk, to
halve the write) and loaded through the plugins' own loading path. Each preset then runs one sample
at its real length — V2A/I2A: 10 s of audio; A2V/joint: 16 frames of 512×512 with 2 s of audio —
unguided (guidance.enabled = false) and guided, after one short warm-up run. Only the presets whose
models it builds are run (AudioLDM, AnimateDiff, ImageBind); the others (Stable Audio, Wan, CLIP+CLAP)
are named as skipped.

After the table, each guided run's seconds per stage (`RunResult.cost`, sah/cost.py: denoiser,
scheduler, x0, decode, binder forward, backward, update, ...) with its share of the run, and the
run's peak memory as sah.cost measures it.

Peak memory is `torch.cuda.max_memory_allocated` over the run (weights included) on CUDA; on the CPU
it is the rise of the process's peak RSS over its RSS at the start of the run (see
benchmarks/audioldm_guidance.py), i.e. without the weights.

    python benchmarks/gpu_presets.py                           # full size, on CUDA, float32
    python benchmarks/gpu_presets.py --dtype float16 --presets paper-v2a fast-v2a
    python benchmarks/gpu_presets.py --tiny                    # tiny models (the tests'), CPU smoke test
    python benchmarks/gpu_presets.py --tiny --presets fast-v2a  # one preset

`--tiny` uses the tiny random AudioLDM and AnimateDiff of tests/ and the tiny ImageBind of
../shared/reference/imagebind (or a random tiny one), 4 steps, 0.5 s of audio, 4 frames of 32×32.
The UNet attention head counts of the full-size AudioLDM are a guess (FLOPs do not depend on them).
"""

from __future__ import annotations

import argparse
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

import torch

import sah
from sah.api import Models
from sah.media import Audio, Image, Media, Video
from sah.presets import list_presets, load_preset

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT / "tests"))
sys.path.insert(0, str(ROOT / "benchmarks"))
from _memory import PeakMemory  # noqa: E402
from reference import reference_dir  # noqa: E402  (tests/reference.py: $SAH_REFERENCE_DIR or ../shared/reference)

REFERENCE = reference_dir() / "imagebind"
FULL = {"audio_seconds": {"v2a": 10.0, "i2a": 10.0, "joint": 2.0}, "frames": 16, "size": 512, "steps": None}
TINY = {"audio_seconds": {"v2a": 0.5, "i2a": 0.5, "joint": 0.5}, "frames": 4, "size": 32, "steps": 4}


# -- full-size random models -----------------------------------------------------------------------

def save_full_audioldm(folder: Path) -> Path:
    """AudioLDM-m's architecture (the original `audioldm-m-full` config, as diffusers converts it)."""
    from diffusers import AudioLDMPipeline, AutoencoderKL, DDIMScheduler, UNet2DConditionModel
    from test_audioldm import tiny_tokenizer  # prompt encoding cost is negligible; only ids < vocab matter
    from transformers import ClapTextConfig, ClapTextModelWithProjection, SpeechT5HifiGan, SpeechT5HifiGanConfig

    channels = tuple(192 * m for m in (1, 2, 3, 5))
    unet = UNet2DConditionModel(
        sample_size=128, in_channels=8, out_channels=8, block_out_channels=channels, layers_per_block=2,
        down_block_types=("DownBlock2D",) + ("CrossAttnDownBlock2D",) * 3,
        up_block_types=("CrossAttnUpBlock2D",) * 3 + ("UpBlock2D",), cross_attention_dim=channels,
        class_embed_type="simple_projection", projection_class_embeddings_input_dim=512, class_embeddings_concat=True)
    vae = AutoencoderKL(in_channels=1, out_channels=1, latent_channels=8, block_out_channels=(128, 256, 512),
                        layers_per_block=2, down_block_types=("DownEncoderBlock2D",) * 3,
                        up_block_types=("UpDecoderBlock2D",) * 3, sample_size=256)
    text_encoder = ClapTextModelWithProjection(ClapTextConfig(projection_dim=512))  # RoBERTa-base + projection
    vocoder = SpeechT5HifiGan(SpeechT5HifiGanConfig(
        model_in_dim=64, sampling_rate=16000, upsample_initial_channel=1024, upsample_rates=[5, 4, 2, 2, 2],
        upsample_kernel_sizes=[16, 16, 8, 4, 4], resblock_kernel_sizes=[3, 7, 11],
        resblock_dilation_sizes=[[1, 3, 5]] * 3, normalize_before=False,
        # audible output from random weights (RMS ~0.03): the default 0.01 gives RMS ~1e-6, whose log-mel lies
        # below the binders' floor everywhere, so the binder's gradient would be zero
        initializer_range=0.03))
    scheduler = DDIMScheduler(beta_start=0.0015, beta_end=0.0195, beta_schedule="scaled_linear", clip_sample=False,
                              set_alpha_to_one=False)
    pipe = AudioLDMPipeline(vae=vae.half(), text_encoder=text_encoder.half(), tokenizer=tiny_tokenizer(),
                            unet=unet.half(), scheduler=scheduler, vocoder=vocoder.half())
    pipe.save_pretrained(folder)
    return folder


def save_full_animatediff(root: Path) -> tuple[Path, Path]:
    """Stable Diffusion 1.5's UNet, VAE and CLIP ViT-L text encoder, and the v1-5-2 motion adapter."""
    from diffusers import AutoencoderKL, DDIMScheduler, MotionAdapter, UNet2DConditionModel
    from test_video_generators import tiny_tokenizer
    from transformers import CLIPTextConfig, CLIPTextModel

    base, adapter = root / "sd15", root / "motion-adapter"
    UNet2DConditionModel(sample_size=64, cross_attention_dim=768).half().save_pretrained(base / "unet")
    AutoencoderKL(block_out_channels=(128, 256, 512, 512), down_block_types=("DownEncoderBlock2D",) * 4,
                  up_block_types=("UpDecoderBlock2D",) * 4, layers_per_block=2, latent_channels=4,
                  sample_size=512).half().save_pretrained(base / "vae")
    CLIPTextModel(CLIPTextConfig(vocab_size=49408, hidden_size=768, intermediate_size=3072, num_attention_heads=12,
                                 num_hidden_layers=12, max_position_embeddings=77, bos_token_id=0, eos_token_id=1,
                                 pad_token_id=1)).half().save_pretrained(base / "text_encoder")
    tiny_tokenizer(77).save_pretrained(base / "tokenizer")
    DDIMScheduler(beta_start=0.00085, beta_end=0.012, beta_schedule="scaled_linear", clip_sample=False,
                  set_alpha_to_one=False, steps_offset=1).save_pretrained(base / "scheduler")
    MotionAdapter(motion_max_seq_length=32, use_motion_mid_block=True).half().save_pretrained(adapter)
    return base, adapter


def save_full_imagebind(path: Path) -> Path:
    from sah.plugins.binders.imagebind import ImageBindConfig, ImageBindModel, save_checkpoint

    return save_checkpoint(ImageBindModel(ImageBindConfig()).half(), path)


def save_tiny_imagebind(path: Path) -> Path:
    """The tiny ImageBind of ../shared/reference/imagebind (the official code's tiny model), or a
    random one of tests/test_imagebind.py's TINY config where that folder is missing."""
    import shutil

    from sah.plugins.binders.imagebind import save_checkpoint

    path.parent.mkdir(parents=True, exist_ok=True)
    if (REFERENCE / "tiny_state_dict.safetensors").is_file():
        shutil.copy(REFERENCE / "tiny_state_dict.safetensors", path)
        shutil.copy(REFERENCE / "tiny_config.json", path.with_suffix(".json"))
        return path
    from test_imagebind import TINY as TINY_IMAGEBIND

    from sah.plugins.binders.imagebind import ImageBindModel

    return save_checkpoint(ImageBindModel(TINY_IMAGEBIND), path)


def needs(presets: list[str]) -> set[str]:
    """The models the presets use: "audioldm", "animatediff", "imagebind"."""
    wanted = set()
    for preset in presets:
        config = load_preset(preset)
        wanted |= {config[m]["generator"] for m in ("audio", "video") if config[m]["generator"]}
        wanted.add(config["binder"]["name"])
    return wanted


def supported(preset: str) -> bool:
    """Whether this benchmark builds every model the preset uses."""
    return needs([preset]) <= BUILT


#: what `build_models` can build
BUILT = {"audioldm", "animatediff", "imagebind"}


def build_models(folder: Path, tiny: bool, device: torch.device, presets: list[str] | None = None) -> dict[str, Path]:
    """Save the models `presets` need (default: all three) into `folder`; their paths by name."""
    torch.manual_seed(0)
    wanted = needs(presets) if presets is not None else BUILT
    paths: dict[str, Path] = {}
    if tiny:
        if "animatediff" in wanted:
            from test_video_generators import make_animatediff

            paths["sd"], paths["adapter"] = make_animatediff(folder)
        if "imagebind" in wanted:
            paths["imagebind"] = save_tiny_imagebind(folder / "imagebind" / "tiny.safetensors")
        if "audioldm" in wanted:
            from test_audioldm import save_tiny_audioldm

            paths["audioldm"] = save_tiny_audioldm(folder / "audioldm")
        return paths
    # Random init on the accelerator is fast; on the CPU it takes minutes for these sizes.
    with torch.device(device if device.type == "cuda" else "cpu"):
        if "audioldm" in wanted:
            paths["audioldm"] = save_full_audioldm(folder / "audioldm-m")
        if "animatediff" in wanted:
            paths["sd"], paths["adapter"] = save_full_animatediff(folder)
        if "imagebind" in wanted:
            paths["imagebind"] = save_full_imagebind(folder / "imagebind-huge.safetensors")
    if device.type == "cuda":
        torch.cuda.empty_cache()
    return paths


# -- runs ------------------------------------------------------------------------------------------

def condition(task: str, sizes: dict[str, Any]) -> Media | None:
    """A made-up condition at the preset's real length: a moving bright square, or a 440 Hz tone."""
    g = torch.Generator().manual_seed(0)
    if task in ("v2a", "i2a"):
        seconds = sizes["audio_seconds"][task]
        n, side = int(8 * seconds), 224 if sizes is FULL else 32
        frames = torch.rand(n, 3, side, side, generator=g) * 0.1
        for i in range(n):
            x = int((side - side // 4) * i / max(n - 1, 1))
            frames[i, :, side // 3: side // 3 + side // 4, x: x + side // 4] = 1.0
        return Video(frames, fps=8.0) if task == "v2a" else Image(frames[0])
    if task == "a2v":
        seconds = sizes["frames"] / 8.0
        t = torch.arange(int(16000 * seconds)) / 16000
        return Audio((0.4 * torch.sin(2 * torch.pi * 440 * t))[None], 16000)
    return None


def layers(preset: str, models: dict[str, Path], sizes: dict[str, Any], device: str, dtype: str) -> list[dict]:
    config = load_preset(preset)
    task = config["run"]["task"]
    run = {"device": device, "dtype": dtype, "prompt": "a dog barking", "seed": 0}
    if sizes["steps"]:
        run["steps"] = sizes["steps"]
    over: dict[str, Any] = {"run": run, "binder": {"model": str(models["imagebind"])},
                            "output": {"plot": False}}
    if task != "a2v":
        over["audio"] = {"model": str(models["audioldm"]), "duration": sizes["audio_seconds"][task]}
    if task in ("a2v", "joint"):
        over["video"] = {"model": str(models["sd"]), "motion_adapter": str(models["adapter"]),
                         "frames": sizes["frames"], "height": sizes["size"], "width": sizes["size"]}
    return [config, over]


def timed(plan: sah.RunPlan, models: Models, device: torch.device) -> tuple[float, float, sah.RunResult]:
    with PeakMemory(device) as memory:
        if device.type == "cuda":
            torch.cuda.reset_peak_memory_stats()
            memory.start = 0  # report the whole allocation, weights included
        start = time.perf_counter()
        result = sah.generate(plan, models)
        if device.type == "cuda":
            torch.cuda.synchronize()
        seconds = time.perf_counter() - start
    return seconds, memory.mib, result


#: the stages of a run in the order a guided step runs them (sah.cost.STAGES), then the run's own
STAGE_ORDER = ("denoiser", "scheduler", "x0", "decode", "binder forward", "backward", "update",
               "prepare", "condition and prompt", "load")


def stage_table(rows: list[tuple[str, Any]]) -> list[str]:
    """Markdown lines: per run (name, sah.cost.Cost), each stage's seconds and share of the run, the
    seconds no stage counted, and sah.cost's peak memory."""
    seen = {k for _, c in rows for k in c.seconds}
    stages = [k for k in STAGE_ORDER if k in seen] + sorted(seen - set(STAGE_ORDER))
    head = ["run", "total s", *stages, "unstaged", "peak MiB (sah.cost)"]
    lines = ["| " + " | ".join(head) + " |", "|" + "---|" * len(head)]
    for name, c in rows:
        cells = [f"{c.seconds.get(k, 0.0):.3f} ({100 * c.seconds.get(k, 0.0) / c.total:.1f} %)" for k in stages]
        rest = c.total - sum(c.seconds.values())
        cells.append(f"{rest:.3f} ({100 * rest / c.total:.1f} %)")
        memory = "n/a" if c.peak_bytes is None else f"{c.peak_bytes / 2**20:.0f}"
        lines.append(f"| {name} | {c.total:.3f} | " + " | ".join(cells) + f" | {memory} |")
    return lines


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    runnable = [p for p in list_presets() if supported(p)]
    parser.add_argument("--presets", nargs="+", default=runnable, choices=runnable,
                        help="presets to run (default: every preset whose models this benchmark builds)")
    parser.add_argument("--tiny", action="store_true", help="tiny models and lengths (a CPU smoke test)")
    parser.add_argument("--device", default="auto")
    parser.add_argument("--dtype", default="float32", choices=["float32", "float16", "bfloat16"])
    parser.add_argument("--no-warmup", action="store_true", help="skip the 2-step warm-up run per preset")
    args = parser.parse_args()
    device = sah.api.resolve_device(args.device)
    if device.type == "cpu":
        torch.set_num_threads(1)
    sizes = TINY if args.tiny else FULL
    if device.type != "cuda" and not args.tiny:
        print("warning: full-size models on the CPU take very long and need ~30 GB of RAM; use --tiny", flush=True)

    skipped = [p for p in list_presets() if not supported(p)]
    if skipped:
        print(f"skipped (models not built by this benchmark): {', '.join(skipped)}", flush=True)

    rows, costs = [], []
    wall = time.perf_counter()
    with tempfile.TemporaryDirectory() as tmp:
        start = time.perf_counter()
        models = build_models(Path(tmp), args.tiny, device, args.presets)
        print(f"built {'tiny' if args.tiny else 'full-size'} random models in {time.perf_counter() - start:.0f} s",
              flush=True)
        for preset in args.presets:
            preset_layers = layers(preset, models, sizes, str(device), args.dtype)
            task = preset_layers[0]["run"]["task"]
            media = condition(task, sizes)
            guided = sah.plan(*preset_layers, condition=media)
            unguided = sah.plan(*preset_layers, {"guidance": {"enabled": False}}, condition=media)
            start = time.perf_counter()
            loaded = sah.load(guided)
            load_s = time.perf_counter() - start
            if not args.no_warmup:
                sah.generate(sah.plan(*preset_layers, {"run": {"steps": 2}, "guidance": {"start": 0.0}},
                                      condition=media), loaded)
            u_s, u_mib, _ = timed(unguided, Models(loaded.generators, None), device)
            g_s, g_mib, result = timed(guided, loaded, device)
            costs.append((preset, result.cost))
            steps = guided.config["run"]["steps"]
            rows.append((preset, task, steps, load_s, u_s, g_s, u_mib, g_mib))
            print(f"  {preset}: unguided {u_s:.1f} s, guided {g_s:.1f} s", flush=True)
            del loaded
            if device.type == "cuda":
                torch.cuda.empty_cache()

    name = torch.cuda.get_device_name(device) if device.type == "cuda" else "CPU (1 thread)"
    memory = "CUDA max_memory_allocated, weights included" if device.type == "cuda" else \
        "peak RSS rise over the run, weights excluded"
    print(f"\npresets, {'tiny' if args.tiny else 'full-size'} random-weight models, {name}, {args.dtype}, "
          f"1 sample each; memory: {memory}; total {time.perf_counter() - wall:.0f} s\n")
    print("| preset | task | steps | load s | unguided s/sample | guided s/sample | guided / unguided | "
          "unguided peak MiB | guided peak MiB |")
    print("|---|---|---|---|---|---|---|---|---|")
    for preset, task, steps, load_s, u_s, g_s, u_mib, g_mib in rows:
        print(f"| {preset} | {task} | {steps} | {load_s:.1f} | {u_s:.2f} | {g_s:.2f} | {g_s / u_s:.2f}× | "
              f"{u_mib:.0f} | {g_mib:.0f} |")
    cuda_memory = "CUDA max_memory_allocated above the run's start" if device.type == "cuda" else \
        "peak RSS rise over the run"
    print(f"\nguided runs, seconds per stage (RunResult.cost; share of the run's total); peak memory: {cuda_memory}\n")
    for line in stage_table(costs):
        print(line)


if __name__ == "__main__":
    main()

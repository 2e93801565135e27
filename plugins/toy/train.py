"""Reproduce the shipped toy-world weights: `python -m sah.plugins.toy.train [--out DIR] [--seed N]`.

Fits both PCA codecs on synthetic data, trains the two ε-prediction denoisers under the DDIM
scheduler's forward process, then trains the binder contrastively on clean and noise-augmented
media. A few minutes on two CPU cores.
"""

from __future__ import annotations

import argparse
import copy
import math
import random
import time
from collections.abc import Callable
from pathlib import Path

import torch
import torch.nn.functional as F
from torch import Tensor

from sah.plugins.toy import world
from sah.plugins.toy.nets import (
    SHIPPED_DIR,
    Denoiser,
    ToyConfig,
    ToyWorld,
    build_world,
    fit_pca,
    make_scheduler,
    save_world,
)

LABEL_DROPOUT = 0.2
QUALITY_WEIGHT = 5.0
QUALITY_SLOPE = 0.2
ALIGN_WEIGHT = 3.0
NOISY_PAIR_WEIGHT = 1.0


def _log(msg: str) -> None:
    print(f"[toy-train {time.strftime('%H:%M:%S')}] {msg}", flush=True)


def _chunked(fn: Callable[[Tensor], Tensor], classes: Tensor, chunk: int = 1024) -> Tensor:
    return torch.cat([fn(classes[i : i + chunk]) for i in range(0, len(classes), chunk)])


def fit_codecs(tw: ToyWorld, gen: torch.Generator, n: int = 2048) -> None:
    classes = torch.arange(n) % world.NUM_CLASSES
    ac, vc, cfg = tw.audio_codec, tw.video_codec, tw.config
    feats = _chunked(lambda k: ac.features(world.make_audio(k, gen)), classes)
    mean, basis, scale = _pca(feats, cfg.latent_dim, cfg.variance_floor)
    ac.mean.copy_(mean), ac.basis.copy_(basis), ac.scale.copy_(scale)
    gray = _chunked(lambda k: world.make_video(k, gen).mean(2).flatten(1), classes)
    mean, basis, scale = _pca(gray, cfg.latent_dim, cfg.variance_floor)
    vc.mean.copy_(mean.view_as(vc.mean))
    vc.basis.copy_(basis.T.reshape(cfg.latent_dim, world.NUM_FRAMES, -1).transpose(0, 1))
    vc.scale.copy_(scale)


def _pca(data: Tensor, dim: int, floor: float) -> tuple[Tensor, Tensor, Tensor]:
    """PCA through the n×n Gram matrix (n samples ≪ features), then the fit in `fit_pca` on the
    projected data; components found in float rounding (rank-deficient audio) are re-orthonormalised."""
    mean = data.mean(0)
    centred = (data - mean).double()
    evals, evecs = torch.linalg.eigh(centred @ centred.T)
    top = evecs.flip(1)[:, :dim]
    basis, _ = torch.linalg.qr(centred.T @ top)
    _, rot, scale = fit_pca(centred @ basis, dim, floor)
    return mean, (basis @ rot.double()).float(), scale


def train_denoiser(net: Denoiser, cfg: ToyConfig, latents: Tensor, labels: Tensor, steps: int,
                   gen: torch.Generator, batch: int = 512, lr: float = 2e-3) -> Denoiser:
    """ε-prediction under the scheduler's forward process; returns the EMA of the weights."""
    sched = make_scheduler(cfg)
    alphas = sched.alphas_cumprod.float()
    ema = copy.deepcopy(net).requires_grad_(False)
    opt = torch.optim.AdamW(net.parameters(), lr=lr, weight_decay=0.0)
    lr_at = torch.optim.lr_scheduler.LambdaLR(opt, lambda i: 0.5 * (1 + math.cos(math.pi * i / steps)))
    for i in range(steps):
        idx = torch.randint(0, len(latents), (batch,), generator=gen)
        z0, k = latents[idx], labels[idx].clone()
        k[torch.rand(batch, generator=gen) < LABEL_DROPOUT] = net.null_class
        t = torch.randint(0, len(alphas), (batch,), generator=gen)
        eps = torch.randn(z0.shape, generator=gen)
        a = alphas[t].unsqueeze(1)
        zt = a.sqrt() * z0 + (1 - a).sqrt() * eps
        loss = F.mse_loss(net(zt, t, net.embed_classes(k)), eps)
        opt.zero_grad(set_to_none=True)
        loss.backward()
        opt.step()
        lr_at.step()
        with torch.no_grad():
            decay = min(0.999, (1 + i) / (10 + i))
            for pe, p in zip(ema.parameters(), net.parameters()):
                pe.lerp_(p, 1 - decay)
        if i % 1000 == 0 or i == steps - 1:
            _log(f"  denoiser step {i}: loss {loss.item():.4f}")
    return ema


def _augment(z0: Tensor, gen: torch.Generator) -> tuple[Tensor, Tensor]:
    """Latents like early x̂0 estimates, shrunk toward the mean and mixed with noise of a random
    level, and their noise-to-signal ratio."""
    n = z0.shape[0]
    # stronger noise hides the class entirely and only teaches the binder to hedge
    shrink = 0.4 + 0.6 * torch.rand(n, 1, generator=gen)
    sigma = torch.rand(n, 1, generator=gen)
    return shrink * z0 + sigma * torch.randn(z0.shape, generator=gen), (sigma / shrink).squeeze(1)


def _prompt_tokens(labels: Tensor, unk: int, rng: random.Random) -> list[list[int]]:
    out = []
    for k in labels.tolist():
        ids = [k] + [unk] * rng.randint(0, 3)
        rng.shuffle(ids)
        out.append(ids)
    return out


def _supcon(a: Tensor, b: Tensor, la: Tensor, lb: Tensor, scale: Tensor) -> Tensor:
    """Symmetric InfoNCE where every same-class pair in the batch is a positive."""
    logits = scale * a @ b.T
    pos = (la.unsqueeze(1) == lb.unsqueeze(0)).float()
    loss_ab = -(pos * logits.log_softmax(1)).sum(1) / pos.sum(1)
    loss_ba = -(pos.T * logits.T.log_softmax(1)).sum(1) / pos.T.sum(1)
    return 0.5 * (loss_ab.mean() + loss_ba.mean())


def train_binder(tw: ToyWorld, steps: int, gen: torch.Generator, batch: int = 256, lr: float = 2e-3) -> None:
    net, ac, vc = tw.binder, tw.audio_codec, tw.video_codec
    rng = random.Random(int(torch.randint(0, 2**31, (1,), generator=gen)))
    opt = torch.optim.AdamW(net.parameters(), lr=lr, weight_decay=1e-4)
    lr_at = torch.optim.lr_scheduler.LambdaLR(opt, lambda i: 0.5 * (1 + math.cos(math.pi * i / steps)))
    unk = len(net.vocab) - 1
    for i in range(steps):
        k = torch.randint(0, world.NUM_CLASSES, (batch,), generator=gen)
        with torch.no_grad():
            audio = world.make_audio(k, gen)
            video = world.make_video(k, gen)
            za, noise_a = _augment(ac.encode(audio), gen)
            zv, noise_v = _augment(vc.encode(video), gen)
            noisy_audio, noisy_video = ac.decode(za), vc.decode(zv)
        ea, ena = net.embed_audio(audio), net.embed_audio(noisy_audio)
        ev, env = net.embed_video(video[:, :, 0]), net.embed_video(noisy_video[:, :, 0])
        et = net.embed_tokens(_prompt_tokens(k, unk, rng))
        s = net.log_scale.exp().clamp(max=100.0)
        loss = (_supcon(ea, ev, k, k, s) + _supcon(ea, et, k, k, s) + _supcon(ev, et, k, k, s)
                + _supcon(ena, ev, k, k, s) + _supcon(env, ea, k, k, s) + NOISY_PAIR_WEIGHT * _supcon(ena, env, k, k, s)
                + 0.5 * (_supcon(ena, et, k, k, s) + _supcon(env, et, k, k, s)))
        # Contrastive loss alone lets a hazy mixture sit right on its class: then guidance, which
        # keeps stepping at a fixed size, drifts into haze at no cost. Asking a corrupted clip to be
        # less similar to its clean partner than the clean clip is, by a margin growing with the
        # corruption, makes "cleaner" the way up the gradient.
        clean = (ea * ev).sum(-1).detach()
        loss = loss + QUALITY_WEIGHT * (
            F.relu((ena * ev.detach()).sum(-1) - clean + QUALITY_SLOPE * noise_a).mean()
            + F.relu((env * ea.detach()).sum(-1) - clean + QUALITY_SLOPE * noise_v).mean()
            + F.relu((ena * env).sum(-1) - clean + QUALITY_SLOPE * (noise_a + noise_v)).mean())
        # and pull clean positives together, which the batch-softmax alone does only loosely
        loss = loss + ALIGN_WEIGHT * (3 - (ea * ev).sum(-1) - (ea * et).sum(-1) - (ev * et).sum(-1)).mean()
        opt.zero_grad(set_to_none=True)
        loss.backward()
        opt.step()
        lr_at.step()
        if i % 200 == 0 or i == steps - 1:
            pos = (ea * ev).sum(-1).mean().item()
            _log(f"  binder step {i}: loss {loss.item():.3f}, clean a·v {pos:.3f}, scale {s.item():.1f}")


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--out", type=Path, default=SHIPPED_DIR, help="folder for weights.safetensors + config.json")
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--denoiser-steps", type=int, default=6000)
    parser.add_argument("--binder-steps", type=int, default=1200)
    args = parser.parse_args(argv)

    torch.manual_seed(args.seed)
    gen = torch.Generator().manual_seed(args.seed)
    tw = build_world()
    tw.binder.requires_grad_(True)
    _log("fitting codecs")
    with torch.no_grad():
        fit_codecs(tw, gen)
        labels = torch.arange(16384) % world.NUM_CLASSES
        audio_z = _chunked(lambda k: tw.audio_codec.encode(world.make_audio(k, gen)), labels)
        video_z = _chunked(lambda k: tw.video_codec.encode(world.make_video(k, gen)), labels)
    for name, z in (("audio", audio_z), ("video", video_z)):
        net = getattr(tw, f"{name}_denoiser")
        _log(f"training {name} denoiser")
        setattr(tw, f"{name}_denoiser", train_denoiser(net, tw.config, z, labels, args.denoiser_steps, gen))
    _log("training binder")
    train_binder(tw, args.binder_steps, gen)
    save_world(tw, args.out)
    _log(f"saved to {args.out}")


if __name__ == "__main__":
    main()

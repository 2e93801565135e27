"""ImageBind's vision, audio and text towers in plain torch, with the official state-dict names.

Module names mirror the released checkpoint's keys (`modality_preprocessors.<m>.…`,
`modality_trunks.<m>.…`, `modality_heads.<m>.…`, `modality_postprocessors.<m>.…`), so Meta's
`imagebind_huge.pth` loads strictly without renaming. Only the towers asked for are built.

The torch-free parts (tower names, `ImageBindConfig`, state-dict prefixes) live in `.spec`; this
module re-exports them.
"""

from __future__ import annotations

from collections.abc import Iterable, Mapping

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from .spec import CLIP_MEAN, CLIP_STD, TOWERS, ImageBindConfig, tower_prefixes  # noqa: F401 (re-exported)

TEXT_LOGIT_SCALE_INIT = 1 / 0.07
AUDIO_LOGIT_SCALE = 20.0
MAX_LOGIT_SCALE = 100.0


class Attention(nn.Module):
    """`nn.MultiheadAttention`'s parameters and numbers, batch-first, through SDPA.

    With `bias_kv`, learned key/value vectors join the *projected* keys and values as one extra
    position, as `add_bias_kv=True` does."""

    def __init__(self, dim: int, num_heads: int, bias_kv: bool = False) -> None:
        super().__init__()
        self.num_heads = num_heads
        self.in_proj_weight = nn.Parameter(torch.empty(3 * dim, dim))
        self.in_proj_bias = nn.Parameter(torch.zeros(3 * dim))
        if bias_kv:
            self.bias_k = nn.Parameter(torch.empty(1, 1, dim))
            self.bias_v = nn.Parameter(torch.empty(1, 1, dim))
        else:
            self.bias_k = self.bias_v = None
        self.out_proj = nn.Linear(dim, dim)
        nn.init.xavier_uniform_(self.in_proj_weight)
        if bias_kv:
            nn.init.xavier_normal_(self.bias_k)
            nn.init.xavier_normal_(self.bias_v)

    def forward(self, x: Tensor, mask: Tensor | None = None) -> Tensor:
        b, n, d = x.shape
        q, k, v = F.linear(x, self.in_proj_weight, self.in_proj_bias).chunk(3, dim=-1)
        if self.bias_k is not None:
            k = torch.cat([k, self.bias_k.expand(b, 1, d)], dim=1)
            v = torch.cat([v, self.bias_v.expand(b, 1, d)], dim=1)
            if mask is not None:
                mask = F.pad(mask, (0, 1))
        h = self.num_heads

        def heads(t: Tensor) -> Tensor:
            return t.reshape(b, t.shape[1], h, d // h).transpose(1, 2)

        out = F.scaled_dot_product_attention(heads(q), heads(k), heads(v), attn_mask=mask)
        return self.out_proj(out.transpose(1, 2).reshape(b, n, d))


class Mlp(nn.Module):
    def __init__(self, dim: int, hidden: int) -> None:
        super().__init__()
        self.fc1 = nn.Linear(dim, hidden)
        self.fc2 = nn.Linear(hidden, dim)

    def forward(self, x: Tensor) -> Tensor:
        return self.fc2(F.gelu(self.fc1(x)))


class Block(nn.Module):
    """Pre-norm transformer block (LayerNorm eps 1e-6, MLP ratio 4, no layer scale)."""

    def __init__(self, dim: int, num_heads: int, bias_kv: bool = False) -> None:
        super().__init__()
        self.attn = Attention(dim, num_heads, bias_kv)
        self.norm_1 = nn.LayerNorm(dim, eps=1e-6)
        self.mlp = Mlp(dim, 4 * dim)
        self.norm_2 = nn.LayerNorm(dim, eps=1e-6)

    def forward(self, x: Tensor, mask: Tensor | None = None) -> Tensor:
        x = x + self.attn(self.norm_1(x), mask)
        return x + self.mlp(self.norm_2(x))


class Trunk(nn.Module):
    def __init__(self, dim: int, num_blocks: int, num_heads: int, pre_norm: bool = False,
                 bias_kv: bool = False) -> None:
        super().__init__()
        # index 0 mirrors the checkpoint's `pre_transformer_layer.0` (the rest of it has no weights)
        self.pre_transformer_layer = nn.Sequential(nn.LayerNorm(dim, eps=1e-6)) if pre_norm else None
        self.blocks = nn.ModuleList(Block(dim, num_heads, bias_kv) for _ in range(num_blocks))

    def forward(self, x: Tensor, mask: Tensor | None = None) -> Tensor:
        if self.pre_transformer_layer is not None:
            x = self.pre_transformer_layer(x)
        for block in self.blocks:
            x = block(x, mask)
        return x


class RepeatFrames(nn.Module):
    """Images `[N, 3, H, W]` become clips `[N, 3, T, H, W]` of one repeated frame; clips pass."""

    def __init__(self, frames: int) -> None:
        super().__init__()
        self.frames = frames

    def forward(self, x: Tensor) -> Tensor:
        if x.ndim == 4:
            x = x.unsqueeze(2)
        if x.shape[2] == 1:
            x = x.expand(-1, -1, self.frames, -1, -1)
        return x


class _Stem(nn.Module):
    def __init__(self, proj: nn.Module, norm_layer: nn.Module | None = None) -> None:
        super().__init__()
        self.proj = proj
        self.norm_layer = norm_layer

    def forward(self, x: Tensor) -> Tensor:
        tokens = self.proj(x).flatten(2).transpose(1, 2)
        return self.norm_layer(tokens) if self.norm_layer is not None else tokens


class _PosEmbed(nn.Module):
    def __init__(self, num_tokens: int, dim: int) -> None:
        super().__init__()
        self.pos_embed = nn.Parameter(torch.empty(1, num_tokens, dim))
        nn.init.trunc_normal_(self.pos_embed, std=0.02)


class PatchPreprocessor(nn.Module):
    """Patchify, prepend the CLS token, add learned positions (vision and audio)."""

    def __init__(self, stem: _Stem, num_patches: int, dim: int) -> None:
        super().__init__()
        self.cls_token = nn.Parameter(torch.zeros(1, 1, dim))
        self.rgbt_stem = stem
        self.pos_embedding_helper = _PosEmbed(num_patches + 1, dim)
        nn.init.trunc_normal_(self.cls_token, std=0.02)

    def forward(self, x: Tensor) -> Tensor:
        tokens = self.rgbt_stem(x)
        cls = self.cls_token.expand(tokens.shape[0], -1, -1)
        return torch.cat([cls, tokens], dim=1) + self.pos_embedding_helper.pos_embed


class TextPreprocessor(nn.Module):
    def __init__(self, vocab_size: int, context_length: int, dim: int) -> None:
        super().__init__()
        self.token_embedding = nn.Embedding(vocab_size, dim)
        self.pos_embed = nn.Parameter(torch.empty(1, context_length, dim))
        # the checkpoint stores the causal mask as a buffer; it is rebuilt identically here
        self.register_buffer("mask", torch.full((context_length, context_length), float("-inf")).triu(1))
        nn.init.normal_(self.token_embedding.weight, std=0.02)
        nn.init.normal_(self.pos_embed, std=0.01)

    def forward(self, ids: Tensor) -> Tensor:
        return self.token_embedding(ids) + self.pos_embed[:, : ids.shape[1]]


class SelectToken(nn.Module):
    def forward(self, x: Tensor) -> Tensor:
        return x[:, 0]


class TextHead(nn.Module):
    """LayerNorm and projection of the EOT token (the first position of the largest id)."""

    def __init__(self, dim: int, out_dim: int) -> None:
        super().__init__()
        self.proj = nn.Sequential(nn.LayerNorm(dim, eps=1e-6), nn.Linear(dim, out_dim, bias=False))

    def forward(self, x: Tensor, ids: Tensor) -> Tensor:
        return self.proj(x[torch.arange(x.shape[0], device=x.device), ids.argmax(dim=-1)])


class Normalize(nn.Module):
    def forward(self, x: Tensor) -> Tensor:
        return F.normalize(x, dim=-1)


class LogitScale(nn.Module):
    """Multiply by `min(exp(log_logit_scale), 100)`; a parameter for text, a buffer for audio."""

    def __init__(self, init: float, learnable: bool) -> None:
        super().__init__()
        value = torch.tensor(float(init)).log()
        if learnable:
            self.log_logit_scale = nn.Parameter(value)
        else:
            self.register_buffer("log_logit_scale", value)

    def forward(self, x: Tensor) -> Tensor:
        return self.log_logit_scale.exp().clamp(max=MAX_LOGIT_SCALE) * x


def _head(dim: int, out_dim: int) -> nn.Sequential:
    return nn.Sequential(nn.LayerNorm(dim, eps=1e-6), SelectToken(), nn.Linear(dim, out_dim, bias=False))


class ImageBindModel(nn.Module):
    """The towers named in `towers` (any of vision, audio, text) of an ImageBind model."""

    def __init__(self, config: ImageBindConfig | None = None, towers: Iterable[str] = TOWERS) -> None:
        super().__init__()
        self.config = c = config or ImageBindConfig()
        self.towers = tuple(t for t in TOWERS if t in set(towers))
        unknown = set(towers) - set(TOWERS)
        if unknown:
            raise ValueError(f"unknown towers {sorted(unknown)}; ImageBind here has {', '.join(TOWERS)}")
        self.modality_preprocessors = nn.ModuleDict()
        self.modality_trunks = nn.ModuleDict()
        self.modality_heads = nn.ModuleDict()
        self.modality_postprocessors = nn.ModuleDict()
        if "vision" in self.towers:
            d = c.vision_embed_dim
            conv = nn.Conv3d(3, d, kernel_size=c.kernel_size, stride=c.kernel_size, bias=False)
            t, h, w = c.vision_grid
            self.modality_preprocessors["vision"] = PatchPreprocessor(
                _Stem(nn.Sequential(RepeatFrames(c.video_frames), conv)), t * h * w, d)
            self.modality_trunks["vision"] = Trunk(d, c.vision_num_blocks, c.vision_num_heads, pre_norm=True)
            self.modality_heads["vision"] = _head(d, c.out_embed_dim)
            self.modality_postprocessors["vision"] = Normalize()
        if "audio" in self.towers:
            d = c.audio_embed_dim
            conv = nn.Conv2d(1, d, kernel_size=c.audio_kernel_size, stride=c.audio_stride, bias=False)
            mel, time = c.audio_grid
            # the stem's LayerNorm keeps PyTorch's default eps (1e-5), unlike every other one
            self.modality_preprocessors["audio"] = PatchPreprocessor(_Stem(conv, nn.LayerNorm(d)), mel * time, d)
            self.modality_trunks["audio"] = Trunk(d, c.audio_num_blocks, c.audio_num_heads, bias_kv=True)
            self.modality_heads["audio"] = _head(d, c.out_embed_dim)
            self.modality_postprocessors["audio"] = nn.Sequential(Normalize(), LogitScale(AUDIO_LOGIT_SCALE, False))
        if "text" in self.towers:
            d = c.text_embed_dim
            self.modality_preprocessors["text"] = TextPreprocessor(c.vocab_size, c.context_length, d)
            self.modality_trunks["text"] = Trunk(d, c.text_num_blocks, c.text_num_heads)
            self.modality_heads["text"] = TextHead(d, c.out_embed_dim)
            self.modality_postprocessors["text"] = nn.Sequential(Normalize(), LogitScale(TEXT_LOGIT_SCALE_INIT, True))

    def _tower(self, name: str) -> tuple[nn.Module, nn.Module, nn.Module, nn.Module]:
        if name not in self.towers:
            raise RuntimeError(f"the {name} tower was not built (towers: {', '.join(self.towers)})")
        return (self.modality_preprocessors[name], self.modality_trunks[name], self.modality_heads[name],
                self.modality_postprocessors[name])

    def embed_vision(self, pixels: Tensor) -> Tensor:
        """Normalised CLIP-space pixels `[N, 3, H, W]` or clips `[N, 3, T, H, W]` -> unit `[N, out]`."""
        pre, trunk, head, post = self._tower("vision")
        return post(head(trunk(pre(pixels))))

    def embed_audio(self, mel: Tensor) -> Tensor:
        """Normalised log-mel `[N, 1, mel, frames]` -> `[N, out]` of norm 20."""
        pre, trunk, head, post = self._tower("audio")
        return post(head(trunk(pre(mel))))

    def embed_text(self, ids: Tensor) -> Tensor:
        """Token ids `[N, 77]` -> `[N, out]` scaled by the learned logit scale."""
        pre, trunk, head, post = self._tower("text")
        return post(head(trunk(pre(ids), pre.mask.to(pre.pos_embed.dtype)), ids))

    def forward(self, inputs: Mapping[str, Tensor]) -> dict[str, Tensor]:
        """The reference calling convention: inputs with 5 or more dimensions are `[B, S, …]`
        clips, embedded one by one and averaged over S after normalisation and scaling."""
        embed = {"vision": self.embed_vision, "audio": self.embed_audio, "text": self.embed_text}
        out = {}
        for name, x in inputs.items():
            if x.ndim >= 5:
                b, s = x.shape[:2]
                out[name] = embed[name](x.flatten(0, 1)).reshape(b, s, -1).mean(dim=1)
            else:
                out[name] = embed[name](x)
        return out

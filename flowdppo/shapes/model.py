"""The Shapes base model: a small text-conditioned flow-matching transformer in pixel space.

Layout (docs/shapes.md, "The base model"):
- a word-level text encoder of its own (2 transformer layers), prompt dropout → a null prompt;
- a conv stem, then 8×8 patches → 16 image tokens, one per grid cell (objects are cell-local);
- DiT blocks with joint self-attention over [text tokens; image tokens] and adaLN-Zero
  modulation by the noise level σ and the pooled prompt;
- a conv head that sees the un-patched tokens, the stem features and the noisy input (a skip),
  modulated by the same conditioning vector. Output: the velocity ``v = eps - x0``.
Pixels are in [-1, 1] inside the model.
"""

from __future__ import annotations

import json
import math
from contextlib import nullcontext
from dataclasses import asdict, dataclass
from pathlib import Path

import torch
import torch.nn.functional as F
from torch import nn

from flowdppo.shapes.world import CELL, COLORS, GRID, IMAGE_SIZE, SHAPES

WORDS = [
    *["<pad>", "<null>", "a", "two", "three", "four", "and", "to", "the", "left", "right", "of"],
    *["above", "below", *COLORS, *SHAPES, *(s + "s" for s in SHAPES)],
]
PAD, NULL = 0, 1


@dataclass
class ShapesModelConfig:
    """Architecture of the Shapes model (saved beside its weights)."""

    width: int = 192
    depth: int = 4
    heads: int = 6
    text_width: int = 128
    text_depth: int = 2
    max_tokens: int = 12
    stem_channels: int = 16
    head_channels: int = 32
    # v = σ·x + head(...): the network adds only what is not the scaled input, so at σ = 1 (v =
    # ε − x0 = x − x0) it outputs −x0, the layout prior, instead of re-deriving the noise through
    # its nonlinear head (docs/experiments/base-model.md, "The velocity skip"). On in the shipped
    # base, shapes-base-v3 (off in shapes-base-v2).
    velocity_skip: bool = False

    def to_dict(self) -> dict[str, int]:
        return asdict(self)


def sincos_1d(positions: torch.Tensor, dim: int, max_period: float = 100.0) -> torch.Tensor:
    """Transformer sin-cos features of integer positions: [N] → [N, dim], each row of norm
    sqrt(dim / 2). ``max_period`` 100 (not the usual 10,000) suits positions ≤ 12: fewer of the
    features are nearly constant across them."""
    half = dim // 2
    freqs = torch.exp(-math.log(max_period) * torch.arange(half) / half)
    args = positions.float()[:, None] * freqs[None]
    return torch.cat([torch.sin(args), torch.cos(args)], dim=-1)


def sincos_2d(grid: int, dim: int) -> torch.Tensor:
    """DiT's 2-D sin-cos table for a ``grid × grid`` token map in row-major order: half of the
    features encode the row, half the column; [grid², dim]."""
    rows, cols = torch.meshgrid(torch.arange(grid), torch.arange(grid), indexing="ij")
    return torch.cat(
        [sincos_1d(rows.flatten(), dim // 2), sincos_1d(cols.flatten(), dim // 2)], dim=-1
    )


def tokenize(prompts: list[str], max_tokens: int) -> torch.Tensor:
    """Word ids [B, max_tokens] (0 = padding); the empty prompt is the single ``<null>`` token."""
    ids = torch.zeros(len(prompts), max_tokens, dtype=torch.long)
    for i, p in enumerate(prompts):
        words = p.lower().split()
        if not words:
            ids[i, 0] = NULL
            continue
        if len(words) > max_tokens:
            raise ValueError(f"prompt {p!r}: {len(words)} words > max_tokens={max_tokens}")
        for j, w in enumerate(words):
            if w not in WORDS:
                raise ValueError(
                    f"prompt {p!r}: unknown word {w!r} (Shapes vocabulary: {WORDS[2:]})"
                )
            ids[i, j] = WORDS.index(w)
    return ids


class TextEncoder(nn.Module):
    """Word embeddings + positions + a small transformer encoder.

    The position table starts as sin-cos features (row norm 8) on the scale of the word
    embeddings (norm ≈ 11), so word order is visible from the first step. (A table initialised at 0.02 beside N(0, 1)
    word embeddings, as in shapes-base-v1, leaves positions at 2% of the signal: that
    encoder learned a bag of words, and colour binding stayed at chance, 33%, where the same
    recipe with this table binds at 100%; docs/experiments/base-model.md, "Position tables".)"""

    def __init__(self, cfg: ShapesModelConfig):
        super().__init__()
        self.embed = nn.Embedding(len(WORDS), cfg.text_width)
        self.pos = nn.Parameter(sincos_1d(torch.arange(cfg.max_tokens), cfg.text_width))
        layer = nn.TransformerEncoderLayer(
            cfg.text_width, 4, 4 * cfg.text_width, dropout=0.0, batch_first=True, norm_first=True
        )
        self.encoder = nn.TransformerEncoder(layer, cfg.text_depth, enable_nested_tensor=False)
        self.norm = nn.LayerNorm(cfg.text_width)

    def forward(self, ids: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """ids [B, L] → (tokens [B, L, text_width], mask [B, L] True where a real token)."""
        mask = ids != PAD
        h = self.embed(ids) + self.pos[: ids.shape[1]]
        h = self.encoder(h, src_key_padding_mask=~mask)
        return self.norm(h), mask


def timestep_embedding(sigma: torch.Tensor, dim: int) -> torch.Tensor:
    """Sinusoidal features of 1000·σ: [B] → [B, dim]."""
    half = dim // 2
    freqs = torch.exp(-math.log(10000.0) * torch.arange(half, device=sigma.device) / half)
    args = 1000.0 * sigma.float()[:, None] * freqs[None]
    return torch.cat([torch.cos(args), torch.sin(args)], dim=-1)


class Block(nn.Module):
    """A DiT block with joint attention and adaLN-Zero modulation."""

    def __init__(self, width: int, heads: int):
        super().__init__()
        self.heads = heads
        self.norm1 = nn.LayerNorm(width, elementwise_affine=False)
        self.qkv = nn.Linear(width, 3 * width)
        self.proj = nn.Linear(width, width)
        self.norm2 = nn.LayerNorm(width, elementwise_affine=False)
        self.fc1 = nn.Linear(width, 4 * width)
        self.fc2 = nn.Linear(4 * width, width)
        self.ada = nn.Linear(width, 6 * width)
        nn.init.zeros_(self.ada.weight)
        nn.init.zeros_(self.ada.bias)

    def forward(self, h: torch.Tensor, c: torch.Tensor, attn_mask: torch.Tensor) -> torch.Tensor:
        """h [B, L, W], c [B, W], attn_mask [B, 1, 1, L] (True = attend) → [B, L, W]."""
        b, n, w = h.shape
        s1, g1, a1, s2, g2, a2 = self.ada(F.silu(c))[:, None].chunk(6, dim=-1)
        x = self.norm1(h) * (1 + g1) + s1
        q, k, v = self.qkv(x).view(b, n, 3, self.heads, w // self.heads).permute(2, 0, 3, 1, 4)
        o = F.scaled_dot_product_attention(q, k, v, attn_mask=attn_mask)  # [B, heads, L, W/heads]
        h = h + a1 * self.proj(o.transpose(1, 2).reshape(b, n, w))
        x = self.norm2(h) * (1 + g2) + s2
        return h + a2 * self.fc2(F.gelu(self.fc1(x), approximate="tanh"))


class ShapesFlowModel(nn.Module):
    """Velocity model ``v(x_σ, σ, prompt)`` for 32×32 RGB images in [-1, 1]."""

    def __init__(self, cfg: ShapesModelConfig | None = None):
        super().__init__()
        self.cfg = cfg = cfg or ShapesModelConfig()
        w, cs, ch = cfg.width, cfg.stem_channels, cfg.head_channels
        self.text = TextEncoder(cfg)
        self.text_proj = nn.Linear(cfg.text_width, w)
        self.stem = nn.Sequential(
            nn.Conv2d(3, cs, 3, padding=1), nn.SiLU(), nn.Conv2d(cs, cs, 3, padding=1)
        )
        self.patch = nn.Conv2d(cs, w, CELL, stride=CELL)
        # DiT's 2-D sin-cos table (norm ≈ 10): at σ → 1 a token's patch features are noise of
        # norm ≈ 4, so a table at the 0.02 scale left the tokens nearly blind to where they are,
        # at the steps where the layout is decided.
        self.img_pos = nn.Parameter(sincos_2d(GRID, w))
        self.txt_type = nn.Parameter(torch.zeros(w))
        self.t_mlp = nn.Sequential(nn.Linear(w, w), nn.SiLU(), nn.Linear(w, w))
        self.pool_mlp = nn.Sequential(nn.Linear(cfg.text_width, w), nn.SiLU(), nn.Linear(w, w))
        self.blocks = nn.ModuleList(Block(w, cfg.heads) for _ in range(cfg.depth))
        self.out_norm = nn.LayerNorm(w, elementwise_affine=False)
        self.out_ada = nn.Linear(w, 2 * w)
        self.unpatch = nn.Linear(w, CELL * CELL * cs)
        self.head_in = nn.Conv2d(2 * cs + 3, ch, 3, padding=1)
        self.head_norm = nn.GroupNorm(8, ch, affine=False)
        self.head_ada = nn.Linear(w, 2 * ch)
        self.head_out = nn.Conv2d(ch, 3, 3, padding=1)
        for lin in (self.out_ada, self.head_ada):
            nn.init.zeros_(lin.weight)
            nn.init.zeros_(lin.bias)
        nn.init.zeros_(self.head_out.weight)
        nn.init.zeros_(self.head_out.bias)
        # When set (e.g. torch.bfloat16), the transformer blocks run under autocast to this dtype
        # and hand float32 back; the stem, the head and the skip of the noisy input stay float32
        # (the blocks alone move v by 0.1%; autocasting the whole model also rounds the noisy
        # input and the head: 0.4% to 15% off, by the CPU's bfloat16 kernels). For the rollout
        # steps whose log-prob is not taken: ``ShapesPolicy.reduced_precision``.
        self.block_dtype: torch.dtype | None = None

    def encode_text(self, ids: torch.Tensor) -> dict[str, torch.Tensor]:
        """Word ids [B, L] → conditioning {"text": [B, L, text_width], "mask": [B, L] bool}."""
        tokens, mask = self.text(ids)
        return {"text": tokens, "mask": mask}

    def forward(
        self, x: torch.Tensor, sigma: torch.Tensor, text: torch.Tensor, mask: torch.Tensor
    ) -> torch.Tensor:
        """x [B, 3, 32, 32], sigma [B], text [B, L, Tw], mask [B, L] → v [B, 3, 32, 32]."""
        b = x.shape[0]
        cs = self.cfg.stem_channels
        m = mask.float()[..., None]
        pooled = (text * m).sum(1) / m.sum(1).clamp_min(1.0)  # [B, Tw]
        c = self.t_mlp(timestep_embedding(sigma, self.cfg.width)) + self.pool_mlp(pooled)  # [B, W]
        feats = self.stem(x)  # [B, cs, 32, 32]
        img = self.patch(feats).flatten(2).transpose(1, 2) + self.img_pos  # [B, 16, W]
        txt = self.text_proj(text) + self.txt_type  # [B, L, W]
        h = torch.cat([txt, img], dim=1)  # [B, L + 16, W]
        keep = torch.cat([mask, mask.new_ones(b, img.shape[1])], dim=1)[:, None, None, :]
        with (
            nullcontext()
            if self.block_dtype is None
            else torch.autocast(h.device.type, dtype=self.block_dtype)
        ):
            for blk in self.blocks:
                h = blk(h, c, keep)
        h = h.float()  # a no-op in float32
        shift, scale = self.out_ada(F.silu(c))[:, None].chunk(2, dim=-1)
        h = self.out_norm(h[:, txt.shape[1] :]) * (1 + scale) + shift  # [B, 16, W]
        p = self.unpatch(h).view(b, GRID, GRID, cs, CELL, CELL)  # [B, row, col, cs, y, x]
        p = p.permute(0, 3, 1, 4, 2, 5).reshape(b, cs, IMAGE_SIZE, IMAGE_SIZE)
        y = self.head_in(torch.cat([p, feats, x], dim=1))  # [B, ch, 32, 32]
        hs, hg = self.head_ada(F.silu(c))[:, :, None, None].chunk(2, dim=1)
        y = F.silu(self.head_norm(y) * (1 + hg) + hs)
        out = self.head_out(y)
        if self.cfg.velocity_skip:
            out = out + sigma.float()[:, None, None, None] * x
        return out


def load_checkpoint(path: str | Path) -> tuple[ShapesFlowModel, dict[str, str]]:
    """A Shapes checkpoint (float16/32 safetensors with the architecture in its metadata, as
    ``flowdppo.shapes.pretrain`` writes it) as a float32 model in eval mode, and its metadata."""
    from safetensors import safe_open
    from safetensors.torch import load_file

    path = Path(path)
    if not path.exists():
        raise FileNotFoundError(
            f"Shapes checkpoint {path} does not exist (train one with `flowdppo shapes pretrain`)"
        )
    try:
        with safe_open(str(path), "pt") as f:
            meta = dict(f.metadata() or {})
        state = load_file(str(path))
    except Exception as err:  # safetensors' errors do not name the file
        raise ValueError(
            f"Shapes checkpoint {path} cannot be read (truncated, or not safetensors): {err}"
        ) from err
    if "model" not in meta:
        raise ValueError(f"{path}: not a Shapes checkpoint (no 'model' config in its metadata)")
    model = ShapesFlowModel(ShapesModelConfig(**json.loads(meta["model"])))
    model.load_state_dict({k: v.float() for k, v in state.items()})
    return model.eval(), meta

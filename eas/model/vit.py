"""OpenAI CLIP visual tower, written from scratch with CLIP's ``visual.*`` parameter names.

Layout is batch-first ([B, N, C]) where CLIP is sequence-first; the parameters are the same, so
an OpenAI checkpoint loads by name (eas/load_clip.py). LaVIN reads the CLS token after a few
blocks (``forward``); ``embed_image`` is CLIP's own image embedding, so every loaded weight has a
use and the loader can demand all of them.
"""
from __future__ import annotations

from collections.abc import Sequence

import torch
import torch.nn.functional as F
from torch import nn

from eas.model.config import VisionConfig


class LayerNorm(nn.LayerNorm):
    """fp32 island: statistics in fp32 even when the tower runs in fp16, then cast back."""

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        out = F.layer_norm(x.float(), self.normalized_shape, self.weight.float(), self.bias.float(), self.eps)
        return out.type_as(x)


class QuickGELU(nn.Module):
    """The sigmoid approximation of GELU that OpenAI CLIP was trained with."""

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return x * torch.sigmoid(1.702 * x)


class SelfAttention(nn.Module):
    """Multi-head self-attention over CLIP's packed [q; k; v] projection.

    Written by hand rather than with nn.MultiheadAttention so that it exports to ONNX as plain
    matmuls. Takes the already-normed input, so adapters can sit between ln_1 and attention.
    """

    def __init__(self, width: int, heads: int):
        super().__init__()
        self.heads = heads
        self.in_proj_weight = nn.Parameter(torch.empty(3 * width, width))
        self.in_proj_bias = nn.Parameter(torch.zeros(3 * width))
        self.out_proj = nn.Linear(width, width)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.attend(self.qkv(x))

    def qkv(self, x: torch.Tensor) -> torch.Tensor:
        return F.linear(x, self.in_proj_weight, self.in_proj_bias)

    def attend(self, qkv: torch.Tensor) -> torch.Tensor:
        """Attention of the packed projection [B, N, 3C]; returns out_proj(attention)."""
        B, N, C3 = qkv.shape
        C = C3 // 3
        q, k, v = qkv.view(B, N, 3, self.heads, C // self.heads).permute(2, 0, 3, 1, 4)
        out = F.scaled_dot_product_attention(q, k, v)
        return self.out_proj(out.transpose(1, 2).reshape(B, N, C))


class Mlp(nn.Module):
    def __init__(self, width: int, hidden: int):
        super().__init__()
        self.c_fc = nn.Linear(width, hidden)
        self.gelu = QuickGELU()
        self.c_proj = nn.Linear(hidden, width)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.c_proj(self.gelu(self.c_fc(x)))


class ResidualBlock(nn.Module):
    def __init__(self, width: int, heads: int, mlp_hidden: int):
        super().__init__()
        self.ln_1 = LayerNorm(width)
        self.attn = SelfAttention(width, heads)
        self.ln_2 = LayerNorm(width)
        self.mlp = Mlp(width, mlp_hidden)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = x + self.attn(self.ln_1(x))
        return x + self.mlp(self.ln_2(x))


def patch_mask(tokens: torch.Tensor) -> torch.Tensor:
    """[B, N] True on the patch tokens, False on CLS (slot 0)."""
    mask = torch.ones(tokens.shape[:2], dtype=torch.bool, device=tokens.device)
    mask[:, 0] = False
    return mask


class Transformer(nn.Module):
    """Only a container, so that parameter names read ``transformer.resblocks.{i}`` as in CLIP."""

    def __init__(self, cfg: VisionConfig):
        super().__init__()
        hidden = round(cfg.width * cfg.mlp_ratio)
        self.resblocks = nn.ModuleList(ResidualBlock(cfg.width, cfg.heads, hidden) for _ in range(cfg.layers))


class VisionTransformer(nn.Module):
    def __init__(self, cfg: VisionConfig):
        super().__init__()
        self.cfg = cfg
        w = cfg.width
        self.conv1 = nn.Conv2d(3, w, kernel_size=cfg.patch_size, stride=cfg.patch_size, bias=False)
        self.class_embedding = nn.Parameter(torch.zeros(w))
        self.positional_embedding = nn.Parameter(torch.zeros(cfg.grid ** 2 + 1, w))
        self.ln_pre = LayerNorm(w)
        self.transformer = Transformer(cfg)
        self.ln_post = LayerNorm(w)
        # CLIP's joint-embedding projection; absent (output_dim 0) in vision-only exports such as
        # Hugging Face's CLIPVisionModel, which LLaVA's towers are.
        self.proj = nn.Parameter(torch.zeros(w, cfg.output_dim)) if cfg.output_dim else None

    def init_weights(self, generator: torch.Generator | None = None) -> "VisionTransformer":
        """Random init at CLIP's scales (std ~ width^-1/2, residual outputs shrunk by depth)."""
        w, depth = self.cfg.width, self.cfg.layers
        std = w ** -0.5
        residual_std = std * (2 * depth) ** -0.5

        def normal(p, s):
            nn.init.normal_(p, std=s, generator=generator)

        normal(self.conv1.weight, (3 * self.cfg.patch_size ** 2) ** -0.5)
        normal(self.class_embedding, std)
        normal(self.positional_embedding, std)
        if self.proj is not None:
            normal(self.proj, std)
        for name, p in self.named_parameters():
            if name.endswith("bias"):
                nn.init.zeros_(p)
            elif name.endswith("weight") and p.ndim == 1:  # LayerNorm gains
                nn.init.ones_(p)
        for blk in self.transformer.resblocks:
            normal(blk.attn.in_proj_weight, std)
            normal(blk.attn.out_proj.weight, residual_std)
            normal(blk.mlp.c_fc.weight, (2 * w) ** -0.5)
            normal(blk.mlp.c_proj.weight, residual_std)
        return self

    def embed_patches(self, pixels: torch.Tensor) -> torch.Tensor:
        """[B, 3, S, S] normalised pixels -> [B, 1 + grid², width] tokens after ln_pre (CLS first)."""
        x = self.conv1(pixels.to(self.conv1.weight.dtype)).flatten(2).transpose(1, 2)
        cls = self.class_embedding.to(x.dtype).expand(x.shape[0], 1, -1)
        x = torch.cat([cls, x], dim=1) + self.positional_embedding.to(x.dtype)
        return self.ln_pre(x)

    def forward(self, pixels: torch.Tensor, blocks: Sequence[int]) -> torch.Tensor:
        """CLS token after each of ``blocks`` (0-based, ascending) -> [B, len(blocks), width].

        No ln_post and no projection, as LaVIN. Blocks after the last tap are not run.
        """
        blocks = list(blocks)
        if not blocks or blocks != sorted(set(blocks)) or not 0 <= blocks[0] <= blocks[-1] < self.cfg.layers:
            raise ValueError(f"tap blocks must be distinct, ascending, within 0..{self.cfg.layers - 1}; got {blocks}")
        x = self.embed_patches(pixels)
        taps = []
        for i, blk in enumerate(self.transformer.resblocks[: blocks[-1] + 1]):
            x = blk(x)
            if i in blocks:
                taps.append(x[:, 0])
        return torch.stack(taps, dim=1)

    def hidden(self, pixels: torch.Tensor, n_blocks: int) -> torch.Tensor:
        """All tokens [B, 1 + grid², width] after the first ``n_blocks`` blocks (0: after ln_pre):
        Hugging Face's ``hidden_states[n_blocks]``, what LLaVA reads its patch features from."""
        if not 0 <= n_blocks <= self.cfg.layers:
            raise ValueError(f"n_blocks {n_blocks} outside 0..{self.cfg.layers}")
        x = self.embed_patches(pixels)
        for blk in self.transformer.resblocks[:n_blocks]:
            x = blk(x)
        return x

    def embed_image(self, pixels: torch.Tensor) -> torch.Tensor:
        """CLIP's image embedding: ln_post(CLS after the last block) @ proj -> [B, output_dim]."""
        if self.proj is None:
            raise ValueError("this vision tower has no CLIP projection (output_dim 0)")
        cls = self.forward(pixels, [self.cfg.layers - 1])[:, 0]
        return self.ln_post(cls) @ self.proj.to(cls.dtype)

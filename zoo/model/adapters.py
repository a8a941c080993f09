"""Projectors (image tokens -> LM embeddings) and output heads (LM hidden states -> image tokens)."""
from __future__ import annotations

from typing import Literal

import torch
from torch import nn

ProjectorKind = Literal["linear", "mlp"]
ImagePositions = Literal["none", "grid"]


def make_projector(kind: ProjectorKind, in_dim: int, out_dim: int) -> nn.Module:
    """A projector from image-space features to the LM's embedding width.

    "mlp" is LLaVA-1.5's two-layer GELU MLP (the paper's SigLIP projector); "linear" its VQ projector.
    """
    if kind == "linear":
        return nn.Linear(in_dim, out_dim)
    if kind == "mlp":
        return nn.Sequential(nn.Linear(in_dim, out_dim), nn.GELU(), nn.Linear(out_dim, out_dim))
    raise ValueError(f"unknown projector kind {kind!r}; expected 'linear' or 'mlp'")


def make_head(hidden_size: int, out_dim: int) -> nn.Module:
    """The output head: a linear map from LM hidden states to features (regression) or code logits."""
    return nn.Linear(hidden_size, out_dim)


class GridPositionEmbedding(nn.Module):
    """Learned 2-D place of each image token: a row embedding plus a column embedding, added to its input.

    The LM's 1-D positions say only "k-th image token"; a grid embedding says "row r, column c" directly
    (LlamaGen gives image tokens 2-D RoPE for the same reason). Token counts that are not a square get
    one learned vector per index. Small random init (std 0.02, as the LM's own embeddings).
    """

    def __init__(self, num_tokens: int, dim: int) -> None:
        super().__init__()
        side = int(round(num_tokens ** 0.5))
        self.rows, self.cols = (side, side) if side * side == num_tokens else (num_tokens, 1)
        self.row = nn.Parameter(torch.randn(self.rows, dim) * 0.02)
        self.col = nn.Parameter(torch.randn(self.cols, dim) * 0.02)

    def table(self) -> torch.Tensor:
        """Embeddings of all token indices [N, dim] in raster order."""
        return (self.row[:, None] + self.col[None]).flatten(0, 1)

    def forward(self, embeds: torch.Tensor, index: torch.Tensor | None = None) -> torch.Tensor:
        """Add the place: `embeds` [n, N, dim] for whole images, or [B, dim] at token indices `index` [B]."""
        if index is None:
            return embeds + self.table().to(embeds.dtype)
        return embeds + self.table()[index.clamp(0, self.rows * self.cols - 1)].to(embeds.dtype)

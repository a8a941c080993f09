"""Projectors (image tokens -> LM embeddings) and output heads (LM hidden states -> image tokens)."""
from __future__ import annotations

from typing import Literal

from torch import nn

ProjectorKind = Literal["linear", "mlp"]


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

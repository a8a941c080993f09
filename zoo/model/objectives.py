"""Losses of a unified model: text CE, and the image loss on generated image tokens."""
from __future__ import annotations

from typing import Literal

import torch
import torch.nn.functional as F

ImageLossKind = Literal["cosine", "mse", "ce"]
IGNORE_INDEX = -100


def text_cross_entropy(logits: torch.Tensor, targets: torch.Tensor) -> torch.Tensor:
    """Per-token CE [M] of text logits [M, V] against token ids [M] (all positions already selected)."""
    return F.cross_entropy(logits.float(), targets, reduction="none")


def image_token_loss(kind: ImageLossKind, prediction: torch.Tensor, target: torch.Tensor) -> torch.Tensor:
    """Per-token image loss [M]: 1 - cosine or MSE on features [M, D], or CE of code logits [M, K] vs codes [M]."""
    if kind == "cosine":
        return 1.0 - F.cosine_similarity(prediction.float(), target.float(), dim=-1)
    if kind == "mse":
        return (prediction.float() - target.float()).pow(2).mean(dim=-1)
    if kind == "ce":
        return F.cross_entropy(prediction.float(), target, reduction="none")
    raise ValueError(f"unknown image loss {kind!r}; expected 'cosine', 'mse' or 'ce'")


def per_group_mean(values: torch.Tensor, groups: torch.Tensor, num_groups: int) -> tuple[torch.Tensor, torch.Tensor]:
    """Mean of `values` [M] per group id in [0, num_groups): (means [G], counts [G]); empty groups give 0."""
    sums = torch.zeros(num_groups, dtype=values.dtype, device=values.device).index_add_(0, groups, values)
    counts = torch.zeros(num_groups, dtype=values.dtype, device=values.device).index_add_(
        0, groups, torch.ones_like(values)
    )
    return sums / counts.clamp(min=1), counts

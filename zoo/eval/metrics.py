"""Model-agnostic generation metrics: feature cosine, code accuracy, retrieval, FID with a pluggable extractor."""
from __future__ import annotations

from typing import Any

import torch
import torch.nn.functional as F


def feature_cosine(generated: torch.Tensor, target: torch.Tensor) -> torch.Tensor:
    """Per-image mean token cosine [M] between generated and ground-truth features [M, N, D]."""
    return F.cosine_similarity(generated.float(), target.float(), dim=-1).mean(-1)


def code_accuracy(generated: torch.Tensor, target: torch.Tensor) -> torch.Tensor:
    """Per-image fraction [M] of generated codes equal to the ground truth's [M, N]."""
    return (generated == target).float().mean(-1)


def nearest_target(generated: torch.Tensor, target: torch.Tensor) -> torch.Tensor:
    """Index [M] of the ground truth [M, N, D] nearest each generated image [M, N, D] (cosine, flattened)."""
    g = F.normalize(generated.flatten(1).float(), dim=-1)
    t = F.normalize(target.flatten(1).float(), dim=-1)
    return (g @ t.T).argmax(-1)


def retrieval_top1(generated: torch.Tensor, target: torch.Tensor) -> float:
    """Share of generated images [M, N, D] whose nearest ground truth (cosine, flattened) is their own."""
    if generated.shape[0] < 2:
        return float("nan")
    nearest = nearest_target(generated, target)
    return (nearest == torch.arange(len(nearest), device=nearest.device)).float().mean().item()


def retrieval_chance(n: int) -> float:
    """Top-1 retrieval of a uniform guess among `n` candidates."""
    return 1.0 / n if n else float("nan")


def flatten_metrics(metrics: dict[str, Any], prefix: str = "") -> dict[str, Any]:
    """Nested metric dicts -> {"a/b/c": value}."""
    out: dict[str, Any] = {}
    for key, value in metrics.items():
        if isinstance(value, dict):
            out.update(flatten_metrics(value, f"{prefix}{key}/"))
        else:
            out[f"{prefix}{key}"] = value
    return out

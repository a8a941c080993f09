"""Training signals of the tiny spaces beyond their papers' losses: detail-weighted reconstruction, the frozen
attribute reader as a stand-in for LPIPS, and SigLIP batches of hard negatives.

Why these exist (measured, issue 12): trained with MSE + L1 alone, the tiny VQ tokenizer smeared the hands
and the battery text (reader-64 on its reconstructions: hour 0.07, battery MAE 26), and the SigLIP tower
trained on random batches learned weather and corners (which separate captions cheaply) but kept the
time only in patch positions. LPIPS cannot be downloaded here; the shipped attribute reader is a
perceptual network that knows exactly what matters on a watch.
"""
from __future__ import annotations

import dataclasses
from collections.abc import Sequence

import torch
from torch.nn import functional as F

from datamodules.smartwatch.reader import load_reader, reader_loss, resolve_reader_path, watch_labels
from datamodules.smartwatch.spec import WatchSpec, rng_for, split_of

_HARD_NEGATIVE_STREAM = 23  # keeps hard-negative draws off every other random stream of a watch


def detail_weights(pixels: torch.Tensor, strength: float) -> torch.Tensor:
    """Per-pixel weights [B, 1, H, W], mean 1 + strength: high where a pixel differs from its 5x5 neighbourhood.

    Hands, icon edges and battery digits are a few percent of a watch's pixels; a plain MSE is dominated by
    the face and the white background, so small parts are the first a small decoder gives up.
    """
    blurred = F.avg_pool2d(pixels, 5, stride=1, padding=2, count_include_pad=False)
    detail = (pixels - blurred).abs().mean(1, keepdim=True)
    return 1 + strength * detail / detail.mean((2, 3), keepdim=True).clamp_min(1e-6)


def weighted_reconstruction(recon: torch.Tensor, pixels: torch.Tensor, detail: float, l1_weight: float) -> torch.Tensor:
    """(MSE + l1_weight x L1) per pixel, weighted by `detail_weights` (plain MSE + L1 when detail is 0)."""
    err = (recon - pixels).pow(2) + l1_weight * (recon - pixels).abs()
    if detail <= 0:
        return err.mean()
    return (err * detail_weights(pixels, detail)).mean() / (1 + detail)


class ReaderConsistency(torch.nn.Module):
    """The frozen attribute reader's loss on images in [-1, 1]: they must read as the watches they show."""

    def __init__(self, path: str) -> None:
        super().__init__()
        self.reader, _ = load_reader(resolve_reader_path(path))
        self.reader.eval().requires_grad_(False)

    def train(self, mode: bool = True) -> "ReaderConsistency":
        """Stay in eval mode (BatchNorm statistics are the reader's own)."""
        return super().train(False)

    def forward(self, images: torch.Tensor, specs: Sequence[WatchSpec]) -> torch.Tensor:
        """Reader loss of `images` [B, 3, H, W] in [-1, 1] against the true attributes of `specs`."""
        return reader_loss(self.reader((images + 1) / 2), watch_labels(specs))


def hard_negative_group(anchor: WatchSpec, size: int, seed: int, index: int) -> list[WatchSpec]:
    """`anchor` and `size - 1` train-split watches that differ from it only in time and battery.

    In a batch of such groups the captions of a group differ only in the clock and the battery, so the
    contrastive loss can only be lowered by reading them (hard negatives against feature suppression).
    Variants whose identity belongs to another split are redrawn: the tower never sees a val/test watch.
    """
    rng = rng_for(seed, index, _HARD_NEGATIVE_STREAM)
    group = [anchor]
    while len(group) < size:
        variant = dataclasses.replace(anchor, hour=int(rng.integers(13)), minute=int(rng.integers(60)),
                                      second=int(rng.integers(60)), battery=int(rng.integers(101)))
        if split_of(variant.identity()) == "train" and variant.identity() not in {g.identity() for g in group}:
            group.append(variant)
    return group


def hard_negative_batch(anchors: Sequence[WatchSpec], group: int, seed: int, start: int) -> list[WatchSpec]:
    """Groups of `group` watches sharing weather, corners and face (see `hard_negative_group`), concatenated."""
    return [w for i, a in enumerate(anchors) for w in hard_negative_group(a, group, seed, start + i)]


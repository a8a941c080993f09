"""Model-agnostic generation metrics on hand-made features whose answers are known."""
from __future__ import annotations

import math

import torch

from zoo.eval.metrics import code_accuracy, feature_cosine, nearest_target, retrieval_chance, retrieval_top1


def _features(m: int = 5, n: int = 3, d: int = 4) -> torch.Tensor:
    torch.manual_seed(0)
    return torch.randn(m, n, d)


def test_retrieval_counts_own_nearest_and_knows_chance():
    target = _features()
    assert retrieval_top1(target * 3.0, target) == 1.0  # scale does not matter to cosine
    shifted = target[[1, 2, 3, 4, 0]]
    assert retrieval_top1(shifted, target) == 0.0
    assert nearest_target(shifted, target).tolist() == [1, 2, 3, 4, 0]
    assert math.isnan(retrieval_top1(target[:1], target[:1]))
    assert retrieval_chance(5) == 0.2


def test_feature_cosine_and_code_accuracy_per_image():
    target = _features()
    assert torch.allclose(feature_cosine(target, target), torch.ones(5))
    assert torch.allclose(feature_cosine(-target, target), -torch.ones(5))
    codes = torch.tensor([[1, 2, 3, 4], [1, 1, 1, 1]])
    assert code_accuracy(codes, torch.tensor([[1, 2, 0, 0], [1, 1, 1, 1]])).tolist() == [0.5, 1.0]

"""What a unified model feeds back for its written image tokens, apart from the projection itself.

In training (teacher forcing) the true tokens are fed back, optionally made imperfect: `noisy` and
`corrupt_codes`/`corrupt_features` (UnifiedVLM's `feedback_noise`, `feedback_corruption`). In generation
the model's own tokens are fed back: `pick_codes` chooses a code from logits, `at_norm` rescales a
predicted feature. `UnifiedVLM.encode_write` and `choose_image_token` call these; the targets
of the loss always stay the true tokens.
"""
from __future__ import annotations

import torch
import torch.nn.functional as F


def noisy(features: torch.Tensor, relative_std: float) -> torch.Tensor:
    """`features` [..., D] plus Gaussian noise of `relative_std` x each token's RMS (`feedback_noise`).

    Teacher forcing feeds back true features; free-running generation feeds back the model's own, which
    are off by the model's error. Noise of this relative size on the fed-back continuous features
    (training only) teaches the model to continue from imperfect inputs.
    """
    scale = features.detach().pow(2).mean(-1, keepdim=True).sqrt()  # per-token RMS
    return features + relative_std * scale * torch.randn_like(features)


def corrupt_codes(codes: torch.Tensor, rate: float, codebook_size: int) -> torch.Tensor:
    """`codes` with a `rate` share replaced by codes uniform over the codebook (`feedback_corruption`).

    Teacher forcing lets a model predict most image tokens by copying their neighbours and ignore the
    prompt (measured: the study models' image loss is the same with shuffled prompts). Replacing a
    fraction of fed-back tokens (training only) by random ones weakens that shortcut.
    """
    replaced = torch.rand(codes.shape, device=codes.device) < rate
    return torch.where(replaced, torch.randint_like(codes, codebook_size), codes)


def corrupt_features(fed: torch.Tensor, features: torch.Tensor, rate: float) -> torch.Tensor:
    """`fed` [B, N, D] with a `rate` share of tokens replaced by true `features` of another written token of
    the batch (the continuous counterpart of `corrupt_codes`)."""
    flat = features.flatten(0, 1)
    others = flat[torch.randint(len(flat), features.shape[:2], device=features.device)]
    replaced = torch.rand(features.shape[:2], device=features.device).unsqueeze(-1) < rate
    return torch.where(replaced, others, fed)


def pick_codes(logits: torch.Tensor, temperature: float = 0.0, top_k: int = 0,
               generator: torch.Generator | None = None) -> torch.Tensor:
    """Codes [B] from logits [B, K]: the most likely at temperature 0, else sampled (among the top k if k > 0)."""
    if temperature <= 0:
        return logits.argmax(-1)
    logits = logits.float() / temperature
    if top_k > 0:
        kth = torch.topk(logits, min(top_k, logits.shape[-1]), dim=-1).values[..., -1:]
        logits = logits.masked_fill(logits < kth, float("-inf"))
    return torch.multinomial(torch.softmax(logits, -1), 1, generator=generator).squeeze(-1)


def at_norm(prediction: torch.Tensor, norm: torch.Tensor) -> torch.Tensor:
    """Predicted features [B, D] in their direction at length `norm` (a scalar); unchanged where `norm` is 0.

    1 - cosine fixes only a prediction's direction; its norm drifts (tiny SigLIP: predictions ~12.7 long,
    features ~27). Fed back as is, the projector sees inputs it never saw in teacher forcing and generation
    derails (generated cosine 0.15; rescaled 0.24, same model). So generation feeds back the direction at
    the running mean norm of the written features (UnifiedVLM's `write_feature_norm`; 0 = unknown:
    older checkpoints feed back the raw prediction).
    """
    rescaled = F.normalize(prediction, dim=-1) * norm.to(prediction.dtype)
    return torch.where(norm > 0, rescaled, prediction)

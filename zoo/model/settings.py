"""UnifiedVLM's run settings as typed groups, and the optimiser they configure.

The model's constructor keeps its flat keyword arguments (`lr`, `eval_max_new_tokens`, ...: recipes,
checkpoints' hparams and zoo entries name them); it gathers them into these groups, which
`configure_optimizers` and `generation_config` read.
"""
from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Any

import torch
from torch import nn


@dataclass
class OptimSettings:
    """AdamW with two parameter groups and a cosine schedule after a linear warm-up."""

    lr: float = 2e-4
    """Learning rate of the language model's trainable parameters (all, LoRA, or the image-token rows)."""
    projector_lr: float = 1e-4
    """Learning rate of everything else that trains: projectors, the image head, grid positions."""
    weight_decay: float = 0.0
    """AdamW's decoupled weight decay, for both groups."""
    warmup_ratio: float = 0.03
    """Share of the run's optimiser steps spent warming up linearly to the full rates."""


@dataclass
class EvalSettings:
    """Decoding of evaluation (`unizoo test|predict`, ValidationScores); fields of zoo.model.generate.GenerationConfig."""

    max_new_tokens: int = 128
    """At most this many new text tokens per answer."""
    temperature: float = 0.0
    """Text sampling temperature; 0 decodes greedily."""
    guidance_scale: float = 1.0
    """Classifier-free guidance of written images; 1 writes from the prompt alone (one LM stream)."""
    image_temperature: float = 0.0
    """Sampling temperature of image codes; 0 takes the most likely code (continuous spaces ignore it)."""
    image_top_k: int = 0
    """Sample image codes among the k most likely only; 0 keeps all."""


def configure_adamw_cosine(model: nn.Module, lm: nn.Module, settings: OptimSettings,
                           total_steps: float | None) -> dict[str, Any]:
    """Lightning's optimiser config: AdamW (`lm`'s trainable parameters at `lr`, the rest of `model`'s at
    `projector_lr`; empty groups left out), cosine decay to 0 after the warm-up, stepped every optimiser step.

    `total_steps`: the run's optimiser steps (the trainer's estimate); None (no trainer) counts 1000.
    """
    lm_params = [p for p in lm.parameters() if p.requires_grad]
    lm_ids = {id(p) for p in lm_params}
    rest = [p for p in model.parameters() if p.requires_grad and id(p) not in lm_ids]
    groups = [g for g in ({"params": lm_params, "lr": settings.lr}, {"params": rest, "lr": settings.projector_lr}) if g["params"]]
    optimizer = torch.optim.AdamW(groups, weight_decay=settings.weight_decay)
    total = max(1, int(total_steps)) if total_steps is not None else 1000
    warmup = int(settings.warmup_ratio * total)

    def schedule(step: int) -> float:
        if step < warmup:
            return (step + 1) / warmup
        progress = (step - warmup) / max(1, total - warmup)
        return 0.5 * (1.0 + math.cos(math.pi * min(1.0, progress)))

    scheduler = torch.optim.lr_scheduler.LambdaLR(optimizer, schedule)
    return {"optimizer": optimizer, "lr_scheduler": {"scheduler": scheduler, "interval": "step"}}

"""The study's architecture families as thin wirings of UnifiedVLM (DESIGN.md §3).

Aligned vs misaligned is a wiring choice: one space both ways, two spaces, or one space whose input
side passes through a fixed random affine map. Single-task baselines are the same classes trained on
single-task data (a data choice, not a model class).
"""
from __future__ import annotations

from typing import Any

from zoo.config import build
from zoo.model.adapters import ProjectorKind
from zoo.model.backbone import LanguageBackbone
from zoo.model.unified import UnifiedVLM
from zoo.spaces.affine import AffineSpace
from zoo.spaces.base import ImageSpace


class SharedSpaceVLM(UnifiedVLM):
    """One space read and written (SigLIP-SigLIP, VQ-VQ); optionally one projector both ways, as in the paper."""

    def __init__(
        self,
        backbone: LanguageBackbone,
        space: ImageSpace,
        projector: ProjectorKind = "mlp",
        share_projector: bool = True,
        **kwargs: Any,
    ) -> None:
        space = build(space)
        super().__init__(
            backbone=backbone,
            read_space=space,
            write_space=space,
            read_projector=projector,
            write_projector=projector,
            share_projector=share_projector,
            **kwargs,
        )


class SeparateSpacesVLM(UnifiedVLM):
    """Different spaces for reading and writing (SigLIP-VQ, VQ-SigLIP, CLIP-VQ)."""

    def __init__(
        self,
        backbone: LanguageBackbone,
        read_space: ImageSpace,
        write_space: ImageSpace,
        read_projector: ProjectorKind = "mlp",
        write_projector: ProjectorKind = "linear",
        **kwargs: Any,
    ) -> None:
        super().__init__(
            backbone=backbone,
            read_space=read_space,
            write_space=write_space,
            read_projector=read_projector,
            write_projector=write_projector,
            share_projector=False,
            **kwargs,
        )


class MisalignedVLM(UnifiedVLM):
    """One space written as is and read through `AffineSpace(space, strength, seed)` (PAPER.md §4)."""

    def __init__(
        self,
        backbone: LanguageBackbone,
        space: ImageSpace,
        strength: float = 0.1,
        affine_seed: int = 0,
        projector: ProjectorKind = "linear",
        share_projector: bool = True,
        **kwargs: Any,
    ) -> None:
        space = build(space)
        super().__init__(
            backbone=backbone,
            read_space=AffineSpace(space, strength=strength, seed=affine_seed),
            write_space=space,
            read_projector=projector,
            write_projector=projector,
            share_projector=share_projector,
            **kwargs,
        )

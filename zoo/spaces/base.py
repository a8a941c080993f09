"""ImageSpace: the interface between pixels and the tokens a language model reads or writes."""
from __future__ import annotations

import torch
from PIL import Image
from torch import nn

from zoo.config import Configurable


class ImageSpace(Configurable, nn.Module):
    """An image <-> token space (SigLIP features, VQ codes, ...).

    Attributes every space sets: `num_tokens` (N tokens per image), `dim` (D, feature width the LM
    sees before its projector), `discrete` (True when the space has codes), `codebook_size`
    (None if continuous), `image_size` (square side in pixels of `preprocess` output).
    Spaces are frozen by default: their parameters do not train with the language model.
    """

    num_tokens: int
    dim: int
    discrete: bool = False
    codebook_size: int | None = None
    image_size: int

    def preprocess(self, image: Image.Image) -> torch.Tensor:
        """PIL image -> float tensor [3, H, W] in this space's pixel convention."""
        raise NotImplementedError

    def encode(self, pixels: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor | None]:
        """Pixels [B, 3, H, W] -> (features [B, N, D], codes [B, N] or None)."""
        raise NotImplementedError

    def embed_codes(self, codes: torch.Tensor) -> torch.Tensor:
        """Codes [B, N] -> features [B, N, D] (the quantized latent); discrete spaces only."""
        raise NotImplementedError(f"{type(self).__name__} is continuous: it has no codes to embed")

    def decode(self, features: torch.Tensor | None = None, codes: torch.Tensor | None = None) -> torch.Tensor:
        """Features or codes -> pixels [B, 3, H, W] in the `preprocess` convention, where the space can."""
        raise NotImplementedError(f"{type(self).__name__} cannot decode to pixels")

    def postprocess(self, pixels: torch.Tensor) -> list[Image.Image]:
        """Pixels [B, 3, H, W] in the `preprocess` convention -> PIL images."""
        raise NotImplementedError

    @property
    def can_decode(self) -> bool:
        """Whether `decode` turns this space's tokens back into pixels."""
        return False

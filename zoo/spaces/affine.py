"""AffineSpace: the paper's frozen misalignment map y = x (Q S) + b on another space's features."""
from __future__ import annotations

from typing import Any

import torch
from PIL import Image

from zoo.spaces.base import ImageSpace


def random_affine(dim: int, strength: float, seed: int) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """(Q [D, D] random orthogonal, S [D] uniform in [1-s, 1+s], b [D] uniform in [-s, s]) from `seed`.

    Q is the QR factor of a uniform random matrix with column signs fixed so diag(R) > 0, which makes
    it a deterministic function of the seed. Strength 0 gives the identity (Q = I, S = 1, b = 0).
    """
    if strength == 0:
        return torch.eye(dim), torch.ones(dim), torch.zeros(dim)
    gen = torch.Generator().manual_seed(seed)
    q, r = torch.linalg.qr(torch.rand(dim, dim, generator=gen, dtype=torch.float64))
    q = q * torch.where(torch.diagonal(r) < 0, -1.0, 1.0)
    scale = 1.0 + strength * (2.0 * torch.rand(dim, generator=gen, dtype=torch.float64) - 1.0)
    shift = strength * (2.0 * torch.rand(dim, generator=gen, dtype=torch.float64) - 1.0)
    return q.float(), scale.float(), shift.float()


class AffineSpace(ImageSpace):
    """`base` with every feature vector mapped by a fixed affine map; codes and pixels are unchanged.

    The map applies wherever this space hands out features: `encode` and `embed_codes` (so pre-encoded
    codes see the same misalignment). `decode(features=...)` inverts it before decoding.
    """

    def __init__(self, base: ImageSpace, strength: float, seed: int = 0) -> None:
        """Wrap `base`; `strength` s >= 0 sets the spread of S and b (the paper used 0.1, 0.2, 0.3)."""
        super().__init__()
        if strength < 0 or strength >= 1:
            raise ValueError(f"AffineSpace: strength must be in [0, 1) so that S stays positive, got {strength}")
        self.base, self.strength, self.seed = base, float(strength), int(seed)
        for attr in ("num_tokens", "dim", "discrete", "codebook_size", "image_size"):
            setattr(self, attr, getattr(base, attr))
        rotation, scale, shift = random_affine(self.dim, self.strength, self.seed)
        self.register_buffer("rotation", rotation)
        self.register_buffer("scale", scale)
        self.register_buffer("shift", shift)
        self.training = base.training

    def transform(self, features: torch.Tensor) -> torch.Tensor:
        """x [..., D] -> x Q S + b."""
        return (features @ self.rotation.to(features.dtype)) * self.scale.to(features.dtype) + self.shift.to(
            features.dtype
        )

    def inverse(self, features: torch.Tensor) -> torch.Tensor:
        """y [..., D] -> ((y - b) / S) Q^T, undoing `transform`."""
        dt = features.dtype
        return ((features - self.shift.to(dt)) / self.scale.to(dt)) @ self.rotation.to(dt).t()

    def train(self, mode: bool = True) -> AffineSpace:
        """Follow the base space's mode (a frozen base stays in eval mode, and so does this wrapper)."""
        super().train(mode)
        self.training = self.base.training
        return self

    def preprocess(self, image: Image.Image) -> torch.Tensor:
        """The base space's preprocessing."""
        return self.base.preprocess(image)

    def postprocess(self, pixels: torch.Tensor) -> list[Image.Image]:
        """The base space's postprocessing."""
        return self.base.postprocess(pixels)

    def encode(self, pixels: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor | None]:
        """Base features mapped by the affine map; base codes passed through."""
        features, codes = self.base.encode(pixels)
        return self.transform(features), codes

    def embed_codes(self, codes: torch.Tensor) -> torch.Tensor:
        """Base code embeddings mapped by the affine map (equal to `encode`'s features for the same codes)."""
        return self.transform(self.base.embed_codes(codes))

    def decode(self, features: torch.Tensor | None = None, codes: torch.Tensor | None = None) -> torch.Tensor:
        """Decode with the base space, after undoing the map on `features`."""
        return self.base.decode(features=None if features is None else self.inverse(features), codes=codes)

    @property
    def can_decode(self) -> bool:
        """Whether the base space can decode."""
        return self.base.can_decode

    def describe(self) -> dict[str, Any]:
        """The base space's summary with this map's strength and seed."""
        base = self.base.describe() if hasattr(self.base, "describe") else {"name": type(self.base).__name__}
        return {**base, "name": f"AffineSpace({base.get('name')})", "strength": self.strength, "seed": self.seed}

    def extra_repr(self) -> str:
        """Strength and seed in module reprs."""
        return f"strength={self.strength}, seed={self.seed}, dim={self.dim}"

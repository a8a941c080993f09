"""Shared pieces of the concrete image spaces: freezing, pixel transforms, size checks."""
from __future__ import annotations

import contextlib
from collections.abc import Sequence
from typing import Any

import torch
from PIL import Image
from torchvision.transforms import v2
from torchvision.transforms.v2 import functional as TF

from zoo.spaces.base import ImageSpace


def check_divisible(image_size: int, factor: int, what: str, space: str) -> None:
    """Raise ValueError when `factor` (patch size, downsampling) does not divide `image_size`."""
    if image_size <= 0 or factor <= 0 or image_size % factor:
        raise ValueError(
            f"{space}: image size {image_size} is not divisible by the {what} {factor}; "
            f"choose an image size that is a multiple of {factor}"
        )


def check_mean_std(mean: Sequence[float], std: Sequence[float], space: str) -> tuple[list[float], list[float]]:
    """Validate a per-channel RGB mean/std pair and return it as float lists."""
    mean, std = [float(m) for m in mean], [float(s) for s in std]
    if len(mean) != 3 or len(std) != 3:
        raise ValueError(f"{space}: mean and std need 3 values (RGB), got mean={mean} std={std}")
    if any(s <= 0 for s in std):
        raise ValueError(f"{space}: std values must be positive, got {std}")
    return mean, std


def pixel_transform(image_size: int, mean: Sequence[float], std: Sequence[float]) -> v2.Compose:
    """RGB PIL -> [3, S, S] float: bicubic resize to a square, scale to [0, 1], normalise."""
    return v2.Compose(
        [
            # Resizing the PIL image (before ToImage) keeps values clamped to the 8-bit range.
            v2.Resize((image_size, image_size), interpolation=v2.InterpolationMode.BICUBIC, antialias=True),
            v2.ToImage(),
            v2.ToDtype(torch.float32, scale=True),
            v2.Normalize(mean=list(mean), std=list(std)),
        ]
    )


def pixels_to_pil(pixels: torch.Tensor, mean: Sequence[float], std: Sequence[float]) -> list[Image.Image]:
    """Invert `pixel_transform`'s normalisation: [B, 3, H, W] -> list of RGB PIL images."""
    if pixels.dim() == 3:
        pixels = pixels.unsqueeze(0)
    if pixels.dim() != 4 or pixels.shape[1] != 3:
        raise ValueError(f"postprocess: expected pixels [B, 3, H, W], got shape {tuple(pixels.shape)}")
    m = torch.tensor(mean, dtype=torch.float32).view(1, 3, 1, 1)
    s = torch.tensor(std, dtype=torch.float32).view(1, 3, 1, 1)
    unit = (pixels.detach().float().cpu() * s + m).clamp(0.0, 1.0)
    as_bytes = (unit * 255.0).round().to(torch.uint8)
    return [TF.to_pil_image(img) for img in as_bytes]


def check_pixels(pixels: torch.Tensor, image_size: int, space: str) -> None:
    """Raise ValueError unless `pixels` is [B, 3, image_size, image_size]."""
    if pixels.dim() != 4 or pixels.shape[1] != 3 or pixels.shape[-2:] != (image_size, image_size):
        raise ValueError(
            f"{space}: expected pixels [B, 3, {image_size}, {image_size}], got shape {tuple(pixels.shape)}"
        )


class FrozenSpace(ImageSpace):
    """An ImageSpace that is frozen unless built with trainable=True.

    Frozen means: no parameter requires grad, the module stays in eval mode whatever its parent
    asks (so dropout/normalisation never change it), and `encode` runs without autograd.
    """

    trainable: bool = False

    def _set_trainable(self, trainable: bool) -> None:
        """Freeze (or not) every parameter; call at the end of a subclass constructor."""
        self.trainable = bool(trainable)
        if not self.trainable:
            self.requires_grad_(False)
            super().train(False)

    def train(self, mode: bool = True) -> FrozenSpace:
        """Switch train/eval mode; a frozen space always stays in eval mode."""
        return super().train(bool(mode) and self.trainable)

    def _setup_pixels(self, image_size: int, mean: Sequence[float], std: Sequence[float]) -> None:
        """Store the pixel convention (normalised RGB at image_size) used by pre/postprocess."""
        self.image_size = int(image_size)
        self.mean, self.std = check_mean_std(mean, std, type(self).__name__)
        self._transform = pixel_transform(self.image_size, self.mean, self.std)

    def preprocess(self, image: Image.Image) -> torch.Tensor:
        """PIL image -> [3, S, S] float tensor: RGB, bicubic resize to image_size, normalised."""
        if not isinstance(image, Image.Image):
            raise ValueError(f"{type(self).__name__}.preprocess: expected a PIL image, got {type(image).__name__}")
        return self._transform(image.convert("RGB") if image.mode != "RGB" else image)

    def postprocess(self, pixels: torch.Tensor) -> list[Image.Image]:
        """Pixels [B, 3, H, W] in this space's convention -> RGB PIL images (normalisation undone)."""
        return pixels_to_pil(pixels, self.mean, self.std)

    def _grad_context(self) -> contextlib.AbstractContextManager:
        """no_grad for a frozen space, autograd as usual for a trainable one."""
        return contextlib.nullcontext() if self.trainable else torch.no_grad()

    def describe(self) -> dict[str, Any]:
        """A short summary for logs: name, tokens, dim and the rest of the space's shape."""
        return {
            "name": type(self).__name__,
            "tokens": self.num_tokens,
            "dim": self.dim,
            "discrete": self.discrete,
            "codebook_size": self.codebook_size,
            "image_size": self.image_size,
            "trainable": self.trainable,
        }

    def extra_repr(self) -> str:
        """One line with the space's summary in module reprs."""
        return ", ".join(f"{k}={v}" for k, v in self.describe().items() if k != "name")

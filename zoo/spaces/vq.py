"""VQTokenizer: the LlamaGen-family VQ image tokenizer as a discrete ImageSpace."""
from __future__ import annotations

import dataclasses
import math
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch

from zoo.catalog.hub import resolve_weights
from zoo.spaces._common import FrozenSpace, check_divisible, check_pixels
from zoo.spaces.vq_model import VQModel

# LlamaGen's pixel range is [-1, 1]: x = (rgb01 - 0.5) / 0.5.
VQ_MEAN = (0.5, 0.5, 0.5)
VQ_STD = (0.5, 0.5, 0.5)


@dataclass(frozen=True)
class VQConfig:
    """Architecture of one tokenizer variant (LlamaGen naming in comments)."""

    codebook_size: int = 16384
    codebook_dim: int = 8  # codebook_embed_dim
    channels: int = 128  # ch
    channel_mult: tuple[int, ...] = (1, 1, 2, 2, 4)  # encoder_ch_mult == decoder_ch_mult
    z_channels: int = 256
    num_res_blocks: int = 2
    norm_groups: int = 32
    image_size: int = 256
    beta: float = 0.25  # commitment weight
    entropy_weight: float = 0.0
    dropout: float = 0.0

    @property
    def downsample(self) -> int:
        """Spatial reduction factor: one halving per level but the last."""
        return 2 ** (len(self.channel_mult) - 1)

    def validate(self, where: str) -> None:
        """Raise ValueError on sizes the architecture cannot build."""
        if not self.channel_mult or any(m <= 0 for m in self.channel_mult):
            raise ValueError(f"{where}: channel_mult must be a non-empty list of positive ints, got {self.channel_mult}")
        for name in ("codebook_size", "codebook_dim", "channels", "z_channels", "num_res_blocks", "norm_groups"):
            if getattr(self, name) <= 0:
                raise ValueError(f"{where}: {name} must be positive, got {getattr(self, name)}")
        bad = sorted({self.channels * m for m in self.channel_mult if (self.channels * m) % self.norm_groups})
        if bad:
            raise ValueError(f"{where}: channel widths {bad} are not divisible by norm_groups={self.norm_groups}")
        check_divisible(self.image_size, self.downsample, "VQ downsampling factor", where)


VARIANTS: dict[str, VQConfig] = {
    # LlamaGen VQ-16 (vq_ds16_c2i.pt): 256 px -> 16x16 codes from a 16384 x 8 codebook.
    "VQ-16": VQConfig(),
    # LlamaGen VQ-8: one level fewer, 256 px -> 32x32 codes.
    "VQ-8": VQConfig(channel_mult=(1, 2, 2, 4)),
    # CPU-sized: 64 px -> 8x8 codes, widths 16-32-64-64 (CPU_FACTS.md section 3).
    "tiny": VQConfig(codebook_size=1024, channels=16, channel_mult=(1, 2, 4, 4), z_channels=64,
                     num_res_blocks=1, norm_groups=8, image_size=64),
}


def load_vq_state_dict(path: str | Path) -> dict[str, torch.Tensor]:
    """Read a tokenizer state dict from a LlamaGen `.pt` (weights under "model") or a `.safetensors` file."""
    path = Path(path)
    if not path.is_file():
        raise ValueError(f"VQ checkpoint {path}: no such file")
    if path.suffix == ".safetensors":
        from safetensors.torch import load_file

        try:
            return load_file(str(path), device="cpu")
        except Exception as err:  # safetensors raises its own error types for truncated/corrupt headers
            raise ValueError(f"VQ checkpoint {path}: not a valid safetensors file (truncated or corrupt?): {err}") from err
    try:
        blob = torch.load(path, map_location="cpu", weights_only=True)
    except Exception as err:  # pickle errors come in many types; name the file either way
        raise ValueError(f"VQ checkpoint {path}: cannot be read with weights_only=True ({err})") from err
    if isinstance(blob, dict) and isinstance(blob.get("model"), dict):
        return blob["model"]
    if isinstance(blob, dict) and blob and all(isinstance(v, torch.Tensor) for v in blob.values()):
        return blob
    keys = list(blob)[:8] if isinstance(blob, dict) else type(blob).__name__
    raise ValueError(f"VQ checkpoint {path}: expected a state dict under key 'model', found {keys}")


class VQTokenizer(FrozenSpace):
    """Discrete image space: pixels in [-1, 1] <-> codes [B, N] and their l2-normalised code vectors [B, N, D]."""

    discrete = True

    def __init__(
        self,
        variant: str = "VQ-16",
        codebook_size: int | None = None,
        codebook_dim: int | None = None,
        channels: int | None = None,
        channel_mult: list[int] | None = None,
        z_channels: int | None = None,
        num_res_blocks: int | None = None,
        image_size: int | None = None,
        checkpoint: str | None = None,
        trainable: bool = False,
        norm_groups: int | None = None,
        beta: float | None = None,
        entropy_weight: float | None = None,
    ) -> None:
        """Build `variant` (VQ-16, VQ-8, tiny) with any field overridden; None keeps the variant's value."""
        super().__init__()
        if variant not in VARIANTS:
            raise ValueError(f"VQTokenizer: unknown variant {variant!r}; expected one of {sorted(VARIANTS)}")
        overrides = {
            "codebook_size": codebook_size, "codebook_dim": codebook_dim, "channels": channels,
            "channel_mult": tuple(channel_mult) if channel_mult is not None else None, "z_channels": z_channels,
            "num_res_blocks": num_res_blocks, "image_size": image_size, "norm_groups": norm_groups,
            "beta": beta, "entropy_weight": entropy_weight,
        }
        cfg = dataclasses.replace(VARIANTS[variant], **{k: v for k, v in overrides.items() if v is not None})
        cfg.validate(f"VQTokenizer({variant})")
        self.variant, self.config = variant, cfg
        self.model = VQModel(cfg.channels, cfg.channel_mult, cfg.num_res_blocks, cfg.z_channels, cfg.codebook_size,
                             cfg.codebook_dim, cfg.norm_groups, cfg.dropout, cfg.beta, cfg.entropy_weight)
        self.checkpoint = checkpoint
        if checkpoint is not None:
            self.load_checkpoint(resolve_weights(checkpoint))
        self.grid = cfg.image_size // cfg.downsample
        self.num_tokens = self.grid * self.grid
        self.dim = cfg.codebook_dim
        self.codebook_size = cfg.codebook_size
        self._setup_pixels(cfg.image_size, VQ_MEAN, VQ_STD)
        self._set_trainable(trainable)

    def load_checkpoint(self, path: str | Path) -> None:
        """Load LlamaGen-format weights (strict: every name and shape must match)."""
        state = load_vq_state_dict(path)
        try:
            self.model.load_state_dict(state, strict=True)
        except RuntimeError as err:
            raise ValueError(f"VQ checkpoint {path} does not fit VQTokenizer({self.variant}): {err}") from err

    @property
    def can_decode(self) -> bool:
        """VQ codes decode back to pixels."""
        return True

    def encode(self, pixels: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """Pixels [B, 3, S, S] in [-1, 1] -> (code vectors [B, N, D], codes [B, N] row-major)."""
        check_pixels(pixels, self.image_size, "VQTokenizer.encode")
        with self._grad_context():
            _, codes, _ = self.model.encode(pixels)
            return self.model.quantize.lookup(codes), codes

    def embed_codes(self, codes: torch.Tensor) -> torch.Tensor:
        """Codes [B, N] -> the l2-normalised code vectors [B, N, D] (what `encode` returns as features)."""
        codes = codes.long()
        if codes.numel() and (int(codes.min()) < 0 or int(codes.max()) >= self.codebook_size):
            raise ValueError(
                f"VQTokenizer.embed_codes: codes must lie in [0, {self.codebook_size}), "
                f"got range [{int(codes.min())}, {int(codes.max())}]"
            )
        return self.model.quantize.lookup(codes)

    def _to_grid(self, features: torch.Tensor) -> torch.Tensor:
        """[B, N, D] -> [B, D, h, w] for a square grid of N positions."""
        if features.dim() != 3 or features.shape[-1] != self.dim:
            raise ValueError(f"VQTokenizer.decode: expected features [B, N, {self.dim}], got {tuple(features.shape)}")
        side = math.isqrt(features.shape[1])
        if side * side != features.shape[1]:
            raise ValueError(f"VQTokenizer.decode: {features.shape[1]} tokens do not form a square grid")
        return features.transpose(1, 2).reshape(features.shape[0], self.dim, side, side)

    def decode(self, features: torch.Tensor | None = None, codes: torch.Tensor | None = None) -> torch.Tensor:
        """Code vectors [B, N, D] or codes [B, N] -> pixels [B, 3, H, W] in [-1, 1] (not clamped)."""
        if (features is None) == (codes is None):
            raise ValueError("VQTokenizer.decode: pass exactly one of features or codes")
        with self._grad_context():
            if features is None:
                features = self.embed_codes(codes)
            return self.model.decode(self._to_grid(features))

    def decode_codes(self, codes: torch.Tensor) -> torch.Tensor:
        """Codes [B, N] -> pixels [B, 3, H, W] in [-1, 1]."""
        return self.decode(codes=codes)

    def forward(self, pixels: torch.Tensor) -> tuple[torch.Tensor, dict[str, torch.Tensor]]:
        """Training pass: pixels -> (reconstruction, {codebook, commitment[, entropy]} already weighted)."""
        check_pixels(pixels, self.image_size, "VQTokenizer.forward")
        return self.model(pixels)

    def codebook_usage(self) -> float:
        """Fraction of codes among the most recent training assignments (a collapse monitor)."""
        return self.model.quantize.usage()

    def describe(self) -> dict[str, Any]:
        """Summary for logs, with the variant and its downsampling factor."""
        return {**super().describe(), "name": f"VQTokenizer({self.variant})", "downsample": self.config.downsample}

"""A pixel view of a continuous space: a small deterministic decoder from its tokens to images.

A SigLIP/CLIP space has no decoder, so generated features could only be judged by cosine or by the test
image they retrieve. BLIP3-o and MetaMorph draw CLIP/SigLIP features through diffusion decoders; at 64 px
a deterministic conv decoder trained on renders (MSE + the attribute reader's loss, `tools.train_spaces
decoder`) is enough to show what the features say, and lets the attribute reader score continuous outputs
with the same metric as VQ outputs. Its ceiling (the reader on decoded *true* features) is on its card.

Files: one safetensors with the decoder's config in its metadata (`unizoo_decoder`), so a space can load
it by path or `zoo:NAME` and check that it was trained on tokens of its shape.
"""
from __future__ import annotations

import json
import math
from pathlib import Path
from typing import Any

import torch
from torch import nn
from torch.nn import functional as F

METADATA_KEY = "unizoo_decoder"


def _block(cin: int, cout: int) -> nn.Sequential:
    return nn.Sequential(nn.Conv2d(cin, cout, 3, padding=1), nn.GroupNorm(8, cout), nn.SiLU(),
                         nn.Conv2d(cout, cout, 3, padding=1), nn.GroupNorm(8, cout), nn.SiLU())


class FeatureDecoder(nn.Module):
    """Tokens [B, N, D] on a square grid -> pixels [B, 3, S, S] in [-1, 1] (x2 upsampling per stage)."""

    def __init__(self, num_tokens: int, dim: int, image_size: int, width: int = 128, **info: Any) -> None:
        super().__init__()
        grid = int(round(math.sqrt(num_tokens)))
        if grid * grid != num_tokens:
            raise ValueError(f"FeatureDecoder: {num_tokens} tokens do not form a square grid")
        stages = int(round(math.log2(image_size / grid)))
        if grid * 2 ** stages != image_size:
            raise ValueError(f"FeatureDecoder: image size {image_size} is not grid {grid} x a power of two")
        self.config = {"num_tokens": num_tokens, "dim": dim, "image_size": image_size, "width": width, **info}
        self.grid = grid
        self.norm = nn.LayerNorm(dim)
        self.stem = nn.Conv2d(dim, width, 1)
        widths = [max(32, width // 2 ** i) for i in range(stages + 1)]
        self.stages = nn.ModuleList(_block(widths[i], widths[i + 1]) for i in range(stages))
        self.first = _block(width, widths[0])
        self.out = nn.Conv2d(widths[-1], 3, 3, padding=1)

    def forward(self, tokens: torch.Tensor) -> torch.Tensor:
        """Decode features [B, N, D] to pixels [B, 3, S, S]."""
        b, n, d = tokens.shape
        if (n, d) != (self.config["num_tokens"], self.config["dim"]):
            raise ValueError(f"FeatureDecoder: expected tokens [B, {self.config['num_tokens']}, {self.config['dim']}], "
                             f"got {tuple(tokens.shape)}")
        h = self.stem(self.norm(tokens).transpose(1, 2).reshape(b, d, self.grid, self.grid))
        h = self.first(h)
        for stage in self.stages:
            h = stage(F.interpolate(h, scale_factor=2.0, mode="nearest"))
        return torch.tanh(self.out(h))


def save_decoder(decoder: FeatureDecoder, path: str | Path) -> str:
    """Write the decoder's weights and config (safetensors, atomically); return the sha256."""
    from zoo.catalog.hub_files import save_state_dict_file

    return save_state_dict_file(decoder.state_dict(), path,
                                metadata={METADATA_KEY: json.dumps(decoder.config, sort_keys=True)})


def load_decoder(path: str | Path) -> FeatureDecoder:
    """A FeatureDecoder from a file written by `save_decoder` (config from its metadata), frozen, eval mode."""
    from safetensors import safe_open

    from zoo.catalog.hub_files import load_state_dict_file

    state = load_state_dict_file(path)
    with safe_open(str(path), "pt") as handle:
        raw = (handle.metadata() or {}).get(METADATA_KEY)
    if raw is None:
        raise ValueError(f"{path}: not a unizoo pixel decoder (no {METADATA_KEY!r} metadata)")
    decoder = FeatureDecoder(**json.loads(raw))
    try:
        decoder.load_state_dict(state)
    except RuntimeError as err:
        raise ValueError(f"{path}: weights do not fit its own config: {err}") from err
    return decoder.eval().requires_grad_(False)


class PixelDecoderMixin:
    """Gives a continuous space `decode(features)` through an attached FeatureDecoder (`pixel_decoder=` path)."""

    # No class-level default: nn.Module keeps submodules in _modules, which a class attribute would shadow.

    def _attach_pixel_decoder(self, source: str | None, layer: int | None = None) -> None:
        """Load the decoder file `source` (path or `zoo:NAME`) and check it was trained on this space's tokens."""
        self.pixel_decoder_source = source
        if source is None:
            return
        from zoo.catalog.hub import resolve_weights

        decoder = load_decoder(resolve_weights(source))
        cfg, name = decoder.config, type(self).__name__
        if (cfg["num_tokens"], cfg["dim"], cfg["image_size"]) != (self.num_tokens, self.dim, self.image_size):
            raise ValueError(f"{name}: pixel decoder {source} decodes {cfg['num_tokens']} x {cfg['dim']} tokens to "
                             f"{cfg['image_size']} px; this space has {self.num_tokens} x {self.dim} at {self.image_size} px")
        if layer is not None and cfg.get("layer") is not None and cfg["layer"] != layer:
            raise ValueError(f"{name}: pixel decoder {source} was trained on layer {cfg['layer']}, this space reads "
                             f"layer {layer}")
        self.pixel_decoder = decoder

    @property
    def can_decode(self) -> bool:
        """True when a pixel decoder is attached."""
        return getattr(self, "pixel_decoder", None) is not None

    def decode(self, features: torch.Tensor | None = None, codes: torch.Tensor | None = None) -> torch.Tensor:
        """Features [B, N, D] -> pixels [B, 3, S, S] in this space's `preprocess` convention."""
        if not self.can_decode:
            raise NotImplementedError(f"{type(self).__name__} has no pixel decoder (pass pixel_decoder=...)")
        if features is None:
            raise ValueError(f"{type(self).__name__}.decode: a continuous space decodes features, not codes")
        with torch.no_grad():
            unit = (self.pixel_decoder(features.float()) + 1) / 2  # [0, 1] RGB
        mean = torch.tensor(self.mean, device=unit.device).view(1, 3, 1, 1)
        std = torch.tensor(self.std, device=unit.device).view(1, 3, 1, 1)
        return (unit - mean) / std

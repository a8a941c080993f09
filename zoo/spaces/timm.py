"""TimmSpace: a timm Vision Transformer's patch-token grid as a continuous ImageSpace."""
from __future__ import annotations

from pathlib import Path
from typing import Any

import timm
import torch

from zoo.spaces._common import FrozenSpace, check_divisible, check_pixels


class TimmSpace(FrozenSpace):
    """Patch tokens [B, N, embed_dim] of one block of a timm ViT (prefix tokens such as CLS dropped)."""

    discrete = False

    def __init__(
        self,
        model_name: str = "vit_tiny_patch16_224",
        pretrained: bool = False,
        checkpoint_path: str | None = None,
        img_size: int | None = None,
        patch_size: int | None = None,
        embed_dim: int | None = None,
        depth: int | None = None,
        num_heads: int | None = None,
        mean: list[float] | None = None,
        std: list[float] | None = None,
        layer: int = -1,
        norm: bool = True,
        seed: int = 0,
        trainable: bool = False,
    ) -> None:
        """Build `model_name` (sizes overridable); weights from timm (`pretrained`) or a local file.

        `layer` indexes the blocks (-1 = last); `norm` applies the model's final norm to that block's
        output, as timm's `forward_intermediates(norm=True)` does. Blocks after `layer` are pruned.
        """
        super().__init__()
        name = f"TimmSpace({model_name})"
        if img_size is not None and patch_size is not None:
            check_divisible(img_size, patch_size, "patch size", name)
        sizes = {"img_size": img_size, "patch_size": patch_size, "embed_dim": embed_dim, "depth": depth,
                 "num_heads": num_heads}
        kwargs: dict[str, Any] = {k: v for k, v in sizes.items() if v is not None}
        if checkpoint_path is not None:
            if not Path(checkpoint_path).is_file():
                raise ValueError(f"{name}: checkpoint_path {checkpoint_path} is not a file")
            # timm's own loader then handles head removal and position-embedding resizing.
            kwargs["pretrained_cfg_overlay"] = {"file": str(checkpoint_path)}
        try:
            with torch.random.fork_rng(devices=[]):
                torch.manual_seed(seed)
                model = timm.create_model(model_name, pretrained=pretrained or checkpoint_path is not None,
                                          num_classes=0, global_pool="", **kwargs)
        except RuntimeError as err:
            raise ValueError(f"{name}: cannot build or load the model ({err})") from err
        if not hasattr(model, "forward_intermediates") or not hasattr(model, "patch_embed"):
            raise ValueError(f"{name}: not a ViT-style timm model (needs patch_embed and forward_intermediates)")
        image_size = _square(model.patch_embed.img_size, "image size", name)
        patch = _square(model.patch_embed.patch_size, "patch size", name)
        check_divisible(image_size, patch, "patch size", name)
        n_blocks = len(model.blocks)
        if not -n_blocks <= layer < n_blocks:
            raise ValueError(f"{name}: layer {layer} is out of range for {n_blocks} blocks")
        self.block_index = layer % n_blocks
        model.prune_intermediate_layers([self.block_index], prune_norm=not norm, prune_head=True)
        self.model, self.model_name, self.layer, self.norm = model, model_name, layer, norm
        self.num_tokens = (image_size // patch) ** 2
        self.dim = int(model.embed_dim)
        if mean is None or std is None:
            data_cfg = timm.data.resolve_data_config({}, model=model)
            mean = mean if mean is not None else list(data_cfg["mean"])
            std = std if std is not None else list(data_cfg["std"])
        self._setup_pixels(image_size, mean, std)
        self._set_trainable(trainable)

    def encode(self, pixels: torch.Tensor) -> tuple[torch.Tensor, None]:
        """Pixels [B, 3, S, S] -> (patch tokens of the chosen block [B, N, D], None)."""
        check_pixels(pixels, self.image_size, type(self).__name__)
        with self._grad_context():
            feats = self.model.forward_intermediates(
                pixels, indices=[self.block_index], norm=self.norm, output_fmt="NLC", intermediates_only=True
            )[0]
        return feats, None

    def describe(self) -> dict[str, Any]:
        """Summary for logs, with the timm model name and the block read."""
        return {**super().describe(), "name": f"TimmSpace({self.model_name})", "layer": self.layer}


def _square(size: Any, what: str, where: str) -> int:
    """timm stores sizes as (h, w); spaces here are square."""
    h, w = (size, size) if isinstance(size, int) else tuple(size)
    if h != w:
        raise ValueError(f"{where}: {what} {(h, w)} is not square")
    return int(h)

"""HFVisionSpace: a transformers vision tower (SigLIP, CLIP, ...) as a continuous ImageSpace."""
from __future__ import annotations

import os
import warnings
from typing import Any, Literal

import torch
from torch import nn

from zoo.catalog.hub import hub_load_kwargs, resolve_weights, upstream_errors
from zoo.config import import_class
from zoo.spaces._common import FrozenSpace, check_divisible, check_pixels
from zoo.spaces.pixel_decoder import PixelDecoderMixin


def family_mean_std(config: Any) -> tuple[list[float], list[float]] | None:
    """The image processor defaults of the model family whose config class `config` is an instance of."""
    import transformers
    from transformers.image_utils import IMAGENET_STANDARD_MEAN, IMAGENET_STANDARD_STD, OPENAI_CLIP_MEAN, OPENAI_CLIP_STD

    by_config_class = {
        transformers.SiglipVisionConfig: (IMAGENET_STANDARD_MEAN, IMAGENET_STANDARD_STD),
        transformers.CLIPVisionConfig: (OPENAI_CLIP_MEAN, OPENAI_CLIP_STD),
    }
    for cls, (mean, std) in by_config_class.items():
        if isinstance(config, cls):
            return list(mean), list(std)
    return None


def prefix_token_count(model: nn.Module) -> int:
    """Tokens before the patch tokens (CLIP's class token: 1; SigLIP: 0), read off the embedding table size."""
    for module in model.modules():
        patches, positions = getattr(module, "num_patches", None), getattr(module, "num_positions", None)
        if isinstance(patches, int) and isinstance(positions, int):
            return positions - patches
    raise ValueError(f"{type(model).__name__}: no embeddings module with num_patches/num_positions found")


class HFVisionSpace(PixelDecoderMixin, FrozenSpace):
    """Hidden states of one layer of a transformers vision model: features [B, N, hidden_size], no codes."""

    discrete = False

    def __init__(
        self,
        model_class: str = "transformers.SiglipVisionModel",
        pretrained: str | None = None,
        config: dict[str, Any] | None = None,
        layer: int = -2,
        features: Literal["patch", "cls_patch"] = "patch",
        mean: list[float] | None = None,
        std: list[float] | None = None,
        seed: int = 0,
        trainable: bool = False,
        pixel_decoder: str | None = None,
        revision: str | None = None,
    ) -> None:
        """Load `pretrained` (hub id or folder) or build a random model from `config` kwargs.

        `revision`: the hub commit of `pretrained` to load (zoo entries pin one); ignored for folders.
        Offline, a hub model missing from the cache raises `WeightsNotFoundError` with one line.

        `pixel_decoder`: a `zoo.spaces.pixel_decoder` file (path or `zoo:NAME`) trained on this layer's tokens;
        it gives the space `decode(features)`, so written features can be looked at and read back.
        """
        super().__init__()
        name = f"HFVisionSpace({model_class})"
        if features not in ("patch", "cls_patch"):
            raise ValueError(f"{name}: features must be 'patch' or 'cls_patch', got {features!r}")
        if pretrained is not None and config is not None:
            raise ValueError(f"{name}: pass either pretrained or config, not both")
        cls = import_class(model_class)  # zoo.config: configs name classes, nothing is guessed
        config_cls = getattr(cls, "config_class", None)
        if config_cls is None or not hasattr(cls, "from_pretrained"):
            raise ValueError(f"{name}: {model_class} is not a transformers model class with a config_class")
        if pretrained is not None:
            source = resolve_weights(pretrained)
            # `zoo:NAME` resolves to the weights file of a Hugging Face folder: transformers loads the folder.
            source = os.path.dirname(source) if os.path.isfile(source) else source
            with upstream_errors(source, revision):
                self.model = cls.from_pretrained(source, **hub_load_kwargs(source, revision))
        else:
            with torch.random.fork_rng(devices=[]):
                torch.manual_seed(seed)
                self.model = cls(config_cls(**(config or {})))
        cfg = self.model.config
        self.pretrained, self.revision, self.layer, self.features = pretrained, revision, layer, features
        image_size, patch = int(cfg.image_size), int(cfg.patch_size)
        check_divisible(image_size, patch, "patch size", name)
        n_layers = int(cfg.num_hidden_layers)
        if not -(n_layers + 1) <= layer <= n_layers:
            raise ValueError(f"{name}: layer {layer} is out of range for {n_layers} layers "
                             f"(hidden_states has {n_layers + 1} entries: {-(n_layers + 1)}..{n_layers})")
        self.prefix_tokens = prefix_token_count(self.model)
        if features == "cls_patch" and self.prefix_tokens == 0:
            raise ValueError(f"{name}: features='cls_patch' needs a class token, and this model has none")
        grid = image_size // patch
        self.num_tokens = grid * grid + (self.prefix_tokens if features == "cls_patch" else 0)
        self.dim = int(cfg.hidden_size)
        if mean is None or std is None:
            mean, std = self._default_mean_std(source if pretrained is not None else None, cfg, name, mean, std,
                                               revision)
        self._setup_pixels(image_size, mean, std)
        self._attach_pixel_decoder(pixel_decoder, layer)
        self._set_trainable(trainable)

    @staticmethod
    def _default_mean_std(pretrained: str | None, cfg: Any, name: str, mean: list[float] | None,
                          std: list[float] | None, revision: str | None = None) -> tuple[list[float], list[float]]:
        """The checkpoint's image processor values when available, else the family defaults."""
        found = None
        if pretrained is not None:
            from transformers import AutoImageProcessor

            try:
                proc = AutoImageProcessor.from_pretrained(pretrained, **hub_load_kwargs(pretrained, revision))
                found = (list(proc.image_mean), list(proc.image_std))
            except (OSError, ValueError, AttributeError) as err:
                warnings.warn(f"{name}: no image processor config for {pretrained} ({err}); using family defaults",
                              stacklevel=3)
        found = found or family_mean_std(cfg)
        if found is None:
            raise ValueError(f"{name}: no default mean/std known for {type(cfg).__name__}; pass mean and std")
        return (mean if mean is not None else found[0]), (std if std is not None else found[1])

    def encode(self, pixels: torch.Tensor) -> tuple[torch.Tensor, None]:
        """Pixels [B, 3, S, S] -> (hidden states of `layer` [B, N, hidden_size], None)."""
        check_pixels(pixels, self.image_size, type(self).__name__)
        with self._grad_context():
            out = self.model(pixel_values=pixels, output_hidden_states=True)
            hidden = out.hidden_states[self.layer]
        return (hidden[:, self.prefix_tokens:] if self.features == "patch" else hidden), None

    def describe(self) -> dict[str, Any]:
        """Summary for logs, with the model class and the layer read."""
        return {**super().describe(), "name": f"HFVisionSpace({type(self.model).__name__})",
                "pretrained": self.pretrained, "layer": self.layer, "features": self.features}

"""The study's six architectures and the alignment experiment's misaligned VQ-VQ as specs, at tiny (CPU)
and paper scale.

Each preset is a `{"class_path", "init_args"}` spec, the same shape as the recipes' `model:` section,
so `zoo.config.build(preset("vq-vq"))` gives a model and tests can parametrize over `PRESETS`.
Sizes of the tiny scale come from CPU_FACTS.md §10 (64 px, 64 image tokens, Llama h128 x 2).
"""
from __future__ import annotations

from typing import Any, Literal

from zoo.config import merge

Scale = Literal["smoke", "tiny", "paper"]
TOKENIZER = "zoo/assets/tokenizers/smartwatch"

_LM = {
    "smoke": {"hidden_size": 64, "num_hidden_layers": 2, "num_attention_heads": 1, "intermediate_size": 256},
    "tiny": {"hidden_size": 128, "num_hidden_layers": 2, "num_attention_heads": 2, "intermediate_size": 512},
}
_VIT = {
    "smoke": {"image_size": 32, "patch_size": 8, "hidden_size": 32, "num_hidden_layers": 2, "num_attention_heads": 1, "intermediate_size": 64},
    "tiny": {"image_size": 64, "patch_size": 8, "hidden_size": 128, "num_hidden_layers": 4, "num_attention_heads": 2, "intermediate_size": 512},
}
_VQ = {
    "smoke": {"variant": "tiny", "image_size": 32, "channels": 8, "channel_mult": [1, 2, 2, 2], "codebook_size": 64},
    "tiny": {"variant": "tiny", "image_size": 64},
}


def backbone(scale: Scale = "tiny") -> dict[str, Any]:
    """The language model: a seeded tiny Llama with the shipped tokenizer, or Vicuna-7B-v1.5 + LoRA r128."""
    if scale == "paper":
        return {"class_path": "zoo.backbone.LanguageBackbone",
                "init_args": {"model": "lmsys/vicuna-7b-v1.5", "train_mode": "lora", "lora_r": 128, "lora_alpha": 256,
                              "lora_dropout": 0.05, "gradient_checkpointing": True}}
    config = {"model_type": "llama", "num_key_value_heads": _LM[scale]["num_attention_heads"],
              "max_position_embeddings": 512, "tie_word_embeddings": True, **_LM[scale]}
    return {"class_path": "zoo.backbone.LanguageBackbone", "init_args": {"config": config, "tokenizer": TOKENIZER}}


def siglip(scale: Scale = "tiny") -> dict[str, Any]:
    """SigLIP-B/16-224 (layer -2, 196 x 768) or a tiny random SigLIP tower of the same family."""
    if scale == "paper":
        return {"class_path": "zoo.spaces.hf.HFVisionSpace",
                "init_args": {"model_class": "transformers.SiglipVisionModel", "pretrained": "google/siglip-base-patch16-224", "layer": -2}}
    return {"class_path": "zoo.spaces.hf.HFVisionSpace",
            "init_args": {"model_class": "transformers.SiglipVisionModel", "config": dict(_VIT[scale]), "layer": -2}}


def clip(scale: Scale = "tiny") -> dict[str, Any]:
    """CLIP-L/14-336 (layer -2, 576 x 1024) or a tiny random CLIP tower."""
    if scale == "paper":
        return {"class_path": "zoo.spaces.hf.HFVisionSpace",
                "init_args": {"model_class": "transformers.CLIPVisionModel", "pretrained": "openai/clip-vit-large-patch14-336", "layer": -2}}
    return {"class_path": "zoo.spaces.hf.HFVisionSpace",
            "init_args": {"model_class": "transformers.CLIPVisionModel", "config": dict(_VIT[scale]), "layer": -2}}


def vq(scale: Scale = "tiny") -> dict[str, Any]:
    """LlamaGen VQ-16 (256 px, 16 x 16 codes of 16384) or a tiny VQ tokenizer of the same family."""
    if scale == "paper":
        return {"class_path": "zoo.spaces.vq.VQTokenizer",
                "init_args": {"variant": "VQ-16", "codebook_size": 16384, "codebook_dim": 8, "image_size": 256,
                              "checkpoint": "vq_ds16_c2i.pt"}}
    return {"class_path": "zoo.spaces.vq.VQTokenizer", "init_args": dict(_VQ[scale])}


def _shared(space: dict, projector: str, alpha: float, scale: Scale) -> dict[str, Any]:
    return {"class_path": "zoo.variants.SharedSpaceVLM",
            "init_args": {"backbone": backbone(scale), "space": space, "projector": projector, "alpha": alpha}}


def _separate(inp: dict, out: dict, und: str, gen: str, alpha: float, scale: Scale) -> dict[str, Any]:
    return {"class_path": "zoo.variants.SeparateSpacesVLM",
            "init_args": {"backbone": backbone(scale), "input_space": inp, "output_space": out,
                          "und_projector": und, "gen_projector": gen, "alpha": alpha}}


def _misaligned(space: dict, strength: float, scale: Scale) -> dict[str, Any]:
    return {"class_path": "zoo.variants.MisalignedVLM",
            "init_args": {"backbone": backbone(scale), "space": space, "strength": strength, "affine_seed": 0,
                          "projector": "linear", "alpha": 0.2}}


def preset(name: str, scale: Scale = "tiny", **overrides: Any) -> dict[str, Any]:
    """The spec of architecture `name` (see `PRESETS`) at `scale`, with `overrides` merged into init_args."""
    builders = {
        "siglip-siglip": lambda: _shared(siglip(scale), "mlp", 1.0, scale),
        "siglip-vq": lambda: _separate(siglip(scale), vq(scale), "mlp", "linear", 0.2, scale),
        "vq-siglip": lambda: _separate(vq(scale), siglip(scale), "linear", "mlp", 1.0, scale),
        "vq-vq": lambda: _shared(vq(scale), "linear", 0.2, scale),
        "clip-clip": lambda: _shared(clip(scale), "mlp", 1.0, scale),
        "clip-vq": lambda: _separate(clip(scale), vq(scale), "mlp", "linear", 0.2, scale),
        # PAPER.md §4: VQ-VQ read through a fixed random affine map (recipes/smartwatch/*/vq-vq-affine0.1.yaml).
        "vq-vq-affine0.1": lambda: _misaligned(vq(scale), 0.1, scale),
    }
    if name not in builders:
        raise ValueError(f"unknown preset {name!r}; expected one of {sorted(builders)}")
    spec = builders[name]()
    return {"class_path": spec["class_path"], "init_args": merge(spec["init_args"], overrides)}


PRESETS = ("siglip-siglip", "siglip-vq", "vq-siglip", "vq-vq", "clip-clip", "clip-vq", "vq-vq-affine0.1")

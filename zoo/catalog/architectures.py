"""The study's architectures at each scale: one table, registered in zoo.catalog.registry as `<arch>.<scale>` entries.

Each entry's spec is a `{"class_path", "init_args"}` dict, the shape of a recipe's `model:` section, so
`zoo.create_model("vq-vq.study")` builds what `recipes/smartwatch/study/vq-vq.yaml` trains. Scales:

* smoke: random tiny components (32 px, Llama h64 x 2): the fast tests (`tests/test_architectures.py`
  builds, trains, generates and round-trips every `*.smoke` entry);
* tiny:  `recipes/smartwatch/tiny/<arch>.yaml` (Llama h128 x 2, the shipped tiny spaces; CLIP is random);
* study: `recipes/smartwatch/study/<arch>.yaml` (Llama h128 x 4, grid places, the v2 spaces);
* paper: Vicuna-7B + LoRA r128 with SigLIP-B/16, CLIP-L/14 or LlamaGen VQ-16.

The tiny and study specs equal their recipes' `model:` sections (tests/test_architectures.py checks it).
Pretrained weights are tags on an entry: a shipped unified model names its architecture entry
(`ZooEntry.architecture`), and `zoo.catalog.registry.list_pretrained()` lists them per entry.
"""
from __future__ import annotations

from dataclasses import dataclass
from typing import Any, Literal

Scale = Literal["smoke", "tiny", "study", "paper"]
SCALES: tuple[str, ...] = ("smoke", "tiny", "study", "paper")
TOKENIZER = "zoo/assets/tokenizers/smartwatch"

# ----------------------------------------------------------------------------- components
# Random components of a size (smoke, tiny: also what tools/train_spaces.py trains the shipped towers from)
# and the paper's pretrained ones. Sizes of tiny come from CPU_FACTS.md §10 (64 px, 64 image tokens).
_LM = {
    "smoke": {"hidden_size": 64, "num_hidden_layers": 2, "num_attention_heads": 1, "intermediate_size": 256},
    "tiny": {"hidden_size": 128, "num_hidden_layers": 2, "num_attention_heads": 2, "intermediate_size": 512},
    "study": {"hidden_size": 128, "num_hidden_layers": 4, "num_attention_heads": 2, "intermediate_size": 512},
}
_VIT = {
    "smoke": {"image_size": 32, "patch_size": 8, "hidden_size": 32, "num_hidden_layers": 2, "num_attention_heads": 1, "intermediate_size": 64},
    "tiny": {"image_size": 64, "patch_size": 8, "hidden_size": 128, "num_hidden_layers": 4, "num_attention_heads": 2, "intermediate_size": 512},
}
_VQ = {
    "smoke": {"variant": "tiny", "image_size": 32, "channels": 8, "channel_mult": [1, 2, 2, 2], "codebook_size": 64},
    "tiny": {"variant": "tiny", "image_size": 64},
}
_HF, _VQ_CLASS = "zoo.spaces.hf.HFVisionSpace", "zoo.spaces.vq.VQTokenizer"


def backbone(scale: Scale = "tiny") -> dict[str, Any]:
    """The language model: a seeded tiny Llama with the shipped tokenizer, or Vicuna-7B-v1.5 + LoRA r128."""
    if scale == "paper":
        return {"class_path": "zoo.model.backbone.LanguageBackbone",
                "init_args": {"model": "lmsys/vicuna-7b-v1.5", "train_mode": "lora", "lora_r": 128, "lora_alpha": 256,
                              "lora_dropout": 0.05, "gradient_checkpointing": True}}
    config = {"model_type": "llama", "num_key_value_heads": _LM[scale]["num_attention_heads"],
              "max_position_embeddings": 512, "tie_word_embeddings": True, **_LM[scale]}
    return {"class_path": "zoo.model.backbone.LanguageBackbone", "init_args": {"config": config, "tokenizer": TOKENIZER}}


def siglip(scale: Scale = "tiny") -> dict[str, Any]:
    """SigLIP-B/16-224 (layer -2, 196 x 768) or a random SigLIP tower of the same family."""
    if scale == "paper":
        return {"class_path": _HF, "init_args": {"model_class": "transformers.SiglipVisionModel",
                                                 "pretrained": "google/siglip-base-patch16-224", "layer": -2}}
    return {"class_path": _HF, "init_args": {"model_class": "transformers.SiglipVisionModel",
                                             "config": dict(_VIT[scale]), "layer": -2}}


def clip(scale: Scale = "tiny") -> dict[str, Any]:
    """CLIP-L/14-336 (layer -2, 576 x 1024) or a random CLIP tower."""
    if scale == "paper":
        return {"class_path": _HF, "init_args": {"model_class": "transformers.CLIPVisionModel",
                                                 "pretrained": "openai/clip-vit-large-patch14-336", "layer": -2}}
    return {"class_path": _HF, "init_args": {"model_class": "transformers.CLIPVisionModel",
                                             "config": dict(_VIT[scale]), "layer": -2}}


def vq(scale: Scale = "tiny") -> dict[str, Any]:
    """LlamaGen VQ-16 (256 px, 16 x 16 codes of 16384) or a random VQ tokenizer of the same family."""
    if scale == "paper":
        return {"class_path": _VQ_CLASS, "init_args": {"variant": "VQ-16", "codebook_size": 16384, "codebook_dim": 8,
                                                       "image_size": 256, "checkpoint": "vq_ds16_c2i.pt"}}
    return {"class_path": _VQ_CLASS, "init_args": dict(_VQ[scale])}


def _shipped_siglip(name: str) -> dict[str, Any]:
    return {"class_path": _HF, "init_args": {"model_class": "transformers.SiglipVisionModel",
                                             "pretrained": f"zoo:{name}", "layer": 1}}


def _shipped_vq(name: str) -> dict[str, Any]:
    return {"class_path": _VQ_CLASS, "init_args": {"variant": "tiny", "image_size": 64, "checkpoint": f"zoo:{name}"}}


# What each scale reads and writes per space family, its language model, the init args every entry of the
# scale has, and what a write space adds (a pixel decoder, so written features can be scored as images).
SPACES = {
    "smoke": {"siglip": siglip("smoke"), "clip": clip("smoke"), "vq": vq("smoke")},
    "tiny": {"siglip": _shipped_siglip("siglip-smartwatch-tiny"), "clip": clip("tiny"),
             "vq": _shipped_vq("vq-smartwatch-tiny")},
    "study": {"siglip": _shipped_siglip("siglip-smartwatch-tiny-v2"), "vq": _shipped_vq("vq-smartwatch-tiny-v2")},
    "paper": {"siglip": siglip("paper"), "clip": clip("paper"), "vq": vq("paper")},
}
WRITE_ARGS = {"study": {"siglip": {"pixel_decoder": "zoo:siglip-smartwatch-tiny-v2-decoder"}}}
BACKBONES = {scale: backbone(scale) for scale in SCALES}
SCALE_ARGS = {"smoke": {}, "tiny": {"lr": 1e-3, "projector_lr": 1e-3},
              "study": {"image_positions": "grid", "lr": 2e-3, "projector_lr": 2e-3}, "paper": {}}
SCALE_NOTES = {
    "smoke": "random 32 px components, Llama h64 x 2 (fast tests)",
    "tiny": "recipes/smartwatch/tiny: Llama h128 x 2, the shipped tiny spaces (SigLIP layer 1)",
    "study": "recipes/smartwatch/study: Llama h128 x 4, grid places, the v2 spaces (SigLIP layer 1)",
    "paper": "Vicuna-7B + LoRA r128, SigLIP-B/16, CLIP-L/14-336, LlamaGen VQ-16",
}
RECIPE_DIRS = {"tiny": "recipes/smartwatch/tiny", "study": "recipes/smartwatch/study"}

# ----------------------------------------------------------------------------- the table


@dataclass(frozen=True)
class Architecture:
    """A variant class reading one space family and writing another; per-scale init args (None: no entry)."""

    variant: Literal["shared", "separate", "misaligned"]
    read: str
    write: str
    args: dict[str, Any]  # at every scale
    description: str
    smoke: dict[str, Any] | None = None
    tiny: dict[str, Any] | None = None
    study: dict[str, Any] | None = None
    paper: dict[str, Any] | None = None


_SIGLIP_STUDY = {"feedback_noise": 0.1, "cache_features": True}  # written SigLIP features: noisy feedback
_VQ_STUDY = {"condition_dropout": 0.1, "cache_codes": True}  # written codes: classifier-free guidance


def _affine(strength: float) -> Architecture:
    return Architecture("misaligned", "vq", "vq", {"strength": strength, "projector": "linear", "alpha": 0.2},
                        f"VQ-VQ read through a fixed random affine map of strength {strength} (PAPER.md §4)",
                        smoke={"affine_seed": 0}, paper={"affine_seed": 0},
                        tiny={"affine_seed": 0, "share_projector": True, "cache_codes": True},
                        study={"share_projector": True, **_VQ_STUDY})


ARCHITECTURES: dict[str, Architecture] = {
    "siglip-siglip": Architecture(
        "shared", "siglip", "siglip", {"projector": "mlp", "alpha": 1.0},
        "SigLIP read and written, MLP projector, 1 - cosine", smoke={}, paper={},
        tiny={"share_projector": True, "cache_features": True}, study={"share_projector": False, **_SIGLIP_STUDY}),
    "siglip-vq": Architecture(
        "separate", "siglip", "vq", {"read_projector": "mlp", "write_projector": "linear", "alpha": 0.2},
        "reads SigLIP features, writes VQ codes (CE)", smoke={}, paper={},
        tiny={"cache_codes": True}, study=_VQ_STUDY),
    "vq-siglip": Architecture(
        "separate", "vq", "siglip", {"read_projector": "linear", "write_projector": "mlp", "alpha": 1.0},
        "reads VQ code vectors, writes SigLIP features", smoke={}, paper={},
        tiny={"cache_codes": True}, study=_SIGLIP_STUDY),
    "vq-vq": Architecture(
        "shared", "vq", "vq", {"projector": "linear", "alpha": 0.2},
        "one VQ space read (code vectors) and written (codes), linear projector", smoke={}, paper={},
        tiny={"share_projector": True, "cache_codes": True}, study={"share_projector": True, **_VQ_STUDY}),
    "clip-clip": Architecture(
        "shared", "clip", "clip", {"projector": "mlp", "alpha": 1.0},
        "CLIP read and written (LLaVA-1.5's encoder), MLP projector", smoke={}, paper={},
        tiny={"share_projector": True, "cache_features": True}),
    "clip-vq": Architecture(
        "separate", "clip", "vq", {"read_projector": "mlp", "write_projector": "linear", "alpha": 0.2},
        "reads CLIP features, writes VQ codes", smoke={}, paper={}, tiny={"cache_codes": True}),
    **{f"vq-vq-affine{s}": _affine(s) for s in (0.1, 0.2, 0.3)},
}
_CLASSES = {"shared": "zoo.model.variants.SharedSpaceVLM", "separate": "zoo.model.variants.SeparateSpacesVLM",
            "misaligned": "zoo.model.variants.MisalignedVLM"}


def spec(name: str, scale: str) -> dict[str, Any]:
    """The `{"class_path", "init_args"}` spec of architecture `name` at `scale` (a fresh copy)."""
    import copy

    arch = ARCHITECTURES[name]
    extra = getattr(arch, scale)
    if extra is None:
        raise KeyError(f"architecture {name!r} has no {scale!r} scale")
    spaces = SPACES[scale]

    def space(family: str, write: bool) -> dict[str, Any]:
        out = copy.deepcopy(spaces[family])
        out["init_args"].update(WRITE_ARGS.get(scale, {}).get(family, {}) if write else {})
        return out

    if arch.variant == "separate":
        slots = {"read_space": space(arch.read, False), "write_space": space(arch.write, True)}
    else:
        slots = {"space": space(arch.write, True)}
    init_args = {"backbone": copy.deepcopy(BACKBONES[scale]), **slots, **arch.args, **extra, **SCALE_ARGS[scale]}
    return {"class_path": _CLASSES[arch.variant], "init_args": copy.deepcopy(init_args)}


def entries() -> list[dict[str, Any]]:
    """One ZooEntry dict (kind "architecture") per architecture and scale it has, named `<arch>.<scale>`."""
    out = []
    for name, arch in ARCHITECTURES.items():
        for scale in SCALES:
            if getattr(arch, scale) is None:
                continue
            recipe = f"{RECIPE_DIRS[scale]}/{name}.yaml" if scale in RECIPE_DIRS else None
            out.append({"name": f"{name}.{scale}", "kind": "architecture", **spec(name, scale),
                        "description": f"{arch.description}; {scale}: {SCALE_NOTES[scale]}",
                        "card": {"recipe": recipe}})
    return out

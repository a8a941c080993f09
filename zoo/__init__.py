"""unizoo models: image spaces, the language backbone, unified VLMs, the zoo registry.

The public API is importable from the package itself (`import zoo; zoo.create_model(...)`); names are
resolved on first use (PEP 562 `__getattr__`), so `import zoo` stays cheap (no transformers, no lightning)
until a name that needs them is touched.
"""
from __future__ import annotations

import importlib
from typing import TYPE_CHECKING, Any

from zoo.sample import IMAGE_MARKER, Sample

# public name -> module that defines it
_EXPORTS = {
    # the zoo registry
    "create_model": "zoo.registry", "list_models": "zoo.registry", "get_entry": "zoo.registry",
    "list_pretrained": "zoo.registry",
    "register": "zoo.registry", "register_from_json": "zoo.registry", "load_pretrained": "zoo.registry",
    "ZooEntry": "zoo.registry", "ModelCard": "zoo.registry", "UnknownModelError": "zoo.registry",
    # weights
    "WeightsSource": "zoo.hub", "WeightsNotFoundError": "zoo.hub", "ChecksumError": "zoo.hub",
    "fetch": "zoo.hub",
    # the unified models and their parts
    "UnifiedVLM": "zoo.unified", "SharedSpaceVLM": "zoo.variants", "SeparateSpacesVLM": "zoo.variants",
    "MisalignedVLM": "zoo.variants", "LanguageBackbone": "zoo.backbone", "UnifiedProcessor": "zoo.processor",
    # image spaces
    "ImageSpace": "zoo.spaces", "HFVisionSpace": "zoo.spaces", "TimmSpace": "zoo.spaces",
    "VQTokenizer": "zoo.spaces", "AffineSpace": "zoo.spaces",
    # decoding and evaluation
    # (`generate` itself is not re-exported: `zoo.generate` is the module of that name)
    "GenerationConfig": "zoo.generate", "generate_images": "zoo.generate",
    "evaluate_samples": "zoo.evaluation",
    # building from recipe-style specs
    "build": "zoo.config", "preset": "zoo.presets",
}

__all__ = ["IMAGE_MARKER", "Sample", *sorted(_EXPORTS)]

if TYPE_CHECKING:  # for type checkers and IDEs; at run time names load lazily below
    from zoo.backbone import LanguageBackbone
    from zoo.config import build
    from zoo.evaluation import evaluate_samples
    from zoo.generate import GenerationConfig, generate_images
    from zoo.hub import ChecksumError, WeightsNotFoundError, WeightsSource, fetch
    from zoo.presets import preset
    from zoo.processor import UnifiedProcessor
    from zoo.registry import (ModelCard, UnknownModelError, ZooEntry, create_model, get_entry, list_models,
                              list_pretrained, load_pretrained, register, register_from_json)
    from zoo.spaces import AffineSpace, HFVisionSpace, ImageSpace, TimmSpace, VQTokenizer
    from zoo.unified import UnifiedVLM
    from zoo.variants import MisalignedVLM, SeparateSpacesVLM, SharedSpaceVLM


def __getattr__(name: str) -> Any:
    module = _EXPORTS.get(name)
    if module is None:
        raise AttributeError(f"module 'zoo' has no attribute {name!r}")
    value = getattr(importlib.import_module(module), name)
    globals()[name] = value  # later look-ups skip this function
    return value


def __dir__() -> list[str]:
    return sorted(set(globals()) | set(_EXPORTS))

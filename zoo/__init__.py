"""unizoo models: image spaces, the language backbone, unified VLMs, the zoo registry.

The package is grouped by job:

* `zoo.model`: the unified model and its parts (UnifiedVLM and its variants, the language backbone,
  projectors and heads, objectives, the processor and tokenizer, decoding, training callbacks);
* `zoo.spaces`: the image spaces a model reads and writes (SigLIP/CLIP towers, VQ, affine, decoders);
* `zoo.catalog`: the zoo itself: the registry and its architecture table, presets, weights from the
  hub (sha256-verified) and checkpoint files;
* `zoo.eval`: evaluation (the test protocol, its writer and multi-process gathering) and metrics;
* `zoo.sample` (the data <-> model contract) and `zoo.config` (component specs, `build`) are shared by all.

Old module paths (`zoo.variants`, `zoo.registry`, ...: before this grouping every module sat in zoo/)
stay importable for existing checkpoints, zoo JSONs and code: the table is zoo/_legacy.py.

The public API is importable from the package itself (`import zoo; zoo.create_model(...)`); names are
resolved on first use (PEP 562 `__getattr__`), so `import zoo` stays cheap (no transformers, no lightning)
until a name that needs them is touched.
"""
from __future__ import annotations

import importlib
from typing import TYPE_CHECKING, Any

from zoo import _legacy
from zoo.sample import IMAGE_MARKER, Sample

_legacy.install()  # old module paths (zoo.variants, ...) import the modules they moved to

# public name -> module that defines it
_EXPORTS = {
    # the zoo registry
    **dict.fromkeys(["create_model", "list_models", "get_entry", "list_pretrained", "register", "register_from_json",
                     "load_pretrained", "ZooEntry", "ModelCard", "UnknownModelError"], "zoo.catalog.registry"),
    # weights
    **dict.fromkeys(["WeightsSource", "WeightsNotFoundError", "ChecksumError", "fetch"], "zoo.catalog.hub"),
    # the unified models and their parts
    "UnifiedVLM": "zoo.model.unified", "LanguageBackbone": "zoo.model.backbone",
    "UnifiedProcessor": "zoo.model.processor",
    **dict.fromkeys(["SharedSpaceVLM", "SeparateSpacesVLM", "MisalignedVLM"], "zoo.model.variants"),
    # image spaces
    **dict.fromkeys(["ImageSpace", "HFVisionSpace", "TimmSpace", "VQTokenizer", "AffineSpace"], "zoo.spaces"),
    # decoding and evaluation
    # (`generate` itself is not re-exported: `zoo.generate` is the old path of the module zoo.model.generate)
    "GenerationConfig": "zoo.model.generate", "generate_images": "zoo.model.generate",
    "evaluate_samples": "zoo.eval.evaluation",
    # building from recipe-style specs
    "build": "zoo.config", "preset": "zoo.catalog.presets",
}

__all__ = ["IMAGE_MARKER", "Sample", *sorted(_EXPORTS)]

if TYPE_CHECKING:  # for type checkers and IDEs; at run time names load lazily below
    from zoo.catalog.hub import ChecksumError, WeightsNotFoundError, WeightsSource, fetch
    from zoo.catalog.presets import preset
    from zoo.catalog.registry import (ModelCard, UnknownModelError, ZooEntry, create_model, get_entry, list_models,
                                      list_pretrained, load_pretrained, register, register_from_json)
    from zoo.config import build
    from zoo.eval.evaluation import evaluate_samples
    from zoo.model.backbone import LanguageBackbone
    from zoo.model.generate import GenerationConfig, generate_images
    from zoo.model.processor import UnifiedProcessor
    from zoo.model.unified import UnifiedVLM
    from zoo.model.variants import MisalignedVLM, SeparateSpacesVLM, SharedSpaceVLM
    from zoo.spaces import AffineSpace, HFVisionSpace, ImageSpace, TimmSpace, VQTokenizer


def __getattr__(name: str) -> Any:
    module = _EXPORTS.get(name)
    if module is None:
        raise AttributeError(f"module 'zoo' has no attribute {name!r}")
    value = getattr(importlib.import_module(module), name)
    globals()[name] = value  # later look-ups skip this function
    return value


def __dir__() -> list[str]:
    return sorted(set(globals()) | set(_EXPORTS))

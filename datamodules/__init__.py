"""unizoo data: sources of Samples and the one mixed-task DataModule.

The public API is importable from the package itself (`from datamodules import MixedTaskDataModule,
SmartWatchSource`); names are resolved on first use (PEP 562 `__getattr__`), so importing a light
submodule such as `datamodules.smartwatch.score` does not pay for lightning.
"""
from __future__ import annotations

import importlib
from typing import TYPE_CHECKING, Any

# public name -> module that defines it
_EXPORTS = {
    "MixedTaskDataModule": "datamodules.mixed", "resolve_mix": "datamodules.mixed",
    "SampleSource": "datamodules.base", "SPLITS": "datamodules.base",
    "SmartWatchSource": "datamodules.smartwatch", "LlavaJsonSource": "datamodules.llava",
    "DataValidationError": "datamodules.llava", "caption_records_to_generation": "datamodules.llava",
    "ResumableSampler": "datamodules.sampler",
    "score_vqa": "datamodules.smartwatch", "score_answer": "datamodules.smartwatch",
    "chance_levels": "datamodules.smartwatch",
}

__all__ = sorted(_EXPORTS)

if TYPE_CHECKING:  # for type checkers and IDEs; at run time names load lazily below
    from datamodules.base import SPLITS, SampleSource
    from datamodules.llava import DataValidationError, LlavaJsonSource, caption_records_to_generation
    from datamodules.mixed import MixedTaskDataModule, resolve_mix
    from datamodules.sampler import ResumableSampler
    from datamodules.smartwatch import SmartWatchSource, chance_levels, score_answer, score_vqa


def __getattr__(name: str) -> Any:
    module = _EXPORTS.get(name)
    if module is None:
        raise AttributeError(f"module 'datamodules' has no attribute {name!r}")
    value = getattr(importlib.import_module(module), name)
    globals()[name] = value  # later look-ups skip this function
    return value


def __dir__() -> list[str]:
    return sorted(set(globals()) | set(_EXPORTS))

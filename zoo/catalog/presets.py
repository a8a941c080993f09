"""`preset(name, scale)`: an architecture entry's spec from the registry (the table is zoo/catalog/architectures.py).

`preset("vq-vq", "smoke")` is the spec of the zoo entry `vq-vq.smoke`, so `zoo.config.build(preset(...))`
gives a model; the component helpers (`backbone`, `siglip`, `clip`, `vq`) are re-exported from there.
"""
from __future__ import annotations

import copy
from typing import Any

from zoo.catalog.architectures import ARCHITECTURES, TOKENIZER, Scale, backbone, clip, siglip, vq  # noqa: F401
from zoo.config import merge

PRESETS = tuple(ARCHITECTURES)


def preset(name: str, scale: Scale = "tiny", **overrides: Any) -> dict[str, Any]:
    """The spec of zoo entry `<name>.<scale>` (see `PRESETS`), a fresh copy with `overrides` merged into init_args."""
    from zoo.catalog.registry import _REGISTRY, list_models

    entry = _REGISTRY.get(f"{name}.{scale}")
    if entry is None or entry.kind != "architecture":
        raise ValueError(f"unknown preset {name!r} at scale {scale!r}; expected one of "
                         f"{list_models(kind='architecture')}")
    return {"class_path": entry.class_path, "init_args": merge(copy.deepcopy(entry.init_args), overrides)}

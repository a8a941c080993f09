"""Older names of zoo, kept working: the one table of what each is called now.

Two renames left names behind that checkpoints, zoo JSONs, recipes and users' code still hold:

* module paths (issue 15 item 6): until the package was grouped by job (zoo/model, zoo/catalog, zoo/eval)
  every module sat directly in zoo/, and files name classes by those paths (`zoo.variants.SharedSpaceVLM`,
  `zoo.backbone.LanguageBackbone`, `zoo.callbacks.ThroughputLogger`, ...). `install()` (called by
  `zoo/__init__.py`) puts a finder on `sys.meta_path` that answers an import of an old path with the module
  where the code lives now: the very same module object (`zoo.variants is zoo.model.variants`), imported
  only when the old name is, so `import zoo` stays cheap, and `isinstance`, pickling and
  `mock.patch("zoo.unified.X")` all see one module. `current_class_path` rewrites an old dotted name.
* the two directions (issue 15 item 3): a unified model *reads* images and *writes* them; constructor
  arguments, recipe keys, hyperparameters and state-dict keys once said und/gen and input/output
  (`input_space`, `und_projector`, `und_projector.0.weight`, `written_feature_norm`). RENAMED_ARGUMENTS and
  RENAMED_STATE_KEYS map them; zoo/catalog/checkpoint.py applies them where a checkpoint, a recipe or
  hyperparameters are read (`current_state_dict`, `current_hparams`, `accept_renamed_arguments`).

New code and files use today's names; these tables only grow (an old name is never reused).
"""
from __future__ import annotations

import importlib
import importlib.abc
import importlib.machinery
import sys
from types import ModuleType
from typing import Any

# old module path -> the module that holds its code now
MOVED_MODULES: dict[str, str] = {
    # the model and its parts
    "zoo.adapters": "zoo.model.adapters",
    "zoo.backbone": "zoo.model.backbone",
    "zoo.callbacks": "zoo.model.callbacks",
    "zoo.code_cache": "zoo.model.code_cache",
    "zoo.feedback": "zoo.model.feedback",
    "zoo.generate": "zoo.model.generate",
    "zoo.objectives": "zoo.model.objectives",
    "zoo.processor": "zoo.model.processor",
    "zoo.settings": "zoo.model.settings",
    "zoo.tokenizer": "zoo.model.tokenizer",
    "zoo.unified": "zoo.model.unified",
    "zoo.variants": "zoo.model.variants",
    # the catalog: which models exist, where their weights come from, how weight files are read
    "zoo.architectures": "zoo.catalog.architectures",
    "zoo.checkpoint": "zoo.catalog.checkpoint",
    "zoo.hub": "zoo.catalog.hub",
    "zoo.hub_files": "zoo.catalog.hub_files",
    "zoo.presets": "zoo.catalog.presets",
    "zoo.registry": "zoo.catalog.registry",
    # evaluation and metrics
    "zoo.eval_callback": "zoo.eval.writer",
    "zoo.eval_gather": "zoo.eval.gather",
    "zoo.evaluation": "zoo.eval.evaluation",
    "zoo.metrics": "zoo.eval.metrics",
    "zoo.validation": "zoo.eval.validation",
}


# constructor argument (recipe key, checkpoint hyperparameter) -> today's name
RENAMED_ARGUMENTS: dict[str, str] = {
    "input_space": "read_space",
    "output_space": "write_space",
    "und_projector": "read_projector",
    "gen_projector": "write_projector",
}

# state-dict key, or the start of one (ending in "."), -> today's
RENAMED_STATE_KEYS: dict[str, str] = {
    "input_space.": "read_space.",
    "output_space.": "write_space.",
    "und_projector.": "read_projector.",
    "gen_projector.": "write_projector.",
    "written_feature_norm": "write_feature_norm",
}


def current_state_key(key: str) -> str:
    """`und_projector.0.weight` -> `read_projector.0.weight`; keys that were never renamed unchanged."""
    for old, new in RENAMED_STATE_KEYS.items():
        if key == old or (old.endswith(".") and key.startswith(old)):
            return new + key[len(old):]
    return key


def current_arguments(init_args: dict[str, Any]) -> tuple[dict[str, Any], list[str]]:
    """(`init_args` with renamed keys under today's names, the old names found); a copy, order kept."""
    found = [k for k in init_args if k in RENAMED_ARGUMENTS]
    if not found:
        return init_args, []
    clash = [k for k in found if RENAMED_ARGUMENTS[k] in init_args]
    if clash:
        raise ValueError(f"both old and new names given: {', '.join(f'{k}/{RENAMED_ARGUMENTS[k]}' for k in clash)}")
    return {RENAMED_ARGUMENTS.get(k, k): v for k, v in init_args.items()}, found


def current_module(name: str) -> str:
    """The module path that holds `name`'s code now (`name` itself when it never moved)."""
    return MOVED_MODULES.get(name, name)


def current_class_path(path: str) -> str:
    """`zoo.variants.SharedSpaceVLM` -> `zoo.model.variants.SharedSpaceVLM`; other strings unchanged."""
    module, dot, attr = path.rpartition(".")
    return f"{MOVED_MODULES[module]}.{attr}" if dot and module in MOVED_MODULES else path


def current_class_paths(value: Any) -> Any:
    """A copy of a spec or hparams dict (nested) whose `class_path`/`_class_path` strings name the new modules."""
    if isinstance(value, dict):
        return {k: current_class_path(v) if k in ("class_path", "_class_path") and isinstance(v, str)
                else current_class_paths(v) for k, v in value.items()}
    if isinstance(value, (list, tuple)):
        return type(value)(current_class_paths(v) for v in value)
    return value


class _MovedModuleLoader(importlib.abc.Loader):
    """Loads an old path as the module it moved to (the same object, not a copy)."""

    def __init__(self, target: str) -> None:
        self.target = target
        self.own_spec: importlib.machinery.ModuleSpec | None = None

    def create_module(self, spec: importlib.machinery.ModuleSpec) -> ModuleType:
        module = importlib.import_module(self.target)
        self.own_spec = module.__spec__
        return module

    def exec_module(self, module: ModuleType) -> None:
        # Nothing to run (the module ran under its own name); the import system stamped the old name's
        # spec on it meanwhile: give it back its own.
        module.__spec__ = self.own_spec


class _MovedModuleFinder(importlib.abc.MetaPathFinder):
    """Finds the old module paths of MOVED_MODULES (and nothing else)."""

    def find_spec(self, fullname: str, path: Any = None, target: Any = None) -> importlib.machinery.ModuleSpec | None:
        new = MOVED_MODULES.get(fullname)
        return None if new is None else importlib.machinery.ModuleSpec(fullname, _MovedModuleLoader(new))


def install() -> None:
    """Put the old-path finder on sys.meta_path once (before the path finder, which would find nothing)."""
    if not any(isinstance(f, _MovedModuleFinder) for f in sys.meta_path):
        sys.meta_path.insert(0, _MovedModuleFinder())

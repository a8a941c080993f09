"""Component specs: every configurable module remembers how it was built, so it can be rebuilt.

A spec is the same `{"class_path": ..., "init_args": {...}}` shape the YAML recipes use, so a model
built by LightningCLI, by `zoo.create_model` or by hand saves one self-describing config in its
checkpoint, and `build(spec)` rebuilds it with no recipe file at hand.
"""
from __future__ import annotations

import functools
import importlib
import inspect
from typing import Any

_SPEC_ATTR = "_init_args"


class Configurable:
    """Mixin recording the class and the init arguments of the outermost constructor call."""

    def __init_subclass__(cls, **kwargs: Any) -> None:
        super().__init_subclass__(**kwargs)
        if "__init__" not in cls.__dict__:
            return
        original = cls.__init__
        signature = inspect.signature(original)

        @functools.wraps(original)
        def __init__(self, *args: Any, **kw: Any) -> None:
            # Only the outermost call records: subclasses calling super().__init__ must not overwrite it.
            if _SPEC_ATTR not in self.__dict__:
                bound = signature.bind(self, *args, **kw)
                bound.apply_defaults()
                recorded = dict(bound.arguments)
                recorded.pop(next(iter(signature.parameters)))  # self
                for name, param in signature.parameters.items():
                    if param.kind is inspect.Parameter.VAR_KEYWORD:
                        recorded.update(recorded.pop(name, {}))
                    elif param.kind is inspect.Parameter.VAR_POSITIONAL:
                        recorded.pop(name, None)
                object.__setattr__(self, _SPEC_ATTR, recorded)
            original(self, *args, **kw)

        cls.__init__ = __init__  # type: ignore[method-assign]

    def spec(self) -> dict[str, Any]:
        """This object's `{"class_path", "init_args"}`, nested components included."""
        cls = type(self)
        raw = self.__dict__.get(_SPEC_ATTR, {})
        return {"class_path": f"{cls.__module__}.{cls.__qualname__}", "init_args": _to_plain(raw)}


def _to_plain(value: Any) -> Any:
    if isinstance(value, Configurable):
        return value.spec()
    if isinstance(value, dict):
        return {k: _to_plain(v) for k, v in value.items()}
    if isinstance(value, (list, tuple)):
        return [_to_plain(v) for v in value]
    if value is None or isinstance(value, (str, int, float, bool)):
        return value
    raise TypeError(f"cannot record init argument of type {type(value).__name__} in a config spec")


def import_class(class_path: str) -> type:
    """Import `package.module.Class` (configs name classes; nothing is guessed from names)."""
    module_name, _, attr = class_path.rpartition(".")
    if not module_name:
        raise ValueError(f"class_path {class_path!r} must be 'package.module.Class'")
    try:
        module = importlib.import_module(module_name)
    except ImportError as err:
        raise ValueError(f"class_path {class_path!r}: cannot import module {module_name!r}: {err}") from err
    try:
        return getattr(module, attr)
    except AttributeError:
        raise ValueError(f"class_path {class_path!r}: cannot import {attr!r}: module {module_name!r} has no such name") from None


def is_spec(value: Any) -> bool:
    """Whether `value` looks like a `{"class_path": ..., "init_args": ...}` dict."""
    return isinstance(value, dict) and "class_path" in value


def build(value: Any) -> Any:
    """Instantiate a spec (recursively); objects and plain values pass through unchanged."""
    if is_spec(value):
        unknown = set(value) - {"class_path", "init_args", "dict_kwargs"}
        if unknown:
            raise ValueError(f"spec for {value['class_path']!r} has unknown keys {sorted(unknown)}")
        cls = import_class(value["class_path"])
        args = {k: build(v) for k, v in (value.get("init_args") or {}).items()}
        args.update(value.get("dict_kwargs") or {})
        return cls(**args)
    return value


def merge(base: dict[str, Any], override: dict[str, Any]) -> dict[str, Any]:
    """Nested dict merge: `override` wins, dicts merge key by key."""
    out = dict(base)
    for key, value in override.items():
        out[key] = merge(out[key], value) if isinstance(out.get(key), dict) and isinstance(value, dict) else value
    return out


def resolve_asset(path: str) -> str:
    """A path as given, or, when it names a file shipped inside the package (`zoo/assets/...`), its installed location."""
    import os
    from pathlib import Path

    if os.path.exists(path) or not path.replace("\\", "/").startswith("zoo/assets/"):
        return path
    packaged = Path(__file__).resolve().parent.parent / path
    return str(packaged) if packaged.exists() else path

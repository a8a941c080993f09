"""Checkpoint handling in one place: reading files safely, checking a state dict against a model,
copying matching weights, which frozen weights checkpoints leave out, and which settings may change.

Used by `UnifiedVLM` (its `load_state_dict`, `load_matching_weights`, `reloadable_prefixes`,
`frozen_state_keys`, `on_save_checkpoint` delegate here), `zoo.catalog.registry.load_pretrained`, `unizoo fit|test --ckpt_path`
(tools/lightning_cli.py) and `unizoo zoo publish` (tools/zoo_cmd.py).
"""
from __future__ import annotations

import fnmatch
import functools
import inspect
import logging
import os
import pickle
import warnings
from collections import OrderedDict
from collections.abc import Callable, Iterable, Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch
from torch import nn

from zoo import _legacy
from zoo.catalog.hub_files import UnsafeCheckpointError

__all__ = ["ARCHITECTURE_COMPONENTS", "OPTIONAL_STATE_KEYS", "RELOADABLE_ARGS", "RUN_SETTINGS",
           "CheckpointMismatchError", "StateDictMismatch", "UnsafeCheckpointError", "accept_renamed_arguments",
           "compare_state_dict", "check_state_dict", "current_hparams", "current_state_dict", "frozen_state_keys",
           "load_matching_weights", "prepare_for_saving", "read_checkpoint", "reloadable_prefixes",
           "setting_differences"]

# Constructor arguments of UnifiedVLM (and its variants) that change how the model trains, caches or
# decodes, not which weights it has: a checkpoint may be resumed or tested with other values. Every other
# argument is architecture and must match (`unizoo fit|test --ckpt_path`). Kept as an explicit list, not
# derived from "does not change the state dict": some architecture arguments leave the state dict's keys
# and shapes as they are (share_projector ties two projectors under both names; MisalignedVLM's strength
# and affine_seed only change buffer values, which checkpoints may even leave out as frozen), so a shape
# comparison alone would let a resumed run silently swap them. tests/test_checkpoint_module.py fails when
# a new constructor argument is neither listed here nor changes the state dict.
RUN_SETTINGS = frozenset({
    # optimisation
    "lr", "projector_lr", "weight_decay", "warmup_ratio", "alpha",
    # training-time regularisers (no weights of their own)
    "feedback_noise", "feedback_corruption", "condition_dropout", "train_on_inputs",
    # data handling: truncation length and the encoder-output cache
    "max_length", "cache_codes", "cache_features",
    # decoding at evaluation
    "eval_max_new_tokens", "eval_temperature", "eval_guidance_scale", "eval_image_temperature", "eval_image_top_k",
    # where the first weights came from (its weights are in the checkpoint now)
    "init_from",
    # Lightning's bookkeeping in hparams, not an argument
    "_instantiator",
})

# Constructor arguments that hold components (a backbone or image space spec): a difference inside one is
# always another architecture.
ARCHITECTURE_COMPONENTS = frozenset({"backbone", "read_space", "write_space", "space"})

# Init args of a component that say where its weights come from: such a component rebuilds its frozen
# weights from that source, so checkpoints need not carry them.
RELOADABLE_ARGS = ("pretrained", "checkpoint", "model", "checkpoint_path")

# State keys a checkpoint may lack: write_feature_norm came later; older checkpoints feed back raw
# predictions (zoo/model/unified.py explains the buffer).
OPTIONAL_STATE_KEYS = frozenset({"write_feature_norm"})

_WILDCARDS = frozenset("*?[")


class CheckpointMismatchError(ValueError, RuntimeError):
    """A checkpoint whose weights or architecture do not fit the model (another architecture or size)."""
    # ValueError: the CLI reports it as a bad input; RuntimeError: what torch's load_state_dict raises,
    # so code written against plain nn.Module catches it too.


# ----------------------------------------------------------------------------- reading


def read_checkpoint(path: str | os.PathLike, *, lightning: bool = True) -> dict[str, Any]:
    """A checkpoint dict loaded with weights_only=True (memory-mapped where possible); errors name the file."""
    path = Path(path)
    try:
        try:
            # mmap: a large checkpoint is read lazily, so checking its keys and shapes costs little memory.
            ckpt = torch.load(path, map_location="cpu", weights_only=True, mmap=True)
        except RuntimeError as err:
            if "mmap" not in str(err):
                raise
            ckpt = torch.load(path, map_location="cpu", weights_only=True)  # legacy (non-zip) format
    except pickle.UnpicklingError:
        # weights_only refuses anything but tensors and plain containers: a pickle can run arbitrary code.
        raise UnsafeCheckpointError(
            f"{path}: refused: the checkpoint holds pickled objects other than tensors and plain containers; "
            f"unizoo loads checkpoints only with torch.load(weights_only=True)") from None
    except FileNotFoundError:
        raise FileNotFoundError(f"{path}: no such checkpoint file") from None
    except Exception as err:  # truncated zip, wrong magic number, ...
        raise ValueError(f"{path}: cannot read checkpoint (truncated or corrupt?): {err}") from None
    if not isinstance(ckpt, dict):
        raise ValueError(f"{path}: expected a checkpoint dict, found {type(ckpt).__name__}")
    if lightning and not isinstance(ckpt.get("state_dict"), dict):
        raise ValueError(f"{path}: not a Lightning checkpoint (no 'state_dict' dict)")
    return ckpt


# ----------------------------------------------------------------------------- older names
# What older checkpoints, recipes and code call things (the tables: zoo/_legacy.py), read as today's names.
# The two directions of a unified model are "read" and "write" (read_space, write_projector, ...); before,
# they were und/gen and input/output.


def current_state_dict(state: Mapping[str, Any]) -> Mapping[str, Any]:
    """`state` with the keys of older checkpoints under today's names (`und_projector.0.weight` ->
    `read_projector.0.weight`, `written_feature_norm` -> `write_feature_norm`); `state` itself when none is old."""
    if not any(_legacy.current_state_key(k) != k for k in state):
        return state
    out: OrderedDict[str, Any] = OrderedDict()
    for key, value in state.items():
        new = _legacy.current_state_key(key)
        if new != key and new in state:
            raise CheckpointMismatchError(f"state dict holds both {key!r} and its new name {new!r}")
        out[new] = value
    metadata = getattr(state, "_metadata", None)  # torch's per-module versions, keyed by module prefix
    if metadata is not None:
        out._metadata = type(metadata)((_legacy.current_state_key(f"{k}.")[:-1] if k else k, v)  # type: ignore[attr-defined]
                                       for k, v in metadata.items())
    return out


def current_hparams(hparams: Mapping[str, Any]) -> dict[str, Any]:
    """A checkpoint's `hyper_parameters` (or a `{"class_path", "init_args"}` spec) in today's names, to
    compare or rebuild: class paths of modules that moved (`zoo.variants.SharedSpaceVLM`) name their new
    place, and renamed constructor arguments (`input_space`, `und_projector`, ...) their new names."""
    out, _ = _legacy.current_arguments(_legacy.current_class_paths(dict(hparams)))
    if "class_path" in out and isinstance(out.get("init_args"), dict):
        out["init_args"], _ = _legacy.current_arguments(out["init_args"])
    return out


def current_checkpoint(path: Any) -> dict[str, Any] | None:
    """Checkpoint file `path` in today's names (`current_hparams`, `current_state_dict`) when it was written
    under older ones; None when it holds none (or is no local Lightning checkpoint this can read)."""
    if not isinstance(path, (str, os.PathLike)) or not os.path.isfile(path):
        return None
    try:
        ckpt = read_checkpoint(path)
    except (ValueError, OSError):
        return None  # Lightning reads it (or reports it) itself
    hparams = ckpt.get("hyper_parameters")
    current = current_hparams(hparams) if isinstance(hparams, Mapping) else hparams
    state = current_state_dict(ckpt["state_dict"])
    if current == hparams and state is ckpt["state_dict"]:
        return None
    return {**ckpt, "hyper_parameters": current, "state_dict": state}


def accept_renamed_arguments(function: Callable[..., Any]) -> Callable[..., Any]:
    """`function` (a constructor) that also takes the old names of its renamed arguments, with a FutureWarning.

    Only names it has today are mapped (`input_space` where it takes `read_space`); passing both is a TypeError.
    """
    params = inspect.signature(function).parameters
    renames = {old: new for old, new in _legacy.RENAMED_ARGUMENTS.items() if old not in params and new in params}
    if not renames:
        return function
    where = function.__qualname__.removesuffix(".__init__")

    @functools.wraps(function)
    def wrapper(*args: Any, **kwargs: Any) -> Any:
        for old, new in renames.items():
            if old in kwargs:
                if new in kwargs:
                    raise TypeError(f"{where}: got both {old!r} and its new name {new!r}")
                warnings.warn(f"{where}: argument {old!r} is now called {new!r} (a model reads and writes images: "
                              f"read_*/write_*); the old name still works but will go", FutureWarning, stacklevel=2)
                kwargs[new] = kwargs.pop(old)
        return function(*args, **kwargs)

    return wrapper


# ----------------------------------------------------------------------------- checking


@dataclass(frozen=True)
class StateDictMismatch:
    """How a state dict differs from a model's: keys of another shape, keys it lacks, keys the model lacks."""

    shapes: tuple[str, ...] = ()
    missing: tuple[str, ...] = ()
    unexpected: tuple[str, ...] = ()

    def __bool__(self) -> bool:
        return bool(self.shapes or self.missing or self.unexpected)

    def describe(self, n: int = 5) -> str:
        """One line naming up to `n` keys of each kind of difference (kinds without any are left out)."""
        parts = []
        for items, what in ((self.shapes, "shape mismatch"), (self.missing, "missing key"),
                            (self.unexpected, "unexpected key")):
            if items:
                more = f", ... ({len(items)} in all)" if len(items) > n else ""
                plural = "" if len(items) == 1 else "es" if what.endswith("ch") else "s"
                parts.append(f"{len(items)} {what}{plural} [{', '.join(items[:n])}{more}]")
                if what == "unexpected key":  # torch's word; say what it means
                    parts[-1] += " (the model does not have them)" if plural else " (the model does not have it)"
        return "; ".join(parts) or "no differences"


def _is_allowed(key: str, exact: set[str], patterns: list[str]) -> bool:
    return key in exact or any(fnmatch.fnmatchcase(key, p) for p in patterns)


def compare_state_dict(state: Mapping[str, Any], own: Mapping[str, Any],
                       allowed_missing: Iterable[str] = ()) -> StateDictMismatch:
    """The differences of `state` from a model's own state dict `own`; `allowed_missing` keys or globs may be absent."""
    allowed = list(allowed_missing)
    # Exact keys by set lookup (a model lists thousands of frozen keys); only entries with wildcards go to fnmatch.
    patterns = [a for a in allowed if _WILDCARDS & set(a)]
    exact = set(allowed) - set(patterns)
    shapes = tuple(sorted(f"{k} {tuple(v.shape)} vs model {tuple(own[k].shape)}" for k, v in state.items()
                          if k in own and hasattr(v, "shape") and tuple(v.shape) != tuple(own[k].shape)))
    missing = tuple(sorted(k for k in own if k not in state and not _is_allowed(k, exact, patterns)))
    unexpected = tuple(sorted(k for k in state if k not in own))
    return StateDictMismatch(shapes, missing, unexpected)


def check_state_dict(state: Mapping[str, Any], own: Mapping[str, Any], *, where: str,
                     allowed_missing: Iterable[str] = (), missing_ok: bool = False, unexpected_ok: bool = False,
                     hint: str = "was it written by another architecture?") -> None:
    """Raise CheckpointMismatchError naming the keys unless `state` fits `own` (shapes always count)."""
    found = compare_state_dict(state, own, allowed_missing)
    # Shapes always count: a tensor of another shape can never be loaded. Missing and unexpected keys may
    # be fine for a partial load (strict=False, a partial zoo entry).
    found = StateDictMismatch(found.shapes, () if missing_ok else found.missing,
                              () if unexpected_ok else found.unexpected)
    if found:
        raise CheckpointMismatchError(f"{where}: {found.describe()}{'; ' + hint if hint else ''}")


def setting_differences(saved: Any, built: Any, settings: Iterable[str] = RUN_SETTINGS, where: str = "") -> list[str]:
    """'path: checkpoint X, recipe Y' for each differing hyperparameter, top-level `settings` left out."""
    skip = frozenset(settings)
    if isinstance(saved, dict) and isinstance(built, dict):
        out = []
        for key in sorted(set(saved) | set(built), key=str):
            if where == "" and key in skip:
                continue
            out += setting_differences(saved.get(key), built.get(key), (), f"{where}.{key}" if where else str(key))
        return out
    if isinstance(saved, (list, tuple)) and isinstance(built, (list, tuple)):
        saved, built = list(saved), list(built)  # YAML gives lists where the code wrote tuples
    return [] if saved == built else [f"{where}: checkpoint {saved!r}, recipe {built!r}"]


# ----------------------------------------------------------------------------- loading


def _init_state(path: str) -> dict[str, Any]:
    """The state dict `init_from` names, under today's key names (see `load_matching_weights`)."""
    from zoo.catalog import hub

    if path.startswith(hub.ZOO_PREFIX):
        from zoo.catalog.registry import entry_state_dict, get_entry

        return entry_state_dict(get_entry(path[len(hub.ZOO_PREFIX):]))[0]
    if not os.path.isfile(path):
        raise FileNotFoundError(f"init_from: checkpoint {path!r} not found")
    if path.endswith(".safetensors"):
        return current_state_dict(hub.load_state_dict_file(path))
    # A Lightning checkpoint or a bare state dict: both are accepted as a starting point.
    state = read_checkpoint(path, lightning=False)
    return current_state_dict(state["state_dict"] if isinstance(state.get("state_dict"), dict) else state)


def load_matching_weights(model: nn.Module, path: str | os.PathLike) -> dict[str, int]:
    """Copy the weights of checkpoint `path` whose names and shapes match `model`'s; return the counts.

    `path`: a Lightning checkpoint, a bare state dict (.pt/.ckpt) or a .safetensors file, or `zoo:NAME`
    (the sha256-checked weights of that zoo entry, e.g. a published stage-1 model).
    """
    state = _init_state(str(path))
    own = model.state_dict()
    matched = {k: v for k, v in state.items() if k in own and hasattr(v, "shape") and own[k].shape == v.shape}
    if not matched:
        raise CheckpointMismatchError(f"init_from {path}: no weight matches this model's names and shapes")
    # nn.Module's own load: the model's strict override would refuse the keys left out on purpose.
    nn.Module.load_state_dict(model, matched, strict=False)
    counts = {"loaded": len(matched), "skipped": len(state) - len(matched)}
    logging.getLogger(__name__).info("init_from %s: %s", path, counts)
    return counts


# ----------------------------------------------------------------------------- frozen weights


def reloadable_prefixes(model: nn.Module, components: Iterable[str] = ("backbone", "read_space", "write_space")) -> list[str]:
    """State-dict prefixes of `model`'s components that rebuild their weights from a source (hub id, path)."""
    prefixes = []
    for name in components:
        module = getattr(model, name, None)
        if module is None or not hasattr(module, "spec"):
            continue
        args = module.spec()["init_args"]
        # A wrapper (AffineSpace) names its source in the wrapped component's init args.
        nested = args.get("base") if isinstance(args.get("base"), dict) else {}
        nested_args = nested.get("init_args") or {}
        if any(args.get(k) for k in RELOADABLE_ARGS) or any(nested_args.get(k) for k in RELOADABLE_ARGS):
            prefixes.append(f"{name}.")
    return prefixes


def frozen_state_keys(model: nn.Module, prefixes: Iterable[str]) -> set[str]:
    """Keys checkpoints leave out: frozen state under `prefixes`, which reloads from its source instead."""
    prefixes = tuple(prefixes)
    if not prefixes:
        return set()
    # Trainable weights (LoRA adapters, unfrozen layers) under those prefixes are kept: no source has them.
    trainable = {n for n, p in model.named_parameters() if p.requires_grad}
    return {k for k in model.state_dict() if k.startswith(prefixes) and k not in trainable}


# ----------------------------------------------------------------------------- saving


def prepare_for_saving(model: nn.Module, checkpoint: dict[str, Any], frozen: Iterable[str]) -> None:
    """Lightning's `on_save_checkpoint` of a model: keep trainable weights and the config, drop the `frozen`
    keys (they reload from their source), and refuse non-finite trainable weights."""
    if checkpoint.get("hyper_parameters", {}).get("init_from"):
        checkpoint["hyper_parameters"]["init_from"] = None  # its weights are in this checkpoint now
    for name, param in model.named_parameters():
        if param.requires_grad and not torch.isfinite(param).all():
            raise FloatingPointError(f"refusing to checkpoint non-finite weights ({name}); the last good checkpoint is kept")
    frozen = set(frozen)
    checkpoint["state_dict"] = {k: v for k, v in checkpoint["state_dict"].items() if k not in frozen}

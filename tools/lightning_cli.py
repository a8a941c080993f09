"""`unizoo fit|validate|test|predict`: LightningCLI over UnifiedVLM subclasses and the mixed-task DataModule."""
from __future__ import annotations

import os
import tempfile
from pathlib import Path
from typing import Any

import yaml
from lightning.pytorch.cli import LightningCLI, SaveConfigCallback

BASE_KEY = "_base"


def _deep_merge(base: dict[str, Any], override: dict[str, Any]) -> dict[str, Any]:
    out = dict(base)
    for key, value in override.items():
        if isinstance(out.get(key), dict) and isinstance(value, dict):
            # A new class_path replaces the component whole: its old init_args may not fit the new class.
            if "class_path" in value and value.get("class_path") != out[key].get("class_path"):
                out[key] = value
            else:
                out[key] = _deep_merge(out[key], value)
        else:
            out[key] = value
    return out


def load_recipe(path: str | os.PathLike, _seen: tuple[str, ...] = ()) -> dict[str, Any]:
    """Read a recipe YAML, resolving its `_base` chain (paths relative to the file) into one dict."""
    path = Path(path).resolve()
    if str(path) in _seen:
        raise ValueError(f"{path}: `_base` cycle through {' -> '.join(_seen)}")
    if not path.is_file():
        raise FileNotFoundError(f"recipe not found: {path}")
    try:
        data = yaml.safe_load(path.read_text()) or {}
    except yaml.YAMLError as err:
        raise ValueError(f"{path}: not valid YAML: {err}") from err
    if not isinstance(data, dict):
        raise ValueError(f"{path}: a recipe must be a mapping at the top level")
    bases = data.pop(BASE_KEY, None) or []
    merged: dict[str, Any] = {}
    for base in [bases] if isinstance(bases, str) else bases:
        merged = _deep_merge(merged, load_recipe(path.parent / base, (*_seen, str(path))))
    return _deep_merge(merged, data)


def _expand_configs(argv: list[str], tmpdir: str) -> list[str]:
    """Replace each `--config FILE` that uses `_base` by a resolved copy, so jsonargparse sees one file."""
    out, i = [], 0
    while i < len(argv):
        arg = argv[i]
        value = None
        if arg in ("--config", "-c") and i + 1 < len(argv):
            value, i = argv[i + 1], i + 2
        elif arg.startswith("--config="):
            value, i = arg.split("=", 1)[1], i + 1
        else:
            out.append(arg)
            i += 1
            continue
        text = Path(value).read_text() if Path(value).is_file() else ""
        if BASE_KEY in text:
            resolved = Path(tmpdir) / f"{Path(value).stem}.resolved.yaml"
            resolved.write_text(yaml.safe_dump(load_recipe(value), sort_keys=False))
            value = str(resolved)
        out += ["--config", value]
    return out


class SafeSaveConfig(SaveConfigCallback):
    """Save the resolved config beside the run, never over an input file (a CPU_FACTS.md §5 pitfall)."""

    def setup(self, trainer, pl_module, stage: str) -> None:  # noqa: D102
        log_dir = trainer.log_dir or trainer.default_root_dir
        target = (Path(log_dir) / self.config_filename).resolve()
        inputs = {Path(str(c)).resolve() for c in (self.config.get("config") or [])}
        if target in inputs:
            raise RuntimeError(f"refusing to overwrite the input config {target}; give the run its own log dir")
        super().setup(trainer, pl_module, stage)


def run_lightning_cli(argv: list[str]) -> LightningCLI:
    """Run LightningCLI with unizoo's defaults on `argv` (a subcommand and its arguments)."""
    from datamodules.mixed import MixedTaskDataModule
    from zoo.unified import UnifiedVLM

    import sys

    saved_argv, sys.argv = sys.argv, sys.argv[:1]  # args come from `argv`; LightningCLI warns if both are set
    try:
        with tempfile.TemporaryDirectory(prefix="unizoo-recipe-") as tmpdir:
            return _cli(argv, tmpdir, UnifiedVLM, MixedTaskDataModule)
    finally:
        sys.argv = saved_argv


def _cli(argv: list[str], tmpdir: str, model_class: type, data_class: type) -> LightningCLI:
    return LightningCLI(
        model_class,
        data_class,
        subclass_mode_model=True,
        subclass_mode_data=True,
        save_config_callback=SafeSaveConfig,
        save_config_kwargs={"overwrite": False},
        parser_kwargs={"parser_mode": "omegaconf", "exit_on_error": True},
        trainer_defaults={"default_root_dir": "runs"},
        args=_expand_configs(argv, tmpdir),
    )

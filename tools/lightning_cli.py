"""`unizoo fit|validate|test|predict`: LightningCLI over UnifiedVLM subclasses and the mixed-task DataModule."""
from __future__ import annotations

import os
import re
import shutil
import sys
import tempfile
from pathlib import Path
from typing import Any

import torch
import yaml
from jsonargparse import ArgumentError
from lightning.pytorch.callbacks import ModelCheckpoint
from lightning.pytorch.cli import LightningCLI, SaveConfigCallback
from lightning.pytorch.utilities import rank_zero_warn

# Checkpoint reading and checking live in zoo/catalog/checkpoint.py; the names stay importable from here.
from zoo import _legacy
from zoo.catalog.checkpoint import (RUN_SETTINGS, CheckpointMismatchError, check_state_dict, current_hparams,
                                   current_state_dict, read_checkpoint, setting_differences)

BASE_KEY = "_base"
_LAST = re.compile(r"^last(-v\d+)?\.ckpt$")  # Lightning's names for save_last files


class RecipeError(ValueError):
    """A recipe or command line that the CLI cannot parse (unknown key, unknown class_path, wrong type)."""


def _deep_merge(base: dict[str, Any], override: dict[str, Any]) -> dict[str, Any]:
    out = dict(base)
    for key, value in override.items():
        if isinstance(out.get(key), dict) and isinstance(value, dict):
            if "class_path" in value and value.get("class_path") != out[key].get("class_path"):
                # jsonargparse's rule for a new class_path: keep the base's init_args the new class accepts,
                # so a recipe that swaps the architecture states only what differs.
                kept = _accepted_init_args(value["class_path"], out[key].get("init_args") or {})
                out[key] = _deep_merge({"class_path": value["class_path"], "init_args": kept}, value)
            else:
                out[key] = _deep_merge(out[key], value)
        else:
            out[key] = value
    return out


def _constructor_parameters(cls: type) -> dict[str, Any]:
    """The named constructor parameters of `cls` (inspect.Parameter), following **kwargs up its bases."""
    import inspect

    out: dict[str, Any] = {}
    for klass in cls.__mro__:
        init = klass.__dict__.get("__init__")
        if init is None:
            continue
        params = inspect.signature(init).parameters.values()
        for p in params:
            if p.kind in (p.POSITIONAL_OR_KEYWORD, p.KEYWORD_ONLY):
                out.setdefault(p.name, p)
        if not any(p.kind is p.VAR_KEYWORD for p in params):
            break
    return out


def _accepted_init_args(class_path: str, init_args: dict[str, Any]) -> dict[str, Any]:
    """The entries of `init_args` that `class_path`'s constructor accepts (following **kwargs up its bases)."""
    from zoo.config import import_class

    try:
        cls = import_class(class_path)
    except (ImportError, AttributeError, ValueError):
        return {}  # an unknown class is reported by the CLI itself, with its own message
    accepted = _constructor_parameters(cls)
    return {k: v for k, v in init_args.items() if k in accepted}


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
    """Replace each `--config FILE` that uses `_base` or older argument names (`input_space`, ...) by a
    resolved copy, so jsonargparse sees one file in today's names; older names on the command line too."""
    out, i = [], 0
    while i < len(argv):
        arg = argv[i]
        value = None
        if arg in ("--config", "-c") and i + 1 < len(argv):
            value, i = argv[i + 1], i + 2
        elif arg.startswith("--config="):
            value, i = arg.split("=", 1)[1], i + 1
        else:
            out.append(_current_argument(arg))
            i += 1
            continue
        text = Path(value).read_text() if Path(value).is_file() else ""
        renamed = _renamed_model_keys(text)
        if BASE_KEY in text or renamed:
            recipe = load_recipe(value)
            if renamed:
                recipe = _current_model_keys(recipe, value)
            resolved = Path(tmpdir) / f"{len(out)}-{Path(value).stem}.resolved.yaml"
            resolved.write_text(yaml.safe_dump(recipe, sort_keys=False))
            value = str(resolved)
        out += ["--config", value]
    return out


def _renamed_model_keys(text: str) -> bool:
    """Whether a recipe's text may name a renamed model argument (a cheap test before parsing it)."""
    return any(re.search(rf"\b{old}\b", text) for old in _legacy.RENAMED_ARGUMENTS)


def _current_model_keys(recipe: dict[str, Any], where: str) -> dict[str, Any]:
    """`recipe` with its model's renamed arguments (`input_space` -> `read_space`, ...) under today's names."""
    model = recipe.get("model")
    args = model.get("init_args") if isinstance(model, dict) else None
    if not isinstance(args, dict):
        return recipe
    try:
        current, found = _legacy.current_arguments(args)
    except ValueError as err:
        raise RecipeError(f"recipe {where}: {err}") from None
    if found:
        rank_zero_warn(f"recipe {where}: {', '.join(f'{k} is now {_legacy.RENAMED_ARGUMENTS[k]}' for k in found)} "
                       "(a model reads and writes images); the old names still work but will go", category=FutureWarning)
        recipe = {**recipe, "model": {**model, "init_args": current}}
    return recipe


def _current_argument(arg: str) -> str:
    """`--model.init_args.input_space...` -> `--model.init_args.read_space...` (an older argument name)."""
    for old, new in _legacy.RENAMED_ARGUMENTS.items():
        for prefix in (f"--model.init_args.{old}", f"--model.{old}"):
            if arg == prefix or arg.startswith((f"{prefix}.", f"{prefix}=")):
                rank_zero_warn(f"{arg.split('=')[0]}: {old} is now {new}; the old name still works but will go",
                               category=FutureWarning)
                return arg.replace(old, new, 1)
    return arg


def _in_current_names(config: Any) -> Any:
    """A resolved config with older names in today's: moved class paths, renamed model arguments (zoo/_legacy.py),
    so a run resumed across a rename still counts as the same run."""
    config = _legacy.current_class_paths(config)
    model = config.get("model") if isinstance(config, dict) else None
    if isinstance(model, dict) and isinstance(model.get("init_args"), dict):
        config = {**config, "model": {**model, "init_args": _legacy.current_arguments(model["init_args"])[0]}}
    return config


class SafeSaveConfig(SaveConfigCallback):
    """Save the resolved config beside the run, never over an input file (a CPU_FACTS.md §5 pitfall).

    A config.yaml already in the log dir is an error (Lightning's rule), unless it holds the very config
    this run would write: the same command rerun into its fixed log dir (`--trainer.logger.init_args.version
    0 --ckpt_path last`, as `unizoo study` resumes a killed run), which keeps the file as it is (older names of
    classes and arguments in it count as today's).
    """

    def setup(self, trainer, pl_module, stage: str) -> None:  # noqa: D102
        log_dir = trainer.log_dir or trainer.default_root_dir
        target = (Path(log_dir) / self.config_filename).resolve()
        inputs = {Path(str(c)).resolve() for c in (self.config.get("config") or [])}
        if target in inputs:
            raise RuntimeError(f"refusing to overwrite the input config {target}; give the run its own log dir")
        if not self.already_saved and not self.overwrite and target.is_file():
            try:
                same = (_in_current_names(yaml.safe_load(target.read_text()))
                        == _in_current_names(yaml.safe_load(self.parser.dump(self.config, skip_none=False))))
            except (OSError, yaml.YAMLError):
                same = False
            if same:
                self.already_saved = True
                return
        super().setup(trainer, pl_module, stage)


def run_lightning_cli(argv: list[str]) -> LightningCLI:
    """Run LightningCLI with unizoo's defaults on `argv` (a subcommand and its arguments).

    Raises RecipeError for a recipe or argument it cannot parse, CheckpointMismatchError for a checkpoint
    of another architecture, and the data's and model's own ValueErrors, all before any output is written.
    """
    from datamodules.mixed import MixedTaskDataModule
    from tools.launch import same_command_for_children
    from zoo.model.unified import UnifiedVLM

    import warnings

    # Frozen image spaces stay in eval mode on purpose (zoo/spaces/_common.py): nothing to warn about.
    warnings.filterwarnings("ignore", message=r"Found \d+ module\(s\) in eval mode")
    threads = os.environ.get("UNIZOO_THREADS", "").strip()
    if threads:  # torch threads of this run (`unizoo study --threads`); OMP_NUM_THREADS alone may not apply
        torch.set_num_threads(int(threads))
    saved_argv, sys.argv = sys.argv, sys.argv[:1]  # args come from `argv`; LightningCLI warns if both are set
    try:
        # Child ranks of a multi-process run re-run this very command (tools/launch.py).
        with tempfile.TemporaryDirectory(prefix="unizoo-recipe-") as tmpdir, same_command_for_children(argv):
            return _cli(argv, tmpdir, UnifiedVLM, MixedTaskDataModule)
    except ArgumentError as err:
        recipes = [v for i, v in enumerate(argv) if i and argv[i - 1] in ("--config", "-c")]
        recipes += [a.split("=", 1)[1] for a in argv if a.startswith("--config=")]
        where = f"recipe {', '.join(recipes)}" if recipes else "command line"
        # jsonargparse echoes the whole offending value ("Given value: {...}"): noise next to the reason.
        reason = "\n".join(line for line in str(err).splitlines() if not line.strip().startswith("Given value"))
        raise RecipeError(f"{where}: {reason}") from None
    finally:
        sys.argv = saved_argv


def _cli(argv: list[str], tmpdir: str, model_class: type, data_class: type) -> LightningCLI:
    from zoo.model.callbacks import FinalCheckpoint

    return UnizooCLI(
        model_class,
        data_class,
        subclass_mode_model=True,
        subclass_mode_data=True,
        save_config_callback=SafeSaveConfig,
        save_config_kwargs={"overwrite": False},
        # Errors raise (run_lightning_cli names the recipe); `--help` still prints and exits.
        parser_kwargs={"parser_mode": "omegaconf", "exit_on_error": False},
        # Every fit ends with a checkpoint of its final weights, whatever the recipe's step interval.
        trainer_defaults={"default_root_dir": "runs", "callbacks": [FinalCheckpoint()]},
        args=_expand_configs(argv, tmpdir),
    )


class UnizooCLI(LightningCLI):
    """LightningCLI that checks everything it can before a run writes anything, and cleans up after a
    run that fails before its first optimisation step (see docs/RELIABILITY.md)."""

    def instantiate_classes(self) -> None:
        """Build model, data and trainer; a component's own ValueError/OSError surfaces unwrapped."""
        try:
            super().instantiate_classes()
        except ValueError as err:
            # jsonargparse wraps a constructor's error in its "Does not validate against any of the Union
            # subtypes" report; the constructor's message (e.g. a space's size check) is the useful one.
            root = err
            while root.__cause__ is not None or (root.__context__ is not None and not root.__suppress_context__):
                root = root.__cause__ or root.__context__
            if root is not err and isinstance(root, (ValueError, OSError)):
                raise root from None
            raise

    def _parse_ckpt_path(self) -> None:
        # Lightning rebuilds the model from the checkpoint's hyperparameters, silently replacing the
        # recipe's. With a recipe model we keep it and `check_checkpoint` refuses a checkpoint that does
        # not fit; only without one does the checkpoint define the model.
        sub = self.config.get("subcommand")
        if sub and self.config[sub].get("model") is not None:
            return
        ckpt = self.config[sub].get("ckpt_path") if sub else None
        if ckpt and Path(ckpt).is_file():
            read_checkpoint(ckpt)  # refuse unsafe or unreadable files with a clear error first
        super()._parse_ckpt_path()

    def _run_subcommand(self, subcommand: str) -> None:
        kwargs = self.config_init[subcommand]
        if self.datamodule is not None and hasattr(self.datamodule, "setup"):
            self.datamodule.setup(subcommand)  # data errors before any output (cached for the run)
        ckpt = kwargs.get("ckpt_path")
        if ckpt == "last":
            kwargs["ckpt_path"] = ckpt = find_last_checkpoint(self.trainer, self.model)
        local = ckpt and "://" not in str(ckpt) and ckpt not in ("best", "hpc")
        if local and not Path(str(ckpt)).is_file():
            raise FileNotFoundError(f"--ckpt_path {ckpt}: no such checkpoint file")
        if local:
            check_checkpoint(self.model, ckpt)
        created = _new_output_dirs(self.trainer)
        try:
            super()._run_subcommand(subcommand)
        except BaseException as err:
            if self.trainer.global_step == 0:
                _remove_if_no_checkpoint(created)
            if isinstance(err, FloatingPointError):
                last = [cb.last_model_path or cb.best_model_path for cb in self.trainer.checkpoint_callbacks
                        if isinstance(cb, ModelCheckpoint)]
                last = [p for p in last if p and Path(p).is_file()]
                kept = f" Last good checkpoint: {last[0]}" if last else " No checkpoint had been written."
                raise FloatingPointError(f"{err}{kept}") from err
            raise


def _constructor_defaults(cls: type) -> dict[str, Any]:
    """Default values of `cls`'s constructor arguments, following **kwargs up its bases."""
    return {name: p.default for name, p in _constructor_parameters(cls).items() if p.default is not p.empty}


def check_checkpoint(model: Any, path: str | os.PathLike) -> None:
    """Raise CheckpointMismatchError unless checkpoint `path` was written by `model`'s architecture."""
    ckpt = read_checkpoint(path)
    saved = current_hparams(ckpt.get("hyper_parameters") or {})  # older checkpoints' names in today's
    built = dict(getattr(model, "hparams", {}) or {})
    if "_class_path" in saved and "_class_path" in built:
        # A key one side leaves out means the constructor's default (older checkpoints predate newer args).
        defaults = _constructor_defaults(type(model))
        saved = {**{k: v for k, v in defaults.items() if k in built}, **saved}
        built = {**{k: v for k, v in defaults.items() if k in saved}, **built}
        # The model class may extend the settings it lets a run change (zoo/catalog/checkpoint.py has the list).
        diff = setting_differences(dict(saved), built, getattr(type(model), "RUN_SETTINGS", RUN_SETTINGS))
        if diff:
            more = f" ... ({len(diff)} in all)" if len(diff) > 5 else ""
            raise CheckpointMismatchError(
                f"{path} was written by another architecture than the recipe builds: {'; '.join(diff[:5])}{more}. "
                "Pass the recipe the checkpoint was trained with (or leave out the model to rebuild it from the checkpoint)")
    # Without hyperparameters (bare weights) the state dict alone tells; frozen keys reload from their source.
    frozen = model.frozen_state_keys() if hasattr(model, "frozen_state_keys") else ()
    check_state_dict(current_state_dict(ckpt["state_dict"]), model.state_dict(), where=f"{path} does not fit {type(model).__name__}",
                     allowed_missing=frozen)


def _checkpoint_dirs(trainer: Any) -> list[Path]:
    """Folders where this trainer's ModelCheckpoints write: their dirpath, else every version of the logger."""
    dirs: list[Path] = []
    for cb in trainer.checkpoint_callbacks:
        if not isinstance(cb, ModelCheckpoint):
            continue
        if cb.dirpath:
            dirs.append(Path(cb.dirpath))
        elif trainer.loggers:
            # Lightning looks only in the *new* version's folder, which never holds the killed run's files.
            logger = trainer.loggers[0]
            root = Path(logger.save_dir or trainer.default_root_dir) / str(logger.name or "")
            dirs += sorted(root.glob("*/checkpoints"))
        else:
            dirs.append(Path(trainer.default_root_dir) / "checkpoints")
    return list(dict.fromkeys(dirs))


def find_last_checkpoint(trainer: Any, model: Any) -> str | None:
    """The newest readable checkpoint of `model`'s architecture in this run's checkpoint folders, or None.

    Newest by modification time (last.ckpt is written after the step checkpoint it copies); an unreadable
    file (a copy cut short by a kill) or one of another architecture is skipped with a warning.
    """
    dirs = _checkpoint_dirs(trainer)
    found = [p for d in dirs if d.is_dir() for p in d.iterdir() if p.suffix == ".ckpt" and p.is_file()]
    # last*.ckpt first among files of the same time: it is the one Lightning itself would pick.
    found.sort(key=lambda p: (p.stat().st_mtime, bool(_LAST.match(p.name))), reverse=True)
    skipped = []
    for path in found:
        try:
            check_checkpoint(model, path)
        except ValueError as err:
            skipped.append(str(err).split(";")[0])
            continue
        if skipped:
            rank_zero_warn(f'ckpt_path="last": skipped {len(skipped)} newer checkpoint(s): {" | ".join(skipped[:3])}')
        return str(path)
    where = ", ".join(str(d) for d in dirs) or "no checkpoint folder"
    also = f" (skipped {len(skipped)}: {' | '.join(skipped[:3])})" if skipped else ""
    rank_zero_warn(f'ckpt_path="last": no usable checkpoint of this model in {where}{also}; starting from scratch')
    return None


def _new_output_dirs(trainer: Any) -> list[Path]:
    """The outermost not-yet-existing folders this run will write to (logger version, checkpoint dirpaths)."""
    dirs = [Path(trainer.log_dir)] if trainer.loggers and trainer.log_dir else []
    dirs += [Path(cb.dirpath) for cb in trainer.checkpoint_callbacks if isinstance(cb, ModelCheckpoint) and cb.dirpath]
    created = []
    for d in dirs:
        d = d.absolute()
        if d.exists():
            continue
        while not d.parent.exists():
            d = d.parent
        created.append(d)
    return list(dict.fromkeys(created))


def _remove_if_no_checkpoint(dirs: list[Path]) -> None:
    """Remove folders a failed run created, unless a checkpoint landed in one (then keep everything)."""
    if any(d.is_dir() and any(d.rglob("*.ckpt")) for d in dirs):
        return
    for d in dirs:
        shutil.rmtree(d, ignore_errors=True)

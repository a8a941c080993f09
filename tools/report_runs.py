"""Loading evaluated runs for `unizoo report`: labels from a run's config, metrics from its evaluations, pooled per fit."""
from __future__ import annotations

import json
import math
import re
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import yaml

from zoo import _legacy

SKIP_KEYS = {"counts", "chance", "protocol", "images", "samples", "retrieval_chance", "code_chance"}
CHANCE_OF = {"generation/retrieval_chance": "generation/retrieval_top1", "generation/code_chance": "generation/code_accuracy"}
UNDERSTANDING_METRIC = "vqa/total"
GENERATION_METRICS = ("generation/feature_cosine", "generation/retrieval_top1", "generation/code_accuracy")
_STEP = re.compile(r"step[=_-]?(\d+)")


@dataclass
class Run:
    """One trained model: its labels and its evaluations as (step or None for final, flat metrics, source)."""

    train_id: str
    architecture: str
    family: str
    strength: float | None
    mix: str
    seed: int | None
    evals: list[tuple[int | None, dict[str, float], str]] = field(default_factory=list)
    chance: dict[str, float] = field(default_factory=dict)
    projector: tuple[Any, Any] | None = None  # (projector, share_projector) as the config gives them

    def final(self) -> dict[str, float] | None:
        """Metrics of the final evaluation (no step), else of the latest step."""
        return self._final_eval()[1] if self.evals else None

    def final_source(self) -> str | None:
        """The metrics file the final evaluation was read from."""
        return self._final_eval()[2] if self.evals else None

    def _final_eval(self) -> tuple[int | None, dict[str, float], str]:
        return max(self.evals, key=lambda e: math.inf if e[0] is None else e[0])

    def curve(self) -> list[tuple[int, dict[str, float]]]:
        """Evaluations at known steps, in step order."""
        return sorted(((s, m) for s, m, _ in self.evals if s is not None), key=lambda e: e[0])


def _short(class_path: Any) -> str:
    return str(class_path).rsplit(".", 1)[-1] if class_path else "?"


def _describe(spec: Any) -> str:
    """A short name of a component spec: class, the model class it wraps, and what it loads."""
    if not isinstance(spec, dict):
        return str(spec)
    args = spec.get("init_args") or {}
    name = _short(args["model_class"]) if args.get("model_class") else _short(spec.get("class_path"))
    details = [str(args[k]) for k in ("pretrained", "checkpoint", "variant", "model") if isinstance(args.get(k), str)]
    if isinstance(args.get("base"), dict):
        details.insert(0, _describe(args["base"]))
    if isinstance(args.get("config"), dict) and args["config"].get("hidden_size"):
        cfg = args["config"]
        details.append(f"h{cfg['hidden_size']}" + (f"x{cfg['num_hidden_layers']}" if cfg.get("num_hidden_layers") else ""))
    return f"{name}[{', '.join(details)}]" if details else name


def architecture_of(model: dict[str, Any]) -> tuple[str, str, float | None]:
    """(label with strength, label without it, strength) of a `model:` spec."""
    args, _ = _legacy.current_arguments(model.get("init_args") or {})  # older runs: input_space, ...
    spaces = " -> ".join(_describe(args[k]) for k in ("space", "read_space", "write_space") if args.get(k))
    family = f"{_short(model.get('class_path'))}({spaces})"
    if args.get("backbone"):
        family += f" on {_describe(args['backbone'])}"
    strength = args.get("strength")
    if isinstance(strength, (int, float)) and not isinstance(strength, bool):
        return f"{family} s={float(strength):g}", family, float(strength)
    return family, family, None


def projector_of(model: dict[str, Any]) -> tuple[Any, Any] | None:
    """(projector, share_projector) of a `model:` spec as written; None when the config leaves either unset."""
    args, _ = _legacy.current_arguments(model.get("init_args") or {})
    if "projector" not in args or "share_projector" not in args:
        return None
    return args["projector"], args["share_projector"]


def mix_of(data: dict[str, Any]) -> str:
    """The task-mix label of a `data:` spec: a preset name, or the amounts that differ from all."""
    from datamodules.mixed import PRESETS, resolve_mix

    args = (data or {}).get("init_args") or {}
    if "mix" not in args:
        return "unknown"
    try:
        table = resolve_mix(args["mix"])
    except ValueError as err:
        return f"invalid mix ({err})"
    name = next((k for k, v in PRESETS.items() if v == table), None)
    label = name or "custom(" + ", ".join(f"{k}={v}" for k, v in table.items() if v != 1.0) + ")"
    if not _tasks_selected(table, args.get("sources")):
        label = "none"  # e.g. {generation: 0} over generation-only sources: all training data is `extra`
    extra = {k: v for k, v in (args.get("extra") or {}).items() if v}
    return label + ("" if not extra else " +extra(" + ", ".join(f"{k}={v}" for k, v in sorted(extra.items())) + ")")


def _tasks_selected(table: dict[str, float], sources: Any) -> bool:
    """Whether the mix selects a task some source produces (True when a source does not declare its tasks)."""
    declared = [((s or {}).get("init_args") or {}).get("tasks") for s in sources or [] if isinstance(s, dict)]
    if not declared or any(tasks is None for tasks in declared):
        return True
    produced = {task for tasks in declared for task in tasks}
    return any(v > 0 and task in produced for task, v in table.items())


def flatten_metrics(metrics: dict[str, Any]) -> tuple[dict[str, float], dict[str, float]]:
    """(numeric metrics "a/b" without counts/chance/protocol, chance level per metric)."""
    values: dict[str, float] = {}
    chance: dict[str, float] = {}

    def walk(node: dict[str, Any], prefix: str) -> None:
        for key, value in node.items():
            path = f"{prefix}{key}"
            if key == "chance" and isinstance(value, dict):
                chance.update({f"{prefix}{k}": float(v) for k, v in value.items() if _is_number(v)})
            elif path in CHANCE_OF and _is_number(value):
                chance[CHANCE_OF[path]] = float(value)
            elif isinstance(value, dict) and key not in SKIP_KEYS:
                walk(value, f"{path}/")
            elif key not in SKIP_KEYS and _is_number(value) and math.isfinite(value):
                values[path] = float(value)

    walk({k: v for k, v in metrics.items() if k != "protocol"}, "")
    return values, chance


def _is_number(value: Any) -> bool:
    return isinstance(value, (int, float)) and not isinstance(value, bool)


def _read(path: Path, notes: list[str]) -> dict[str, Any] | None:
    """A JSON (.json) or YAML mapping; None with a note when unreadable (a partial run never stops the report)."""
    try:
        text = path.read_text()
        data = json.loads(text) if path.suffix == ".json" else yaml.safe_load(text)
    except (OSError, ValueError, yaml.YAMLError) as err:
        notes.append(f"{path}: unreadable ({err}); skipped")
        return None
    if not isinstance(data, dict):
        notes.append(f"{path}: not a mapping; skipped")
        return None
    return data


def _training_config(run_dir: Path, config: dict[str, Any]) -> tuple[dict[str, Any], Path, int | None]:
    """(config of the training run, its dir, checkpoint step) for a test dir whose ckpt_path names a fit run."""
    ckpt = config.get("ckpt_path")
    if not isinstance(ckpt, str) or not ckpt:
        return config, run_dir, None
    path = Path(ckpt)
    match = _STEP.search(path.name)
    step = int(match.group(1)) if match else None
    fit_dir = path.parent.parent if path.parent.name == "checkpoints" else None
    if fit_dir is not None and (fit_dir / "config.yaml").is_file() and fit_dir.resolve() != run_dir.resolve():
        fit = _read(fit_dir / "config.yaml", [])
        if fit:
            return fit, fit_dir, step
    if fit_dir is not None and run_dir.name.startswith("test"):
        # The fit dir is gone (a kept copy: docs/results/GRID/runs/NAME/test, test-stepN): the tests of one
        # run sit side by side in its folder, so that folder stands for the training run (its curve joins up).
        return config, run_dir.parent, step
    return config, run_dir, step


def load_run(path: str | Path, notes: list[str]) -> Run:
    """Read one run dir: labels from its config (or its fit run's), every evaluation found under it."""
    run_dir = Path(path)
    if not run_dir.is_dir():
        raise ValueError(f"report: run {str(run_dir)!r} is not a directory")
    sources = [(None, run_dir / "eval" / "metrics.json")]
    for sub in sorted(p for p in run_dir.glob("eval*") if p.is_dir() and p.name != "eval"):
        match = _STEP.search(sub.name)
        found = [f for f in (sub / "metrics.json", sub / "eval" / "metrics.json") if f.is_file()]
        if found:
            sources.append((int(match.group(1)) if match else None, found[0]))
    sources = [(s, f) for s, f in sources if f.is_file()]
    config_path = run_dir / "config.yaml"
    if not config_path.is_file() and not sources:
        raise ValueError(
            f"report: {run_dir} has neither config.yaml nor eval/metrics.json (nor eval-step*/metrics.json); "
            "expected a Lightning log dir such as runs/<name>/version_N/ evaluated by `unizoo test`"
        )
    config = _read(config_path, notes) if config_path.is_file() else None
    train_dir, step = run_dir, None
    if config is None and (run_dir / "hparams.yaml").is_file():  # the logger's copy of the model's init args
        hparams = _read(run_dir / "hparams.yaml", notes) or {}
        config = {"model": {"class_path": hparams.get("_class_path"), "init_args": hparams}}
        notes.append(f"{run_dir}: no config.yaml; architecture from hparams.yaml, mix and seed unknown")
    elif config is None:
        notes.append(f"{run_dir}: no config.yaml; architecture, mix and seed unknown")
    if config is not None:
        config, train_dir, step = _training_config(run_dir, config)
    model = (config or {}).get("model")
    if isinstance(model, dict):
        architecture, family, strength = architecture_of(model)
    else:
        architecture = family = f"unknown ({run_dir.name})"
        strength = None
    seed = (config or {}).get("seed_everything")
    run = Run(str(train_dir.resolve()), architecture, family, strength, mix_of((config or {}).get("data") or {}),
              seed if _is_number(seed) else None,
              projector=projector_of(model) if isinstance(model, dict) else None)
    for sub_step, file in sources:
        metrics = _read(file, notes)
        if metrics is None:
            continue
        values, chance = flatten_metrics(metrics)
        run.evals.append((step if sub_step is None else sub_step, values, str(file)))
        run.chance.update(chance)
    if not run.evals:
        notes.append(f"{run_dir}: no metrics (run `unizoo test` on it); skipped")
    return run


def merge_runs(runs: list[Run], notes: list[str]) -> list[Run]:
    """One Run per training run: evaluations of the same fit dir (test dirs, eval-step folders) pooled."""
    merged: dict[str, Run] = {}
    for run in runs:
        if run.train_id not in merged:
            merged[run.train_id] = Run(run.train_id, run.architecture, run.family, run.strength, run.mix, run.seed,
                                       chance=dict(run.chance), projector=run.projector)
        target = merged[run.train_id]
        seen = {e[0]: Path(e[2]).resolve() for e in target.evals}
        for evaluation in run.evals:
            if evaluation[0] in seen:
                if seen[evaluation[0]] != Path(evaluation[2]).resolve():  # the same file reached twice is no news
                    notes.append(f"{evaluation[2]}: a second evaluation of {run.train_id} at step {evaluation[0]}; ignored")
                continue
            target.evals.append(evaluation)
            seen[evaluation[0]] = Path(evaluation[2]).resolve()
        target.chance.update(run.chance)
    return [r for r in merged.values() if r.evals]


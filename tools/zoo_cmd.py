"""`unizoo zoo list|info|pull|publish`: browse the zoo, pull verified weights, publish a trained run."""
from __future__ import annotations

import json
import tempfile
from pathlib import Path
from typing import Any, Literal

import yaml

from zoo.catalog import hub, registry
from zoo.catalog.checkpoint import current_hparams, read_checkpoint


def list_entries(pattern: str = "*", kind: str | None = None) -> None:
    """List zoo models whose names match a shell-style pattern.

    Args:
        pattern: e.g. "smartwatch-*" or "vq-vq.*" (an architecture at every scale); "*" lists everything.
        kind: only entries of this kind, e.g. architecture (untrained `<arch>.<scale>` specs; their weights
            column lists the pretrained models trained as them), unified, space.
    """
    from rich.console import Console
    from rich.table import Table

    table = Table(title=f"unizoo models matching {pattern!r}")
    for column in ("name", "kind"):  # whole, so they can be copied (`zoo.create_model(NAME)`)
        table.add_column(column, no_wrap=True)
    for column in ("description", "metrics", "weights"):
        table.add_column(column, overflow="fold")
    tags = registry.list_pretrained()
    for name in registry.list_models(pattern, kind):
        entry = registry.get_entry(name)
        metrics = ", ".join(f"{k}={v:.4g}" if isinstance(v, float) else f"{k}={v}"
                            for k, v in entry.card.metrics.items())
        where = (entry.weights.describe() if entry.weights
                 else f"upstream {entry.upstream_id}" if entry.upstream_id
                 else "pretrained: " + ", ".join(tags[name]) if name in tags else "-")
        if entry.architecture:
            where += f" (architecture {entry.architecture})"
        table.add_row(name, entry.kind, entry.description, metrics or "-", where)
    Console().print(table)


def info(name: str) -> None:
    """Print a zoo model's entry and card as JSON.

    Args:
        name: zoo model name (see `unizoo zoo list`).
    """
    print(json.dumps(registry.get_entry(name).to_dict(), indent=2))


def pull(name: str, offline: bool = False) -> None:
    """Download (or find in the cache) a zoo model's weights, verify them, print path and sha256.

    Args:
        name: zoo model name (see `unizoo zoo list`).
        offline: use only the cache, a mirror folder and bundled files (also on with HF_HUB_OFFLINE=1
            or UNIZOO_OFFLINE=1).
    """
    entry = registry.get_entry(name)
    if entry.weights is not None:
        path = hub.fetch(entry.weights, offline=offline or None)
        print(f"{path}\nsha256 {hub.sha256_file(path)}")
        return
    if entry.upstream_id is None:
        raise ValueError(f"zoo entry {name!r} has neither weights nor an upstream hub id: nothing to pull")
    from huggingface_hub import snapshot_download

    # Only what a model needs: no pickled weights, no remote code.
    local_only = offline or hub.offline_reason() is not None
    try:
        folder = snapshot_download(entry.upstream_id, revision=entry.revision, local_files_only=local_only,
                                   allow_patterns=["*.json", "*.safetensors", "*.model", "*.txt", "*.jinja"])
    except OSError as err:
        if not local_only:
            raise
        reason = hub.offline_reason(True if offline else None)
        raise hub.WeightsNotFoundError(hub.upstream_offline_message(entry.upstream_id, entry.revision, reason)) from err
    pinned = f"commit {entry.revision}" if entry.revision else "unpinned: the repo's current main"
    print(f"{folder}\n(upstream snapshot of {entry.upstream_id}, {pinned}; Hugging Face verifies its own files)")


def publish(run: str, name: str, to: str, description: str = "",
            kind: Literal["unified", "space", "language_model", "reader"] = "unified",
            architecture: str | None = None) -> str:
    """Publish a trained run as a zoo entry: `<to>/<name>.safetensors` + `<to>/<name>.json`.

    Args:
        run: a run directory (its newest or `last.ckpt` is used) or a Lightning `.ckpt` file.
        name: the zoo name of the published model.
        to: a local directory, or `hf:org/name` to upload both files to a Hugging Face model repo.
        description: one line for the zoo table.
        kind: entry kind (unified, space, language_model, reader).
        architecture: the `<arch>.<scale>` entry the run trained (`unizoo zoo list --kind architecture`):
            the published weights become one of its pretrained tags.
    """
    ckpt_path = _find_checkpoint(Path(run))
    ckpt = _load_checkpoint(ckpt_path)
    state = ckpt.get("state_dict")
    if not isinstance(state, dict) or not state:
        raise ValueError(f"{ckpt_path}: no 'state_dict' in the checkpoint")
    search = _search_dirs(Path(run), ckpt_path)
    config_path = _first_existing(search, "config.yaml")
    config = _read_config(config_path) if config_path else {}
    class_path, init_args = _model_spec(ckpt, config, ckpt_path, config_path)
    metrics_path = _first_existing(search, "metrics.json")
    card = registry.ModelCard(
        recipe=str(config_path) if config_path else None,
        data=json.dumps(config.get("data"), sort_keys=True) if config.get("data") else "",
        seed=config.get("seed_everything") if isinstance(config.get("seed_everything"), int) else None,
        metrics=_read_metrics(metrics_path) if metrics_path else {},
        how_to_reproduce=f"unizoo fit --config {config_path}" if config_path else "",
        notes=f"published from {ckpt_path.name}")
    filename = f"{name}.safetensors"
    if architecture is not None and registry.get_entry(architecture).kind != "architecture":
        raise ValueError(f"{architecture!r} is a zoo entry of kind {registry.get_entry(architecture).kind!r}, "
                         f"not an architecture (see `unizoo zoo list --kind architecture`)")
    entry = registry.ZooEntry(name=name, kind=kind, class_path=class_path, init_args=init_args,
                              card=card, description=description,
                              architecture=architecture)  # validates name, kind, class_path

    def write(folder: Path, weights_location: dict[str, str]) -> str:
        digest = hub.save_state_dict_file(state, folder / filename, metadata={"unizoo_name": name,
                                                                               "class_path": class_path})
        data = entry.to_dict()
        data["weights"] = {**weights_location, "filename": filename, "sha256": digest,
                           "size": (folder / filename).stat().st_size}
        (folder / f"{name}.json").write_text(json.dumps(data, indent=2) + "\n")
        print(f"sha256 {digest}")
        return digest

    if to.startswith("hf:"):
        from huggingface_hub import HfApi

        repo_id = to[3:]
        with tempfile.TemporaryDirectory() as tmp:
            write(Path(tmp), {"hf_repo": repo_id, "hf_filename": filename})
            HfApi().upload_folder(repo_id=repo_id, folder_path=tmp, commit_message=f"unizoo: publish {name}")
        print(f"uploaded {filename} and {name}.json to https://huggingface.co/{repo_id}")
        return f"hf:{repo_id}/{name}.json"
    folder = Path(to)
    folder.mkdir(parents=True, exist_ok=True)
    write(folder, {})
    json_path = folder / f"{name}.json"
    print(f"wrote {folder / filename} and {json_path}")
    return str(json_path)


def _find_checkpoint(run: Path) -> Path:
    if run.is_file():
        return run
    if not run.is_dir():
        raise FileNotFoundError(f"run {run} is neither a checkpoint file nor a directory")
    found = sorted(run.rglob("*.ckpt"), key=lambda p: p.stat().st_mtime)
    if not found:
        raise FileNotFoundError(f"run directory {run} holds no .ckpt file")
    last = [p for p in found if p.name == "last.ckpt"]
    return (last or found)[-1]


def _load_checkpoint(path: Path) -> dict[str, Any]:
    # The one safe reader (weights_only=True); publish checks the state dict itself, with its own message.
    return read_checkpoint(path, lightning=False)


def _search_dirs(run: Path, ckpt: Path) -> list[Path]:
    # Lightning writes <log_dir>/checkpoints/x.ckpt next to <log_dir>/config.yaml.
    dirs = ([run] if run.is_dir() else []) + [ckpt.parent, ckpt.parent.parent]
    return list(dict.fromkeys(dirs))


def _first_existing(dirs: list[Path], filename: str) -> Path | None:
    return next((d / filename for d in dirs if (d / filename).is_file()), None)


def _read_config(path: Path) -> dict[str, Any]:
    try:
        config = yaml.safe_load(path.read_text()) or {}
    except yaml.YAMLError as err:
        raise ValueError(f"{path}: not valid YAML: {err}") from err
    if not isinstance(config, dict):
        raise ValueError(f"{path}: expected a mapping at the top level")
    return config


def _model_spec(ckpt: dict[str, Any], config: dict[str, Any], ckpt_path: Path,
                config_path: Path | None) -> tuple[str, dict[str, Any]]:
    """Class path + init args from the checkpoint's hyper_parameters, else config.yaml's `model` section
    (in today's names: an older run's moved class paths name their new modules)."""
    hparams = current_hparams(ckpt.get("hyper_parameters") or {})
    if "_class_path" in hparams:  # how LightningCLI records the model class
        class_path = hparams.pop("_class_path")
        return class_path, {k: v for k, v in hparams.items() if not k.startswith("_")}
    if "class_path" in hparams:  # a spec-shaped record (zoo.config.Configurable.spec())
        return hparams["class_path"], dict(hparams.get("init_args") or {})
    model = config.get("model")
    if isinstance(model, dict) and "class_path" in model:
        model = current_hparams(model)
        return model["class_path"], dict(model.get("init_args") or {})
    raise ValueError(f"{ckpt_path}: cannot tell the model's class: no '_class_path' or 'class_path' in its "
                     f"hyper_parameters and no config.yaml with a model: {{class_path, init_args}} section"
                     + (f" (read {config_path})" if config_path else ""))


def _read_metrics(path: Path) -> dict[str, float]:
    try:
        raw = json.loads(path.read_text())
    except (OSError, json.JSONDecodeError) as err:
        raise ValueError(f"{path}: cannot read metrics JSON ({err})") from err
    if not isinstance(raw, dict):
        raise ValueError(f"{path}: expected a JSON object of metric -> value")
    flat: dict[str, float] = {}

    def walk(prefix: str, value: Any) -> None:
        if isinstance(value, dict):
            for key, sub in value.items():
                walk(f"{prefix}/{key}" if prefix else str(key), sub)
        elif isinstance(value, (int, float)) and not isinstance(value, bool):
            flat[prefix] = value

    walk("", raw)
    return flat


README_START, README_END = "<!-- zoo-table:start -->", "<!-- zoo-table:end -->"
ARCH_START, ARCH_END = "<!-- architecture-table:start -->", "<!-- architecture-table:end -->"


def readme_table(readme: str = "README.md", check: bool = False) -> None:
    """Regenerate the zoo table between the README's zoo-table markers from the registry.

    Architecture entries have their own compact table, between architecture-table markers where the README
    has them (one row per architecture, one column per scale).

    Args:
        readme: the README to update in place.
        check: only check that the README's table is current (exit 1 if not).
    """
    from zoo.catalog.registry import architectures_table_markdown, entries_table_markdown

    path = Path(readme)
    text = path.read_text()
    if README_START not in text or README_END not in text:
        raise SystemExit(f"{readme}: no {README_START} ... {README_END} markers")
    new = _replace_between(text, README_START, README_END, entries_table_markdown())
    if ARCH_START in new and ARCH_END in new:
        new = _replace_between(new, ARCH_START, ARCH_END, architectures_table_markdown())
    if check:
        if new != text:
            raise SystemExit(f"{readme}: the zoo table is out of date; run `unizoo zoo readme-table`")
        return
    tmp = path.with_suffix(".tmp")
    tmp.write_text(new)
    tmp.replace(path)
    print(f"updated the zoo table in {readme}")


def _replace_between(text: str, start: str, end: str, body: str) -> str:
    head, rest = text.split(start, 1)
    _, tail = rest.split(end, 1)
    return f"{head}{start}\n{body}{end}{tail}"

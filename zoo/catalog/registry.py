"""The zoo: model name -> class path + init args, weights location, and a model card.

An entry builds its model the way a recipe does (`{"class_path", "init_args"}`, nested component specs
included), so nothing picks a class by matching its name. With `pretrained=True` the entry's weights are
fetched through `zoo.catalog.hub` (sha256-verified) and loaded with an explicit key check.

Adding models:
- shipped tiny models: `unizoo zoo publish --run RUN --name NAME --to zoo/assets/weights` writes
  `NAME.safetensors` + `NAME.json` into the package; every `zoo/assets/weights/*.json` is registered at
  import with its weights as a bundled file (`register_shipped`);
- models published elsewhere (a folder or an HF repo): `register_from_json(path)`;
- anything else: `register(ZooEntry(...))`.
Upstream components (SigLIP, CLIP, Vicuna, LlamaGen's VQ) are registered at the bottom of this file.
Architectures (kind "architecture", `<arch>.<scale>`: untrained specs, the table of zoo/catalog/architectures.py)
are registered there too; a trained entry names its architecture (`architecture`), `list_pretrained` lists them.
"""
from __future__ import annotations

import dataclasses
import difflib
import fnmatch
import json
from dataclasses import dataclass, field
from importlib import resources
from pathlib import Path
from typing import Any

from torch import nn

from zoo.catalog import hub
from zoo.catalog.hub import WeightsSource
from zoo.config import build, merge

# "architecture": an untrained `<arch>.<scale>` spec of zoo/catalog/architectures.py; trained weights name one.
KINDS = ("unified", "space", "decoder", "language_model", "reader", "upstream", "architecture")
SHIPPED_DIR = "assets/weights"  # inside the zoo package


class UnknownModelError(ValueError):
    """No entry of that name is registered."""


@dataclass
class ModelCard:
    """What a model is and how it came to be: recipe, data, seed, cost, the metrics it reached."""

    recipe: str | None = None  # e.g. "recipes/smartwatch/tiny/vq-vq.yaml"
    data: str = ""
    seed: int | None = None
    wall_time: str = ""  # free text: "14 min on 2 CPU cores"
    metrics: dict[str, float] = field(default_factory=dict)
    # How `metrics` were measured, so they recompute from the weights: split, seed, sample counts, the
    # data spec, decoding, and the machine (float results are exact only there); see tests/test_zoo_unified.py.
    test_protocol: dict[str, Any] = field(default_factory=dict)
    how_to_reproduce: str = ""
    notes: str = ""


@dataclass
class ZooEntry:
    """One registered model: how to build it, where its weights live, and its card."""

    name: str
    kind: str
    class_path: str
    init_args: dict[str, Any] = field(default_factory=dict)
    weights: WeightsSource | None = None
    card: ModelCard = field(default_factory=ModelCard)
    upstream_id: str | None = None  # hub id of an upstream component the class loads itself
    # The commit of `upstream_id` the entry loads (also in init_args, which pass it to from_pretrained);
    # None where no commit is pinned (the card's notes say why).
    revision: str | None = None
    description: str = ""
    partial: bool = False  # the weights file may leave some of the model's keys out
    state_prefix: str = ""  # put before every key of the weights file (upstream files of a sub-module)
    # The `<arch>.<scale>` architecture entry these weights were trained as (pretrained weights are its tags;
    # `list_pretrained`); None where the model is no architecture of the table.
    architecture: str | None = None

    def __post_init__(self) -> None:
        if not self.name or any(c.isspace() for c in self.name):
            raise ValueError(f"zoo entry name {self.name!r} must be non-empty with no whitespace")
        if self.kind not in KINDS:
            raise ValueError(f"zoo entry {self.name!r}: kind {self.kind!r} is not one of {KINDS}")
        if "." not in self.class_path:
            raise ValueError(f"zoo entry {self.name!r}: class_path {self.class_path!r} must be 'module.Class'")
        if not isinstance(self.init_args, dict):
            raise ValueError(f"zoo entry {self.name!r}: init_args must be a dict")
        if self.revision is not None and (len(self.revision) != 40
                                          or any(c not in "0123456789abcdef" for c in self.revision)):
            raise ValueError(f"zoo entry {self.name!r}: revision {self.revision!r} must be a full 40-hex commit hash")

    def to_dict(self) -> dict[str, Any]:
        """A JSON-ready dict (weights fields left at None are dropped)."""
        out = dataclasses.asdict(self)
        if self.weights is not None:
            out["weights"] = {k: v for k, v in out["weights"].items() if v is not None}
        return out

    @classmethod
    def from_dict(cls, data: dict[str, Any], origin: str = "<dict>") -> ZooEntry:
        """Inverse of `to_dict`; `origin` names the file in error messages."""
        if not isinstance(data, dict):
            raise ValueError(f"{origin}: a zoo entry must be a JSON object")
        known = {f.name for f in dataclasses.fields(cls)}
        unknown = set(data) - known
        if unknown:
            raise ValueError(f"{origin}: unknown zoo entry keys {sorted(unknown)}")
        data = dict(data)
        try:
            if data.get("weights") is not None:
                data["weights"] = WeightsSource(**data["weights"])
            data["card"] = ModelCard(**(data.get("card") or {}))
            return cls(**data)
        except (TypeError, ValueError) as err:
            raise ValueError(f"{origin}: invalid zoo entry: {err}") from err


_REGISTRY: dict[str, ZooEntry] = {}


def register(entry: ZooEntry, *, replace: bool = False) -> ZooEntry:
    """Add an entry; a second entry with the same name is an error unless `replace`."""
    if entry.name in _REGISTRY and not replace:
        raise ValueError(f"zoo entry {entry.name!r} is already registered")
    _REGISTRY[entry.name] = entry
    return entry


def unregister(name: str) -> None:
    """Remove an entry (tests, re-registration)."""
    get_entry(name)
    del _REGISTRY[name]


def list_models(pattern: str = "*", kind: str | None = None) -> list[str]:
    """Sorted names matching a shell-style pattern (and a kind, if given)."""
    return sorted(n for n, e in _REGISTRY.items()
                  if fnmatch.fnmatchcase(n, pattern) and (kind is None or e.kind == kind))


def list_pretrained(pattern: str = "*") -> dict[str, list[str]]:
    """Architecture entry -> the registered weights trained as it (timm's pretrained tags), sorted.

    `pattern` (shell-style) matches the architecture's name or a weights entry's name.
    """
    out: dict[str, list[str]] = {}
    for name in sorted(_REGISTRY):
        arch = _REGISTRY[name].architecture
        if arch is not None and (fnmatch.fnmatchcase(arch, pattern) or fnmatch.fnmatchcase(name, pattern)):
            out.setdefault(arch, []).append(name)
    return dict(sorted(out.items()))


def get_entry(name: str) -> ZooEntry:
    """The entry called `name`; an unknown name's error lists close matches."""
    try:
        return _REGISTRY[name]
    except KeyError:
        close = difflib.get_close_matches(name, list(_REGISTRY), n=5, cutoff=0.5)
        hint = f"; did you mean {', '.join(close)}?" if close else "; see `unizoo zoo list`"
        raise UnknownModelError(f"unknown zoo model {name!r}{hint}") from None


def create_model(name: str, pretrained: bool = False, **overrides: Any) -> nn.Module:
    """Build a registered model (overrides merged into init_args); load its weights if `pretrained`.

    Upstream entries load their hub weights themselves through their init args; `pretrained` then only
    matters where the entry also lists a weights file.
    """
    entry = get_entry(name)
    init_args = merge(entry.init_args, overrides)
    model = build({"class_path": entry.class_path, "init_args": init_args})
    if not isinstance(model, nn.Module):
        raise TypeError(f"zoo entry {name!r}: {entry.class_path} built a {type(model).__name__}, not an nn.Module")
    if pretrained:
        if entry.weights is not None:
            load_pretrained(model, entry)
        elif entry.kind != "upstream":
            tags = list_pretrained(name).get(name) if entry.kind == "architecture" else None
            hint = f" (weights trained as this architecture: {', '.join(tags)})" if tags else ""
            raise ValueError(f"zoo entry {name!r} has no weights; use pretrained=False{hint}")
    return model


def entry_state_dict(entry: ZooEntry, *, offline: bool | None = None) -> tuple[dict[str, Any], Path]:
    """`entry`'s sha256-checked weights as a state dict under today's key names, and the file they came from."""
    if entry.weights is None:
        raise ValueError(f"zoo entry {entry.name!r} has no weights")
    from zoo.catalog.checkpoint import current_state_dict

    path = hub.fetch(entry.weights, offline=offline)
    state = {entry.state_prefix + key: value for key, value in hub.load_state_dict_file(path).items()}
    return current_state_dict(state), path  # weights published before a rename load under today's names


def load_pretrained(model: nn.Module, entry: ZooEntry, *, offline: bool | None = None) -> nn.Module:
    """Fetch `entry`'s weights and load them into `model`, refusing unexpected or unexplained missing keys."""
    state, path = entry_state_dict(entry, offline=offline)
    from zoo.catalog.checkpoint import check_state_dict

    # Keys the model itself declares as coming from elsewhere (frozen upstream towers; exact keys or globs)
    # may be absent, and any key where the entry says its weights are partial. Raises CheckpointMismatchError.
    check_state_dict(state, model.state_dict(), where=f"zoo entry {entry.name!r} ({path}): weights do not fit "
                     f"{type(model).__name__}", missing_ok=entry.partial,
                     allowed_missing=model.frozen_state_keys() if hasattr(model, "frozen_state_keys") else (),
                     hint="a model may list keys it loads elsewhere in frozen_state_keys(); an entry may set partial=True")
    model.load_state_dict(state, strict=False)
    return model


# ----------------------------------------------------------------------------- published / shipped entries


def register_from_json(path: str | Path, *, replace: bool = False, package_file: str | None = None) -> ZooEntry:
    """Register an entry written by `unizoo zoo publish`; weights with no location sit beside the JSON."""
    path = Path(path)
    try:
        data = json.loads(path.read_text())
    except (OSError, json.JSONDecodeError) as err:
        raise ValueError(f"{path}: cannot read zoo entry JSON ({err})") from err
    weights = data.get("weights") if isinstance(data, dict) else None
    if isinstance(weights, dict) and not any(weights.get(k) for k in ("hf_repo", "url", "package_file")):
        filename = weights.get("filename")
        if not filename:
            raise ValueError(f"{path}: weights need a location or a filename")
        if package_file is not None:
            weights = {**weights, "package_file": package_file}
        else:
            weights = {**weights, "url": (path.parent / filename).resolve().as_uri()}
        data = {**data, "weights": weights}
    return register(ZooEntry.from_dict(data, origin=str(path)), replace=replace)


def register_shipped() -> list[str]:
    """Register every `zoo/assets/weights/*.json` (published there) with its weights as a bundled file."""
    folder = resources.files("zoo").joinpath(*SHIPPED_DIR.split("/"))
    if not folder.is_dir():
        return []
    names = []
    for item in sorted(folder.iterdir(), key=lambda t: t.name):
        if item.name.endswith(".json"):
            try:
                data = json.loads(item.read_text())
                filename = (data.get("weights") or {}).get("filename", "")
            except (json.JSONDecodeError, AttributeError) as err:
                raise ValueError(f"zoo/{SHIPPED_DIR}/{item.name}: not a zoo entry JSON ({err})") from err
            with resources.as_file(item) as local:
                entry = register_from_json(local, replace=True,
                                           package_file=f"{SHIPPED_DIR}/{filename}" if filename else None)
            names.append(entry.name)
    return names


# ----------------------------------------------------------------------------- README table


def entries_table_markdown(pattern: str = "*", kind: str | None = None) -> str:
    """The README's zoo table: name, kind, description, headline metrics, weights location and size.

    Architecture entries are left out unless `kind="architecture"` (`architectures_table_markdown` lists them).
    """
    rows = ["| Name | Kind | Description | Metrics | Weights |", "|---|---|---|---|---|"]
    for name in list_models(pattern, kind):
        entry = _REGISTRY[name]
        if kind is None and entry.kind == "architecture":
            continue
        metrics = ", ".join(f"{k} {_fmt(v)}" for k, v in list(entry.card.metrics.items())[:3]) or "-"
        rows.append(f"| `{name}` | {entry.kind} | {_cell(entry.description)} | {_cell(metrics)} | "
                    f"{_cell(_weights_cell(entry))} |")
    return "\n".join(rows) + "\n"


def architectures_table_markdown() -> str:
    """One row per architecture: its scales (entry `<arch>.<scale>`, with its recipe) and the weights tagged on it."""
    from zoo.catalog.architectures import ARCHITECTURES, SCALES

    rows = ["| Architecture | " + " | ".join(SCALES) + " | Pretrained |", "|---" * (len(SCALES) + 2) + "|"]
    tags = list_pretrained()
    for arch in ARCHITECTURES:
        cells, weights = [], []
        for scale in SCALES:
            entry = _REGISTRY.get(f"{arch}.{scale}")
            cells.append("-" if entry is None else f"[recipe]({entry.card.recipe})" if entry.card.recipe else "yes")
            weights += tags.get(f"{arch}.{scale}", [])
        rows.append(f"| {arch} | " + " | ".join(cells) + f" | {', '.join(f'`{w}`' for w in weights) or '-'} |")
    return "\n".join(rows) + "\n"


def _weights_cell(entry: ZooEntry) -> str:
    if entry.weights is None:
        if not entry.upstream_id:
            return "-"
        return f"upstream `{entry.upstream_id}`" + (f" @ `{entry.revision[:10]}`" if entry.revision else " (unpinned)")
    size = entry.weights.size
    if size is None and entry.weights.package_file:
        resource = resources.files("zoo").joinpath(*entry.weights.package_file.split("/"))
        if resource.is_file():
            with resources.as_file(resource) as local:
                size = local.stat().st_size
    unpinned = "" if entry.weights.sha256 or entry.weights.package_file else " (no published sha256: trusted on first use)"
    return entry.weights.describe() + (f" ({_human(size)})" if size is not None else "") + unpinned


def _human(size: int) -> str:
    for unit in ("B", "KB", "MB", "GB"):
        if size < 1024 or unit == "GB":
            return f"{size:.0f} {unit}" if unit == "B" else f"{size:.1f} {unit}"
        size /= 1024
    return str(size)


def _fmt(value: Any) -> str:
    return f"{value:.3g}" if isinstance(value, float) else str(value)


def _cell(text: str) -> str:
    return text.replace("|", "\\|").replace("\n", " ")


# ----------------------------------------------------------------------------- upstream components

_UPSTREAM_NOTE = "Upstream release loaded through its own hub id; not trained by this project."
# Commits of the upstream repos, pinned so an upstream re-upload cannot change what an entry loads. They were
# read off Hugging Face cache snapshot folders (models--ORG--NAME/snapshots/<commit>) quoted in many public
# repositories, not checked against the hub from here (no network): `unizoo zoo pull NAME` fails loudly
# (RevisionNotFoundError) if one does not exist.
UPSTREAM_REVISIONS = {
    "google/siglip-base-patch16-224": "7fd15f0689c79d79e38b1c2e2e2370a7bf2761ed",
    "openai/clip-vit-large-patch14-336": "ce19dc912ca5cd21c8a653c79e251e808ccabcd1",
    "lmsys/vicuna-7b-v1.5": "3321f76e3f527bd14065daf69dad9344000a201d",
}
_PINNED_NOTE = (" Pinned to commit {rev} (read off public Hugging Face cache snapshot paths; not verified "
                "against the hub from the machine that pinned it).")


def _register_upstream() -> None:
    for name, hub_id, model_class, what in (
        ("siglip-b16-224", "google/siglip-base-patch16-224", "transformers.SiglipVisionModel",
         "SigLIP-B/16 vision tower, 224 px, penultimate layer (frozen understanding/generation space)"),
        ("clip-l14-336", "openai/clip-vit-large-patch14-336", "transformers.CLIPVisionModel",
         "CLIP ViT-L/14 vision tower, 336 px, penultimate layer (LLaVA-1.5's encoder)"),
    ):
        rev = UPSTREAM_REVISIONS[hub_id]
        register(ZooEntry(
            name=name, kind="upstream", class_path="zoo.spaces.hf.HFVisionSpace",
            init_args={"model_class": model_class, "pretrained": hub_id, "layer": -2, "revision": rev},
            upstream_id=hub_id, revision=rev, description=what,
            card=ModelCard(notes=_UPSTREAM_NOTE + _PINNED_NOTE.format(rev=rev))))
    rev = UPSTREAM_REVISIONS["lmsys/vicuna-7b-v1.5"]
    register(ZooEntry(
        name="vicuna-7b-v1.5", kind="upstream", class_path="zoo.model.backbone.LanguageBackbone",
        init_args={"model": "lmsys/vicuna-7b-v1.5", "train_mode": "lora", "revision": rev},
        upstream_id="lmsys/vicuna-7b-v1.5", revision=rev,
        description="Vicuna-7B v1.5 language model (LoRA training), the paper's backbone",
        card=ModelCard(notes=_UPSTREAM_NOTE + _PINNED_NOTE.format(rev=rev))))
    register(ZooEntry(
        name="llamagen-vq16", kind="upstream", class_path="zoo.spaces.vq.VQTokenizer",
        init_args={"variant": "VQ-16", "codebook_size": 16384, "codebook_dim": 8, "image_size": 256},
        weights=WeightsSource(url="https://huggingface.co/FoundationVision/LlamaGen/resolve/main/vq_ds16_c2i.pt"),
        upstream_id="FoundationVision/LlamaGen", state_prefix="model.",  # VQTokenizer holds LlamaGen's VQModel as .model
        description="LlamaGen VQ-16 image tokenizer (16x downsampling, 16384 codes of dim 8), 256 px",
        card=ModelCard(notes=_UPSTREAM_NOTE + " Not pinned: no commit of FoundationVision/LlamaGen and no sha256 "
                       "of vq_ds16_c2i.pt could be found from here (LlamaGen publishes none), so the file is read "
                       "from `main` and trusted on first use (its digest is recorded in the unizoo cache's "
                       "tofu.json at the first download and every later copy must match it). Once known, set "
                       "the entry's weights.sha256 (and a /resolve/<commit>/ URL).")))


def _register_architectures() -> None:
    from zoo.catalog.architectures import entries

    for data in entries():
        register(ZooEntry.from_dict(data, origin="zoo/catalog/architectures.py"))


_register_upstream()
_register_architectures()
register_shipped()

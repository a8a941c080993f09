"""Tests generated from the registry's architecture table (zoo/catalog/architectures.py): a new entry is tested unwritten.

* every `*.smoke` entry builds, takes a training step, writes an image and survives a state-dict round trip;
* every recipe under recipes/smartwatch/tiny and recipes/smartwatch/study builds exactly its entry (no drift);
* pretrained weights are tags of the architecture they name, and a unified model that is an architecture names it.
"""
from __future__ import annotations

from pathlib import Path
from typing import Any

import pytest
import torch

from datamodules.smartwatch.source import SmartWatchSource
from tools.lightning_cli import load_recipe
from zoo.catalog import registry
from zoo.catalog.architectures import ARCHITECTURES, RECIPE_DIRS, SCALES
from zoo.catalog.registry import create_model, get_entry, list_models, list_pretrained
from zoo.eval.evaluation import _image_prompt
from zoo.model.generate import GenerationConfig, generate_images

ROOT = Path(__file__).resolve().parent.parent
SMOKE = list_models("*.smoke", kind="architecture")
RECIPES = sorted(p for d in RECIPE_DIRS.values() for p in (ROOT / d).glob("[!_]*.yaml"))


def _rel(path: Path) -> str:
    return str(path.relative_to(ROOT))


@pytest.fixture(scope="module")
def samples():
    source = SmartWatchSource(train=4, val=2, test=2, seed=0, size=64)
    return [source.sample("train", i) for i in range(6)]  # 2 images x (generation, vqa, caption)


def _model(name: str, seed: int = 0):
    torch.manual_seed(seed)
    return create_model(name)


# ----------------------------------------------------------------------------- every smoke entry


def test_every_architecture_has_a_smoke_entry():
    assert SMOKE == sorted(f"{name}.smoke" for name in ARCHITECTURES)
    assert len(SMOKE) >= 9 and any(get_entry(n).class_path.endswith("MisalignedVLM") for n in SMOKE)


@pytest.mark.parametrize("name", SMOKE)
def test_one_training_step_runs(name, samples):
    model = _model(name).train()
    batch = model.processor(samples)
    trainable = [(n, p) for n, p in model.named_parameters() if p.requires_grad]
    optimizer = torch.optim.AdamW([p for _, p in trainable], lr=1e-3)
    loss, _ = model.loss(model(batch))
    assert torch.isfinite(loss), loss
    optimizer.zero_grad()
    loss.backward()
    with_grad = [n for n, p in trainable if p.grad is not None and torch.isfinite(p.grad).all() and p.grad.abs().sum() > 0]
    for part in ("backbone.", "read_projector.", "head."):
        assert any(n.startswith(part) for n in with_grad), f"{part} got no gradient"
    assert not any(n.startswith(("read_space.", "write_space.")) for n in with_grad), "a frozen space learned"
    optimizer.step()
    assert torch.isfinite(model.loss(model(batch))[0])


@pytest.mark.parametrize("name", SMOKE)
@torch.no_grad()
def test_writes_one_image(name, samples):
    model = _model(name).eval()
    requests = [s for s in samples if s.task == "generation"]
    written = generate_images(model, _image_prompt(model, requests), GenerationConfig(max_new_tokens=0, max_images=1))
    space = model.write_space
    assert written.shape[:2] == (len(requests), space.num_tokens)
    if space.discrete:
        assert written.dtype == torch.long and 0 <= written.min() and written.max() < space.codebook_size
    else:
        assert written.ndim == 3 and torch.isfinite(written).all()


@pytest.mark.parametrize("name", SMOKE)
@torch.no_grad()
def test_state_dict_round_trip(name, samples):
    model = _model(name).eval()
    for param in model.parameters():  # off the initialisation, so a weight left behind would show
        if param.requires_grad:
            param.add_(0.01 * torch.randn_like(param))
    other = _model(name, seed=1).eval()
    other.load_state_dict(model.state_dict())
    batch = model.processor(samples)
    mine, theirs = model(batch), other(batch)
    for key in ("text_loss", "image_loss"):
        assert torch.allclose(mine[key], theirs[key], atol=1e-6), key


# ----------------------------------------------------------------------------- recipes = entries


@pytest.mark.parametrize("path", RECIPES, ids=_rel)
def test_recipe_builds_its_registry_entry(path):
    scale = next(s for s, d in RECIPE_DIRS.items() if path.parent == ROOT / d)
    entry = get_entry(f"{path.stem}.{scale}")
    assert entry.kind == "architecture" and entry.card.recipe == _rel(path)
    assert load_recipe(path)["model"] == {"class_path": entry.class_path, "init_args": entry.init_args}


def test_every_recipe_scale_entry_has_its_recipe():
    for scale in RECIPE_DIRS:
        names = list_models(f"*.{scale}", kind="architecture")
        assert names and all((ROOT / get_entry(n).card.recipe).is_file() for n in names), scale
    assert {p.stem for p in RECIPES if p.parent.name == "tiny"} == {n.rsplit(".", 1)[0] for n in list_models("*.tiny", kind="architecture")}


def test_entries_are_named_arch_dot_scale_and_build_fresh_copies():
    for name in list_models(kind="architecture"):
        arch, scale = name.rsplit(".", 1)
        assert arch in ARCHITECTURES and scale in SCALES
    from zoo.catalog.presets import preset

    spec = preset("vq-vq", "smoke")
    spec["init_args"]["backbone"]["init_args"]["config"]["hidden_size"] = 1  # a caller's edit stays its own
    assert get_entry("vq-vq.smoke").init_args["backbone"]["init_args"]["config"]["hidden_size"] == 64
    with pytest.raises(ValueError, match="unknown preset"):
        preset("clip-clip", "study")


# ----------------------------------------------------------------------------- pretrained tags


def _unset(arch: dict[str, Any], weights: dict[str, Any], path: str = "") -> list[str]:
    """Where `weights` (a published spec, defaults filled in) differs from what `arch` sets."""
    if isinstance(arch, dict) and isinstance(weights, dict):
        return [d for k, v in arch.items()
                for d in (_unset(v, weights[k], f"{path}/{k}") if k in weights else [f"{path}/{k} missing"])]
    return [] if arch == weights else [f"{path}: {arch!r} != {weights!r}"]


def _spec(entry) -> dict[str, Any]:
    return {"class_path": entry.class_path, "init_args": entry.init_args}


def test_pretrained_weights_are_tags_of_their_architecture():
    tags = list_pretrained()
    assert tags and all(n.endswith(".study") for n in tags)  # the shipped study models
    architectures = [get_entry(n) for n in list_models(kind="architecture")]
    for name in list_models(kind="unified"):
        entry = get_entry(name)
        matching = {a.name for a in architectures if not _unset(_spec(a), _spec(entry))}
        if entry.architecture is not None:
            arch = get_entry(entry.architecture)
            assert arch.kind == "architecture" and name in tags[arch.name]
            assert not _unset(_spec(arch), _spec(entry)), f"{name} is not {arch.name}: {_unset(_spec(arch), _spec(entry))}"
        # a model that is an architecture of the table says so (and no other one)
        assert matching == ({entry.architecture} if entry.architecture else set()), (name, matching)
    vq_vq = ["smartwatch-vq-vq-drawing", "smartwatch-vq-vq-drawing-generation", "smartwatch-vq-vq-drawing-weather",
             "smartwatch-vq-vq-drawing-weather-long",
             "smartwatch-vq-vq-study"]
    assert list_pretrained("smartwatch-vq-vq*") == {"vq-vq.study": vq_vq}  # the drawing models are tags too
    assert list_pretrained("vq-vq.*") == {"vq-vq.study": vq_vq}
    with pytest.raises(ValueError, match="smartwatch-vq-vq-study"):
        create_model("vq-vq.study", pretrained=True)  # an architecture holds no weights; its tags are named


def test_zoo_list_and_readme_tables_show_architectures(monkeypatch, capsys):
    from tools import zoo_cmd

    monkeypatch.setenv("COLUMNS", "400")
    zoo_cmd.list_entries("vq-vq.*", kind="architecture")
    out = capsys.readouterr().out
    assert all(f"vq-vq.{s}" in out for s in SCALES) and "smartwatch-vq-vq-study" in out and "pretrained: " in out
    assert "vq-vq.smoke" not in registry.entries_table_markdown()  # the README's zoo table is not flooded
    table = registry.architectures_table_markdown()
    assert len(table.splitlines()) == 2 + len(ARCHITECTURES) and "`smartwatch-vq-vq-study`" in table


def test_publish_tags_the_weights_with_their_architecture(tmp_path, monkeypatch, capsys):
    from tools import zoo_cmd

    monkeypatch.setattr(registry, "_REGISTRY", dict(registry._REGISTRY))
    (tmp_path / "run").mkdir()
    torch.save({"state_dict": torch.nn.Linear(3, 2).state_dict(),
                "hyper_parameters": {"in_features": 3, "out_features": 2, "_class_path": "torch.nn.Linear"}},
               tmp_path / "run" / "last.ckpt")
    path = zoo_cmd.publish(str(tmp_path / "run"), "t-tagged", str(tmp_path / "out"), architecture="vq-vq.tiny")
    registry.register_from_json(path)
    assert get_entry("t-tagged").architecture == "vq-vq.tiny" and list_pretrained("vq-vq.tiny") == {"vq-vq.tiny": ["t-tagged"]}
    with pytest.raises(ValueError, match="not an architecture"):
        zoo_cmd.publish(str(tmp_path / "run"), "t-bad", str(tmp_path / "bad"), architecture="vq-smartwatch-tiny")

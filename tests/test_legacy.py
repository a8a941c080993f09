"""Older names keep working: module paths from before zoo/ was grouped by job (zoo/_legacy.py)."""
from __future__ import annotations

import importlib
from pathlib import Path

import pytest
import torch

import zoo
from zoo._legacy import MOVED_MODULES, current_class_path
from zoo.catalog.presets import preset
from zoo.config import build

ROOT = Path(__file__).resolve().parent.parent
OLD_OF = {new: old for old, new in MOVED_MODULES.items()}


def as_old_paths(value):
    """A spec/hparams copy whose class paths name the modules' old places (what older files hold)."""
    if isinstance(value, dict):
        out = {}
        for key, item in value.items():
            if key in ("class_path", "_class_path") and isinstance(item, str):
                module, _, attr = item.rpartition(".")
                item = f"{OLD_OF.get(module, module)}.{attr}"
            out[key] = as_old_paths(item)
        return out
    if isinstance(value, list):
        return [as_old_paths(v) for v in value]
    return value


@pytest.mark.parametrize("old", sorted(MOVED_MODULES))
def test_old_module_path_is_the_moved_module_itself(old):
    new = MOVED_MODULES[old]
    module = importlib.import_module(old)
    assert module is importlib.import_module(new)
    assert module.__name__ == module.__spec__.name == new  # it keeps its own name and spec
    assert not (ROOT / (old.replace(".", "/") + ".py")).exists()  # one table, no shim file per module
    assert not (ROOT / old.replace(".", "/")).exists()  # and no package taking the old name


def test_old_names_of_classes_and_functions():
    from zoo.model.callbacks import ThroughputLogger
    from zoo.model.variants import SharedSpaceVLM

    from zoo.callbacks import ThroughputLogger as old_logger  # noqa: I001  (the old paths, on purpose)
    from zoo.variants import SharedSpaceVLM as old_shared

    assert old_shared is SharedSpaceVLM and old_logger is ThroughputLogger
    assert zoo.SharedSpaceVLM is SharedSpaceVLM
    assert current_class_path("zoo.validation.ValidationScores") == "zoo.eval.validation.ValidationScores"
    assert current_class_path("zoo.spaces.vq.VQTokenizer") == "zoo.spaces.vq.VQTokenizer"  # never moved


def test_import_zoo_stays_cheap():
    import subprocess
    import sys

    code = "import sys, zoo; print('torch' in sys.modules, 'zoo.model' in sys.modules)"
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True, cwd=ROOT)
    assert out.stdout.split() == ["False", "False"]


def test_old_class_path_strings_build():
    spec = as_old_paths(preset("siglip-siglip", "smoke"))
    assert spec["class_path"] == "zoo.variants.SharedSpaceVLM"
    assert spec["init_args"]["backbone"]["class_path"] == "zoo.backbone.LanguageBackbone"
    torch.manual_seed(0)
    model = build(spec)
    assert type(model) is zoo.SharedSpaceVLM
    assert model.spec()["class_path"] == "zoo.model.variants.SharedSpaceVLM"  # it records today's path


def test_zoo_entry_naming_old_paths_loads_its_weights():
    from zoo.catalog.registry import ZooEntry, create_model, get_entry, register, unregister

    entry = get_entry("smartwatch-siglip-siglip-tiny")
    data = entry.to_dict()
    old = {**data, "name": "t-legacy-paths", "class_path": "zoo.variants.SharedSpaceVLM",
           "init_args": as_old_paths(data["init_args"])}
    old["init_args"]["backbone"]["class_path"] = "zoo.backbone.LanguageBackbone"
    register(ZooEntry.from_dict(old), replace=True)
    try:
        legacy = create_model("t-legacy-paths", pretrained=True)
    finally:
        unregister("t-legacy-paths")
    current = create_model("smartwatch-siglip-siglip-tiny", pretrained=True)
    assert type(legacy) is type(current)
    mine, theirs = legacy.state_dict(), current.state_dict()
    assert mine.keys() == theirs.keys() and all(torch.equal(mine[k], theirs[k]) for k in mine)


def test_checkpoint_whose_hparams_name_old_paths_loads_and_matches_the_recipe(tmp_path):
    import lightning as L

    from tools.lightning_cli import check_checkpoint
    from tools.zoo_cmd import _model_spec
    from zoo.model.unified import UnifiedVLM

    torch.manual_seed(0)
    model = build(preset("siglip-siglip", "smoke"))
    trainer = L.Trainer(logger=False, enable_checkpointing=False, enable_progress_bar=False, max_steps=0)
    trainer.strategy.connect(model)
    path = tmp_path / "old.ckpt"
    trainer.save_checkpoint(path)
    ckpt = torch.load(path, weights_only=False)
    ckpt["hyper_parameters"] = as_old_paths(dict(ckpt["hyper_parameters"]))
    assert ckpt["hyper_parameters"]["_class_path"] == "zoo.variants.SharedSpaceVLM"
    torch.save(ckpt, path)

    restored = UnifiedVLM.load_from_checkpoint(path, weights_only=True)
    assert type(restored) is type(model)
    assert all(torch.equal(v, model.state_dict()[k]) for k, v in restored.state_dict().items())
    check_checkpoint(model, path)  # a recipe naming the new paths accepts the old checkpoint (resume, test)
    class_path, init_args = _model_spec(ckpt, {}, path, None)  # `unizoo zoo publish` writes today's paths
    assert class_path == "zoo.model.variants.SharedSpaceVLM"
    assert init_args["backbone"]["class_path"] == "zoo.model.backbone.LanguageBackbone"

"""Older names keep working (zoo/_legacy.py): module paths from before zoo/ was grouped by job, and the
und/gen, input/output names of the two directions from before everything said read/write."""
from __future__ import annotations

import importlib
from pathlib import Path

import pytest
import torch

import zoo
from zoo._legacy import MOVED_MODULES, RENAMED_ARGUMENTS, RENAMED_STATE_KEYS, current_class_path
from zoo.catalog.presets import preset
from zoo.config import build

ROOT = Path(__file__).resolve().parent.parent
OLD_OF = {new: old for old, new in MOVED_MODULES.items()}
OLD_ARG = {new: old for old, new in RENAMED_ARGUMENTS.items()}
OLD_KEY = {new: old for old, new in RENAMED_STATE_KEYS.items()}


def old_key(key: str) -> str:
    """A state-dict key as checkpoints before the read/write names held it."""
    for new, old in OLD_KEY.items():
        if key == new or (new.endswith(".") and key.startswith(new)):
            return old + key[len(new):]
    return key


def old_hparams(hparams: dict) -> dict:
    """Hyperparameters as older checkpoints hold them: old class paths and old argument names."""
    return {OLD_ARG.get(k, k): v for k, v in as_old_paths(dict(hparams)).items()}


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


# ----------------------------------------------------------------------------- read/write names


def _smoke(name: str = "siglip-vq"):
    torch.manual_seed(0)
    return build(preset(name, "smoke"))


def test_vocabulary_tables_name_what_the_model_has():
    model = _smoke("siglip-vq")
    params = set(model.hparams)
    assert set(RENAMED_ARGUMENTS.values()) <= params and not set(RENAMED_ARGUMENTS) & params
    keys = model.state_dict().keys()
    assert not any(old_key(k) == k for k in keys if k.startswith(("read_", "write_")) and "positions" not in k)
    assert not any(k.startswith(("und_", "gen_", "input_", "output_")) for k in keys)


def test_old_constructor_names_build_the_same_model_with_a_warning():
    spec = preset("siglip-vq", "smoke")
    args = {OLD_ARG.get(k, k): v for k, v in spec["init_args"].items()}
    assert {"input_space", "output_space", "und_projector", "gen_projector"} <= set(args)
    torch.manual_seed(0)
    with pytest.warns(FutureWarning, match="'input_space' is now called 'read_space'"):
        old = build({"class_path": spec["class_path"], "init_args": args})
    new = _smoke("siglip-vq")
    assert old.spec() == new.spec()  # recorded (and saved) under today's names
    assert "read_space" in old.hparams and "input_space" not in old.hparams
    assert all(torch.equal(v, new.state_dict()[k]) for k, v in old.state_dict().items())
    with pytest.raises(TypeError, match="both 'und_projector' and its new name 'read_projector'"):
        build({"class_path": spec["class_path"], "init_args": {**args, "read_projector": "mlp"}})


def test_old_names_reach_the_base_class_and_the_processor():
    from zoo.model.processor import UnifiedProcessor
    from zoo.model.unified import UnifiedVLM

    spec = preset("siglip-vq", "smoke")["init_args"]
    torch.manual_seed(0)
    with pytest.warns(FutureWarning):
        model = UnifiedVLM(backbone=spec["backbone"], input_space=spec["read_space"], output_space=spec["write_space"])
    assert model.read_space is not None and model.write_space is not None
    with pytest.warns(FutureWarning):
        proc = UnifiedProcessor(model.backbone.tokenizer, model.backbone.token_ids, input_space=model.read_space)
    assert proc.read_space is model.read_space and proc.write_space is None


def test_old_state_dict_keys_load():
    model, fresh = _smoke("siglip-siglip"), _smoke("siglip-siglip")
    with torch.no_grad():
        for p in model.parameters():
            p.add_(0.01)
    state = {old_key(k): v for k, v in model.state_dict().items()}
    assert any(k.startswith("und_projector.") for k in state)
    fresh.load_state_dict(state)
    assert all(torch.equal(v, model.state_dict()[k]) for k, v in fresh.state_dict().items())


def test_subclass_overriding_an_old_hook_name_still_runs():
    from zoo.model.variants import SharedSpaceVLM

    calls = []
    with pytest.warns(FutureWarning, match="encode_read_images overrides the hook now called encode_read"):
        class Counting(SharedSpaceVLM):
            def encode_read_images(self, batch):
                calls.append(1)
                return SharedSpaceVLM.encode_read(self, batch)

    assert Counting.encode_read is Counting.__dict__["encode_read_images"]


def test_old_weights_file_of_a_zoo_entry_loads(tmp_path, monkeypatch):
    """A zoo entry published before the rename: old argument names, old state keys, old class paths."""
    monkeypatch.setenv("UNIZOO_CACHE", str(tmp_path / "cache"))
    for var in ("UNIZOO_MIRROR", "UNIZOO_OFFLINE", "HF_HUB_OFFLINE"):  # a file:// URL is read as a download
        monkeypatch.delenv(var, raising=False)
    from zoo.catalog.hub_files import load_state_dict_file, save_state_dict_file
    from zoo.catalog.registry import ZooEntry, create_model, get_entry, register, unregister

    entry = get_entry("smartwatch-siglip-vq-study")
    data = entry.to_dict()
    state = load_state_dict_file(zoo.fetch(entry.weights))
    old_file = tmp_path / "old.safetensors"
    digest = save_state_dict_file({old_key(k): v for k, v in state.items()}, old_file)
    init = {OLD_ARG.get(k, k): v for k, v in as_old_paths(data["init_args"]).items()}
    assert "input_space" in init
    register(ZooEntry.from_dict({**data, "name": "t-old-vocabulary", "class_path": "zoo.variants.SeparateSpacesVLM",
                                 "init_args": init, "weights": {"url": old_file.as_uri(), "sha256": digest}}),
             replace=True)
    try:
        with pytest.warns(FutureWarning):
            legacy = create_model("t-old-vocabulary", pretrained=True)
    finally:
        unregister("t-old-vocabulary")
    current = create_model("smartwatch-siglip-vq-study", pretrained=True)
    mine, theirs = legacy.state_dict(), current.state_dict()
    assert mine.keys() == theirs.keys() and all(torch.equal(mine[k], theirs[k]) for k in mine)


def test_old_lightning_checkpoint_loads_resumes_and_publishes(tmp_path):
    """Old class paths, old hyperparameter names and old state keys, all at once: it rebuilds
    (load_from_checkpoint, with no variant module imported by hand), fits a recipe of today's names
    (`--ckpt_path` check) and publishes today's names."""
    import lightning as L

    from tools.lightning_cli import check_checkpoint
    from tools.zoo_cmd import _model_spec
    from zoo.model.unified import UnifiedVLM

    model = _smoke("siglip-vq")
    trainer = L.Trainer(logger=False, enable_checkpointing=False, enable_progress_bar=False, max_steps=0)
    trainer.strategy.connect(model)
    path = tmp_path / "old.ckpt"
    trainer.save_checkpoint(path)
    ckpt = torch.load(path, weights_only=False)
    ckpt["hyper_parameters"] = old_hparams(ckpt["hyper_parameters"])
    ckpt["state_dict"] = {old_key(k): v for k, v in ckpt["state_dict"].items()}
    assert "input_space" in ckpt["hyper_parameters"] and any(k.startswith("gen_projector.") for k in ckpt["state_dict"])
    torch.save(ckpt, path)

    restored = UnifiedVLM.load_from_checkpoint(path, weights_only=True)  # read in today's names, silently
    assert type(restored) is type(model) and not set(RENAMED_ARGUMENTS) & set(restored.hparams)
    assert all(torch.equal(v, model.state_dict()[k]) for k, v in restored.state_dict().items())
    check_checkpoint(model, path)
    class_path, init_args = _model_spec(ckpt, {}, path, None)
    assert class_path == "zoo.model.variants.SeparateSpacesVLM"
    assert {"read_space", "write_space", "read_projector", "write_projector"} <= set(init_args)
    assert not set(RENAMED_ARGUMENTS) & set(init_args)


def test_old_recipe_keys_and_command_line_names_parse(tmp_path, capsys, monkeypatch):
    import yaml

    from tools.lightning_cli import run_lightning_cli

    recipe = yaml.safe_load((ROOT / "recipes/smartwatch/tiny/siglip-vq.yaml").read_text())
    args = recipe["model"]["init_args"]
    recipe["model"]["init_args"] = {OLD_ARG.get(k, k): v for k, v in args.items()}
    recipe["_base"] = str(ROOT / "recipes/smartwatch/tiny/_base.yaml")
    old = tmp_path / "old.yaml"
    old.write_text(yaml.safe_dump(recipe))
    monkeypatch.chdir(ROOT)
    with pytest.warns(FutureWarning), pytest.raises(SystemExit):
        run_lightning_cli(["fit", "--config", str(old), "--model.init_args.gen_projector", "mlp", "--print_config"])
    model = yaml.safe_load(capsys.readouterr().out)["model"]["init_args"]
    assert model["write_projector"] == "mlp" and model["read_space"]["init_args"]["pretrained"] == "zoo:siglip-smartwatch-tiny"
    assert not set(RENAMED_ARGUMENTS) & set(model)


def test_a_run_resumed_across_the_renames_keeps_its_config():
    from tools.lightning_cli import _in_current_names

    new = {"model": {"class_path": "zoo.model.variants.SeparateSpacesVLM",
                     "init_args": {"read_space": {"class_path": "zoo.spaces.vq.VQTokenizer"}, "write_projector": "mlp"}},
           "trainer": {"callbacks": [{"class_path": "zoo.eval.validation.ValidationScores"}]}}
    old = {"model": {"class_path": "zoo.variants.SeparateSpacesVLM",
                     "init_args": {"input_space": {"class_path": "zoo.spaces.vq.VQTokenizer"}, "gen_projector": "mlp"}},
           "trainer": {"callbacks": [{"class_path": "zoo.validation.ValidationScores"}]}}
    assert _in_current_names(old) == _in_current_names(new) == new

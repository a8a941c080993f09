"""Bad input: each case gives one clear line naming what and where, a non-zero exit, and no partial output.

The CLI runs in-process through `tools.cli.main(argv, raise_errors=False)`, the console script's mode.
"""
from __future__ import annotations

import json
from pathlib import Path

import pytest
import torch
import yaml
from lightning.pytorch.callbacks import Callback
from PIL import Image
from safetensors.torch import save_file

from test_reliability_resume import smoke_model, smoke_recipe
from tools.cli import main
from zoo.catalog import hub, registry
from zoo.config import build


def run_cli(capsys, *args: str) -> tuple[int, str]:
    """(exit status, stderr) of `unizoo ARGS` as the console script runs it."""
    capsys.readouterr()
    with pytest.raises(SystemExit) as exit_info:
        main(list(args), raise_errors=False)
    err = capsys.readouterr().err
    return exit_info.value.code, err


def assert_no_output(root: Path) -> None:
    """Nothing of a run was left behind (no log folder, config copy or checkpoint)."""
    assert not (root / "runs").exists(), sorted(str(p) for p in (root / "runs").rglob("*"))


class PoisonAt(Callback):
    """Test-only: turn the output head's weights into NaN just before step `step + 1`."""

    def __init__(self, step: int) -> None:
        self.step = step

    def on_train_batch_start(self, trainer, pl_module, batch, batch_idx) -> None:  # noqa: D102
        if trainer.global_step == self.step:
            with torch.no_grad():
                for p in pl_module.head.parameters():
                    p.fill_(float("nan"))


# ----------------------------------------------------------------------------- recipes


@pytest.mark.parametrize("child, named", [
    ({"model": {"init_args": {"lrr": 0.1}}}, "'lrr' is not accepted"),
    ({"data": {"init_args": {"batch_sise": 3}}}, "'batch_sise' is not accepted"),
    ({"trainr": {"max_steps": 3}}, "does not accept option 'trainr"),
])
def test_mistyped_recipe_key(tmp_path, capsys, child, named):
    base = smoke_recipe(tmp_path)
    recipe = tmp_path / "child.yaml"
    recipe.write_text(yaml.safe_dump({"_base": str(base), **child}))
    code, err = run_cli(capsys, "fit", "--config", str(recipe))
    assert code == 2
    assert err.startswith(f"unizoo fit: error: recipe {recipe}: ") and named in err
    assert "Given value" not in err  # not the whole config echoed back
    assert_no_output(tmp_path)


def test_unknown_class_path(tmp_path, capsys):
    model = smoke_model()
    model["init_args"]["space"]["class_path"] = "zoo.spaces.hf.NoSuchSpace"
    recipe = smoke_recipe(tmp_path, model=model)
    code, err = run_cli(capsys, "fit", "--config", str(recipe))
    assert code == 2
    assert f"recipe {recipe}" in err and "'zoo.spaces.hf.NoSuchSpace'" in err and "has no attribute 'NoSuchSpace'" in err
    assert_no_output(tmp_path)


def test_image_size_not_divisible_by_the_patch(tmp_path, capsys):
    recipe = smoke_recipe(tmp_path, model=smoke_model(image_size=30))
    code, err = run_cli(capsys, "fit", "--config", str(recipe))
    assert code == 1
    assert err.splitlines()[0] == ("unizoo fit: error: HFVisionSpace(transformers.SiglipVisionModel): image size 30 "
                                   "is not divisible by the patch size 8; choose an image size that is a multiple of 8")
    assert_no_output(tmp_path)


# ----------------------------------------------------------------------------- data


def test_sequence_longer_than_the_context(tmp_path, capsys):
    recipe = smoke_recipe(tmp_path, model=smoke_model(max_positions=24))
    code, err = run_cli(capsys, "fit", "--config", str(recipe))
    assert code == 1
    # Names the sample (task, index, image) and both lengths.
    assert "error: sample 0 (task '" in err and "image 'smartwatch/0/train/" in err
    assert "tokens after image expansion > max_length 24" in err
    assert_no_output(tmp_path)  # it failed on the first batch: the run's folder was removed


def _llava(tmp_path: Path, records: list[dict]) -> dict:
    images = tmp_path / "images"
    images.mkdir()
    for name in ("a.png", "b.png"):
        Image.new("RGB", (32, 32), (200, 30, 30)).save(images / name)
    path = tmp_path / "train.json"
    path.write_text(json.dumps(records))
    return {"class_path": "datamodules.mixed.MixedTaskDataModule",
            "init_args": {"batch_size": 2, "sources": [{"class_path": "datamodules.llava.LlavaJsonSource",
                                                        "init_args": {"json_path": str(path), "image_root": str(images)}}]}}


def test_llava_record_whose_image_markers_do_not_match_its_images(tmp_path, capsys):
    good = {"image": "a.png", "conversations": [{"from": "human", "value": "<image>\nWhat time is it?"},
                                                {"from": "gpt", "value": "Ten past two."}]}
    bad = {"image": "b.png", "conversations": [{"from": "human", "value": "<image>\n<image>\nSame watch?"},
                                               {"from": "gpt", "value": "Yes."}]}
    data = _llava(tmp_path, [good, bad])
    code, err = run_cli(capsys, "fit", "--config", str(smoke_recipe(tmp_path, data=data)))
    assert code == 1
    assert f"{tmp_path / 'train.json'}: 1 problem: record 1: 2 <image> markers but 1 image(s)" in err
    assert_no_output(tmp_path)


@pytest.mark.parametrize("command, data_args, named", [
    # every train item filtered out by the mix
    ("fit", {"mix": "generation", "tasks": ["vqa"]}, "selects no training items; the sources' train split has {'vqa': 16}"),
    # nothing to evaluate
    ("test", {"test": 0}, "the test split is empty"),
])
def test_empty_dataset_after_filtering(tmp_path, capsys, command, data_args, named):
    source = {"train": 16, "val": 2, "test": 2, "size": 32}
    if "tasks" in data_args:
        source["tasks"] = data_args["tasks"]
    source.update({k: v for k, v in data_args.items() if k == "test"})
    data = {"class_path": "datamodules.mixed.MixedTaskDataModule",
            "init_args": {"batch_size": 4, "mix": data_args.get("mix", "mixed"),
                          "sources": [{"class_path": "datamodules.smartwatch.source.SmartWatchSource", "init_args": source}]}}
    code, err = run_cli(capsys, command, "--config", str(smoke_recipe(tmp_path, data=data)))
    assert code == 1 and named in err
    assert_no_output(tmp_path)


# ----------------------------------------------------------------------------- checkpoints and weights


def _checkpoint(path: Path, model_spec: dict, hparams: bool = True) -> Path:
    model = build(model_spec)
    ckpt = {"state_dict": model.state_dict(), "pytorch-lightning_version": "2.6.6", "global_step": 0, "epoch": 0}
    if hparams:
        ckpt["hyper_parameters"] = dict(model.hparams)
    torch.save(ckpt, path)
    return path


def test_checkpoint_of_another_architecture(tmp_path, capsys):
    recipe = smoke_recipe(tmp_path)
    other = smoke_model()
    other["init_args"]["space"]["init_args"]["config"]["hidden_size"] = 48
    # A Lightning checkpoint (with hyperparameters): the differing setting is named.
    ckpt = _checkpoint(tmp_path / "other.ckpt", other)
    code, err = run_cli(capsys, "test", "--config", str(recipe), "--ckpt_path", str(ckpt))
    assert code == 1
    assert f"{ckpt} was written by another architecture than the recipe builds: " in err
    assert "space.init_args.config.hidden_size: checkpoint 48, recipe 32" in err
    # Weights alone (no hyperparameters): the shapes tell.
    bare = _checkpoint(tmp_path / "bare.ckpt", other, hparams=False)
    code, err = run_cli(capsys, "test", "--config", str(recipe), "--ckpt_path", str(bare))
    assert code == 1 and f"{bare} does not fit SharedSpaceVLM: " in err and "shape mismatches" in err
    assert_no_output(tmp_path)


def test_truncated_or_pickled_checkpoints_are_refused(tmp_path, capsys):
    recipe = smoke_recipe(tmp_path)
    good = _checkpoint(tmp_path / "good.ckpt", smoke_model()).read_bytes()
    cut = tmp_path / "cut.ckpt"
    cut.write_bytes(good[: len(good) // 2])
    code, err = run_cli(capsys, "test", "--config", str(recipe), "--ckpt_path", str(cut))
    assert code == 1 and f"{cut}: cannot read checkpoint (truncated or corrupt?)" in err

    marker = tmp_path / "payload-ran"
    evil = tmp_path / "evil.ckpt"
    torch.save({"state_dict": {}, "payload": _Payload(str(marker))}, evil)
    code, err = run_cli(capsys, "test", "--config", str(recipe), "--ckpt_path", str(evil))
    assert code == 1 and f"{evil}: refused: the checkpoint holds pickled objects" in err
    assert not marker.exists()  # the pickled code never ran
    assert_no_output(tmp_path)


class _Payload:
    """Unpickling this creates a file: the stand-in for arbitrary code in a pickle."""

    def __init__(self, path: str) -> None:
        self.path = path

    def __reduce__(self):
        return (open, (self.path, "w"))


def test_pt_weights_with_pickled_objects_are_refused(tmp_path):
    marker = tmp_path / "payload-ran"
    path = tmp_path / "weights.pt"
    torch.save({"w": torch.zeros(2), "x": _Payload(str(marker))}, path)
    with pytest.raises(hub.UnsafeCheckpointError, match=rf"{path}: refused: .*weights_only=True"):
        hub.load_state_dict_file(path)
    assert not marker.exists()


@pytest.fixture
def zoo_entry(tmp_path, monkeypatch):
    """A zoo entry (a 2x2 Linear) whose weights sit in a local mirror folder; removed afterwards."""
    mirror, cache = tmp_path / "mirror", tmp_path / "cache"
    mirror.mkdir()
    monkeypatch.setenv("UNIZOO_MIRROR", str(mirror))
    monkeypatch.setenv("UNIZOO_CACHE", str(cache))
    names = []

    def make(name: str, data: bytes, sha256: str | None) -> registry.ZooEntry:
        (mirror / f"{name}.safetensors").write_bytes(data)
        weights = hub.WeightsSource(url=f"https://example.invalid/{name}.safetensors", sha256=sha256)
        names.append(name)
        return registry.register(registry.ZooEntry(name=name, kind="reader", class_path="torch.nn.Linear",
                                                   init_args={"in_features": 2, "out_features": 2}, weights=weights))

    yield make
    for name in names:
        registry.unregister(name)


def _linear_weights(tmp_path: Path) -> bytes:
    save_file({"weight": torch.ones(2, 2), "bias": torch.zeros(2)}, str(tmp_path / "w.safetensors"))
    return (tmp_path / "w.safetensors").read_bytes()


def test_weights_with_a_wrong_sha256(tmp_path, capsys, zoo_entry, monkeypatch):
    data = _linear_weights(tmp_path)
    zoo_entry("reliability-bad-sha", data, "0" * 64)
    code, err = run_cli(capsys, "zoo", "pull", "reliability-bad-sha")
    assert code == 1
    assert f"sha256 mismatch for {tmp_path / 'mirror' / 'reliability-bad-sha.safetensors'}: expected {'0' * 64}, got " in err
    assert not (tmp_path / "cache").exists() or not any((tmp_path / "cache").rglob("*.safetensors"))
    # The traceback is one environment variable away.
    monkeypatch.setenv("UNIZOO_DEBUG", "1")
    with pytest.raises(hub.ChecksumError):
        main(["zoo", "pull", "reliability-bad-sha"], raise_errors=False)


def test_truncated_safetensors_weights(tmp_path, zoo_entry):
    data = _linear_weights(tmp_path)[:-3]
    (tmp_path / "cut.safetensors").write_bytes(data)
    # Published truncated (its digest matches): the loader, not the checksum, has to catch it.
    zoo_entry("reliability-cut", data, hub.sha256_file(tmp_path / "cut.safetensors"))
    with pytest.raises(ValueError, match=r"reliability-cut.safetensors: not a valid safetensors file \(truncated or corrupt\?\)"):
        registry.create_model("reliability-cut", pretrained=True)


# ----------------------------------------------------------------------------- training


def test_nan_loss_stops_with_a_clear_message_and_keeps_the_last_good_checkpoint(tmp_path, capsys):
    poison = {"class_path": f"{PoisonAt.__module__}.PoisonAt", "init_args": {"step": 5}}
    recipe = smoke_recipe(tmp_path, steps=8, every=2, callbacks=[poison])
    code, err = run_cli(capsys, "fit", "--config", str(recipe))
    assert code == 1
    ckpt_dir = tmp_path / "runs" / "smoke" / "version_0" / "checkpoints"
    assert "error: non-finite training loss nan at step 5 (batch 5); stopping" in err
    assert f"Last good checkpoint: {ckpt_dir / 'last.ckpt'}" in err
    saved = torch.load(ckpt_dir / "last.ckpt", map_location="cpu", weights_only=True)
    assert saved["global_step"] == 4
    assert all(torch.isfinite(v).all() for v in saved["state_dict"].values() if v.is_floating_point())
    assert sorted(p.name for p in ckpt_dir.iterdir()) == ["epoch=0-step=4.ckpt", "last.ckpt"]

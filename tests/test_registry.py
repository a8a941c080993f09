"""zoo.catalog.registry and `unizoo zoo`: entries, building, verified pretrained loading, publishing a run."""
from __future__ import annotations

import dataclasses
import json
from pathlib import Path

import pytest
import torch
from torch import nn

from tools import zoo_cmd
from zoo.catalog import hub, registry
from zoo.catalog.hub import WeightsSource
from zoo.catalog.registry import ModelCard, UnknownModelError, ZooEntry


class Tiny(nn.Module):
    """A small model with a nested config argument and a frozen part it loads elsewhere."""

    def __init__(self, dim: int = 4, opts: dict | None = None, inner: nn.Module | None = None,
                 declare_frozen: bool = False) -> None:
        super().__init__()
        self.opts = dict(opts or {})
        self.body = nn.Linear(dim, dim)
        self.tower = nn.Linear(2, 2)
        self.inner = inner
        self.declare_frozen = declare_frozen

    def frozen_state_keys(self) -> list[str]:
        return ["tower.*"] if self.declare_frozen else []


TINY = f"{__name__}.Tiny"


class Wrap(nn.Module):
    """Holds an upstream module as `.model` (as VQTokenizer holds LlamaGen's VQModel)."""

    def __init__(self) -> None:
        super().__init__()
        self.model = nn.Linear(2, 2)


@pytest.fixture(autouse=True)
def isolated(tmp_path, monkeypatch):
    """A private registry copy and cache; no mirror; online only toward file:// URLs."""
    monkeypatch.setattr(registry, "_REGISTRY", dict(registry._REGISTRY))
    monkeypatch.setenv("UNIZOO_CACHE", str(tmp_path / "cache"))
    for var in ("UNIZOO_MIRROR", "UNIZOO_OFFLINE", "HF_HUB_OFFLINE"):
        monkeypatch.delenv(var, raising=False)


def _publish_weights(state: dict[str, torch.Tensor], folder: Path, name: str = "w") -> WeightsSource:
    folder.mkdir(parents=True, exist_ok=True)
    path = folder / f"{name}.safetensors"
    digest = hub.save_state_dict_file(state, path)
    return WeightsSource(url=path.as_uri(), sha256=digest)


def test_upstream_entries_are_registered():
    assert {"siglip-b16-224", "clip-l14-336", "vicuna-7b-v1.5", "llamagen-vq16"} <= set(registry.list_models())
    siglip = registry.get_entry("siglip-b16-224")
    assert siglip.kind == "upstream" and siglip.class_path == "zoo.spaces.hf.HFVisionSpace"
    assert siglip.init_args == {"model_class": "transformers.SiglipVisionModel",
                                "pretrained": "google/siglip-base-patch16-224", "layer": -2,
                                "revision": siglip.revision}  # the pinned commit (tests/test_upstream_pinning.py)
    assert registry.get_entry("vicuna-7b-v1.5").init_args["train_mode"] == "lora"
    vq = registry.get_entry("llamagen-vq16")
    assert vq.weights is not None and vq.weights.sha256 is None and "first use" in vq.card.notes
    assert vq.weights.local_name == "vq_ds16_c2i.pt" and vq.state_prefix == "model."


def test_register_list_and_lookup():
    registry.register(ZooEntry(name="t-b", kind="reader", class_path="torch.nn.Linear"))
    registry.register(ZooEntry(name="t-a", kind="unified", class_path="torch.nn.Linear"))
    assert registry.list_models("t-*") == ["t-a", "t-b"]
    assert registry.list_models("t-*", kind="reader") == ["t-b"]
    with pytest.raises(ValueError, match="already registered"):
        registry.register(ZooEntry(name="t-a", kind="unified", class_path="torch.nn.Linear"))
    with pytest.raises(UnknownModelError, match="siglip-b16-224"):
        registry.get_entry("siglip-b16-22")
    with pytest.raises(ValueError, match="kind"):
        ZooEntry(name="x", kind="weird", class_path="torch.nn.Linear")


def test_create_model_merges_overrides_and_builds_nested_specs():
    registry.register(ZooEntry(name="t-tiny", kind="unified", class_path=TINY,
                               init_args={"dim": 3, "opts": {"a": 1, "b": {"c": 2, "d": 3}}}))
    model = registry.create_model("t-tiny", opts={"b": {"d": 4}},
                                  inner={"class_path": "torch.nn.Linear",
                                         "init_args": {"in_features": 5, "out_features": 1}})
    assert isinstance(model, Tiny) and model.body.in_features == 3
    assert model.opts == {"a": 1, "b": {"c": 2, "d": 4}}
    assert isinstance(model.inner, nn.Linear) and model.inner.in_features == 5
    assert registry.get_entry("t-tiny").init_args["opts"]["b"]["d"] == 3  # the entry is untouched
    registry.register(ZooEntry(name="t-lin", kind="reader", class_path="torch.nn.Linear",
                               init_args={"in_features": 2, "out_features": 2}))
    assert registry.create_model("t-lin", out_features=7).out_features == 7
    with pytest.raises(ValueError, match="no weights"):
        registry.create_model("t-lin", pretrained=True)


def test_pretrained_weights_load_verified(tmp_path):
    source = Tiny(dim=3)
    registry.register(ZooEntry(name="t-pre", kind="unified", class_path=TINY, init_args={"dim": 3},
                               weights=_publish_weights(source.state_dict(), tmp_path / "pub")))
    model = registry.create_model("t-pre", pretrained=True)
    for key, value in source.state_dict().items():
        assert torch.equal(model.state_dict()[key], value)
    fresh = registry.create_model("t-pre")
    assert not torch.equal(fresh.body.weight, source.body.weight)


def test_state_prefix_maps_a_submodule_file(tmp_path):
    inner = nn.Linear(2, 2)
    registry.register(ZooEntry(name="t-prefix", kind="space", class_path=f"{__name__}.Wrap",
                               weights=_publish_weights(inner.state_dict(), tmp_path / "pub")))
    with pytest.raises(ValueError, match="does not have"):
        registry.create_model("t-prefix", pretrained=True)
    registry.register(dataclasses.replace(registry.get_entry("t-prefix"), state_prefix="model."), replace=True)
    assert torch.equal(registry.create_model("t-prefix", pretrained=True).model.weight, inner.weight)


def test_pretrained_wrong_digest_is_refused(tmp_path):
    good = _publish_weights(Tiny(dim=3).state_dict(), tmp_path / "pub")
    registry.register(ZooEntry(name="t-bad", kind="unified", class_path=TINY, init_args={"dim": 3},
                               weights=WeightsSource(url=good.url, sha256="0" * 64)))
    with pytest.raises(hub.ChecksumError):
        registry.create_model("t-bad", pretrained=True)


def test_unexpected_missing_and_shape_mismatch_keys(tmp_path):
    state = Tiny(dim=3).state_dict()
    extra = _publish_weights({**state, "ghost.weight": torch.ones(1)}, tmp_path / "a")
    registry.register(ZooEntry(name="t-extra", kind="unified", class_path=TINY, init_args={"dim": 3},
                               weights=extra))
    with pytest.raises(ValueError, match="ghost.weight"):
        registry.create_model("t-extra", pretrained=True)

    partial_state = {k: v for k, v in state.items() if not k.startswith("tower.")}
    partial = _publish_weights(partial_state, tmp_path / "b")
    registry.register(ZooEntry(name="t-miss", kind="unified", class_path=TINY, init_args={"dim": 3},
                               weights=partial))
    with pytest.raises(ValueError, match="tower.weight"):
        registry.create_model("t-miss", pretrained=True)
    # The model explains the gap (frozen tower loaded elsewhere) ...
    model = registry.create_model("t-miss", pretrained=True, declare_frozen=True)
    assert torch.equal(model.body.weight, state["body.weight"])
    # ... or the entry says its weights are partial.
    registry.register(ZooEntry(name="t-part", kind="unified", class_path=TINY, init_args={"dim": 3},
                               weights=partial, partial=True))
    assert torch.equal(registry.create_model("t-part", pretrained=True).body.bias, state["body.bias"])

    registry.register(ZooEntry(name="t-shape", kind="unified", class_path=TINY, init_args={"dim": 5},
                               weights=_publish_weights(state, tmp_path / "c")))
    with pytest.raises(ValueError, match="shape mismatch"):
        registry.create_model("t-shape", pretrained=True)


def test_entries_table_markdown(tmp_path):
    weights = _publish_weights(Tiny().state_dict(), tmp_path / "pub")
    registry.register(ZooEntry(name="t-table", kind="unified", class_path=TINY, description="a | b",
                               weights=WeightsSource(url=weights.url, sha256=weights.sha256, size=2048),
                               card=ModelCard(metrics={"vqa_acc": 0.91234, "fid": 12.0})))
    table = registry.entries_table_markdown("t-*")
    lines = table.strip().splitlines()
    assert lines[0] == "| Name | Kind | Description | Metrics | Weights |" and len(lines) == 3
    assert "`t-table`" in lines[2] and "a \\| b" in lines[2] and "vqa_acc 0.912" in lines[2]
    assert "2.0 KB" in lines[2]
    assert "upstream `google/siglip-base-patch16-224`" in registry.entries_table_markdown("siglip*")


def _fake_run(run: Path, with_class_in_ckpt: bool = True) -> nn.Linear:
    """A Lightning-style run dir: checkpoints/last.ckpt (+ config.yaml, metrics.json)."""
    model = nn.Linear(3, 2)
    hparams = {"in_features": 3, "out_features": 2}
    if with_class_in_ckpt:
        hparams |= {"_class_path": "torch.nn.Linear", "_instantiator": "lightning.pytorch.cli.instantiate_module"}
    (run / "checkpoints").mkdir(parents=True)
    torch.save({"state_dict": model.state_dict(), "hyper_parameters": hparams, "epoch": 2, "global_step": 10,
                "optimizer_states": []}, run / "checkpoints" / "last.ckpt")
    (run / "metrics.json").write_text(json.dumps({"val": {"vqa_acc": 0.8}, "step": 10, "note": "x"}))
    return model


def test_publish_then_create_from_published_json(tmp_path, capsys):
    run = tmp_path / "run"
    model = _fake_run(run)
    out = tmp_path / "published"
    json_path = zoo_cmd.publish(str(run), name="t-published", to=str(out), description="fake run")
    assert sorted(p.name for p in out.iterdir()) == ["t-published.json", "t-published.safetensors"]
    data = json.loads(Path(json_path).read_text())
    digest = hub.sha256_file(out / "t-published.safetensors")
    assert f"sha256 {digest}" in capsys.readouterr().out
    assert data["class_path"] == "torch.nn.Linear" and data["init_args"] == {"in_features": 3, "out_features": 2}
    assert data["weights"]["sha256"] == digest and data["card"]["metrics"] == {"val/vqa_acc": 0.8, "step": 10}
    assert set(hub.load_state_dict_file(out / "t-published.safetensors")) == {"weight", "bias"}

    entry = registry.register_from_json(json_path)
    loaded = registry.create_model("t-published", pretrained=True)
    assert entry.weights.url.startswith("file://")
    assert torch.equal(loaded.weight, model.weight) and torch.equal(loaded.bias, model.bias)


def test_published_folder_serves_as_mirror(tmp_path, monkeypatch):
    run = tmp_path / "run"
    model = _fake_run(run)
    out = tmp_path / "published"
    data = json.loads(Path(zoo_cmd.publish(str(run / "checkpoints" / "last.ckpt"), "t-mir", str(out))).read_text())
    # Weights said to live on an unreachable host: the mirror folder must answer first, offline.
    registry.register(ZooEntry(name="t-mir", kind="unified", class_path="torch.nn.Linear",
                               init_args=data["init_args"],
                               weights=WeightsSource(url="https://weights.invalid/t-mir.safetensors",
                                                     sha256=data["weights"]["sha256"])))
    monkeypatch.setenv("UNIZOO_MIRROR", str(out))
    monkeypatch.setenv("UNIZOO_OFFLINE", "1")
    assert torch.equal(registry.create_model("t-mir", pretrained=True).weight, model.weight)


def test_publish_reads_class_from_config_yaml(tmp_path):
    run = tmp_path / "run"
    _fake_run(run, with_class_in_ckpt=False)
    with pytest.raises(ValueError, match="cannot tell the model's class"):
        zoo_cmd.publish(str(run), "t-cfg", str(tmp_path / "out"))
    (run / "config.yaml").write_text(
        "seed_everything: 7\nmodel:\n  class_path: torch.nn.Linear\n  init_args:\n    in_features: 3\n"
        "    out_features: 2\ndata:\n  class_path: some.DataModule\n")
    data = json.loads(Path(zoo_cmd.publish(str(run), "t-cfg", str(tmp_path / "out"))).read_text())
    assert data["class_path"] == "torch.nn.Linear" and data["card"]["seed"] == 7
    assert data["card"]["recipe"].endswith("config.yaml") and "some.DataModule" in data["card"]["data"]


def test_publish_refuses_unsafe_checkpoint(tmp_path):
    ckpt = tmp_path / "evil.ckpt"
    torch.save({"state_dict": {}, "hook": print}, ckpt)
    with pytest.raises(hub.UnsafeCheckpointError, match="evil.ckpt"):
        zoo_cmd.publish(str(ckpt), "t-evil", str(tmp_path / "out"))


def test_cli_list_info_and_pull(tmp_path, capsys):
    from tools.cli import main

    main(["zoo", "list", "--pattern", "siglip*"])
    assert "siglip-b16-224" in capsys.readouterr().out
    main(["zoo", "info", "llamagen-vq16"])
    assert json.loads(capsys.readouterr().out)["init_args"]["variant"] == "VQ-16"
    registry.register(ZooEntry(name="t-pull", kind="reader", class_path="torch.nn.Linear",
                               weights=_publish_weights(nn.Linear(2, 2).state_dict(), tmp_path / "p")))
    main(["zoo", "pull", "t-pull"])
    out = capsys.readouterr().out
    assert "sha256 " + registry.get_entry("t-pull").weights.sha256 in out


def test_shipped_entries_register_from_package_folder(tmp_path, monkeypatch):
    package = tmp_path / "pkg"
    trained = _fake_run(tmp_path / "run")
    zoo_cmd.publish(str(tmp_path / "run"), "t-shipped", str(package / "assets" / "weights"))
    monkeypatch.setattr(registry.resources, "files", lambda name: package)
    monkeypatch.setattr(hub.resources, "files", lambda name: package)
    assert registry.register_shipped() == ["t-shipped"]
    entry = registry.get_entry("t-shipped")
    assert entry.weights.package_file == "assets/weights/t-shipped.safetensors"
    model = registry.create_model("t-shipped", pretrained=True)
    assert torch.equal(model.weight, trained.weight)
    assert "bundled: zoo/assets/weights/t-shipped.safetensors" in registry.entries_table_markdown("t-shipped")

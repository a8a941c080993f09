"""Every recipe under recipes/ parses with `unizoo fit` and builds; the tiny ones train one step.

Paper-scale and LLaVA recipes get their language model and spaces swapped for smoke-size ones on the
command line (as a user swaps components), so nothing is downloaded; everything else is the recipe's.
"""
from __future__ import annotations

import json
import re
import shlex
from pathlib import Path

import pytest
import torch
import yaml

from tools.lightning_cli import _constructor_defaults, load_recipe, run_lightning_cli
from zoo.catalog.presets import backbone, clip, siglip, vq
from zoo.config import build, import_class

ROOT = Path(__file__).resolve().parent.parent
RECIPES = ROOT / "recipes"
COMPONENTS = RECIPES / "components"
COMPONENT_FILES = sorted(COMPONENTS.glob("*.yaml"))
OVERLAYS = {RECIPES / "smartwatch" / "paper" / n for n in ("fsdp.yaml", "deepspeed-zero2.yaml")}
TINY = sorted((RECIPES / "smartwatch" / "tiny").glob("[!_]*.yaml"))
GRIDS = RECIPES / "study"  # `unizoo study` grid files, not recipes (tests/test_study.py; checked below)
ALL = sorted(p for p in RECIPES.rglob("[!_]*.yaml")
             if COMPONENTS not in p.parents and GRIDS not in p.parents and p not in OVERLAYS)
SCALED = [p for p in ALL if p not in TINY]  # paper-scale, LLaVA and any other recipe: parse + build at smoke size
SMALL_DATA = json.dumps([{"class_path": "datamodules.smartwatch.source.SmartWatchSource",
                          "init_args": {"train": 4, "val": 2, "test": 2, "size": 64, "seed": 0}}])
SLOTS = ("space", "read_space", "write_space")


def _rel(path: Path) -> str:
    return str(path.relative_to(ROOT))


def _resolved(args: list[str], capsys, monkeypatch) -> dict:
    """The config `unizoo fit ARGS --print_config` prints, as a dict."""
    monkeypatch.chdir(ROOT)  # recipes name shipped assets relative to the repository root
    with pytest.raises(SystemExit) as done:
        run_lightning_cli(["fit", *args, "--print_config"])
    assert done.value.code in (0, None)
    return yaml.safe_load(capsys.readouterr().out)


def _smoke_space(spec: dict) -> dict:
    """A smoke-size space of the same family as `spec`, nulling the keys that would load weights."""
    args = spec.get("init_args") or {}
    if spec["class_path"].endswith("VQTokenizer"):
        return {"class_path": spec["class_path"], "init_args": {**vq("smoke")["init_args"], "checkpoint": None}}
    family = clip if "CLIP" in str(args.get("model_class")) else siglip
    small = family("smoke")
    return {"class_path": small["class_path"], "init_args": {**small["init_args"], "pretrained": None, "pixel_decoder": None}}


def _smoke_overrides(recipe: dict) -> list[str]:
    """Command-line overrides that shrink a recipe's language model and spaces (its train mode kept)."""
    model = recipe["model"]["init_args"]
    lm = model["backbone"]["init_args"]
    small = backbone("smoke")["init_args"]
    lm_args = {**small, "model": None, "dtype": None, "lora_r": 4, "lora_alpha": 8,
               "train_mode": lm.get("train_mode", "full")}
    out = ["--model.init_args.backbone", json.dumps({"class_path": "zoo.model.backbone.LanguageBackbone", "init_args": lm_args})]
    for slot in SLOTS:
        if slot in model:
            out += [f"--model.init_args.{slot}", json.dumps(_smoke_space(model[slot]))]
    if model.get("init_from"):  # stage-1 weights fit the full-size model only (test_stage_two_recipe_...)
        out += ["--model.init_args.init_from", "null"]
    return out


def _first_line_comment(path: Path) -> str:
    return path.read_text().splitlines()[0]


@pytest.mark.parametrize("path", [p for p in RECIPES.rglob("*.yaml")], ids=_rel)
def test_every_file_says_what_it_serves(path):
    assert _first_line_comment(path).startswith("# "), f"{_rel(path)} must open with a comment on its experiment"


@pytest.mark.parametrize("path", SCALED, ids=_rel)
def test_large_recipe_parses_and_builds_at_smoke_size(path, capsys, monkeypatch):
    recipe = load_recipe(path)
    config = _resolved(["--config", str(path), *_smoke_overrides(recipe)], capsys, monkeypatch)
    model = build(config["model"])
    wanted = recipe["model"]
    assert f"{type(model).__module__}.{type(model).__name__}" == wanted["class_path"]
    for key in ("alpha", "lr", "projector_lr"):
        assert getattr(model, "hparams")[key] == pytest.approx(wanted["init_args"][key]), key
    assert model.backbone.train_mode == wanted["init_args"]["backbone"]["init_args"].get("train_mode", "full")
    if "strength" in wanted["init_args"]:
        assert model.read_space.strength == pytest.approx(wanted["init_args"]["strength"])
    trainer, data = config["trainer"], config["data"]["init_args"]
    global_batch = data["batch_size"] * trainer["devices"] * trainer["num_nodes"] * trainer["accumulate_grad_batches"]
    expected = {"paper": 384, "llava15": 256 if "stage1" in path.name else 128}.get(path.parent.name)
    if expected is not None:
        assert global_batch == expected


def test_paper_recipes_keep_the_paper_settings():
    for path in (RECIPES / "smartwatch" / "paper").glob("[!_]*.yaml"):
        if path in OVERLAYS:
            continue
        model = load_recipe(path)["model"]["init_args"]
        assert (model["lr"], model["projector_lr"], model["warmup_ratio"], model["weight_decay"]) == (2e-4, 1e-4, 0.03, 0.0)
        lm = model["backbone"]["init_args"]
        assert (lm["model"], lm["train_mode"], lm["lora_r"], lm["lora_alpha"]) == ("lmsys/vicuna-7b-v1.5", "lora", 128, 256)
        read, written = model.get("read_space", model.get("space")), model.get("write_space", model.get("space"))
        is_vq = {k: s["class_path"].endswith("VQTokenizer") for k, s in (("read", read), ("written", written))}
        assert model["alpha"] == (0.2 if is_vq["written"] else 1.0), path.name  # CE on codes, cosine on SigLIP
        kinds = [model[k] for k in ("projector", "read_projector", "write_projector") if k in model]
        assert kinds[0] == ("linear" if is_vq["read"] else "mlp"), path.name


@pytest.mark.parametrize("overlay", sorted(OVERLAYS), ids=_rel)
def test_strategy_overlays_stack_after_a_recipe(overlay, capsys, monkeypatch):
    recipe_path = RECIPES / "smartwatch" / "paper" / "siglip-vq.yaml"
    config = _resolved(["--config", str(recipe_path), "--config", str(overlay)], capsys, monkeypatch)
    strategy = config["trainer"]["strategy"]
    own = yaml.safe_load(overlay.read_text())["trainer"]["strategy"]
    if isinstance(own, str):
        assert strategy == own
    else:
        assert strategy["class_path"] == own["class_path"]
        assert strategy["init_args"]["auto_wrap_policy"] == own["init_args"]["auto_wrap_policy"]
    assert config["model"]["init_args"]["read_space"]["init_args"]["pretrained"] == "google/siglip-base-patch16-224"


def _component(path: Path) -> tuple[str, dict]:
    """(slot, spec) of a component overlay, its interpolations resolved as the CLI resolves them."""
    from omegaconf import OmegaConf

    own = OmegaConf.to_container(OmegaConf.create(path.read_text()), resolve=True)
    assert list(own) == ["model"] and list(own["model"]) == ["init_args"], f"{_rel(path)}: holds model.init_args.<slot> only"
    assert len(own["model"]["init_args"]) == 1, f"{_rel(path)}: fills exactly one slot"
    (slot, spec), = own["model"]["init_args"].items()
    return slot, spec


@pytest.mark.parametrize("path", COMPONENT_FILES, ids=_rel)
def test_component_overlay_fills_its_slot_on_any_recipe(path, capsys, monkeypatch):
    """A component is a --config overlay of one slot: its documented command, and the same overlay on a 7B
    recipe (LoRA, bf16, pretrained spaces), give the slot exactly the component, nothing of the recipe's left."""
    slot, spec = _component(path)
    assert slot in ("backbone", *SLOTS) and path.name.startswith("lm-" if slot == "backbone" else f"{slot}-")
    text = path.read_text()
    assert f"Slot `{slot}`" in text, "the file names the slot it fills"
    command = re.search(r"^#\s+(unizoo fit .*)$", text, re.M)
    assert command, "the file shows the exact command"
    args = shlex.split(command.group(1))[2:]
    assert args[-2:] == ["--config", _rel(path)] and args[:-2][0] == "--config"
    defaults = _constructor_defaults(import_class(spec["class_path"]))
    want = {"class_path": spec["class_path"], "init_args": {**defaults, **spec["init_args"]}}
    large = next(p for p in SCALED if slot in load_recipe(p)["model"]["init_args"])
    for recipe in (args[1], str(large)):
        config = _resolved(["--config", recipe, "--config", str(path)], capsys, monkeypatch)
        assert config["model"]["init_args"][slot] == want, recipe


def test_every_space_component_comes_in_every_slot():
    spaces: dict[str, dict[str, dict]] = {}
    for path in COMPONENT_FILES:
        slot, spec = _component(path)
        if slot != "backbone":
            spaces.setdefault(path.name.split("-", 1)[1], {})[slot] = spec
    assert len(spaces) >= 6
    for name, slots in spaces.items():
        assert set(slots) == set(SLOTS), name
        assert slots["space"] == slots["read_space"] == slots["write_space"], name


def test_tiny_components_stack_and_build(capsys, monkeypatch):
    """Random tiny components download nothing: stacked after tiny recipes, they build."""
    def comp(name: str) -> str:
        return str(COMPONENTS / name)

    shared = str(RECIPES / "smartwatch" / "tiny" / "siglip-siglip.yaml")
    for space in ("space-tiny-vq.yaml", "space-tiny-siglip.yaml"):
        config = _resolved(["--config", shared, "--config", comp("lm-tiny-llama.yaml"), "--config", comp(space)],
                           capsys, monkeypatch)
        built = build(config["model"])
        assert built.read_space.image_size == 64 and built.read_space is built.write_space
    separate = str(RECIPES / "smartwatch" / "tiny" / "siglip-vq.yaml")
    config = _resolved(["--config", separate, "--config", comp("read_space-tiny-vq.yaml"),
                        "--config", comp("write_space-tiny-siglip.yaml")], capsys, monkeypatch)
    built = build(config["model"])
    assert built.read_space.discrete and not built.write_space.discrete


def test_architecture_recipes_leave_the_language_model_to_their_base():
    """The LM and optimiser settings live in each family's _base (or _stage*) file, not in every architecture."""
    for path in ALL:
        if path.parent.name in ("tiny", "paper", "llava15"):
            own = (yaml.safe_load(path.read_text()).get("model") or {}).get("init_args") or {}
            assert not {"backbone", "lr", "projector_lr"} & set(own), _rel(path)


@pytest.mark.parametrize("path", TINY, ids=_rel)
def test_tiny_recipe_trains_one_step(path, tmp_path, monkeypatch):
    monkeypatch.chdir(ROOT)
    cli = run_lightning_cli(["fit", "--config", str(path), "--trainer.fast_dev_run", "true",
                             "--data.init_args.sources", SMALL_DATA, "--data.init_args.batch_size", "6",
                             "--trainer.default_root_dir", str(tmp_path), "--trainer.enable_progress_bar", "false"])
    assert cli.trainer.state.finished
    assert float(cli.trainer.callback_metrics["train/loss"]) > 0
    recipe = load_recipe(path)["model"]
    assert cli.model.hparams["_class_path"] == recipe["class_path"]


@pytest.mark.parametrize("mix", ["understanding", "generation"])  # "mixed": the tests above
def test_one_key_picks_the_task_mix(mix, tmp_path, monkeypatch):
    monkeypatch.chdir(ROOT)
    cli = run_lightning_cli(["fit", "--config", str(RECIPES / "smartwatch" / "tiny" / "vq-siglip.yaml"),
                             "--data.mix", mix, "--trainer.fast_dev_run", "true",
                             "--data.init_args.sources", SMALL_DATA, "--data.init_args.batch_size", "6",
                             "--trainer.default_root_dir", str(tmp_path), "--trainer.enable_progress_bar", "false"])
    tasks = set(cli.datamodule.dataset("train").counts())
    expected = {"understanding": {"vqa", "caption"}, "generation": {"generation"},
                "mixed": {"vqa", "caption", "generation"}}[mix]
    assert tasks == expected
    logged = set(cli.trainer.callback_metrics)
    assert ("train/image_loss" in logged) == (mix != "understanding")


def test_paper_run_keeps_ten_evenly_spaced_checkpoints(tmp_path, capsys, monkeypatch):
    """The paper _base's checkpointing, run on CPU at smoke size: 10 checkpoints per epoch plus the final one."""
    path = RECIPES / "smartwatch" / "paper" / "vq-vq.yaml"
    data = json.dumps([{"class_path": "datamodules.smartwatch.source.SmartWatchSource",
                        "init_args": {"train": 10, "val": 1, "test": 1, "size": 32, "seed": 0}}])
    monkeypatch.chdir(ROOT)
    run_lightning_cli(["fit", "--config", str(path), *_smoke_overrides(load_recipe(path)),
                       "--trainer.accelerator", "cpu", "--trainer.devices", "1", "--trainer.strategy", "auto",
                       "--trainer.precision", "32-true", "--trainer.accumulate_grad_batches", "1",
                       "--trainer.limit_val_batches", "1", "--trainer.enable_progress_bar", "false",
                       "--trainer.logger.init_args.save_dir", str(tmp_path), "--data.init_args.sources", data,
                       "--data.init_args.batch_size", "1", "--data.init_args.num_workers", "0"])
    found = sorted(p.name for p in tmp_path.rglob("*.ckpt"))
    steps = sorted(int(n.split("step=")[1].split(".")[0]) for n in found if n.startswith("epoch="))
    assert steps == [3 * k for k in range(1, 11)], found  # 30 samples, validation every 3 batches
    assert "last.ckpt" in found and any(n.startswith("final-") for n in found)


STAGE_TWO = [p for p in ALL if (load_recipe(p)["model"].get("init_args") or {}).get("init_from")]


@pytest.mark.parametrize("path", STAGE_TWO, ids=_rel)
def test_stage_two_recipe_starts_from_its_stage_one_weights(path, capsys, monkeypatch):
    """A recipe with init_from builds at its own size and carries the stage-1 LM and image head over."""
    from zoo.catalog.checkpoint import _init_state

    config = _resolved(["--config", str(path)], capsys, monkeypatch)
    model = build(config["model"])
    stage_one = _init_state(config["model"]["init_args"]["init_from"])
    assert torch.equal(model.head.weight, stage_one["head.weight"])
    name = "backbone.model.model.layers.0.self_attn.q_proj.weight"
    assert torch.equal(model.state_dict()[name], stage_one[name])


@pytest.mark.parametrize("path", sorted(GRIDS.glob("*.yaml")), ids=_rel)
def test_study_grid_files_load_and_name_existing_recipes(path, monkeypatch):
    from tools.study import load_grid
    from tools.study_plan import is_plan, load_plan

    monkeypatch.chdir(ROOT)
    grids = load_plan(path).grids if is_plan(path) else [load_grid(path)]  # a plan: the grid files it names
    for grid in grids:
        assert grid.runs, path
        for run in grid.runs:
            assert Path(run.recipe).is_file(), (path, run.recipe)

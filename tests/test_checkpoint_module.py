"""zoo.catalog.checkpoint: safe reading, state-dict checks, load-matching, the frozen-weights policy, run settings."""
from __future__ import annotations

import pytest
import torch
from torch import nn

from tools.lightning_cli import _constructor_parameters, check_checkpoint
from zoo.catalog import checkpoint
from zoo.catalog.checkpoint import (
    ARCHITECTURE_COMPONENTS,
    RUN_SETTINGS,
    CheckpointMismatchError,
    UnsafeCheckpointError,
    check_state_dict,
    compare_state_dict,
    frozen_state_keys,
    load_matching_weights,
    read_checkpoint,
    reloadable_prefixes,
    setting_differences,
)
from zoo.catalog.presets import preset
from zoo.config import build
from zoo.model.unified import UnifiedVLM
from zoo.model.variants import MisalignedVLM, SeparateSpacesVLM, SharedSpaceVLM


class Two(nn.Module):
    """Two linear layers; `out` sets the second one's width (another size of the same architecture)."""

    def __init__(self, out: int = 2) -> None:
        super().__init__()
        self.body = nn.Linear(4, 4)
        self.head = nn.Linear(4, out)


def _smoke(name: str, **overrides) -> UnifiedVLM:
    torch.manual_seed(0)
    return build(preset(name, "smoke", **overrides))


def _shapes(model: nn.Module) -> dict[str, tuple[int, ...]]:
    return {k: tuple(v.shape) for k, v in model.state_dict().items()}


# ----------------------------------------------------------------------------- one error class


def test_one_error_class_under_every_old_name():
    from tools import lightning_cli
    from zoo.model import unified

    assert lightning_cli.CheckpointMismatchError is unified.CheckpointMismatchError is CheckpointMismatchError
    # Callers catch it as a bad input (ValueError) or as torch's load_state_dict failure (RuntimeError).
    assert issubclass(CheckpointMismatchError, ValueError) and issubclass(CheckpointMismatchError, RuntimeError)
    assert lightning_cli.RUN_SETTINGS is UnifiedVLM.RUN_SETTINGS is RUN_SETTINGS


# ----------------------------------------------------------------------------- checking


def test_mismatch_error_names_the_keys():
    own = Two(out=2).state_dict()
    state = dict(Two(out=3).state_dict())
    del state["body.bias"]
    state["extra.weight"] = torch.zeros(1)
    with pytest.raises(CheckpointMismatchError) as err:
        check_state_dict(state, own, where="ckpt.pt does not fit Two")
    text = str(err.value)
    assert text.startswith("ckpt.pt does not fit Two: ")
    assert "2 shape mismatches [head.bias (3,) vs model (2,), head.weight (3, 4) vs model (2, 4)]" in text
    assert "1 missing key [body.bias]" in text and "1 unexpected key [extra.weight] (the model does not have it)" in text
    assert text.endswith("was it written by another architecture?")


def test_allowed_missing_keys_and_globs_and_partial_loads():
    own = Two().state_dict()
    state = {k: v for k, v in own.items() if not k.startswith("body.")}
    assert compare_state_dict(state, own).missing == ("body.bias", "body.weight")
    assert not compare_state_dict(state, own, allowed_missing=["body.*"])  # a glob (registry entries)
    assert not compare_state_dict(state, own, allowed_missing={"body.weight", "body.bias"})  # exact keys (UnifiedVLM)
    check_state_dict(state, own, where="w", missing_ok=True)
    # Shapes count even where missing and unexpected keys are waived: such a tensor can never load.
    with pytest.raises(CheckpointMismatchError, match="head.weight"):
        check_state_dict(Two(out=3).state_dict(), own, where="w", missing_ok=True, unexpected_ok=True)


def test_unified_load_state_dict_uses_the_check():
    model = _smoke("siglip-siglip")
    state = dict(model.state_dict())
    state.pop("write_feature_norm")  # optional: older checkpoints lack it
    model.load_state_dict(state)
    first = next(iter(state))
    state.pop(first)
    with pytest.raises(CheckpointMismatchError, match=rf"does not fit SharedSpaceVLM: 1 missing key \[{first}\]"):
        model.load_state_dict(state)
    model.load_state_dict(state, strict=False)  # strict=False: a partial load


# ----------------------------------------------------------------------------- reading


def test_checkpoint_written_by_a_model_reads_back(tmp_path):
    import lightning as L

    model = _smoke("siglip-siglip")
    trainer = L.Trainer(logger=False, enable_checkpointing=False, enable_progress_bar=False, max_steps=0)
    trainer.strategy.connect(model)
    path = tmp_path / "m.ckpt"
    trainer.save_checkpoint(path)

    ckpt = read_checkpoint(path)
    assert ckpt["hyper_parameters"]["_class_path"] == "zoo.model.variants.SharedSpaceVLM"
    own = model.state_dict()
    assert set(ckpt["state_dict"]) == set(own) - model.frozen_state_keys()
    assert all(torch.equal(v, own[k]) for k, v in ckpt["state_dict"].items())
    # The same architecture fits, also with other run settings; another one is named.
    check_checkpoint(model, path)
    check_checkpoint(_smoke("siglip-siglip", lr=1e-3, eval_temperature=0.7, condition_dropout=0.1), path)
    with pytest.raises(CheckpointMismatchError, match="share_projector: checkpoint True, recipe False"):
        check_checkpoint(_smoke("siglip-siglip", share_projector=False), path)
    fresh = _smoke("siglip-siglip")
    fresh.load_state_dict(ckpt["state_dict"])
    assert torch.equal(fresh.head.weight, model.head.weight)


class _Payload:
    """Unpickling this creates a file: the stand-in for arbitrary code in a pickle."""

    def __init__(self, path: str) -> None:
        self.path = path

    def __reduce__(self):
        return (open, (self.path, "w"))


def test_pickled_objects_are_refused_naming_the_file(tmp_path):
    marker = tmp_path / "payload-ran"
    evil = tmp_path / "evil.ckpt"
    torch.save({"state_dict": {}, "payload": _Payload(str(marker))}, evil)
    with pytest.raises(UnsafeCheckpointError, match=rf"^{evil}: refused: .*weights_only=True"):
        read_checkpoint(evil)
    assert not marker.exists()  # the pickled code never ran


def test_bad_files_name_the_file(tmp_path):
    good = tmp_path / "good.ckpt"
    torch.save({"state_dict": Two().state_dict()}, good)
    cut = tmp_path / "cut.ckpt"
    cut.write_bytes(good.read_bytes()[:200])
    with pytest.raises(ValueError, match=rf"^{cut}: cannot read checkpoint \(truncated or corrupt\?\)"):
        read_checkpoint(cut)
    bare = tmp_path / "bare.pt"
    torch.save(Two().state_dict(), bare)
    with pytest.raises(ValueError, match=rf"^{bare}: not a Lightning checkpoint"):
        read_checkpoint(bare)
    assert set(read_checkpoint(bare, lightning=False)) == {"body.weight", "body.bias", "head.weight", "head.bias"}
    with pytest.raises(FileNotFoundError, match="absent.ckpt"):
        read_checkpoint(tmp_path / "absent.ckpt")


# ----------------------------------------------------------------------------- load-matching


def test_load_matching_counts(tmp_path):
    source, target = Two(out=3), Two(out=2)
    with torch.no_grad():
        source.body.weight.fill_(1.5)
    lightning_file, bare_file = tmp_path / "stage1.ckpt", tmp_path / "stage1.pt"
    torch.save({"state_dict": source.state_dict(), "global_step": 3}, lightning_file)
    torch.save(source.state_dict(), bare_file)
    head = target.head.weight.clone()
    for path in (lightning_file, bare_file):  # a Lightning checkpoint or a bare state dict
        assert load_matching_weights(target, path) == {"loaded": 2, "skipped": 2}  # body matches, head is wider
        assert torch.equal(target.body.weight, source.body.weight)
        assert torch.equal(target.head.weight, head)  # left as it was
    torch.save({"state_dict": {"other.weight": torch.zeros(1)}}, tmp_path / "none.ckpt")
    with pytest.raises(CheckpointMismatchError, match="no weight matches"):
        load_matching_weights(target, tmp_path / "none.ckpt")
    with pytest.raises(FileNotFoundError, match="init_from"):
        load_matching_weights(target, tmp_path / "missing.ckpt")


# ----------------------------------------------------------------------------- frozen weights


class _Component(nn.Module):
    def __init__(self, **init_args) -> None:
        super().__init__()
        self.init_args = init_args
        self.frozen = nn.Linear(2, 2).requires_grad_(False)
        self.adapter = nn.Linear(2, 2)  # trainable: no source has it

    def spec(self) -> dict:
        return {"class_path": "x.Component", "init_args": self.init_args}


class _Holder(nn.Module):
    def __init__(self) -> None:
        super().__init__()
        self.backbone = _Component(pretrained="org/lm")
        self.read_space = _Component(base={"class_path": "x.Space", "init_args": {"checkpoint": "vq.pt"}})
        self.write_space = _Component(size=8)  # built from its config alone: its weights stay in checkpoints


def test_frozen_policy_leaves_out_only_frozen_weights_with_a_source():
    holder = _Holder()
    prefixes = reloadable_prefixes(holder)
    assert prefixes == ["backbone.", "read_space."]
    assert frozen_state_keys(holder, prefixes) == {f"{p}frozen.{w}" for p in prefixes for w in ("weight", "bias")}
    assert frozen_state_keys(holder, []) == set()


# ----------------------------------------------------------------------------- run settings


def test_setting_differences_skip_run_settings_and_name_the_path():
    saved = {"lr": 1e-3, "share_projector": True, "space": {"init_args": {"config": {"hidden_size": 48}}}, "x": (1, 2)}
    built = {"lr": 2e-4, "share_projector": True, "space": {"init_args": {"config": {"hidden_size": 32}}}, "x": [1, 2]}
    assert setting_differences(saved, built) == ["space.init_args.config.hidden_size: checkpoint 48, recipe 32"]
    assert setting_differences(saved, built, settings=()) == [
        "lr: checkpoint 0.001, recipe 0.0002", "space.init_args.config.hidden_size: checkpoint 48, recipe 32"]


def test_named_settings_are_run_settings():
    params = _constructor_parameters(UnifiedVLM)
    optimiser = {"lr", "projector_lr", "weight_decay", "warmup_ratio"}
    wanted = {"cache_features", "cache_codes", "feedback_noise", "feedback_corruption", "condition_dropout",
              *optimiser, *(p for p in params if p.startswith("eval_"))}
    assert wanted <= RUN_SETTINGS


# Every constructor argument of UnifiedVLM and its variants is a component, a run setting, or one of
# these architecture arguments; each comes with a preset and another value to build it with.
CHANGES_WEIGHTS = {  # another value changes the state dict's keys or shapes
    "read_projector": ("siglip-vq", "linear"),
    "write_projector": ("siglip-vq", "mlp"),
    "projector": ("siglip-siglip", "linear"),
    "image_positions": ("siglip-siglip", "grid"),
    "image_loss": ("siglip-siglip", "mse"),  # only the cosine loss keeps a write_feature_norm buffer
}
SAME_WEIGHTS_ARCHITECTURE = {  # architecture, yet keys and shapes stay: why RUN_SETTINGS is a list
    "share_projector": ("siglip-siglip", False),
    "strength": ("vq-vq-affine0.1", 0.2),
    "affine_seed": ("vq-vq-affine0.1", 1),
}
SOME_RUN_SETTINGS = {  # another value leaves the state dict as it is (a sample: building is not free)
    "cache_features": ("siglip-siglip", True),
    "cache_codes": ("vq-vq", True),
    "feedback_noise": ("siglip-siglip", 0.1),
    "condition_dropout": ("siglip-siglip", 0.1),
    "eval_temperature": ("siglip-siglip", 0.7),
    "lr": ("vq-vq", 1e-3),
}


def test_every_constructor_argument_is_classified():
    params = set()
    for cls in (UnifiedVLM, SharedSpaceVLM, SeparateSpacesVLM, MisalignedVLM):
        params |= set(_constructor_parameters(cls)) - {"self"}
    unclassified = params - ARCHITECTURE_COMPONENTS - RUN_SETTINGS - set(CHANGES_WEIGHTS) - set(SAME_WEIGHTS_ARCHITECTURE)
    assert not unclassified, (
        f"new constructor argument(s) {sorted(unclassified)}: add each to zoo.catalog.checkpoint.RUN_SETTINGS if a "
        "resumed or evaluated run may change it, else to CHANGES_WEIGHTS here (with a value that changes the "
        "state dict) or, if it is architecture that leaves the state dict as it is, to SAME_WEIGHTS_ARCHITECTURE")
    assert not RUN_SETTINGS & (set(CHANGES_WEIGHTS) | set(SAME_WEIGHTS_ARCHITECTURE) | ARCHITECTURE_COMPONENTS)


@pytest.mark.parametrize("arg", sorted(CHANGES_WEIGHTS))
def test_architecture_arguments_change_the_state_dict(arg):
    name, value = CHANGES_WEIGHTS[arg]
    assert _shapes(_smoke(name, **{arg: value})) != _shapes(_smoke(name))


@pytest.mark.parametrize("table", [SOME_RUN_SETTINGS, SAME_WEIGHTS_ARCHITECTURE], ids=["run", "same-weights"])
def test_other_arguments_leave_the_state_dict(table):
    for arg, (name, value) in table.items():
        assert _shapes(_smoke(name, **{arg: value})) == _shapes(_smoke(name)), arg


def test_the_module_is_documented():
    for name in checkpoint.__all__:
        obj = getattr(checkpoint, name)
        if callable(obj):
            assert obj.__doc__ and obj.__doc__.strip(), name

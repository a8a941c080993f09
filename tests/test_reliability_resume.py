"""A fit killed with SIGKILL resumes with `--ckpt_path last`: same data order, same losses, at most N steps lost.

Also holds the smoke recipe and the recording callback that the other reliability tests use.
"""
from __future__ import annotations

import json
import os
import shutil
import signal
import subprocess
import sys
from pathlib import Path
from types import SimpleNamespace
from typing import Any

import pytest
import torch
import yaml
from lightning.pytorch.callbacks import Callback, ModelCheckpoint

from tools.lightning_cli import run_lightning_cli

ROOT = Path(__file__).resolve().parents[1]
HERE = Path(__file__).resolve().parent


def smoke_model(max_positions: int = 512, image_size: int = 32) -> dict[str, Any]:
    """SigLIP-SigLIP at smoke scale (Llama h64 x 2, 32 px SigLIP of 16 tokens), as a recipe `model:`."""
    return {
        "class_path": "zoo.model.variants.SharedSpaceVLM",
        "init_args": {
            "backbone": {"class_path": "zoo.model.backbone.LanguageBackbone", "init_args": {
                "tokenizer": "zoo/assets/tokenizers/smartwatch",
                "config": {"model_type": "llama", "hidden_size": 64, "num_hidden_layers": 2, "num_attention_heads": 1,
                           "num_key_value_heads": 1, "intermediate_size": 256,
                           "max_position_embeddings": max_positions, "tie_word_embeddings": True}}},
            "space": {"class_path": "zoo.spaces.hf.HFVisionSpace", "init_args": {
                "model_class": "transformers.SiglipVisionModel", "layer": -2,
                "config": {"image_size": image_size, "patch_size": 8, "hidden_size": 32, "num_hidden_layers": 2,
                           "num_attention_heads": 1, "intermediate_size": 64}}},
            "projector": "mlp", "share_projector": True, "lr": 1e-3, "projector_lr": 1e-3,
            "eval_max_new_tokens": 6,
        },
    }


def smoke_recipe(root: Path, *, steps: int = 12, every: int = 4, images: int = 16, seed: int = 0,
                 model: dict | None = None, data: dict | None = None, callbacks: list | None = None,
                 name: str = "recipe.yaml") -> Path:
    """Write a self-contained smoke recipe under `root` (runs in `root/runs`, CSV logs, checkpoint every
    `every` steps with last.ckpt, batch 4 over `images` x 3 samples) and return its path."""
    recipe = {
        "seed_everything": seed,
        "trainer": {
            "accelerator": "cpu", "devices": 1, "precision": "32-true", "max_steps": steps, "max_epochs": 100,
            "log_every_n_steps": 1, "num_sanity_val_steps": 0, "limit_val_batches": 0,
            "enable_progress_bar": False, "enable_model_summary": False, "default_root_dir": str(root / "runs"),
            "logger": {"class_path": "lightning.pytorch.loggers.CSVLogger",
                       "init_args": {"save_dir": str(root / "runs"), "name": "smoke"}},
            "callbacks": [{"class_path": "lightning.pytorch.callbacks.ModelCheckpoint",
                           "init_args": {"save_last": True, "every_n_train_steps": every}}, *(callbacks or [])],
        },
        "data": data or {
            "class_path": "datamodules.mixed.MixedTaskDataModule",
            "init_args": {"sources": [{"class_path": "datamodules.smartwatch.source.SmartWatchSource",
                                       "init_args": {"train": images, "val": 2, "test": 2, "size": 32}}],
                          "batch_size": 4, "max_eval_samples": 1},
        },
        "model": model or smoke_model(),
    }
    path = root / name
    path.write_text(yaml.safe_dump(recipe, sort_keys=False))
    return path


class RecordSteps(Callback):
    """Test-only: append each training step's loss and sample identities to a JSONL file (flushed and
    fsynced, so the record survives SIGKILL); optionally SIGKILL this process before step `kill_at + 1`."""

    def __init__(self, path: str, kill_at: int | None = None) -> None:
        self.path, self.kill_at = path, kill_at

    def on_train_batch_start(self, trainer, pl_module, batch, batch_idx) -> None:  # noqa: D102
        if self.kill_at is not None and trainer.global_step == self.kill_at:
            os.kill(os.getpid(), signal.SIGKILL)

    def on_train_batch_end(self, trainer, pl_module, outputs, batch, batch_idx) -> None:  # noqa: D102
        row = {"step": trainer.global_step, "epoch": trainer.current_epoch, "loss": float(outputs["loss"]),
               "samples": [f"{a['split']}/{a['index']}/{a['task']}" for a in batch["attrs"]]}
        with open(self.path, "a") as f:
            f.write(json.dumps(row) + "\n")
            f.flush()
            os.fsync(f.fileno())


def recorder(path: Path, kill_at: int | None = None) -> dict[str, Any]:
    """RecordSteps as a recipe callback entry."""
    return {"class_path": f"{RecordSteps.__module__}.RecordSteps", "init_args": {"path": str(path), "kill_at": kill_at}}


def read_steps(path: Path) -> dict[int, dict[str, Any]]:
    """Recorded rows by global step."""
    return {row["step"]: row for row in map(json.loads, path.read_text().splitlines())}


def unizoo(*args: str, cwd: Path = ROOT) -> subprocess.Popen:
    """Start `python -m tools.cli ARGS` (offline, tests folder importable for the callbacks)."""
    env = {**os.environ, "HF_HUB_OFFLINE": "1", "TRANSFORMERS_OFFLINE": "1", "PYTHONUNBUFFERED": "1",
           "PYTHONPATH": os.pathsep.join([str(ROOT), str(HERE)])}
    env.pop("UNIZOO_DEBUG", None)
    return subprocess.Popen([sys.executable, "-m", "tools.cli", *args], cwd=cwd, env=env,
                            stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)


STEPS, EVERY, KILL_AT = 20, 5, 17  # 12 batches an epoch: the kill lands in epoch 1, 2 steps after a checkpoint


def test_sigkill_then_resume_last_matches_an_uninterrupted_run(tmp_path):
    ref_dir, run_dir = tmp_path / "reference", tmp_path / "killed"
    ref_dir.mkdir(), run_dir.mkdir()
    ref_log, killed_log, resumed_log = ref_dir / "steps.jsonl", run_dir / "killed.jsonl", run_dir / "resumed.jsonl"
    reference = smoke_recipe(ref_dir, steps=STEPS, every=EVERY, callbacks=[recorder(ref_log)])
    killed = smoke_recipe(run_dir, steps=STEPS, every=EVERY, callbacks=[recorder(killed_log, KILL_AT)])
    resumed = smoke_recipe(run_dir, steps=STEPS, every=EVERY, callbacks=[recorder(resumed_log)], name="resume.yaml")

    # The killed run is a subprocess; the uninterrupted one runs here meanwhile.
    proc = unizoo("fit", "--config", str(killed))
    run_lightning_cli(["fit", "--config", str(reference)])
    out = proc.communicate(timeout=600)[0]
    assert proc.returncode == -signal.SIGKILL, out[-3000:]

    ref, before = read_steps(ref_log), read_steps(killed_log)
    assert sorted(ref) == list(range(1, STEPS + 1)) and sorted(before) == list(range(1, KILL_AT + 1))
    ckpt_dir = run_dir / "runs" / "smoke" / "version_0" / "checkpoints"
    saved = torch.load(ckpt_dir / "last.ckpt", map_location="cpu", weights_only=True)
    assert saved["global_step"] == KILL_AT // EVERY * EVERY  # every N steps: nothing newer was written

    # The resumed run logs to version_1; "last" must still find version_0's checkpoint (Lightning alone
    # would look only in version_1/checkpoints and silently start from scratch).
    proc = unizoo("fit", "--config", str(resumed), "--ckpt_path", "last")
    out = proc.communicate(timeout=600)[0]
    assert proc.returncode == 0, out[-3000:]
    after = read_steps(resumed_log)
    first = saved["global_step"] + 1
    assert sorted(after) == list(range(first, STEPS + 1)), "lost more than the steps since the last checkpoint"

    # Same batches in the same order: within each epoch no sample twice, none skipped.
    combined = {**{s: r for s, r in before.items() if s < first}, **after}
    assert [combined[s]["samples"] for s in range(1, STEPS + 1)] == [ref[s]["samples"] for s in range(1, STEPS + 1)]
    for epoch in (0, 1):
        seen = [x for s in range(1, STEPS + 1) if combined[s]["epoch"] == epoch for x in combined[s]["samples"]]
        assert len(seen) == len(set(seen))
    assert len({x for s in range(1, 13) for x in combined[s]["samples"]}) == 48  # epoch 0 covers every item
    # And the same losses: weights, optimiser, schedule and data position all came back.
    for step in range(1, STEPS + 1):
        assert combined[step]["loss"] == pytest.approx(ref[step]["loss"], rel=1e-5, abs=1e-6), step

    # A kill while last.ckpt was being copied into place leaves a cut file: "last" then falls back to
    # the newest readable checkpoint instead of failing or starting over.
    _check_truncated_last_falls_back(run_dir / "runs" / "smoke", tmp_path / "cut")


def _check_truncated_last_falls_back(runs: Path, cut: Path) -> None:
    from tools.lightning_cli import find_last_checkpoint
    from zoo.config import build

    shutil.copytree(runs / "version_0" / "checkpoints", cut)
    last = cut / "last.ckpt"
    data = last.read_bytes()
    last.write_bytes(data[: len(data) // 2])
    os.utime(last)  # newest of all, as the interrupted copy would be
    hp = dict(torch.load(cut / "epoch=1-step=15.ckpt", map_location="cpu", weights_only=True)["hyper_parameters"])
    hp.pop("_instantiator")
    model = build({"class_path": hp.pop("_class_path"), "init_args": hp})
    trainer = SimpleNamespace(checkpoint_callbacks=[ModelCheckpoint(dirpath=str(cut))], loggers=[],
                              default_root_dir=str(cut))
    with pytest.warns(UserWarning, match="skipped 1 newer checkpoint.*truncated or corrupt"):
        found = find_last_checkpoint(trainer, model)
    assert found == str(cut / "epoch=1-step=15.ckpt")

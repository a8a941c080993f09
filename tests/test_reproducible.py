"""A run's printed numbers reproduce from the files it names (issue 16).

A fit whose checkpoint interval does not divide its length still ends with a checkpoint of its final
weights, the quickstart prints that file as "the checkpoint", and `unizoo test` on it (a fresh process,
same machine, same seed) writes exactly the metrics and answers the quickstart printed.
"""
from __future__ import annotations

import json
from pathlib import Path

import torch

from test_reliability_resume import smoke_recipe, unizoo
from tools.quickstart import quickstart

EPOCH_STEPS, EVERY = 6, 4  # 8 watches x 3 tasks / batch 4 = 6 steps: step checkpoints at 4 only


def test_unizoo_test_on_the_printed_checkpoint_reproduces_the_quickstart_numbers(tmp_path, capsys):
    data = {"class_path": "datamodules.mixed.MixedTaskDataModule",
            "init_args": {"sources": [{"class_path": "datamodules.smartwatch.source.SmartWatchSource",
                                       "init_args": {"train": 8, "val": 2, "test": 4, "size": 32}}],
                          "batch_size": 4, "max_eval_samples": 2}}
    recipe = smoke_recipe(tmp_path, every=EVERY, data=data)
    # One whole epoch, as the quickstart runs: Lightning alone would leave last.ckpt at step 4.
    summary = quickstart(str(recipe), ["--trainer.max_steps=-1", "--trainer.max_epochs=1"])
    printed = capsys.readouterr().out

    assert summary["steps"] == EPOCH_STEPS and EPOCH_STEPS % EVERY
    ckpt = Path(summary["checkpoint"])
    assert ckpt.name == "last.ckpt" and str(ckpt) in printed.replace("\n", "")
    assert torch.load(ckpt, map_location="cpu", weights_only=True)["global_step"] == EPOCH_STEPS
    step_files = sorted(p.name for p in ckpt.parent.glob("epoch=*.ckpt"))
    assert step_files == [f"epoch=0-step={EVERY}.ckpt"]  # the interval's own checkpoints are unchanged

    run = Path(summary["log_dir"])
    proc = unizoo("test", "--config", str(run / "config.yaml"), "--ckpt_path", str(ckpt), cwd=tmp_path)
    out = proc.communicate(timeout=600)[0]
    assert proc.returncode == 0, out[-3000:]
    again = run.parent / "version_1" / "eval"
    first = Path(summary["eval_dir"])
    assert json.loads((again / "metrics.json").read_text()) == json.loads((first / "metrics.json").read_text())
    assert (again / "answers.jsonl").read_text() == (first / "answers.jsonl").read_text()


def test_a_fit_stopped_by_max_steps_ends_with_its_final_weights(tmp_path):
    """`unizoo fit` itself (no quickstart): 7 steps with a checkpoint every 3, stopped mid-epoch."""
    from tools.lightning_cli import run_lightning_cli
    from zoo.model.callbacks import final_checkpoint_path

    cli = run_lightning_cli(["fit", "--config", str(smoke_recipe(tmp_path, steps=7, every=3, images=16))])
    path = final_checkpoint_path(cli.trainer)
    assert path and Path(path).name == "last.ckpt"
    saved = torch.load(path, map_location="cpu", weights_only=True)
    assert saved["global_step"] == 7
    trained = {k: v for k, v in cli.model.state_dict().items() if k in saved["state_dict"]}
    assert trained and all(torch.equal(v, saved["state_dict"][k]) for k, v in trained.items())

"""The README's main job runs end to end (at a few steps) and prints its table."""
import json

from tools.quickstart import quickstart


def test_quickstart_runs_and_reports(tmp_path, capsys):
    summary = quickstart(overrides=[
        "--trainer.max_steps=4",
        f"--trainer.logger.init_args.save_dir={tmp_path}",
        "--trainer.enable_progress_bar=false",
        "--trainer.limit_val_batches=1",
        "--data.init_args.sources=" + json.dumps([{
            "class_path": "datamodules.smartwatch.source.SmartWatchSource",
            "init_args": {"train": 16, "val": 4, "test": 8, "size": 64, "seed": 0},
        }]),
        "--data.init_args.max_eval_samples=4",
        "--data.init_args.batch_size=8",
    ])
    printed = capsys.readouterr().out
    assert "VQA" in printed and "generation" in printed and "checkpoint" in printed
    metrics = summary["metrics"]
    assert set(metrics["vqa"]) >= {"total", "chance", "counts"}
    assert 0.0 <= metrics["vqa"]["total"] <= 1.0
    assert metrics["generation"]["images"] == 4
    assert summary["checkpoint"] and summary["checkpoint"].endswith(".ckpt")
    assert (tmp_path / "quickstart").is_dir()

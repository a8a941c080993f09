"""`unizoo predict --config RUN/config.yaml --ckpt_path RUN/checkpoints/last.ckpt` (issue 14 item 1): it writes
answers and generated images as `unizoo test` does, without scores."""
from __future__ import annotations

import json
from pathlib import Path

import pytest

from test_reliability_resume import smoke_recipe
from tools.lightning_cli import run_lightning_cli
from zoo.catalog.presets import preset

TEST_IMAGES = 3  # x 3 tasks = 9 test samples


def vq_recipe(root: Path, steps: int = 2, images: int = 8, every: int | None = None) -> Path:
    """A smoke VQ-VQ recipe (random 32 px VQ, so generated codes decode to PNGs), test split of 9 samples."""
    model = preset("vq-vq", "smoke", eval_max_new_tokens=6, lr=1e-3, projector_lr=1e-3)
    data = {"class_path": "datamodules.mixed.MixedTaskDataModule",
            "init_args": {"sources": [{"class_path": "datamodules.smartwatch.source.SmartWatchSource",
                                       "init_args": {"train": images, "val": 1, "test": TEST_IMAGES, "size": 32,
                                                     "reader": None}}],
                          "batch_size": 4, "eval_batch_size": 2, "max_eval_samples": None}}
    return smoke_recipe(root, steps=steps, every=every or steps, model=model, data=data)


def lines(path: Path) -> list[dict]:
    return [json.loads(line) for line in path.read_text().splitlines()]


@pytest.fixture(scope="module")
def run(tmp_path_factory) -> Path:
    """The version folder of a 2-step VQ-VQ fit (config.yaml, checkpoints/last.ckpt)."""
    root = tmp_path_factory.mktemp("predict")
    cli = run_lightning_cli(["fit", "--config", str(vq_recipe(root))])
    version = Path(cli.trainer.log_dir)
    assert (version / "config.yaml").is_file() and (version / "checkpoints" / "last.ckpt").is_file()
    return version


def test_predict_writes_answers_and_images_like_test(run):
    args = ["--config", str(run / "config.yaml"), "--ckpt_path", str(run / "checkpoints" / "last.ckpt")]
    predicted = run_lightning_cli(["predict", *args])
    out = Path(predicted.model.predict_outputs["dir"])
    assert out.name == "predict" and out.parent == Path(predicted.trainer.log_dir)
    answers = lines(out / "answers.jsonl")
    assert len(answers) == 3 * TEST_IMAGES and [a["item"] for a in answers] == list(range(3 * TEST_IMAGES))
    assert {a["task"] for a in answers} == {"generation", "vqa", "caption"}
    generated = [a for a in answers if a["task"] == "generation"]
    assert len(generated) == TEST_IMAGES and all((out / a["image_path"]).is_file() for a in generated)
    assert (out / "generated_vs_truth.png").is_file()
    assert set(json.loads((out / "metrics.json").read_text())) == {"protocol"}  # no scores
    assert not any(k.startswith("test/") for k in predicted.trainer.callback_metrics)
    tested = run_lightning_cli(["test", *args])
    eval_answers = lines(Path(tested.model.eval_outputs["dir"]) / "answers.jsonl")
    assert answers == eval_answers  # the very answers and image files `unizoo test` writes

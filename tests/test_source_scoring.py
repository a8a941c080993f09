"""Scoring by source (issue 14 item 5): the study's LLaVA-format files get the paper's VQA table, and a
DataModule mixing sources scores each source's records with that source's scorer."""
from __future__ import annotations

import json
from pathlib import Path

import pytest
from PIL import Image

from datamodules.llava import LlavaJsonSource
from datamodules.mixed import MixedTaskDataModule
from datamodules.smartwatch.evaluate import caption_truth, score_text_records
from datamodules.smartwatch.source import SmartWatchSource
from test_reliability_resume import smoke_recipe
from tools.data import smartwatch as write_smartwatch
from tools.lightning_cli import run_lightning_cli

LLAVA15 = [  # LLaVA-1.5-style records: free-text answers, one of them a weather word
    {"image": "coco.png", "conversations": [{"from": "human", "value": "<image>\nWhat is the man doing?"},
                                             {"from": "gpt", "value": "He is surfing a large wave."}]},
    {"image": "coco.png", "conversations": [{"from": "human", "value": "<image>\nHow is the weather?"},
                                             {"from": "gpt", "value": "sunny"}]},
    {"image": "coco.png", "conversations": [{"from": "human", "value": "<image>\nDescribe the picture."},
                                             {"from": "gpt", "value": "A man surfing on a sunny day."}]},
]


def _llava15(tmp_path: Path) -> LlavaJsonSource:
    root = tmp_path / "coco"
    root.mkdir()
    Image.new("RGB", (32, 32), (20, 90, 200)).save(root / "coco.png")
    (tmp_path / "llava15.json").write_text(json.dumps(LLAVA15))
    return LlavaJsonSource(None, str(root), test_json=str(tmp_path / "llava15.json"))


def _smartwatch_file(tmp_path: Path, images: int = 3) -> LlavaJsonSource:
    out = tmp_path / "sw"
    write_smartwatch(str(out), images, split="test", size=32)
    return LlavaJsonSource(None, str(out / "images"), test_json=str(out / "test.json"))


def _records(dm: MixedTaskDataModule, answer: str = "sunny") -> list[dict]:
    """Evaluation-shaped records of the DataModule's test items, every answer `answer`."""
    dm.setup("test")
    records = []
    for i in range(len(dm.dataset("test"))):
        sample = dm.dataset("test")[i]
        record = {"task": sample.task, "attrs": sample.attrs, "item": sample.item}
        if sample.task != "generation":
            record.update(ground_truth=sample.turns[1]["content"], answer=answer)
        records.append(record)
    return records


def test_text_records_of_the_study_get_the_paper_scoring():
    records = [
        {"task": "vqa", "ground_truth": "sunny", "answer": "it is sunny"},
        {"task": "vqa", "ground_truth": "03:15:00", "answer": "03:15:00"},
        {"task": "vqa", "ground_truth": "a watch", "answer": "a watch"},  # not a typed answer: skipped
        {"task": "caption", "ground_truth": "a watch showing the time 03:15:00, where it is raining",
         "answer": "the time is 03:15:00 and it is sunny"},
        {"task": "caption", "ground_truth": "a watch", "answer": "a watch"},  # states nothing: skipped
    ]
    scores = score_text_records(records)
    assert scores["vqa"]["weather"] == 1.0 and scores["vqa"]["time"] == 1.0
    assert scores["vqa"]["counts"]["total"] == 2 and scores["vqa"]["skipped"] == 1
    assert scores["vqa"]["chance"]["weather"] == pytest.approx(1 / 3)
    assert scores["caption"]["time"] == 1.0 and scores["caption"]["weather"] == 0.0
    assert scores["caption"]["counts"] == {"time": 1, "weather": 1} and scores["caption"]["skipped"] == 1
    assert caption_truth("a watch") is None
    assert caption_truth("the time 10:20:30 with 57% battery")["mentioned"] == ["time", "battery"]


def test_llava_source_scores_the_study_layout_and_leaves_llava15_alone(tmp_path):
    watch = _smartwatch_file(tmp_path)
    dm = MixedTaskDataModule([watch], max_eval_samples=None)
    scores = dm.score_records(_records(dm))
    assert scores["vqa"]["counts"]["total"] == 3 and "chance" in scores["vqa"] and "caption" in scores
    llava15 = _llava15(tmp_path)
    dm = MixedTaskDataModule([llava15])
    assert dm.score_records(_records(dm)) == {}  # free-text answers: no smart-watch table, and no crash
    forced = LlavaJsonSource(None, llava15.image_root, test_json=llava15.files["test"], scoring="smartwatch")
    dm = MixedTaskDataModule([forced])
    assert dm.score_records(_records(dm))["vqa"]["counts"]["total"] == 1  # only the typed "sunny" question
    with pytest.raises(ValueError, match="scoring"):
        LlavaJsonSource(None, "x", test_json="y.json", scoring="paper")


def test_mixed_sources_each_score_their_own_records(tmp_path):
    generated = SmartWatchSource(train=2, val=1, test=2, size=32, reader=None)
    dm = MixedTaskDataModule([_llava15(tmp_path), generated], max_eval_samples=None)
    records = _records(dm)
    assert len(records) == 3 + 6
    scores = dm.score_records(records, images=[None] * sum(r["task"] == "generation" for r in records))
    # Only the smart-watch source scores (its two vqa items); LLaVA-1.5's free text is not scored as watches.
    assert scores["vqa"]["counts"]["total"] == 2 and scores["caption"]["counts"]["time"] == 2
    both = MixedTaskDataModule([_smartwatch_file(tmp_path), generated], max_eval_samples=None)
    scores = both.score_records(_records(both))
    assert set(scores) == {"source0", "source1"}  # two scoring sources: neither overwrites the other
    assert scores["source0"]["vqa"]["counts"]["total"] == 3 and scores["source1"]["vqa"]["counts"]["total"] == 2


def test_unizoo_test_on_the_study_layout_prints_the_vqa_table(tmp_path):
    """`unizoo test` on a LLaVA-format smart-watch file scores like the same watches drawn on the fly."""
    out = tmp_path / "sw"
    write_smartwatch(str(out), 3, split="test", size=32)
    file_source = {"class_path": "datamodules.llava.LlavaJsonSource",
                   "init_args": {"json_path": None, "image_root": str(out / "images"), "test_json": str(out / "test.json")}}
    drawn_source = {"class_path": "datamodules.smartwatch.source.SmartWatchSource",
                    "init_args": {"train": 1, "val": 1, "test": 3, "size": 32, "reader": None}}
    metrics = {}
    for name, source in (("file", file_source), ("drawn", drawn_source)):
        root = tmp_path / name
        root.mkdir()
        data = {"class_path": "datamodules.mixed.MixedTaskDataModule",
                "init_args": {"sources": [source], "eval_batch_size": 4, "max_eval_samples": None}}
        cli = run_lightning_cli(["test", "--config", str(smoke_recipe(root, data=data))])
        metrics[name] = cli.model.eval_metrics
        logged = cli.trainer.callback_metrics
        assert {"test/vqa/total", "test/vqa/chance/total", "test/vqa/counts/total"} <= set(logged)
    vqa = metrics["file"]["vqa"]
    assert vqa["counts"]["total"] == 3 and vqa["chance"]["weather"] == pytest.approx(1 / 3)
    assert vqa == metrics["drawn"]["vqa"]  # the same watches, questions and answers: the same table
    assert metrics["file"]["caption"]["counts"]["time"] == 3

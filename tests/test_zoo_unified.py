"""Shipped unified models load from the zoo (sha256 verified) and reproduce their card's headline metric."""
from __future__ import annotations

import torch

from datamodules.smartwatch.score import score_vqa
from datamodules.smartwatch.source import SmartWatchSource
from zoo.evaluation import evaluate_samples
from zoo.generate import GenerationConfig
from zoo.registry import create_model, get_entry, list_models


def test_every_shipped_unified_model_reproduces_its_weather_score():
    names = list_models("smartwatch-*", kind="unified")
    assert names, "no shipped unified model"
    source = SmartWatchSource(train=1, val=1, test=200, seed=0, size=64)
    # Weather questions from test watches (the split the card was scored on: never trained on).
    weather = [s for s in (source.sample("test", i) for i in range(1, 600, 3))
               if s.task == "vqa" and s.attrs.get("attribute") == "weather"][:24]
    for name in names:
        card = get_entry(name).card.metrics
        model = create_model(name, pretrained=True).eval()
        torch.manual_seed(0)
        records = evaluate_samples(model, weather, GenerationConfig(max_new_tokens=8))
        score = score_vqa({"ground_truth": r["ground_truth"], "answer": r["answer"]} for r in records)["weather"]
        assert score >= card["vqa_weather"] - 0.1, (name, score, card["vqa_weather"])

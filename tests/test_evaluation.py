"""Evaluation is deterministic and does not depend on the batch size."""
from __future__ import annotations

import pytest
import torch

from datamodules.smartwatch.source import SmartWatchSource
from zoo.config import build
from PIL import Image

from zoo.catalog.presets import preset
from zoo.eval.evaluation import evaluate_samples, generation_metrics, retrieved_images, write_outputs
from zoo.model.generate import GenerationConfig


@pytest.fixture(scope="module")
def trained_model():
    torch.manual_seed(0)
    model = build(preset("vq-vq", "smoke"))
    source = SmartWatchSource(train=8, val=2, test=6, seed=0, size=64)
    batch = model.processor([source.sample("train", i) for i in range(12)])
    optimizer = torch.optim.AdamW([p for p in model.parameters() if p.requires_grad], lr=3e-3)
    for _ in range(10):  # a little training so answers and images are not all identical
        loss, _ = model.loss(model(batch))
        optimizer.zero_grad()
        loss.backward()
        optimizer.step()
    return model.eval(), [source.sample("test", i) for i in range(18)]


def _run(model, samples, batch_size):
    cfg = GenerationConfig(max_new_tokens=12, seed=0)
    records = []
    for start in range(0, len(samples), batch_size):
        records += evaluate_samples(model, samples[start:start + batch_size], cfg)
    return records


def _key(record):
    return (record["task"], record.get("question") or record.get("prompt"), str(record["attrs"].get("index")))


def test_same_numbers_at_batch_1_and_16(trained_model):
    model, samples = trained_model
    one = sorted(_run(model, samples, 1), key=_key)
    sixteen = sorted(_run(model, samples, 16), key=_key)
    assert len(one) == len(sixteen) == len(samples)
    for a, b in zip(one, sixteen):
        if a["task"] == "generation":
            assert torch.equal(a["tokens"], b["tokens"])
        else:
            assert a["answer"] == b["answer"]
    assert generation_metrics(model, one) == pytest.approx(generation_metrics(model, sixteen))


def test_evaluation_is_deterministic(trained_model):
    model, samples = trained_model
    first, second = _run(model, samples, 6), _run(model, samples, 6)
    assert [r.get("answer") for r in first] == [r.get("answer") for r in second]


def test_continuous_outputs_are_shown_by_the_test_image_they_retrieve(tmp_path):
    truths = [Image.new("RGB", (8, 8), colour) for colour in ("red", "green", "blue")]
    target = torch.eye(3).unsqueeze(1).repeat(1, 2, 1)  # three distinct [N=2, D=3] feature sets
    generated = target[[1, 1, 2]] + 0.01  # the first generation lands nearest the second truth
    records = [{"task": "vqa"}] + [{"task": "generation", "generated_features": g, "target_features": t}
                                   for g, t in zip(generated, target)]
    shown = retrieved_images(records, truths)
    assert shown == [truths[1], truths[1], truths[2]]
    paths = write_outputs(str(tmp_path), records, {}, [None] * 3, truths, shown)
    assert paths["grid"].endswith("retrieved_vs_truth.png") and Image.open(paths["grid"]).size[0] > 3 * 8
    assert not list((tmp_path / "images").iterdir()), "retrieved images are not generated images"

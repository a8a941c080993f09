"""Attribute readers: shapes, save/load, the shipped reader's card, and generation fidelity on hand-made records."""
from __future__ import annotations

import json

import numpy as np
import pytest
import torch
import torch.nn.functional as F

from datamodules.smartwatch import SmartWatchSource, render_watch, sample_watch, watch_sample
from datamodules.smartwatch.evaluate import score_features, score_images, score_records
from datamodules.smartwatch.reader import (
    CLASSES,
    DEFAULT_READER,
    AttributeReader,
    FeatureReader,
    card_path,
    evaluate_reader,
    load_reader,
    read_images,
    resolve_reader_path,
    train_feature_reader,
    train_reader,
)


class PatchSpace:
    """A stand-in continuous space: 8x8 patch means of a 32 px image as 16 tokens of 3 dims."""

    num_tokens, dim, image_size = 16, 3, 32

    def preprocess(self, image):
        return torch.from_numpy(np.array(image.convert("RGB"))).permute(2, 0, 1).float() / 255

    def encode(self, pixels):
        tokens = F.avg_pool2d(pixels, 8).flatten(2).transpose(1, 2)
        return tokens, None


@pytest.fixture(scope="module")
def shipped():
    reader, info = load_reader(DEFAULT_READER)
    return reader, info


def _generation_records(n: int, size: int = 64, seed: int = 0):
    samples = [watch_sample(seed, "test", i, "generation", size) for i in range(n)]
    records = [{"task": "generation", "prompt": s.turns[0]["content"], "attrs": dict(s.attrs)} for s in samples]
    return records, [s.images[-1] for s in samples]


def test_train_reader_shapes_and_round_trip(tmp_path):
    out = str(tmp_path / "r.safetensors")
    reader, card = train_reader(size=32, images=16, steps=3, batch_size=8, width=8, dim=32, eval_images=8,
                                out=out, log=None)
    x = torch.randint(0, 256, (4, 3, 32, 32), dtype=torch.uint8)
    heads = reader(x)
    for name, n in CLASSES.items():
        assert heads[name].shape == (4, n)
    assert heads["battery"].shape == (4,) and heads["face_color"].shape == (4, 3)
    assert reader.features(x).shape == (4, 32)
    assert set(card["metrics"]) >= {"hour", "minute", "weather", "weather_pos", "battery_pos", "battery_mae"}
    loaded, info = load_reader(out)
    assert isinstance(loaded, AttributeReader) and loaded.size == 32
    torch.testing.assert_close(loaded(x)["hour"], reader.eval()(x)["hour"])
    saved = json.loads(open(card_path(out)).read())
    assert saved["sha256"] == info["sha256"] and saved["config"]["size"] == 32
    assert saved["protocol"]["train"]["seed"] == 0 and saved["protocol"]["eval"]["split"] == "test"
    # uint8 and float [0, 1] inputs are the same image; other sizes are resized to the reader's.
    torch.testing.assert_close(loaded.features(x), loaded.features(x.float() / 255))
    assert loaded.features(torch.rand(2, 3, 48, 48)).shape == (2, 32)


def test_bad_inputs_raise(tmp_path):
    with pytest.raises(ValueError, match="multiple of 8"):
        AttributeReader(size=60)
    with pytest.raises(ValueError, match=r"\[B, 3, H, W\]"):
        AttributeReader(size=32)(torch.rand(2, 32, 32))
    with pytest.raises(ValueError, match="no reader weights"):
        load_reader(str(tmp_path / "missing.safetensors"))
    with pytest.raises(ValueError, match="does not exist"):
        SmartWatchSource(reader=str(tmp_path / "missing.safetensors"))


def test_shipped_reader_reproduces_its_card(shipped):
    reader, info = shipped
    card = info["card"]
    assert card["sha256"] == info["sha256"] and reader.size == card["config"]["size"] == 64
    assert resolve_reader_path(DEFAULT_READER).endswith("reader-64.safetensors")
    # 200 renders the card never saw (another seed); margins ~3 binomial sigmas at n = 200.
    got = evaluate_reader(reader, images=200, seed=5)
    want = card["metrics"]
    for attribute in ("hour", "minute", "second", "weather", "weather_pos", "battery_pos", "color_name"):
        assert got[attribute] >= want[attribute] - 0.1, (attribute, got[attribute], want[attribute])
    assert got["battery_mae"] <= want["battery_mae"] + 2
    assert got["weather"] >= 0.95 and got["weather_pos"] >= 0.95 and got["battery_pos"] >= 0.95
    assert got["hour"] >= 0.9 and got["minute_within_1"] >= 0.9 and got["battery_mae"] <= 3


def test_ground_truth_as_generated_agrees_and_fid_is_zero(shipped):
    reader, info = shipped
    records, truths = _generation_records(48)
    out = score_images(records, truths, reader)
    fidelity, fid = out["generation_fidelity"], out["generation_fid"]
    # The "generated" images are the truth renders, so agreement equals the reader on the truth.
    for attribute, value in fidelity["reader_on_truth"].items():
        assert fidelity[attribute] == value
    assert fidelity["weather"] >= 0.95 and fidelity["time"] >= 0.8
    assert fidelity["counts"]["time"] == 48 and 0 < fidelity["counts"].get("weather", 0) < 48  # stated only
    assert fidelity["chance"]["weather"] == pytest.approx(1 / 3)
    assert abs(fid["fid"]) < 1e-3 and fid["fid_reference"] > 10 * max(abs(fid["fid"]), 1e-6)
    assert fid["protocol"]["samples"] == 48 and fid["protocol"]["reader_size"] == 64

    shuffled = truths[1:] + truths[:1]
    worse = score_images(records, shuffled, reader)["generation_fidelity"]
    assert worse["time"] < fidelity["time"] - 0.2
    assert worse["weather"] < fidelity["weather"] - 0.3
    assert worse["hour"] < 0.5


def test_images_are_aligned_with_generation_records(shipped):
    reader, _ = shipped
    records, truths = _generation_records(6)
    vqa = {"task": "vqa", "ground_truth": "sunny", "answer": "sunny", "attrs": {}}
    out = score_records([vqa] + records, [None, None] + truths[2:], reader=reader)
    assert out["vqa"]["weather"] == 1.0
    assert "vqa_by_question" not in out  # no asked attribute recorded: no per-question table
    assert out["generation_fidelity"]["protocol"]["samples"] == 4
    with pytest.raises(ValueError, match="5 images for 6 generation records"):
        score_images(records, truths[:5], reader)
    assert score_records(records, [None] * 6, reader=reader) == {}
    # Images of another size are resized to the reader's; the truth is re-rendered at their size.
    big = [render_watch(sample_watch(0, "test", i), 96) for i in range(6)]
    note = score_images(records, big, reader)["generation_fidelity"]["protocol"]["note"]
    assert "96" in note


def test_feature_reader_trains_saves_and_scores(tmp_path):
    space = PatchSpace()
    out = str(tmp_path / "f.safetensors")
    reader, card = train_feature_reader(space, images=64, steps=4, batch_size=16, eval_images=16, out=out, log=None)
    assert isinstance(reader, FeatureReader) and card["protocol"]["train"]["size"] == 32
    loaded, _ = load_reader(out)
    assert isinstance(loaded, FeatureReader)
    records, images = _generation_records(8, size=32)
    feats = space.encode(torch.stack([space.preprocess(im) for im in images]))[0]
    for r, f in zip(records, feats):
        r["generated_features"], r["target_features"] = f, f
    scored = score_features(records, out)
    fidelity = scored["feature_fidelity"]
    for attribute, value in fidelity["reader_on_truth"].items():
        assert fidelity[attribute] == value
    assert abs(scored["feature_fid"]["fid"]) < 1e-3
    assert fidelity["protocol"]["reader_input"] == [16, 3]
    records[3]["generated_features"] = torch.zeros(4, 3)
    with pytest.raises(ValueError, match="record 3 generated_features"):
        score_features(records, loaded)
    with pytest.raises(ValueError, match="FeatureReader"):
        score_images(records, images, loaded)


def test_read_images_decodes_readable_values(shipped):
    reader, _ = shipped
    spec = sample_watch(0, "test", 0)
    reading = read_images(reader, [render_watch(spec, 64)])[0]
    assert set(reading) >= {"hour", "minute", "second", "weather", "weather_pos", "battery_pos", "battery",
                            "color_name"}
    assert 0 <= reading["battery"] <= 100 and 0 <= reading["hour"] < 12

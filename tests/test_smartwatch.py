"""Smart-watch data: determinism, disjoint splits, the study's distributions, drawing, source, bias."""
from __future__ import annotations

import hashlib
import math
import subprocess
import sys
from collections import Counter
from pathlib import Path

import numpy as np
import pytest

from datamodules.smartwatch import (
    CORNERS,
    WEATHERS,
    Bias,
    SmartWatchSource,
    WatchSpec,
    colour_name,
    corpus,
    render_watch,
    sample_watch,
    vocabulary,
)
from datamodules.smartwatch.spec import split_of
from datamodules.smartwatch.tasks import (
    CAPTION_PROMPTS,
    CLAUSES,
    QUESTIONS,
    conversation,
    describe,
    task_rng,
    words,
)
from zoo.sample import IMAGE_MARKER

ROOT = Path(__file__).resolve().parents[1]
N = 3000  # draws for the distribution checks


def _z(count: int, n: int, p: float) -> float:
    return abs(count - n * p) / math.sqrt(n * p * (1 - p))


def _chi2_uniform_ok(counts: Counter, k: int, n: int) -> bool:
    """Chi-square against uniform over k cells, at a p ~ 1e-4 threshold (Wilson-Hilferty)."""
    expected = n / k
    chi2 = sum((counts.get(c, 0) - expected) ** 2 / expected for c in range(k))
    df = k - 1
    limit = df * (1 - 2 / (9 * df) + 3.72 * math.sqrt(2 / (9 * df))) ** 3
    return chi2 < limit


def _digest(img) -> str:
    return hashlib.sha256(img.tobytes()).hexdigest()


@pytest.fixture(scope="module")
def train_specs() -> list[WatchSpec]:
    return [sample_watch(0, "train", i) for i in range(N)]


def test_same_key_same_watch_and_pixels():
    a, b = sample_watch(3, "val", 17), sample_watch(3, "val", 17)
    assert a == b
    assert render_watch(a, 64).tobytes() == render_watch(b, 64).tobytes()
    assert sample_watch(3, "val", 18) != a and sample_watch(4, "val", 17) != a


def test_determinism_across_processes():
    code = (
        "import hashlib\n"
        "from datamodules.smartwatch import sample_watch, render_watch, watch_sample\n"
        "s = sample_watch(5, 'test', 11)\n"
        "print(repr(s)); print(hashlib.sha256(render_watch(s, 128).tobytes()).hexdigest())\n"
        "print(watch_sample(5, 'test', 11, 'vqa', 64).turns)\n"
    )
    out = subprocess.run([sys.executable, "-c", code], cwd=ROOT, capture_output=True, text=True, check=True,
                         env={"PYTHONHASHSEED": "123", "PATH": ""}).stdout.splitlines()
    from datamodules.smartwatch import watch_sample

    spec = sample_watch(5, "test", 11)
    assert out[0] == repr(spec)
    assert out[1] == _digest(render_watch(spec, 128))
    assert out[2] == repr(watch_sample(5, "test", 11, "vqa", 64).turns)


def test_splits_never_share_a_watch():
    ids = {split: {sample_watch(1, split, i).identity() for i in range(n)}
           for split, n in (("train", 3000), ("val", 1500), ("test", 1500))}
    assert not ids["train"] & ids["val"] and not ids["train"] & ids["test"] and not ids["val"] & ids["test"]
    for split, identities in ids.items():  # structural: each identity's own split is the one it was drawn for
        assert all(split_of(identity) == split for identity in list(identities)[:300])
    # hours 0 and 12 draw the same hands, so they share an identity (and hence a split)
    a = WatchSpec(0, 1, 2, 3, "sunny", "top-left", "top-right", (1, 2, 3))
    b = WatchSpec(12, 1, 2, 3, "sunny", "top-left", "top-right", (9, 9, 9))
    assert a.identity() == b.identity()


def test_split_fractions_of_all_identities():
    rng = np.random.default_rng(0)
    draws = rng.integers(0, [12, 60, 60, 101, 3, 4, 3], size=(20000, 7))
    counts = Counter(split_of((h, m, s, b, w, p, (p + 1 + q) % 4)) for h, m, s, b, w, p, q in draws.tolist())
    assert _z(counts["train"], 20000, 0.8) < 4 and _z(counts["test"], 20000, 0.1) < 4


def test_attribute_distributions(train_specs):
    n = len(train_specs)
    assert _chi2_uniform_ok(Counter(s.hour for s in train_specs), 13, n)
    assert {s.hour for s in train_specs} == set(range(13))
    assert _chi2_uniform_ok(Counter(s.minute for s in train_specs), 60, n)
    assert _chi2_uniform_ok(Counter(s.second for s in train_specs), 60, n)
    assert _chi2_uniform_ok(Counter(s.battery for s in train_specs), 101, n)
    assert _chi2_uniform_ok(Counter(WEATHERS.index(s.weather) for s in train_specs), 3, n)
    pairs = Counter(CORNERS.index(s.weather_pos) * 4 + CORNERS.index(s.battery_pos) for s in train_specs)
    assert all(s.weather_pos != s.battery_pos for s in train_specs)
    assert len(pairs) == 12 and all(_z(c, n, 1 / 12) < 4.5 for c in pairs.values())
    channel = Counter(s.face_color[0] // 64 for s in train_specs)
    assert _chi2_uniform_ok(channel, 4, n)
    test_specs = [sample_watch(0, "test", i) for i in range(1500)]
    assert _chi2_uniform_ok(Counter(WEATHERS.index(s.weather) for s in test_specs), 3, 1500)
    assert _chi2_uniform_ok(Counter(s.hour for s in test_specs), 13, 1500)


def test_clause_and_question_probabilities(train_specs):
    specs = train_specs[:2000]
    mentioned = Counter()
    for i, spec in enumerate(specs):
        _, attrs = conversation(spec, 0, "train", i, "caption")
        mentioned.update(attrs["mentioned"])
    assert mentioned["time"] == len(specs)
    for attribute in ("weather", "battery", "weather_pos", "battery_pos"):
        assert _z(mentioned[attribute], len(specs), 0.5) < 4, attribute
    extra, kinds, n_questions = Counter(), Counter(), 0
    for i, spec in enumerate(specs):
        _, attrs = conversation(spec, 0, "train", i, "vqa")
        extra[len(attrs["qa"]) - 1] += 1
        for attribute, _, _ in attrs["qa"]:
            kinds[attribute] += 1
            n_questions += 1
    assert max(extra) <= 3
    n_extra = sum(k * c for k, c in extra.items())
    assert _z(n_extra, 3 * len(specs), 0.4) < 4  # each of 3 extra turns with p = 0.4
    what = kinds["weather"] + kinds["time"] + kinds["battery"]
    assert _z(what, n_questions, 3 / 5) < 4
    for attribute in ("weather", "time", "battery"):
        assert _z(kinds[attribute], n_questions, 1 / 5) < 4
    assert _z(kinds["weather_pos"], n_questions, 1 / 5) < 4


def test_conversation_formats():
    src = SmartWatchSource(images={"train": 3}, seed=2, size=64)
    assert src.tasks("train") == ["generation", "vqa", "caption"] * 3
    for i in range(9):
        sample = src.sample("train", i)
        sample.validate(f"train[{i}]")
        spec = sample_watch(2, "train", i // 3)
        turns = sample.turns
        assert sample.image_keys == [f"smartwatch/2/train/{i // 3}/64"] and sample.image.size == (64, 64)
        if sample.task == "generation":
            assert turns[1]["content"].endswith(IMAGE_MARKER) and IMAGE_MARKER not in turns[0]["content"]
            assert spec.time in turns[0]["content"]
        elif sample.task == "vqa":
            assert turns[0]["content"].startswith(IMAGE_MARKER + "\n")
            assert sum(t["content"].count(IMAGE_MARKER) for t in turns) == 1
            assert sample.attrs["answer"] == turns[1]["content"]
            assert sample.attrs["answer"] in {spec.time, spec.weather, f"{spec.battery}%", spec.weather_pos,
                                              spec.battery_pos}
        else:
            assert turns[0]["content"].startswith(IMAGE_MARKER + "\n")
            assert turns[0]["content"].split("\n", 1)[1] in CAPTION_PROMPTS
            assert spec.time in turns[1]["content"]


def test_answer_formats_zero_padded():
    spec = WatchSpec(3, 4, 5, 7, "cloudy", "bottom-left", "top-right", (0, 0, 0))
    assert spec.time == "03:04:05" and spec.battery_text == "7%"
    rng = np.random.default_rng(0)
    text, mentioned = describe(spec, rng, forced=frozenset(CLAUSES))
    assert mentioned == list(CLAUSES) and "03:04:05" in text and "7%" in text and "bottom-left" in text


def test_paraphrase_counts():
    assert all(len(q) >= 10 for q in QUESTIONS.values())
    assert all(3 <= len(c) <= 4 for c in CLAUSES.values())
    assert len(CAPTION_PROMPTS) == 10


def test_rendering_sizes_and_weather_differ():
    base = dict(hour=10, minute=10, second=30, battery=57, weather_pos="top-left", battery_pos="bottom-right",
                face_color=(40, 90, 200))
    for size in (64, 128, 224):
        images = {w: render_watch(WatchSpec(weather=w, **base), size) for w in WEATHERS}
        assert all(img.size == (size, size) and img.mode == "RGB" for img in images.values())
        # the weather icon corner differs between all three weathers
        box = (0, 0, size // 5, size // 5)
        crops = {w: np.asarray(img.crop(box)).astype(int) for w, img in images.items()}
        for a in WEATHERS:
            for b in WEATHERS:
                if a < b:
                    assert np.abs(crops[a] - crops[b]).sum(axis=-1).astype(bool).sum() > size // 8, (size, a, b)
        img = np.asarray(images["sunny"])
        assert tuple(img[0, size // 2]) == (255, 255, 255)  # white background
        assert tuple(img[size // 2 + size // 8, size // 2 - size // 5]) == (40, 90, 200)  # face colour on the disc
    # battery level changes the pixels; different hands change the pixels
    a = render_watch(WatchSpec(weather="sunny", **base), 64)
    b = render_watch(WatchSpec(weather="sunny", **{**base, "battery": 58}), 64)
    c = render_watch(WatchSpec(weather="sunny", **{**base, "second": 31}), 64)
    assert a.tobytes() != b.tobytes() and a.tobytes() != c.tobytes()


def test_hand_angles_point_where_the_time_says():
    # 03:00:00: hour hand points right (3 o'clock), at 0.5 r from the centre
    spec = WatchSpec(3, 0, 0, 50, "sunny", "top-left", "bottom-left", (0, 0, 0))
    img = np.asarray(render_watch(spec, 224))
    r = 0.4 * 224
    assert tuple(img[112, int(112 + 0.4 * r)]) == (255, 255, 255)
    assert tuple(img[112, int(112 - 0.4 * r)]) == (0, 0, 0)
    assert tuple(img[int(112 - 0.8 * r), 112]) == (255, 255, 255)  # minute/second hands at 12


def test_colour_name():
    assert colour_name((10, 100, 200)) == "Dark-Medium-Bright"
    assert colour_name((63, 64, 191)) == "Dark-Medium-Light"
    with pytest.raises(ValueError):
        colour_name((0, 0, 256))


def test_spec_validation():
    with pytest.raises(ValueError, match="distinct"):
        WatchSpec(1, 1, 1, 1, "sunny", "top-left", "top-left", (0, 0, 0))
    with pytest.raises(ValueError, match="hour"):
        WatchSpec(13, 1, 1, 1, "sunny", "top-left", "top-right", (0, 0, 0))
    with pytest.raises(ValueError, match="split"):
        sample_watch(0, "dev", 0)


def test_corpus_covers_every_word():
    vocab = vocabulary()
    assert {str(d) for d in range(10)} | {"%", ":", "-", "sunny", "cloudy", "raining", "top", "left"} <= vocab
    texts = corpus(5, 0)
    assert " ".join(str(v) for v in range(101)) in texts
    for phrasing in [p for ps in CLAUSES.values() for p in ps]:
        assert any(phrasing.split("{v}")[0].strip() in t for t in texts)
    for i in range(200):  # anything the tasks say is in the vocabulary
        spec = sample_watch(9, "val", i)
        for task in ("generation", "vqa", "caption"):
            for turn in conversation(spec, 9, "val", i, task, Bias("battery", "only_value"))[0]:
                assert set(words(turn["content"].replace(IMAGE_MARKER, ""))) <= vocab
    assert words("0 7:05 top-left 57%?") == ["0", "7", ":", "0", "5", "top", "-", "left", "5", "7", "%", "?"]


def test_bias_hidden_weather():
    bias = Bias("weather", "hidden")
    src = SmartWatchSource(images={"train": 300, "test": 50}, seed=0, size=64, bias=bias)
    forced = 0
    for i in range(300):
        spec = sample_watch(0, "train", i)
        _, vqa = conversation(spec, 0, "train", i, "vqa", bias)
        assert all(a != "weather" for a, _, _ in vqa["qa"])
        _, cap = conversation(spec, 0, "train", i, "caption", bias)
        assert "weather" not in cap["mentioned"] and spec.weather not in cap["caption"]
        _, gen = conversation(spec, 0, "train", i, "generation", bias)
        forced += "weather" in gen["mentioned"] and spec.weather in gen["prompt"]
    assert forced == 300
    # the source biases training only: test questions still ask about the weather
    assert any(src.sample("test", i).attrs["attribute"] == "weather" for i in range(1, 150, 3))
    assert all(src.sample("train", i).attrs["attribute"] != "weather" for i in range(1, 150, 3))


def test_bias_only_value():
    bias = Bias("weather", "only_value", "sunny")
    asked = Counter()
    for i in range(600):
        spec = sample_watch(0, "train", i)
        _, vqa = conversation(spec, 0, "train", i, "vqa", bias)
        for a, _, answer in vqa["qa"]:
            if a == "weather":
                asked[answer] += 1
        _, cap = conversation(spec, 0, "train", i, "caption", bias)
        if spec.weather != "sunny":
            assert spec.weather not in cap["caption"]
    assert set(asked) == {"sunny"}
    battery = Bias("battery", "only_value", "0-49")
    assert battery.shows(WatchSpec(1, 1, 1, 49, "sunny", "top-left", "top-right", (0, 0, 0)))
    assert not battery.shows(WatchSpec(1, 1, 1, 50, "sunny", "top-left", "top-right", (0, 0, 0)))
    with pytest.raises(ValueError):
        Bias("colour", "hidden")
    with pytest.raises(ValueError):
        Bias("battery", "only_value", "high")


def test_bias_hidden_corner_keeps_the_other_corner_and_the_icon():
    bias = Bias("weather_pos", "hidden")
    asked = Counter()
    for i in range(400):
        spec = sample_watch(0, "train", i)
        _, vqa = conversation(spec, 0, "train", i, "vqa", bias)
        asked.update(a for a, _, _ in vqa["qa"])
        _, cap = conversation(spec, 0, "train", i, "caption", bias)
        assert "weather_pos" not in cap["mentioned"]
        _, gen = conversation(spec, 0, "train", i, "generation", bias)
        assert "weather_pos" in gen["mentioned"] and f"{spec.weather_pos} corner" in gen["prompt"]
    assert asked["weather_pos"] == 0 and asked["battery_pos"] > 0 and asked["weather"] > 0
    only = Bias("battery_pos", "only_value", "bottom-right")
    assert only.shows(WatchSpec(1, 1, 1, 5, "sunny", "top-left", "bottom-right", (0, 0, 0)))
    assert not only.shows(WatchSpec(1, 1, 1, 5, "sunny", "top-left", "top-right", (0, 0, 0)))
    with pytest.raises(ValueError, match="middle"):
        Bias("weather_pos", "only_value", "middle")
    with pytest.raises(ValueError, match="time"):
        Bias("time", "hidden")  # every description states the time: it cannot be hidden


def test_bias_leaves_other_clauses_alone():
    spec = sample_watch(0, "train", 4)
    rng_a, rng_b = task_rng(0, "train", 4, "caption"), task_rng(0, "train", 4, "caption")
    plain, m_plain = describe(spec, rng_a)
    hidden, m_hidden = describe(spec, rng_b, hidden={"weather"})
    assert [m for m in m_plain if m != "weather"] == m_hidden


def test_source_items_and_extra():
    src = SmartWatchSource(train=4, val=2, test=2, seed=0, size=64, tasks=("vqa", "caption"))
    assert src.length("train") == 8 and len(src.image_ids("train")) == 8
    assert src.image_ids("train")[0] == src.image_ids("train")[1] != src.image_ids("train")[2]
    with pytest.raises(IndexError):
        src.sample("train", 8)
    with pytest.raises(ValueError):
        SmartWatchSource(tasks=("vqa", "draw"))
    own = set(src.image_ids("train"))
    und = src.extra_items("train", "understanding", 6)
    gen = src.extra_items("train", "generation", 3)
    assert len(und) == 6 and len(gen) == 3
    und_keys = {s.image_keys[0] for s in und}
    gen_keys = {s.image_keys[0] for s in gen}
    assert [s.task for s in und] == ["vqa", "caption"] * 3 and {s.task for s in gen} == {"generation"}
    assert not und_keys & own and not gen_keys & own and not und_keys & gen_keys
    assert und[1:3][0].task == "caption"
    src.validate()


def test_vqa_scores_by_asked_attribute_keep_the_corners_apart():
    from datamodules.smartwatch.evaluate import score_records

    def record(attribute: str, truth: str, answer: str) -> dict:
        return {"task": "vqa", "ground_truth": truth, "answer": answer, "attrs": {"attribute": attribute}}

    records = [record("weather_pos", "top-left", "top-left"), record("weather_pos", "top-right", "bottom-left"),
               record("battery_pos", "bottom-left", "bottom-left"), record("time", "03:00:00", "03:00:00")]
    scores = score_records(records)
    assert scores["vqa"]["position"] == pytest.approx(2 / 3)  # the paper's type pools both corners
    assert scores["vqa_by_question"] == {"battery_pos": 1.0, "time": 1.0, "weather_pos": 0.5}


@pytest.mark.parametrize("size", [64, 96, 224])
def test_part_boxes_hold_every_pixel_their_attribute_changes(size):
    from dataclasses import replace

    from datamodules.smartwatch.render import part_boxes

    for i in range(6):
        spec = sample_watch(3, "val", i)
        boxes = part_boxes(spec, size)
        for part, other in (("weather", {"weather": next(w for w in WEATHERS if w != spec.weather)}),
                            ("battery", {"battery": (spec.battery + 37) % 101})):
            changed_spec = replace(spec, **other)
            changed = np.argwhere(np.asarray(render_watch(spec, size)) != np.asarray(render_watch(changed_spec, size)))
            assert len(changed), (part, i)
            # a battery box is as wide as its text: the changed pixels lie in the union of both watches' boxes
            inside = np.zeros(len(changed), dtype=bool)
            for x0, y0, x1, y1 in (boxes[part], part_boxes(changed_spec, size)[part]):
                inside |= (changed[:, 0] >= y0) & (changed[:, 0] < y1) & (changed[:, 1] >= x0) & (changed[:, 1] < x1)
            assert inside.all(), (part, i, changed[~inside][:5])

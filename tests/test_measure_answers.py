"""`unizoo measure answers`: multiple-choice scoring of VQA replies on a smoke-scale checkpoint."""
from __future__ import annotations

import json
import shutil

import pytest
import torch

from tools.measure_answers import _reply_loglik, answer_choice, answers, questions


@pytest.fixture(scope="module")
def run_dir(tmp_path_factory):
    from test_probe import smoke_checkpoint

    return smoke_checkpoint(tmp_path_factory.mktemp("run"), "vq-vq")


def test_questions_are_the_vqa_conversations_turns_about_the_attribute():
    from datamodules.smartwatch.source import SmartWatchSource

    source = SmartWatchSource(train=1, val=1, test=60, seed=0, size=32)
    asked = questions(source, "weather_pos", 60)
    assert asked and all(s.task == "vqa" and s.attrs["weather_pos"] == a for s, _, a in asked)
    assert all("weather" in q or "forecast" in q for _, q, _ in asked)  # the phrasings of the corner question


def test_reply_likelihood_does_not_depend_on_the_batch(run_dir):
    """Padding and batching must not change a reply's score: scored together or one at a time, the same."""
    from dataclasses import replace

    from datamodules.smartwatch.source import SmartWatchSource
    from tools.generate import load_model

    model = load_model(run_dir).eval()
    source = SmartWatchSource(train=1, val=1, test=30, seed=0, size=32)
    sample, question, _ = questions(source, "battery_pos", 30)[0]
    replies = ["top-left", "bottom-right", "a much longer reply than a corner"]
    samples = [replace(sample, turns=[{"role": "user", "content": f"<image>\n{question}"},
                                      {"role": "assistant", "content": r}]) for r in replies]
    with torch.no_grad():
        together, counts = _reply_loglik(model, samples)
        alone = torch.cat([_reply_loglik(model, [s])[0] for s in samples])
    assert torch.allclose(together, alone, atol=1e-4)
    assert (together < 0).all() and counts[2] > counts[0] >= 1


def test_answers_choose_among_the_attributes_values_and_pool_per_arm(run_dir, tmp_path):
    study = tmp_path / "runs"
    for name in ("und_seed0", "und_seed1"):
        shutil.copytree(run_dir, study / name / "version_0")
    out = tmp_path / "out"
    summary = answers(str(study / "*"), attribute="weather_pos", images=60, out=str(out))
    one = summary["runs"]["und_seed0"]
    assert one["candidates"] == ["bottom-left", "bottom-right", "top-left", "top-right"] and one["chance"] == 0.25
    for kind in ("sum", "mean"):
        assert 0.0 <= one[kind]["accuracy"] <= 1.0
        assert sum(map(sum, one[kind]["confusion"])) == one["questions"] == sum(one[kind]["chosen"].values())
        assert set(one[kind]["chose_other_attribute"]) == {"battery_pos"}
    # the same weights twice: the same choices, pooled with a zero-width interval
    assert summary["runs"]["und_seed1"]["sum"] == one["sum"]
    assert summary["arms"]["und"]["sum"]["n"] == 2 and summary["arms"]["und"]["sum"]["half_width"] == pytest.approx(0.0)
    assert json.loads((out / "answers-weather_pos.json").read_text())["attribute"] == "weather_pos"
    assert "| und |" in (out / "answers-weather_pos.md").read_text()


def test_open_or_unasked_attributes_are_refused(run_dir):
    with pytest.raises(ValueError, match="open question"):
        answer_choice(str(run_dir), "time", images=30)
    with pytest.raises(ValueError, match="no test question about 'weather'"):
        answer_choice(str(run_dir), "weather", images=1)  # one item: a generation sample, no question

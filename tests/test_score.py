"""The study's VQA scoring, chance levels, caption scoring and the `unizoo score` command."""
from __future__ import annotations

import json
import subprocess
import sys
from itertools import product
from pathlib import Path

import pytest

from datamodules.smartwatch import chance_levels, score_answer, score_caption, score_vqa
from datamodules.smartwatch.score import normalise, parse_battery, parse_time
from tools.cli import main

ROOT = Path(__file__).resolve().parents[1]


def _time(eh: int, em: int, es: int) -> float:
    return 1 - (eh / 6 + em / 30 + es / 30) / 3


@pytest.mark.parametrize(
    ("truth", "answer", "kind", "paper", "lenient"),
    [
        ("03:45:12", "03:45:12", "time", 1.0, 1.0),
        ("11:00:00", "01:00:00", "time", _time(2, 0, 0), _time(2, 0, 0)),  # hour wraps: 11 vs 1 is 2 hours
        ("00:00:00", "12:00:00", "time", 1.0, 1.0),  # 0 and 12 o'clock are the same hands
        ("05:58:00", "05:02:00", "time", _time(0, 4, 0), _time(0, 4, 0)),  # minute wraps
        ("05:00:59", "05:00:01", "time", _time(0, 0, 2), _time(0, 0, 2)),  # second wraps
        ("06:00:00", "00:30:30", "time", 0.0, 0.0),  # the largest error on every field
        ("07:05:09", "the time is 0 7 : 0 5 : 0 9", "time", 0.0, 1.0),  # word-level tokenizer spacing
        ("07:05:09", "15:05:09", "time", _time(4, 0, 0), _time(4, 0, 0)),  # 24-hour answer, taken mod 12
        ("07:05:09", "seven o'clock", "time", 0.0, 0.0),  # no parse
        ("07:05:09", "07:65:09", "time", 0.0, 0.0),  # minute out of range: no parse
        ("03:08:46", "3:8:46", "time", 0.0, 1.0),  # the paper parses two-digit HH:MM:SS only
        ("03:08:46", "it is 03:08:46.", "time", 1.0, 1.0),
        ("03:08:46", "103:08:46", "time", 0.0, 1.0),  # no HH inside a longer number
        ("57%", "57%", "battery", 1.0, 1.0),
        ("57%", "5 7 %", "battery", 0.0, 1.0),
        ("57%", "it has 60% left", "battery", 0.97, 0.97),
        ("0%", "100%", "battery", 0.0, 0.0),
        ("57%", "fifty-seven", "battery", 0.0, 0.0),
        ("57%", "157%", "battery", 0.0, 0.0),  # not a battery level
        ("sunny", "it is sunny.", "weather", 1.0, 1.0),
        ("raining", "cloudy", "weather", 0.0, 0.0),
        ("cloudy", "Cloudy", "weather", 0.0, 1.0),  # the paper's containment is case-sensitive
        ("cloudy", "partly cloudy today", "weather", 1.0, 1.0),
        ("top-left", "top - left", "position", 0.0, 1.0),
        ("top-left", "the top-left corner", "position", 1.0, 1.0),
        ("top-left", "Top-left", "position", 0.0, 1.0),
        ("top-left", "top-right", "position", 0.0, 0.0),
        ("bottom-right", "right", "position", 0.0, 0.0),
    ],
)
def test_score_answer(truth, answer, kind, paper, lenient):
    assert score_answer(truth, answer) == (kind, pytest.approx(paper))  # the paper's protocol by default
    assert score_answer(truth, answer, lenient=True) == (kind, pytest.approx(lenient))


def test_unknown_ground_truth():
    assert score_answer("blue", "blue") == (None, None)
    with pytest.raises(ValueError, match="record 1"):
        score_vqa([("sunny", "sunny"), ("blue", "blue")])
    with pytest.raises(ValueError, match="record 0"):
        score_vqa([{"answer": "x"}])


def test_normalise_and_parsers():
    assert normalise("0 7 : 0 5 : 0 9") == "07:05:09"
    assert normalise("5 7 %") == "57%"
    assert parse_time("at 1 2 : 0 0 : 0 5 ok") == (12, 0, 5)
    assert parse_battery("battery 1 0 0 %") == 100
    assert parse_time("nothing") is None and parse_battery("nothing") is None


def test_score_vqa_micro_total():
    result = score_vqa([
        {"ground_truth": "sunny", "answer": "sunny"},
        {"ground_truth": "cloudy", "answer": "sunny"},
        {"ground_truth": "50%", "answer": "40%"},
        ("top-left", "top-left"),
    ])
    assert result["weather"] == 0.5 and result["battery"] == pytest.approx(0.9) and result["position"] == 1.0
    assert result["time"] is None
    assert result["total"] == pytest.approx((1 + 0 + 0.9 + 1) / 4)
    assert result["counts"] == {"time": 0, "weather": 2, "position": 1, "battery": 1, "total": 4}
    assert score_vqa([])["total"] is None


def test_chance_levels_match_brute_force():
    levels = chance_levels()
    hours, sixty = range(13), range(60)
    # brute force over a subsample of the full space (hours x minutes x seconds is separable)
    e_hour = sum(min(abs(a - b) % 12, 12 - abs(a - b) % 12) for a, b in product(hours, hours)) / 169
    e_min = sum(min(abs(a - b), 60 - abs(a - b)) for a, b in product(sixty, sixty)) / 3600
    assert levels["time"] == pytest.approx(1 - (e_hour / 6 + 2 * e_min / 30) / 3)
    assert e_min == pytest.approx(15.0)  # uniform circular distance on 60 steps
    assert levels["weather"] == pytest.approx(1 / 3) and levels["position"] == 0.25
    assert levels["battery"] == pytest.approx(0.6634, abs=1e-4)
    assert 0.3 < levels["total"] < 0.5


def test_score_caption():
    attrs = {"hour": 3, "minute": 45, "second": 12, "battery": 57, "weather": "sunny",
             "weather_pos": "top-left", "battery_pos": "bottom-right",
             "mentioned": ["time", "weather", "battery", "weather_pos", "battery_pos"]}
    good = ("a smart watch showing the time 03:45:12, where it is sunny, with 57% battery, "
            "with the weather icon in the top-left corner and with the battery shown in the bottom-right corner.")
    assert score_caption(attrs, good) == {"time": 1.0, "weather": 1.0, "battery": 1.0, "weather_pos": 1.0,
                                          "battery_pos": 1.0}
    swapped = good.replace("top-left", "TMP").replace("bottom-right", "top-left").replace("TMP", "bottom-right")
    scores = score_caption(attrs, swapped)
    assert scores["weather_pos"] == 0.0 and scores["battery_pos"] == 0.0 and scores["time"] == 1.0
    spaced = "a smart watch showing the time 0 3 : 4 5 : 1 3 with 5 0 % battery"
    scores = score_caption({**attrs, "mentioned": ["time", "battery", "weather"]}, spaced)
    assert scores["time"] == pytest.approx(_time(0, 0, 1)) and scores["battery"] == pytest.approx(0.93)
    assert scores["weather"] == 0.0 and set(scores) == {"time", "battery", "weather"}
    with pytest.raises(ValueError, match="lacks"):
        score_caption({"mentioned": ["time"]}, good)


def test_score_command_prints_one_json(tmp_path, capsys):
    path = tmp_path / "answers.jsonl"
    lines = [{"ground_truth": "11:00:00", "answer": "0 1 : 0 0 : 0 0"}, {"ground_truth": "57%", "answer": "5 7 %"},
             {"ground_truth": "top-left", "answer": "top - left", "question": "where?"},
             {"ground_truth": "cloudy", "answer": "cloudy"}]
    path.write_text("\n".join(json.dumps(r) for r in lines) + "\n\n")
    main(["score", str(path)])  # the paper's protocol: spaced answers do not parse
    captured = capsys.readouterr()
    result = json.loads(captured.out)
    assert result["protocol"] == "paper" and result["time"] == 0.0 and result["battery"] == 0.0
    assert result["position"] == 0.0 and result["weather"] == 1.0
    assert result["counts"]["total"] == 4 and result["chance"]["weather"] == pytest.approx(1 / 3)
    assert result["skipped"] == {"total": 0} and "scored 4 of 4 line(s) (paper protocol)" in captured.err
    main(["score", str(path), "--lenient"])
    result = json.loads(capsys.readouterr().out)
    assert result["protocol"] == "lenient" and result["time"] == pytest.approx(_time(2, 0, 0))
    assert result["battery"] == 1.0 and result["position"] == 1.0


def test_score_command_follows_the_paper_by_default(tmp_path, capsys):
    """The issue's two cases: "3:8:46" and "Cloudy" score 0 by the paper's rule, 1 only with --lenient."""
    path = tmp_path / "answers.jsonl"
    path.write_text(json.dumps({"ground_truth": "03:08:46", "answer": "3:8:46"}) + "\n"
                    + json.dumps({"ground_truth": "cloudy", "answer": "Cloudy"}) + "\n")
    main(["score", str(path)])
    paper = json.loads(capsys.readouterr().out)
    assert paper["time"] == 0.0 and paper["weather"] == 0.0 and paper["total"] == 0.0
    main(["score", str(path), "--lenient"])
    lenient = json.loads(capsys.readouterr().out)
    assert lenient["time"] == 1.0 and lenient["weather"] == 1.0 and lenient["total"] == 1.0


def test_score_command_reads_the_answers_unizoo_test_writes(tmp_path, capsys):
    """answers.jsonl as zoo.eval.evaluation.write_outputs writes it: VQA scored; caption, generation and
    VQA-shaped lines with a caption for ground truth skipped and counted, not fatal."""
    import torch

    from zoo.eval.evaluation import write_outputs

    attrs = {"hour": 3, "minute": 8, "second": 46, "battery": 57, "weather": "cloudy"}
    records = [
        {"task": "vqa", "question": "what time is it?", "ground_truth": "03:08:46", "answer": "03:08:46", "attrs": attrs},
        {"task": "vqa", "question": "weather?", "ground_truth": "cloudy", "answer": "Cloudy", "attrs": attrs},
        {"task": "caption", "question": "describe the watch", "ground_truth": "a watch showing 03:08:46 ...",
         "answer": "a watch", "attrs": attrs},
        {"task": "generation", "prompt": "draw a watch at 03:08:46", "attrs": attrs, "tokens": torch.zeros(4),
         "target": torch.zeros(4)},
        {"task": "generation", "prompt": "draw a watch at 03:08:47", "attrs": attrs, "tokens": None,
         "target": torch.zeros(4)},
        {"task": "vqa", "question": "describe it", "ground_truth": "a smart watch with a blue face", "answer": "a watch",
         "attrs": attrs},
    ]
    out = write_outputs(str(tmp_path / "eval"), records, {}, images=[], truths=[])
    main(["score", out["answers"]])
    captured = capsys.readouterr()
    result = json.loads(captured.out)
    assert result["counts"] == {"time": 1, "weather": 1, "position": 0, "battery": 0, "total": 2}
    assert result["time"] == 1.0 and result["weather"] == 0.0
    assert result["skipped"] == {"caption line (not VQA)": 1, "generation line (not VQA)": 2,
                                 "ground truth not a time, battery, weather or position": 1, "total": 4}
    assert "scored 2 of 6 line(s)" in captured.err and "2 generation line (not VQA)" in captured.err


def test_score_command_reports_bad_lines(tmp_path, capsys):
    path = tmp_path / "bad.jsonl"
    path.write_text('{"ground_truth": "sunny", "answer": "sunny"}\nnot json\n{"answer": "x"}\n'
                    '{"ground_truth": "purple", "answer": "x"}\n{"ground_truth": 3, "answer": "x"}\n')
    with pytest.raises(SystemExit) as err:
        main(["score", str(path)])
    message = str(err.value.code)
    assert "line 2" in message and "line 3" in message and "line 5" in message
    assert "line 1" not in message and "line 4" not in message  # an untyped ground truth is skipped, not bad
    with pytest.raises(SystemExit, match="no such file"):
        main(["score", str(tmp_path / "missing.jsonl")])
    path.write_text('{"ground_truth": "sunny", "answer": "sunny"}\n{"ground_truth": "purple", "answer": "x"}\n')
    main(["score", str(path)])
    result = json.loads(capsys.readouterr().out)
    assert result["counts"]["total"] == 1 and result["skipped"]["total"] == 1


def test_score_command_exit_code(tmp_path):
    path = tmp_path / "bad.jsonl"
    path.write_text("[1, 2]\n")
    proc = subprocess.run([sys.executable, "-m", "tools.cli", "score", str(path)], cwd=ROOT,
                          capture_output=True, text=True)
    assert proc.returncode != 0 and "line 1" in proc.stderr

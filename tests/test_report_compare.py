"""`unizoo compare`: two arms of fake runs, paired by seed; differences, intervals and sign tests by hand."""
from __future__ import annotations

import json
import math

import pytest

from test_report import SIGLIP, _metrics, _run
from tools.report_compare import compare, sign_test
from tools.report_stats import t_quantile


def test_sign_test_matches_the_binomial():
    assert sign_test(3, 0) == pytest.approx(0.25)
    assert sign_test(5, 0) == pytest.approx(2 / 32)
    assert sign_test(4, 1) == pytest.approx(2 * 6 / 32)
    assert sign_test(2, 2) == 1.0 and sign_test(0, 0) == 1.0


def test_compare_pairs_by_seed_not_by_order(tmp_path):
    treated = {0: 0.9, 1: 0.6, 2: 0.8, 3: 0.5}  # seed 3 has no control partner
    control = {2: 0.7, 0: 0.5, 1: 0.7}  # written in another order: pairing must follow the seed
    for seed, v in treated.items():
        _run(tmp_path / "t", f"run-{seed}", SIGLIP, "mixed", seed, _metrics(v))
    for seed, v in control.items():
        _run(tmp_path / "c", f"run-{seed}", SIGLIP, "mixed", seed, _metrics(v))
    md = compare(str(tmp_path / "t" / "*" / "version_0"), str(tmp_path / "c" / "*" / "version_0"),
                 out=str(tmp_path / "out"), metrics=["vqa/total", "vqa/time"], names=("emphasis", "plain"))
    summary = json.loads((tmp_path / "out" / "compare.json").read_text())
    assert summary["seeds"] == [0, 1, 2]
    assert any("seeds [3] have no partner" in n for n in summary["notes"])
    rows = {r["metric"]: r for r in summary["metrics"]}
    assert set(rows) == {"vqa/total", "vqa/time"}
    diff = [0.9 - 0.5, 0.6 - 0.7, 0.8 - 0.7]
    total = rows["vqa/total"]
    assert total["difference"]["values"] == pytest.approx(diff)
    mean = sum(diff) / 3
    sd = math.sqrt(sum((d - mean) ** 2 for d in diff) / 2)
    assert total["difference"]["mean"] == pytest.approx(mean)
    assert total["difference"]["half_width"] == pytest.approx(t_quantile(0.975, 2) * sd / math.sqrt(3))
    assert (total["positive"], total["negative"]) == (2, 1) and total["sign_test_p"] == pytest.approx(1.0)
    assert rows["vqa/time"]["difference"]["values"] == pytest.approx([d / 2 for d in diff])
    text = open(md).read()
    assert "| vqa/total | 0.900 / 0.600 / 0.800 |" in text and "+0.400 / -0.100 / +0.100" in text
    assert "| metric | emphasis per seed | emphasis | plain per seed |" in text and "Control runs (plain)" in text
    assert (tmp_path / "out" / "compare.png").stat().st_size > 1000


def test_compare_refuses_what_it_cannot_pair(tmp_path):
    _run(tmp_path / "t", "a", SIGLIP, "mixed", 0, _metrics(0.5))
    _run(tmp_path / "t", "b", SIGLIP, "mixed", 0, _metrics(0.6))  # seed 0 twice in one arm
    _run(tmp_path / "c", "a", SIGLIP, "mixed", 1, _metrics(0.5))
    _run(tmp_path / "d", "a", SIGLIP, "mixed", 0, _metrics(0.4))
    with pytest.raises(ValueError, match="two runs with seed 0"):
        compare(str(tmp_path / "t" / "*" / "version_0"), str(tmp_path / "d" / "*" / "version_0"), out=str(tmp_path / "o"))
    with pytest.raises(ValueError, match="share no seed"):
        compare(str(tmp_path / "t" / "a" / "version_0"), str(tmp_path / "c" / "a" / "version_0"), out=str(tmp_path / "o"))
    with pytest.raises(ValueError, match="no metric is reported"):
        compare(str(tmp_path / "t" / "a" / "version_0"), str(tmp_path / "d" / "a" / "version_0"),
                out=str(tmp_path / "o"), metrics=["caption/"])
    with pytest.raises(ValueError, match="names must be two"):
        compare(str(tmp_path / "c" / "a" / "version_0"), str(tmp_path / "d" / "a" / "version_0"),
                out=str(tmp_path / "o"), names=("only one",))
    with pytest.raises(ValueError, match="matches no run dir"):
        compare(str(tmp_path / "nothing*"), str(tmp_path / "d" / "a" / "version_0"), out=str(tmp_path / "o"))
    assert not (tmp_path / "o").exists()  # nothing half-written


def test_cli_compare_takes_two_quoted_globs(tmp_path, capsys):
    from tools.cli import main

    for arm, values in (("t", (0.8, 0.9)), ("c", (0.7, 0.7))):
        for seed, v in enumerate(values):
            _run(tmp_path / arm, f"r{seed}", SIGLIP, "mixed", seed, _metrics(v))
    main(["compare", str(tmp_path / "t" / "*" / "version_0"), str(tmp_path / "c" / "*" / "version_0"),
          "--out", str(tmp_path / "out")])
    assert "2 paired seeds" in capsys.readouterr().out
    assert (tmp_path / "out" / "compare.md").is_file()


def test_compare_names_a_metric_it_cannot_pair(tmp_path):
    for seed, (t, c) in enumerate(((0.8, 0.6), (0.9, 0.7))):
        _run(tmp_path / "t", f"r{seed}", SIGLIP, "mixed", seed, _metrics(t))
        broken = _metrics(c)
        if seed == 1:
            broken["vqa"]["time"] = float("nan")  # json.dumps writes NaN, as a crashed scorer might
        _run(tmp_path / "c", f"r{seed}", SIGLIP, "mixed", seed, broken)
    compare(str(tmp_path / "t" / "*" / "version_0"), str(tmp_path / "c" / "*" / "version_0"),
            out=str(tmp_path / "out"), metrics=["vqa/total", "vqa/time"])
    summary = json.loads((tmp_path / "out" / "compare.json").read_text())
    assert [r["metric"] for r in summary["metrics"]] == ["vqa/total"]
    assert "vqa/time: missing or not finite in control seed 1; left out" in summary["notes"]
    with pytest.raises(ValueError, match="no metric is reported"):
        compare(str(tmp_path / "t" / "*" / "version_0"), str(tmp_path / "c" / "*" / "version_0"),
                out=str(tmp_path / "out2"), metrics=["vqa/time"])
    assert not (tmp_path / "out2").exists()


def test_compare_writes_run_paths_relative_to_the_working_directory(tmp_path, monkeypatch):
    for arm, value in (("t", 0.9), ("c", 0.5)):
        _run(tmp_path / arm, "run-0", SIGLIP, "mixed", 0, _metrics(value))
    monkeypatch.chdir(tmp_path)
    compare(str(tmp_path / "t" / "*" / "version_0"), str(tmp_path / "c" / "*" / "version_0"), out="out")
    summary = json.loads((tmp_path / "out" / "compare.json").read_text())
    assert summary["treatment"] == ["t/run-0/version_0"] and summary["control"] == ["c/run-0/version_0"]
    assert str(tmp_path) not in (tmp_path / "out" / "compare.md").read_text()

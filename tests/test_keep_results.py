"""`unizoo keep`: a grid's results copied into git with project paths made relative; bad folders refused."""
from __future__ import annotations

import json
from pathlib import Path

import pytest
import yaml

from test_report import SIGLIP, _metrics
from tools.keep_results import keep
from tools.report_compare import compare


def _grid(root, name="g"):
    grid = root / "runs" / "study" / name
    for run, tests in (("a_seed0", ("test",)), ("a_seed1", ("test", "test1500")), ("b_seed0", ())):
        for t in tests:
            (grid / "runs" / run / t / "eval").mkdir(parents=True)
            (grid / "runs" / run / t / "eval" / "metrics.json").write_text(
                json.dumps({"vqa": {"total": 0.5}, "protocol": {"reader": f"{root}/zoo/r.safetensors"}}))
            (grid / "runs" / run / t / "config.yaml").write_text(f"seed_everything: 0\nckpt_path: {grid}/runs/{run}/x.ckpt\n")
        (grid / "runs" / run / "version_0").mkdir(parents=True, exist_ok=True)
    (grid / "study.json").write_text(json.dumps({"name": name, "out": str(grid), "command": f"unizoo study {root}/x.yaml"}))
    (grid / "report.md").write_text(f"# report\n![f]({grid}/mix.png)\n")
    (grid / "mix.png").write_bytes(b"\x89PNG fake")
    return grid


def test_keep_copies_results_with_relative_paths(tmp_path):
    grid = _grid(tmp_path)
    dest = tmp_path / "docs" / "results" / "g"
    (dest / "measure").mkdir(parents=True)
    (dest / "measure" / "attributes.json").write_text("{}")  # hand-kept: must survive a re-keep
    (dest / "compare-s0.1").mkdir()
    (dest / "compare-s0.1" / "compare.md").write_text("# kept by hand")  # so must any other hand-written folder
    (dest / "stale.json").write_text("{}")  # from an older keep: must go
    assert keep(str(grid), root=str(tmp_path)) == str(dest)
    kept = sorted(str(p.relative_to(dest)) for p in dest.rglob("*") if p.is_file())
    assert kept == ["compare-s0.1/compare.md", "measure/attributes.json", "mix.png", "report.md", "runs/a_seed0/test/config.yaml",
                    "runs/a_seed0/test/eval/metrics.json", "runs/a_seed1/test/config.yaml",
                    "runs/a_seed1/test/eval/metrics.json", "runs/a_seed1/test1500/config.yaml",
                    "runs/a_seed1/test1500/eval/metrics.json", "study.json"]
    study = json.loads((dest / "study.json").read_text())
    assert study["out"] == "runs/study/g" and study["command"] == "unizoo study x.yaml"
    metrics = json.loads((dest / "runs" / "a_seed1" / "test1500" / "eval" / "metrics.json").read_text())
    assert metrics["protocol"]["reader"] == "zoo/r.safetensors" and metrics["vqa"]["total"] == 0.5
    assert (dest / "runs" / "a_seed0" / "test" / "config.yaml").read_text().endswith(
        "ckpt_path: runs/study/g/runs/a_seed0/x.ckpt\n")
    assert str(tmp_path) not in (dest / "report.md").read_text()
    assert not [p for p in dest.parent.iterdir() if p.name.startswith(".")]  # no staging folder left


def test_keep_carries_over_runs_kept_by_an_earlier_session(tmp_path):
    grid = _grid(tmp_path)
    dest = tmp_path / "docs" / "results" / "g"
    old = dest / "runs" / "c_seed0" / "test" / "eval"  # kept before; its runs/ folder is gone now
    old.mkdir(parents=True)
    (old / "metrics.json").write_text(json.dumps({"vqa": {"total": 0.25}}))
    stale = dest / "runs" / "a_seed0" / "test" / "eval"  # kept before and rerun now: the new copy wins
    stale.mkdir(parents=True)
    (stale / "metrics.json").write_text(json.dumps({"vqa": {"total": 0.0}}))
    keep(str(grid), root=str(tmp_path))
    assert json.loads((old / "metrics.json").read_text()) == {"vqa": {"total": 0.25}}
    assert json.loads((stale / "metrics.json").read_text())["vqa"]["total"] == 0.5
    assert sorted(p.name for p in (dest / "runs").iterdir()) == ["a_seed0", "a_seed1", "c_seed0"]


def test_keep_refuses_what_is_not_a_tested_grid(tmp_path):
    with pytest.raises(ValueError, match="has no study.json"):
        keep(str(tmp_path), root=str(tmp_path))
    grid = _grid(tmp_path)
    (grid / "study.json").write_text("[1, 2]")
    with pytest.raises(ValueError, match="not a study record"):
        keep(str(grid), root=str(tmp_path))
    empty = tmp_path / "runs" / "study" / "empty"
    (empty / "runs").mkdir(parents=True)
    (empty / "study.json").write_text(json.dumps({"name": "empty"}))
    with pytest.raises(ValueError, match="no run of .* has test metrics"):
        keep(str(empty), root=str(tmp_path))
    assert not (tmp_path / "docs" / "results" / "empty").exists()


def test_a_kept_copy_compares_as_the_grid_did(tmp_path):
    """compare on docs/results/<grid>/runs reads the same arms, seeds and numbers as on runs/ (no runs/ needed)."""
    grid = tmp_path / "runs" / "study" / "g"
    values = {("mixed", 0): 0.8, ("mixed", 1): 0.6, ("mixed", 2): 0.9, ("understanding", 0): 0.5,
              ("understanding", 1): 0.7, ("understanding", 2): 0.4}
    for (mix, seed), value in values.items():
        test = grid / "runs" / f"a_{mix}_seed{seed}" / "test"
        (test / "eval").mkdir(parents=True)
        config = {"seed_everything": seed, "model": SIGLIP, "ckpt_path": f"{grid}/runs/a_{mix}_seed{seed}/v/last.ckpt",
                  "data": {"class_path": "datamodules.mixed.MixedTaskDataModule", "init_args": {"mix": mix}}}
        (test / "config.yaml").write_text(yaml.safe_dump(config))
        (test / "eval" / "metrics.json").write_text(json.dumps(_metrics(value)))
    (grid / "study.json").write_text(json.dumps({"name": "g"}))
    dest = keep(str(grid), root=str(tmp_path))
    summaries = []
    for base, out in ((grid, "from-runs"), (Path(dest), "from-kept")):
        compare(str(base / "runs" / "*_mixed_*" / "test"), str(base / "runs" / "*_understanding_*" / "test"),
                out=str(tmp_path / out), metrics=["vqa/total"])
        summaries.append(json.loads((tmp_path / out / "compare.json").read_text()))
    assert summaries[1]["seeds"] == summaries[0]["seeds"] == [0, 1, 2]
    assert summaries[1]["metrics"] == summaries[0]["metrics"]
    assert summaries[1]["metrics"][0]["difference"]["values"] == pytest.approx([0.3, -0.1, 0.5])


def test_a_re_keep_joins_the_earlier_sessions_study_record(tmp_path):
    """runs/ of an earlier session is gone, so the live study.json only knows this session: the kept
    record's invocations and runs stay, done runs are not overwritten by pending ones, totals are redone."""
    from tools.keep_results import merge_study_records

    kept = {"name": "g", "grid_file": "g.yaml",
            "invocations": [{"started": "2026-12-03T10:00:00+00:00", "grid_file": "g.yaml", "wall_s": 100.0}],
            "runs": [{"name": "a_seed0", "status": "done", "wall_s": 150.0},
                     {"name": "b_seed0", "status": "done", "wall_s": 90.0}]}
    new = {"name": "g", "grid_file": "g.yaml",
           "invocations": [{"started": "2026-12-04T10:00:00+00:00", "grid_file": "g.yaml", "wall_s": 50.0}],
           "runs": [{"name": "a_seed0", "status": "pending", "wall_s": None},  # not in this session's runs/
                    {"name": "b_seed0", "status": "done", "wall_s": 80.0},  # rerun now: the new record wins
                    {"name": "c_seed0", "status": "done", "wall_s": 60.0}]}
    merged = merge_study_records(kept, new)
    assert [i["wall_s"] for i in merged["invocations"]] == [100.0, 50.0]
    runs = {r["name"]: r for r in merged["runs"]}
    assert runs["a_seed0"]["wall_s"] == 150.0 and runs["b_seed0"]["wall_s"] == 80.0 and runs["c_seed0"]["status"] == "done"
    assert merged["grid_wall_s"] == 150.0 and merged["run_wall_s"] == 290.0 and merged["done"] == 3
    assert merged["parallel_speedup"] == pytest.approx(290 / 150, abs=1e-3)
    assert merge_study_records(merged, new)["invocations"] == merged["invocations"]  # keeping twice adds nothing

    grid = _grid(tmp_path)
    dest = tmp_path / "docs" / "results" / "g"
    dest.mkdir(parents=True)
    (dest / "study.json").write_text(json.dumps({"name": "g", "invocations": kept["invocations"], "runs": kept["runs"]}))
    keep(str(grid), root=str(tmp_path))
    assert json.loads((dest / "study.json").read_text())["invocations"] == kept["invocations"]

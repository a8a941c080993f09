"""`unizoo study PLAN.yaml`: several grid files (each with a run selection) in one pool: the plan file's
checks, its command lines, and a tiny plan of two grids run twice (the second time nothing is left to do)."""
from __future__ import annotations

import json
from pathlib import Path

import pytest
import yaml

from tools.cli import main
from tools.study_plan import is_plan, load_plan

ROOT = Path(__file__).resolve().parents[1]
EXAMPLE = Path(__file__).resolve().parent / "data" / "study-tiny.yaml"


def _write(path: Path, spec: dict | list) -> Path:
    path.write_text(yaml.safe_dump(spec))
    return path


def test_the_shipped_one_day_plan_selects_the_45_runs_it_names(monkeypatch, capsys):
    monkeypatch.chdir(ROOT)
    plan = load_plan("recipes/study/one-day.yaml")
    chosen = {g.name: plan.selected[g.file] for g in plan.grids}
    assert sum(len(c) for c in chosen.values()) == 45
    assert len(chosen["f1-mutual-benefit"]) == 12 and not any("generation" in n or n.startswith("siglip-vq")
                                                              for n in chosen["f1-mutual-benefit"])
    assert len(chosen["f2-alignment"]) == 24 and not any("generation" in n for n in chosen["f2-alignment"])
    main(["study", "recipes/study/one-day.yaml", "--dry-run", "--threads", "1"])
    assert len(capsys.readouterr().out.splitlines()) == 45


def test_a_plan_runs_each_grids_selection_and_a_grid_listed_twice_once(tmp_path, monkeypatch, capsys):
    monkeypatch.chdir(ROOT)
    other = _write(tmp_path / "other.yaml", {"name": "other", "out": str(tmp_path / "other"),
                                             "recipes": ["recipes/quickstart.yaml"], "seeds": [0, 1]})
    plan = _write(tmp_path / "plan.yaml", {"grids": [
        {"file": str(EXAMPLE), "only": "vq-vq_mixed_base_*"},
        {"file": str(EXAMPLE), "only": ["vq-vq_mixed_alpha0.5_seed0"]},  # joins the first entry
        "other.yaml"]})  # a bare name, relative to the plan file
    assert is_plan(plan) and not is_plan(EXAMPLE)
    main(["study", str(plan), "--dry-run", "--threads", "1"])
    lines = capsys.readouterr().out.splitlines()
    assert len(lines) == 3 + 1 + 2
    assert sum("vq-vq_mixed_base_seed" in line for line in lines) == 3 and sum("quickstart_seed" in line for line in lines) == 2
    main(["study", str(plan), "--dry-run", "--threads", "1", "--only", "*seed1"])
    assert len(capsys.readouterr().out.splitlines()) == 2  # --only narrows every grid's selection


@pytest.mark.parametrize("spec, message", [
    ({"grids": []}, "non-empty list"),
    ({"grids": [{"file": "nope.yaml"}]}, "not found"),
    ({"grids": [{"file": str(EXAMPLE), "only": "nope*"}]}, "matches none"),
    ({"grids": [{"file": str(EXAMPLE), "only": []}]}, "shell pattern"),
    ({"grids": [{"file": str(EXAMPLE), "seeds": [0]}]}, "unknown key"),
    ({"grids": [str(EXAMPLE)], "out2": "x"}, "unknown key"),
    ({"grids": [str(EXAMPLE), "copy.yaml"]}, "written by both"),
    ([str(EXAMPLE)], "must be a mapping"),
])
def test_bad_plans_are_refused_with_the_reason(tmp_path, monkeypatch, spec, message):
    monkeypatch.chdir(ROOT)
    (tmp_path / "copy.yaml").write_text(EXAMPLE.read_text())  # another file, the same run folders
    with pytest.raises((ValueError, FileNotFoundError), match=message):
        load_plan(_write(tmp_path / "plan.yaml", spec))


def test_a_plan_refuses_out(tmp_path, monkeypatch):
    monkeypatch.chdir(ROOT)
    plan = _write(tmp_path / "plan.yaml", {"grids": [str(EXAMPLE)]})
    with pytest.raises(ValueError, match="--out does not apply"):
        main(["study", str(plan), "--dry-run", "--out", str(tmp_path / "x")])


def test_a_tiny_plan_runs_two_grids_in_one_pool_and_resumes_to_nothing(tmp_path, monkeypatch):
    from test_reliability_resume import smoke_recipe

    monkeypatch.chdir(ROOT)
    monkeypatch.delenv("UNIZOO_DEBUG", raising=False)
    recipe = smoke_recipe(tmp_path, steps=2, every=1, images=4)
    grids = []
    for name in ("first", "second"):
        grids.append(_write(tmp_path / f"{name}.yaml", {"name": name, "out": str(tmp_path / name),
                                                        "recipes": [str(recipe)], "seeds": [0, 1]}))
    plan = _write(tmp_path / "plan.yaml", {"name": "p", "out": str(tmp_path / "p"), "grids": [
        {"file": str(grids[0]), "only": "*seed0"}, {"file": str(grids[1])}]})
    command = ["study", str(plan), "--workers", "2", "--threads", "1"]
    main(command)
    assert (tmp_path / "first" / "runs" / "recipe_seed0" / "done.json").is_file()
    assert not (tmp_path / "first" / "runs" / "recipe_seed1").exists()  # not selected by the plan
    for name, runs in (("first", 1), ("second", 2)):
        study = json.loads((tmp_path / name / "study.json").read_text())
        assert study["done"] == runs and study["invocations"][-1]["plan"] == str(plan)
        assert 0 < study["grid_wall_s"] and (tmp_path / name / "report.md").is_file()
    record = json.loads((tmp_path / "p" / "plan.json").read_text())
    assert record["done"] == record["runs"] == 3 and record["failed"] == []
    assert [g["selected"] for g in record["grids"]] == [1, 2] and record["run_wall_s"] > 0
    assert record["plan_wall_s"] > 0 and record["parallel_speedup"] == pytest.approx(
        record["run_wall_s"] / record["plan_wall_s"], abs=1e-3)

    main(command)  # all done: nothing runs, a second invocation is recorded
    record = json.loads((tmp_path / "p" / "plan.json").read_text())
    assert len(record["invocations"]) == 2 and record["done"] == 3
    second = json.loads((tmp_path / "second" / "study.json").read_text())
    assert second["invocations"][-1]["ran"] == 0 and second["invocations"][-1]["skipped"] == 2

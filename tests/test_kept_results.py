"""The comparisons docs/STUDY.md quotes reproduce from the kept copies in docs/results/ (no runs/, no training)."""
from __future__ import annotations

import json
from pathlib import Path

import pytest

from tools.report_compare import compare

RESULTS = Path(__file__).resolve().parents[1] / "docs" / "results"


def _kept_test_dir(grid: Path, train_id: str) -> Path:
    """The kept test folder of a run a compare named (a fit dir runs/.../<run>/version_0, a test dir, or a kept
    run folder docs/results/<grid>/runs/<run>)."""
    path = Path(train_id)
    if path.name.startswith("test"):
        return grid / "runs" / path.parent.name / path.name
    if path.name.startswith("version_"):
        return grid / "runs" / path.parent.name / "test"
    return grid / "runs" / path.name / "test"  # a kept run's folder (its tests side by side)


def _grid_of(summary: Path) -> Path:
    """The docs/results/<grid> folder a kept compare.json lies in (at its root or in a compare-*/ folder)."""
    return next(p for p in summary.parents if p.parent == RESULTS)


def _arm_dirs(summary: Path, arm: str) -> list[Path]:
    """The kept test folders of one arm of a compare: the metrics files it read (`read`, newer compares, which
    may name another kept grid's runs), else found from the runs' names in the compare's own grid."""
    record = json.loads(summary.read_text())
    if "read" in record:
        return [RESULTS.parent.parent / Path(f).parent.parent for f in record["read"][arm]]
    return [_kept_test_dir(_grid_of(summary), r) for r in record[arm]]


def _reproducible() -> list[Path]:
    """Every kept compare.json whose runs are all kept with the config that labels them (seed, mix)."""
    found = []
    for summary in sorted(RESULTS.glob("*/**/compare.json")):
        dirs = _arm_dirs(summary, "treatment") + _arm_dirs(summary, "control")
        if all((d / "config.yaml").is_file() and (d / "eval" / "metrics.json").is_file() for d in dirs):
            found.append(summary)
    return found


def test_some_kept_compare_can_be_rechecked():
    assert _reproducible(), "no kept compare has its runs' configs; docs/results lost its labels"


@pytest.mark.parametrize("summary", _reproducible(), ids=lambda p: str(p.relative_to(RESULTS)))
def test_kept_compare_reproduces(summary, tmp_path):
    record = json.loads(summary.read_text())
    compare([str(d) for d in _arm_dirs(summary, "treatment")], [str(d) for d in _arm_dirs(summary, "control")],
            out=str(tmp_path),
            metrics=[m["metric"] for m in record["metrics"]], names=tuple(record["names"]))
    again = json.loads((tmp_path / "compare.json").read_text())
    assert again["seeds"] == record["seeds"]
    assert [m["metric"] for m in again["metrics"]] == [m["metric"] for m in record["metrics"]]
    for new, old in zip(again["metrics"], record["metrics"]):
        for side in ("treatment", "control", "difference"):
            assert new[side]["values"] == pytest.approx(old[side]["values"], abs=1e-9), (new["metric"], side)
        assert (new["positive"], new["negative"]) == (old["positive"], old["negative"])

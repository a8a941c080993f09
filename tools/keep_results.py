"""`unizoo keep OUT`: copy a grid's quoted results out of runs/ (not in git) into docs/results/<name>/.

What is kept (docs/results/README.md): the grid's report.md, summary.json and study.json as `unizoo
study` wrote them, compare.md/compare.json of any `unizoo compare` written into the grid folder, the grid's
PNG figures, and every run's test folder in the layout `unizoo test` wrote: `runs/<run>/<test dir>/
eval/metrics.json` with the `config.yaml` the test ran with (architecture, mix, seed). Because the layout
is the original one, `unizoo report` and `unizoo compare` read a kept copy as they read runs/, so a
comparison can be redone from git after runs/ is gone. Paths under the project root are written relative
to it, so the copy reads the same on any clone. The copy is written to a temporary folder and moved into
place, so a failed keep leaves the old copy whole. Runs kept earlier that the grid folder no longer holds
(runs/ of an earlier session is gone) are carried over; a run present in both is replaced by the new copy,
and the kept study.json is joined with the new one (merge_study_records), so every session's wall times stay.
"""
from __future__ import annotations

import json
import os
import shutil
import tempfile
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parents[1]
TEXT_FILES = ("report.md", "summary.json", "study.json", "compare.md", "compare.json")


def _relative_text(text: str, root: Path) -> str:
    """`text` with the absolute project root removed from every path in it."""
    return text.replace(str(root.resolve()) + os.sep, "").replace(str(root.resolve()), ".")


def merge_study_records(kept: dict[str, Any], new: dict[str, Any]) -> dict[str, Any]:
    """study.json of a grid filled over several sessions: the kept record's invocations and runs joined with
    the new one's (a run recorded done in both: the new record), the wall-time totals recomputed.

    runs/ (and with it the grid's live study.json) does not outlive a session, so without this a re-keep
    would drop the wall times of every earlier session's runs.
    """
    from tools.study import _covered_seconds

    def key(invocation: dict[str, Any]) -> tuple[Any, Any]:
        return invocation.get("started"), invocation.get("grid_file")

    invocations = list(kept.get("invocations") or [])
    seen = {key(i) for i in invocations}
    invocations += [i for i in new.get("invocations") or [] if key(i) not in seen]
    runs = {r["name"]: r for r in kept.get("runs") or [] if isinstance(r, dict) and "name" in r}
    for run in new.get("runs") or []:
        if run.get("status") == "done" or run.get("name") not in runs or runs[run["name"]].get("status") != "done":
            runs[run["name"]] = run
    merged = {**kept, **new, "invocations": invocations, "runs": list(runs.values())}
    grid_file = new.get("grid_file")
    walls = [r["wall_s"] for r in runs.values() if r.get("wall_s") is not None]
    grid_wall = _covered_seconds([i for i in invocations if i.get("grid_file", grid_file) == grid_file])
    merged.update({"grid_wall_s": round(grid_wall, 3), "run_wall_s": round(sum(walls), 3), "runs_timed": len(walls),
                   "runs_total": len(runs), "done": sum(r.get("status") == "done" for r in runs.values()),
                   "failed": [r["name"] for r in runs.values() if r.get("status") == "failed"],
                   "parallel_speedup": round(sum(walls) / grid_wall, 3) if grid_wall > 0 and walls else None})
    return merged


def keep(grid: str, dest: str | None = None, root: str | None = None) -> str:
    """Copy grid folder `grid`'s report, study record and per-run test metrics to `dest` (docs/results/<name>).

    Args:
        grid: a `unizoo study` output folder (holding study.json and runs/).
        dest: where to write; default docs/results/<the grid's name> under the project root.
        root: the project root whose absolute path is stripped from the copied text (default: this checkout).
    """
    grid_dir, base = Path(grid), Path(root) if root else ROOT
    study_file = grid_dir / "study.json"
    if not study_file.is_file():
        raise ValueError(f"keep: {grid_dir} has no study.json; give a `unizoo study` output folder")
    try:
        name = json.loads(study_file.read_text())["name"]
    except (json.JSONDecodeError, KeyError, TypeError) as err:
        raise ValueError(f"keep: {study_file} is not a study record with a 'name' ({err})") from err
    target = Path(dest) if dest else base / "docs" / "results" / name
    metrics = sorted((grid_dir / "runs").glob("*/test*/eval/metrics.json"))
    if not metrics:
        raise ValueError(f"keep: no run of {grid_dir} has test metrics (runs/*/test*/eval/metrics.json)")
    target.parent.mkdir(parents=True, exist_ok=True)
    staging = Path(tempfile.mkdtemp(prefix=f".{target.name}-", dir=target.parent))
    try:
        for file_name in TEXT_FILES:
            if (grid_dir / file_name).is_file():
                (staging / file_name).write_text(_relative_text((grid_dir / file_name).read_text(), base))
        if (target / "study.json").is_file():  # a grid filled over sessions: keep the earlier sessions' record
            merged = merge_study_records(json.loads((target / "study.json").read_text()),
                                         json.loads((staging / "study.json").read_text()))
            (staging / "study.json").write_text(json.dumps(merged, indent=2) + "\n")
        for png in sorted(grid_dir.glob("*.png")):
            shutil.copy2(png, staging / png.name)
        for file in metrics:
            test_dir = file.parents[1]
            out = staging / "runs" / test_dir.parent.name / test_dir.name
            (out / "eval").mkdir(parents=True, exist_ok=True)
            (out / "eval" / "metrics.json").write_text(_relative_text(file.read_text(), base))
            if (test_dir / "config.yaml").is_file():  # labels the run (seed, mix, model) for report/compare
                (out / "config.yaml").write_text(_relative_text((test_dir / "config.yaml").read_text(), base))
        # Folders other than runs/ are written by hand beside the grid (measure/: `unizoo measure` outputs;
        # compare-*/: further `unizoo compare` runs over the kept copy): carried over, not rebuilt.
        for folder in sorted(p for p in target.glob("*") if p.is_dir() and p.name != "runs"):
            shutil.copytree(folder, staging / folder.name)
        # runs/ is not in git, so a grid filled over several sessions (or machines) has only this session's runs
        # on disk: a run kept earlier that the grid folder no longer holds is carried over, not dropped.
        earlier = [d for d in sorted((target / "runs").glob("*"))
                   if d.is_dir() and not (staging / "runs" / d.name).exists()]
        for run_dir in earlier:
            shutil.copytree(run_dir, staging / "runs" / run_dir.name)
        if target.exists():
            shutil.rmtree(target)
        staging.rename(target)
    finally:
        if staging.exists():
            shutil.rmtree(staging)
    carried = f"; {len(earlier)} runs kept earlier carried over" if earlier else ""
    print(f"keep: {target} ({len(metrics)} run test metrics{carried})")
    return str(target)

"""`unizoo keep OUT`: copy a grid's quoted results out of runs/ (not in git) into docs/results/<name>/.

What is kept (docs/results/README.md): the grid's report.md, summary.json and study.json as `unizoo
study` wrote them, compare.md/compare.json of any `unizoo compare` written into the grid folder, the grid's
PNG figures, and every run's test folder in the layout `unizoo test` wrote: `runs/<run>/<test dir>/
eval/metrics.json` with the `config.yaml` the test ran with (architecture, mix, seed). Because the layout
is the original one, `unizoo report` and `unizoo compare` read a kept copy as they read runs/, so a
comparison can be redone from git after runs/ is gone. Paths under the project root are written relative
to it, so the copy reads the same on any clone. The copy is written to a temporary folder and moved into
place, so a failed keep leaves the old copy whole. Runs kept earlier that the grid folder no longer holds
(runs/ of an earlier session is gone) are carried over; a run present in both is replaced by the new copy.
"""
from __future__ import annotations

import json
import os
import shutil
import tempfile
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
TEXT_FILES = ("report.md", "summary.json", "study.json", "compare.md", "compare.json")


def _relative_text(text: str, root: Path) -> str:
    """`text` with the absolute project root removed from every path in it."""
    return text.replace(str(root.resolve()) + os.sep, "").replace(str(root.resolve()), ".")


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

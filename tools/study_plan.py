"""A study plan: several grid files (each with an optional run-name selection) run as one `unizoo study`
invocation, in one pool of workers, so "the three findings together" is one command with one wall time.

The plan file (YAML mapping; `unizoo study PLAN.yaml` knows it by its `grids` key):

    # The study's core arms in one day on 2 cores (a comment line first, as recipes have)
    name: one-day                      # plan name; default: the file's stem
    out: runs/study/one-day            # where plan.json goes; default runs/study/<name>
    grids:                             # grid files (relative to the current dir, else to this file)
      - file: recipes/study/f1-mutual-benefit.yaml
        only: ["siglip-siglip_[um]*", "vq-vq_[um]*"]   # shell patterns on run names; default: every run
      - file: recipes/study/f3-corner-drawing.yaml

Each grid keeps its own folder, study.json and report (written when its own last run ends, as a lone
`unizoo study GRID.yaml` would); OUT/plan.json records the plan's wall time against the sum of its runs'
walls, per grid and in all, for every invocation (rerunning the plan resumes it like a grid).
"""
from __future__ import annotations

import fnmatch
import os
import sys
from dataclasses import dataclass, field
from pathlib import Path

import yaml

from tools.study import Grid, load_grid, read_spec

PLAN_KEYS = ("name", "out", "grids")
ENTRY_KEYS = ("file", "only")


@dataclass
class Plan:
    """A parsed plan: its grids, each with the names of its runs the plan runs."""

    name: str
    file: Path
    out: Path
    grids: list[Grid] = field(default_factory=list)
    selected: dict[Path, set[str]] = field(default_factory=dict)  # grid file -> run names


def is_plan(file: str | os.PathLike) -> bool:
    """Whether `file` is a plan (a YAML mapping with a `grids` key) rather than a grid file."""
    try:
        spec = yaml.safe_load(Path(file).read_text())
    except (OSError, yaml.YAMLError):
        return False  # load_grid then says what is wrong with it
    return isinstance(spec, dict) and "grids" in spec


def _patterns(value: object, where: str) -> list[str] | None:
    if value is None:
        return None
    if isinstance(value, str):
        value = [value]
    if not isinstance(value, list) or not value or not all(isinstance(p, str) and p for p in value):
        raise ValueError(f"{where}: `only` must be a shell pattern or a non-empty list of them, got {value!r}")
    return value


def load_plan(file: str | os.PathLike) -> Plan:
    """Parse and check a plan file (schema: the module docstring); every grid in it is parsed too."""
    path = Path(file)
    spec = read_spec(path, "plan", PLAN_KEYS)
    entries = spec.get("grids")
    if not isinstance(entries, list) or not entries:
        raise ValueError(f"{path}: `grids` must be a non-empty list of {{file: GRID.yaml, only: [...]}}")
    name = str(spec.get("name") or path.stem)
    plan = Plan(name, path.absolute(), Path(spec.get("out") or Path("runs") / "study" / name).absolute())
    owner: dict[Path, str] = {}  # run folder -> the grid file that writes it
    for i, entry in enumerate(entries):
        where = f"{path}: grids[{i}]"
        if isinstance(entry, str):
            entry = {"file": entry}
        if not isinstance(entry, dict) or "file" not in entry:
            raise ValueError(f"{where}: expected {{file: GRID.yaml, only: [...]}}, got {entry!r}")
        bad = sorted(set(entry) - set(ENTRY_KEYS))
        if bad:
            raise ValueError(f"{where}: unknown key(s) {bad}; an entry has {', '.join(ENTRY_KEYS)}")
        grid_path = next((p for p in (Path(str(entry["file"])), path.parent / str(entry["file"])) if p.is_file()), None)
        if grid_path is None:
            raise FileNotFoundError(f"{where}: grid file {entry['file']!r} not found (relative to the current dir or the plan)")
        grid = load_grid(grid_path)
        patterns = _patterns(entry.get("only"), where)
        chosen = {r.name for r in grid.runs if patterns is None or any(fnmatch.fnmatchcase(r.name, p) for p in patterns)}
        if not chosen:
            raise ValueError(f"{where}: `only` {patterns} matches none of {[r.name for r in grid.runs]}")
        for run in (r for r in grid.runs if r.name in chosen):  # two grid files running one folder would race on it
            other = owner.setdefault(run.dir, str(grid.file))
            if other != str(grid.file):
                raise ValueError(f"{where}: run folder {run.dir} is written by both {other} and {grid.file}")
        if grid.file in plan.selected:  # the same grid listed twice: one grid, the union of the selections
            plan.selected[grid.file] |= chosen
            continue
        plan.grids.append(grid)
        plan.selected[grid.file] = chosen
    return plan


def run_plan(plan: Plan, entries: list[tuple[Grid, set[str]]], workers: int, threads: int) -> str:
    """Run the plan's chosen runs in one pool, then write OUT/plan.json (wall vs summed run walls)."""
    import shlex
    import time

    from tools.study import _covered_seconds, _now, _read_json, _run_grids, write_json_atomic

    started, t0 = _now(), time.monotonic()
    summaries = _run_grids(entries, workers, threads, plan=str(plan.file))
    wall = time.monotonic() - t0
    plan.out.mkdir(parents=True, exist_ok=True)
    path = plan.out / "plan.json"
    previous = _read_json(path) or {}
    rows, failed = [], []
    for (grid, chosen), summary in zip(entries, summaries):
        runs = [r for r in (_read_json(summary) or {}).get("runs", []) if r.get("name") in chosen]
        timed = [r["wall_s"] for r in runs if r.get("wall_s") is not None]
        failed += [r["name"] for r in runs if r.get("status") == "failed"]
        rows.append({"grid_file": str(grid.file), "out": str(grid.out), "study": str(summary), "selected": len(chosen),
                     "done": sum(r.get("status") == "done" for r in runs), "run_wall_s": round(sum(timed), 3),
                     "runs_timed": len(timed)})
    selected = sum(r["selected"] for r in rows)
    invocations = [i for i in previous.get("invocations", []) if isinstance(i, dict)]
    invocations.append({"started": started, "wall_s": round(wall, 3), "workers": workers, "threads": threads,
                        "runs": selected, "failed": len(failed)})
    plan_wall = _covered_seconds(invocations)
    run_wall = sum(r["run_wall_s"] for r in rows)
    write_json_atomic(path, {
        "name": plan.name, "plan_file": str(plan.file),
        "command": shlex.join(["unizoo", "study", str(plan.file), "--workers", str(workers), "--threads", str(threads)]),
        "plan_wall_s": round(plan_wall, 3),  # time any invocation of this plan was running (overlaps once)
        "run_wall_s": round(run_wall, 3),  # the chosen runs' attempts, added up
        "parallel_speedup": round(run_wall / plan_wall, 3) if plan_wall > 0 and run_wall > 0 else None,
        "done": sum(r["done"] for r in rows), "runs": selected, "failed": failed,
        "grids": rows, "invocations": invocations,
    })
    print(f"plan {plan.name}: {sum(r['done'] for r in rows)}/{selected} runs done over {len(rows)} grids in "
          f"{wall:.0f} s (all invocations: {plan_wall:.0f} s of wall for {run_wall:.0f} s of runs); {path}", file=sys.stderr)
    if failed:
        raise SystemExit(1)
    return str(path)

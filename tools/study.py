"""`unizoo study FILE.yaml`: a declared grid of runs (recipes x mixes x override sets x seeds), each a plain
`unizoo fit` then `unizoo test`, run N at a time on this machine, resumable, then `unizoo report` over it.

The grid file (YAML mapping; only `recipes` is required):

    # F1 at CPU scale: does mixing tasks help? (a comment line first, as recipes have)
    name: f1-mutual-benefit            # grid name; default: the file's stem
    out: runs/study/f1                 # grid folder; default runs/study/<name>; `--out` overrides
    recipes:                           # recipe files; relative to the current dir, else to this file
      - recipes/smartwatch/tiny/siglip-siglip.yaml
      - recipes/smartwatch/tiny/vq-vq.yaml
    mixes: [understanding, generation, mixed]   # each passed as `--data.init_args.mix X`; a mapping
                                       # {name: value} names other mixes (value: a preset or a dict);
                                       # omitted: the recipe's own mix
    overrides:                         # named sets of extra LightningCLI args (a list, or one string
      base: []                         #   split like a shell line); omitted: one set, no extra args
      lr3: [--model.init_args.lr, "3e-3"]   # `{seed}` in an override is the run's seed, as in seed_args
    seeds: [0, 1, 2]                   # `--seed_everything=S` each; omitted: the recipe's seed
    seed_args: ["--data.init_args.seed={seed}"]   # more per-seed args ({seed} replaced); default none
    args: [--trainer.limit_train_batches, "0.2"]  # extra fit args of every run; default none
    test: true                         # run `unizoo test` on the final checkpoint (default true)
    test_args: []                      # extra test args; default none
    curve: false                       # also test every intermediate checkpoint (the data-scaling curve)
    curve_args: []                     # extra args of those tests only (after test_args); default none
    curve_metrics: [vqa/total]         # metrics (or prefixes) whose curves the report pools; default its headline

Each run is one cell of the product, named `<recipe>_<mix>_<override>_seed<S>` (the parts of the axes the
file declares), with its folder `OUT/runs/NAME/`:

    log.txt          stdout + stderr of every fit and test attempt, appended
    attempts.jsonl   one line per attempt: step (fit/test), exit status, wall seconds
    version_0/       the fit's Lightning log dir (config.yaml, checkpoints/, TensorBoard events);
                     the fit gets `--trainer.logger.init_args.save_dir OUT/runs --trainer.logger.init_args.name
                     NAME --trainer.logger.init_args.version 0 --ckpt_path last`, so the recipe's logger must be
                     a TensorBoard or CSV logger (every recipe's is)
    fit.json         written (atomically) when the fit succeeded: its wall time and final checkpoint
    test/            the test's log dir: `unizoo test --config version_0/config.yaml --ckpt_path <final
                     checkpoint> --trainer.logger.init_args.version test` (eval/metrics.json inside)
    test-stepNNNNNN/ with `curve: true`: the same test on each intermediate checkpoint (version_0/checkpoints/
                     *.ckpt but last*.ckpt, the step from its name: `step=131`, `step00131`), one per step
    done.json        the done marker, written atomically (temp file + rename) after the test(s) succeeded

Resuming: rerunning the same command skips runs with done.json (with `curve: true`, a done run still gets the
checkpoint tests it lacks, so the key can be added to a finished grid), reruns only the test of runs with fit.json,
and restarts every other run with the same fit command: `--ckpt_path last` continues a killed fit from its
newest checkpoint in version_0/checkpoints (or starts from scratch when there is none), and the saved
config.yaml is kept when the rerun's config is the same (tools/lightning_cli.py SafeSaveConfig). A failed
run is reported with its log path and the others go on; the command exits with status 1 if any failed.

`--only PATTERN` runs (or prints) only the runs whose name matches a shell pattern (`"vq-vq-mixed_*"`); the
others wait for another invocation, and the report covers every finished run.

A plan file (`grids:` a list of grid files, each with an optional `only` selection; tools/study_plan.py) runs
several grids in one pool: `unizoo study recipes/study/one-day.yaml --workers 4 --threads 1`. Each grid keeps its
folder, study.json and report (made when its own last run ends); the plan's OUT/plan.json has its wall time
against the sum of its runs' walls.

`--dry-run` prints each run's command line, `--emit-commands FILE` writes them one per line; nothing runs.
Each line is self-contained shell (POSIX sh): it changes to this directory, skips a run whose done.json
exists, appends to the run's log.txt, and writes done.json when fit and test succeeded, so a SLURM array
(`sed -n "${SLURM_ARRAY_TASK_ID}p" FILE | sh`) or any launcher runs the grid on many machines and a later
local `unizoo study FILE.yaml` reports it. A line's test uses version_0/checkpoints/last.ckpt, the final
weights of every recipe that keeps `save_last` (the local runner falls back to the newest checkpoint).

When the grid ends, `unizoo report` runs over the finished runs (and their checkpoint tests: the report's
checkpoint curves, pooled over seeds) with one row label per (recipe, override
set), so each table cell is one (recipe, mix, override) with the mean and 95 % t interval over its seeds:
OUT/report.md, OUT/summary.json, PNG figures in OUT and TensorBoard under OUT/tb. OUT/study.json records
each run's wall time (all attempts) and each invocation's wall time, workers and threads, so a grid's
compute can be stated (grid wall vs the sum of run walls).
"""
from __future__ import annotations

import fnmatch
import json
import os
import re
import shlex
import subprocess
import sys
import threading
import time
from concurrent.futures import ThreadPoolExecutor, as_completed
from dataclasses import dataclass, field
from datetime import datetime, timezone
from pathlib import Path
from typing import Any

import yaml

from tools.machine import machine_info
from tools.report_runs import _STEP  # a checkpoint's step, read from its name as the report reads it

GRID_KEYS = ("name", "out", "recipes", "mixes", "overrides", "seeds", "seed_args", "args", "test", "test_args",
             "curve", "curve_args", "curve_metrics")
LOGGER = "--trainer.logger.init_args."
_SAFE = re.compile(r"[^A-Za-z0-9.+-]+")


@dataclass
class Run:
    """One cell of a grid: its labels, its folder and its commands."""

    name: str
    recipe: str  # absolute path
    recipe_label: str
    mix: str | None  # the mix's name
    override: str | None
    seed: int | None
    dir: Path
    fit: list[str]
    test_args: list[str] | None  # None: the grid does not test
    curve_args: list[str] | None = None  # None: no tests of the intermediate checkpoints
    offset: int = 0  # where the latest attempt's output starts in log.txt

    @property
    def fit_dir(self) -> Path:
        """The fit's Lightning log dir."""
        return self.dir / "version_0"

    @property
    def test_dir(self) -> Path:
        """The test's Lightning log dir."""
        return self.dir / "test"

    @property
    def log(self) -> Path:
        """stdout + stderr of every attempt."""
        return self.dir / "log.txt"

    @property
    def done(self) -> Path:
        """The done marker."""
        return self.dir / "done.json"

    @property
    def group(self) -> str:
        """The report's row label: the recipe and the override set."""
        return self.recipe_label if self.override is None else f"{self.recipe_label} [{self.override}]"

    def test(self, checkpoint: str | os.PathLike, version: str = "test") -> list[str]:
        """The test command on `checkpoint`, logging into OUT/runs/NAME/`version`."""
        extra = [*(self.test_args or []), *(self.curve_args or [] if version != "test" else [])]
        return [sys.executable, "-m", "tools.cli", "test", "--config", str(self.fit_dir / "config.yaml"),
                "--ckpt_path", str(checkpoint), f"{LOGGER}version", version, *extra]

    def curve_checkpoints(self) -> list[tuple[int, Path]]:
        """(step, file) of the intermediate checkpoints to test, in step order (none without `curve`)."""
        folder = self.fit_dir / "checkpoints"
        if self.curve_args is None or not folder.is_dir():
            return []
        found = {}
        for path in folder.glob("*.ckpt"):
            match = _STEP.search(path.stem)
            if match and not path.name.startswith("last"):
                found.setdefault(int(match.group(1)), path)
        return sorted(found.items())

    def curve_dir(self, step: int) -> Path:
        """The log dir of the test of the checkpoint at `step`."""
        return self.dir / f"test-step{step:06d}"

    def curve_missing(self) -> list[tuple[int, Path]]:
        """The intermediate checkpoints whose test has not written its metrics yet."""
        return [(s, p) for s, p in self.curve_checkpoints() if not (self.curve_dir(s) / "eval" / "metrics.json").is_file()]


@dataclass
class Grid:
    """A parsed grid file."""

    name: str
    file: Path
    out: Path
    runs: list[Run] = field(default_factory=list)
    test: bool = True
    curve_metrics: list[str] | None = None  # passed to the report


# ----------------------------------------------------------------------------------------- the grid file
def _args(value: Any, where: str) -> list[str]:
    """A list of CLI words from a list (scalars as text, mappings/lists as JSON) or one shell-like string."""
    if value is None:
        return []
    if isinstance(value, str):
        return shlex.split(value)
    if not isinstance(value, list):
        raise ValueError(f"{where}: expected a list of arguments or one string, got {value!r}")
    return [v if isinstance(v, str) else json.dumps(v) if isinstance(v, (dict, list)) else
            str(v).lower() if isinstance(v, bool) else str(v) for v in value]


def _name(text: str) -> str:
    return _SAFE.sub("-", text).strip("-") or "x"


def read_spec(path: Path, kind: str, keys: tuple[str, ...]) -> dict[str, Any]:
    """A YAML mapping file of `kind` ('grid', 'plan') whose keys are all in `keys`; clear errors otherwise."""
    if not path.is_file():
        raise FileNotFoundError(f"study: {kind} file not found: {path}")
    try:
        spec = yaml.safe_load(path.read_text())
    except yaml.YAMLError as err:
        raise ValueError(f"{path}: not valid YAML: {err}") from err
    if not isinstance(spec, dict):
        raise ValueError(f"{path}: a {kind} file must be a mapping (keys {', '.join(keys)})")
    unknown = sorted(set(spec) - set(keys))
    if unknown:
        raise ValueError(f"{path}: unknown key(s) {unknown}; a {kind} has {', '.join(keys)}")
    return spec


def load_grid(file: str | os.PathLike, out: str | None = None) -> Grid:
    """Parse and check a grid file (schema: the module docstring); `out` replaces its `out`."""
    path = Path(file)
    spec = read_spec(path, "grid", GRID_KEYS)
    name = str(spec.get("name") or path.stem)
    grid_out = Path(out or spec.get("out") or Path("runs") / "study" / _name(name)).absolute()

    recipes = spec.get("recipes")
    if isinstance(recipes, str):
        recipes = [recipes]
    if not isinstance(recipes, list) or not recipes:
        raise ValueError(f"{path}: `recipes` must be a non-empty list of recipe files")
    resolved = []
    for recipe in recipes:
        found = next((p for p in (Path(str(recipe)), path.parent / str(recipe)) if p.is_file()), None)
        if found is None:
            raise FileNotFoundError(f"{path}: recipe {recipe!r} not found (relative to the current dir or the grid file)")
        resolved.append(found.absolute())
    stems = [p.stem for p in resolved]
    labels = [s if stems.count(s) == 1 else f"{p.parent.name}/{s}" for p, s in zip(resolved, stems)]
    if len(set(labels)) != len(labels):
        raise ValueError(f"{path}: a recipe is listed twice: {[str(r) for r in recipes]}")

    mixes = spec.get("mixes")
    if mixes is None:
        mix_items: list[tuple[str | None, str | None]] = [(None, None)]
    elif isinstance(mixes, list) and mixes and all(isinstance(m, str) for m in mixes):
        mix_items = [(m, m) for m in mixes]
    elif isinstance(mixes, dict) and mixes:
        mix_items = [(str(k), v if isinstance(v, str) else json.dumps(v)) for k, v in mixes.items()]
    else:
        raise ValueError(f"{path}: `mixes` must be a list of mix names or a mapping name -> mix, got {mixes!r}")

    overrides = spec.get("overrides")
    if overrides is None:
        override_items: list[tuple[str | None, list[str]]] = [(None, [])]
    elif isinstance(overrides, dict) and overrides:
        override_items = [(str(k), _args(v, f"{path}: overrides.{k}")) for k, v in overrides.items()]
    else:
        raise ValueError(f"{path}: `overrides` must be a mapping name -> list of arguments, got {overrides!r}")

    seeds = spec.get("seeds")
    if seeds is None:
        seed_items: list[int | None] = [None]
    elif isinstance(seeds, list) and seeds and all(isinstance(s, int) and not isinstance(s, bool) for s in seeds):
        if len(set(seeds)) != len(seeds):
            raise ValueError(f"{path}: `seeds` repeats a seed: {seeds}")
        seed_items = list(seeds)
    else:
        raise ValueError(f"{path}: `seeds` must be a non-empty list of integers, got {seeds!r}")
    seed_args = _args(spec.get("seed_args"), f"{path}: seed_args")
    if seed_args and seeds is None:
        raise ValueError(f"{path}: `seed_args` needs `seeds`")
    common = _args(spec.get("args"), f"{path}: args")
    test = spec.get("test", True)
    if not isinstance(test, bool):
        raise ValueError(f"{path}: `test` must be true or false, got {test!r}")
    test_args = _args(spec.get("test_args"), f"{path}: test_args")
    curve = spec.get("curve", False)
    if not isinstance(curve, bool):
        raise ValueError(f"{path}: `curve` must be true or false, got {curve!r}")
    if curve and not test:
        raise ValueError(f"{path}: `curve: true` tests checkpoints, so it needs `test: true`")
    curve_args = _args(spec.get("curve_args"), f"{path}: curve_args")
    if curve_args and not curve:
        raise ValueError(f"{path}: `curve_args` needs `curve: true`")
    curve_metrics = spec.get("curve_metrics")
    if curve_metrics is not None and not (isinstance(curve_metrics, list) and curve_metrics
                                          and all(isinstance(m, str) and m for m in curve_metrics)):
        raise ValueError(f"{path}: `curve_metrics` must be a non-empty list of metric names or prefixes, got {curve_metrics!r}")

    grid = Grid(name, path.absolute(), grid_out, test=test, curve_metrics=curve_metrics)
    runs_dir = grid_out / "runs"
    for recipe, label in zip(resolved, labels):
        for mix, mix_value in mix_items:
            for override, extra in override_items:
                for seed in seed_items:
                    parts = [label.replace("/", "-")]
                    parts += [mix] if mix is not None else []
                    parts += [override] if override is not None else []
                    parts += [f"seed{seed}"] if seed is not None else []
                    run_name = "_".join(_name(p) for p in parts)
                    fit = [sys.executable, "-m", "tools.cli", "fit", "--config", str(recipe)]
                    fit += ["--data.init_args.mix", mix_value] if mix_value is not None else []
                    fit += [*common, *(a.replace("{seed}", str(seed)) if seed is not None else a for a in extra)]
                    if seed is not None:
                        fit += [f"--seed_everything={seed}", *(a.replace("{seed}", str(seed)) for a in seed_args)]
                    fit += [f"{LOGGER}save_dir", str(runs_dir), f"{LOGGER}name", run_name, f"{LOGGER}version", "0",
                            "--ckpt_path", "last"]
                    grid.runs.append(Run(run_name, str(recipe), label, mix, override, seed, runs_dir / run_name,
                                         fit, test_args if test else None, curve_args if curve else None))
    names = [r.name for r in grid.runs]
    if len(set(names)) != len(names):
        raise ValueError(f"{path}: two runs get the same name (mix or override names that differ only in "
                         f"punctuation?): {sorted(n for n in names if names.count(n) > 1)[:3]}")
    return grid


# ----------------------------------------------------------------------------------------- commands
def thread_env(threads: int) -> dict[str, str]:
    """The variables that give a run `threads` CPU threads (UNIZOO_THREADS: torch.set_num_threads in the CLI)."""
    return {"OMP_NUM_THREADS": str(threads), "MKL_NUM_THREADS": str(threads), "UNIZOO_THREADS": str(threads)}


def command_line(run: Run, threads: int, cwd: str | os.PathLike | None = None) -> str:
    """One self-contained shell line that runs `run` (fit, test, done marker) unless it is done."""
    q = shlex.quote
    env = "env " + " ".join(f"{k}={v}" for k, v in thread_env(threads).items())
    log = q(str(run.log))
    steps = [f"{env} {shlex.join(run.fit)} >> {log} 2>&1"]
    if run.test_args is not None:
        steps.append(f"{env} {shlex.join(run.test(run.fit_dir / 'checkpoints' / 'last.ckpt'))} >> {log} 2>&1")
    if run.curve_args is not None:  # every intermediate checkpoint, its step read from the name as the runner does
        test = shlex.join(run.test("@@CKPT@@", "@@VERSION@@"))
        test = test.replace("@@CKPT@@", '"$c"').replace("@@VERSION@@", '"test-step$(printf %06d "$s")"')
        step_of = r"sed -n 's/.*step[=_-]\{0,1\}0*\([0-9][0-9]*\).*/\1/p'"  # leading zeros off: printf reads octal
        steps.append(f'for c in {q(str(run.fit_dir / "checkpoints"))}/*.ckpt; do '
                     f'case "$(basename "$c")" in last*) continue;; esac; '
                     f's=$(basename "$c" .ckpt | {step_of}); [ -n "$s" ] || continue; '
                     f'{env} {test} >> {log} 2>&1 || exit 1; done')
    tmp = q(str(run.done) + ".tmp")
    steps.append(f"echo '{{\"external\": true}}' > {tmp} && mv {tmp} {q(str(run.done))}")
    return (f"cd {q(str(Path(cwd or Path.cwd()).absolute()))} && mkdir -p {q(str(run.dir))} && "
            f"if [ ! -e {q(str(run.done))} ]; then {' && '.join(steps)}; fi")


def final_checkpoint(run: Run) -> str | None:
    """The fit's final weights: last.ckpt (FinalCheckpoint writes it at the end), else the newest checkpoint."""
    folder = run.fit_dir / "checkpoints"
    if (folder / "last.ckpt").is_file():
        return str(folder / "last.ckpt")
    found = sorted(folder.glob("*.ckpt"), key=lambda p: p.stat().st_mtime) if folder.is_dir() else []
    return str(found[-1]) if found else None


# ----------------------------------------------------------------------------------------- running
def _now() -> str:
    return datetime.now(timezone.utc).isoformat(timespec="seconds")


def write_json_atomic(path: Path, data: Any) -> None:
    """Write `data` as JSON to `path` through a temporary file and a rename (never a half-written file)."""
    tmp = path.with_name(f".{path.name}.{os.getpid()}.{threading.get_ident()}.tmp")
    with open(tmp, "w") as f:
        f.write(json.dumps(data, indent=2, default=str) + "\n")
        f.flush()
        os.fsync(f.fileno())
    os.replace(tmp, path)


def _read_json(path: Path) -> dict[str, Any] | None:
    try:
        data = json.loads(path.read_text())
    except (OSError, ValueError):
        return None
    return data if isinstance(data, dict) else None


def _attempts(run: Run) -> list[dict[str, Any]]:
    path = run.dir / "attempts.jsonl"
    if not path.is_file():
        return []
    rows = []
    for line in path.read_text().splitlines():
        try:
            rows.append(json.loads(line))
        except ValueError:
            continue  # a line cut by a kill
    return rows


def _exit_text(rc: int) -> str:
    if rc < 0:
        import signal

        try:
            return f"killed by {signal.Signals(-rc).name}"
        except ValueError:
            return f"killed by signal {-rc}"
    return f"exit status {rc}"


def _reason(run: Run, offset: int) -> str:
    """The line of an attempt's output (from byte `offset` of log.txt) that says why it failed, if any."""
    with open(run.log, "rb") as f:
        f.seek(offset)
        lines = [ln.strip() for ln in f.read().decode(errors="replace").splitlines() if ln.strip()]
    lines = [ln for ln in lines if not ln.startswith(("=====", "(UNIZOO_DEBUG"))]
    said = [ln for ln in lines if ln.startswith("unizoo ") and ": error:" in ln]  # tools/cli.py's one line
    line = (said or lines or [""])[-1]
    return line if len(line) <= 240 else line[:237] + "..."


def _step(run: Run, step: str, argv: list[str], env: dict[str, str], cwd: Path) -> tuple[int, float]:
    """Run one command of `run`, appending its output to log.txt and its attempt to attempts.jsonl."""
    started = _now()
    with open(run.log, "a") as log:
        log.write(f"\n===== {started} {step}: {shlex.join(argv)}\n")
        log.flush()
        run.offset = log.tell()
        t0 = time.monotonic()
        rc = subprocess.run(argv, stdout=log, stderr=subprocess.STDOUT, stdin=subprocess.DEVNULL, env=env,
                            cwd=cwd).returncode
        wall = time.monotonic() - t0
        log.write(f"===== {_now()} {step}: {_exit_text(rc)} after {wall:.1f} s\n")
    with open(run.dir / "attempts.jsonl", "a") as f:
        f.write(json.dumps({"step": step, "started": started, "wall_s": round(wall, 3), "rc": rc}) + "\n")
    return rc, wall


def run_one(run: Run, threads: int, cwd: Path | None = None) -> dict[str, Any]:
    """Fit (or resume) and test one run; returns {status: done|failed, error, ...}. Never raises for a run's failure."""
    cwd = Path(cwd or Path.cwd())
    run.dir.mkdir(parents=True, exist_ok=True)
    env = {**os.environ, **thread_env(threads), "PYTHONUNBUFFERED": "1"}
    fit_record = _read_json(run.dir / "fit.json")
    if fit_record is None:
        resumed = final_checkpoint(run) is not None
        rc, wall = _step(run, "fit (resumed)" if resumed else "fit", run.fit, env, cwd)
        if rc != 0:
            return {"status": "failed", "error": _failure("fit", rc, run)}
        checkpoint = final_checkpoint(run)
        if checkpoint is None and run.test_args is not None:
            return {"status": "failed", "error": f"fit wrote no checkpoint in {run.fit_dir / 'checkpoints'}"}
        fit_record = {"finished": _now(), "wall_s": round(wall, 3), "checkpoint": checkpoint, "machine": machine_info()}
        write_json_atomic(run.dir / "fit.json", fit_record)
    tested = run.done.is_file() and (run.test_dir / "eval" / "metrics.json").is_file()  # a done run back for its curve
    if run.test_args is not None and not tested:
        rc, _ = _step(run, "test", run.test(fit_record["checkpoint"]), env, cwd)
        if rc != 0:
            return {"status": "failed", "error": _failure("test", rc, run)}
    for step, checkpoint in run.curve_missing():
        rc, _ = _step(run, f"test step {step}", run.test(checkpoint, run.curve_dir(step).name), env, cwd)
        if rc != 0:
            return {"status": "failed", "error": _failure(f"test of step {step}", rc, run)}
    summary = _walls(run)
    write_json_atomic(run.done, {"finished": _now(), "threads": threads, "checkpoint": fit_record.get("checkpoint"),
                                 "fit": shlex.join(run.fit), "machine": fit_record.get("machine"),
                                 "tested_on": machine_info(), **summary})
    return {"status": "done"}


def _failure(step: str, rc: int, run: Run) -> str:
    reason = _reason(run, run.offset) if rc > 0 else ""  # a killed run's last line says nothing of the kill
    return f"{step}: {_exit_text(rc)}" + (f" ({reason})" if reason else "")


def _walls(run: Run) -> dict[str, Any]:
    """Wall seconds of a run's attempts: all of them, the fits, the tests, and how many there were."""
    rows = _attempts(run)
    fit = sum(r.get("wall_s", 0.0) for r in rows if str(r.get("step", "")).startswith("fit"))
    test = sum(r.get("wall_s", 0.0) for r in rows if str(r.get("step", "")).startswith("test"))
    return {"wall_s": round(fit + test, 3) if rows else None, "fit_wall_s": round(fit, 3) if rows else None,
            "test_wall_s": round(test, 3) if rows else None, "attempts": len(rows)}


# ----------------------------------------------------------------------------------------- the command
def study(file: str, workers: int = 1, threads: int | None = None, dry_run: bool = False,
          emit_commands: str | None = None, out: str | None = None, only: str | None = None) -> str:
    """Run a declared grid of `unizoo fit` + `unizoo test` runs, N at a time and resumably, then report it.

    The report's cells are recipe x mix x override set, with the mean and 95 % interval over seeds.
    See the module docstring (`python -c "import tools.study; help(tools.study)"`) for the grid file.
    A plan file (a `grids:` list of grid files, tools/study_plan.py) runs several grids in one pool.

    Rerunning the same command skips finished runs and resumes killed ones from their last checkpoint.
    A failed run is reported with its log path; the rest go on, and the command exits 1 at the end.

    Args:
        file: the grid file (YAML), or a plan of grid files.
        workers: runs at a time on this machine.
        threads: torch/OpenMP threads per run (default: the CPU cores this process may use / workers).
        dry_run: print every run's command line (one self-contained shell line each); run nothing.
        emit_commands: write the command lines to this file, one per line (for a SLURM array or any
            launcher); run nothing.
        out: the grid folder (default: the file's `out`, else runs/study/<name>); not for a plan.
        only: run (or print) only the runs whose name matches this shell pattern, e.g. "vq-vq-mixed_*";
            the report still covers every finished run of the grid.
    """
    from tools.study_plan import is_plan, load_plan

    plan = None
    if is_plan(file):
        if out is not None:
            raise ValueError(f"study: {file} is a plan: each of its grids has its own folder, so --out does not apply")
        plan = load_plan(file)
        entries = [(g, plan.selected[g.file]) for g in plan.grids]
    else:
        grid = load_grid(file, out)
        entries = [(grid, {r.name for r in grid.runs})]
    if only is not None:
        entries = [(g, {n for n in chosen if fnmatch.fnmatchcase(n, only)}) for g, chosen in entries]
        if not any(chosen for _, chosen in entries):
            raise ValueError(f"study: --only {only!r} matches none of "
                             f"{[n for g, chosen in entries for n in sorted(r.name for r in g.runs)]}")
    if workers < 1:
        raise ValueError(f"study: --workers must be >= 1, got {workers}")
    cores = len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else (os.cpu_count() or 1)
    threads = threads if threads is not None else max(1, cores // workers)
    if threads < 1:
        raise ValueError(f"study: --threads must be >= 1, got {threads}")
    if dry_run or emit_commands:
        lines = [command_line(r, threads) for g, chosen in entries for r in g.runs if r.name in chosen]
        if emit_commands:
            target = Path(emit_commands)
            target.parent.mkdir(parents=True, exist_ok=True)
            target.write_text("\n".join(lines) + "\n")
            print(f"study {plan.name if plan else entries[0][0].name}: {len(lines)} command lines written to {target}",
                  file=sys.stderr)
        if dry_run:
            print("\n".join(lines))
        return str(emit_commands or "")
    if plan is not None:
        from tools.study_plan import run_plan

        return run_plan(plan, entries, workers, threads)
    grid, chosen = entries[0]
    return str(_run_grids([(grid, chosen)], workers, threads)[0])


def _run_grids(entries: list[tuple[Grid, set[str]]], workers: int, threads: int,
               plan: str | None = None) -> list[Path]:
    """Run the chosen runs of each grid in one pool of `workers`; each grid is summarised and reported as
    soon as its own last run ends. Returns each grid's study.json; a lone grid (no `plan`) exits 1 at the end if
    any run failed (a plan writes plan.json first, then exits 1)."""
    from collections import Counter

    from rich.console import Console
    from rich.markup import escape
    from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn, TimeElapsedColumn

    console = Console(stderr=True, soft_wrap=True)  # paths stay whole on one line
    started, t0 = _now(), time.monotonic()
    results: dict[Path, dict[str, dict[str, Any]]] = {}
    todo: list[tuple[Grid, Run]] = []
    for grid, selected in entries:
        grid.out.mkdir(parents=True, exist_ok=True)
        results[grid.file] = mine = {}
        for run in grid.runs:
            if run.done.is_file() and not (run.curve_missing() and run.name in selected):
                mine[run.name] = {"status": "skipped"}
            elif run.name not in selected:
                mine[run.name] = {"status": "not selected"}  # --only: left for another invocation
            else:
                todo.append((grid, run))
        waiting = sum(g is grid for g, _ in todo)
        console.print(f"study {grid.name}: {len(grid.runs)} runs ({len(mine)} already done or not selected, "
                      f"{waiting} to run), {workers} worker(s) x {threads} thread(s), folder {grid.out}")
    left = Counter(grid.file for grid, _ in todo)
    summaries: dict[Path, Path] = {}

    def finish(grid: Grid) -> None:  # this grid's runs are all over: its summary and report, now
        summaries[grid.file] = _write_summary(grid, results[grid.file], workers, threads, started,
                                              time.monotonic() - t0, plan)
        _report(grid, results[grid.file], console, summaries[grid.file])

    total = sum(len(g.runs) for g, _ in entries)
    columns = [TextColumn("{task.description}"), BarColumn(), MofNCompleteColumn(), TimeElapsedColumn()]
    title = f"plan {Path(plan).stem}" if plan else f"study {entries[0][0].name}"
    with Progress(*columns, console=console) as progress:
        bar = progress.add_task(title, total=total, completed=total - len(todo))
        for grid, _ in entries:
            if not left[grid.file]:
                finish(grid)
        with ThreadPoolExecutor(max_workers=workers) as pool:
            futures = {pool.submit(run_one, run, threads): (grid, run) for grid, run in todo}
            try:
                for future in as_completed(futures):
                    grid, run = futures[future]
                    try:
                        result = future.result()
                    except Exception as err:  # the runner's own failure (disk full, ...): still only this run
                        result = {"status": "failed", "error": f"{type(err).__name__}: {err}"}
                    results[grid.file][run.name] = result
                    if result["status"] == "done":
                        wall = _walls(run)["wall_s"]
                        text = f"done    {run.name}" + (f" ({wall:.0f} s)" if wall is not None else "")
                        progress.console.print(text, markup=False, highlight=False)
                    else:
                        text = escape(f"{run.name}: {result['error']}; log: {run.log}")
                        progress.console.print(f"[red]FAILED[/red]  {text}", highlight=False)
                    progress.advance(bar)
                    left[grid.file] -= 1
                    if not left[grid.file]:
                        finish(grid)
            except BaseException:  # Ctrl-C: start no further run (running ones get the terminal's SIGINT too)
                for future in futures:
                    future.cancel()
                raise
    wall = time.monotonic() - t0
    any_failed = False
    for grid, _ in entries:
        failed = [r for r in grid.runs if results[grid.file][r.name]["status"] == "failed"]
        ran = sum(r["status"] in ("done", "failed") for r in results[grid.file].values())
        finished = sum(r.done.is_file() for r in grid.runs)
        console.print(f"study {grid.name}: {finished}/{len(grid.runs)} runs done "
                      f"({ran} run now, {len(failed)} failed) in {wall:.0f} s; summary {summaries[grid.file]}")
        for run in failed:
            console.print(f"  failed: {run.name}: {results[grid.file][run.name]['error']}; log: {run.log}",
                          markup=False, highlight=False)
        any_failed = any_failed or bool(failed)
    paths = [summaries[grid.file] for grid, _ in entries]
    if any_failed and plan is None:
        raise SystemExit(1)
    return paths


def _covered_seconds(invocations: list[dict[str, Any]]) -> float:
    """Seconds during which at least one invocation ran (overlaps counted once).

    Disjoint `--only` subsets run side by side overlap in time; an invocation without a readable start time
    is added whole.
    """
    spans, loose = [], 0.0
    for inv in invocations:
        try:
            start = datetime.fromisoformat(str(inv["started"])).timestamp()
        except (KeyError, ValueError):
            loose += float(inv.get("wall_s") or 0.0)
            continue
        spans.append((start, start + float(inv.get("wall_s") or 0.0)))
    covered, reach = 0.0, float("-inf")
    for start, end in sorted(spans):
        if end > reach:
            covered += end - max(start, reach)
            reach = end
    return covered + loose


def _write_summary(grid: Grid, results: dict[str, dict[str, Any]], workers: int, threads: int, started: str,
                   wall: float, plan: str | None = None) -> Path:
    """OUT/study.json: every run's status and wall time, and this invocation appended to the earlier ones."""
    path = grid.out / "study.json"
    previous = _read_json(path) or {}
    invocations = [i for i in previous.get("invocations", []) if isinstance(i, dict)]
    statuses = [r["status"] for r in results.values()]
    invocations.append({"started": started, "grid_file": str(grid.file), "wall_s": round(wall, 3), "workers": workers,
                        "threads": threads,
                        "ran": statuses.count("done") + statuses.count("failed"),
                        "skipped": statuses.count("skipped"), "failed": statuses.count("failed"),
                        **({"plan": plan} if plan else {})})  # in a plan: the wall until this grid's last run ended
    runs = []
    for run in grid.runs:
        result = results.get(run.name, {})
        marker = _read_json(run.done) if run.done.is_file() else None
        walls = _walls(run)
        runs.append({"name": run.name, "recipe": run.recipe, "mix": run.mix, "override": run.override,
                     "seed": run.seed, "group": run.group,
                     "status": "done" if marker is not None else result.get("status", "pending"),
                     "error": result.get("error"), "external": bool(marker and marker.get("external")),
                     **walls, "machine": (marker or {}).get("machine"), "dir": str(run.dir), "log": str(run.log),
                     "test_dir": str(run.test_dir) if run.test_args is not None else None})
    known = [r["wall_s"] for r in runs if r["wall_s"] is not None]
    # Another grid file may share this OUT folder (a subset of seeds, say): its invocations ran other runs,
    # so only this file's count against this file's runs (records without a grid_file predate the key).
    grid_wall = _covered_seconds([i for i in invocations if i.get("grid_file", str(grid.file)) == str(grid.file)])
    data = {
        "name": grid.name, "grid_file": str(grid.file), "out": str(grid.out),
        "command": shlex.join(["unizoo", "study", str(grid.file), "--workers", str(workers), "--threads", str(threads)]),
        "workers": workers, "threads": threads,
        "grid_wall_s": round(grid_wall, 3),  # time any invocation of this grid file was running (overlaps once)
        "run_wall_s": round(sum(known), 3),  # every attempt of every run, added up (runs timed: runs_timed)
        "runs_timed": len(known), "runs_total": len(runs),
        "parallel_speedup": round(sum(known) / grid_wall, 3) if grid_wall > 0 and known else None,
        "done": sum(r["status"] == "done" for r in runs),
        "failed": [r["name"] for r in runs if r["status"] == "failed"],
        "invocations": invocations, "runs": runs,
        "report": previous.get("report"),
    }
    write_json_atomic(path, data)
    return path


def compute_section(summary: dict[str, Any]) -> str:
    """The report's "Compute" section from a grid's study.json: grid wall vs summed run walls, per invocation."""
    def hours(seconds: Any) -> str:
        return "-" if seconds is None else f"{float(seconds) / 3600:.2f} h"

    lines = ["## Compute", "",
             f"Grid wall {hours(summary.get('grid_wall_s'))} (overlapping invocations counted once) for "
             f"{hours(summary.get('run_wall_s'))} of run wall added up over {summary.get('runs_timed', 0)} timed runs "
             f"of {summary.get('runs_total', 0)} (speed-up {summary.get('parallel_speedup') or '-'} on "
             f"{os.cpu_count()} cores: above the core count, runs shared cores and their walls include the wait; "
             f"{summary.get('done', 0)} done). Last invocation: `{summary.get('command', '')}`.", "",
             "| invocation started | wall | workers x threads | ran | skipped | failed | plan |", "|---|---|---|---|---|---|---|"]
    for inv in summary.get("invocations", []):
        if inv.get("grid_file", summary.get("grid_file")) != summary.get("grid_file"):
            continue  # another grid file sharing this folder
        lines.append(f"| {inv.get('started', '?')} | {hours(inv.get('wall_s'))} | {inv.get('workers', '?')} x "
                     f"{inv.get('threads', '?')} | {inv.get('ran', '?')} | {inv.get('skipped', '?')} | "
                     f"{inv.get('failed', '?')} | {Path(inv['plan']).name if inv.get('plan') else '-'} |")
    timed = [r for r in summary.get("runs", []) if r.get("wall_s") is not None]
    if timed:
        lines += ["", "| run | wall | fit | tests | attempts |", "|---|---|---|---|---|"]
        lines += [f"| {r['name']} | {r['wall_s']:.0f} s | {r.get('fit_wall_s') or 0:.0f} s | {r.get('test_wall_s') or 0:.0f} s "
                  f"| {r.get('attempts', '?')} |" for r in timed]
    return "\n".join(lines) + "\n"


def _report(grid: Grid, results: dict[str, dict[str, Any]], console: Any, summary_path: Path) -> None:
    """`unizoo report` over the finished runs into the grid folder; its outcome recorded in study.json."""
    if not grid.test:
        console.print("study: the grid does not test (test: false): no report")
        return
    finished = [r for r in grid.runs if r.done.is_file() and (r.test_dir / "eval" / "metrics.json").is_file()]
    if not finished:
        console.print("study: no finished run to report")
        return
    from tools.report import report

    groups = {str(r.test_dir): r.group for r in finished}
    for run in finished:  # the checkpoint tests: the report's curves (each names its fit run's checkpoint)
        groups.update({str(run.curve_dir(s)): run.group for s, _ in run.curve_checkpoints()
                       if (run.curve_dir(s) / "eval" / "metrics.json").is_file()})
    data = _read_json(summary_path) or {}
    try:
        data["report"] = report(list(groups), out=str(grid.out), groups=groups, curve_metrics=grid.curve_metrics)
        data["report_error"] = None
        with open(data["report"], "a") as f:  # the budget beside the numbers it bought
            f.write("\n" + compute_section(data))
    except Exception as err:  # the runs stay done; the report can be redone with `unizoo report`
        console.print(f"[red]study: report failed[/red]: {type(err).__name__}: {err}")
        data["report"], data["report_error"] = None, f"{type(err).__name__}: {err}"
    write_json_atomic(summary_path, data)

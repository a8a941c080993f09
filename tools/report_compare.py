"""`unizoo compare TREATMENT CONTROL`: two arms of runs, treatment minus control per metric, paired by seed.

`unizoo report` pools runs by (architecture, mix) and pairs mixes; an experiment whose two arms share both
(the weather emphasis and its control are both VQ-VQ, mixed) needs the arms named by their run dirs
instead. Each arm is a list of evaluated run dirs (quoted globs work, as for `unizoo report`); runs pair
by their `seed_everything`, so each seed appears at most once per arm. Per metric it gives both arms'
per-seed values with their mean and 95 % t interval, the paired differences with theirs, how many
differences are positive, and the exact two-sided sign-test p value of that count (with 3 seeds the
smallest possible is 0.25: three of three positive is not evidence on its own).

Writes OUT/compare.md and OUT/compare.json and prints the Markdown path.
"""
from __future__ import annotations

import json
import math
from pathlib import Path
from typing import Any

from tools.report import _metric_key, _table, expand_runs
from tools.report_runs import Run, load_run, merge_runs
from tools.report_stats import Stat


def sign_test(positive: int, negative: int) -> float:
    """Exact two-sided binomial sign-test p value of `positive` of `positive + negative` non-zero differences."""
    n = positive + negative
    if n == 0:
        return 1.0
    tail = sum(math.comb(n, k) for k in range(min(positive, negative) + 1)) / 2 ** n
    return min(1.0, 2 * tail)


def _shown(path: str) -> str:
    """`path` relative to the working directory where it lies below it (reports are kept in git)."""
    try:
        return str(Path(path).resolve().relative_to(Path.cwd().resolve()))
    except ValueError:
        return path


def _by_seed(runs: list[Run], arm: str) -> dict[int, Run]:
    """The arm's runs keyed by seed; a run without a seed or a seed given twice cannot be paired."""
    out: dict[int, Run] = {}
    for run in runs:
        if run.seed is None:
            raise ValueError(f"compare: {arm} run {run.train_id} has no seed_everything in its config; it cannot be paired")
        if run.seed in out:
            raise ValueError(f"compare: {arm} has two runs with seed {run.seed} ({out[run.seed].train_id} and "
                             f"{run.train_id}); give one run per seed")
        out[run.seed] = run
    return out


def _arm(dirs: list[str] | str, arm: str, notes: list[str]) -> dict[int, Run]:
    paths = expand_runs(dirs)
    if not paths:
        raise ValueError(f"compare: no {arm} runs given")
    runs = merge_runs([load_run(p, notes) for p in paths], notes)
    if not runs:
        raise ValueError(f"compare: none of the {arm} runs has metrics (run `unizoo test` on them): {paths}")
    return _by_seed(runs, arm)


def compare(treatment: list[str] | str, control: list[str] | str, out: str = "compare",
            metrics: list[str] | None = None) -> str:
    """Treatment minus control per metric, paired by seed: per-seed values, 95 % t intervals, sign counts.

    Args:
        treatment: evaluated run dirs of the treated arm (a quoted glob or a list).
        control: evaluated run dirs of the control arm, one per seed as in `treatment`.
        out: output folder for compare.md and compare.json.
        metrics: metric names or prefixes to keep (`[vqa/, generation_fidelity/hour]`); all shared ones if omitted.
    """
    notes: list[str] = []
    treated, controls = _arm(treatment, "treatment", notes), _arm(control, "control", notes)
    seeds = sorted(set(treated) & set(controls))
    if not seeds:
        raise ValueError(f"compare: the arms share no seed (treatment {sorted(treated)}, control {sorted(controls)})")
    for arm, runs in (("treatment", treated), ("control", controls)):
        if extra := sorted(set(runs) - set(seeds)):
            notes.append(f"{arm} seeds {extra} have no partner; left out")
    finals = {s: (treated[s].final() or {}, controls[s].final() or {}) for s in seeds}
    shared = set.intersection(*(set(t) & set(c) for t, c in finals.values()))
    if metrics:
        shared = {m for m in shared if any(m == k or m.startswith(k) for k in metrics)}
    if not shared:
        raise ValueError(f"compare: no metric is reported by every paired run{' among ' + str(metrics) if metrics else ''}")
    rows, records = [], []
    for metric in sorted(shared, key=_metric_key):
        a = [finals[s][0][metric] for s in seeds]
        b = [finals[s][1][metric] for s in seeds]
        diff = [x - y for x, y in zip(a, b)]
        positive, negative = sum(d > 0 for d in diff), sum(d < 0 for d in diff)
        p = sign_test(positive, negative)
        stat_a, stat_b, stat_d = Stat.of(a), Stat.of(b), Stat.of(diff)
        rows.append([metric, " / ".join(f"{v:.3f}" for v in a), stat_a.cell(), " / ".join(f"{v:.3f}" for v in b),
                     stat_b.cell(), " / ".join(f"{v:+.3f}" for v in diff), stat_d.cell(),
                     f"{positive}/{len(diff)}", f"{p:.3g}"])
        records.append({"metric": metric, "treatment": {"values": a, **stat_a.as_dict()},
                        "control": {"values": b, **stat_b.as_dict()}, "difference": {"values": diff, **stat_d.as_dict()},
                        "positive": positive, "negative": negative, "sign_test_p": p})
    out_dir = Path(out)
    out_dir.mkdir(parents=True, exist_ok=True)
    md = ["# unizoo compare", "",
          f"Treatment minus control, paired by seed over seeds {seeds} (n = {len(seeds)}). Cells: per-seed values "
          "in seed order, then mean ± half-width of the 95 % t interval; `> 0`: positive differences; p: exact "
          "two-sided sign test.", "",
          "Treatment runs: " + ", ".join(f"`{_shown(treated[s].train_id)}`" for s in seeds), "",
          "Control runs: " + ", ".join(f"`{_shown(controls[s].train_id)}`" for s in seeds), "",
          _table(["metric", "treatment per seed", "treatment", "control per seed", "control",
                  "difference per seed", "difference", "> 0", "p"], rows), "",
          "## Notes", "", *([f"- {n}" for n in notes] or ["- none"]), ""]
    (out_dir / "compare.md").write_text("\n".join(md))
    summary: dict[str, Any] = {"seeds": seeds, "treatment": [_shown(treated[s].train_id) for s in seeds],
                               "control": [_shown(controls[s].train_id) for s in seeds], "metrics": records, "notes": notes}
    (out_dir / "compare.json").write_text(json.dumps(summary, indent=2) + "\n")
    print(f"compare: {out_dir / 'compare.md'} ({len(seeds)} paired seeds, {len(records)} metrics, {len(notes)} notes)")
    return str(out_dir / "compare.md")

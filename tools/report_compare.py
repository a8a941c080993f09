"""`unizoo compare TREATMENT CONTROL`: two arms of runs, treatment minus control per metric, paired by seed.

`unizoo report` pools runs by (architecture, mix) and pairs mixes; an experiment whose two arms share both
(the weather emphasis and its control are both VQ-VQ, mixed) needs the arms named by their run dirs
instead. Each arm is a list of evaluated run dirs (quoted globs work, as for `unizoo report`); runs pair
by their `seed_everything`, so each seed appears at most once per arm. Per metric it gives both arms'
per-seed values with their mean and 95 % t interval, the paired differences with theirs, how many
differences are positive, and the exact two-sided sign-test p value of that count (with 3 seeds the
smallest possible is 0.25: three of three positive is not evidence on its own).

Writes OUT/compare.md, OUT/compare.json and OUT/compare.png (each seed's pair joined by a line) and prints
the Markdown path. Run paths under the working directory are written relative to it, so a compare run
from the project root over docs/results/ reads the same on any clone.
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


def _selected(found: set[str], metrics: list[str]) -> set[str]:
    """The metrics of `found` named by one of `metrics`, exactly or as a prefix (`vqa/`)."""
    return {m for m in found if any(m == k or m.startswith(k) for k in metrics)}


def _called(name: str, role: str) -> str:
    return "" if name == role else f" ({name})"


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


def paired_figure(records: list[dict[str, Any]], names: tuple[str, str], seeds: list[int]) -> Any:
    """One panel per metric: each seed's control and treatment values joined by a line, means as bars."""
    from matplotlib.figure import Figure

    cols = min(4, len(records))
    rows = -(-len(records) // cols)
    fig = Figure(figsize=(3.2 * cols, 2.8 * rows))
    for i, rec in enumerate(records):
        ax = fig.add_subplot(rows, cols, i + 1)
        for low, high in zip(rec["control"]["values"], rec["treatment"]["values"]):
            ax.plot([0, 1], [low, high], "o-", color="0.55", alpha=0.8, lw=1, ms=4)
        for x, arm in ((0, "control"), (1, "treatment")):
            half = rec[arm]["half_width"]
            ax.errorbar([x + 0.08], [rec[arm]["mean"]], yerr=[[half or 0], [half or 0]], fmt="s", color="C0" if x else "C1",
                        capsize=3, ms=5)
        d = rec["difference"]
        interval = "" if d["half_width"] is None else f" ± {d['half_width']:.3f}"
        ax.set_title(f"{rec['metric']}\ndiff {d['mean']:+.3f}{interval}", fontsize=8)
        ax.set_xticks([0, 1], [names[1], names[0]], fontsize=8)
        ax.set_xlim(-0.3, 1.4)
        ax.tick_params(axis="y", labelsize=7)
    fig.suptitle(f"{names[0]} vs {names[1]}, paired by seed (n = {len(seeds)}; squares: mean ± 95 % t interval)",
                 fontsize=9)
    fig.tight_layout()
    return fig


def _shown(path: str) -> str:
    """`path` relative to the working directory when it lies under it, else as given."""
    try:
        return str(Path(path).resolve().relative_to(Path.cwd().resolve()))
    except ValueError:
        return path


def compare(treatment: list[str] | str, control: list[str] | str, out: str = "compare",
            metrics: list[str] | None = None, names: tuple[str, str] = ("treatment", "control")) -> str:
    """Treatment minus control per metric, paired by seed: per-seed values, 95 % t intervals, sign counts.

    Args:
        treatment: evaluated run dirs of the treated arm (a quoted glob or a list).
        control: evaluated run dirs of the control arm, one per seed as in `treatment`.
        out: output folder for compare.md and compare.json.
        metrics: metric names or prefixes to keep (`[vqa/, generation_fidelity/hour]`); all shared ones if omitted.
        names: what the tables and the figure call the two arms (treatment first).
    """
    if len(names) != 2 or not all(isinstance(n, str) and n for n in names):
        raise ValueError(f"compare: names must be two non-empty words (treatment, control), got {names!r}")
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
    some = set.union(*(set(t) | set(c) for t, c in finals.values()))
    if metrics:
        shared, some = _selected(shared, metrics), _selected(some, metrics)
    for metric in sorted(some - shared, key=_metric_key):
        # A metric missing (or not finite: load_run drops NaN) in one paired run cannot be paired: say so.
        missing = [f"{arm} seed {s}" for s in seeds for arm, final in zip(("treatment", "control"), finals[s])
                   if metric not in final]
        notes.append(f"{metric}: missing or not finite in {', '.join(missing)}; left out")
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
    shown = [[_shown(arm[s].train_id) for s in seeds] for arm in (treated, controls)]
    md = ["# unizoo compare", "",
          f"Treatment minus control, paired by seed over seeds {seeds} (n = {len(seeds)}). Cells: per-seed values "
          "in seed order, then mean ± half-width of the 95 % t interval; `> 0`: positive differences; p: exact "
          "two-sided sign test.", "",
          f"Treatment runs{_called(names[0], 'treatment')}: " + ", ".join(f"`{path}`" for path in shown[0]), "",
          f"Control runs{_called(names[1], 'control')}: " + ", ".join(f"`{path}`" for path in shown[1]), "",
          _table(["metric", f"{names[0]} per seed", names[0], f"{names[1]} per seed", names[1],
                  "difference per seed", "difference", "> 0", "p"], rows), "",
          "![paired by seed](compare.png)", "",
          "## Notes", "", *([f"- {n}" for n in notes] or ["- none"]), ""]
    paired_figure(records, tuple(names), seeds).savefig(out_dir / "compare.png", dpi=110)
    (out_dir / "compare.md").write_text("\n".join(md))
    # The metrics files behind each value, so a kept compare can be re-read from the copies it used (two kept
    # grids may hold runs of the same name: a rerun on another machine).
    read = {arm: [_shown(str(runs[s].final_source())) for s in seeds]
            for arm, runs in (("treatment", treated), ("control", controls))}
    summary: dict[str, Any] = {"names": list(names), "seeds": seeds, "treatment": shown[0], "control": shown[1],
                               "read": read, "metrics": records, "notes": notes}
    (out_dir / "compare.json").write_text(json.dumps(summary, indent=2) + "\n")
    print(f"compare: {out_dir / 'compare.md'} ({len(seeds)} paired seeds, {len(records)} metrics, {len(notes)} notes)")
    return str(out_dir / "compare.md")

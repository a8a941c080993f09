"""`unizoo report`: markdown tables and figures over evaluated runs (PAPER.md §1 claims 1-2, §4).

A *run* is a Lightning log dir (`runs/<name>/version_N/`) holding `config.yaml` (the resolved
LightningCLI config) and `eval/metrics.json` (written by `unizoo test`). Runs are grouped by
architecture (model class + its spaces + affine strength + backbone) and task mix
(`data.init_args.mix`, plus `extra` data), and replicate seeds (`seed_everything`) are pooled.

Checkpoint curves (data scaling): evaluations of a run's intermediate checkpoints live in sub-folders
`<run>/eval-stepNNNNNN/` (with `metrics.json` or `eval/metrics.json` inside); the step is read from the
folder name. Produce them with one `unizoo test` per checkpoint, logging into the run itself (the
ModelCheckpoint callback must keep every checkpoint: `save_top_k: -1`):

    RUN=runs/smartwatch-tiny/version_0
    for c in $RUN/checkpoints/*step=*.ckpt; do
      s=$(printf %06d "$(echo "$c" | sed 's/.*step=\\([0-9]*\\).*/\\1/')")
      unizoo test --config RECIPE.yaml [the fit's --data/--model overrides] --ckpt_path "$c" \\
        --trainer.logger.init_args.save_dir $RUN --trainer.logger.init_args.name "" \\
        --trainer.logger.init_args.version eval-step$s
    done

A test folder whose `config.yaml` has `ckpt_path: <fit dir>/checkpoints/...` also counts as an
evaluation of that fit run: its architecture, mix and seed come from the fit run's `config.yaml`
(so a test launched with the recipe's default mix does not mislabel an understanding-only model),
and its step from a `step=N` in the checkpoint's name (none: the final evaluation).
"""
from __future__ import annotations

import json
from pathlib import Path
from typing import Any

# Re-exported: tests and users import these from tools.report. The loading of runs lives in
# tools/report_runs.py, the seed statistics in tools/report_stats.py, the figures in tools/report_figures.py.
from tools.report_figures import (  # noqa: F401
    _affine_figure,
    _curve_figure,
    _mix_figure,
    _pooled_curve_figure,
    _save,
    _slug,
    _tick_labels,
)
from tools.report_runs import (  # noqa: F401
    CHANCE_OF,
    GENERATION_METRICS,
    SKIP_KEYS,
    UNDERSTANDING_METRIC,
    _STEP,
    Run,
    _describe,
    _is_number,
    _read,
    _short,
    _training_config,
    architecture_of,
    flatten_metrics,
    load_run,
    merge_runs,
    mix_of,
)
from tools.report_stats import Stat, curve_stats, gain, group_stats, paired_gains, slope, t_quantile  # noqa: F401

MIX_ORDER = ("mixed", "understanding", "generation")


# ----------------------------------------------------------------------------------------- tables
def _mix_key(mix: str) -> tuple[int, str]:
    return (MIX_ORDER.index(mix) if mix in MIX_ORDER else len(MIX_ORDER), mix)


def _metric_key(metric: str) -> tuple[int, str]:
    order = ("vqa/", "caption/", "generation/", "generation_fidelity/")
    rank = next((i for i, p in enumerate(order) if metric.startswith(p)), len(order))
    return (rank, "" if metric == UNDERSTANDING_METRIC else metric)


def _table(header: list[str], rows: list[list[str]]) -> str:
    lines = ["| " + " | ".join(header) + " |", "|" + "---|" * len(header)]
    return "\n".join(lines + ["| " + " | ".join(r) + " |" for r in rows])


# ----------------------------------------------------------------------------------------- the command
def expand_runs(runs: list[str] | str) -> list[str]:
    """Run dirs from a list or one string; entries with glob characters expand (sorted), and must match."""
    import glob

    out: list[str] = []
    for entry in [runs] if isinstance(runs, str) else list(runs):
        if any(c in entry for c in "*?["):
            matches = sorted(glob.glob(entry))
            if not matches:
                raise ValueError(f"report: pattern {entry!r} matches no run dir")
            out += matches
        else:
            out.append(entry)
    return out


def aligned_twin(runs: list[Run], family: str) -> str | None:
    """The s = 0 point of an affine series: the SharedSpaceVLM reading and writing the misaligned family's space.

    MisalignedVLM at strength 0 reads through the identity map (zoo/spaces/affine.py), so it is the shared-space
    model itself; a twin counts only when its backbone, space and (projector, share_projector) are the same.
    """
    prefix = "MisalignedVLM("
    if not family.startswith(prefix):
        return None
    wanted = "SharedSpaceVLM(" + family[len(prefix):]
    projectors = {r.projector for r in runs if r.family == family}
    twins = {r.architecture for r in runs if r.family == wanted and r.strength is None and r.projector is not None
             and r.projector in projectors}
    return next(iter(twins)) if len(twins) == 1 else None


AffineRow = tuple[str, float, Stat]  # (family, strength, gain of mixing)


def _affine_section(merged: list[Run], summary: dict[str, Any], notes: list[str]) -> tuple[list[str], list[AffineRow]]:
    """Markdown of affine strength vs gain (s = 0 from the aligned twin when the series has none) and the slope."""
    affine = sorted({(r.family, r.strength, r.architecture) for r in merged if r.strength is not None})
    rows = [(f, s, g) for f, s, a in affine if (g := gain(merged, a, UNDERSTANDING_METRIC, "understanding"))]
    if not rows:
        if affine:
            notes.append("affine runs found but none has both mixed and understanding-only results: no gain plot")
        return [], []
    aligned: dict[str, tuple[str, Stat]] = {}  # family -> (its s = 0 twin, the twin's gain)
    for family in sorted({f for f, _, _ in rows}):
        if any(f == family and s == 0 for f, s, _ in rows):
            continue  # the series has its own s = 0 runs
        twin = aligned_twin(merged, family)
        twin_gain = gain(merged, twin, UNDERSTANDING_METRIC, "understanding") if twin else None
        if twin_gain:
            aligned[family] = (twin, twin_gain)
            notes.append(f"affine s = 0 of {family}: the aligned model {twin} (same space, backbone and projector)")
    rows = sorted(rows + [(f, 0.0, g) for f, (_, g) in aligned.items()], key=lambda r: (r[0], r[1]))
    twin_of = {f: twin for f, (twin, _) in aligned.items()}
    md = ["## Affine strength vs gain (mixed minus understanding-only)\n",
          _table(["architecture", "strength", f"{UNDERSTANDING_METRIC} gain"],
                 [[f, f"{s:g}" + (" (aligned twin)" if s == 0 and f in twin_of else ""), g.cell()]
                  for f, s, g in rows]), ""]
    summary["affine"] = [{"family": f, "strength": s, **g.as_dict(),
                          **({"aligned_twin": twin_of[f]} if s == 0 and f in twin_of else {})} for f, s, g in rows]
    summary["affine_slope"] = []
    for family in sorted({f for f, _, _ in rows}):
        arms = [(s, a) for f, s, a in affine if f == family] + ([(0.0, twin_of[family])] if family in twin_of else [])
        points = [(s, g) for s, a in arms for g in paired_gains(merged, a, UNDERSTANDING_METRIC, "understanding")]
        if (fit := slope(points)) is not None:  # does the gain shrink as the read side is misaligned more?
            md += [f"Gain per unit of s, {family}: {fit.cell()} (least-squares slope over the per-seed gains "
                   f"at {len(arms)} strengths; 95 % t interval, df = n - 2).", ""]
            summary["affine_slope"].append({"family": family, **fit.as_dict()})
    return md, rows


def report(runs: list[str] | str, out: str = "report", probe: str | None = None, probe_images: int = 600,
           groups: dict[str, str] | None = None, curve_metrics: list[str] | None = None,
           label_by_name: bool = False) -> str:
    """Tables and figures over evaluated runs; or, with --probe ATTRIBUTE, the adapter analysis of the runs.

    Writes OUT/report.md (mixed vs understanding-only vs generation-only per architecture, mean and 95 %
    t interval over seeds; cross-task gains; checkpoint curves; affine strength vs gain), OUT/summary.json,
    PNG figures, and the same figures to TensorBoard under OUT/tb. Partial runs are skipped with a note.
    See the module docstring for the run layout and the checkpoint-curve convention.

    On the command line give runs as words (a shell glob works: `unizoo report runs/*/version_0`), a
    quoted glob (`unizoo report 'runs/*/version_*'`) or a list (`"[runs/a/version_0, runs/b/version_0]"`).

    Args:
        runs: run dirs (runs/<name>/version_N/) with config.yaml and eval/metrics.json, or glob patterns.
        out: output folder.
        probe: an attribute (weather, weather_pos, battery_pos, hour, ...) to probe: one run writes OUT/probe-ATTRIBUTE.*;
            several write OUT/<run name>/ each and OUT/probe-ATTRIBUTE.md pooled per arm (tools/probe_runs.py).
        probe_images: fresh test watches rendered for the probe.
        groups: a row label per run dir, in place of its architecture (`unizoo study` labels each run by
            its recipe and override set): runs of one label and mix pool over seeds.
        label_by_name: label each run by its run folder's name less `_seedN` (`unizoo study` names runs
            recipe_mix_override_seedS), in place of its architecture: arms of one architecture stay apart
            (e.g. two grid files sharing one folder). `groups` wins where both name a run.
        curve_metrics: metric names or prefixes (`[vqa_by_question/]`) whose checkpoint curves are pooled over
            seeds, each with a figure; default the headline understanding and generation metrics.
    """
    runs = expand_runs(runs)
    if probe is not None:
        if not runs:
            raise ValueError("report --probe: no runs given")
        if len(runs) > 1:  # one folder per run and a table pooled per arm over seeds
            from tools.probe_runs import probe_runs

            return probe_runs(probe, runs, images=probe_images, out=out)
        from tools.probe import probe as run_probe

        run_probe(probe, runs[0], images=probe_images, out=out)
        return str(Path(out) / f"probe-{probe}.json")
    if not runs:
        raise ValueError("report: no runs given")
    from torch.utils.tensorboard import SummaryWriter

    notes: list[str] = []
    labels = {str(Path(k).resolve()): v for k, v in (groups or {}).items()}
    if label_by_name:
        from tools.probe_runs import arm_of, run_name

        labels = {str(Path(r).resolve()): arm_of(run_name(r))[0] for r in runs} | labels
    loaded = [load_run(r, notes) for r in runs]
    for given, run in zip(runs, loaded):
        run.architecture = labels.get(str(Path(given).resolve()), run.architecture)
    merged = merge_runs(loaded, notes)
    out_dir = Path(out)
    out_dir.mkdir(parents=True, exist_ok=True)
    written: list[str] = []
    stats = group_stats(merged)
    architectures = sorted({a for a, _, _ in stats})
    mixes = sorted({m for _, m, _ in stats}, key=_mix_key)
    metrics = sorted({k for _, _, k in stats}, key=_metric_key)
    chance = {k: v for r in merged for k, v in r.chance.items()}
    md = ["# unizoo report", "", f"{len(merged)} trained run(s) from {len(runs)} dir(s). Cells: mean ± half-width "
          "of the 95 % t interval over seeds (n = runs pooled; n=1: no interval).", ""]
    summary: dict[str, Any] = {"groups": [], "gains": [], "curves": [], "affine": [], "notes": notes, "figures": written}
    with SummaryWriter(str(out_dir / "tb")) as writer:
        md.append("## Task mix per architecture\n")
        for metric in metrics:
            rows = [[arch] + [stats[(arch, m, metric)][0].cell() if (arch, m, metric) in stats else "-" for m in mixes]
                    for arch in architectures if any((arch, m, metric) in stats for m in mixes)]
            label = metric + (f" (chance {chance[metric]:.3f})" if metric in chance else "")
            md += [f"### {label}\n", _table(["architecture", *mixes], rows), ""]
        for (arch, mix, metric), (stat, seeds) in sorted(stats.items()):
            summary["groups"].append({"architecture": arch, "mix": mix, "metric": metric, "seeds": seeds, **stat.as_dict()})
        # Figures for the headline metrics only (the tables hold the rest): one understanding, one generation.
        gen_metric = next((m for m in GENERATION_METRICS if m in metrics), None)
        headline = [m for m in (UNDERSTANDING_METRIC, gen_metric) if m in metrics]
        for metric in headline:
            fig = _mix_figure(stats, architectures, mixes, metric, chance.get(metric))
            _save(fig, out_dir, f"mix-{_slug(metric)}", writer, written)

        gain_rows = []
        for arch in architectures:
            und = gain(merged, arch, UNDERSTANDING_METRIC, "understanding")
            gen = gain(merged, arch, gen_metric, "generation") if gen_metric else None
            if und or gen:
                gain_rows.append([arch, und.cell() if und else "-", gen.cell() if gen else "-"])
                summary["gains"].append({"architecture": arch, "understanding": und.as_dict() if und else None,
                                         "generation": gen.as_dict() if gen else None, "generation_metric": gen_metric})
        if gain_rows:
            md += ["## Cross-task benefit (mixed minus single-task; paired by seed)\n",
                   _table(["architecture", f"{UNDERSTANDING_METRIC}: mixed - understanding",
                           f"{gen_metric or 'generation'}: mixed - generation"], gain_rows), ""]

        series = [r for r in merged if len(r.curve()) >= 2]
        if series:
            md.append("## Checkpoint curves\n")
            at_steps = sorted({m for r in series for _, v in r.curve() for m in v}, key=_metric_key)
            wanted = [m for m in at_steps if any(m == c or (c.endswith("/") and m.startswith(c)) for c in curve_metrics)] \
                if curve_metrics else [m for m in [UNDERSTANDING_METRIC, *GENERATION_METRICS] if m in at_steps]
            if curve_metrics and not wanted:
                notes.append(f"curve_metrics {curve_metrics}: none is evaluated at two or more steps")
            for metric in wanted:  # the data-scaling curve: each cell's seeds pooled per step
                cells = curve_stats(series, metric)
                steps = sorted({s for points in cells.values() for s, _ in points})
                label = metric + (f" (chance {chance[metric]:.3f})" if metric in chance else "")
                rows = [[f"{arch} | {mix}", *(next((st.cell() for s, st in points if s == step), "-") for step in steps)]
                        for (arch, mix), points in sorted(cells.items())]
                md += [f"### {label}, mean over seeds per checkpoint step\n",
                       _table(["architecture | mix", *map(str, steps)], rows), ""]
                summary["pooled_curves"] = summary.get("pooled_curves", []) + [
                    {"metric": metric, "architecture": arch, "mix": mix,
                     "points": [{"step": s, **st.as_dict()} for s, st in points]} for (arch, mix), points in sorted(cells.items())]
                if metric in headline or curve_metrics:
                    _save(_pooled_curve_figure(cells, metric, chance.get(metric)), out_dir,
                          f"curve-pooled-{_slug(metric)}", writer, written)
            md.append("### Per run\n")
            for run in series:
                shown = [m for m in [UNDERSTANDING_METRIC, *GENERATION_METRICS] if any(m in v for _, v in run.curve())]
                md += [f"{run.architecture} | {run.mix} | seed {run.seed} ({run.train_id})\n",
                       _table(["step", *shown], [[str(s), *(f"{v[m]:.3f}" if m in v else "-" for m in shown)]
                                                 for s, v in run.curve()]), ""]
                summary["curves"].append({"run": run.train_id, "architecture": run.architecture, "mix": run.mix,
                                          "seed": run.seed, "points": [{"step": s, **v} for s, v in run.curve()]})
            for metric in headline:
                if any(metric in v for r in series for _, v in r.curve()):
                    _save(_curve_figure(series, metric), out_dir, f"curve-{_slug(metric)}", writer, written)
        else:
            notes.append("no run has evaluations at two or more steps: no checkpoint curves")

        affine_md, affine_rows = _affine_section(merged, summary, notes)
        md += affine_md
        if affine_rows:
            _save(_affine_figure(affine_rows), out_dir, "affine-gain", writer, written)
    md += ["## Figures\n", *[f"![{Path(p).stem}]({Path(p).name})" for p in written], ""]
    md += ["## Notes\n", *([f"- {n}" for n in notes] or ["- none"]), ""]
    (out_dir / "report.md").write_text("\n".join(md))
    (out_dir / "summary.json").write_text(json.dumps(summary, indent=2, default=str) + "\n")
    print(f"report: {out_dir / 'report.md'} ({len(merged)} runs, {len(written)} figures, {len(notes)} notes)")
    return str(out_dir / "report.md")

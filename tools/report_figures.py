"""Figures of `unizoo report`: task-mix bars, checkpoint curves and affine strength vs gain (matplotlib)."""
from __future__ import annotations

import re
from pathlib import Path
from typing import Any

from tools.report_runs import UNDERSTANDING_METRIC, Run
from tools.report_stats import Stat


def _save(fig: Any, out: Path, name: str, writer: Any, written: list[str]) -> None:
    fig.tight_layout()
    path = out / f"{name}.png"
    fig.savefig(path, dpi=110)
    writer.add_figure(f"report/{name}", fig, close=False)
    written.append(str(path))


def _slug(text: str) -> str:
    return re.sub(r"[^A-Za-z0-9]+", "-", text).strip("-").lower()


def _without_common_backbone(architectures: list[str]) -> tuple[list[str], str]:
    """The labels less a backbone (" on ...") they all share, and that shared part (for the title)."""
    backbones = {a.split(" on ", 1)[1].split(" s=")[0] for a in architectures if " on " in a}
    if len(backbones) == 1 and architectures and all(" on " in a for a in architectures):
        common = f" on {backbones.pop()}"
        return [a.replace(common, "") for a in architectures], common
    return list(architectures), ""


def _tick_labels(architectures: list[str]) -> tuple[list[str], str]:
    """Wrapped axis labels; a backbone shared by all is moved to the title."""
    labels, common = _without_common_backbone(architectures)
    return _wrapped(labels, 22), common


def _legend_below(fig: Any, ax: Any, common: str = "") -> None:
    """The legend under the axes, one entry per line, so long architecture labels never cover the curves;
    the figure grows with the entries and a backbone shared by every label goes to the title."""
    handles, labels = ax.get_legend_handles_labels()
    if not handles:
        return
    lines = sum(label.count("\n") + 1 for label in labels)
    width, height = fig.get_size_inches()
    fig.set_size_inches(width, height + 0.14 * lines)
    ax.legend(handles, labels, fontsize=6, loc="upper center", bbox_to_anchor=(0.5, -0.14), ncol=1, frameon=False)
    if common:
        ax.set_title(common.strip(), fontsize=7)


def _wrapped(labels: list[str], width: int = 110) -> list[str]:
    """Each label broken into lines of at most `width` characters."""
    import textwrap

    return [textwrap.fill(label, width) for label in labels]


def _mix_figure(stats: dict, architectures: list[str], mixes: list[str], metric: str, chance: float | None):
    from matplotlib.figure import Figure

    fig = Figure(figsize=(max(6.0, 1.7 * len(architectures) + 2), 4.5))
    ax = fig.add_subplot()
    width = 0.8 / max(1, len(mixes))
    for j, mix in enumerate(mixes):
        xs, ys, errs = [], [], []
        for i, arch in enumerate(architectures):
            if (arch, mix, metric) in stats:
                stat = stats[(arch, mix, metric)][0]
                xs.append(i + (j - (len(mixes) - 1) / 2) * width)
                ys.append(stat.mean)
                errs.append(stat.half or 0.0)
        if xs:
            ax.bar(xs, ys, width, yerr=errs, capsize=3, label=mix)
    if chance is not None:
        ax.axhline(chance, color="grey", linestyle="--", linewidth=1, label="chance")
    ticks, common = _tick_labels(architectures)
    ax.set_xticks(range(len(architectures)), ticks, fontsize=6)
    ax.set_ylabel(metric)
    ax.set_title(f"{metric} by task mix (mean, 95 % t interval over seeds){common}", fontsize=8)
    ax.legend(fontsize=7)
    return fig


def _curve_figure(series: list[Run], metric: str):
    from matplotlib.figure import Figure

    fig = Figure(figsize=(6, 4))
    ax = fig.add_subplot()
    names, common = _without_common_backbone([run.architecture for run in series])
    for run, name in zip(series, _wrapped(names)):
        points = [(s, m[metric]) for s, m in run.curve() if metric in m]
        if points:
            ax.plot(*zip(*points), marker="o", label=f"{name} | {run.mix} | seed {run.seed}")
    ax.set_xlabel("training step")
    ax.set_ylabel(metric)
    _legend_below(fig, ax, common)
    return fig


def _pooled_curve_figure(cells: dict[tuple[str, str], list[tuple[int, Stat]]], metric: str, chance: float | None):
    """Mean over seeds per (architecture, mix) against the step, the 95 % t interval shaded."""
    from matplotlib.figure import Figure

    fig = Figure(figsize=(6, 4))
    ax = fig.add_subplot()
    ordered = sorted(cells.items())
    names, common = _without_common_backbone([architecture for (architecture, _), _ in ordered])
    for ((_, mix), points), name in zip(ordered, _wrapped(names)):
        steps = [s for s, _ in points]
        means = [st.mean for _, st in points]
        n = max(st.n for _, st in points)
        line = ax.plot(steps, means, marker="o", label=f"{name} | {mix} (n={n})")[0]
        if any(st.half is not None for _, st in points):
            half = [st.half or 0.0 for _, st in points]
            ax.fill_between(steps, [m - h for m, h in zip(means, half)], [m + h for m, h in zip(means, half)],
                            color=line.get_color(), alpha=0.15)
    if chance is not None:
        ax.axhline(chance, color="grey", linestyle=":", linewidth=1, label="chance")
    ax.set_xlabel("training step")
    ax.set_ylabel(f"{metric} (mean over seeds, 95 % t interval)")
    _legend_below(fig, ax, common)
    return fig


def _affine_figure(rows: list[tuple[str, float, Stat]]):
    from matplotlib.figure import Figure

    fig = Figure(figsize=(6, 4))
    ax = fig.add_subplot()
    for family in sorted({r[0] for r in rows}):
        pts = sorted((s, g) for f, s, g in rows if f == family)
        ax.errorbar([p[0] for p in pts], [p[1].mean for p in pts], yerr=[p[1].half or 0.0 for p in pts],
                    marker="o", capsize=3, label=family)
    ax.axhline(0.0, color="grey", linewidth=1)
    ax.set_xlabel("affine strength s")
    ax.set_ylabel(f"gain: mixed - understanding-only ({UNDERSTANDING_METRIC})")
    ax.legend(fontsize=6)
    return fig


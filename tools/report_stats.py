"""Seed statistics of `unizoo report`: the 95 % t interval, grouping of final metrics, and paired mix gains."""
from __future__ import annotations

import functools
import math
from collections import defaultdict
from dataclasses import dataclass
from typing import Any

from tools.report_runs import Run


@functools.lru_cache(maxsize=None)
def t_quantile(p: float, df: int) -> float:
    """Quantile `p` (> 0.5) of Student's t with `df` >= 1 degrees of freedom (bisection on its CDF)."""
    import numpy as np

    if df < 1 or not 0.5 < p < 1:
        raise ValueError(f"t_quantile: need df >= 1 and 0.5 < p < 1, got df={df}, p={p}")
    log_norm = math.lgamma((df + 1) / 2) - math.lgamma(df / 2) - 0.5 * math.log(df * math.pi)

    def mass(x: float) -> float:  # P(0 < T < x) by Simpson's rule: the density is smooth
        grid = np.linspace(0.0, x, 4001)
        f = np.exp(log_norm - (df + 1) / 2 * np.log1p(grid**2 / df))
        return float((x / 12000) * (f[0] + f[-1] + 4 * f[1:-1:2].sum() + 2 * f[2:-1:2].sum()))

    lo, hi = 0.0, 1.0
    while mass(hi) < p - 0.5:
        lo, hi = hi, hi * 2
    for _ in range(60):
        mid = (lo + hi) / 2
        lo, hi = (mid, hi) if mass(mid) < p - 0.5 else (lo, mid)
    return (lo + hi) / 2


@dataclass
class Stat:
    """Mean of replicate values with the half-width of its 95 % t interval (None when n = 1)."""

    mean: float
    half: float | None
    n: int

    @classmethod
    def of(cls, values: list[float]) -> Stat:
        """The mean and 95 % t interval of `values` (at least one)."""
        n = len(values)
        mean = sum(values) / n
        if n < 2:
            return cls(mean, None, n)
        sd = math.sqrt(sum((v - mean) ** 2 for v in values) / (n - 1))
        return cls(mean, t_quantile(0.975, n - 1) * sd / math.sqrt(n), n)

    def cell(self) -> str:
        """Markdown text: `mean ± half (n=k)`, or `mean (n=1)` without an interval."""
        return f"{self.mean:.3f} (n=1)" if self.half is None else f"{self.mean:.3f} ± {self.half:.3f} (n={self.n})"

    def as_dict(self) -> dict[str, Any]:
        """JSON form with the interval's ends."""
        low = None if self.half is None else self.mean - self.half
        high = None if self.half is None else self.mean + self.half
        return {"mean": self.mean, "half_width": self.half, "low": low, "high": high, "n": self.n}


def group_stats(runs: list[Run]) -> dict[tuple[str, str, str], tuple[Stat, list[Any]]]:
    """(architecture, mix, metric) -> (Stat over the final evaluations of its runs, their seeds)."""
    values: dict[tuple[str, str, str], list[float]] = defaultdict(list)
    seeds: dict[tuple[str, str, str], list[Any]] = defaultdict(list)
    for run in runs:
        for metric, value in (run.final() or {}).items():
            values[(run.architecture, run.mix, metric)].append(value)
            seeds[(run.architecture, run.mix, metric)].append(run.seed)
    return {k: (Stat.of(v), seeds[k]) for k, v in values.items()}


def curve_stats(runs: list[Run], metric: str) -> dict[tuple[str, str], list[tuple[int, Stat]]]:
    """(architecture, mix) -> [(step, Stat of `metric` over the runs evaluated at that step)], in step order.

    The data-scaling curve pooled over seeds: runs of one cell share their checkpoint steps when they share a
    recipe; a step only some seeds reached is shown with its smaller n.
    """
    values: dict[tuple[str, str], dict[int, list[float]]] = defaultdict(lambda: defaultdict(list))
    for run in runs:
        for step, metrics in run.curve():
            if metric in metrics:
                values[(run.architecture, run.mix)][step].append(metrics[metric])
    return {cell: [(step, Stat.of(v)) for step, v in sorted(steps.items())] for cell, steps in values.items()}


def _finals(runs: list[Run], architecture: str, mix: str, metric: str) -> dict[Any, float]:
    """Seed (or run identity when unseeded) -> final `metric` of `architecture`'s runs on `mix`."""
    return {r.seed if r.seed is not None else id(r): r.final()[metric] for r in runs
            if r.architecture == architecture and r.mix == mix and metric in (r.final() or {})}


def paired_gains(runs: list[Run], architecture: str, metric: str, baseline: str) -> list[float]:
    """Mixed minus `baseline` mix on `metric`, one value per seed both mixes have (in seed order)."""
    mixed, base = _finals(runs, architecture, "mixed", metric), _finals(runs, architecture, baseline, metric)
    return [mixed[s] - base[s] for s in sorted((s for s in mixed if s in base), key=str)]


def gain(runs: list[Run], architecture: str, metric: str, baseline: str) -> Stat | None:
    """Mixed minus `baseline` mix on `metric`: paired by seed where seeds match, else difference of means (n=1)."""
    mixed, base = _finals(runs, architecture, "mixed", metric), _finals(runs, architecture, baseline, metric)
    if not mixed or not base:
        return None
    if paired := paired_gains(runs, architecture, metric, baseline):
        return Stat.of(paired)
    return Stat(sum(mixed.values()) / len(mixed) - sum(base.values()) / len(base), None, 1)


def slope(points: list[tuple[float, float]]) -> Stat | None:
    """Least-squares slope of y on x with its 95 % t interval (df = n - 2); None under 3 points or one x."""
    n = len(points)
    if n < 3:
        return None
    mean_x, mean_y = sum(x for x, _ in points) / n, sum(y for _, y in points) / n
    sxx = sum((x - mean_x) ** 2 for x, _ in points)
    if sxx == 0:
        return None
    b = sum((x - mean_x) * (y - mean_y) for x, y in points) / sxx
    residual = sum((y - mean_y - b * (x - mean_x)) ** 2 for x, y in points)
    return Stat(b, t_quantile(0.975, n - 2) * math.sqrt(residual / (n - 2) / sxx), n)


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

import functools
import json
import math
import re
from collections import defaultdict
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import yaml

MIX_ORDER = ("mixed", "understanding", "generation")
SKIP_KEYS = {"counts", "chance", "protocol", "images", "samples", "retrieval_chance", "code_chance"}
CHANCE_OF = {"generation/retrieval_chance": "generation/retrieval_top1", "generation/code_chance": "generation/code_accuracy"}
UNDERSTANDING_METRIC = "vqa/total"
GENERATION_METRICS = ("generation/feature_cosine", "generation/retrieval_top1", "generation/code_accuracy")
_STEP = re.compile(r"step[=_-]?(\d+)")


# ----------------------------------------------------------------------------------------- statistics
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


# ----------------------------------------------------------------------------------------- loading runs
@dataclass
class Run:
    """One trained model: its labels and its evaluations as (step or None for final, flat metrics, source)."""

    train_id: str
    architecture: str
    family: str
    strength: float | None
    mix: str
    seed: int | None
    evals: list[tuple[int | None, dict[str, float], str]] = field(default_factory=list)
    chance: dict[str, float] = field(default_factory=dict)

    def final(self) -> dict[str, float] | None:
        """Metrics of the final evaluation (no step), else of the latest step."""
        if not self.evals:
            return None
        return max(self.evals, key=lambda e: math.inf if e[0] is None else e[0])[1]

    def curve(self) -> list[tuple[int, dict[str, float]]]:
        """Evaluations at known steps, in step order."""
        return sorted(((s, m) for s, m, _ in self.evals if s is not None), key=lambda e: e[0])


def _short(class_path: Any) -> str:
    return str(class_path).rsplit(".", 1)[-1] if class_path else "?"


def _describe(spec: Any) -> str:
    """A short name of a component spec: class, the model class it wraps, and what it loads."""
    if not isinstance(spec, dict):
        return str(spec)
    args = spec.get("init_args") or {}
    name = _short(args["model_class"]) if args.get("model_class") else _short(spec.get("class_path"))
    details = [str(args[k]) for k in ("pretrained", "checkpoint", "variant", "model") if isinstance(args.get(k), str)]
    if isinstance(args.get("base"), dict):
        details.insert(0, _describe(args["base"]))
    if isinstance(args.get("config"), dict) and args["config"].get("hidden_size"):
        cfg = args["config"]
        details.append(f"h{cfg['hidden_size']}" + (f"x{cfg['num_hidden_layers']}" if cfg.get("num_hidden_layers") else ""))
    return f"{name}[{', '.join(details)}]" if details else name


def architecture_of(model: dict[str, Any]) -> tuple[str, str, float | None]:
    """(label with strength, label without it, strength) of a `model:` spec."""
    args = model.get("init_args") or {}
    spaces = " -> ".join(_describe(args[k]) for k in ("space", "input_space", "output_space") if args.get(k))
    family = f"{_short(model.get('class_path'))}({spaces})"
    if args.get("backbone"):
        family += f" on {_describe(args['backbone'])}"
    strength = args.get("strength")
    if isinstance(strength, (int, float)) and not isinstance(strength, bool):
        return f"{family} s={float(strength):g}", family, float(strength)
    return family, family, None


def mix_of(data: dict[str, Any]) -> str:
    """The task-mix label of a `data:` spec: a preset name, or the amounts that differ from all."""
    from datamodules.mixed import PRESETS, resolve_mix

    args = (data or {}).get("init_args") or {}
    if "mix" not in args:
        return "unknown"
    try:
        table = resolve_mix(args["mix"])
    except ValueError as err:
        return f"invalid mix ({err})"
    name = next((k for k, v in PRESETS.items() if v == table), None)
    label = name or "custom(" + ", ".join(f"{k}={v}" for k, v in table.items() if v != 1.0) + ")"
    extra = {k: v for k, v in (args.get("extra") or {}).items() if v}
    return label + ("" if not extra else " +extra(" + ", ".join(f"{k}={v}" for k, v in sorted(extra.items())) + ")")


def flatten_metrics(metrics: dict[str, Any]) -> tuple[dict[str, float], dict[str, float]]:
    """(numeric metrics "a/b" without counts/chance/protocol, chance level per metric)."""
    values: dict[str, float] = {}
    chance: dict[str, float] = {}

    def walk(node: dict[str, Any], prefix: str) -> None:
        for key, value in node.items():
            path = f"{prefix}{key}"
            if key == "chance" and isinstance(value, dict):
                chance.update({f"{prefix}{k}": float(v) for k, v in value.items() if _is_number(v)})
            elif path in CHANCE_OF and _is_number(value):
                chance[CHANCE_OF[path]] = float(value)
            elif isinstance(value, dict) and key not in SKIP_KEYS:
                walk(value, f"{path}/")
            elif key not in SKIP_KEYS and _is_number(value) and math.isfinite(value):
                values[path] = float(value)

    walk({k: v for k, v in metrics.items() if k != "protocol"}, "")
    return values, chance


def _is_number(value: Any) -> bool:
    return isinstance(value, (int, float)) and not isinstance(value, bool)


def _read(path: Path, notes: list[str]) -> dict[str, Any] | None:
    """A JSON (.json) or YAML mapping; None with a note when unreadable (a partial run never stops the report)."""
    try:
        text = path.read_text()
        data = json.loads(text) if path.suffix == ".json" else yaml.safe_load(text)
    except (OSError, ValueError, yaml.YAMLError) as err:
        notes.append(f"{path}: unreadable ({err}); skipped")
        return None
    if not isinstance(data, dict):
        notes.append(f"{path}: not a mapping; skipped")
        return None
    return data


def _training_config(run_dir: Path, config: dict[str, Any]) -> tuple[dict[str, Any], Path, int | None]:
    """(config of the training run, its dir, checkpoint step) for a test dir whose ckpt_path names a fit run."""
    ckpt = config.get("ckpt_path")
    if not isinstance(ckpt, str) or not ckpt:
        return config, run_dir, None
    path = Path(ckpt)
    match = _STEP.search(path.name)
    step = int(match.group(1)) if match else None
    fit_dir = path.parent.parent if path.parent.name == "checkpoints" else None
    if fit_dir is not None and (fit_dir / "config.yaml").is_file() and fit_dir.resolve() != run_dir.resolve():
        fit = _read(fit_dir / "config.yaml", [])
        if fit:
            return fit, fit_dir, step
    return config, run_dir, step


def load_run(path: str | Path, notes: list[str]) -> Run:
    """Read one run dir: labels from its config (or its fit run's), every evaluation found under it."""
    run_dir = Path(path)
    if not run_dir.is_dir():
        raise ValueError(f"report: run {str(run_dir)!r} is not a directory")
    sources = [(None, run_dir / "eval" / "metrics.json")]
    for sub in sorted(p for p in run_dir.glob("eval*") if p.is_dir() and p.name != "eval"):
        match = _STEP.search(sub.name)
        found = [f for f in (sub / "metrics.json", sub / "eval" / "metrics.json") if f.is_file()]
        if found:
            sources.append((int(match.group(1)) if match else None, found[0]))
    sources = [(s, f) for s, f in sources if f.is_file()]
    config_path = run_dir / "config.yaml"
    if not config_path.is_file() and not sources:
        raise ValueError(
            f"report: {run_dir} has neither config.yaml nor eval/metrics.json (nor eval-step*/metrics.json); "
            "expected a Lightning log dir such as runs/<name>/version_N/ evaluated by `unizoo test`"
        )
    config = _read(config_path, notes) if config_path.is_file() else None
    train_dir, step = run_dir, None
    if config is None and (run_dir / "hparams.yaml").is_file():  # the logger's copy of the model's init args
        hparams = _read(run_dir / "hparams.yaml", notes) or {}
        config = {"model": {"class_path": hparams.get("_class_path"), "init_args": hparams}}
        notes.append(f"{run_dir}: no config.yaml; architecture from hparams.yaml, mix and seed unknown")
    elif config is None:
        notes.append(f"{run_dir}: no config.yaml; architecture, mix and seed unknown")
    if config is not None:
        config, train_dir, step = _training_config(run_dir, config)
    model = (config or {}).get("model")
    if isinstance(model, dict):
        architecture, family, strength = architecture_of(model)
    else:
        architecture = family = f"unknown ({run_dir.name})"
        strength = None
    seed = (config or {}).get("seed_everything")
    run = Run(str(train_dir.resolve()), architecture, family, strength, mix_of((config or {}).get("data") or {}),
              seed if _is_number(seed) else None)
    for sub_step, file in sources:
        metrics = _read(file, notes)
        if metrics is None:
            continue
        values, chance = flatten_metrics(metrics)
        run.evals.append((step if sub_step is None else sub_step, values, str(file)))
        run.chance.update(chance)
    if not run.evals:
        notes.append(f"{run_dir}: no metrics (run `unizoo test` on it); skipped")
    return run


def merge_runs(runs: list[Run], notes: list[str]) -> list[Run]:
    """One Run per training run: evaluations of the same fit dir (test dirs, eval-step folders) pooled."""
    merged: dict[str, Run] = {}
    for run in runs:
        if run.train_id not in merged:
            merged[run.train_id] = Run(run.train_id, run.architecture, run.family, run.strength, run.mix, run.seed,
                                       chance=dict(run.chance))
        target = merged[run.train_id]
        seen = {e[0]: Path(e[2]).resolve() for e in target.evals}
        for evaluation in run.evals:
            if evaluation[0] in seen:
                if seen[evaluation[0]] != Path(evaluation[2]).resolve():  # the same file reached twice is no news
                    notes.append(f"{evaluation[2]}: a second evaluation of {run.train_id} at step {evaluation[0]}; ignored")
                continue
            target.evals.append(evaluation)
            seen[evaluation[0]] = Path(evaluation[2]).resolve()
        target.chance.update(run.chance)
    return [r for r in merged.values() if r.evals]


# ----------------------------------------------------------------------------------------- tables
def _mix_key(mix: str) -> tuple[int, str]:
    return (MIX_ORDER.index(mix) if mix in MIX_ORDER else len(MIX_ORDER), mix)


def _metric_key(metric: str) -> tuple[int, str]:
    order = ("vqa/", "caption/", "generation/", "generation_fidelity/")
    rank = next((i for i, p in enumerate(order) if metric.startswith(p)), len(order))
    return (rank, "" if metric == UNDERSTANDING_METRIC else metric)


def group_stats(runs: list[Run]) -> dict[tuple[str, str, str], tuple[Stat, list[Any]]]:
    """(architecture, mix, metric) -> (Stat over the final evaluations of its runs, their seeds)."""
    values: dict[tuple[str, str, str], list[float]] = defaultdict(list)
    seeds: dict[tuple[str, str, str], list[Any]] = defaultdict(list)
    for run in runs:
        for metric, value in (run.final() or {}).items():
            values[(run.architecture, run.mix, metric)].append(value)
            seeds[(run.architecture, run.mix, metric)].append(run.seed)
    return {k: (Stat.of(v), seeds[k]) for k, v in values.items()}


def gain(runs: list[Run], architecture: str, metric: str, baseline: str) -> Stat | None:
    """Mixed minus `baseline` mix on `metric`: paired by seed where seeds match, else difference of means (n=1)."""
    def finals(mix: str) -> dict[Any, float]:
        return {r.seed if r.seed is not None else id(r): r.final()[metric] for r in runs
                if r.architecture == architecture and r.mix == mix and metric in (r.final() or {})}

    mixed, base = finals("mixed"), finals(baseline)
    if not mixed or not base:
        return None
    common = [s for s in mixed if s in base]
    if common:
        return Stat.of([mixed[s] - base[s] for s in common])
    return Stat(sum(mixed.values()) / len(mixed) - sum(base.values()) / len(base), None, 1)


def _table(header: list[str], rows: list[list[str]]) -> str:
    lines = ["| " + " | ".join(header) + " |", "|" + "---|" * len(header)]
    return "\n".join(lines + ["| " + " | ".join(r) + " |" for r in rows])


# ----------------------------------------------------------------------------------------- figures
def _save(fig: Any, out: Path, name: str, writer: Any, written: list[str]) -> None:
    fig.tight_layout()
    path = out / f"{name}.png"
    fig.savefig(path, dpi=110)
    writer.add_figure(f"report/{name}", fig, close=False)
    written.append(str(path))


def _slug(text: str) -> str:
    return re.sub(r"[^A-Za-z0-9]+", "-", text).strip("-").lower()


def _tick_labels(architectures: list[str]) -> tuple[list[str], str]:
    """Wrapped axis labels; a backbone shared by all is moved to the title."""
    import textwrap

    backbones = {a.split(" on ", 1)[1].split(" s=")[0] for a in architectures if " on " in a}
    common = ""
    if len(backbones) == 1 and all(" on " in a for a in architectures):
        common = f" on {backbones.pop()}"
        architectures = [a.replace(common, "") for a in architectures]
    return [textwrap.fill(a, 22) for a in architectures], common


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
    for run in series:
        points = [(s, m[metric]) for s, m in run.curve() if metric in m]
        if points:
            ax.plot(*zip(*points), marker="o", label=f"{run.architecture} | {run.mix} | seed {run.seed}")
    ax.set_xlabel("training step")
    ax.set_ylabel(metric)
    ax.legend(fontsize=6)
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


def report(runs: list[str] | str, out: str = "report", probe: str | None = None, probe_images: int = 600) -> str:
    """Tables and figures over evaluated runs; or, with --probe ATTRIBUTE, the adapter analysis of one run.

    Writes OUT/report.md (mixed vs understanding-only vs generation-only per architecture, mean and 95 %
    t interval over seeds; cross-task gains; checkpoint curves; affine strength vs gain), OUT/summary.json,
    PNG figures, and the same figures to TensorBoard under OUT/tb. Partial runs are skipped with a note.
    See the module docstring for the run layout and the checkpoint-curve convention.

    On the command line give one run, a quoted glob (`unizoo report 'runs/*/version_*'`) or a list
    (`unizoo report "[runs/a/version_0, runs/b/version_0]"`): jsonargparse takes a single positional.

    Args:
        runs: run dirs (runs/<name>/version_N/) with config.yaml and eval/metrics.json, or glob patterns.
        out: output folder.
        probe: an attribute (weather, weather_pos, battery_pos, hour, ...) to probe in the single run given.
        probe_images: fresh test watches rendered for the probe.
    """
    runs = expand_runs(runs)
    if probe is not None:
        if len(runs) != 1:
            raise ValueError(f"report --probe takes exactly one run, got {len(runs)}: {runs}")
        from tools.probe import probe as run_probe

        run_probe(probe, runs[0], images=probe_images, out=out)
        return str(Path(out) / f"probe-{probe}.json")
    if not runs:
        raise ValueError("report: no runs given")
    from torch.utils.tensorboard import SummaryWriter

    notes: list[str] = []
    merged = merge_runs([load_run(r, notes) for r in runs], notes)
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

        affine = sorted({(r.family, r.strength, r.architecture) for r in merged if r.strength is not None})
        affine_rows = [(f, s, g) for f, s, a in affine if (g := gain(merged, a, UNDERSTANDING_METRIC, "understanding"))]
        if affine_rows:
            md += ["## Affine strength vs gain (mixed minus understanding-only)\n",
                   _table(["architecture", "strength", f"{UNDERSTANDING_METRIC} gain"],
                          [[f, f"{s:g}", g.cell()] for f, s, g in affine_rows]), ""]
            summary["affine"] = [{"family": f, "strength": s, **g.as_dict()} for f, s, g in affine_rows]
            _save(_affine_figure(affine_rows), out_dir, "affine-gain", writer, written)
        elif affine:
            notes.append("affine runs found but none has both mixed and understanding-only results: no gain plot")
    md += ["## Figures\n", *[f"![{Path(p).stem}]({Path(p).name})" for p in written], ""]
    md += ["## Notes\n", *([f"- {n}" for n in notes] or ["- none"]), ""]
    (out_dir / "report.md").write_text("\n".join(md))
    (out_dir / "summary.json").write_text(json.dumps(summary, indent=2, default=str) + "\n")
    print(f"report: {out_dir / 'report.md'} ({len(merged)} runs, {len(written)} figures, {len(notes)} notes)")
    return str(out_dir / "report.md")

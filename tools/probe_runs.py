"""The adapter probe (tools/probe.py) over several runs at once, pooled over seeds (PAPER.md §5 for an arm).

`unizoo report RUN RUN ... --probe ATTRIBUTE --out DIR` probes each run into DIR/<run name>/ and writes
DIR/probe-ATTRIBUTE.md (and .json): per run, then per arm (the run name without its `_seedN` suffix, as
`unizoo study` names runs) the mean and 95 % t interval of the probe accuracy over seeds, for the first
visual token, the mean over tokens and all tokens flattened. Each run is probed on the same fresh test
watches of its own data seed, so the arms of one grid are probed on the same images.
"""
from __future__ import annotations

import json
import re
from pathlib import Path
from typing import Any

from tools.report_stats import Stat

_SEED = re.compile(r"_seed(\d+)$")
FEATURES = ("first_token", "mean_token", "all_tokens")


def run_name(run: str | Path) -> str:
    """A run's name: its folder, or for a Lightning version dir (`NAME/version_0`, `NAME/test`) the folder above."""
    path = Path(run)
    if path.suffix == ".ckpt":
        path = path.parent.parent if path.parent.name == "checkpoints" else path.parent
    if re.fullmatch(r"version_\d+|test.*", path.name):  # a fit dir or a test dir (test, test-stepN, test1500)
        path = path.parent
    return path.name or str(run)


def arm_of(name: str) -> tuple[str, int | None]:
    """(arm, seed) of a run name: `vq-vq_mixed_seed2` -> (`vq-vq_mixed`, 2); no `_seedN`: (name, None)."""
    match = _SEED.search(name)
    return (name[: match.start()], int(match.group(1))) if match else (name, None)


def pool_per_arm(values: dict[str, dict[str, float]]) -> dict[str, dict[str, Stat]]:
    """{run name: {kind: value}} -> {arm: {kind: Stat over the arm's seeds}} (arm: the name less `_seedN`)."""
    arms: dict[str, dict[str, list[float]]] = {}
    for name, per_kind in values.items():
        for kind, value in per_kind.items():
            arms.setdefault(arm_of(name)[0], {}).setdefault(kind, []).append(value)
    return {arm: {kind: Stat.of(v) for kind, v in per.items()} for arm, per in arms.items()}


def summarize(attribute: str, results: dict[str, dict[str, Any]]) -> tuple[str, dict[str, Any]]:
    """Markdown and JSON of probe results keyed by run name: per run, then per arm over its seeds."""
    rows, accuracies = [], {}
    for name, result in results.items():
        accuracy = accuracies[name] = {kind: result["features"][kind]["accuracy"] for kind in FEATURES}
        majority = result["features"]["first_token"]["majority"]
        rows.append(f"| {name} | {accuracy['first_token']:.3f} | {accuracy['mean_token']:.3f} | "
                    f"{accuracy['all_tokens']:.3f} | {result['chance']:.3f} | {majority:.3f} |")
    chance = next(iter(results.values()))["chance"]
    stats = pool_per_arm(accuracies)
    md = [f"# Adapter probe: {attribute} after the read projector", "",
          "Linear probe (logistic regression on 80 % of fresh test watches, scored on the other 20 %) of the "
          "projected read tokens: the first visual token, the mean over tokens and all tokens flattened (tools/probe.py). "
          f"Chance {chance:.3f} (1 / classes); `majority`: the most frequent class's share of the probe's test part.", "",
          "## Per arm (mean ± 95 % t interval over seeds)", "",
          "| arm | first token | mean over tokens | all tokens |", "|---|---|---|---|",
          *[f"| {arm} | {s['first_token'].cell()} | {s['mean_token'].cell()} | {s['all_tokens'].cell()} |"
            for arm, s in stats.items()], "",
          "## Per run", "", "| run | first token | mean over tokens | all tokens | chance | majority |",
          "|---|---|---|---|---|---|",
          *rows, ""]
    summary = {"attribute": attribute, "chance": chance, "runs": results,
               "arms": {arm: {kind: s.as_dict() for kind, s in per.items()} for arm, per in stats.items()}}
    return "\n".join(md), summary


def probe_runs(attribute: str, runs: list[str], images: int = 600, out: str = "report") -> str:
    """Probe every run into OUT/<run name>/, then write OUT/probe-ATTRIBUTE.md and .json pooled per arm."""
    from tools.probe import probe

    names = [run_name(run) for run in runs]
    if duplicated := sorted({n for n in names if names.count(n) > 1}):
        raise ValueError(f"report --probe: several runs share the name(s) {duplicated}; give each run once "
                         "(their probes would overwrite one another in OUT/<run name>/)")
    results = {}
    for index, (name, run) in enumerate(zip(names, runs), 1):
        print(f"probe {attribute}: run {index}/{len(runs)} {name}", flush=True)
        results[name] = probe(attribute, run, images=images, out=str(Path(out) / name))
    md, summary = summarize(attribute, results)
    out_dir = Path(out)
    (out_dir / f"probe-{attribute}.md").write_text(md)
    (out_dir / f"probe-{attribute}.json").write_text(json.dumps(summary, indent=2) + "\n")
    print(f"probe: {out_dir / f'probe-{attribute}.md'} ({len(results)} runs, {len(summary['arms'])} arms)")
    return str(out_dir / f"probe-{attribute}.md")

"""Determinism on CPU: one recipe and seed give the same first 20 losses and test metrics; another seed differs."""
from __future__ import annotations

import json
from pathlib import Path

from test_reliability_resume import read_steps, recorder, smoke_recipe
from tools.lightning_cli import run_lightning_cli

STEPS = 20


def _fit_and_test(root: Path, seed: int, steps: int = STEPS, test: bool = True) -> tuple[list[float], list, str]:
    """(losses of the first `steps` steps, their batches, the test metrics as canonical JSON) of one run."""
    root.mkdir()
    log = root / "steps.jsonl"
    recipe = smoke_recipe(root, steps=steps, every=steps, seed=seed, callbacks=[recorder(log)])
    cli = run_lightning_cli(["fit", "--config", str(recipe)])
    metrics = ""
    if test:
        cli.trainer.test(cli.model, datamodule=cli.datamodule, verbose=False)
        # NaN-safe, order-independent comparison of nested metrics.
        metrics = json.dumps(cli.model.eval_metrics, sort_keys=True, default=str)
    rows = read_steps(log)
    assert sorted(rows) == list(range(1, steps + 1))
    return [rows[s]["loss"] for s in sorted(rows)], [rows[s]["samples"] for s in sorted(rows)], metrics


def test_same_seed_same_losses_and_metrics_other_seed_differs(tmp_path):
    losses, batches, metrics = _fit_and_test(tmp_path / "a", seed=0)
    again = _fit_and_test(tmp_path / "b", seed=0)
    assert again[0] == losses  # bit-identical, not merely close
    assert again[1] == batches
    assert again[2] == metrics
    assert json.loads(metrics)["protocol"]["samples"] == 3  # one test sample per task was evaluated
    other = _fit_and_test(tmp_path / "c", seed=1, steps=5, test=False)  # the projectors start elsewhere
    assert all(a != b for a, b in zip(other[0], losses))
    assert other[1] == batches[:5]  # the data order has its own seed (data.init_args.seed)

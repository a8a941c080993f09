"""`unizoo quickstart`: train a tiny unified model on fresh smart-watch data, evaluate it, print the table."""
from __future__ import annotations

import time
from pathlib import Path
from typing import Any

DEFAULT_RECIPE = str(Path(__file__).resolve().parent.parent / "recipes" / "quickstart.yaml")


def quickstart(recipe: str = DEFAULT_RECIPE, overrides: list[str] | None = None) -> dict[str, Any]:
    """Train the quickstart recipe (fit), evaluate the trained model (test) and print a table of scores.

    The fit ends with a checkpoint of its final weights (zoo.model.callbacks.FinalCheckpoint) and the test
    loads that file, so the printed checkpoint is the model the table scores: `unizoo test --config
    RUN/config.yaml --ckpt_path CHECKPOINT` prints the same numbers on the same machine.

    Args:
        recipe: the recipe YAML to train (default: recipes/quickstart.yaml).
        overrides: extra LightningCLI arguments, e.g. ["--trainer.max_steps=50"].
    """
    from tools.lightning_cli import run_lightning_cli
    from zoo.model.callbacks import final_checkpoint_path

    started = time.perf_counter()
    cli = run_lightning_cli(["fit", "--config", recipe, *(overrides or [])])
    trainer, model = cli.trainer, cli.model
    if trainer.interrupted:
        raise SystemExit("quickstart: training was interrupted; no evaluation")
    checkpoint = final_checkpoint_path(trainer)  # None only when the recipe turns checkpointing off
    trainer.test(model, datamodule=cli.datamodule, ckpt_path=checkpoint, verbose=False)
    summary = {
        "metrics": model.eval_metrics,
        "eval_dir": model.eval_outputs["dir"],
        "log_dir": trainer.log_dir,
        "checkpoint": checkpoint,
        "wall_s": time.perf_counter() - started,
        "steps": trainer.global_step,
    }
    print_summary(summary)
    return summary


def _fmt(value: Any) -> str:
    return "-" if value is None else f"{value:.3f}" if isinstance(value, float) else str(value)


def print_summary(summary: dict[str, Any]) -> None:
    """Print the quickstart's result table (rich)."""
    from rich.console import Console
    from rich.table import Table

    metrics = summary["metrics"]
    table = Table(title=f"unizoo quickstart: {summary['steps']} steps, {summary['wall_s']:.0f} s wall")
    table.add_column("task")
    table.add_column("metric")
    table.add_column("score", justify="right")
    table.add_column("chance", justify="right")
    table.add_column("n", justify="right")
    vqa = metrics.get("vqa", {})
    for key in ("weather", "position", "time", "battery", "total"):
        if key in vqa:
            table.add_row("VQA (PAPER §6)", key, _fmt(vqa[key]), _fmt(vqa["chance"].get(key)), _fmt(vqa["counts"].get(key)))
    caption = metrics.get("caption", {})
    for key in sorted(k for k in caption if k not in ("chance", "counts")):
        table.add_row("caption", key, _fmt(caption[key]), _fmt(caption["chance"].get(key)), _fmt(caption["counts"].get(key)))
    generation = metrics.get("generation", {})
    if generation:
        n = generation.get("images")
        # The "chance" of feature cosine: always writing the average test image's features.
        table.add_row("generation", "feature cosine to truth", _fmt(generation.get("feature_cosine")),
                      _fmt(generation.get("feature_cosine_constant")), _fmt(n))
        if generation.get("feature_cosine_conditional") is not None:
            # The mean of other test targets sharing the weather/corners the prompt states.
            table.add_row("generation", "cosine: conditional mean baseline", "",
                          _fmt(generation["feature_cosine_conditional"]), _fmt(n))
        table.add_row("generation", "retrieval top-1", _fmt(generation.get("retrieval_top1")),
                      _fmt(generation.get("retrieval_chance")), _fmt(n))
        if "code_accuracy" in generation:
            table.add_row("generation", "code accuracy", _fmt(generation["code_accuracy"]),
                          _fmt(generation.get("code_chance")), _fmt(n))
    for key, value in sorted(metrics.get("generation_fidelity", {}).items()):
        if isinstance(value, float):
            chance = metrics["generation_fidelity"].get("chance", {}).get(key)
            table.add_row("generation (reader)", key, _fmt(value), _fmt(chance), "")
    console = Console()
    console.print(table)
    console.print(f"TensorBoard: tensorboard --logdir {summary['log_dir']}")
    if summary["checkpoint"]:
        console.print(f"checkpoint:  {summary['checkpoint']} (step {summary['steps']}: the weights scored above)")
    else:
        console.print("checkpoint:  none (the recipe turns checkpointing off)")
    console.print(f"eval files:  {summary['eval_dir']} (answers.jsonl, metrics.json, images)")

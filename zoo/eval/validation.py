"""Generation-based scores on the validation split, so recipe choices are made on val, never on test.

Teacher-forced val losses say little about what a model answers or draws: the quickstart's losses kept
falling while its free-running generations stayed below the mean image. `ValidationScores` runs the
test protocol (`zoo.eval.evaluation.evaluate_samples`: greedy answers, one written image per prompt) on a
capped, fixed set of val samples at the end of each validation epoch, scores it with the DataModule's
`score_records` (VQA per attribute, the attribute reader on generated images) plus the model-agnostic
generation metrics, and logs every number as `val/<name>` (TensorBoard and `metrics.csv`).
"""
from __future__ import annotations

import math
from typing import Any

import lightning as L
import torch

from zoo.eval.metrics import flatten_metrics
from zoo.sample import Sample


class ValidationScores(L.Callback):
    """Log the test protocol's scores on the first `max_samples` val samples of each task, every validation."""

    def __init__(self, max_samples: int = 60, batch_size: int = 32) -> None:
        if max_samples < 1 or batch_size < 1:
            raise ValueError(f"ValidationScores: max_samples and batch_size must be >= 1, got {max_samples}, {batch_size}")
        self.max_samples, self.batch_size = max_samples, batch_size
        self.last: dict[str, float] = {}

    def samples(self, trainer: L.Trainer) -> list[Sample]:
        """The val samples scored: the first `max_samples` of each task, in the val split's fixed order."""
        datamodule = getattr(trainer, "datamodule", None)
        if datamodule is None or not hasattr(datamodule, "dataset"):
            return []
        dataset = datamodule.dataset("val")
        taken: dict[str, int] = {}
        chosen = []
        for i in range(len(dataset)):
            sample = dataset[i]
            if taken.get(sample.task, 0) < self.max_samples:
                taken[sample.task] = taken.get(sample.task, 0) + 1
                chosen.append(sample)
        return chosen

    @torch.no_grad()
    def on_validation_epoch_end(self, trainer: L.Trainer, pl_module: L.LightningModule) -> None:  # noqa: D102
        if trainer.sanity_checking:
            return
        from zoo.eval.evaluation import decode_generated, evaluate_samples, generation_metrics

        samples = self.samples(trainer)
        if not samples:
            return
        was_training = pl_module.training
        pl_module.eval()
        config = pl_module.generation_config()
        records = []
        for start in range(0, len(samples), self.batch_size):
            records += evaluate_samples(pl_module, samples[start:start + self.batch_size], config)
        images = decode_generated(pl_module, records) if pl_module.write_space is not None else []
        metrics: dict[str, Any] = {}
        scorer = getattr(trainer.datamodule, "score_records", None)
        if callable(scorer):
            metrics.update(scorer(records, images))
        generation = generation_metrics(pl_module, records)
        if generation:
            metrics["generation"] = generation
        self.last = {k: v for k, v in flatten_metrics(metrics).items() if _is_number(v)}
        for key, value in self.last.items():
            pl_module.log(f"val/{key}", float(value), batch_size=1, rank_zero_only=True)
        pl_module.train(was_training)


def _is_number(value: Any) -> bool:
    return isinstance(value, (int, float)) and not isinstance(value, bool) and math.isfinite(value)

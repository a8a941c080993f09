"""`EvalWriter`: what `unizoo test` and `unizoo predict` write, kept out of the model.

The model's `test_step`/`predict_step` return the records of a batch (zoo.eval.evaluation.evaluate_samples);
this callback keeps them with the generation samples' ground-truth images, gathers every rank's on rank 0
(zoo.eval.gather) at the epoch's end, and there
* test: scores them (the DataModule's `score_records` + model-agnostic generation metrics), logs every
  number as `test/<name>`, writes `<log dir>/eval` (answers.jsonl, metrics.json, images, grids) and
  shows the grids in TensorBoard; the model gets `eval_metrics` and `eval_outputs` (paths);
* predict: writes the same files to `<log dir>/predict` without scores (metrics.json holds only the
  protocol); the model gets `predict_outputs`.
UnifiedVLM attaches it through `configure_callbacks`, so `unizoo test|predict` and `trainer.test(model, dm)`
in user code both write these.
"""
from __future__ import annotations

import math
import os
import warnings
from dataclasses import asdict
from typing import Any

import lightning as L

from zoo.eval.evaluation import comparison_grid_tensor, decode_generated, generation_metrics, retrieved_images, write_outputs
from zoo.eval.gather import gather_eval
from zoo.eval.metrics import flatten_metrics


def eval_protocol(model: Any, samples: int) -> dict[str, Any]:
    """How the records were made, stored beside the metrics: the decoding settings and the sample count."""
    return {**asdict(model.generation_config()), "samples": samples,
            "generation": "teacher-forced text up to <boi>, then one image"}


class EvalWriter(L.Callback):
    """Collect test/predict records batch by batch; score (test only) and write them at the epoch's end."""

    def __init__(self) -> None:
        self.records: list[dict[str, Any]] = []
        self.truths: list[tuple[int | None, Any]] = []  # (item, ground-truth image) of generation samples

    # ----------------------------------------------------------------------------- collecting
    def _start(self) -> None:
        self.records, self.truths = [], []

    def _collect(self, records: list[dict[str, Any]] | None, batch: list) -> None:
        self.records += records or []
        self.truths += [(getattr(s, "item", None), s.images[-1]) for s in batch if s.task == "generation" and s.images]

    def on_test_epoch_start(self, trainer: L.Trainer, pl_module: L.LightningModule) -> None:  # noqa: D102
        self._start()

    def on_predict_epoch_start(self, trainer: L.Trainer, pl_module: L.LightningModule) -> None:  # noqa: D102
        self._start()

    def on_test_batch_end(self, trainer: L.Trainer, pl_module: L.LightningModule, outputs: Any, batch: Any,
                          batch_idx: int, dataloader_idx: int = 0) -> None:  # noqa: D102
        self._collect(outputs, batch)

    def on_predict_batch_end(self, trainer: L.Trainer, pl_module: L.LightningModule, outputs: Any, batch: Any,
                             batch_idx: int, dataloader_idx: int = 0) -> None:  # noqa: D102
        self._collect(outputs, batch)

    # ----------------------------------------------------------------------------- writing
    def _gathered(self, trainer: L.Trainer, pl_module: Any, folder: str):
        """(out dir, records, truths, decoded images, retrieved images) on rank 0; None on the other ranks."""
        out_dir = os.path.join(trainer.log_dir or trainer.default_root_dir, folder)  # log_dir: a collective
        gathered = gather_eval(self.records, self.truths)
        if gathered is None:  # not rank 0
            return None
        records, truths = gathered
        space = pl_module.write_space
        images = decode_generated(pl_module, records) if space is not None else []
        retrieved = retrieved_images(records, truths) if space is not None and not space.discrete else None
        return out_dir, records, truths, images, retrieved

    def on_test_epoch_end(self, trainer: L.Trainer, pl_module: L.LightningModule) -> None:
        """Gather on rank 0, which scores, logs and writes the eval folder; other ranks only take part."""
        gathered = self._gathered(trainer, pl_module, "eval")
        if gathered is None:
            pl_module.eval_metrics, pl_module.eval_outputs = {}, {}
            return
        out_dir, records, truths, images, retrieved = gathered
        metrics: dict[str, Any] = {}
        scorer = getattr(getattr(trainer, "datamodule", None), "score_records", None)
        if callable(scorer):
            metrics.update(scorer(records, images))
        gen = generation_metrics(pl_module, records)
        if gen:
            metrics["generation"] = gen
        metrics["protocol"] = eval_protocol(pl_module, len(records))
        # Lightning would advise sync_dist for these epoch-level values: they are already over every rank's records.
        warnings.filterwarnings("ignore", message=r"It is recommended to use `self.log\('test/")
        for key, value in flatten_metrics({k: v for k, v in metrics.items() if k != "protocol"}).items():
            if isinstance(value, (int, float)) and not isinstance(value, bool) and math.isfinite(value):
                pl_module.log(f"test/{key}", float(value), batch_size=1, rank_zero_only=True)
        pl_module.eval_outputs = write_outputs(out_dir, records, metrics, images, truths, retrieved)
        pl_module.eval_metrics = metrics
        experiment = getattr(pl_module.logger, "experiment", None)
        for tag, shown in (("test/generated_vs_truth", images), ("test/retrieved_vs_truth", retrieved or [])):
            grid = comparison_grid_tensor(shown, truths)
            if grid is not None and hasattr(experiment, "add_image"):
                experiment.add_image(tag, grid, pl_module.global_step)

    def on_predict_epoch_end(self, trainer: L.Trainer, pl_module: L.LightningModule) -> None:
        """Write answers.jsonl, the generated images and their grid beside the truth to `<log dir>/predict`."""
        gathered = self._gathered(trainer, pl_module, "predict")
        if gathered is None:
            pl_module.predict_outputs = {}
            return
        out_dir, records, truths, images, retrieved = gathered
        pl_module.predict_outputs = write_outputs(out_dir, records, {"protocol": eval_protocol(pl_module, len(records))},
                                                  images, truths, retrieved)

"""Training callbacks that belong with the models: throughput logging."""
from __future__ import annotations

import time
from typing import Any

import lightning as L


class ThroughputLogger(L.Callback):
    """Log samples/s and tokens/s (non-padding) of training, averaged over `every_n_steps` steps."""

    def __init__(self, every_n_steps: int = 10) -> None:
        self.every_n_steps = every_n_steps
        self._start: float | None = None
        self._samples = 0
        self._tokens = 0

    def on_train_batch_start(self, trainer: L.Trainer, pl_module: L.LightningModule, batch: Any, batch_idx: int) -> None:  # noqa: D102
        if self._start is None:
            self._start = time.perf_counter()

    def on_train_batch_end(self, trainer: L.Trainer, pl_module: L.LightningModule, outputs: Any, batch: Any, batch_idx: int) -> None:  # noqa: D102
        self._samples += int(batch["input_ids"].shape[0])
        self._tokens += int(batch["attention_mask"].sum())
        if (batch_idx + 1) % self.every_n_steps:
            return
        elapsed = time.perf_counter() - (self._start or time.perf_counter())
        if elapsed > 0:
            pl_module.log("throughput/samples_per_s", self._samples / elapsed, batch_size=1)
            pl_module.log("throughput/tokens_per_s", self._tokens / elapsed, batch_size=1)
        self._start, self._samples, self._tokens = time.perf_counter(), 0, 0

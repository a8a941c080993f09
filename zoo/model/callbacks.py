"""Training callbacks that belong with the models: throughput logging, a checkpoint of the final weights."""
from __future__ import annotations

import time
from typing import Any

import lightning as L
from lightning.pytorch.callbacks import ModelCheckpoint


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


class FinalCheckpoint(L.Callback):
    """End every fit with a checkpoint of the final weights (`unizoo fit` adds this to every run).

    Lightning's ModelCheckpoint with `every_n_train_steps: N` saves at multiples of N only: a 657-step
    run leaves last.ckpt at step 600, and testing it gives other numbers than the model the run ended
    with. At the end of training, unless some ModelCheckpoint already saved at the final step, this
    makes the first one with `save_last` write its last.ckpt now (else the first one writes its next
    checkpoint), so `trainer.checkpoint_callback.last_model_path` names the final weights. A run without
    any ModelCheckpoint (`enable_checkpointing: false`) is left alone.
    """

    def on_train_end(self, trainer: L.Trainer, pl_module: L.LightningModule) -> None:  # noqa: D102
        callbacks = [cb for cb in trainer.checkpoint_callbacks if isinstance(cb, ModelCheckpoint)]
        if not callbacks or trainer.fast_dev_run or trainer.sanity_checking:
            return
        if any(cb._last_global_step_saved == trainer.global_step for cb in callbacks):
            return  # includes a run that took no step (nothing new to save)
        callback = next((cb for cb in callbacks if cb.save_last), callbacks[0])
        candidates = callback._monitor_candidates(trainer)
        if callback.save_last and callback.save_last != "link":
            callback._save_last_checkpoint(trainer, candidates)
        else:  # a file of its own; save_last="link" then points last.ckpt at it (not at an older one)
            callback._save_checkpoint(trainer, callback.format_checkpoint_name(candidates))
            callback._save_last_checkpoint(trainer, candidates)


def final_checkpoint_path(trainer: L.Trainer) -> str | None:
    """The file holding the weights a fit ended with (the one a ModelCheckpoint wrote at the final step,
    last.ckpt where it keeps one), or None when none was written (no checkpointing, an interrupted run)."""
    for callback in sorted(trainer.checkpoint_callbacks, key=lambda cb: not getattr(cb, "save_last", False)):
        if isinstance(callback, ModelCheckpoint) and callback._last_global_step_saved == trainer.global_step:
            if callback._last_checkpoint_saved:
                return callback._last_checkpoint_saved
    return None

"""Evaluation records of a multi-process run (DDP, FSDP, DeepSpeed) gathered on rank 0, each test item once.

Each rank evaluates its shard of the test split (the DataModule's DistributedSampler repeats a few items so
that every rank has as many); `gather_eval` collects every rank's records and ground-truth images on rank 0
and puts them in item order, dropping the repeats, so rank 0 scores and writes exactly what a single
process would. Records carry `item` (their position in the test split, `datamodules.mixed.MixedDataset`);
without it the records of several ranks are concatenated in rank order and cannot be de-duplicated.
"""
from __future__ import annotations

import warnings
from collections.abc import Callable
from typing import Any

import torch


def world() -> tuple[int, int]:
    """(world size, rank) of the default process group; (1, 0) without one."""
    if torch.distributed.is_available() and torch.distributed.is_initialized():
        return torch.distributed.get_world_size(), torch.distributed.get_rank()
    return 1, 0


def gather_to_rank_zero(obj: Any) -> list[Any] | None:
    """Every rank's `obj` on rank 0, in rank order (None on the other ranks); `[obj]` in a single process.

    A collective: every rank must call it. Objects are pickled (tensors in them are best on the CPU).
    """
    size, rank = world()
    if size == 1:
        return [obj]
    gathered: list[Any] | None = [None] * size if rank == 0 else None
    torch.distributed.gather_object(obj, gathered, dst=0)
    return gathered


def in_item_order(rows: list[Any], item: Callable[[Any], Any], ranks: int = 1) -> list[Any]:
    """`rows` sorted by item, the first row of each item kept; unchanged when some row has no item."""
    items = [item(row) for row in rows]
    if any(i is None for i in items):
        if ranks > 1:
            warnings.warn("evaluation records without an `item` cannot be de-duplicated across ranks; "
                          "samples the distributed sampler repeated are counted twice", stacklevel=2)
        return list(rows)
    first: dict[int, Any] = {}
    for i, row in zip(items, rows):
        first.setdefault(int(i), row)
    return [first[i] for i in sorted(first)]


def gather_eval(records: list[dict[str, Any]], truths: list[tuple[int | None, Any]]
                ) -> tuple[list[dict[str, Any]], list[Any]] | None:
    """On rank 0: (all ranks' records, the generation samples' ground-truth images), both in item order.

    `truths` holds (item, image) pairs of this rank's generation samples. Returns None on other ranks.
    """
    parts = gather_to_rank_zero((records, truths))
    if parts is None:
        return None
    all_records = [r for part_records, _ in parts for r in part_records]
    all_truths = [t for _, part_truths in parts for t in part_truths]
    ordered = in_item_order(all_records, lambda r: r.get("item"), len(parts))
    images = [image for _, image in in_item_order(all_truths, lambda t: t[0], len(parts))]
    return ordered, images

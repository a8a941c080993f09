"""A shuffled, DDP-aware sampler that can resume in the middle of an epoch."""
from __future__ import annotations

from collections.abc import Iterator
from typing import Any

import torch
from torch.utils.data.distributed import DistributedSampler


def _world() -> tuple[int, int]:
    """(world size, rank) from torch.distributed when it is initialised, else a single process."""
    if torch.distributed.is_available() and torch.distributed.is_initialized():
        return torch.distributed.get_world_size(), torch.distributed.get_rank()
    return 1, 0


class ResumableSampler(DistributedSampler):
    """Deterministic order over `size` items from (seed, epoch), sliced per rank, resumable mid-epoch.

    The epoch's global order is `randperm(size)` seeded with ``seed + epoch`` (or ``range(size)`` without
    shuffling), padded by repeating its head (or, with `drop_last`, cut) to a multiple of the world size;
    rank r takes global positions r, r + W, r + 2W, ... exactly as `DistributedSampler` does.

    It subclasses `DistributedSampler` so that Lightning leaves it in place under DDP instead of wrapping it
    in a second distributed sampler. Without torch.distributed it behaves as a plain shuffled sampler.

    Resuming: `state_dict(consumed)` records the epoch and how far it got; a sampler given that state
    (`load_state_dict`) yields, on its next pass over the same epoch, only the items not yet consumed.
    `len()` stays the full per-rank epoch length (Lightning counts the batches done before the resume itself).
    """

    def __init__(
        self,
        size: int,
        seed: int = 0,
        shuffle: bool = True,
        num_replicas: int | None = None,
        rank: int | None = None,
        drop_last: bool = False,
    ) -> None:
        if size < 0:
            raise ValueError(f"ResumableSampler: size must be >= 0, got {size}")
        world, here = _world()
        super().__init__(
            range(size),
            num_replicas=world if num_replicas is None else num_replicas,
            rank=here if rank is None else rank,
            shuffle=shuffle,
            seed=seed,
            drop_last=drop_last,
        )
        self.size = size
        self._resume: tuple[int, int] | None = None  # (epoch, global position) for the next pass
        self._done = 0  # per-rank items handed out in the current epoch, counted from its start

    def _global_order(self) -> list[int]:
        """The epoch's order over all `size` items (before fitting it to the world size)."""
        if self.shuffle:
            g = torch.Generator()
            g.manual_seed(self.seed + self.epoch)
            order = torch.randperm(self.size, generator=g).tolist()
        else:
            order = list(range(self.size))
        return order

    def _fit_to_world(self, rest: list[int], head: list[int]) -> list[int]:
        """Cut `rest` (drop_last) or pad it by cycling through `head` to a multiple of the world size."""
        world = self.num_replicas
        if self.drop_last:
            return rest[: len(rest) - len(rest) % world]
        missing = -len(rest) % world
        if missing and head:
            rest = rest + (head * (missing // len(head) + 1))[:missing]
        return rest

    def __iter__(self) -> Iterator[int]:
        order = self._global_order()
        start = 0
        if self._resume is not None:
            epoch, position = self._resume
            self._resume = None  # one-shot: only the first pass over the saved epoch is shortened
            if epoch == self.epoch:
                start = min(position, len(order))
        # Fitting after the cut pads exactly as an uncut epoch would when the world size is unchanged,
        # and still gives every rank the same count when it changed between save and resume.
        mine = self._fit_to_world(order[start:], order)[self.rank :: self.num_replicas]
        self._done = start // self.num_replicas
        for index in mine:
            self._done += 1
            yield index

    def __len__(self) -> int:
        return self.num_samples

    def skip(self, consumed: int) -> None:
        """Make the next pass over the current epoch start after `consumed` items of this rank."""
        if consumed < 0:
            raise ValueError(f"ResumableSampler.skip: consumed must be >= 0, got {consumed}")
        self._resume = (self.epoch, consumed * self.num_replicas)

    def state_dict(self, consumed: int | None = None) -> dict[str, Any]:
        """Position in the current epoch; `consumed` = this rank's items used since the epoch began
        (default: the items this sampler has yielded, which runs ahead of training when loaders prefetch)."""
        done = self._done if consumed is None else consumed
        return {
            "epoch": self.epoch,
            "position": done * self.num_replicas,
            "seed": self.seed,
            "size": self.size,
            "shuffle": self.shuffle,
            "num_replicas": self.num_replicas,
        }

    def load_state_dict(self, state: dict[str, Any]) -> None:
        """Continue the saved epoch where it stopped; refuses a state saved over different data."""
        for key in ("seed", "size", "shuffle"):
            if key in state and state[key] != getattr(self, key):
                raise ValueError(
                    f"ResumableSampler.load_state_dict: saved {key}={state[key]!r} but this sampler has "
                    f"{key}={getattr(self, key)!r}; resuming would not continue the same order"
                )
        self.epoch = int(state["epoch"])
        self._resume = (self.epoch, int(state["position"]))

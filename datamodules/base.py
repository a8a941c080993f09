"""SampleSource: what every data source gives the one DataModule."""
from __future__ import annotations

from abc import ABC, abstractmethod
from collections.abc import Sequence

from zoo.sample import Sample

SPLITS = ("train", "val", "test")


class SampleSource(ABC):
    """A finite, indexable collection of Samples per split.

    The DataModule selects items by task (cheap: `tasks` needs no image) and keeps extra data on
    disjoint images (`image_ids`). `sample(split, i)` builds the item, rendering or reading its image.
    """

    @abstractmethod
    def tasks(self, split: str) -> list[str]:
        """Task of every item of `split`, in index order (no image work)."""

    @abstractmethod
    def image_ids(self, split: str) -> list[str]:
        """Identity of the image behind every item of `split` ('' for text-only items)."""

    @abstractmethod
    def sample(self, split: str, index: int) -> Sample:
        """The item `index` of `split` as a Sample."""

    def splits(self) -> tuple[str, ...]:
        """Splits this source can serve."""
        return SPLITS

    def validate(self) -> None:
        """Check the whole source once, raising one error that lists every problem found."""

    def extra_items(self, split: str, kind: str, count: int) -> Sequence[Sample] | None:
        """Up to `count` extra samples of `kind` ('understanding'|'generation') on images disjoint from
        the split's own, for data-scaling studies; None if the source cannot make more."""
        return None

"""SmartWatchSource: the synthetic study data drawn on the fly (no files), by split, seed, size and bias."""
from __future__ import annotations

import os
from collections.abc import Sequence
from typing import Any

from zoo.sample import Sample

from ..base import SampleSource
import numpy as np

from .render import part_boxes, render_watch
from .spec import SPLIT_CODES, Bias, WatchSpec, sample_watch
from .tasks import TASK_CODES, conversation

DEFAULT_IMAGES = {"train": 60_000, "val": 200, "test": 200}
UNDERSTANDING = ("vqa", "caption")


EMPHASIS_PARTS = ("weather", "battery", "dial")


def check_emphasis(emphasis: dict[str, float] | None, where: str = "SmartWatchSource") -> None:
    """Raise ValueError naming `where` unless `emphasis` maps watch parts (EMPHASIS_PARTS) to weights >= 0."""
    for part, weight in (emphasis or {}).items():
        if part not in EMPHASIS_PARTS:
            raise ValueError(f"{where}: emphasis part {part!r}; expected one of {EMPHASIS_PARTS}")
        if not isinstance(weight, (int, float)) or isinstance(weight, bool) or not weight >= 0:
            raise ValueError(f"{where}: emphasis[{part!r}] must be a number >= 0, got {weight!r}")


def emphasis_map(spec: WatchSpec, size: int, emphasis: dict[str, float]) -> np.ndarray:
    """[size, size] pixel weights: 1 everywhere, `emphasis[part]` inside that part's box (where two boxes
    meet, the part named later in `emphasis` wins)."""
    weights = np.ones((size, size), dtype=np.float32)
    boxes = part_boxes(spec, size)
    for part, weight in emphasis.items():
        x0, y0, x1, y1 = boxes[part]
        weights[max(0, y0):y1, max(0, x0):x1] = float(weight)
    return weights


def watch_sample(seed: int, split: str, index: int, task: str, size: int = 224, bias: Bias | None = None,
                 emphasis: dict[str, float] | None = None) -> Sample:
    """The `task` Sample of watch (seed, split, index), rendered at `size` px.

    `bias` shapes understanding samples only; generation prompts then always state the biased attribute.
    `emphasis` ({part: weight}) gives a generation sample's written image a loss-weight map (Sample.emphasis).
    """
    spec = sample_watch(seed, split, index)
    turns, extra = conversation(spec, seed, split, index, task, bias)
    attrs: dict[str, Any] = {**spec.to_dict(), **extra, "seed": seed, "split": split, "index": index, "task": task}
    key = f"smartwatch/{seed}/{split}/{index}/{size}"
    weights = [emphasis_map(spec, size, emphasis)] if emphasis and task == "generation" else []
    return Sample(task=task, turns=turns, images=[render_watch(spec, size)], attrs=attrs, image_keys=[key],
                  emphasis=weights)


class LazySamples(Sequence):
    """A read-only list of watch Samples built when indexed (extra data can be 100k+ images)."""

    def __init__(self, build, items: list[tuple[int, str]]):
        self._build, self._items = build, items

    def __len__(self) -> int:
        return len(self._items)

    def __getitem__(self, i):
        if isinstance(i, slice):
            return LazySamples(self._build, self._items[i])
        index, task = self._items[i]
        return self._build(index, task)


class SmartWatchSource(SampleSource):
    """Three samples per watch image (in `tasks` order), drawn deterministically from (seed, split, index).

    Item ``i`` of a split is task ``tasks[i % len(tasks)]`` on image ``i // len(tasks)``. Images of the
    three splits never coincide (see `spec`). `bias` applies to understanding samples of `bias_splits`
    (training only by default, so validation and test still ask about everything). `reader` (a pixel
    AttributeReader's weights) scores decoded generated images; `feature_reader` (a FeatureReader trained on
    the model's write space) scores generated continuous features; None skips either. `emphasis`
    ({"weather" | "battery" | "dial": weight}) weighs the generation loss on the pixels of those parts
    (every split, so val/loss stays the training objective); e.g. {weather: 10} for the one code that shows
    the weather kind, which an unweighted loss leaves unlearned (issue 12's notes).
    """

    def __init__(
        self,
        images: dict[str, int] | None = None,
        train: int | None = None,
        val: int | None = None,
        test: int | None = None,
        seed: int = 0,
        size: int = 224,
        bias: Bias | None = None,
        bias_splits: Sequence[str] = ("train",),
        tasks: Sequence[str] = ("generation", "vqa", "caption"),
        reader: str | None = "zoo/assets/readers/reader-64.safetensors",
        feature_reader: str | None = None,
        emphasis: dict[str, float] | None = None,
    ):
        counts = dict(DEFAULT_IMAGES)
        counts.update(images or {})
        counts.update({k: v for k, v in (("train", train), ("val", val), ("test", test)) if v is not None})
        for split, n in counts.items():
            if split not in SPLIT_CODES:
                raise ValueError(f"SmartWatchSource: unknown split {split!r} in images; expected {tuple(SPLIT_CODES)}")
            if not isinstance(n, int) or n < 0:
                raise ValueError(f"SmartWatchSource: images[{split!r}] must be an int >= 0, got {n!r}")
        bad = [t for t in tasks if t not in TASK_CODES]
        if bad or not tasks or len(set(tasks)) != len(tasks):
            raise ValueError(f"SmartWatchSource: tasks {list(tasks)!r} must be distinct names from {tuple(TASK_CODES)}")
        bad_splits = [s for s in bias_splits if s not in SPLIT_CODES]
        if bad_splits:
            raise ValueError(f"SmartWatchSource: unknown bias_splits {bad_splits}; expected {tuple(SPLIT_CODES)}")
        if seed < 0 or size < 32:
            raise ValueError(f"SmartWatchSource: need seed >= 0 and size >= 32, got seed={seed}, size={size}")
        self.counts, self.seed, self.size = counts, seed, size
        self.bias, self.bias_splits, self.task_names = bias, tuple(bias_splits), tuple(tasks)
        check_emphasis(emphasis)
        self.emphasis = dict(emphasis) if emphasis else None
        # Readers score generated watches (see `evaluate`); None turns that part of the scoring off.
        from .reader import resolve_reader_path

        for name, path in (("reader", reader), ("feature_reader", feature_reader)):
            if path is not None and not os.path.isfile(resolve_reader_path(path)):
                raise ValueError(f"SmartWatchSource: {name} {path!r} does not exist "
                                 "(train one: python -m tools.train_reader)")
        self.reader, self.feature_reader = reader, feature_reader

    def _check_split(self, split: str) -> None:
        if split not in self.counts:
            raise ValueError(f"SmartWatchSource: unknown split {split!r}; expected one of {tuple(self.counts)}")

    def __len__(self) -> int:
        return sum(self.counts.values()) * len(self.task_names)

    def length(self, split: str) -> int:
        """Number of items of `split`."""
        self._check_split(split)
        return self.counts[split] * len(self.task_names)

    def tasks(self, split: str) -> list[str]:
        """Task of every item of `split` (no rendering)."""
        self._check_split(split)
        return list(self.task_names) * self.counts[split]

    def image_key(self, split: str, index: int) -> str:
        """The identity of image `index` of `split` (also the Sample's image key)."""
        return f"smartwatch/{self.seed}/{split}/{index}/{self.size}"

    def image_ids(self, split: str) -> list[str]:
        """Image identity of every item of `split`."""
        self._check_split(split)
        return [self.image_key(split, i // len(self.task_names)) for i in range(self.length(split))]

    def _build(self, split: str, index: int, task: str) -> Sample:
        bias = self.bias if split in self.bias_splits else None
        return watch_sample(self.seed, split, index, task, self.size, bias, self.emphasis)

    def sample(self, split: str, index: int) -> Sample:
        """Item `index` of `split`: task ``tasks[index % k]`` of image ``index // k``."""
        n = self.length(split)
        if not 0 <= index < n:
            raise IndexError(f"SmartWatchSource: index {index} out of range for split {split!r} ({n} items)")
        k = len(self.task_names)
        return self._build(split, index // k, self.task_names[index % k])

    def extra_items(self, split: str, kind: str, count: int) -> LazySamples:
        """`count` extra samples of `kind` on images beyond the split's own (built lazily when indexed).

        Understanding extras (vqa, caption alternating) use images n, n+2, n+4, ...; generation extras
        n+1, n+3, ..., so extras of the two kinds never share an image with each other or the split.
        """
        self._check_split(split)
        if kind not in ("understanding", "generation"):
            raise ValueError(f"extra_items: kind {kind!r}; expected 'understanding' or 'generation'")
        if count < 0:
            raise ValueError(f"extra_items: count must be >= 0, got {count}")
        n = self.counts[split]
        if kind == "generation":
            items = [(n + 2 * j + 1, "generation") for j in range(count)]
        else:
            items = [(n + 2 * (j // 2), UNDERSTANDING[j % 2]) for j in range(count)]
        return LazySamples(lambda index, task: self._build(split, index, task), items)

    def validate(self) -> None:
        """Build the first sample of each split and check it against the Sample contract."""
        problems = []
        for split in self.counts:
            if self.counts[split]:
                try:
                    self.sample(split, 0).validate(f"smartwatch {split}[0]")
                except ValueError as err:
                    problems.append(str(err))
        if problems:
            raise ValueError("SmartWatchSource: " + "; ".join(problems))

    def score_records(self, records: list[dict[str, Any]], images: list[Any] | None = None) -> dict[str, Any]:
        """The smart-watch scores of evaluation records, generation fidelity included (see `.evaluate`)."""
        from datamodules.smartwatch.evaluate import score_records

        return score_records(records, images, reader=self.reader, feature_reader=self.feature_reader)

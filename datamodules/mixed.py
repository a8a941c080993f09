"""MixedTaskDataModule: sources x task mix x extra data x split, the one DataModule of the project."""
from __future__ import annotations

import warnings
from bisect import bisect_right
from collections import Counter
from collections.abc import Callable, Sequence
from itertools import accumulate
from typing import Any, Literal

import numpy as np
from lightning.pytorch import LightningDataModule
from torch.utils.data import DataLoader, Dataset, DistributedSampler

from datamodules.base import SampleSource
from datamodules.sampler import ResumableSampler
from zoo.sample import TASKS, Sample

MixPreset = Literal["mixed", "understanding", "generation"]
PRESETS: dict[str, dict[str, int | float]] = {
    "mixed": {t: 1.0 for t in TASKS},
    "understanding": {"vqa": 1.0, "caption": 1.0, "text": 1.0, "generation": 0},
    "generation": {"vqa": 0, "caption": 0, "text": 0, "generation": 1.0},
}
EXTRA_TASKS = {"understanding": ("vqa", "caption", "text"), "generation": ("generation",)}


def resolve_mix(mix: dict[str, int | float] | str) -> dict[str, int | float]:
    """The full task -> amount table of a preset name or a partial dict (unlisted tasks keep everything)."""
    if isinstance(mix, str):
        if mix not in PRESETS:
            raise ValueError(f"mix: unknown preset {mix!r}; expected one of {tuple(PRESETS)} or a task -> amount dict")
        return dict(PRESETS[mix])
    if not isinstance(mix, dict):
        raise ValueError(f"mix: expected a preset name or a task -> amount dict, got {type(mix).__name__}")
    table: dict[str, int | float] = {t: 1.0 for t in TASKS}
    for task, amount in mix.items():
        if task not in TASKS:
            raise ValueError(f"mix: unknown task {task!r}; expected some of {TASKS}")
        if isinstance(amount, bool) or not isinstance(amount, (int, float)):
            raise ValueError(f"mix[{task!r}]: expected an int count or a float fraction, got {amount!r}")
        if amount < 0:
            raise ValueError(f"mix[{task!r}]: must be >= 0, got {amount}")
        if isinstance(amount, float) and amount > 1:
            raise ValueError(f"mix[{task!r}]: a float is a fraction in [0, 1], got {amount}; write an int for a count")
        if amount == 1 and isinstance(amount, int):
            warnings.warn(f"mix[{task!r}] = 1 keeps ONE {task} item (an int is a count); write 1.0 for all",
                          stacklevel=2)
        table[task] = amount
    if all(amount == 0 for amount in table.values()):
        raise ValueError(f"mix: every task is 0 ({mix}); nothing would be trained on")
    return table


def _pick(n: int, k: int, seed: int, salt: int) -> np.ndarray:
    """k of n positions, as a prefix of a seeded permutation (so smaller picks nest in larger ones), sorted."""
    order = np.random.default_rng([seed, salt]).permutation(n)
    return np.sort(order[:k])


class MixedDataset(Dataset):
    """Items of one split: (source, index) references, then extra samples from the sources' (possibly
    lazy) sequences; every item is built in `__getitem__`, so in loader workers.

    Each Sample served gets an `item` attribute, its position `i` in this dataset: evaluation records
    keep it, so the records of a multi-process run are put back in order, each item once, and each
    record is scored by the source it came from (`refs[item, 0]`).
    """

    def __init__(self, sources: list[SampleSource], split: str, refs: np.ndarray, tasks: list[str],
                 extras: list[tuple[str, Sequence[Sample]]] | None = None) -> None:
        self.sources, self.split = sources, split
        self.refs = refs  # [N, 2] int64: source number, index in that source's split (fork-friendly)
        self.tasks = tasks  # of the refs (extra items are not built to learn theirs)
        self.extras = extras or []  # (kind, sequence) chunks
        self._ends = list(accumulate(len(seq) for _, seq in self.extras))

    def __len__(self) -> int:
        return len(self.refs) + (self._ends[-1] if self._ends else 0)

    def counts(self) -> dict[str, int]:
        """Items per task, and per kind of extra data as "extra <kind>"."""
        out = Counter(self.tasks)
        for kind, seq in self.extras:
            out[f"extra {kind}"] += len(seq)
        return dict(sorted(out.items()))

    def __getitem__(self, i: int) -> Sample:
        if i < len(self.refs):
            src, index = (int(x) for x in self.refs[i])
            source = self.sources[src]
            sample = source.sample(self.split, index)
            where = f"{type(source).__name__} (source {src}) {self.split}[{index}]"
        else:
            j = i - len(self.refs)
            chunk = bisect_right(self._ends, j)
            kind, seq = self.extras[chunk]
            sample = seq[j - (self._ends[chunk - 1] if chunk else 0)]
            where = f"extra {kind} sample {j}"
            if sample.task not in EXTRA_TASKS[kind]:
                raise ValueError(f"{where}: task {sample.task!r} is not {kind}")
        sample.validate(where)
        sample.item = i  # not a dataclass field: Sample equality and repr are unchanged
        return sample


def keep_samples(batch: list[Sample]) -> list[Sample]:
    """Collate that keeps the list of Samples (when no model processor is attached)."""
    return batch


class _ResumeAwareLoader(DataLoader):
    """A DataLoader that tells Lightning it resumes mid-epoch. The position itself lives in the
    DataModule's state_dict (exact, from the trainer's batch counter), so these hooks carry nothing."""

    def state_dict(self) -> dict[str, Any]:
        """Nothing: see the class docstring."""
        return {}

    def load_state_dict(self, state_dict: dict[str, Any]) -> None:
        """Nothing to restore here."""
        return None


class MixedTaskDataModule(LightningDataModule):
    """Selects samples from `sources` by task mix, adds extra data, and serves train/val/test loaders.

    mix (train split only; val/test keep every task so each model is evaluated on both directions):
      - a preset: "mixed" (every task the sources have), "understanding" (vqa + caption + text),
        "generation" (generation only);
      - or a dict task -> amount over tasks in zoo.sample.TASKS. An int is a count of items (0 drops the
        task; more than available is an error), a float in [0, 1] a fraction of the task's items
        (rounded). Unlisted tasks keep all their items, so `--data.mix.generation 0` means "without
        generation". Items are chosen from a permutation seeded by `seed`, so smaller picks nest in larger.
    extra: {"understanding": n, "generation": n} samples on images disjoint from all splits, asked from
      the sources in order (`SampleSource.extra_items`); an error if they cannot supply n.
    max_eval_samples: cap per task on val/test (seeded pick), None for all; an int caps every task, a dict
      task -> int caps the listed tasks only (e.g. more vqa samples, since VQA scores only the first question).
    Batches: the model's `processor` (found on `trainer.lightning_module`) collates unless `collate_fn` is
    set on this object; with neither, a batch is the list of Samples.
    """

    def __init__(
        self,
        sources: list[SampleSource],
        mix: dict[str, int | float] | MixPreset = "mixed",
        extra: dict[str, int] | None = None,
        batch_size: int = 16,
        eval_batch_size: int | None = None,
        num_workers: int = 0,
        seed: int = 0,
        shuffle: bool = True,
        max_eval_samples: int | dict[str, int] | None = None,
    ) -> None:
        super().__init__()
        if not sources:
            raise ValueError("MixedTaskDataModule: sources is empty")
        for name, value in (("batch_size", batch_size), ("eval_batch_size", eval_batch_size)):
            if value is not None and value < 1:
                raise ValueError(f"MixedTaskDataModule: {name} must be >= 1, got {value}")
        if num_workers < 0:
            raise ValueError(f"MixedTaskDataModule: num_workers must be >= 0, got {num_workers}")
        per_task = isinstance(max_eval_samples, dict)
        caps = max_eval_samples if per_task else dict.fromkeys(TASKS, max_eval_samples)
        for task, cap in caps.items():
            if task not in TASKS:
                raise ValueError(f"max_eval_samples: unknown task {task!r}; expected some of {tuple(TASKS)}")
            if cap is not None and (isinstance(cap, bool) or not isinstance(cap, int) or cap < 0):
                where = f"max_eval_samples[{task!r}]" if per_task else "max_eval_samples"
                raise ValueError(f"{where}: expected a count >= 0 or null, got {cap!r}")
        self._eval_caps = {task: caps.get(task) for task in TASKS}  # None: every item of the task
        for kind, count in (extra or {}).items():
            if kind not in EXTRA_TASKS:
                raise ValueError(f"extra: unknown kind {kind!r}; expected some of {tuple(EXTRA_TASKS)}")
            if isinstance(count, bool) or not isinstance(count, int) or count < 0:
                raise ValueError(f"extra[{kind!r}]: expected a count >= 0, got {count!r}")
        self.sources = list(sources)
        self.mix = resolve_mix(mix)
        self.extra = {k: v for k, v in (extra or {}).items() if v}
        self.batch_size = batch_size
        self.eval_batch_size = eval_batch_size or batch_size
        self.num_workers = num_workers
        self.seed = seed
        self.shuffle = shuffle
        self.max_eval_samples = max_eval_samples
        self.collate_fn: Callable[[list[Sample]], Any] | None = None
        self._datasets: dict[str, MixedDataset] = {}
        self._validated = False
        self._train_sampler: ResumableSampler | None = None
        self._resume: dict[str, Any] | None = None

    # ---- selection -------------------------------------------------------------------------------
    def _validate_sources(self) -> None:
        if self._validated:
            return
        errors = []
        for source in self.sources:
            try:
                source.validate()
            except ValueError as e:
                errors.append(e)
        if len(errors) == 1:
            raise errors[0]
        if errors:
            raise ValueError("\n".join(str(e) for e in errors))
        self._validated = True

    def _pool(self, split: str) -> tuple[np.ndarray, list[str]]:
        """All (source, index) refs of `split` and their tasks."""
        refs, tasks = [], []
        for s, source in enumerate(self.sources):
            if split not in source.splits():
                continue
            for i, task in enumerate(source.tasks(split)):
                if task not in TASKS:
                    raise ValueError(f"{type(source).__name__} (source {s}) {split}[{i}]: unknown task {task!r}")
                refs.append((s, i))
                tasks.append(task)
        return np.asarray(refs, dtype=np.int64).reshape(-1, 2), tasks

    def _select(self, split: str) -> tuple[np.ndarray, list[str]]:
        """The refs kept for `split` by the mix (train) or the eval cap (val/test)."""
        refs, tasks = self._pool(split)
        by_task: dict[str, list[int]] = {t: [] for t in TASKS}
        for position, task in enumerate(tasks):
            by_task[task].append(position)
        keep: list[np.ndarray] = []
        for salt, task in enumerate(TASKS):
            positions = np.asarray(by_task[task], dtype=np.int64)
            n = len(positions)
            if split == "train":
                amount = self.mix[task]
                k = round(amount * n) if isinstance(amount, float) else amount
                if k > n:
                    raise ValueError(f"mix[{task!r}] asks for {k} items but the train split has {n} {task} items")
            else:
                cap = self._eval_caps[task]
                k = n if cap is None else min(n, cap)
            keep.append(positions[_pick(n, k, self.seed, salt)])
        chosen = np.sort(np.concatenate(keep)) if keep else np.zeros(0, dtype=np.int64)
        if split == "train" and len(chosen) == 0 and not self.extra:  # extra data alone is a valid train set
            have = dict(Counter(tasks))
            raise ValueError(f"mix {self.mix} selects no training items; the sources' train split has {have}")
        return refs[chosen], [tasks[p] for p in chosen]

    def _extra_samples(self) -> list[tuple[str, Sequence[Sample]]]:
        """The requested extra data as (kind, sequence) chunks, asked from the sources in order.

        Sequences may be lazy (100k+ images), so only the first and last item of each are built here to
        check the kind and that their images are disjoint from the source's splits; `MixedDataset`
        checks the kind of every item when it builds it.
        """
        out: list[tuple[str, Sequence[Sample]]] = []
        for kind, wanted in self.extra.items():
            got = 0
            for s, source in enumerate(self.sources):
                if got == wanted:
                    break
                items = source.extra_items("train", kind, wanted - got)
                if not items:
                    continue
                items = items[: wanted - got]
                seen = {k for split in source.splits() for k in source.image_ids(split) if k}
                for item in {0: items[0], len(items) - 1: items[-1]}.values():
                    name = f"{type(source).__name__} (source {s}): extra {kind} item"
                    if item.task not in EXTRA_TASKS[kind]:
                        raise ValueError(f"{name} has task {item.task!r}")
                    if seen.intersection(item.image_keys):
                        reused = sorted(seen.intersection(item.image_keys))[0]
                        raise ValueError(f"{name} reuses image {reused!r} of a regular split")
                out.append((kind, items))
                got += len(items)
            if got < wanted:
                raise ValueError(f"extra[{kind!r}] asks for {wanted} samples but the sources could supply only {got}")
        return out

    def dataset(self, split: str) -> MixedDataset:
        """The (cached) dataset of `split`, validating the sources first."""
        if split not in self._datasets:
            self._validate_sources()
            refs, tasks = self._select(split)
            extras = self._extra_samples() if split == "train" else None
            self._datasets[split] = MixedDataset(self.sources, split, refs, tasks, extras)
        return self._datasets[split]

    def describe(self) -> dict[str, dict[str, int]]:
        """Items per task per split (train after the mix; its extra data as "extra <kind>": count)."""
        return {split: self.dataset(split).counts() for split in ("train", "val", "test")}

    # ---- Lightning hooks ---------------------------------------------------------------------------
    def setup(self, stage: str | None = None) -> None:
        """Validate the sources and build the datasets the stage needs (before any step runs)."""
        needed = {"fit": ("train", "val"), "validate": ("val",), "test": ("test",), "predict": ("test",)}
        for split in needed.get(stage, ("train", "val", "test")) if stage else ("train", "val", "test"):
            self.dataset(split)
        if stage in ("test", "predict") and not len(self.dataset("test")):
            # Lightning would run zero batches and report nothing; an evaluation of nothing is an error.
            served = {type(s).__name__: s.splits() for s in self.sources}
            raise ValueError(f"MixedTaskDataModule: the test split is empty (sources serve {served}, "
                             f"max_eval_samples={self.max_eval_samples}); nothing to {stage}")

    def _collate(self, split: str = "train") -> Callable[[list[Sample]], Any]:
        if self.collate_fn is not None:
            return self.collate_fn
        if split == "test":
            return keep_samples  # test/predict decode from prompts: the model needs the Samples themselves
        module = getattr(self.trainer, "lightning_module", None) if self.trainer is not None else None
        processor = getattr(module, "processor", None)
        return processor if callable(processor) else keep_samples

    def _loader(self, split: str, loader: type[DataLoader] = DataLoader, **kwargs: Any) -> DataLoader:
        return loader(
            self.dataset(split),
            collate_fn=self._collate(split),
            num_workers=self.num_workers,
            persistent_workers=self.num_workers > 0,
            **kwargs,
        )

    def train_dataloader(self) -> DataLoader:
        """Shuffled by (seed, epoch), sliced per data-parallel rank, continuing a saved epoch position."""
        dataset = self.dataset("train")
        epoch, dist = 0, {}
        if self.trainer is not None:
            epoch = self.trainer.current_epoch
            dist = self.trainer.distributed_sampler_kwargs or {}
        sampler = ResumableSampler(len(dataset), seed=self.seed, shuffle=self.shuffle,
                                   num_replicas=dist.get("num_replicas"), rank=dist.get("rank"))
        if self._resume is not None:
            sampler.load_state_dict(self._resume)  # applies only if `epoch` below is the saved one
            self._resume = None
        # Lightning creates the iterator before its own set_epoch call, so the epoch must be right now.
        sampler.set_epoch(epoch)
        self._train_sampler = sampler
        return self._loader("train", _ResumeAwareLoader, batch_size=self.batch_size, sampler=sampler)

    def val_dataloader(self) -> DataLoader | list:
        """Every task of val, in order (an empty list when no source serves val)."""
        return self._loader("val", batch_size=self.eval_batch_size) if len(self.dataset("val")) else []

    def test_dataloader(self) -> DataLoader | list:
        """Every task of test, in order (an empty list when no source serves test).

        Under a multi-process strategy each rank takes every W-th item (torch's DistributedSampler, the
        last ones repeated so every rank has as many, hence at least one, batch): Lightning's own choice
        for predict gives a rank nothing when there are fewer items than ranks, and that rank would then
        never reach the end-of-epoch gather. The model gathers the records and drops the repeats by `item`.
        """
        dataset = self.dataset("test")
        if not len(dataset):
            return []
        dist = (self.trainer.distributed_sampler_kwargs or {}) if self.trainer is not None else {}
        sampler = None
        if dist.get("num_replicas", 1) > 1:
            sampler = DistributedSampler(dataset, num_replicas=dist["num_replicas"], rank=dist["rank"], shuffle=False)
        return self._loader("test", batch_size=self.eval_batch_size, sampler=sampler)

    def predict_dataloader(self) -> DataLoader | list:
        """The test split."""
        return self.test_dataloader()

    def score_records(self, records: list[dict[str, Any]], images: list[Any] | None = None) -> dict[str, Any]:
        """Domain scores of evaluation records: each source that can score scores the records of its own items.

        Records are routed by their `item` (a test-split position, see `MixedDataset`); `images` (aligned
        with the generation records) go along with their records. Records without an item go to every
        source. With one scoring source its scores are returned as they are; when several sources return
        scores, each source's are nested under "source<N>" (N its place in `sources`), so none overwrites another.
        """
        owner = self._record_sources(records)
        gen_images = iter(images) if images is not None else None
        routed: dict[int, tuple[list[dict[str, Any]], list[Any]]] = {s: ([], []) for s in range(len(self.sources))}
        for record, source in zip(records, owner):
            image = next(gen_images, None) if gen_images is not None and record.get("task") == "generation" else None
            for s in range(len(self.sources)) if source is None else (source,):
                routed[s][0].append(record)
                if record.get("task") == "generation":
                    routed[s][1].append(image)
        results: dict[int, dict[str, Any]] = {}
        for s, source in enumerate(self.sources):
            scorer = getattr(source, "score_records", None)
            own, own_images = routed[s]
            if callable(scorer) and own:
                result = scorer(own, own_images if images is not None else None)
                if result:
                    results[s] = result
        if len(results) == 1:
            return next(iter(results.values()))
        return {f"source{s}": result for s, result in results.items()}

    def _record_sources(self, records: list[dict[str, Any]]) -> list[int | None]:
        """The source number of each record's test item, None where a record has no (valid) item."""
        dataset = self._datasets.get("test")
        refs = dataset.refs if dataset is not None else np.zeros((0, 2), dtype=np.int64)
        out: list[int | None] = []
        for record in records:
            item = record.get("item")
            ok = isinstance(item, (int, np.integer)) and 0 <= item < len(refs)
            out.append(int(refs[item, 0]) if ok else None)
        return out

    def state_dict(self) -> dict[str, Any]:
        """The train sampler's position, so a checkpoint taken mid-epoch resumes without repeats or gaps."""
        sampler = self._train_sampler
        if sampler is None:
            return {"train_sampler": self._resume} if self._resume else {}
        consumed = None
        if self.trainer is not None:
            # `processed` (not `completed`) counts the batch whose on_train_batch_end saves the checkpoint.
            batches = self.trainer.fit_loop.epoch_loop.batch_progress.current.processed
            consumed = min(batches * self.batch_size, len(sampler))
        return {"train_sampler": sampler.state_dict(consumed)}

    def load_state_dict(self, state_dict: dict[str, Any]) -> None:
        """Keep the saved position for the next train_dataloader() (Lightning restores before building it)."""
        self._resume = state_dict.get("train_sampler")

"""MixedTaskDataModule and ResumableSampler: mixes, extra data, determinism, resuming, DDP slicing."""
from __future__ import annotations

import json
from collections.abc import Sequence
from types import SimpleNamespace

import pytest
import torch
from PIL import Image

from datamodules.base import SampleSource
from datamodules.mixed import MixedTaskDataModule, keep_samples, resolve_mix
from datamodules.sampler import ResumableSampler
from zoo.sample import Sample

PER_IMAGE = ("vqa", "caption", "generation")


class FakeSource(SampleSource):
    """`images[split]` images, each giving a vqa, a caption and a generation item, then `text` text items."""

    def __init__(self, images=None, text=0, extra_capacity=0, reuse_images=False, name="f"):
        self.images = images or {"train": 10, "val": 4, "test": 4}
        self.text, self.extra_capacity, self.reuse_images, self.name = text, extra_capacity, reuse_images, name
        self.validated = 0

    def splits(self):
        return tuple(self.images)

    def validate(self):
        self.validated += 1

    def tasks(self, split):
        return [PER_IMAGE[i % 3] for i in range(3 * self.images[split])] + ["text"] * self.text

    def image_ids(self, split):
        return [f"{self.name}/{split}/{i // 3}" for i in range(3 * self.images[split])] + [""] * self.text

    def _make(self, task, key, attrs):
        image = Image.new("RGB", (4, 4), (len(key) * 7 % 256, 0, 0))
        if task == "text":
            return Sample("text", [{"role": "user", "content": "hi"}, {"role": "assistant", "content": "yo"}],
                          attrs=attrs)
        if task == "generation":
            turns = [{"role": "user", "content": "draw"}, {"role": "assistant", "content": "<image>"}]
        else:
            turns = [{"role": "user", "content": "<image>\nwhat?"}, {"role": "assistant", "content": "x"}]
        return Sample(task, turns, [image], attrs, [key])

    def sample(self, split, index):
        task = self.tasks(split)[index]
        key = self.image_ids(split)[index]
        return self._make(task, key, {"key": f"{self.name}/{split}#{index}"})

    def extra_items(self, split, kind, count):
        if not self.extra_capacity:
            return None
        tasks = ("vqa", "caption") if kind == "understanding" else ("generation",)
        out = []
        for j in range(min(count, self.extra_capacity)):
            key = f"{self.name}/{split}/0" if self.reuse_images else f"{self.name}/extra/{kind}/{j}"
            out.append(self._make(tasks[j % len(tasks)], key, {"key": f"{self.name}/extra-{kind}#{j}"}))
        return out


def keys(samples):
    return [s.attrs["key"] for s in samples]


# ---- mix --------------------------------------------------------------------------------------

def test_presets():
    src = FakeSource(text=5)
    counts = {m: MixedTaskDataModule([src], mix=m).describe()["train"]
              for m in ("mixed", "understanding", "generation")}
    assert counts["mixed"] == {"caption": 10, "generation": 10, "text": 5, "vqa": 10}
    assert counts["understanding"] == {"caption": 10, "text": 5, "vqa": 10}
    assert counts["generation"] == {"generation": 10}


def test_dict_mix_fractions_counts_and_unlisted_tasks():
    dm = MixedTaskDataModule([FakeSource(images={"train": 40, "val": 2, "test": 2})],
                             mix={"vqa": 0.25, "caption": 7, "generation": 0})
    assert dm.describe()["train"] == {"caption": 7, "vqa": 10}
    dm = MixedTaskDataModule([FakeSource()], mix={"generation": 0})  # the CLI's --data.mix.generation 0
    assert dm.describe()["train"] == {"caption": 10, "vqa": 10}
    with pytest.warns(UserWarning, match="keeps ONE vqa item"):
        dm = MixedTaskDataModule([FakeSource()], mix={"generation": 1.0, "vqa": 1})  # 1.0 = all; 1 = one item
    assert dm.describe()["train"] == {"caption": 10, "generation": 10, "vqa": 1}


@pytest.mark.parametrize(
    ("mix", "match"),
    [
        ({"ocr": 0.5}, "unknown task 'ocr'"),
        ({"vqa": -1}, r"mix\['vqa'\]: must be >= 0"),
        ({"vqa": 1.5}, "a float is a fraction in"),
        ({"vqa": True}, "expected an int count or a float fraction"),
        ({"vqa": 0, "caption": 0.0, "generation": 0, "text": 0}, "every task is 0"),
        ("everything", "unknown preset 'everything'"),
    ],
)
def test_bad_mix(mix, match):
    with pytest.raises(ValueError, match=match):
        MixedTaskDataModule([FakeSource()], mix=mix)


def test_mix_needing_more_than_available_or_selecting_nothing():
    with pytest.raises(ValueError, match=r"mix\['vqa'\] asks for 11 items but the train split has 10 vqa"):
        MixedTaskDataModule([FakeSource()], mix={"vqa": 11}).setup("fit")
    only_text = FakeSource(images={"train": 0, "val": 1, "test": 1}, text=3)
    with pytest.raises(ValueError, match="selects no training items; .*'text': 3"):
        MixedTaskDataModule([only_text], mix="generation").setup("fit")
    assert resolve_mix("generation")["generation"] == 1.0


def test_selection_is_seeded_and_nested():
    src = FakeSource(images={"train": 60, "val": 1, "test": 1})

    def chosen(seed, fraction):
        dm = MixedTaskDataModule([src], mix={"vqa": fraction, "caption": 0, "generation": 0}, seed=seed)
        return {tuple(r) for r in dm.dataset("train").refs}

    assert chosen(1, 0.5) == chosen(1, 0.5)
    assert chosen(1, 0.5) != chosen(2, 0.5)
    assert chosen(1, 0.25) < chosen(1, 0.5)  # smaller picks nest in larger ones (data-scaling studies)
    assert len(chosen(1, 0.25)) == 15


def test_eval_splits_keep_every_task_and_cap_per_task():
    dm = MixedTaskDataModule([FakeSource(text=5)], mix="understanding", max_eval_samples=3)
    described = dm.describe()
    assert "generation" not in described["train"]
    assert described["val"] == {"caption": 3, "generation": 3, "text": 3, "vqa": 3}
    full = MixedTaskDataModule([FakeSource()], mix="generation").describe()
    assert full["test"] == {"caption": 4, "generation": 4, "vqa": 4}


def test_eval_cap_per_task_from_a_dict():
    dm = MixedTaskDataModule([FakeSource(text=5)], max_eval_samples={"vqa": 4, "caption": 1})
    assert dm.describe()["val"] == {"caption": 1, "generation": 4, "text": 5, "vqa": 4}  # unlisted: all
    with pytest.raises(ValueError, match="max_eval_samples: unknown task 'vqqa'"):
        MixedTaskDataModule([FakeSource()], max_eval_samples={"vqqa": 4})
    with pytest.raises(ValueError, match=r"max_eval_samples\['vqa'\]: expected a count >= 0"):
        MixedTaskDataModule([FakeSource()], max_eval_samples={"vqa": -1})
    with pytest.raises(ValueError, match="max_eval_samples: expected a count >= 0"):
        MixedTaskDataModule([FakeSource()], max_eval_samples=-1)


def test_several_sources_are_pooled_and_validated_once():
    a, b = FakeSource(name="a"), FakeSource(images={"train": 2}, name="b")  # b serves train only
    dm = MixedTaskDataModule([a, b], mix={"vqa": 12, "caption": 0, "generation": 0})
    dm.setup("fit")
    dm.setup("test")
    assert dm.describe()["train"] == {"vqa": 12} and dm.describe()["val"]["vqa"] == 4
    assert a.validated == 1 and b.validated == 1
    assert all(s.task == "vqa" for s in (dm.dataset("train")[i] for i in range(12)))


# ---- extra data -------------------------------------------------------------------------------

def test_extra_data_is_added_and_disjoint():
    src = FakeSource(extra_capacity=100)
    dm = MixedTaskDataModule([src], mix="mixed", extra={"understanding": 6, "generation": 4})
    train = dm.dataset("train")
    assert len(train) == 30 + 10
    assert dm.describe()["train"] == {"caption": 10, "extra generation": 4, "extra understanding": 6,
                                      "generation": 10, "vqa": 10}
    extra = [train[i] for i in range(30, 40)]
    base_images = {k for split in src.splits() for k in src.image_ids(split)}
    assert all(not base_images.intersection(s.image_keys) for s in extra)
    assert len(dm.dataset("val")) == 12  # extras go to train only


def test_extra_data_alone_is_a_train_set():
    # A mix that selects nothing of the splits plus extra data trains on the extras only (a continuation on
    # fresh images, e.g.); without extras the same mix is an error (test above).
    dm = MixedTaskDataModule([FakeSource(extra_capacity=100)], mix={"vqa": 0, "caption": 0, "generation": 0},
                             extra={"generation": 4})
    assert dm.describe()["train"] == {"extra generation": 4}
    assert len(dm.dataset("train")) == 4


def test_extra_data_spread_over_sources_and_errors():
    a, b = FakeSource(name="a", extra_capacity=3), FakeSource(name="b", extra_capacity=5)
    dm = MixedTaskDataModule([a, b], extra={"generation": 7})
    train = dm.dataset("train")
    assert [k.split("/")[0] for k in keys(train[i] for i in range(60, 67))] == ["a"] * 3 + ["b"] * 4
    with pytest.raises(ValueError, match=r"extra\['generation'\] asks for 9 samples but .* only 8"):
        MixedTaskDataModule([a, b], extra={"generation": 9}).setup("fit")
    with pytest.raises(ValueError, match="could supply only 0"):
        MixedTaskDataModule([FakeSource()], extra={"understanding": 1}).setup("fit")
    with pytest.raises(ValueError, match="reuses image 'f/train/0'"):
        MixedTaskDataModule([FakeSource(extra_capacity=5, reuse_images=True)], extra={"generation": 2}).setup("fit")
    with pytest.raises(ValueError, match="unknown kind 'both'"):
        MixedTaskDataModule([FakeSource()], extra={"both": 2})


class LazyExtras(FakeSource):
    """Extra items as a lazy sequence (as a real source should give 100k+ of them), counting builds."""

    def __init__(self, wrong_at=None, **kw):
        super().__init__(**kw)
        self.built, self.wrong_at = 0, wrong_at

    def extra_items(self, split, kind, count):
        source = self

        class Lazy(Sequence):
            def __init__(self, ids):
                self.ids = ids

            def __len__(self):
                return len(self.ids)

            def __getitem__(self, i):
                if isinstance(i, slice):
                    return Lazy(self.ids[i])
                source.built += 1
                task = "vqa" if self.ids[i] == source.wrong_at else "generation"
                return source._make(task, f"extra/{self.ids[i]}", {"key": f"extra#{self.ids[i]}"})

        return Lazy(list(range(count)))


def test_lazy_extra_data_is_built_only_when_used():
    src = LazyExtras(wrong_at=500)
    dm = MixedTaskDataModule([src], extra={"generation": 1000})
    dm.setup("fit")
    assert src.built <= 2 and len(dm.dataset("train")) == 1030
    assert dm.dataset("train")[1029].attrs["key"] == "extra#999"
    with pytest.raises(ValueError, match="extra generation sample 500: task 'vqa' is not generation"):
        dm.dataset("train")[530]


# ---- loaders ----------------------------------------------------------------------------------

def _trainer(epoch=0, rank=0, world=1, module=None):
    return SimpleNamespace(current_epoch=epoch, lightning_module=module,
                           distributed_sampler_kwargs={"num_replicas": world, "rank": rank} if world > 1 else None)


def _order(dm):
    return [k for batch in dm.train_dataloader() for k in keys(batch)]


def test_collate_default_processor_and_explicit():
    dm = MixedTaskDataModule([FakeSource()], batch_size=4)
    dm.setup("fit")
    batch = next(iter(dm.val_dataloader()))
    assert isinstance(batch, list) and all(isinstance(s, Sample) for s in batch) and len(batch) == 4
    assert keys(batch) == ["f/val#0", "f/val#1", "f/val#2", "f/val#3"]  # eval loaders keep order
    dm.trainer = _trainer(module=SimpleNamespace(processor=lambda b: {"n": len(b)}))
    assert next(iter(dm.train_dataloader())) == {"n": 4}
    dm.collate_fn = lambda b: "mine"
    assert next(iter(dm.test_dataloader())) == "mine"
    assert keep_samples(batch) is batch


def test_train_order_is_seeded_and_changes_with_epoch():
    def order(seed, epoch):
        dm = MixedTaskDataModule([FakeSource()], batch_size=4, seed=seed)
        dm.trainer = _trainer(epoch=epoch)
        return _order(dm)

    assert order(0, 0) == order(0, 0)
    assert sorted(order(0, 0)) == sorted(f"f/train#{i}" for i in range(30))
    assert order(0, 0) != order(1, 0) and order(0, 0) != order(0, 1)
    dm = MixedTaskDataModule([FakeSource()], shuffle=False)
    assert _order(dm) == [f"f/train#{i}" for i in range(30)]


def test_ddp_slicing_through_the_trainer():
    orders = []
    for rank in range(3):
        dm = MixedTaskDataModule([FakeSource()], batch_size=4, seed=3)
        dm.trainer = _trainer(rank=rank, world=3)
        orders.append(_order(dm))
    assert [len(o) for o in orders] == [10, 10, 10]
    assert sorted(sum(orders, [])) == sorted(f"f/train#{i}" for i in range(30))


def test_workers_render_samples():
    dm = MixedTaskDataModule([FakeSource()], batch_size=8, num_workers=2)
    got = [k for batch in dm.val_dataloader() for k in keys(batch)]
    assert got == [f"f/val#{i}" for i in range(12)]


def test_yaml_config_builds_sources(tmp_path):
    from jsonargparse import ArgumentParser

    Image.new("RGB", (4, 4)).save(tmp_path / "0.png")
    records = [{"task": "caption", "image": "0.png", "conversations": [
        {"from": "human", "value": "<image>\nDescribe."}, {"from": "gpt", "value": "Black."}]}]
    (tmp_path / "d.json").write_text(json.dumps(records))
    config = tmp_path / "data.yaml"
    config.write_text(
        "sources:\n"
        "  - class_path: datamodules.llava.LlavaJsonSource\n"
        f"    init_args: {{json_path: {tmp_path}/d.json, image_root: {tmp_path}, test_json: {tmp_path}/d.json}}\n"
        "mix: {caption: 1.0, generation: 0.5}\n"
        "batch_size: 2\n"
    )
    parser = ArgumentParser(parser_mode="omegaconf")
    parser.add_class_arguments(MixedTaskDataModule, "data")
    cfg = parser.parse_args([f"--data={config}", "--data.mix.vqa=0"])
    dm = parser.instantiate_classes(cfg).data
    assert dm.mix == {"vqa": 0, "caption": 1.0, "generation": 0.5, "text": 1.0}
    assert dm.describe() == {"train": {"caption": 1}, "val": {}, "test": {"caption": 1}}
    assert dm.val_dataloader() == []


# ---- sampler ----------------------------------------------------------------------------------

def test_sampler_resumes_within_an_epoch():
    full = ResumableSampler(23, seed=5)
    full.set_epoch(2)
    order = list(full)
    assert sorted(order) == list(range(23)) and len(full) == 23
    for consumed in (0, 7, 23):
        s = ResumableSampler(23, seed=5)
        s.set_epoch(2)
        it = iter(s)
        head = [next(it) for _ in range(consumed)]
        state = json.loads(json.dumps(s.state_dict()))  # what a checkpoint keeps must be plain data
        resumed = ResumableSampler(23, seed=5)
        resumed.load_state_dict(state)
        tail = list(resumed)
        assert head + tail == order and len(set(head + tail)) == 23
        assert list(resumed) == order  # only the first pass over the saved epoch is shortened
    s = ResumableSampler(23, seed=5)
    s.set_epoch(2)
    s.skip(20)
    assert list(s) == order[20:]


def test_sampler_state_for_another_epoch_or_data():
    s = ResumableSampler(10, seed=1)
    s.load_state_dict({"epoch": 0, "position": 4, "seed": 1, "size": 10, "shuffle": True})
    s.set_epoch(1)  # training moved on: the saved position no longer applies
    assert len(list(s)) == 10
    with pytest.raises(ValueError, match="saved seed=2 but this sampler has seed=1"):
        s.load_state_dict({"epoch": 0, "position": 4, "seed": 2, "size": 10})
    with pytest.raises(ValueError, match="saved size=11"):
        s.load_state_dict({"epoch": 0, "position": 4, "seed": 1, "size": 11})


def test_sampler_ddp_slicing_padding_and_resume():
    size, world = 23, 3
    ranks = [ResumableSampler(size, seed=7, num_replicas=world, rank=r) for r in range(world)]
    parts = [list(s) for s in ranks]
    assert [len(p) for p in parts] == [8, 8, 8] and all(len(s) == 8 for s in ranks)
    flat = sum(parts, [])
    assert set(flat) == set(range(size)) and len(flat) - len(set(flat)) == 1  # one padded repeat
    reference = torch.utils.data.DistributedSampler(range(size), world, 1, seed=7)
    assert parts[1] == list(reference)
    resumed = []
    for r in range(world):
        s = ResumableSampler(size, seed=7, num_replicas=world, rank=r)
        state = s.state_dict(consumed=3)
        again = ResumableSampler(size, seed=7, num_replicas=world, rank=r)
        again.load_state_dict(state)
        resumed.append(list(again))
    assert resumed == [p[3:] for p in parts]
    dropped = [list(ResumableSampler(size, num_replicas=world, rank=r, drop_last=True)) for r in range(world)]
    assert [len(p) for p in dropped] == [7, 7, 7] and len(set(sum(dropped, []))) == 21


def test_sampler_resume_on_a_different_world_size():
    order = list(ResumableSampler(23, seed=2))
    state = ResumableSampler(23, seed=2, num_replicas=2, rank=0).state_dict(consumed=4)  # 8 items used in all
    parts = []
    for r in range(3):
        s = ResumableSampler(23, seed=2, num_replicas=3, rank=r)
        s.load_state_dict(state)
        parts.append(list(s))
    assert len({len(p) for p in parts}) == 1  # equal per-rank counts keep DDP in step
    flat = sum(parts, [])
    assert set(order[8:]) <= set(flat) and len(flat) - len(order[8:]) < 3


# ---- resuming inside Lightning ----------------------------------------------------------------

def _fit(tmp_path, seen, ckpt_path=None, every=None):
    import warnings

    from lightning.pytorch import LightningModule, Trainer
    from lightning.pytorch.callbacks import ModelCheckpoint

    class Recorder(LightningModule):
        def __init__(self):
            super().__init__()
            self.layer = torch.nn.Linear(1, 1)

        @staticmethod
        def processor(batch):
            return {"keys": keys(batch), "x": torch.ones(len(batch), 1)}

        def training_step(self, batch, batch_idx):
            seen.append(tuple(batch["keys"]))
            return self.layer(batch["x"]).mean()

        def configure_optimizers(self):
            return torch.optim.SGD(self.parameters(), lr=0.01)

    callbacks = [ModelCheckpoint(dirpath=tmp_path, every_n_train_steps=every, save_top_k=-1)] if every else []
    trainer = Trainer(max_epochs=2, limit_val_batches=0, logger=False, enable_progress_bar=False,
                      enable_model_summary=False, enable_checkpointing=bool(every), callbacks=callbacks,
                      accelerator="cpu", devices=1)
    dm = MixedTaskDataModule([FakeSource()], batch_size=4, seed=11)
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        trainer.fit(Recorder(), datamodule=dm, ckpt_path=ckpt_path)
    assert not [w for w in caught if "not resumable" in str(w.message)]


def test_lightning_resume_mid_epoch_continues_the_same_order(tmp_path):
    full: list = []
    _fit(tmp_path, full, every=3)
    assert len(full) == 16  # 30 items / batch 4 = 8 batches per epoch, 2 epochs
    assert sorted(k for b in full[:8] for k in b) == sorted(f"f/train#{i}" for i in range(30))
    assert full[:8] != full[8:]
    for step in (3, 9):  # mid-epoch 0 and mid-epoch 1
        resumed: list = []
        _fit(tmp_path / "again", resumed, ckpt_path=str(tmp_path / f"epoch={step // 8}-step={step}.ckpt"))
        assert resumed == full[step:]

"""`unizoo measure`: probes of read tokens, the reader on written spaces, generation fidelity per position."""
from __future__ import annotations

import json

import lightning as L
import pytest
import torch
import yaml

from datamodules.mixed import MixedTaskDataModule
from datamodules.smartwatch.source import SmartWatchSource
from tools import measure, measure_attributes
from zoo.catalog.presets import preset
from zoo.config import build


def _recipe(tmp_path, name: str):
    path = tmp_path / f"{name}.yaml"
    path.write_text(yaml.safe_dump({"model": preset(name, "smoke")}))
    return path


def test_spaces_probes_read_tokens_and_reads_back_decodable_written_spaces(tmp_path):
    out = tmp_path / "m"
    results = measure.spaces([str(_recipe(tmp_path, "vq-vq")), str(_recipe(tmp_path, "siglip-siglip"))],
                             images=20, fit=40, out=str(out))
    vq, siglip = results[str(tmp_path / "vq-vq.yaml")], results[str(tmp_path / "siglip-siglip.yaml")]
    assert set(vq["read"]) >= {"hour", "weather", "weather_pos", "battery_pos", "minute", "battery_decile"}
    assert all(0.0 <= v <= 1.0 for v in vq["read"].values())
    assert set(vq["written"]) >= {"hour", "weather", "battery_mae"}  # a VQ space decodes: the reader reads it
    assert siglip["written"] == "no pixel decoder"
    saved = json.loads((out / "spaces.json").read_text())
    assert saved["protocol"]["test_images"] == 20 and len(saved["results"]) == 2


def _vq_run(tmp_path):
    torch.manual_seed(0)
    model = build(preset("vq-vq", "smoke", lr=1e-3, projector_lr=1e-3, weight_decay=0.0, warmup_ratio=0.0))
    data = MixedTaskDataModule([SmartWatchSource(train=4, val=1, test=1, size=32)], batch_size=4)
    trainer = L.Trainer(max_steps=2, logger=False, enable_checkpointing=False, enable_progress_bar=False,
                        enable_model_summary=False, limit_val_batches=0, accelerator="cpu", devices=1)
    trainer.fit(model, datamodule=data)
    run = tmp_path / "run"
    (run / "checkpoints").mkdir(parents=True)
    trainer.save_checkpoint(run / "checkpoints" / "last.ckpt")
    return run, model


def test_generation_compares_teacher_forced_and_free_running_per_position(tmp_path):
    run, model = _vq_run(tmp_path)
    result = measure.generation(str(run), images=6, out=str(tmp_path / "m"))
    n = model.write_space.num_tokens
    assert result["metric"] == "code_accuracy" and result["images"] == 6
    assert len(result["teacher_forced_per_position"]) == len(result["free_running_per_position"]) == n
    assert 0.0 <= result["free_running_mean"] <= 1.0
    assert (tmp_path / "m" / "generation-run.png").is_file()  # named by the run folder


def test_guidance_reports_reader_agreement_per_scale_on_val(tmp_path):
    run, _ = _vq_run(tmp_path)
    result = measure.guidance(str(run), scales=[1.0, 2.0], images=4, out=str(tmp_path / "m"))
    assert [r["guidance_scale"] for r in result["rows"]] == [1.0, 2.0] and result["split"] == "val"
    assert all(0.0 <= r["weather_pos"] <= 1.0 for r in result["rows"] if "weather_pos" in r)
    assert all("hour" in r for r in result["rows"])


def test_prompt_gap_is_shuffled_minus_own_image_loss_per_checkpoint(tmp_path):
    import shutil

    run, _ = _vq_run(tmp_path)
    shutil.copy(run / "checkpoints" / "last.ckpt", run / "checkpoints" / "step00002.ckpt")
    result = measure.prompt(str(run), images=4, out=str(tmp_path / "m"))
    assert [r["step"] for r in result["rows"]] == [2, None]  # step checkpoints by step, then last.ckpt
    row = result["rows"][-1]
    assert row["gap"] == pytest.approx(row["shuffled_loss"] - row["own_loss"], abs=1e-6)
    # recompute the own loss directly, and check a shuffled sample keeps its image but asks another's request
    from datamodules.smartwatch.source import SmartWatchSource as Source
    from tools.generate import load_model

    model = load_model(run / "checkpoints" / "last.ckpt").eval()
    source = Source(train=1, val=12, test=1, seed=0, size=32)
    own = [s for s in (source.sample("val", i) for i in range(12)) if s.task == "generation"][:4]
    with torch.no_grad():
        direct = float(model(model.processor(own))["image_loss"].mean())
    assert row["own_loss"] == pytest.approx(direct, rel=1e-5)
    swapped = measure._with_prompt_of(own[0], own[1])
    assert swapped.turns[0] == own[1].turns[0] and swapped.turns[1:] == own[0].turns[1:]
    assert swapped.images == own[0].images


def test_measures_take_a_zoo_model_by_name_with_its_cards_data(tmp_path):
    from tools.generate import load_model
    from tools.probe import _watch_source
    from zoo.catalog.registry import get_entry

    name = "smartwatch-vq-vq-drawing"
    model = load_model(f"zoo:{name}")
    assert type(model).__name__ == get_entry(name).class_path.rsplit(".", 1)[-1]
    source = get_entry(name).card.test_protocol["data"]["init_args"]["sources"][0]["init_args"]
    assert _watch_source(f"zoo:{name}", model) == (source["seed"], source["size"])
    result = measure.guidance(f"zoo:{name}", scales=[1.0], images=4, out=str(tmp_path / "m"))
    assert result["checkpoint"] == f"zoo:{name}" and result["images"] == 4
    assert (tmp_path / "m" / f"guidance-{name}.json").is_file()


def test_attribute_change_rebuilds_the_same_prompt_with_one_value_changed():
    from datamodules.smartwatch.evaluate import spec_from_attrs
    from datamodules.smartwatch.source import watch_sample
    from tools.measure_attributes import ATTRIBUTES, changed_watch, with_changed_prompt

    for index in range(30):
        sample = watch_sample(0, "val", index, "generation", size=32)
        spec = spec_from_attrs(sample.attrs)
        for attribute in ATTRIBUTES:
            other = changed_watch(spec, attribute)
            fields = {f for f in ("hour", "weather", "battery", "weather_pos", "battery_pos")
                      if getattr(other, f) != getattr(spec, f)}
            assert fields == {"hour" if attribute == "time" else attribute}
            if attribute not in sample.attrs["mentioned"]:
                continue
            changed = with_changed_prompt(sample, attribute)
            before, after = sample.turns[0]["content"].split(), changed.turns[0]["content"].split()
            assert len(before) == len(after) and sum(a != b for a, b in zip(before, after)) == 1  # one word
            assert changed.images == sample.images and changed.turns[1:] == sample.turns[1:]


def test_attributes_reports_a_gap_per_stated_attribute(tmp_path):
    run, _ = _vq_run(tmp_path)
    result = measure_attributes.attributes(str(run), images=4, out=str(tmp_path / "m"))
    assert [r["attribute"] for r in result["rows"]] == list(measure_attributes.ATTRIBUTES)
    for row in result["rows"]:
        assert 1 <= row["images"] <= 4 and row["gap"] == pytest.approx(row["changed_loss"] - row["own_loss"], abs=1e-4)
        # the part's loss counts each token by its share of the box: positive, and below the whole image's
        assert row["part"] == measure_attributes.PART[row["attribute"]]
        assert 0 < row["part_own_loss"] < row["own_loss"]
    assert (tmp_path / "m" / "attributes-run.json").is_file()


def test_part_mask_covers_exactly_the_parts_box():
    from datamodules.smartwatch.evaluate import spec_from_attrs
    from datamodules.smartwatch.render import part_boxes
    from datamodules.smartwatch.source import SmartWatchSource

    source = SmartWatchSource(train=1, val=6, test=1, size=64, seed=3)
    sample = next(s for s in (source.sample("val", i) for i in range(6)) if s.task == "generation")
    for part in ("weather", "battery", "dial"):
        mask = measure_attributes.with_part_mask(sample, part, 64).emphasis[0]
        x0, y0, x1, y1 = part_boxes(spec_from_attrs(sample.attrs, "t"), 64)[part]
        assert mask.sum() == (min(x1, 64) - max(0, x0)) * (min(y1, 64) - max(0, y0)) and mask.max() == 1.0
        assert mask[max(0, y0):y1, max(0, x0):x1].all()

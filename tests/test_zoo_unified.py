"""Shipped unified models load from the zoo (sha256 verified) and recompute their card's metrics.

Each card states its test protocol (split, seed, sample counts, the data spec, decoding, the machine):
this test runs that protocol on the zoo weights. On the machine that wrote the card the metrics must
come out exactly; `python tests/test_zoo_unified.py NAME` prints them (and the machine) for a card.
"""
from __future__ import annotations

import json
import os
import platform
import sys
import tempfile
from collections import Counter
from pathlib import Path

import lightning as L
import pytest
import torch

from zoo.catalog.registry import create_model, get_entry, list_models
from zoo.config import build

# Other machines (another CPU, kernel dispatch level, torch build or thread count) round floats
# differently, and greedy decoding can flip an answer on a near-tie: a few answers of the 57-300 behind
# each score. This tolerance applies only there; on the card's own machine the match is exact.
OTHER_MACHINE_TOLERANCE = 0.06


def machine() -> str:
    """What a card's float results depend on: CPU model, kernel dispatch level, torch build, threads."""
    cpu = platform.processor() or "unknown CPU"
    if os.path.exists("/proc/cpuinfo"):
        with open("/proc/cpuinfo") as f:
            cpu = next((line.split(":", 1)[1].strip() for line in f if line.startswith("model name")), cpu)
    return (f"{platform.machine()} {cpu}, {torch.backends.cpu.get_cpu_capability()} kernels, "
            f"torch {torch.__version__}, {torch.get_num_threads()} threads")


def measure(name: str, out_dir: str) -> tuple[dict[str, float], dict[str, int]]:
    """The card's metrics of zoo model `name` recomputed on its card's test protocol, and the samples per task."""
    entry = get_entry(name)
    protocol, keys = entry.card.test_protocol, list(entry.card.metrics)
    L.seed_everything(protocol["seed"], verbose=False)
    spec = protocol["data"]
    args = {**spec["init_args"], "sources": [build(s) for s in spec["init_args"]["sources"]]}
    datamodule = build({"class_path": spec["class_path"], "init_args": args})
    model = create_model(name, pretrained=True)
    trainer = L.Trainer(accelerator="cpu", devices=1, logger=False, enable_checkpointing=False,
                        enable_progress_bar=False, enable_model_summary=False, default_root_dir=out_dir)
    assert protocol["split"] == "test"
    trainer.test(model, datamodule=datamodule, verbose=False)
    metrics = model.eval_metrics
    measured = {key: lookup(metrics, key) for key in keys}
    answers = Path(model.eval_outputs["answers"]).read_text().splitlines()
    return measured, dict(Counter(json.loads(row)["task"] for row in answers))


def lookup(metrics: dict, key: str) -> float:
    """A card key's value: "a/b/c" is metrics["a"]["b"]["c"]; a key without "/" is "<group>_<metric>"
    (vqa_position is metrics["vqa"]["position"])."""
    value = metrics
    for part in key.split("/") if "/" in key else key.split("_", 1):
        value = value[part]
    return value


@pytest.mark.parametrize("name", list_models("smartwatch-*", kind="unified"))
def test_shipped_unified_model_recomputes_its_card_metrics_on_the_card_protocol(name, tmp_path):
    card = get_entry(name).card
    protocol = card.test_protocol
    assert {"split", "seed", "samples", "data", "machine"} <= set(protocol), (name, protocol)
    measured, samples = measure(name, str(tmp_path))
    assert samples == protocol["samples"]
    if protocol["machine"] == machine():
        assert measured == card.metrics  # the machine that wrote the card: exactly
    else:
        assert measured == pytest.approx(card.metrics, abs=OTHER_MACHINE_TOLERANCE), (machine(), protocol["machine"])


def test_some_unified_model_is_shipped():
    assert list_models("smartwatch-*", kind="unified")


if __name__ == "__main__":  # print a card's metrics as measured here, to write or check the card
    with tempfile.TemporaryDirectory() as tmp:
        values, counts = measure(sys.argv[1], tmp)
    print(json.dumps({"metrics": values, "samples": counts, "machine": machine()}, indent=2))

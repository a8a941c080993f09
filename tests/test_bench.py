"""`unizoo bench` at the smallest shapes: structure of the results, and ratios computed from measured numbers.

No assertion is about speed; sleeps of known length check that the timers attribute time to the right part.
"""
from __future__ import annotations

import json
import sys
import time

import pytest
import torch
import yaml

from tools import bench
from tools.bench_gpu import card_peaks, gpu_bench, gpu_targets
from zoo.catalog.presets import preset

SMOKE_RECIPE = {
    "model": preset("siglip-siglip", "smoke"),
    "data": {"class_path": "datamodules.mixed.MixedTaskDataModule",
             "init_args": {"sources": [{"class_path": "datamodules.smartwatch.source.SmartWatchSource",
                                        "init_args": {"train": 30, "val": 3, "test": 3, "size": 32, "seed": 0}}],
                           "mix": "mixed", "batch_size": 4}},
}


@pytest.fixture(scope="module")
def recipe(tmp_path_factory) -> str:
    path = tmp_path_factory.mktemp("bench") / "smoke.yaml"
    path.write_text(yaml.safe_dump(SMOKE_RECIPE))
    return str(path)


@pytest.fixture(scope="module")
def results(recipe) -> dict:
    return bench.run_benchmarks(("train", "data"), quick=True, recipes=[recipe])


class _Slow(torch.autograd.Function):
    """Identity whose forward and backward sleep for a known time."""

    @staticmethod
    def forward(ctx, x, seconds):
        ctx.seconds = seconds
        return x.clone()

    @staticmethod
    def backward(ctx, grad):
        time.sleep(ctx.seconds)
        return grad, None


class _Decoder(torch.nn.Module):
    def __init__(self):
        super().__init__()
        self.linear = torch.nn.Linear(4, 4)

    def forward(self, inputs_embeds=None):
        time.sleep(0.05)
        return type("Out", (), {"last_hidden_state": _Slow.apply(self.linear(inputs_embeds), 0.05)})()


def test_lm_timer_attributes_forward_and_backward_to_the_decoder():
    decoder = _Decoder()
    timer = bench.LMTimer(decoder)
    x = torch.randn(2, 4, requires_grad=True)
    outside = _Slow.apply(x, 0.3)  # runs in backward after the decoder's backward: must not be counted
    hidden = decoder(inputs_embeds=outside).last_hidden_state
    _Slow.apply(hidden, 0.3).sum().backward()  # runs before the decoder's backward: not counted either
    forward, backward = timer.take()
    assert forward >= 0.05 and backward >= 0.05
    assert backward < 0.3, "time of autograd nodes outside the decoder leaked into the LM backward"
    assert timer.take() == (0.0, 0.0)
    timer.remove()
    with torch.no_grad():
        decoder(inputs_embeds=x)
    assert timer.take() == (0.0, 0.0)


def test_train_bench_reports_a_consistent_breakdown(results):
    (train,) = results["train"]
    assert train["steps"] == 4 and train["batch_size"] == 4
    parts = sum(train[k] for k in ("data_ms", "encoders_ms", "lm_forward_ms", "lm_backward_ms", "other_ms"))
    mean_step_ms = 1e3 * train["samples_per_s"] ** -1 * train["batch_size"]
    assert parts == pytest.approx(mean_step_ms, rel=1e-6)
    lm = train["lm_forward_ms"] + train["lm_backward_ms"]
    assert lm > 0 and train["encoders_ms"] > 0 and train["data_ms"] > 0
    assert train["outside_lm_share"] == pytest.approx(1 - lm / mean_step_ms, rel=1e-6)
    # The LM head runs on text-label positions only, never on image positions.
    assert train["lm_head_rows_equal_text_labels"] and 0 < train["lm_head_rows_per_position"] < 1
    assert train["attn_implementation"] == "sdpa"


def test_targets_are_ratios_of_measured_numbers(results):
    by_name = {t["name"]: t for t in results["targets"]}
    headroom = by_name["data headroom"]
    assert headroom["value"] == pytest.approx(results["data"]["samples_per_s"] / results["train"][0]["samples_per_s"])
    assert headroom["ok"] == (headroom["value"] >= 5.0)
    share = next(t for t in results["targets"] if t["name"].startswith("outside-LM share"))
    assert share["value"] == results["train"][0]["outside_lm_share"] and share["ok"] == (share["value"] < 0.10)
    assert results["data"]["samples"] == 4 * 4
    assert len(results["meta"]["load_before"]) == 3 and results["meta"]["wall_s"] > 0


def test_render_and_json(results, capsys, tmp_path):
    bench.render(results)
    text = capsys.readouterr().out
    for title in ("training step", "data (draw + collate", "targets", "load avg"):
        assert title in text
    out = tmp_path / "bench.json"
    out.write_text(json.dumps(results, default=str))
    assert json.loads(out.read_text())["train"][0]["recipe"].endswith("smoke.yaml")


def test_generation_bench_compares_both_paths_on_the_same_prompts():
    rows = bench.bench_generate(image_tokens=(4,), batch_sizes=(1, 2))
    assert [(r["image_tokens"], r["batch"]) for r in rows] == [(4, 1), (4, 2)]
    for r in rows:
        assert r["speedup"] == pytest.approx(r["recompute_ms_per_image"] / r["cached_ms_per_image"])
        assert r["max_abs_diff"] < 1e-3  # both paths wrote the same image
    rows_256 = [{"image_tokens": 256, "batch": 16, "speedup": 12.0}, {"image_tokens": 64, "batch": 1, "speedup": 0.9}]
    targets = {t["name"]: t["ok"] for t in bench.targets({"generate": rows_256})}
    assert targets == {"KV-cache speedup, 256 tokens, batch 16": True, "KV-cache speedup, 64 tokens, batch 1": False}
    with pytest.raises(ValueError, match="square"):
        bench.generation_model(10)


def test_peak_rss_sees_a_child_allocation():
    code = "import time; b = bytearray(300 * 2**20); b[::4096] = b'x' * len(b[::4096]); time.sleep(0.5)"
    peak, wall, rc, _ = bench.peak_rss([sys.executable, "-c", code], poll_s=0.05)
    assert rc == 0 and peak > 300 * 2**20 and wall > 0.5


def test_unknown_suite_is_refused():
    with pytest.raises(ValueError, match="unknown bench suite"):
        bench.run_benchmarks(("speed",))


def test_gpu_check_runs_at_tiny_shapes_on_cpu():
    result = gpu_bench(shapes="tiny", device="cpu")
    assert result["device"] == "cpu" and result["generated_tokens"] == result["image_tokens"] == 16
    assert result["trainable"] < result["parameters"]  # LoRA: the LM's weights stay frozen
    assert result["flops_per_token"] > 0 and result["tokens_per_s"] > 0
    assert result["mfu"] is None and result["bound_ratio"] is None  # no known peak on a CPU
    assert gpu_targets({**result, "mfu": 0.5})[0]["ok"] is True


def test_card_peaks():
    assert card_peaks("NVIDIA H100 80GB HBM3") == (989e12, 3.35e12)
    assert card_peaks("NVIDIA H100 PCIe") == (756e12, 2.0e12)
    assert card_peaks("NVIDIA H200") == (989e12, 4.8e12)
    assert card_peaks("NVIDIA GeForce RTX 4090") == (None, None)
    with pytest.raises(ValueError, match="gpu_shapes"):
        gpu_bench(shapes="huge", device="cpu")


def test_encoder_timer_counts_a_wrapped_space_once():
    from types import SimpleNamespace

    class Inner:
        def encode(self, x):
            time.sleep(0.1)
            return x, None

        def embed_codes(self, codes):
            return codes

    inner = Inner()

    class Outer(Inner):  # like AffineSpace: its encode runs the base space's encode
        def encode(self, x):
            return inner.encode(x)

    model = SimpleNamespace(read_space=Outer(), write_space=inner)
    spent, restore = bench._time_encoders(model)
    model.read_space.encode(1)
    assert 0.1 <= spent["s"] < 0.2  # once, not once per nesting level
    assert len(restore) == 4


def test_study_pieces_bench_reports_ratios_measured_in_one_run():
    from tools.bench_study import bench_guidance, bench_pixel_decoder, bench_positions

    guidance = bench_guidance(batch=2, repeats=1)
    assert guidance["guidance_cost"] == guidance["guided_ms_per_image"] / guidance["unguided_ms_per_image"]
    positions = bench_positions(steps=1, repeats=1)
    assert positions["grid_cost"] == positions["step_ms_grid"] / positions["step_ms_none"]
    decoder = bench_pixel_decoder(batch=4, repeats=1)
    assert decoder["images_per_s"] > 0 and decoder["parameters"] > 0


def test_code_cache_bench_reports_growth_per_image():
    from tools.bench_suites import bench_code_cache

    out = bench_code_cache(images=64, batch_size=32)
    assert out["images"] == 64 and out["ms_per_image"] > 0
    assert out["mb_per_1000_images"] == pytest.approx(out["rss_growth_mb"] / 64 * 1000)

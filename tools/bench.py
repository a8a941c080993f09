"""`unizoo bench`: training, generation, data and memory benchmarks, each judged by a ratio measured in one run.

The machine may be shared, so absolute numbers are noisy; the load average is recorded before and
after, and every target is a ratio of two numbers measured in the same run (or an absolute cap that
does not depend on speed: peak memory).

The measurements live in tools/bench_suites.py (timing hooks in tools/bench_timers.py); this module runs
the chosen suites, judges the targets and prints the tables.
"""
from __future__ import annotations

import glob
import json as json_lib
import os
import platform
import time
from pathlib import Path
from typing import Any

import torch

# Re-exported: tests, tools/bench_gpu.py and users import these from tools.bench.
from tools.bench_suites import (  # noqa: F401
    QUICKSTART,
    ROOT,
    TINY_RECIPES,
    _build_model,
    _datamodule,
    _image_prompts,
    _median,
    _ratio,
    _recipe_parts,
    bench_code_cache,
    bench_data,
    bench_generate,
    bench_memory,
    bench_train,
    generation_model,
    peak_rss,
)
from tools.bench_timers import LMTimer, _time_encoders  # noqa: F401
from tools.machine import machine_info

SUITES = ("train", "generate", "data", "memory", "study")
TARGETS = {"outside_lm_share": 0.10, "kv_speedup_256_b16": 10.0, "kv_speedup_b1": 1.0,
           "data_headroom": 5.0, "peak_rss_gb": 3.0, "code_cache_mb_per_1000": 10.0}


# ------------------------------------------------------------------------------------------- suite
def tiny_recipes() -> list[Path]:
    """The tiny smart-watch recipes (every architecture file, not `_base`)."""
    return sorted(Path(p) for p in glob.glob(str(TINY_RECIPES / "*.yaml")) if not Path(p).name.startswith("_"))


def run_benchmarks(suites: tuple[str, ...] = SUITES, quick: bool = False, recipes: list[str] | None = None) -> dict[str, Any]:
    """Run the chosen suites; return {"meta", <suite>: results..., "targets"} (see `targets`)."""
    unknown = set(suites) - set(SUITES)
    if unknown:
        raise ValueError(f"unknown bench suite(s) {sorted(unknown)}; expected some of {SUITES} or 'all'")
    chosen = [Path(r) for r in recipes] if recipes else tiny_recipes()
    if quick and not recipes:  # the quickstart's architecture
        chosen = [r for r in chosen if r.stem == "siglip-siglip"] or chosen[:1]
    if not chosen and set(suites) & {"train", "data"}:
        raise ValueError(f"no recipes found in {TINY_RECIPES}")
    results: dict[str, Any] = {"meta": _meta(quick)}
    start = time.perf_counter()
    if "train" in suites:
        n, w = (4, 1) if quick else (10, 2)
        results["train"] = [bench_train(r, steps=n, warmup=w) for r in chosen]
        if not quick and not recipes:  # the opt-in code cache off and on, on the VQ-VQ model with the tiny data
            from zoo.catalog.presets import preset
            from zoo.config import merge

            vq_recipe = TINY_RECIPES / "vq-vq.yaml"
            spec = _recipe_parts(vq_recipe)[0] if vq_recipe.exists() else preset("vq-vq", "tiny")
            for cached in (False, True):
                results["train"].append(bench_train(
                    TINY_RECIPES / "_base.yaml", steps=n, warmup=w, label=f"vq-vq cache_codes={cached}",
                    model=merge(spec, {"init_args": {"cache_codes": cached}})))
    if "generate" in suites:
        results["generate"] = bench_generate((64, 256), (1, 16), repeats=1 if quick else 2)
    if "data" in suites:
        results["data"] = bench_data(chosen[0], batches=4 if quick else 16)
    if "study" in suites:
        from tools.bench_study import bench_study

        results["study"] = bench_study(quick=quick)
    if "memory" in suites:
        results["memory"] = bench_memory(max_steps=10 if quick else 30, with_test=not quick)
        results["code_cache"] = bench_code_cache(images=512 if quick else 2048)
    results["meta"].update(load_after=os.getloadavg(), wall_s=time.perf_counter() - start)
    results["targets"] = targets(results)
    return results


def _meta(quick: bool) -> dict[str, Any]:
    return {"quick": quick, "load_before": os.getloadavg(), "cpu_count": os.cpu_count(),
            "torch_threads": torch.get_num_threads(), "torch": torch.__version__, "python": platform.python_version(),
            "started": time.strftime("%Y-%m-%d %H:%M:%S"), "machine": machine_info()}


def targets(results: dict[str, Any]) -> list[dict[str, Any]]:
    """Each target of issue 7 with its measured value (a ratio within this run, or the memory cap) and pass/fail."""
    rows: list[dict[str, Any]] = []

    def add(name: str, value: float | None, target: float, higher_is_better: bool, how: str) -> None:
        ok = None if value is None else (value >= target if higher_is_better else value < target)
        rows.append({"name": name, "value": value, "target": target, "higher_is_better": higher_is_better, "ok": ok, "how": how})

    for t in results.get("train", []):
        add(f"outside-LM share of step ({Path(t['recipe']).stem})", t["outside_lm_share"], TARGETS["outside_lm_share"],
            False, "1 - (LM fwd+bwd) / step")
    for g in results.get("generate", []):
        if g["image_tokens"] == 256 and g["batch"] == 16:
            add("KV-cache speedup, 256 tokens, batch 16", g["speedup"], TARGETS["kv_speedup_256_b16"], True, "recompute / cached")
        if g["batch"] == 1:
            add(f"KV-cache speedup, {g['image_tokens']} tokens, batch 1", g["speedup"], TARGETS["kv_speedup_b1"], True,
                "recompute / cached")
    if "data" in results and results.get("train"):
        value = _ratio(results["data"]["samples_per_s"], results["train"][0]["samples_per_s"])
        add("data headroom", value, TARGETS["data_headroom"], True, "draw+collate samples/s / training samples/s")
    if "memory" in results:
        add("quickstart peak RSS (GB)", results["memory"]["peak_rss_gb"], TARGETS["peak_rss_gb"], False,
            "max(psutil tree, getrusage maxrss)")
    if "code_cache" in results:  # per-image tensors once grew the heap ~380 MB per 1000 images (stop 19)
        add("code cache RSS growth (MB per 1000 images)", results["code_cache"]["mb_per_1000_images"],
            TARGETS["code_cache_mb_per_1000"], False, "RSS after - before filling the cache")
    return rows


def _fmt(value: Any, digits: int = 1) -> str:
    if value is None:
        return "-"
    if isinstance(value, bool):
        return "yes" if value else "no"
    if isinstance(value, float):
        return f"{value:.{digits}f}" if abs(value) >= 0.01 or value == 0 else f"{value:.2e}"
    return str(value)


def render(results: dict[str, Any]) -> None:
    """Print the results as rich tables (one per suite, then the targets)."""
    from rich.console import Console
    from rich.table import Table

    console, meta = Console(width=160), results["meta"]
    console.print(f"unizoo bench ({'quick' if meta['quick'] else 'full'}) {meta['started']}: load avg "
                  f"{'/'.join(f'{x:.1f}' for x in meta['load_before'])} -> {'/'.join(f'{x:.1f}' for x in meta['load_after'])} "
                  f"on {meta['cpu_count']} CPUs, torch {meta['torch']} ({meta['torch_threads']} threads), {meta['wall_s']:.0f} s")

    def table(title: str, rows: list[dict[str, Any]], columns: list[tuple[str, str, int]]) -> None:
        t = Table(title=title)
        for _, header, _ in columns:
            t.add_column(header, justify="right")
        for row in rows:
            t.add_row(*[_fmt(row.get(key), digits) for key, _, digits in columns])
        console.print(t)

    if "train" in results:
        rows = [{**r, "recipe": Path(r["recipe"]).stem, "share": 100 * r["outside_lm_share"]} for r in results["train"]]
        table("training step (fp32, CPU)", rows, [
            ("recipe", "recipe", 0), ("step_ms", "step ms", 0), ("samples_per_s", "samples/s", 1),
            ("tokens_per_s", "tokens/s", 0), ("data_ms", "data ms", 0), ("encoders_ms", "encoders ms", 0),
            ("lm_forward_ms", "LM fwd ms", 0), ("lm_backward_ms", "LM bwd ms", 0), ("other_ms", "other ms", 0),
            ("share", "outside LM %", 1), ("lm_head_rows_equal_text_labels", "head only on text", 0)])
    if "generate" in results:
        table("generation of one image (greedy)", results["generate"], [
            ("image_tokens", "image tokens", 0), ("batch", "batch", 0), ("cached_ms_per_image", "KV ms/img", 1),
            ("recompute_ms_per_image", "recompute ms/img", 1), ("speedup", "speedup x", 1), ("max_abs_diff", "max |diff|", 1)])
    if "data" in results:
        table("data (draw + collate, one process)", [results["data"]], [
            ("batch_size", "batch", 0), ("samples_per_s", "samples/s", 0), ("ms_per_batch", "ms/batch", 1)])
    if "memory" in results:
        table("memory", [results["memory"]], [
            ("command", "command", 0), ("polled_rss_gb", "polled tree RSS GB", 2), ("child_maxrss_gb", "child maxrss GB", 2),
            ("peak_rss_gb", "peak GB", 2), ("wall_s", "wall s", 0)])
    if "code_cache" in results:
        table("code cache (tiny VQ, rendered watches)", [results["code_cache"]], [
            ("images", "images", 0), ("rss_growth_mb", "RSS growth MB", 1), ("mb_per_1000_images", "MB / 1000 images", 1),
            ("ms_per_image", "ms/image", 2)])
    if "study" in results:
        study = results["study"]
        table("study pieces (issue 12)", [{**study["guidance"], **study["positions"], **study["pixel_decoder"]}], [
            ("unguided_ms_per_image", "VQ img ms", 1), ("guided_ms_per_image", "guided ms", 1),
            ("guidance_cost", "guided/plain x", 2), ("step_ms_none", "step ms", 0), ("step_ms_grid", "grid step ms", 0),
            ("grid_cost", "grid/plain x", 2), ("images_per_s", "decoder img/s", 0)])
    if "gpu" in results:
        from tools.bench_gpu import render_gpu

        render_gpu(results["gpu"], console)
    table("targets (ratios measured in this run)", results.get("targets", []), [
        ("name", "target", 0), ("how", "measured as", 0), ("value", "value", 2), ("target", "goal", 2), ("ok", "met", 0)])


def bench(suite: str = "all", json: bool = False, gpu: bool = False, gpu_shapes: str = "full", quick: bool = False,
          recipes: list[str] | None = None, threads: int | None = None, out: str | None = None) -> dict[str, Any]:
    """Speed and memory benchmarks; every target is judged by a ratio measured within this one run.

    Args:
        suite: "all" or a comma-separated choice of train, generate, data, memory, study.
        json: print the results as JSON instead of tables.
        gpu: run the GPU check instead (7B-shaped LM + LoRA, SigLIP-B and VQ-16 shapes, bf16; tokens/s, MFU,
            generation latency against the memory-bandwidth bound); see tools/bench_gpu.py.
        gpu_shapes: "full" (the real shapes, for one H100/H200) or "tiny" (the same code at toy sizes, runs on CPU).
        quick: fewer steps and repeats, one recipe, fit-only memory run (about 2 minutes on 2 idle cores).
        recipes: training/data recipes (default: every recipes/smartwatch/tiny/*.yaml; siglip-siglip in quick mode).
        threads: torch intra-op threads (default: torch's choice). On a machine loaded beyond its cores, use 1:
            OpenMP threads then wait on each other and small-op paths (decoding) slow down 10-20x.
        out: also write the JSON results to this file.
    """
    if threads is not None:
        if threads < 1:
            raise ValueError(f"threads must be >= 1, got {threads}")
        torch.set_num_threads(threads)
    if gpu:
        from tools.bench_gpu import gpu_bench

        results = {"meta": _meta(quick)}
        start = time.perf_counter()
        results["gpu"] = gpu_bench(shapes=gpu_shapes)
        results["meta"].update(load_after=os.getloadavg(), wall_s=time.perf_counter() - start)
        from tools.bench_gpu import gpu_targets

        results["targets"] = gpu_targets(results["gpu"])
    else:
        suites = SUITES if suite == "all" else tuple(s.strip() for s in suite.split(",") if s.strip())
        results = run_benchmarks(suites, quick=quick, recipes=recipes)
    if out:
        Path(out).write_text(json_lib.dumps(results, indent=2, default=str))
    if json:
        print(json_lib.dumps(results, indent=2, default=str))
    else:
        render(results)
    return results

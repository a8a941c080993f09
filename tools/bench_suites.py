"""The measurements of `unizoo bench`: one function per suite (training, generation, data, memory) and their helpers."""
from __future__ import annotations

import json as json_lib
import logging
import os
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

import torch

from tools.bench_timers import LMTimer, _time_encoders

ROOT = Path(__file__).resolve().parent.parent
TINY_RECIPES = ROOT / "recipes" / "smartwatch" / "tiny"
QUICKSTART = ROOT / "recipes" / "quickstart.yaml"


# ------------------------------------------------------------------------------------------- helpers
def _recipe_parts(recipe: str | os.PathLike) -> tuple[dict[str, Any], dict[str, Any]]:
    """(model spec, data init_args with unbuilt source specs) of a recipe, `_base` chain resolved."""
    from tools.lightning_cli import load_recipe

    config = load_recipe(recipe)
    if "data" not in config:
        raise ValueError(f"{recipe}: a bench recipe needs a `data` section")
    return config.get("model"), dict(config["data"].get("init_args") or {})


def _datamodule(data_args: dict[str, Any], train_images: int, batch_size: int | None = None):
    """The recipe's MixedTaskDataModule with `train_images` train images per source, no val/test, no workers."""
    from datamodules.mixed import MixedTaskDataModule
    from zoo.config import build

    args = dict(data_args)
    sources = [build({**spec, "init_args": {**(spec.get("init_args") or {}), "train": train_images, "val": 0, "test": 0}})
               for spec in args.pop("sources", [])]
    args.update(num_workers=0, max_eval_samples=None)
    if batch_size:
        args["batch_size"] = batch_size
    return MixedTaskDataModule(sources=sources, **args)


def _build_model(spec: dict[str, Any]):
    """Build a model spec, passing UnifiedVLM's defaults that a subclass takes through **kwargs explicitly.

    (`configure_optimizers` reads every hyper-parameter from `hparams`, which holds only the arguments
    given; LightningCLI fills them in, `build` does not.)
    """
    import inspect

    from zoo.config import build, import_class
    from zoo.model.unified import UnifiedVLM

    cls = import_class(spec["class_path"])
    own = inspect.signature(cls.__init__).parameters
    args = dict(spec.get("init_args") or {})
    if any(p.kind is inspect.Parameter.VAR_KEYWORD for p in own.values()):
        base = inspect.signature(UnifiedVLM.__init__).parameters
        for name in ("lr", "projector_lr", "weight_decay", "warmup_ratio", "eval_max_new_tokens", "eval_temperature"):
            if name in base and name not in own and name not in args:
                args[name] = base[name].default
    torch.manual_seed(0)
    return build({**spec, "init_args": args})


def _median(values: list[float]) -> float:
    return float(statistics.median(values)) if values else float("nan")


def _ratio(a: float, b: float) -> float | None:
    return a / b if b and b == b and a == a else None


# ------------------------------------------------------------------------------------------- training
def bench_train(recipe: str | os.PathLike, steps: int = 8, warmup: int = 2, batch_size: int | None = None,
                model: dict[str, Any] | None = None, label: str | None = None) -> dict[str, Any]:
    """Lightning training steps of a recipe (fp32, CPU): samples/s, tokens/s and where the step time goes.

    Method: a real `Trainer.fit` (logging, optimiser, scheduler included; no checkpoints, no validation)
    with num_workers=0, so a step = the wall time between consecutive `on_train_batch_end` calls, which
    includes drawing + collating the next batch. Inside it: `data` = batch end -> next batch start (the
    fetch), `encoders` = the image spaces' encode/embed_codes, `lm_forward`/`lm_backward` = the decoder
    (see LMTimer), `other` = the rest (projectors, LM head on text positions, losses, optimiser, logging).
    `outside_lm_share` = 1 - (lm_forward + lm_backward) / step. Also counts the LM-head rows per step
    against the positions, to check that no logits are computed on image positions.
    `model` replaces the recipe's model spec (the data stays the recipe's). A model with a code cache
    (`cache_codes=True`) gets it filled before the steps: the steady state of every epoch after the first.
    """
    import lightning as L

    model_spec, data_args = _recipe_parts(recipe)
    model_spec = model or model_spec
    if model_spec is None:
        raise ValueError(f"{recipe}: no `model` section; pass a model spec")
    bs = batch_size or int(data_args.get("batch_size", 16))
    # Just enough images for the steps (the smart-watch source makes 3 samples per image).
    datamodule = _datamodule(data_args, train_images=(steps + warmup + 2) * bs // 3 + 1, batch_size=bs)
    model = _build_model(model_spec)
    cache = model.processor.code_cache
    if cache is not None:
        cache.precompute((k, im) for s in datamodule.dataset("train") for k, im in zip(s.image_keys, s.images))
    lm = LMTimer(model.backbone.base_model.get_decoder())
    enc, restore = _time_encoders(model)
    head_rows = {"rows": 0}
    head = model.backbone.base_model.get_output_embeddings()
    head_hook = head.register_forward_hook(
        lambda m, a, out: head_rows.__setitem__("rows", head_rows["rows"] + a[0].reshape(-1, a[0].shape[-1]).shape[0]))
    rows: list[dict[str, float]] = []

    class StepTimer(L.Callback):
        last_end: float | None = None
        fetch = enc0 = 0.0

        def on_train_batch_start(self, trainer, module, batch, idx):
            now = time.perf_counter()
            self.fetch = now - self.last_end if self.last_end is not None else float("nan")
            self.enc0, head_rows["rows"] = enc["s"], 0
            lm.take()

        def on_after_backward(self, trainer, module):
            lm.close_backward()

        def on_train_batch_end(self, trainer, module, outputs, batch, idx):
            now = time.perf_counter()
            fwd, bwd = lm.take()
            if self.last_end is not None and idx >= warmup:
                rows.append({"step": now - self.last_end, "data": self.fetch, "encoders": enc["s"] - self.enc0,
                             "lm_forward": fwd, "lm_backward": bwd, "samples": batch["input_ids"].shape[0],
                             "tokens": float(batch["attention_mask"].sum()), "positions": float(batch["input_ids"].numel()),
                             "head_rows": head_rows["rows"],
                             "text_labels": float((batch["labels"][:, 1:] != -100).sum())})
            self.last_end = now

    logging.getLogger("lightning.pytorch").setLevel(logging.WARNING)  # keep the bench output to its tables
    trainer = L.Trainer(accelerator="cpu", devices=1, precision="32-true", max_steps=steps + warmup,
                        logger=False, enable_checkpointing=False, enable_progress_bar=False,
                        enable_model_summary=False, num_sanity_val_steps=0, limit_val_batches=0,
                        callbacks=[StepTimer()])
    try:
        trainer.fit(model, datamodule=datamodule)
    finally:
        lm.remove()
        head_hook.remove()
        for space, name in restore:
            delattr(space, name)
    step = sum(r["step"] for r in rows)
    part = {k: sum(r[k] for r in rows) for k in ("data", "encoders", "lm_forward", "lm_backward")}
    lm_s = part["lm_forward"] + part["lm_backward"]
    return {
        "recipe": label or os.path.relpath(recipe, ROOT), "steps": len(rows), "batch_size": bs,
        "step_ms": 1e3 * _median([r["step"] for r in rows]),
        "samples_per_s": sum(r["samples"] for r in rows) / step,
        "tokens_per_s": sum(r["tokens"] for r in rows) / step,
        **{f"{k}_ms": 1e3 * v / len(rows) for k, v in part.items()},
        "other_ms": 1e3 * (step - sum(part.values())) / len(rows),
        "outside_lm_share": 1.0 - lm_s / step,
        "lm_head_rows_per_position": sum(r["head_rows"] for r in rows) / sum(r["positions"] for r in rows),
        "lm_head_rows_equal_text_labels": all(r["head_rows"] == r["text_labels"] for r in rows),
        "attn_implementation": model.backbone.config._attn_implementation,
    }


# ------------------------------------------------------------------------------------------- generation
def _image_prompts(model, batch_size: int, seed: int = 0) -> dict[str, Any]:
    """Left-padded generation prompts of `batch_size` smart-watch requests, each ending in `<boi>`."""
    from datamodules.smartwatch.source import watch_sample

    size = max(64, model.write_space.image_size)  # the prompt is text: the drawn image is never read
    samples = [watch_sample(seed, "test", i, "generation", size=size) for i in range(batch_size)]
    prompt = model.processor.prompt(samples)
    boi = torch.full((batch_size, 1), model.backbone.token_ids["boi"], dtype=torch.long)
    return {**prompt, "input_ids": torch.cat([prompt["input_ids"], boi], 1),
            "attention_mask": torch.cat([prompt["attention_mask"], torch.ones_like(boi)], 1)}


def generation_model(image_tokens: int, recipe: str | os.PathLike | None = None):
    """The tiny SigLIP-SigLIP model (or `recipe`'s model) with its vision space resized to `image_tokens` tokens.

    The default is the `siglip-siglip.tiny` architecture with a random-init tower of the shipped one's size
    (a config, not the shipped 64 px weights), so the image grid can be resized: decoding cost depends on
    shapes, not on weights.
    """
    from zoo.catalog.presets import preset, siglip
    from zoo.config import merge

    spec = _recipe_parts(recipe)[0] if recipe else preset("siglip-siglip", "tiny", space=None)
    if not recipe:
        spec["init_args"]["space"] = siglip("tiny")
    space = spec["init_args"].get("space") or spec["init_args"].get("write_space")
    cfg = (space or {}).get("init_args", {}).get("config")
    if not cfg or "patch_size" not in cfg:
        raise ValueError(f"{recipe}: generation bench needs a ViT write space with a `config` (image_size, patch_size)")
    grid = int(round(image_tokens ** 0.5))
    if grid * grid != image_tokens:
        raise ValueError(f"image_tokens must be a square number, got {image_tokens}")
    key = "space" if "space" in spec["init_args"] else "write_space"
    spec = merge(spec, {"init_args": {key: {"init_args": {"config": {"image_size": grid * cfg["patch_size"]}}}}})
    return _build_model(spec).eval()


def bench_generate(image_tokens: tuple[int, ...] = (64, 256), batch_sizes: tuple[int, ...] = (1, 16),
                   repeats: int = 1) -> list[dict[str, Any]]:
    """Writing one image per prompt: the KV-cached path against the paper's recompute-every-step path.

    Each (tokens, batch) case runs both paths on the same prompts (greedy, `start_in_image`, best of
    `repeats` after one short warm-up) and checks they agree; speedup = recompute s / cached s.
    """
    from zoo.model.generate import GenerationConfig, generate

    out = []
    for n in image_tokens:
        model = generation_model(n)
        warm = _image_prompts(model, 1)
        generate(model, warm, GenerationConfig(max_new_tokens=0, use_cache=True), start_in_image=True)
        for b in batch_sizes:
            prompts = _image_prompts(model, b)
            times, images = {}, {}
            for use_cache in (True, False):
                cfg = GenerationConfig(max_new_tokens=0, max_images=1, use_cache=use_cache)
                best = float("inf")
                for _ in range(repeats):
                    start = time.perf_counter()
                    result = generate(model, prompts, cfg, start_in_image=True)
                    best = min(best, time.perf_counter() - start)
                times[use_cache], images[use_cache] = best, result.images
            diff = max(float((a[0] - c[0]).abs().max()) for a, c in zip(images[True], images[False]))
            out.append({"image_tokens": n, "batch": b, "cached_ms_per_image": 1e3 * times[True] / b,
                        "recompute_ms_per_image": 1e3 * times[False] / b,
                        "speedup": times[False] / times[True], "max_abs_diff": diff})
    return out


# ------------------------------------------------------------------------------------------- data
def bench_data(recipe: str | os.PathLike, batches: int = 8, batch_size: int | None = None) -> dict[str, Any]:
    """Drawing + collation alone (the recipe's source and the model's processor, one process): samples/s."""
    from torch.utils.data import DataLoader

    model_spec, data_args = _recipe_parts(recipe)
    bs = batch_size or int(data_args.get("batch_size", 16))
    datamodule = _datamodule(data_args, train_images=(batches + 1) * bs // 3 + 1, batch_size=bs)
    processor = _build_model(model_spec).processor
    loader = DataLoader(datamodule.dataset("train"), batch_size=bs, shuffle=True, collate_fn=processor,
                        generator=torch.Generator().manual_seed(0))
    it = iter(loader)
    next(it)  # warm-up: font and template caches
    start = time.perf_counter()
    drawn = sum(next(it)["input_ids"].shape[0] for _ in range(batches))
    elapsed = time.perf_counter() - start
    return {"recipe": os.path.relpath(recipe, ROOT), "samples": drawn, "samples_per_s": drawn / elapsed,
            "ms_per_batch": 1e3 * elapsed / batches, "batch_size": bs}


# ------------------------------------------------------------------------------------------- memory
def peak_rss(cmd: list[str], poll_s: float = 0.1) -> tuple[int, float, int, str]:
    """Run `cmd` from the repository root; return (peak RSS bytes of its process tree, wall s, exit code, stderr)."""
    import psutil

    start = time.perf_counter()
    with tempfile.TemporaryFile("w+") as err:
        # The child uses as many threads as this process (see `bench(threads=...)`).
        env = {**os.environ, "OMP_NUM_THREADS": str(torch.get_num_threads())}
        proc = subprocess.Popen(cmd, cwd=ROOT, stdout=subprocess.DEVNULL, stderr=err, text=True, env=env)
        parent, peak = psutil.Process(proc.pid), 0
        while proc.poll() is None:
            try:
                tree = [parent, *parent.children(recursive=True)]
                peak = max(peak, sum(p.memory_info().rss for p in tree))
            except psutil.Error:
                pass  # a process of the tree ended between listing and reading
            time.sleep(poll_s)
        err.seek(0)
        return peak, time.perf_counter() - start, proc.returncode, err.read()


def bench_memory(max_steps: int = 20, recipe: str | os.PathLike | None = None, with_test: bool = False,
                 poll_s: float = 0.1) -> dict[str, Any]:
    """Peak resident memory of a short quickstart run in a child process (psutil polling of its process tree).

    `with_test` runs `unizoo quickstart` (fit + evaluation) instead of `unizoo fit`. The kernel's own
    high-water mark of the largest child (getrusage RUSAGE_CHILDREN) is reported beside the polled peak.
    """
    import resource

    recipe = Path(recipe or (QUICKSTART if QUICKSTART.exists() else TINY_RECIPES / "siglip-siglip.yaml"))
    with tempfile.TemporaryDirectory(prefix="unizoo-bench-") as tmp:
        overrides = [f"--trainer.max_steps={max_steps}", f"--trainer.default_root_dir={tmp}",
                     f"--trainer.logger.init_args.save_dir={tmp}"]
        if with_test:
            overrides.append("--data.init_args.max_eval_samples=8")
            cmd = [sys.executable, "-m", "tools.cli", "quickstart", f"--recipe={recipe}", f"--overrides={json_lib.dumps(overrides)}"]
        else:
            cmd = [sys.executable, "-m", "tools.cli", "fit", "--config", str(recipe), *overrides]
        before = resource.getrusage(resource.RUSAGE_CHILDREN).ru_maxrss
        peak, wall, code, stderr = peak_rss(cmd, poll_s)
    if code:
        raise RuntimeError(f"bench_memory: {' '.join(cmd[2:])} failed ({code}):\n{stderr[-2000:]}")
    maxrss_kb = resource.getrusage(resource.RUSAGE_CHILDREN).ru_maxrss  # Linux: KiB, the largest child so far
    child = maxrss_kb / 2**20 if maxrss_kb > before else None
    # Polling can miss a short peak that the kernel's high-water mark keeps: report the larger.
    return {"command": " ".join(["unizoo", *cmd[3:]]).replace(tmp, "$TMP"), "polled_rss_gb": peak / 2**30,
            "child_maxrss_gb": child, "peak_rss_gb": max(peak / 2**30, child or 0.0), "wall_s": wall}


def bench_code_cache(images: int = 2048, batch_size: int = 32) -> dict[str, Any]:
    """Resident-memory growth of a CodeCache filling up (the tiny VQ space, rendered watches), in MB per
    1000 cached images: the codes themselves are 0.25 MB per 1000 (64 int32 each); more is heap overhead."""
    import psutil

    from datamodules.smartwatch.source import SmartWatchSource
    from zoo.model.code_cache import CodeCache
    from zoo.spaces.vq import VQTokenizer

    space = VQTokenizer(variant="tiny", image_size=64, checkpoint="zoo:vq-smartwatch-tiny-v2")
    source = SmartWatchSource(train=images + batch_size, val=1, test=1, size=64, seed=0, tasks=("generation",))
    cache, process = CodeCache(space), psutil.Process()

    def fill(start: int, stop: int) -> None:
        for i in range(start, stop, batch_size):
            batch = [source.sample("train", j) for j in range(i, min(stop, i + batch_size))]
            cache.codes_for([s.images[0] for s in batch], [s.image_keys[0] for s in batch])

    fill(0, batch_size)  # warm-up: the encoder's buffers and kernels
    before, start = process.memory_info().rss, time.perf_counter()
    fill(batch_size, images + batch_size)
    grown = process.memory_info().rss - before
    return {"images": images, "rss_growth_mb": grown / 2**20, "mb_per_1000_images": grown / 2**20 / images * 1000,
            "ms_per_image": 1000 * (time.perf_counter() - start) / images}

"""`unizoo bench`: training, generation, data and memory benchmarks, each judged by a ratio measured in one run.

The machine may be shared, so absolute numbers are noisy; the load average is recorded before and
after, and every target is a ratio of two numbers measured in the same run (or an absolute cap that
does not depend on speed: peak memory).
"""
from __future__ import annotations

import glob
import json as json_lib
import logging
import os
import platform
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

import torch

ROOT = Path(__file__).resolve().parent.parent
TINY_RECIPES = ROOT / "recipes" / "smartwatch" / "tiny"
QUICKSTART = ROOT / "recipes" / "quickstart.yaml"
SUITES = ("train", "generate", "data", "memory")
TARGETS = {"outside_lm_share": 0.10, "kv_speedup_256_b16": 10.0, "kv_speedup_b1": 1.0,
           "data_headroom": 5.0, "peak_rss_gb": 3.0}


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
    from zoo.unified import UnifiedVLM

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
class LMTimer:
    """Wall time of the language model's decoder forward and backward, from hooks (CPU ops are synchronous).

    Forward: a pre-hook and a post-hook on the decoder module. Backward: a tensor hook on the decoder's
    output (its gradient arrives: the LM backward starts) and on its input embeddings (their gradient is
    complete: it ends). Autograd runs nodes newest-first, so nothing outside the decoder runs between the
    two. When the inputs need no gradient the backward is closed by `close_backward` (after backward).
    """

    def __init__(self, decoder: torch.nn.Module, sync: Any = None) -> None:
        self.forward_s, self.backward_s = 0.0, 0.0
        self._sync = sync or (lambda: None)
        self._t0 = self._tb = None
        self._handles = [decoder.register_forward_pre_hook(self._pre, with_kwargs=True),
                         decoder.register_forward_hook(self._post, with_kwargs=True)]

    def _pre(self, module, args, kwargs) -> None:
        if not torch.is_grad_enabled():
            return
        self._sync()
        self._t0 = time.perf_counter()
        embeds = kwargs.get("inputs_embeds")
        if embeds is not None and embeds.requires_grad:
            embeds.register_hook(self._backward_end)

    def _post(self, module, args, kwargs, output) -> None:
        if self._t0 is None:
            return
        self._sync()
        self.forward_s += time.perf_counter() - self._t0
        self._t0 = None
        hidden = output.last_hidden_state if hasattr(output, "last_hidden_state") else output[0]
        if hidden.requires_grad:
            hidden.register_hook(self._backward_start)

    def _backward_start(self, grad: torch.Tensor) -> None:
        self._sync()
        self._tb = time.perf_counter()

    def _backward_end(self, grad: torch.Tensor) -> None:
        if self._tb is not None:
            self._sync()
            self.backward_s += time.perf_counter() - self._tb
            self._tb = None

    def close_backward(self) -> None:
        """End a backward whose input embeddings needed no gradient."""
        self._backward_end(torch.empty(0))

    def take(self) -> tuple[float, float]:
        """(forward s, backward s) accumulated since the last call, and reset."""
        out = (self.forward_s, self.backward_s)
        self.forward_s = self.backward_s = 0.0
        return out

    def remove(self) -> None:
        """Detach the hooks."""
        for handle in self._handles:
            handle.remove()


def _time_encoders(model) -> tuple[dict[str, float], list]:
    """Wrap the spaces' encode/embed_codes (instance attributes, undone by the returned restore list)."""
    spent = {"s": 0.0, "depth": 0}  # depth: a wrapping space (AffineSpace) calls its base's encode inside its own
    restore = []
    for space in {id(s): s for s in (model.input_space, model.output_space) if s is not None}.values():
        for name in ("encode", "embed_codes"):
            original = getattr(space, name)

            def timed(*args, _original=original, **kwargs):
                start = time.perf_counter()
                spent["depth"] += 1
                try:
                    return _original(*args, **kwargs)
                finally:
                    spent["depth"] -= 1
                    if not spent["depth"]:
                        spent["s"] += time.perf_counter() - start

            setattr(space, name, timed)
            restore.append((space, name))
    return spent, restore


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

    size = max(64, model.output_space.image_size)  # the prompt is text: the drawn image is never read
    samples = [watch_sample(seed, "test", i, "generation", size=size) for i in range(batch_size)]
    prompt = model.processor.prompt(samples)
    boi = torch.full((batch_size, 1), model.backbone.token_ids["boi"], dtype=torch.long)
    return {**prompt, "input_ids": torch.cat([prompt["input_ids"], boi], 1),
            "attention_mask": torch.cat([prompt["attention_mask"], torch.ones_like(boi)], 1)}


def generation_model(image_tokens: int, recipe: str | os.PathLike | None = None):
    """The tiny SigLIP-SigLIP model (or `recipe`'s model) with its vision space resized to `image_tokens` tokens.

    The default is the tiny preset's random-init tower (a config, not the shipped 64 px weights), so the
    image grid can be resized: decoding cost depends on shapes, not on weights.
    """
    from zoo.config import merge
    from zoo.presets import preset

    spec = _recipe_parts(recipe)[0] if recipe else preset("siglip-siglip", "tiny")
    space = spec["init_args"].get("space") or spec["init_args"].get("output_space")
    cfg = (space or {}).get("init_args", {}).get("config")
    if not cfg or "patch_size" not in cfg:
        raise ValueError(f"{recipe}: generation bench needs a ViT output space with a `config` (image_size, patch_size)")
    grid = int(round(image_tokens ** 0.5))
    if grid * grid != image_tokens:
        raise ValueError(f"image_tokens must be a square number, got {image_tokens}")
    key = "space" if "space" in spec["init_args"] else "output_space"
    spec = merge(spec, {"init_args": {key: {"init_args": {"config": {"image_size": grid * cfg["patch_size"]}}}}})
    return _build_model(spec).eval()


def bench_generate(image_tokens: tuple[int, ...] = (64, 256), batch_sizes: tuple[int, ...] = (1, 16),
                   repeats: int = 1) -> list[dict[str, Any]]:
    """Writing one image per prompt: the KV-cached path against the paper's recompute-every-step path.

    Each (tokens, batch) case runs both paths on the same prompts (greedy, `start_in_image`, best of
    `repeats` after one short warm-up) and checks they agree; speedup = recompute s / cached s.
    """
    from zoo.generate import GenerationConfig, generate

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
            from zoo.config import merge
            from zoo.presets import preset

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
    if "memory" in suites:
        results["memory"] = bench_memory(max_steps=10 if quick else 30, with_test=not quick)
    results["meta"].update(load_after=os.getloadavg(), wall_s=time.perf_counter() - start)
    results["targets"] = targets(results)
    return results


def _meta(quick: bool) -> dict[str, Any]:
    return {"quick": quick, "load_before": os.getloadavg(), "cpu_count": os.cpu_count(),
            "torch_threads": torch.get_num_threads(), "torch": torch.__version__, "python": platform.python_version(),
            "started": time.strftime("%Y-%m-%d %H:%M:%S")}


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
    if "gpu" in results:
        from tools.bench_gpu import render_gpu

        render_gpu(results["gpu"], console)
    table("targets (ratios measured in this run)", results.get("targets", []), [
        ("name", "target", 0), ("how", "measured as", 0), ("value", "value", 2), ("target", "goal", 2), ("ok", "met", 0)])


def bench(suite: str = "all", json: bool = False, gpu: bool = False, gpu_shapes: str = "full", quick: bool = False,
          recipes: list[str] | None = None, threads: int | None = None, out: str | None = None) -> dict[str, Any]:
    """Speed and memory benchmarks; every target is judged by a ratio measured within this one run.

    Args:
        suite: "all" or a comma-separated choice of train, generate, data, memory.
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

"""`unizoo measure`: where a unified model's bottleneck is, measured on fresh smart-watch renders.

* `spaces RECIPE...`: per recipe, what the tokens its LM *reads* keep (linear probes per attribute on the
  flattened tokens, fitted on val renders, scored on test renders) and what its *written* space keeps (the
  attribute reader on decode(encode(x)): VQ reconstructions or a continuous space's pixel decoder).
* `guidance RUN`: the attribute reader's agreement with the prompt vs classifier-free guidance scale
  (and temperature) on val prompts, for choosing the decoding of a discrete model on val.
* `generation RUN`: for a trained run, generation fidelity per image-token position, teacher-forced (the
  true previous tokens fed) vs free-running (its own), as code accuracy (discrete) or cosine (continuous),
  with a heat map over the image grid (code accuracy by region).
* `prompt RUN`: does the model use its generation prompt? The teacher-forced image loss of val prompts
  against the same images under another sample's prompt, for every checkpoint of the run (or one): a model
  that ignores its prompt scores the same on both, and nothing but its marginal image can come out.
* `attributes RUN` (tools/measure_attributes.py): the same per stated attribute: only that value changed.
* `answers RUN... --attribute A` (tools/measure_answers.py): multiple-choice accuracy on questions about A
  (each candidate reply scored teacher-forced): what a model knows but does not say.

Each writes JSON (and PNGs) to `--out` and prints its table.
"""
from __future__ import annotations

import json
import math
from pathlib import Path
from typing import Any

import torch

from tools import space_eval as ev

DEFAULT_OUT = "runs/measure"


def _space_encoder(space: Any, size: int):
    """pixels in [-1, 1] at `size` -> the features the LM gets from `space` (in the space's pixel convention)."""
    def encode(pixels: torch.Tensor) -> torch.Tensor:
        if pixels.shape[-1] != space.image_size:
            pixels = torch.nn.functional.interpolate(pixels, size=space.image_size, mode="bicubic", antialias=True)
        features, codes = space.encode(ev.to_space_pixels(pixels, space))
        return space.embed_codes(codes) if codes is not None else features
    return encode


def _roundtrip(space: Any):
    """pixels in [-1, 1] -> decode(encode(x)) back in [-1, 1], or None where the space cannot decode."""
    if not getattr(space, "can_decode", False):
        return None

    def roundtrip(pixels: torch.Tensor) -> torch.Tensor:
        features, codes = space.encode(ev.to_space_pixels(pixels, space))
        out = space.decode(codes=codes) if space.discrete else space.decode(features=features)
        return ev.from_space_pixels(out, space)
    return roundtrip


@torch.no_grad()
def spaces(recipes: list[str], images: int = 500, fit: int = 1500, seed: int = 0, out: str = DEFAULT_OUT,
           reader: str = "zoo/assets/readers/reader-64.safetensors", threads: int = 0) -> dict[str, Any]:
    """Probe the read tokens and read back the written space of each recipe's model (fresh val/test renders)."""
    from datamodules.smartwatch.reader import load_reader, resolve_reader_path
    from tools.lightning_cli import load_recipe
    from zoo.config import build

    if threads:
        torch.set_num_threads(threads)
    judge, _ = load_reader(resolve_reader_path(reader))
    results: dict[str, Any] = {}
    for recipe in recipes:
        model = build(load_recipe(recipe)["model"]).eval()
        row: dict[str, Any] = {}
        if model.read_space is not None:
            size = model.read_space.image_size
            probes = ev.token_probe_accuracies(_space_encoder(model.read_space, size), seed, size, fit, images)
            row["read"] = {k.replace("token_probe_", ""): v for k, v in probes.items()}
        if model.write_space is not None:
            roundtrip = _roundtrip(model.write_space)
            row["written"] = (ev.reader_on_images(judge, roundtrip, seed, images, model.write_space.image_size)
                              if roundtrip is not None else "no pixel decoder")
        results[recipe] = row
        print(_format_row(recipe, row), flush=True)
    _write(out, "spaces.json", {"protocol": {"probe_fit_val": fit, "test_images": images, "seed": seed,
                                             "reader": reader}, "results": results})
    return results


def _format_row(recipe: str, row: dict[str, Any]) -> str:
    read = row.get("read", {})
    written = row.get("written", {})
    parts = [Path(recipe).stem]
    if read:
        parts.append("read probes " + " ".join(f"{k} {v:.2f}" for k, v in read.items()))
    if isinstance(written, dict) and written:
        keys = ("hour", "minute_within_1", "weather", "weather_pos", "battery_pos", "battery_mae")
        parts.append("written (reader) " + " ".join(f"{k} {written[k]:.2f}" for k in keys))
    elif written:
        parts.append(f"written: {written}")
    return " | ".join(parts)


def _write(out: str, name: str, payload: dict[str, Any]) -> Path:
    from zoo.catalog.hub_files import atomic_write_text

    path = Path(out) / name
    path.parent.mkdir(parents=True, exist_ok=True)
    atomic_write_text(path, json.dumps(payload, indent=2, sort_keys=True))
    return path


@torch.no_grad()
def generation(run: str, images: int = 100, seed: int = 0, out: str = DEFAULT_OUT, threads: int = 0) -> dict[str, Any]:
    """Teacher-forced vs free-running fidelity per written image-token position of a run's model."""
    from datamodules.smartwatch.source import SmartWatchSource
    from tools.probe import _watch_source
    from tools.generate import load_model
    from zoo.eval.evaluation import _image_prompt
    from zoo.model.generate import generate_images

    if threads:
        torch.set_num_threads(threads)
    path = _checkpoint(run)
    model = load_model(path).eval()
    space = model.write_space
    if space is None:
        raise ValueError(f"measure generation: {run} writes no images")
    data_seed, size = _watch_source(Path(run), model)
    source = SmartWatchSource(train=1, val=1, test=images * 3, seed=data_seed, size=size)
    samples = [s for s in (source.sample("test", i) for i in range(images * 3)) if s.task == "generation"][:images]
    teacher, free = [], []
    for start in range(0, len(samples), 25):
        chunk = samples[start:start + 25]
        batch = model.processor(chunk)
        targets, predictions = _teacher_forced(model, batch)
        written = generate_images(model, _image_prompt(model, chunk))
        if space.discrete:
            teacher.append((predictions == targets).float())
            free.append((written == targets).float())
        else:
            teacher.append(feature_cosine_tokens(predictions, targets))
            free.append(feature_cosine_tokens(written.float(), targets))
    tf, fr = torch.cat(teacher).mean(0), torch.cat(free).mean(0)
    metric = "code_accuracy" if space.discrete else "cosine"
    result = {"run": str(run), "checkpoint": str(path), "metric": metric, "images": len(samples),
              "teacher_forced_mean": float(tf.mean()), "free_running_mean": float(fr.mean()),
              "teacher_forced_per_position": [round(float(v), 4) for v in tf],
              "free_running_per_position": [round(float(v), 4) for v in fr]}
    name = _run_name(run)
    _write(out, f"generation-{name}.json", result)
    _heatmaps(tf, fr, metric, Path(out) / f"generation-{name}.png")
    print(f"{name}: {metric} teacher-forced {result['teacher_forced_mean']:.3f} vs free-running "
          f"{result['free_running_mean']:.3f} over {len(samples)} test prompts; first/last quarter of positions "
          f"free-running {float(fr[: len(fr) // 4].mean()):.3f} / {float(fr[-len(fr) // 4:].mean()):.3f}")
    return result


def _is_zoo(run: str | Path) -> bool:
    from tools.generate import ZOO_PREFIX

    return str(run).startswith(ZOO_PREFIX)


def _checkpoint(run: str) -> str | Path:
    """What `load_model` loads for `run`: "zoo:NAME" itself, else the run's checkpoint file."""
    from tools.probe import find_checkpoint

    return run if _is_zoo(run) else find_checkpoint(run)


def _run_name(run: str) -> str:
    """A file-name stem for a run: its folder, the folder above a Lightning `version_N` / a .ckpt file, or
    a zoo model's name."""
    if _is_zoo(run):
        return str(run).split(":", 1)[1]
    path = Path(run)
    if path.is_file():
        path = path.parent.parent if path.parent.name == "checkpoints" else path.parent
    if path.name.startswith("version_") and path.parent.name:
        return f"{path.parent.name}-{path.name}"
    return path.name


def feature_cosine_tokens(a: torch.Tensor, b: torch.Tensor) -> torch.Tensor:
    """Cosine per token [B, N] of features [B, N, D]."""
    return torch.nn.functional.cosine_similarity(a.float(), b.float(), dim=-1)


def _teacher_forced(model: Any, batch: dict[str, Any]) -> tuple[torch.Tensor, torch.Tensor]:
    """(targets [B, N] codes or [B, N, D] features, teacher-forced predictions of the same shape)."""
    ids = batch["input_ids"]
    embeds = model.embed_inputs(batch)
    write_pos = ids == model.backbone.token_ids["image_out"]
    teacher, targets = model.encode_write(batch)
    embeds = embeds.masked_scatter(write_pos.unsqueeze(-1), teacher.to(embeds.dtype))
    hidden, _ = model.backbone.hidden_states(embeds, batch["attention_mask"])
    predicted = model.head(hidden[:, :-1][write_pos[:, 1:]])
    n = model.write_space.num_tokens
    if model.write_space.discrete:
        return targets.view(-1, n), predicted.argmax(-1).view(-1, n)
    return targets.view(-1, n, targets.shape[-1]), predicted.view(-1, n, predicted.shape[-1])


def _heatmaps(teacher: torch.Tensor, free: torch.Tensor, metric: str, path: Path) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    side = int(round(math.sqrt(len(teacher))))
    shape = (side, side) if side * side == len(teacher) else (1, len(teacher))
    fig, axes = plt.subplots(1, 2, figsize=(8, 3.8))
    for ax, values, title in ((axes[0], teacher, "teacher-forced"), (axes[1], free, "free-running")):
        image = ax.imshow(values.view(shape).numpy(), vmin=0, vmax=1, cmap="viridis")
        ax.set_title(f"{title}\n{metric} {float(values.mean()):.2f}", fontsize=10)
        ax.set_xticks([]), ax.set_yticks([])
    fig.colorbar(image, ax=axes, shrink=0.8)
    fig.savefig(path, dpi=100)
    plt.close(fig)


@torch.no_grad()
def guidance(run: str, scales: list[float] = (1.0, 2.0, 3.0), temperatures: list[float] = (0.0,), top_k: int = 0,
             images: int = 100, split: str = "val", seed: int = 0, out: str = DEFAULT_OUT,
             threads: int = 0) -> dict[str, Any]:
    """The attribute reader's agreement with the prompt vs classifier-free guidance scale (and sampling
    temperature) for a run's model, on `images` generation prompts of `split` (val: choose here, not on test)."""
    from dataclasses import replace

    from datamodules.smartwatch.evaluate import score_images
    from datamodules.smartwatch.reader import DEFAULT_READER
    from datamodules.smartwatch.source import SmartWatchSource
    from tools.generate import load_model
    from tools.probe import _watch_source
    from zoo.eval.evaluation import decode_generated, evaluate_samples

    if threads:
        torch.set_num_threads(threads)
    path = _checkpoint(run)
    model = load_model(path).eval()
    if model.write_space is None or not model.write_space.can_decode:
        raise ValueError(f"measure guidance: {run} writes no decodable images")
    data_seed, size = _watch_source(Path(run), model)
    counts = {"train": 1, "val": 1, "test": 1, split: images * 3}
    source = SmartWatchSource(**counts, seed=data_seed, size=size)
    samples = [s for s in (source.sample(split, i) for i in range(images * 3)) if s.task == "generation"][:images]
    rows = []
    for temperature in temperatures:
        for scale in scales:
            config = replace(model.generation_config(), guidance_scale=float(scale), image_temperature=float(temperature),
                             image_top_k=top_k, seed=seed)
            records = []
            for start in range(0, len(samples), 32):
                records += evaluate_samples(model, samples[start:start + 32], config)
            fidelity = score_images(records, decode_generated(model, records), DEFAULT_READER)["generation_fidelity"]
            row = {"guidance_scale": scale, "temperature": temperature, "top_k": top_k,
                   **{k: v for k, v in fidelity.items() if isinstance(v, float)}}
            rows.append(row)
            print("scale {guidance_scale:>4} temperature {temperature:>4}: ".format(**row)
                  + " ".join(f"{k} {v:.3f}" for k, v in row.items() if k not in ("guidance_scale", "temperature", "top_k")),
                  flush=True)
    name = _run_name(run)
    result = {"run": str(run), "checkpoint": str(path), "split": split, "images": len(samples), "rows": rows}
    _write(out, f"guidance-{name}.json", result)
    return result


@torch.no_grad()
def prompt(run: str, images: int = 100, split: str = "val", all_checkpoints: bool = True, out: str = DEFAULT_OUT,
           threads: int = 0) -> dict[str, Any]:
    """Teacher-forced image loss with each image's own prompt vs a shuffled one, per checkpoint of a run.

    The gap (shuffled - own, nats per image token; over all tokens and over the first image row, whose
    tokens no earlier image token predicts) measures how much of the image the model draws from its prompt.
    """
    from datamodules.smartwatch.source import SmartWatchSource
    from tools.generate import load_model
    from tools.probe import _watch_source

    if threads:
        torch.set_num_threads(threads)
    last = _checkpoint(run)
    paths = _checkpoints_in_order(last) if all_checkpoints and not _is_zoo(run) else [last]
    rows = []
    for path in paths:
        model = load_model(path).eval()
        if model.write_space is None:
            raise ValueError(f"measure prompt: {run} writes no images")
        if not rows:  # the same samples for every checkpoint
            data_seed, size = _watch_source(Path(run), model)
            counts = {"train": 1, "val": 1, "test": 1, split: images * 3}
            source = SmartWatchSource(**counts, seed=data_seed, size=size)
            own = [s for s in (source.sample(split, i) for i in range(images * 3)) if s.task == "generation"][:images]
            shuffled = [_with_prompt_of(s, own[(i + 1) % len(own)]) for i, s in enumerate(own)]
        n, width = model.write_space.num_tokens, int(round(math.sqrt(model.write_space.num_tokens)))
        losses = {}
        for name, samples in (("own", own), ("shuffled", shuffled)):
            per_token = torch.cat([model(model.processor(samples[k:k + 25]))["image_loss"].view(-1, n)
                                   for k in range(0, len(samples), 25)])
            losses[name] = per_token
        gap = losses["shuffled"] - losses["own"]
        row = {"checkpoint": str(path), "step": _step_of(path), "own_loss": float(losses["own"].mean()),
               "shuffled_loss": float(losses["shuffled"].mean()), "gap": float(gap.mean()),
               "gap_first_row": float(gap[:, :width].mean())}
        rows.append(row)
        print(f"{Path(path).name}: image loss own {row['own_loss']:.4f}, shuffled prompt {row['shuffled_loss']:.4f}, "
              f"gap {row['gap']:+.4f} (first row {row['gap_first_row']:+.4f})", flush=True)
    result = {"run": str(run), "split": split, "images": len(own), "rows": rows}
    _write(out, f"prompt-{_run_name(run)}.json", result)
    return result


def _with_prompt_of(sample: Any, other: Any) -> Any:
    """`sample` (its image and reply) asked for with `other`'s request."""
    from dataclasses import replace

    return replace(sample, turns=[dict(other.turns[0]), *[dict(t) for t in sample.turns[1:]]])


def _checkpoints_in_order(last: Path) -> list[Path]:
    """Every step checkpoint beside `last`, by step, then `last` itself (the final weights)."""
    steps = sorted((p for p in Path(last).parent.glob("*.ckpt") if _step_of(p) is not None), key=_step_of)
    return [p for p in steps if p != Path(last)] + [Path(last)]


def _step_of(path: Path | str) -> int | None:
    """The training step in a checkpoint's file name (`step01313.ckpt`, `epoch=0-step=131.ckpt`), or None."""
    import re

    match = re.search(r"step=?(\d+)", Path(path).stem)
    return int(match.group(1)) if match else None

"""Generation-based evaluation of a UnifiedVLM on Samples: answers, captions and generated images.

Protocol (stored beside the metrics): understanding samples are answered from their first user turn
(greedy unless configured, at most `max_new_tokens`); generation samples are teacher-forced through
the assistant's sentence up to `<boi>` and then write exactly one image, so image fidelity is measured
on every prompt (whether the model opens an image by itself is a separate, text-side skill).
Every sample is evaluated alone in effect: prompts are left-padded and attention-masked, so results do
not depend on batch size (tested).
"""
from __future__ import annotations

from dataclasses import replace
from typing import Any

import torch

from zoo.eval.metrics import code_accuracy, feature_cosine, nearest_target, retrieval_chance, retrieval_top1
from zoo.model.generate import GenerationConfig, decode_images, generate, generate_images
from zoo.model.processor import unconditional_turn
from zoo.sample import IMAGE_MARKER, Sample

UNDERSTANDING = ("vqa", "caption", "text")


def _image_prompt(model, samples: list[Sample]) -> dict[str, Any]:
    """Prompts ending in `<boi>`: the request, then the assistant's words before its image."""
    base = model.processor.prompt(samples)
    pad, boi = model.backbone.token_ids["pad"], model.backbone.token_ids["boi"]
    rows = []
    for i, sample in enumerate(samples):
        ids = base["input_ids"][i][base["attention_mask"][i].bool()].tolist()
        answer = next(t["content"] for t in sample.turns if t["role"] == "assistant")
        prefix = answer.split(IMAGE_MARKER)[0].strip()
        rows.append(ids + model.backbone.tokenizer.encode(prefix, add_special_tokens=False) + [boi])
    width = max(len(r) for r in rows)
    ids = torch.full((len(rows), width), pad, dtype=torch.long)
    mask = torch.zeros((len(rows), width), dtype=torch.long)
    for i, row in enumerate(rows):
        ids[i, width - len(row):] = torch.tensor(row)
        mask[i, width - len(row):] = 1
    return {**base, "input_ids": ids, "attention_mask": mask}


@torch.no_grad()
def evaluate_samples(model, samples: list[Sample], config: GenerationConfig) -> list[dict[str, Any]]:
    """One record per sample: understanding answers, or generated image tokens beside the ground truth."""
    records: list[dict[str, Any]] = []
    understanding = [s for s in samples if s.task in UNDERSTANDING]
    if understanding:
        prompt = model.processor.prompt(understanding)
        out = generate(model, _to_device(prompt, model.device), config)
        for sample, text, reference in zip(understanding, out.texts, prompt["references"]):
            question = next(t["content"] for t in sample.turns if t["role"] == "user")
            records.append({"task": sample.task, "question": question.replace(IMAGE_MARKER, "").strip(),
                            "ground_truth": reference, "answer": text, "attrs": _plain(sample.attrs), **_item(sample)})
    generation = [s for s in samples if s.task == "generation"] if model.write_space is not None else []
    if generation:
        batch = _to_device(_image_prompt(model, generation), model.device)
        unconditional = None
        if config.guidance_scale != 1.0:  # the same samples without their description (classifier-free guidance)
            nulls = [replace(s, turns=[unconditional_turn(s.turns[0]), *s.turns[1:]]) for s in generation]
            unconditional = _to_device(_image_prompt(model, nulls), model.device)
        written = generate_images(model, batch, config, unconditional)
        space = model.write_space
        pixels = torch.stack([space.preprocess(s.images[-1]) for s in generation]).to(model.device)
        target_features, target_codes = space.encode(pixels)
        for i, sample in enumerate(generation):
            tokens = written[i]
            record = {"task": "generation", "prompt": sample.turns[0]["content"], "attrs": _plain(sample.attrs), **_item(sample),
                      "tokens": tokens.cpu() if tokens is not None else None,
                      "target": (target_codes[i] if space.discrete else target_features[i]).cpu()}
            if tokens is not None and space.discrete:
                record["generated_features"] = space.embed_codes(tokens.unsqueeze(0))[0].cpu()
            elif tokens is not None:
                record["generated_features"] = tokens.float().cpu()
            record["target_features"] = target_features[i].cpu()
            records.append(record)
    return records


def generation_metrics(model, records: list[dict[str, Any]]) -> dict[str, Any]:
    """Fidelity of generated image tokens against the ground truth's, with the protocol beside it."""
    done = [r for r in records if r["task"] == "generation" and r.get("tokens") is not None]
    if not done:
        return {}
    space = model.write_space
    generated = torch.stack([r["generated_features"] for r in done])
    target = torch.stack([r["target_features"] for r in done])
    metrics: dict[str, Any] = {
        "feature_cosine": feature_cosine(generated, target).mean().item(),
        # What a model that ignores the prompt and always writes the average test image would score.
        "feature_cosine_constant": feature_cosine(target.mean(0, keepdim=True).expand_as(target), target).mean().item(),
        "feature_cosine_conditional": conditional_baseline_cosine(done, target),
        "retrieval_top1": retrieval_top1(generated, target),
        "retrieval_chance": retrieval_chance(len(done)),
        "images": len(done),
    }
    if space.discrete:
        codes = torch.stack([r["tokens"] for r in done])
        metrics["code_accuracy"] = code_accuracy(codes, torch.stack([r["target"] for r in done])).mean().item()
        metrics["code_chance"] = 1.0 / space.codebook_size
    return metrics


# Categorical attributes a prompt may state (records' attrs["mentioned"]); continuous ones (time, battery)
# rarely repeat exactly among a few hundred test prompts, so they do not form groups.
CONDITION_KEYS = ("weather", "weather_pos", "battery_pos")


def conditional_baseline_cosine(records: list[dict[str, Any]], target: torch.Tensor) -> float | None:
    """Cosine of writing, for each prompt, the mean of the *other* eval targets that share every categorical
    attribute the prompt states (leave-one-out; the mean of all others where none shares them).

    A model that only learned "what goes with these words" scores this; beating it means the generation
    follows more of the prompt than its categories. None when the records state no attributes.
    """
    if not records or not all("mentioned" in (r.get("attrs") or {}) for r in records):
        return None
    stated = [[k for k in CONDITION_KEYS if k in r["attrs"]["mentioned"]] for r in records]
    flat = target.flatten(1).float()
    total, n = flat.sum(0), len(records)
    scores = []
    for i, keys in enumerate(stated):
        mine = records[i]["attrs"]
        peers = [j for j, r in enumerate(records) if j != i and all(r["attrs"].get(k) == mine.get(k) for k in keys)]
        if peers:
            mean = flat[peers].mean(0)
        elif n > 1:
            mean = (total - flat[i]) / (n - 1)
        else:
            return None
        scores.append(feature_cosine(mean.view_as(target[i]).unsqueeze(0), target[i].unsqueeze(0)).mean())
    return float(torch.stack(scores).mean())


def decode_generated(model, records: list[dict[str, Any]]) -> list[Any]:
    """PIL images decoded from generated codes (VQ spaces), aligned with generation records (None elsewhere)."""
    done = [r for r in records if r["task"] == "generation"]
    tokens = [r["tokens"] for r in done if r.get("tokens") is not None]
    pixels = decode_images(model, [t.to(model.device) for t in tokens]) if tokens else None
    if pixels is None:
        return [None] * len(done)
    images, it = [], iter(model.write_space.postprocess(pixels.clamp(-10, 10)))
    for r in done:
        images.append(next(it) if r.get("tokens") is not None else None)
    return images


def retrieved_images(records: list[dict[str, Any]], truths: list[Any]) -> list[Any]:
    """For continuous outputs: the ground-truth image whose features are nearest each generated set.

    A continuous space has no pixel decoder, so the picture of a generation is the test image it
    retrieves (cosine over flattened tokens, as `retrieval_top1` counts it); a grid of these beside
    the truth shows what the retrieval metric measures. Aligned with generation records (None elsewhere).
    """
    done = [r for r in records if r["task"] == "generation"]
    kept = [i for i, r in enumerate(done) if r.get("generated_features") is not None and i < len(truths)]
    if len(kept) < 2:
        return [None] * len(done)
    nearest = nearest_target(torch.stack([done[i]["generated_features"] for i in kept]),
                             torch.stack([done[i]["target_features"] for i in kept])).tolist()
    images: list[Any] = [None] * len(done)
    for row, i in enumerate(kept):
        images[i] = truths[kept[nearest[row]]]
    return images


def _item(sample: Sample) -> dict[str, int]:
    """{"item": the sample's position in the DataModule's split} where it has one (datamodules.mixed.MixedDataset)."""
    item = getattr(sample, "item", None)
    return {} if item is None else {"item": int(item)}


def _plain(attrs: dict[str, Any]) -> dict[str, Any]:
    return {k: v for k, v in attrs.items() if isinstance(v, (str, int, float, bool, list, tuple, dict, type(None)))}


def _to_device(batch: dict[str, Any], device: torch.device) -> dict[str, Any]:
    return {k: v.to(device) if isinstance(v, torch.Tensor) else v for k, v in batch.items()}


def write_outputs(out_dir: str, records: list[dict[str, Any]], metrics: dict[str, Any],
                  images: list[Any], truths: list[Any], retrieved: list[Any] | None = None) -> dict[str, str]:
    """Write answers.jsonl, metrics.json, generated PNGs (+ a grid beside the ground truth); atomically.

    `retrieved` (continuous outputs): the test image each generation retrieves, drawn as
    `retrieved_vs_truth.png`; these are never saved as generated images.
    """
    import json
    from pathlib import Path

    out = Path(out_dir)
    (out / "images").mkdir(parents=True, exist_ok=True)
    paths = {"answers": str(out / "answers.jsonl"), "metrics": str(out / "metrics.json"), "dir": str(out)}
    gen_index = 0
    lines = []
    for r in records:
        row = {k: v for k, v in r.items() if not isinstance(v, torch.Tensor)}
        if r["task"] == "generation":
            image = images[gen_index] if gen_index < len(images) else None
            if image is not None:
                row["image_path"] = f"images/generated-{gen_index:05d}.png"
                image.save(out / row["image_path"])
            gen_index += 1
        lines.append(json.dumps(row, sort_keys=True, default=str))
    _atomic_write(paths["answers"], "\n".join(lines) + "\n")
    _atomic_write(paths["metrics"], json.dumps(metrics, indent=2, sort_keys=True, default=float) + "\n")
    grid = _grid(images, truths)
    if grid is not None:
        grid.save(out / "generated_vs_truth.png")
        paths["grid"] = str(out / "generated_vs_truth.png")
    retrieval_grid = _grid(retrieved or [], truths)
    if retrieval_grid is not None:
        retrieval_grid.save(out / "retrieved_vs_truth.png")
        paths["grid"] = str(out / "retrieved_vs_truth.png")
    return paths


def comparison_grid_tensor(images: list[Any], truths: list[Any], limit: int = 16) -> torch.Tensor | None:
    """[3, H, W] grid: generated (or retrieved) images (top row) above their ground truth (bottom row)."""
    import torchvision.transforms.v2.functional as TF
    from torchvision.utils import make_grid

    pairs = [(g, t) for g, t in zip(images, truths) if g is not None and t is not None][:limit]
    if not pairs:
        return None
    size = pairs[0][0].size
    top = [TF.to_dtype(TF.to_image(g.convert("RGB").resize(size)), torch.float32, scale=True) for g, _ in pairs]
    bottom = [TF.to_dtype(TF.to_image(t.convert("RGB").resize(size)), torch.float32, scale=True) for _, t in pairs]
    return make_grid(top + bottom, nrow=len(pairs), padding=2, pad_value=0.5)


def _grid(images: list[Any], truths: list[Any]):
    from torchvision.transforms.v2.functional import to_pil_image

    tensor = comparison_grid_tensor(images, truths)
    return None if tensor is None else to_pil_image(tensor)


def _atomic_write(path: str, text: str) -> None:
    import os

    tmp = f"{path}.tmp-{os.getpid()}"
    with open(tmp, "w") as f:
        f.write(text)
    os.replace(tmp, path)

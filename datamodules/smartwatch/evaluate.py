"""Smart-watch scores of an evaluation run: the paper's VQA scoring, caption attributes and generation fidelity.

Generation fidelity (the project's metric; the study released only an Inception FID for VQ outputs and
nothing for continuous ones): an attribute reader trained on fresh renders (`reader.py`) reads each
generated watch, and its reading is compared with what the prompt asked for. Only attributes the prompt
states are scored (`attrs["mentioned"]`; the time is always stated): time with the study's circular partial
credit (and hour / minute / second exact), battery with 1 - |d|/100, weather and corners exact. Beside each
number: chance (a uniform guess) and `reader_on_truth`, the same reader on ground-truth renders of the same
prompts (the ceiling the reader itself allows). FID uses the reader's penultimate features (Inception is
not available offline); `fid_reference` is the FID of other, equally distributed test renders against the
same ground truth, i.e. what a perfect generator of *different* watches scores (the noise floor of FID at
this sample size).

Pixel path: `images` are the PIL images decoded from VQ codes, aligned with the generation records (None
where nothing was decoded). Feature path (continuous spaces such as SigLIP): a `FeatureReader` trained on
that space's encoding of fresh renders reads `generated_features` [N, D] (train one with
`python -m tools.train_reader --space-config space.yaml --out ...`, or `reader.train_feature_reader(space)`).
"""
from __future__ import annotations

from collections.abc import Sequence
from functools import lru_cache
from typing import Any

import torch
import torch.nn.functional as F
from torch import nn

from datamodules.smartwatch.reader import (
    AttributeReader,
    FeatureReader,
    decode_readings,
    images_to_tensor,
    load_reader,
    read_images,
)
from datamodules.smartwatch.render import render_watch
from datamodules.smartwatch.score import (answer_type, battery_score, chance_levels, parse_caption, score_answer,
                                          score_caption, score_vqa, time_score)
from datamodules.smartwatch.spec import WatchSpec, sample_watch

_CAPTION_CHANCE_KEY = {"time": "time", "weather": "weather", "battery": "battery",
                       "weather_pos": "position", "battery_pos": "position"}
_SPEC_KEYS = ("hour", "minute", "second", "battery", "weather", "weather_pos", "battery_pos", "face_color")
_EXACT = ("weather", "weather_pos", "battery_pos")
_REFERENCE_SEED = 1  # fid_reference draws test watches under another seed than the data's default 0


def score_records(records: list[dict[str, Any]], images: list[Any] | None = None, reader: Any = None,
                  feature_reader: Any = None) -> dict[str, Any]:
    """{"vqa", "vqa_by_question", "caption", "generation_fidelity"/"generation_fid", "feature_fidelity"/"feature_fid"}.

    VQA: only the first question of each vqa sample (PAPER.md §6), typed by its ground truth; vqa_by_question
    splits it by the asked attribute (`score_by_question`).
    Captions (new; the paper did not score them): every attribute the reference caption mentions.
    Generation: scored when `reader` (an AttributeReader or a weights path) and decoded `images` are given;
    continuous outputs when `feature_reader` (a FeatureReader or path) is given.
    """
    chance = chance_levels()
    out: dict[str, Any] = {}
    vqa = [r for r in records if r.get("task") == "vqa"]
    if vqa:
        out["vqa"] = {**score_vqa({"ground_truth": r["ground_truth"], "answer": r["answer"]} for r in vqa),
                      "chance": chance}
        by_question = score_by_question(vqa)
        if by_question:  # beside the paper's table, which text-only records (score_text_records) also give
            out["vqa_by_question"] = by_question
    captions = [(r["attrs"], r["answer"]) for r in records if r.get("task") == "caption"]
    if captions:
        out["caption"] = _caption_table(captions)
    if reader is not None and images is not None:
        out.update(score_images(records, images, reader))
    if feature_reader is not None:
        out.update(score_features(records, feature_reader))
    return out


def score_by_question(vqa: Sequence[dict[str, Any]]) -> dict[str, float]:
    """Mean VQA score per asked attribute (attrs["attribute"]: weather_pos and battery_pos apart).

    The paper's types pool both corners as "position"; a transfer study that hides one corner (spec.Bias)
    needs that corner's score alone. Records without the asked attribute are left out.
    """
    sums: dict[str, float] = {}
    counts: dict[str, int] = {}
    for r in vqa:
        attribute = (r.get("attrs") or {}).get("attribute")
        if not isinstance(attribute, str):
            continue
        kind, value = score_answer(r["ground_truth"], r["answer"])
        if kind is None:
            continue
        sums[attribute] = sums.get(attribute, 0.0) + value
        counts[attribute] = counts.get(attribute, 0) + 1
    return {a: sums[a] / counts[a] for a in sorted(sums)}


def _caption_table(pairs: Sequence[tuple[dict[str, Any], str]]) -> dict[str, Any]:
    """Mean score per attribute of (watch attrs, caption) pairs, with counts and chance."""
    chance = chance_levels()
    sums: dict[str, float] = {}
    counts: dict[str, int] = {}
    for attrs, caption in pairs:
        for attribute, value in score_caption(attrs, caption).items():
            sums[attribute] = sums.get(attribute, 0.0) + value
            counts[attribute] = counts.get(attribute, 0) + 1
    table: dict[str, Any] = {a: sums[a] / counts[a] for a in sorted(sums)}
    table["counts"] = counts
    table["chance"] = {a: chance[_CAPTION_CHANCE_KEY[a]] for a in sorted(sums)}
    return table


def caption_truth(reference: str) -> dict[str, Any] | None:
    """Watch attrs as a reference caption states them (for `score_caption`), None when it states none.

    For data that carries only text (a LLaVA-format file): "mentioned" lists what the caption states, so
    only those attributes are scored; the time is left out where the reference states no time.
    """
    stated = parse_caption(reference)
    mentioned = [k for k in _CAPTION_CHANCE_KEY if stated[k] is not None]
    if not mentioned:
        return None
    hour, minute, second = stated["time"] or (0, 0, 0)
    return {"hour": hour, "minute": minute, "second": second, "battery": stated["battery"],
            "weather": stated["weather"], "weather_pos": stated["weather_pos"],
            "battery_pos": stated["battery_pos"], "mentioned": mentioned}


def score_text_records(records: list[dict[str, Any]]) -> dict[str, Any]:
    """{"vqa", "caption"} of smart-watch records that carry only text (no watch attrs), e.g. from a
    LLaVA-format file in the study's layout (`unizoo data smartwatch`, the study's own files).

    VQA: the paper's scoring (PAPER.md §6) of every vqa record whose ground truth is a time, battery,
    weather or position; the others are counted in "skipped". Captions: each attribute the reference
    caption states (`caption_truth`); captions stating none are counted in "skipped".
    """
    out: dict[str, Any] = {}
    vqa = [r for r in records if r.get("task") == "vqa"]
    typed = [r for r in vqa if isinstance(r.get("ground_truth"), str) and answer_type(r["ground_truth"]) is not None]
    if typed:
        out["vqa"] = {**score_vqa({"ground_truth": r["ground_truth"], "answer": r["answer"]} for r in typed),
                      "chance": chance_levels()}
        if len(typed) < len(vqa):
            out["vqa"]["skipped"] = len(vqa) - len(typed)
    captions = [r for r in records if r.get("task") == "caption"]
    pairs = [(truth, r["answer"]) for r in captions
             if (truth := caption_truth(str(r.get("ground_truth", "")))) is not None]
    if pairs:
        out["caption"] = _caption_table(pairs)
        if len(pairs) < len(captions):
            out["caption"]["skipped"] = len(captions) - len(pairs)
    return out


def is_smartwatch_text(records: list[dict[str, Any]]) -> bool:
    """Whether records look like the smart-watch study's: vqa records exist and every ground truth of
    them is a time, battery, weather or position answer (the paper's four question types)."""
    vqa = [r for r in records if r.get("task") == "vqa"]
    return bool(vqa) and all(isinstance(r.get("ground_truth"), str) and answer_type(r["ground_truth"]) is not None
                             for r in vqa)


# ----------------------------------------------------------------------------------------- agreement
def spec_from_attrs(attrs: dict[str, Any], where: str = "record") -> WatchSpec:
    """The WatchSpec a record's attrs describe (ValueError naming the record and the missing key)."""
    missing = [k for k in _SPEC_KEYS if k not in attrs]
    if missing:
        raise ValueError(f"{where}: attrs lack {missing} (need {list(_SPEC_KEYS)} to re-render the watch)")
    values = {k: attrs[k] for k in _SPEC_KEYS}
    values["face_color"] = tuple(int(c) for c in values["face_color"])
    return WatchSpec(**values)


def _is_watch(record: dict[str, Any]) -> bool:
    return isinstance(record.get("attrs"), dict) and "hour" in record["attrs"] and "weather" in record["attrs"]


def attribute_agreement(readings: Sequence[dict[str, Any]], specs: Sequence[WatchSpec],
                        mentioned: Sequence[Sequence[str]]) -> dict[str, Any]:
    """Mean agreement per stated attribute of readings with the prompts' watches, with counts."""
    sums: dict[str, float] = {}
    counts: dict[str, int] = {}

    def add(key: str, value: float) -> None:
        sums[key] = sums.get(key, 0.0) + value
        counts[key] = counts.get(key, 0) + 1

    for reading, spec, stated in zip(readings, specs, mentioned, strict=True):
        add("time", time_score((spec.hour, spec.minute, spec.second),
                               (reading["hour"], reading["minute"], reading["second"])))
        add("hour", float(reading["hour"] == spec.hour % 12))
        add("minute", float(reading["minute"] == spec.minute))
        add("second", float(reading["second"] == spec.second))
        if "battery" in stated:
            add("battery", battery_score(spec.battery, reading["battery"]))
            add("battery_abs_error", float(abs(spec.battery - reading["battery"])))
        for attribute in _EXACT:
            if attribute in stated:
                add(attribute, float(reading[attribute] == getattr(spec, attribute)))
    out: dict[str, Any] = {k: sums[k] / counts[k] for k in sums}
    out["counts"] = counts
    return out


def agreement_chance() -> dict[str, float]:
    """Expected agreement of a uniform guess per attribute."""
    levels = chance_levels()
    return {"time": levels["time"], "hour": 1 / 12, "minute": 1 / 60, "second": 1 / 60, "battery": levels["battery"],
            "battery_abs_error": 100 * (1 - levels["battery"]), "weather": levels["weather"],
            "weather_pos": levels["position"], "battery_pos": levels["position"]}


# ----------------------------------------------------------------------------------------- readers and FID
@lru_cache(maxsize=8)
def _load_cached(path: str) -> tuple[nn.Module, dict[str, Any]]:
    return load_reader(path)


def _reader(reader: Any, cls: type) -> tuple[nn.Module, dict[str, Any]]:
    if isinstance(reader, cls):
        return reader.eval(), {"path": None, "sha256": None, "card": {}}
    if isinstance(reader, str):
        model, info = _load_cached(reader)
        if not isinstance(model, cls):
            raise ValueError(f"reader {reader!r} is a {type(model).__name__}; a {cls.__name__} is needed here")
        return model, info
    raise ValueError(f"expected a {cls.__name__} or a path to one, got {type(reader).__name__}")


class _Frozen(nn.Module):
    """A reader's `features` as a torchmetrics FID extractor, kept in eval mode and out of autograd."""

    def __init__(self, reader: nn.Module):
        super().__init__()
        self.reader, self.num_features = reader, reader.num_features

    def train(self, mode: bool = True) -> _Frozen:  # noqa: D102 -- BatchNorm must keep its running statistics
        return super().train(False)

    @torch.no_grad()
    def forward(self, x: torch.Tensor) -> torch.Tensor:  # noqa: D102
        return self.reader.features(x)


def reader_fid(real: torch.Tensor, fake: torch.Tensor, reader: nn.Module) -> float:
    """FID between two input sets in `reader`'s feature space (torchmetrics; NaN below 2 per side)."""
    from torchmetrics.image.fid import FrechetInceptionDistance

    if len(real) < 2 or len(fake) < 2:
        return float("nan")
    metric = FrechetInceptionDistance(feature=_Frozen(reader.eval()), normalize=True)
    metric.update(real, real=True)
    metric.update(fake, real=False)
    return float(metric.compute())


def _to_size(images: Sequence[Any], size: int) -> torch.Tensor:
    """PIL images of any sizes -> float [B, 3, size, size] in [0, 1] (the reader's own resize)."""
    tensors = []
    for im in images:
        x = images_to_tensor([im]).float() / 255
        if x.shape[-1] != size or x.shape[-2] != size:
            x = F.interpolate(x, size=(size, size), mode="bilinear", antialias=True, align_corners=False)
        tensors.append(x)
    return torch.cat(tensors)


def _protocol(info: dict[str, Any], records: Sequence[dict[str, Any]], **extra: Any) -> dict[str, Any]:
    train = info.get("card", {}).get("protocol", {}).get("train", {})
    seeds = sorted({r["attrs"].get("seed") for r in records if r["attrs"].get("seed") is not None})
    return {"samples": len(records), "data_seeds": seeds, "reader": info.get("path"),
            "reader_sha256": info.get("sha256"), "reader_seed": train.get("seed"), **extra}


def score_images(records: list[dict[str, Any]], images: Sequence[Any], reader: Any) -> dict[str, Any]:
    """Generation fidelity and reader FID of decoded images (aligned with the generation records)."""
    generation = [r for r in records if r.get("task") == "generation"]
    if len(images) != len(generation):
        raise ValueError(f"score_images: {len(images)} images for {len(generation)} generation records")
    pairs = [(i, r, im) for i, (r, im) in enumerate(zip(generation, images)) if im is not None and _is_watch(r)]
    if not pairs:
        return {}
    model, info = _reader(reader, AttributeReader)
    specs = [spec_from_attrs(r["attrs"], f"generation record {i}") for i, r, _ in pairs]
    mentioned = [r["attrs"].get("mentioned") or ("time",) for _, r, _ in pairs]
    sizes = sorted({im.size for _, _, im in pairs})
    generated = _to_size([im for _, _, im in pairs], model.size)
    # Ground truth drawn at each generated image's own size (32 px at least: the renderer's floor), then
    # brought to the reader's size the same way as the generated image.
    sides = [max(32, im.size[0]) for _, _, im in pairs]
    truth = _to_size([render_watch(s, side) for s, side in zip(specs, sides)], model.size)
    others = [sample_watch(_REFERENCE_SEED, "test", i) for i in range(len(pairs))]
    reference = _to_size([render_watch(s, side) for s, side in zip(others, sides)], model.size)
    fidelity = attribute_agreement(read_images(model, generated), specs, mentioned)
    fidelity["reader_on_truth"] = attribute_agreement(read_images(model, truth), specs, mentioned)
    fidelity["chance"] = {k: v for k, v in agreement_chance().items() if k in fidelity["counts"]}
    note = None if sizes == [(model.size, model.size)] else (
        f"generated images are {sizes}, the reader reads {model.size} px: compare with reader_on_truth")
    protocol = _protocol(info, [r for _, r, _ in pairs], reader_size=model.size,
                         generated_sizes=[list(s) for s in sizes],
                         truth="re-rendered from attrs at each generated image's size", note=note)
    fidelity["protocol"] = protocol
    fid = {"fid": reader_fid(truth, generated, model), "fid_reference": reader_fid(truth, reference, model),
           "protocol": {**protocol, "features": f"reader penultimate ({model.num_features}-d)",
                        "reference": f"{len(pairs)} test renders, seed {_REFERENCE_SEED}, vs the same truth"}}
    return {"generation_fidelity": fidelity, "generation_fid": fid}


@torch.no_grad()
def _read_features(model: FeatureReader, features: torch.Tensor) -> list[dict[str, Any]]:
    return [r for i in range(0, len(features), 256) for r in decode_readings(model(features[i:i + 256]))]


def score_features(records: list[dict[str, Any]], feature_reader: Any) -> dict[str, Any]:
    """Fidelity of generated continuous features read by a FeatureReader trained on the write space."""
    done = [(i, r) for i, r in enumerate(r for r in records if r.get("task") == "generation")
            if r.get("generated_features") is not None and _is_watch(r)]
    if not done:
        return {}
    model, info = _reader(feature_reader, FeatureReader)
    expected = (model.tokens, model.dim)
    for i, r in done:
        for key in ("generated_features", "target_features"):
            value = r.get(key)
            if value is None or tuple(value.shape) != expected:
                shape = None if value is None else tuple(value.shape)
                raise ValueError(f"score_features: generation record {i} {key} has shape {shape}; "
                                 f"the feature reader reads {expected}")
    specs = [spec_from_attrs(r["attrs"], f"generation record {i}") for i, r in done]
    mentioned = [r["attrs"].get("mentioned") or ("time",) for _, r in done]
    generated = torch.stack([r["generated_features"].float() for _, r in done])
    target = torch.stack([r["target_features"].float() for _, r in done])
    model.eval()
    fidelity = attribute_agreement(_read_features(model, generated), specs, mentioned)
    fidelity["reader_on_truth"] = attribute_agreement(_read_features(model, target), specs, mentioned)
    fidelity["chance"] = {k: v for k, v in agreement_chance().items() if k in fidelity["counts"]}
    protocol = _protocol(info, [r for _, r in done], reader_input=list(expected), truth="the records' target_features")
    fidelity["protocol"] = protocol
    fid = {"fid": reader_fid(target, generated, model),
           "protocol": {**protocol, "features": f"feature-reader penultimate ({model.num_features}-d)"}}
    return {"feature_fidelity": fidelity, "feature_fid": fid}

"""Smart-watch scores of an evaluation run: the paper's VQA scoring and caption attributes, beside chance."""
from __future__ import annotations

from typing import Any

from datamodules.smartwatch.score import chance_levels, score_caption, score_vqa

_CAPTION_CHANCE_KEY = {"time": "time", "weather": "weather", "battery": "battery",
                       "weather_pos": "position", "battery_pos": "position"}


def score_records(records: list[dict[str, Any]], images: list[Any] | None = None) -> dict[str, Any]:
    """{"vqa": per-type scores + chance, "caption": per-attribute accuracy + chance} of evaluation records.

    VQA: only the first question of each vqa sample (PAPER.md §6), typed by its ground truth.
    Captions (new; the paper did not score them): every attribute the reference caption mentions.
    """
    chance = chance_levels()
    out: dict[str, Any] = {}
    vqa = [r for r in records if r.get("task") == "vqa"]
    if vqa:
        out["vqa"] = {**score_vqa({"ground_truth": r["ground_truth"], "answer": r["answer"]} for r in vqa),
                      "chance": chance}
    captions = [r for r in records if r.get("task") == "caption"]
    if captions:
        sums: dict[str, float] = {}
        counts: dict[str, int] = {}
        for r in captions:
            for attribute, value in score_caption(r["attrs"], r["answer"]).items():
                sums[attribute] = sums.get(attribute, 0.0) + value
                counts[attribute] = counts.get(attribute, 0) + 1
        out["caption"] = {a: sums[a] / counts[a] for a in sorted(sums)}
        out["caption"]["counts"] = counts
        out["caption"]["chance"] = {a: chance[_CAPTION_CHANCE_KEY[a]] for a in sorted(sums)}
    return out

"""`unizoo measure attributes RUN`: which of the attributes a prompt states the model draws from.

For every attribute a generation prompt may state (time, weather, battery and the two corners), val
prompts that state it are rebuilt with only that value changed (the same phrasing, the same image), and
the teacher-forced image loss of the true image is compared: the gap (changed - own, in nats per image,
summed over its tokens) is what the model's drawing depends on that attribute. A gap of 0 means the model
ignores the words, whatever else it draws; `measure prompt` is the same test with the whole prompt swapped.
Why a rebuilt prompt and not a string replacement: a description's phrasing and clause choices come from
the conversation's own random stream, which does not depend on the values, so `conversation` with the
changed watch gives the same sentence with one value changed (two corners may share a name; a string
replacement could change the wrong one).
The gap is also given inside the attribute's part of the image (`PART`: the dial for the time, the icon's
box for the weather kind and corner): each token's loss counted by the share of its patch inside the true
image's box. A part that covers few tokens (the weather icon: 12 x 12 px at 64 px, 9-16 of 256 codes) can
carry a real dependence that the whole image's gap hides under the noise of the other tokens.
"""
from __future__ import annotations

import math
from dataclasses import replace
from pathlib import Path
from typing import Any

import torch

from datamodules.smartwatch.spec import CORNERS, WEATHERS, WatchSpec

ATTRIBUTES = ("time", "weather", "battery", "weather_pos", "battery_pos")
# The part of the image (render.part_boxes) each attribute is drawn in.
PART = {"time": "dial", "weather": "weather", "battery": "battery", "weather_pos": "weather", "battery_pos": "battery"}


def changed_watch(spec: WatchSpec, attribute: str) -> WatchSpec:
    """`spec` with `attribute` set to another valid value (corners: one neither icon occupies)."""
    if attribute == "time":
        return replace(spec, hour=(spec.hour + 6) % 12)  # the hour hand points the other way
    if attribute == "weather":
        return replace(spec, weather=WEATHERS[(WEATHERS.index(spec.weather) + 1) % len(WEATHERS)])
    if attribute == "battery":
        return replace(spec, battery=(spec.battery + 50) % 101)
    if attribute in ("weather_pos", "battery_pos"):
        taken = {spec.weather_pos, spec.battery_pos}
        start = CORNERS.index(getattr(spec, attribute))
        free = next(CORNERS[(start + k) % len(CORNERS)] for k in range(1, len(CORNERS))
                    if CORNERS[(start + k) % len(CORNERS)] not in taken)
        return replace(spec, **{attribute: free})
    raise ValueError(f"changed_watch: unknown attribute {attribute!r}; expected one of {ATTRIBUTES}")


def with_changed_prompt(sample: Any, attribute: str) -> Any:
    """A generation Sample asked for with `attribute` changed in its request; image and reply kept."""
    from datamodules.smartwatch.evaluate import spec_from_attrs
    from datamodules.smartwatch.tasks import conversation

    attrs = sample.attrs
    spec = changed_watch(spec_from_attrs(attrs, "generation sample"), attribute)
    turns, _ = conversation(spec, attrs["seed"], attrs["split"], attrs["index"], "generation")
    if turns[0]["content"] == sample.turns[0]["content"]:
        raise ValueError(f"measure attributes: changing {attribute} left the prompt of watch {attrs['index']} unchanged")
    return replace(sample, turns=[turns[0], *[dict(t) for t in sample.turns[1:]]])


def with_part_mask(sample: Any, part: str, size: int) -> Any:
    """`sample` whose written image carries a 0/1 map of `part`'s box as its emphasis (the processor pools
    it into each token's share of the box)."""
    import numpy as np

    from datamodules.smartwatch.evaluate import spec_from_attrs
    from datamodules.smartwatch.render import part_boxes

    x0, y0, x1, y1 = part_boxes(spec_from_attrs(sample.attrs, "generation sample"), size)[part]
    mask = np.zeros((size, size), dtype=np.float32)
    mask[max(0, y0):y1, max(0, x0):x1] = 1.0
    return replace(sample, emphasis=[mask])


@torch.no_grad()
def attributes(run: str, images: int = 100, split: str = "val", out: str = "runs/measure",
               threads: int = 0) -> dict[str, Any]:
    """Teacher-forced image loss gap (nats per image) when one stated attribute's value changes in the prompt."""
    from datamodules.smartwatch.source import SmartWatchSource
    from tools.generate import load_model
    from tools.measure import _checkpoint, _run_name, _write
    from tools.probe import _watch_source

    if threads:
        torch.set_num_threads(threads)
    path = _checkpoint(run)
    model = load_model(path).eval()
    if model.write_space is None:
        raise ValueError(f"measure attributes: {run} writes no images")
    data_seed, size = _watch_source(Path(str(run)), model)
    # Every third item is a generation sample; weather and the corners are stated in half of the prompts.
    counts = {"train": 1, "val": 1, "test": 1, split: images * 6}
    source = SmartWatchSource(**counts, seed=data_seed, size=size)
    pool = [s for s in (source.sample(split, i) for i in range(images * 6)) if s.task == "generation"]
    n = model.write_space.num_tokens

    side = math.isqrt(n)
    in_part = side * side == n  # the part's share per token needs a square token grid

    def image_loss(samples: list[Any]) -> tuple[torch.Tensor, torch.Tensor | None]:
        """(loss per image [B], loss inside each sample's part mask [B] or None), summed over tokens."""
        whole, part = [], []
        for k in range(0, len(samples), 25):
            batch = model.processor(samples[k:k + 25])
            loss = model(batch)["image_loss"].view(-1, n)
            whole.append(loss.sum(1))
            if batch.get("write_weights") is not None:
                part.append((loss * batch["write_weights"].view(-1, n)).sum(1))
        return torch.cat(whole), torch.cat(part) if part else None

    rows = []
    for attribute in ATTRIBUTES:
        own = [s for s in pool if attribute in s.attrs["mentioned"]][:images]
        if not own:
            continue
        if in_part:
            own = [with_part_mask(s, PART[attribute], size) for s in own]
        changed = [with_changed_prompt(s, attribute) for s in own]
        (own_loss, own_part), (changed_loss, changed_part) = image_loss(own), image_loss(changed)
        gap = changed_loss - own_loss
        rows.append({"attribute": attribute, "images": len(own), "own_loss": float(own_loss.mean()),
                     "changed_loss": float(changed_loss.mean()), "gap": float(gap.mean()),
                     "gap_per_token": float(gap.mean()) / n, "share_positive": float((gap > 0).float().mean())})
        line = (f"{attribute:>12}: image loss own {rows[-1]['own_loss']:.2f}, changed {rows[-1]['changed_loss']:.2f} "
                f"nats per image; gap {rows[-1]['gap']:+.3f} ({len(own)} prompts, gap > 0 on "
                f"{rows[-1]['share_positive']:.0%})")
        if own_part is not None:
            part_gap = changed_part - own_part
            rows[-1].update(part=PART[attribute], part_own_loss=float(own_part.mean()), part_gap=float(part_gap.mean()),
                            part_share_positive=float((part_gap > 0).float().mean()))
            line += (f"; in the {PART[attribute]} box {rows[-1]['part_own_loss']:.2f} nats, gap "
                     f"{rows[-1]['part_gap']:+.3f} (> 0 on {rows[-1]['part_share_positive']:.0%})")
        print(line, flush=True)
    result = {"run": str(run), "checkpoint": str(path), "split": split, "unit": "nats per image (summed over tokens)",
              "rows": rows}
    _write(out, f"attributes-{_run_name(run)}.json", result)
    return result

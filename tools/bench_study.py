"""Speed and memory of the pieces that make generation learn (issue 12), each as a ratio within one run.

* classifier-free guidance: a guided image costs two LM streams; `guidance_cost` = guided / unguided s.
* 2-D grid places: train-step time with `image_positions: grid` / without (same model otherwise).
* the pixel decoder of a continuous space: decoded images/s and its share of writing one image.
"""
from __future__ import annotations

import time

from typing import Any

import torch


def _best(fn, repeats: int) -> float:
    best = float("inf")
    for _ in range(repeats):
        start = time.perf_counter()
        fn()
        best = min(best, time.perf_counter() - start)
    return best


@torch.no_grad()
def bench_guidance(batch: int = 16, repeats: int = 2) -> dict[str, Any]:
    """Unguided vs classifier-free-guided writing of one tiny VQ image (64 codes) per prompt."""
    from tools.bench_suites import _image_prompts
    from zoo.catalog.presets import preset
    from zoo.config import build
    from zoo.model.generate import GenerationConfig, generate_images

    torch.manual_seed(0)
    model = build(preset("vq-vq", "tiny", condition_dropout=0.1)).eval()
    prompts = _image_prompts(model, batch)
    nulls = _image_prompts(model, batch, seed=1)  # the shape of a second stream is what costs
    plain_cfg, guided_cfg = GenerationConfig(), GenerationConfig(guidance_scale=2.0)
    generate_images(model, prompts, plain_cfg)  # warm-up
    plain = _best(lambda: generate_images(model, prompts, plain_cfg), repeats)
    guided = _best(lambda: generate_images(model, prompts, guided_cfg, nulls), repeats)
    return {"batch": batch, "unguided_ms_per_image": 1e3 * plain / batch, "guided_ms_per_image": 1e3 * guided / batch,
            "guidance_cost": guided / plain}


def bench_positions(steps: int = 4, repeats: int = 1) -> dict[str, Any]:
    """Train-step time of the tiny SigLIP-SigLIP model with and without 2-D grid places."""
    from datamodules.smartwatch.source import SmartWatchSource
    from zoo.catalog.presets import preset
    from zoo.config import build

    source = SmartWatchSource(train=32, val=1, test=1, size=64)
    samples = [source.sample("train", i) for i in range(32)]
    out = {}
    for places in ("none", "grid"):
        torch.manual_seed(0)
        model = build(preset("siglip-siglip", "tiny", image_positions=places))
        batch = model.processor(samples)
        opt = torch.optim.AdamW([p for p in model.parameters() if p.requires_grad], lr=1e-4)

        def step() -> None:
            loss, _ = model.loss(model(batch))
            opt.zero_grad()
            loss.backward()
            opt.step()
        step()
        out[places] = _best(lambda: [step() for _ in range(steps)], repeats) / steps
    return {"step_ms_none": 1e3 * out["none"], "step_ms_grid": 1e3 * out["grid"], "grid_cost": out["grid"] / out["none"]}


@torch.no_grad()
def bench_pixel_decoder(batch: int = 64, repeats: int = 3) -> dict[str, Any]:
    """Decoded images/s of a FeatureDecoder on tiny SigLIP-shaped tokens (64 x 128 -> 64 px)."""
    from zoo.spaces.pixel_decoder import FeatureDecoder

    torch.manual_seed(0)
    decoder = FeatureDecoder(64, 128, 64).eval()
    tokens = torch.randn(batch, 64, 128)
    decoder(tokens)
    seconds = _best(lambda: decoder(tokens), repeats)
    return {"batch": batch, "images_per_s": batch / seconds,
            "parameters": sum(p.numel() for p in decoder.parameters())}


def bench_study(quick: bool = False) -> dict[str, Any]:
    """All three measurements (fewer repeats with `quick`)."""
    repeats = 1 if quick else 2
    return {"guidance": bench_guidance(repeats=repeats), "positions": bench_positions(repeats=repeats),
            "pixel_decoder": bench_pixel_decoder(repeats=repeats + 1)}




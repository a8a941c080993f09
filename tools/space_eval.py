"""Smart-watch data and metrics for the zoo's tiny spaces: renders, full captions, probes, retrieval, PSNR.

Shared by `tools.train_spaces` (which writes the numbers into the model cards) and the tests (which
recompute them from the shipped files), so a card's metric and its check follow one protocol.

Pixels follow both spaces' convention: RGB scaled to [-1, 1] (mean = std = 0.5), rendered natively at the
space's size, so no resize is involved.
"""
from __future__ import annotations

import math
from collections.abc import Callable, Sequence

import numpy as np
import torch
from torch.nn import functional as F

from datamodules.smartwatch.render import render_watch
from datamodules.smartwatch.spec import CORNERS, SPLIT_CODES, WEATHERS, WatchSpec, rng_for, sample_watch
from datamodules.smartwatch.tasks import CAPTION_OPENINGS, CLAUSE_ORDER, describe

# What each linear probe predicts; hour is read modulo 12 because 0 and 12 draw the same hands.
PROBES: dict[str, tuple[Callable[[WatchSpec], int], int]] = {
    "weather": (lambda s: WEATHERS.index(s.weather), len(WEATHERS)),
    "weather_pos": (lambda s: CORNERS.index(s.weather_pos), len(CORNERS)),
    "battery_pos": (lambda s: CORNERS.index(s.battery_pos), len(CORNERS)),
    "hour": (lambda s: s.hour % 12, 12),
}
CHECK_FIT, CHECK_TEST, CHECK_VQ = 400, 200, 64  # the small protocol tests recompute against the cards
_CAPTION_STREAM = 11  # keeps caption phrasing off the spec and task random streams


def watches(seed: int, split: str, indices: Sequence[int]) -> list[WatchSpec]:
    """The watches `indices` of `split` under `seed`."""
    return [sample_watch(seed, split, int(i)) for i in indices]


def render_pixels(specs: Sequence[WatchSpec], size: int) -> torch.Tensor:
    """Render `specs` at `size` px -> pixels [B, 3, size, size] in [-1, 1]."""
    arrays = np.stack([np.asarray(render_watch(spec, size)) for spec in specs])
    return torch.from_numpy(arrays).permute(0, 3, 1, 2).float().div(127.5).sub(1.0)


def full_caption(spec: WatchSpec, seed: int, split: str, index: int) -> str:
    """A caption stating every attribute (time, weather, battery, both corners), phrasings drawn per watch."""
    rng = rng_for(seed, SPLIT_CODES[split], index, _CAPTION_STREAM)
    opening = CAPTION_OPENINGS[int(rng.integers(len(CAPTION_OPENINGS)))]
    text, _ = describe(spec, rng, forced=frozenset(CLAUSE_ORDER))
    return f"{opening} {text}."


@torch.no_grad()
def encode_batches(encode: Callable[[torch.Tensor], torch.Tensor], specs: Sequence[WatchSpec], size: int,
                   batch_size: int = 128) -> torch.Tensor:
    """`encode(pixels)` over `specs` rendered in batches, concatenated along the first dimension."""
    return torch.cat([encode(render_pixels(specs[i:i + batch_size], size)) for i in range(0, len(specs), batch_size)])


def linear_probe(train_x: torch.Tensor, train_y: torch.Tensor, test_x: torch.Tensor, test_y: torch.Tensor,
                 classes: int, weight_decay: float = 1e-3, steps: int = 100) -> float:
    """Test accuracy of an L2-regularised logistic regression fitted (L-BFGS) on standardised features."""
    mean, std = train_x.mean(0), train_x.std(0).clamp_min(1e-6)
    xs, xt = (train_x - mean) / std, (test_x - mean) / std
    layer = torch.nn.Linear(xs.shape[1], classes)
    torch.nn.init.zeros_(layer.weight), torch.nn.init.zeros_(layer.bias)  # zero start: no seed involved
    opt = torch.optim.LBFGS(layer.parameters(), lr=1.0, max_iter=steps, line_search_fn="strong_wolfe")

    def closure() -> torch.Tensor:
        opt.zero_grad()
        loss = F.cross_entropy(layer(xs), train_y) + weight_decay * layer.weight.pow(2).sum()
        loss.backward()
        return loss

    with torch.enable_grad():
        opt.step(closure)
    with torch.no_grad():
        return float((layer(xt).argmax(1) == test_y).float().mean())


def probe_accuracies(encode: Callable[[torch.Tensor], torch.Tensor], seed: int, size: int, n_fit: int = 1000,
                     n_test: int = 500, probes: dict[str, tuple[Callable[[WatchSpec], int], int]] | None = None,
                     prefix: str = "probe_") -> dict[str, float]:
    """Linear-probe accuracy of every `probes` attribute (default `PROBES`): fitted on `n_fit` val watches,
    scored on `n_test` test watches."""
    fit_specs, test_specs = watches(seed, "val", range(n_fit)), watches(seed, "test", range(n_test))
    fit_x, test_x = encode_batches(encode, fit_specs, size), encode_batches(encode, test_specs, size)
    out = {}
    for name, (label, classes) in (probes or PROBES).items():
        fit_y = torch.tensor([label(s) for s in fit_specs])
        test_y = torch.tensor([label(s) for s in test_specs])
        out[f"{prefix}{name}"] = linear_probe(fit_x, fit_y, test_x, test_y, classes)
    return out


def retrieval_recall(image_emb: torch.Tensor, text_emb: torch.Tensor, ks: Sequence[int] = (1, 5)) -> dict[str, float]:
    """Image -> text recall@k where image i's own caption is text i (embeddings compared by cosine)."""
    sims = F.normalize(image_emb, dim=-1) @ F.normalize(text_emb, dim=-1).t()
    rank = (sims > sims.diagonal().unsqueeze(1)).sum(1)  # captions scoring above the right one
    return {f"i2t_recall@{k}": float((rank < k).float().mean()) for k in ks}


def psnr(reference: torch.Tensor, reconstruction: torch.Tensor) -> torch.Tensor:
    """Per-image PSNR in dB of pixels in [-1, 1] measured on the [0, 1] scale (reconstruction clamped)."""
    ref = (reference + 1) / 2
    rec = ((reconstruction + 1) / 2).clamp(0, 1)
    mse = (ref - rec).pow(2).flatten(1).mean(1).clamp_min(1e-10)
    return -10.0 * torch.log10(mse)


@torch.no_grad()
def vq_metrics(tokenizer: torch.nn.Module, seed: int, n_test: int = 500, batch_size: int = 64) -> dict[str, float]:
    """Reconstruction PSNR (mean over images) and codebook usage of a VQTokenizer on fresh test renders."""
    specs = watches(seed, "test", range(n_test))
    scores, codes = [], []
    for i in range(0, n_test, batch_size):
        pixels = render_pixels(specs[i:i + batch_size], tokenizer.image_size)
        _, batch_codes = tokenizer.encode(pixels)
        scores.append(psnr(pixels, tokenizer.decode(codes=batch_codes)))
        codes.append(batch_codes.flatten())
    used = torch.unique(torch.cat(codes)).numel()
    values = torch.cat(scores)
    return {"psnr_db": float(values.mean()), "psnr_db_min": float(values.min()),
            "codebook_usage": used / tokenizer.codebook_size, "codes_used": float(used)}


def cosine_lr(step: int, total: int, warmup: int) -> float:
    """Learning-rate factor: linear warmup, then cosine decay to 10 %."""
    if step < warmup:
        return (step + 1) / warmup
    progress = (step - warmup) / max(1, total - warmup)
    return 0.1 + 0.9 * 0.5 * (1 + math.cos(math.pi * progress))


# Attributes a probe reads from the flattened tokens the LM reads (issue 12: mean-pooling hides the clock).
TOKEN_PROBES: dict[str, tuple[Callable[[WatchSpec], int], int]] = {
    **PROBES,
    "minute": (lambda s: s.minute, 60),
    "battery_decile": (lambda s: min(s.battery // 10, 9), 10),
}


def token_probe_accuracies(encode: Callable[[torch.Tensor], torch.Tensor], seed: int, size: int, n_fit: int = 1500,
                           n_test: int = 500) -> dict[str, float]:
    """Linear probes on flattened token features [B, N * D] (what a recipe's LM reads), val fit / test score."""
    return probe_accuracies(lambda px: encode(px).flatten(1), seed, size, n_fit, n_test, TOKEN_PROBES, "token_probe_")


@torch.no_grad()
def reader_on_images(reader: torch.nn.Module, images: Callable[[torch.Tensor], torch.Tensor], seed: int,
                     n_test: int = 500, size: int = 64, batch_size: int = 100) -> dict[str, float]:
    """The attribute reader's accuracy on `images(pixels)` (e.g. decode(encode(x))) of `n_test` fresh test renders."""
    from datamodules.smartwatch.reader import read_images, reading_accuracy

    specs = watches(seed, "test", range(n_test))
    readings = []
    for i in range(0, n_test, batch_size):
        shown = images(render_pixels(specs[i:i + batch_size], size))
        readings += read_images(reader, ((shown.clamp(-1, 1) + 1) / 2))
    return reading_accuracy(readings, specs)


def _mean_std(space: object) -> tuple[torch.Tensor, torch.Tensor]:
    mean = torch.tensor(getattr(space, "mean", [0.5] * 3)).view(1, 3, 1, 1)
    std = torch.tensor(getattr(space, "std", [0.5] * 3)).view(1, 3, 1, 1)
    return mean, std


def to_space_pixels(pixels: torch.Tensor, space: object) -> torch.Tensor:
    """Renders in [-1, 1] (this module's convention) -> `space`'s own normalisation (mean/std), same size."""
    mean, std = _mean_std(space)
    return ((pixels + 1) / 2 - mean) / std


def from_space_pixels(pixels: torch.Tensor, space: object) -> torch.Tensor:
    """Inverse of `to_space_pixels`: `space`'s normalisation -> [-1, 1]."""
    mean, std = _mean_std(space)
    return (pixels * std + mean) * 2 - 1

"""Attribute readers: small networks that read a watch's attributes back from pixels or from a space's features.

They score *generated* watches (generation fidelity): a reader trained on fresh renders of the train split
reads a generated image, and its reading is compared with what the prompt asked for. Its penultimate
features also serve as the FID feature space (Inception weights are not available offline, CPU_FACTS §8).

Heads (`forward` returns a dict of raw outputs):
  hour [B, 12] (hour mod 12: 0 and 12 o'clock draw the same hands), minute [B, 60], second [B, 60],
  weather [B, 3], weather_pos [B, 4], battery_pos [B, 4] -- logits;
  battery [B] -- the level / 100 (regression: finer than bins, and the battery score is 1 - |d|/100);
  face_color [B, 3] -- RGB / 255 (regression; `colour_name` turns it into the study's Dark/.../Bright).
Clock heads train on circular soft targets (a narrow Gaussian over neighbouring classes) so that the
angle's ordering is learnt; the argmax is still the reading.

Checkpoints: ``reader.safetensors`` holds the weights with the config in its metadata (self-describing);
``reader.json`` beside it is the card (config, metrics, protocol, sha256). Both are written atomically.
"""
from __future__ import annotations

import hashlib
import json
import os
import time
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any

import numpy as np
import torch
import torch.nn.functional as F
from torch import nn

from .render import render_watch
from .spec import CORNERS, WEATHERS, WatchSpec, colour_name, sample_watch

CLASSES = {"hour": 12, "minute": 60, "second": 60, "weather": 3, "weather_pos": 4, "battery_pos": 4}
CIRCULAR = ("hour", "minute", "second")
DEFAULT_READER = "zoo/assets/readers/reader-64.safetensors"
_SOFT_SIGMA = 0.7  # classes; narrow enough that the target's mode keeps ~55 % of the mass


def resolve_reader_path(path: str) -> str:
    """`path` as given, or a shipped `zoo/assets/...` file at its installed location beside this package."""
    if os.path.exists(path) or not path.replace("\\", "/").startswith("zoo/assets/"):
        return path
    packaged = Path(__file__).resolve().parents[2] / path
    return str(packaged) if packaged.exists() else path


class _Heads(nn.Module):
    """Every attribute head on top of a feature vector."""

    def __init__(self, dim: int):
        super().__init__()
        self.classes = nn.ModuleDict({name: nn.Linear(dim, n) for name, n in CLASSES.items()})
        self.battery = nn.Linear(dim, 1)
        self.face_color = nn.Linear(dim, 3)

    def forward(self, h: torch.Tensor) -> dict[str, torch.Tensor]:
        out = {name: head(h) for name, head in self.classes.items()}
        out["battery"] = self.battery(h).squeeze(-1)
        out["face_color"] = self.face_color(h)
        return out


def _block(cin: int, cout: int, stride: int) -> nn.Sequential:
    return nn.Sequential(nn.Conv2d(cin, cout, 3, stride, 1, bias=False), nn.BatchNorm2d(cout), nn.ReLU(inplace=True))


class AttributeReader(nn.Module):
    """A small CNN reading watch attributes from pixels at `size` px (other sizes are resized to it)."""

    kind = "pixel"

    def __init__(self, size: int = 64, width: int = 24, dim: int = 128):
        super().__init__()
        if size < 32 or size % 8:
            raise ValueError(f"AttributeReader: size must be a multiple of 8 and >= 32, got {size}")
        self.config = {"kind": self.kind, "size": size, "width": width, "dim": dim}
        self.size, self.num_features = size, dim
        w = width
        # Two extra input channels carry x/y coordinates: hand angles and corners are positional.
        self.body = nn.Sequential(
            # A stride-2 stem still sees every pixel (1-px hands survive) at a quarter of the cost.
            _block(5, w, 2), _block(w, 2 * w, 2), _block(2 * w, 2 * w, 1),
            _block(2 * w, 4 * w, 2), _block(4 * w, 4 * w, 1), nn.Conv2d(4 * w, 16, 1),
        )
        grid = size // 8
        # Flatten (not average-pool) the 8x downsampled map so that position survives to the heads.
        self.neck = nn.Sequential(nn.Flatten(), nn.Linear(16 * grid * grid, dim), nn.ReLU(inplace=True))
        self.heads = _Heads(dim)
        ys, xs = torch.meshgrid(torch.linspace(-1, 1, size), torch.linspace(-1, 1, size), indexing="ij")
        self.register_buffer("coords", torch.stack([xs, ys])[None], persistent=False)

    def prepare(self, x: torch.Tensor) -> torch.Tensor:
        """uint8 [0, 255] or float [0, 1] images [B, 3, H, W] -> the network's normalised input."""
        if x.ndim != 4 or x.shape[1] != 3:
            raise ValueError(f"AttributeReader: expected images [B, 3, H, W], got {tuple(x.shape)}")
        x = x.float() / 255 if x.dtype == torch.uint8 else x.float()
        if x.shape[-2:] != (self.size, self.size):
            x = F.interpolate(x, size=(self.size, self.size), mode="bilinear", antialias=True, align_corners=False)
        return torch.cat([(x - 0.5) / 0.5, self.coords.expand(len(x), -1, -1, -1)], 1)

    def features(self, x: torch.Tensor) -> torch.Tensor:
        """Penultimate features [B, dim] (the FID feature space)."""
        return self.neck(self.body(self.prepare(x)))

    def forward(self, x: torch.Tensor) -> dict[str, torch.Tensor]:
        """Raw head outputs (logits, battery / 100, RGB / 255) of images [B, 3, H, W]."""
        return self.heads(self.features(x))


class FeatureReader(nn.Module):
    """The same heads on a space's features [B, N, D]: a per-token projection, flattened so position survives."""

    kind = "feature"

    def __init__(self, tokens: int, dim: int, hidden: int = 128, per_token: int = 16):
        super().__init__()
        self.config = {"kind": self.kind, "tokens": tokens, "dim": dim, "hidden": hidden, "per_token": per_token}
        self.tokens, self.dim, self.num_features = tokens, dim, hidden
        self.token_proj = nn.Sequential(nn.LayerNorm(dim), nn.Linear(dim, per_token), nn.GELU())
        self.neck = nn.Sequential(nn.Flatten(), nn.Linear(tokens * per_token, hidden), nn.GELU(),
                                  nn.Linear(hidden, hidden), nn.GELU())
        self.heads = _Heads(hidden)

    def features(self, x: torch.Tensor) -> torch.Tensor:
        """Penultimate features [B, hidden] of space features [B, N, D]."""
        if x.ndim != 3 or tuple(x.shape[1:]) != (self.tokens, self.dim):
            raise ValueError(f"FeatureReader: expected features [B, {self.tokens}, {self.dim}], got {tuple(x.shape)}")
        return self.neck(self.token_proj(x.float()))

    def forward(self, x: torch.Tensor) -> dict[str, torch.Tensor]:
        """Raw head outputs of space features [B, N, D]."""
        return self.heads(self.features(x))


Reader = AttributeReader | FeatureReader
_KINDS: dict[str, type[nn.Module]] = {AttributeReader.kind: AttributeReader, FeatureReader.kind: FeatureReader}


# ----------------------------------------------------------------------------------------- labels and readings
def watch_labels(specs: Sequence[WatchSpec]) -> dict[str, torch.Tensor]:
    """Training targets of a batch of watches."""
    return {
        "hour": torch.tensor([s.hour % 12 for s in specs]),
        "minute": torch.tensor([s.minute for s in specs]),
        "second": torch.tensor([s.second for s in specs]),
        "weather": torch.tensor([WEATHERS.index(s.weather) for s in specs]),
        "weather_pos": torch.tensor([CORNERS.index(s.weather_pos) for s in specs]),
        "battery_pos": torch.tensor([CORNERS.index(s.battery_pos) for s in specs]),
        "battery": torch.tensor([s.battery / 100 for s in specs]),
        "face_color": torch.tensor([s.face_color for s in specs], dtype=torch.float32) / 255,
    }


def _soft_targets(labels: torch.Tensor, n: int) -> torch.Tensor:
    d = (torch.arange(n)[None] - labels[:, None]).abs()
    d = torch.minimum(d, n - d).float()
    w = torch.exp(-0.5 * (d / _SOFT_SIGMA) ** 2)
    return w / w.sum(-1, keepdim=True)


def reader_loss(out: dict[str, torch.Tensor], labels: dict[str, torch.Tensor]) -> torch.Tensor:
    """Sum of per-head losses (soft CE on clock heads, CE, L1 on battery, MSE on colour)."""
    loss = out["battery"].new_zeros(())
    for name, n in CLASSES.items():
        target = _soft_targets(labels[name], n) if name in CIRCULAR else labels[name]
        loss = loss + F.cross_entropy(out[name], target)
    # x5: the regressions' losses are ~100x smaller than the CEs' at the start; this keeps them learning early.
    loss = loss + 5 * F.l1_loss(out["battery"], labels["battery"])
    return loss + 5 * F.mse_loss(out["face_color"], labels["face_color"])


def decode_readings(out: dict[str, torch.Tensor]) -> list[dict[str, Any]]:
    """Head outputs -> one dict of read attributes per image (hour is mod 12)."""
    idx = {name: out[name].argmax(-1).tolist() for name in CLASSES}
    battery = (out["battery"].clamp(0, 1) * 100).round().long().tolist()
    rgb = (out["face_color"].clamp(0, 1) * 255).round().long().tolist()
    return [
        {"hour": idx["hour"][i], "minute": idx["minute"][i], "second": idx["second"][i],
         "weather": WEATHERS[idx["weather"][i]], "weather_pos": CORNERS[idx["weather_pos"][i]],
         "battery_pos": CORNERS[idx["battery_pos"][i]], "battery": battery[i], "face_color": rgb[i],
         "color_name": colour_name(rgb[i])}
        for i in range(len(battery))
    ]


def images_to_tensor(images: Sequence[Any]) -> torch.Tensor:
    """PIL images (all one size) -> uint8 [B, 3, H, W]."""
    if not images:
        raise ValueError("images_to_tensor: no images")
    sizes = {im.size for im in images}
    if len(sizes) != 1:
        raise ValueError(f"images_to_tensor: images must share one size, got {sorted(sizes)}")
    return torch.from_numpy(np.stack([np.asarray(im.convert("RGB")) for im in images])).permute(0, 3, 1, 2).contiguous()


@torch.no_grad()
def read_images(reader: AttributeReader, images: Sequence[Any] | torch.Tensor, batch_size: int = 256) -> list[dict]:
    """What `reader` reads on each image (PIL list or tensor [B, 3, H, W])."""
    x = images if isinstance(images, torch.Tensor) else images_to_tensor(images)
    reader.eval()
    return [r for i in range(0, len(x), batch_size) for r in decode_readings(reader(x[i:i + batch_size]))]


def _render_batch(specs: Sequence[WatchSpec], size: int) -> torch.Tensor:
    return images_to_tensor([render_watch(s, size) for s in specs])


def reading_accuracy(readings: Sequence[dict], specs: Sequence[WatchSpec]) -> dict[str, float]:
    """Per-attribute accuracy of readings against the true watches (battery and colour also as errors)."""
    n = len(specs)
    if n == 0 or len(readings) != n:
        raise ValueError(f"reading_accuracy: {len(readings)} readings for {n} watches")

    def mean(values) -> float:
        return float(sum(values) / n)
    return {
        "hour": mean(r["hour"] == s.hour % 12 for r, s in zip(readings, specs)),
        "minute": mean(r["minute"] == s.minute for r, s in zip(readings, specs)),
        "minute_within_1": mean(min((r["minute"] - s.minute) % 60, (s.minute - r["minute"]) % 60) <= 1
                                for r, s in zip(readings, specs)),
        "second": mean(r["second"] == s.second for r, s in zip(readings, specs)),
        "weather": mean(r["weather"] == s.weather for r, s in zip(readings, specs)),
        "weather_pos": mean(r["weather_pos"] == s.weather_pos for r, s in zip(readings, specs)),
        "battery_pos": mean(r["battery_pos"] == s.battery_pos for r, s in zip(readings, specs)),
        "battery_mae": mean(abs(r["battery"] - s.battery) for r, s in zip(readings, specs)),
        "battery_within_3": mean(abs(r["battery"] - s.battery) <= 3 for r, s in zip(readings, specs)),
        "color_name": mean(r["color_name"] == colour_name(s.face_color) for r, s in zip(readings, specs)),
        "color_mae": mean(sum(abs(a - b) for a, b in zip(r["face_color"], s.face_color)) / 3
                          for r, s in zip(readings, specs)),
    }


def evaluate_reader(reader: AttributeReader, images: int = 500, seed: int = 0, split: str = "test") -> dict[str, float]:
    """Per-attribute accuracy of a pixel reader on `images` fresh renders of `split` (never trained on)."""
    specs = [sample_watch(seed, split, i) for i in range(images)]
    return reading_accuracy(read_images(reader, _render_batch(specs, reader.size)), specs)


# ----------------------------------------------------------------------------------------- training
def _fit(model: nn.Module, batches: Callable[[int], tuple[torch.Tensor, list[WatchSpec]]], steps: int,
         lr: float, log_every: int, log: Callable[[str], None] | None) -> None:
    opt = torch.optim.AdamW(model.parameters(), lr=lr, weight_decay=1e-4)
    sched = torch.optim.lr_scheduler.OneCycleLR(opt, max_lr=lr, total_steps=max(1, steps), pct_start=0.15)
    model.train()
    for step in range(steps):
        x, specs = batches(step)
        loss = reader_loss(model(x), watch_labels(specs))
        opt.zero_grad(set_to_none=True)
        loss.backward()
        opt.step()
        sched.step()
        if log is not None and (step % log_every == 0 or step == steps - 1):
            log(f"step {step + 1}/{steps} loss {loss.item():.4f}")
    model.eval()


def train_reader(size: int = 64, images: int = 76_800, steps: int = 1_200, seed: int = 0, out: str | None = None,
                 batch_size: int = 64, lr: float = 3e-3, width: int = 24, dim: int = 128, eval_images: int = 1_000,
                 log: Callable[[str], None] | None = print) -> tuple[AttributeReader, dict[str, Any]]:
    """Train a pixel reader on fresh train-split renders (watch i % `images`), score it on the test split, save."""
    if images < 1 or steps < 1 or batch_size < 1:
        raise ValueError(f"train_reader: images, steps and batch_size must be >= 1, got {images}, {steps}, {batch_size}")
    torch.manual_seed(seed)
    reader = AttributeReader(size=size, width=width, dim=dim)

    def batches(step: int) -> tuple[torch.Tensor, list[WatchSpec]]:
        specs = [sample_watch(seed, "train", (step * batch_size + j) % images) for j in range(batch_size)]
        return _render_batch(specs, size), specs
    start = time.perf_counter()
    _fit(reader, batches, steps, lr, max(1, steps // 20), log)
    wall = time.perf_counter() - start
    metrics = evaluate_reader(reader, images=eval_images, seed=seed)
    card = {"metrics": metrics, "protocol": {
        "train": {"split": "train", "seed": seed, "distinct_images": images, "steps": steps, "batch_size": batch_size,
                  "images_seen": steps * batch_size, "lr": lr, "wall_s": round(wall, 1),
                  "threads": torch.get_num_threads()},
        "eval": {"split": "test", "seed": seed, "images": eval_images, "size": size, "rendering": "native"}}}
    if out is not None:
        save_reader(reader, out, card)
    return reader, card


def train_feature_reader(space: Any, size: int | None = None, images: int = 76_800, steps: int = 1_200, seed: int = 0,
                         out: str | None = None, batch_size: int = 64, lr: float = 2e-3, eval_images: int = 500,
                         log: Callable[[str], None] | None = print) -> tuple[FeatureReader, dict[str, Any]]:
    """Train a FeatureReader on `space.encode` features of fresh train renders (any object with `preprocess`,
    `encode`, `num_tokens`, `dim`, `image_size`, e.g. a zoo ImageSpace); score it on test-split features."""
    for attr in ("preprocess", "encode", "num_tokens", "dim"):
        if not hasattr(space, attr):
            raise ValueError(f"train_feature_reader: space {type(space).__name__} lacks {attr!r}")
    size = size or int(getattr(space, "image_size", 64))
    torch.manual_seed(seed)
    reader = FeatureReader(tokens=int(space.num_tokens), dim=int(space.dim))

    @torch.no_grad()
    def encode(specs: Sequence[WatchSpec]) -> torch.Tensor:
        pixels = torch.stack([space.preprocess(render_watch(s, size)) for s in specs])
        return space.encode(pixels)[0].float()

    def batches(step: int) -> tuple[torch.Tensor, list[WatchSpec]]:
        specs = [sample_watch(seed, "train", (step * batch_size + j) % images) for j in range(batch_size)]
        return encode(specs), specs
    start = time.perf_counter()
    _fit(reader, batches, steps, lr, max(1, steps // 20), log)
    wall = time.perf_counter() - start
    specs = [sample_watch(seed, "test", i) for i in range(eval_images)]
    with torch.no_grad():
        readings = [r for i in range(0, len(specs), 128) for r in decode_readings(reader(encode(specs[i:i + 128])))]
    card = {"metrics": reading_accuracy(readings, specs), "protocol": {
        "space": getattr(space, "spec", lambda: type(space).__name__)(),
        "train": {"split": "train", "seed": seed, "distinct_images": images, "steps": steps, "batch_size": batch_size,
                  "lr": lr, "wall_s": round(wall, 1), "size": size},
        "eval": {"split": "test", "seed": seed, "images": eval_images, "size": size}}}
    if out is not None:
        save_reader(reader, out, card)
    return reader, card


# ----------------------------------------------------------------------------------------- save / load
def _sha256(path: str) -> str:
    digest = hashlib.sha256()
    with open(path, "rb") as f:
        for chunk in iter(lambda: f.read(1 << 20), b""):
            digest.update(chunk)
    return digest.hexdigest()


def card_path(path: str) -> str:
    """The JSON card beside a reader's safetensors file."""
    return str(Path(path).with_suffix(".json"))


def save_reader(reader: Reader, path: str, card: dict[str, Any] | None = None) -> str:
    """Write weights (config in the metadata) and the JSON card atomically; returns the weights' sha256."""
    from safetensors.torch import save_file

    Path(path).parent.mkdir(parents=True, exist_ok=True)
    tensors = {k: v.detach().cpu().contiguous() for k, v in reader.state_dict().items()}
    tmp = f"{path}.tmp-{os.getpid()}"
    save_file(tensors, tmp, metadata={"config": json.dumps(reader.config, sort_keys=True)})
    os.chmod(tmp, 0o644)  # safetensors writes 0600; shipped assets must be readable by everyone
    os.replace(tmp, path)
    sha = _sha256(path)
    body = {**(card or {}), "config": reader.config, "weights": Path(path).name, "sha256": sha,
            "parameters": sum(p.numel() for p in reader.parameters())}
    tmp = f"{card_path(path)}.tmp-{os.getpid()}"
    with open(tmp, "w") as f:
        f.write(json.dumps(body, indent=2, sort_keys=True) + "\n")
    os.replace(tmp, card_path(path))
    return sha


def load_reader(path: str) -> tuple[Reader, dict[str, Any]]:
    """(reader in eval mode, info with its card, resolved path and sha256) from a safetensors file."""
    from safetensors import safe_open
    from safetensors.torch import load_file

    resolved = resolve_reader_path(path)
    if not os.path.isfile(resolved):
        raise ValueError(f"load_reader: no reader weights at {path!r}")
    with safe_open(resolved, framework="pt") as f:
        meta = f.metadata() or {}
    try:
        config = json.loads(meta["config"])
        cls = _KINDS[config.pop("kind")]
    except (KeyError, json.JSONDecodeError) as err:
        raise ValueError(f"load_reader: {resolved!r} has no valid reader config in its metadata ({err})") from None
    reader = cls(**config)
    try:
        reader.load_state_dict(load_file(resolved))
    except RuntimeError as err:
        raise ValueError(f"load_reader: weights in {resolved!r} do not match config {config}: {err}") from None
    card = {}
    if os.path.isfile(card_path(resolved)):
        with open(card_path(resolved)) as f:
            card = json.load(f)
    return reader.eval(), {"card": card, "path": resolved, "sha256": _sha256(resolved)}

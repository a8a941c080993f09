"""Adapter analysis (PAPER.md §5): does the read projector's output already encode an attribute?

Fresh test watches go through the run's read space and read projector; the first visual
token (as the paper), the mean over tokens and all tokens flattened (where a place on the image lives) are
reduced by PCA-50 and embedded by t-SNE, coloured by
the attribute, and a linear probe (logistic regression, Adam, 50 epochs, 80/20 split) measures how
linearly readable the attribute is. The paper's probe reached 100 % even for understanding-only
models: the missing skill sits in the language model, not in the adapter.

t-SNE here is a small exact implementation in torch (a few hundred points; scikit-learn is not a
dependency of the project): perplexity-calibrated affinities, early exaggeration, momentum with gains.
"""
from __future__ import annotations

import contextlib
import json
import math
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import torch
import yaml

DEFAULT_OUT = "report"
_NOT_ATTRIBUTES = ("seed", "split", "index", "task", "time")  # bookkeeping, or unique per watch


# ----------------------------------------------------------------------------------------- numerics
@contextlib.contextmanager
def _one_thread() -> Iterator[None]:
    """Intra-op threads cost more than they give on these small matrices (and thrash a busy machine)."""
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    try:
        yield
    finally:
        torch.set_num_threads(threads)


def pca(x: torch.Tensor, components: int = 50) -> torch.Tensor:
    """Project rows of `x` [n, d] on their first `components` principal axes (torch.pca_lowrank)."""
    q = max(1, min(components, x.shape[0], x.shape[1]))
    centred = x - x.mean(0, keepdim=True)
    _, _, v = torch.pca_lowrank(centred, q=q, center=False, niter=4)
    return centred @ v


def _affinities(x: torch.Tensor, perplexity: float) -> torch.Tensor:
    """Symmetric joint probabilities P [n, n], each row's Gaussian width set by bisection to `perplexity`."""
    n = x.shape[0]
    d2 = torch.cdist(x, x).pow(2)
    d2 = d2 - d2.masked_fill(torch.eye(n, dtype=torch.bool), math.inf).min(1, keepdim=True).values  # stability
    target = math.log(perplexity)
    beta = torch.full((n, 1), 1.0 / max(float(d2.median()), 1e-12), dtype=x.dtype)
    lo, hi = torch.zeros_like(beta), torch.full_like(beta, math.inf)
    for _ in range(100):
        p = torch.exp(-d2 * beta).fill_diagonal_(0.0)
        total = p.sum(1, keepdim=True).clamp_min(1e-300)
        entropy = torch.log(total) + beta * (d2 * p).sum(1, keepdim=True) / total
        wide = entropy > target  # too flat: sharpen (raise beta)
        lo = torch.where(wide, beta, lo)
        hi = torch.where(wide, hi, beta)
        beta = torch.where(torch.isinf(hi), beta * 2, (lo + hi) / 2)
    conditional = p / total
    return ((conditional + conditional.T) / (2 * n)).clamp_min(1e-12)


def tsne(x: torch.Tensor, perplexity: float = 30.0, iterations: int = 750, seed: int = 0) -> torch.Tensor:
    """Exact 2-d t-SNE of rows of `x` [n, d] (n up to a few thousand)."""
    if x.shape[0] < 4:
        raise ValueError(f"tsne: need at least 4 points, got {x.shape[0]}")
    with _one_thread():
        return _tsne(x.double(), perplexity, iterations, seed).float()


def _tsne(x: torch.Tensor, perplexity: float, iterations: int, seed: int) -> torch.Tensor:
    n = x.shape[0]
    P = _affinities(x, min(perplexity, (n - 1) / 3))
    generator = torch.Generator().manual_seed(seed)
    y = torch.randn(n, 2, generator=generator, dtype=x.dtype) * 1e-4
    velocity, gains = torch.zeros_like(y), torch.ones_like(y)
    lr = max(n / 12.0 / 4.0, 50.0)
    for it in range(iterations):
        exaggeration, momentum = (12.0, 0.5) if it < 250 else (1.0, 0.8)
        kernel = 1.0 / (1.0 + torch.cdist(y, y).pow(2))
        kernel.fill_diagonal_(0.0)
        Q = (kernel / kernel.sum()).clamp_min(1e-12)
        weights = (exaggeration * P - Q) * kernel
        grad = 4.0 * (weights.sum(1, keepdim=True) * y - weights @ y)
        same_sign = (grad > 0) == (velocity > 0)
        gains = torch.where(same_sign, gains * 0.8, gains + 0.2).clamp_min(0.01)
        velocity = momentum * velocity - lr * gains * grad
        y = y + velocity
        y = y - y.mean(0, keepdim=True)
    return y


def linear_probe(x: torch.Tensor, labels: torch.Tensor, classes: int, epochs: int = 50,
                 train_fraction: float = 0.8, seed: int = 0) -> dict[str, Any]:
    """Logistic regression (Adam, minibatches of 64) on a seeded split: test and train accuracy."""
    n = x.shape[0]
    generator = torch.Generator().manual_seed(seed)
    order = torch.randperm(n, generator=generator)
    n_train = min(n - 1, max(1, round(train_fraction * n)))
    train, test = order[:n_train], order[n_train:]
    mean, std = x[train].mean(0), x[train].std(0).clamp_min(1e-6)  # train statistics only
    z = (x - mean) / std
    head = torch.nn.Linear(x.shape[1], classes)
    optimizer = torch.optim.Adam(head.parameters(), lr=1e-2, weight_decay=1e-4)
    with torch.enable_grad(), _one_thread():
        for _ in range(epochs):
            for batch in torch.randperm(n_train, generator=generator).split(64):
                idx = train[batch]
                loss = torch.nn.functional.cross_entropy(head(z[idx]), labels[idx])
                optimizer.zero_grad()
                loss.backward()
                optimizer.step()
    with torch.no_grad():
        predicted = head(z).argmax(-1)
    counts = torch.bincount(labels[test], minlength=classes)
    return {"accuracy": float((predicted[test] == labels[test]).float().mean()),
            "train_accuracy": float((predicted[train] == labels[train]).float().mean()),
            "majority": float(counts.max() / len(test)), "train": int(n_train), "test": int(len(test))}


# ----------------------------------------------------------------------------------------- the run
def run_dir(run: str | Path) -> Path:
    """The Lightning run folder of `run`: itself, or for a folder above one (a `unizoo study` run,
    OUT/runs/NAME, holding version_0/ and test/) its newest version_N/ that holds checkpoints."""
    path = Path(run)
    if not path.is_dir() or (path / "config.yaml").is_file() or (path / "checkpoints").is_dir():
        return path
    versions = [d for d in path.glob("version_*") if (d / "checkpoints").is_dir() and d.name[8:].isdigit()]
    return max(versions, key=lambda d: int(d.name[8:])) if versions else path


def find_checkpoint(run: str | Path) -> Path:
    """The checkpoint of a run: a .ckpt path itself, <run>/checkpoints/last.ckpt, or its config's ckpt_path
    (`run` may also be the folder above a version_N/, as `unizoo study` writes)."""
    path = run_dir(run)
    if path.is_file():
        return path
    candidates = [path / "checkpoints" / "last.ckpt"]
    config = path / "config.yaml"
    if config.is_file():
        ckpt = (yaml.safe_load(config.read_text()) or {}).get("ckpt_path")
        if isinstance(ckpt, str) and ckpt:
            candidates.append(Path(ckpt))
    candidates += sorted((path / "checkpoints").glob("*.ckpt"), key=lambda p: p.stat().st_mtime, reverse=True)
    for candidate in candidates:
        if candidate.is_file():
            return candidate
    raise ValueError(f"no checkpoint for run {str(path)!r} (looked for checkpoints/last.ckpt, "
                     "the config's ckpt_path, checkpoints/*.ckpt and version_N/checkpoints/)")


def _watch_source(run: Path, model: Any) -> tuple[int, int]:
    """(seed, image size) of the smart-watch data of a run (its config) or of a "zoo:NAME" model (its card's
    test protocol), or (0, the read space's size)."""
    from tools.generate import ZOO_PREFIX

    size = max(32, int(getattr(model.read_space, "image_size", 64) or 64))
    data = None
    if str(run).startswith(ZOO_PREFIX):
        from zoo.catalog.registry import get_entry

        protocol = get_entry(str(run)[len(ZOO_PREFIX):]).card.test_protocol or {}
        data = (protocol.get("data") or {}).get("init_args") or {}
    else:
        run = run_dir(run)
        config = run / "config.yaml" if run.is_dir() else run.parent.parent / "config.yaml"
        if config.is_file():
            data = ((yaml.safe_load(config.read_text()) or {}).get("data") or {}).get("init_args") or {}
    if data is not None:
        for source in data.get("sources") or []:
            args = source.get("init_args") or {} if isinstance(source, dict) else {}
            if "size" in args or "seed" in args:
                return int(args.get("seed", 0)), int(args.get("size", size))
    return 0, size


@torch.no_grad()
def projector_features(model: Any, images: list[Any], batch_size: int = 32) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """(first visual token [n, H], mean over tokens [n, H], all tokens flattened [n, N * H]), projected."""
    space = model.read_space
    firsts, means, flats = [], [], []
    for start in range(0, len(images), batch_size):
        pixels = torch.stack([space.preprocess(im) for im in images[start:start + batch_size]]).to(model.device)
        features, _ = space.encode(pixels)
        projected = model.read_projector(features).float().cpu()
        firsts.append(projected[:, 0])
        means.append(projected.mean(1))
        flats.append(projected.flatten(1))
    return torch.cat(firsts), torch.cat(means), torch.cat(flats)


def _figure(embeddings: dict[str, torch.Tensor], labels: torch.Tensor, names: list[str], attribute: str, title: str):
    from matplotlib.figure import Figure

    fig = Figure(figsize=(5 * len(embeddings), 4.5))
    cmap = "tab10" if len(names) <= 10 else "viridis"
    for i, (kind, points) in enumerate(embeddings.items()):
        ax = fig.add_subplot(1, len(embeddings), i + 1)
        scatter = ax.scatter(points[:, 0], points[:, 1], c=labels.numpy(), cmap=cmap, s=8,
                             vmin=0, vmax=max(1, len(names) - 1))
        ax.set_title(f"{kind} (PCA-50 + t-SNE)", fontsize=9)
        ax.set_xticks([])
        ax.set_yticks([])
        if len(names) <= 13:
            handles = [ax.scatter([], [], color=scatter.cmap(scatter.norm(k)), s=12, label=name) for k, name in enumerate(names)]
            ax.legend(handles=handles, fontsize=6, title=attribute, title_fontsize=7)
        else:
            fig.colorbar(scatter, ax=ax, label=attribute)
    fig.suptitle(title, fontsize=9)
    fig.tight_layout()
    return fig


def probe(attribute: str, run: str, images: int = 600, out: str = DEFAULT_OUT, epochs: int = 50, seed: int = 0) -> dict[str, Any]:
    """Project fresh test watches through a run's understanding adapter; t-SNE plot and linear probe of ATTRIBUTE.

    Writes OUT/probe-ATTRIBUTE.json (probe accuracy for the first visual token and the token mean, with
    chance = 1 / classes and the majority-class rate beside it; also printed) and OUT/probe-ATTRIBUTE.png
    (also to TensorBoard under OUT/tb).

    Args:
        attribute: a watch attribute: weather, weather_pos, battery_pos, hour, minute, second, battery, color_name.
        run: a run dir (checkpoints/last.ckpt) or a checkpoint file.
        images: number of fresh test watches.
        out: output folder.
        epochs: linear-probe epochs.
        seed: seed of the split, the probe and t-SNE.
    """
    import zoo.model.variants  # noqa: F401  (registers the subclasses the checkpoint names)
    from datamodules.smartwatch.source import watch_sample
    from zoo.model.unified import UnifiedVLM

    if images < 10:
        raise ValueError(f"probe: images must be >= 10, got {images}")
    allowed = sorted(k for k, v in watch_sample(0, "test", 0, "vqa", 32).attrs.items()
                     if isinstance(v, (str, int)) and not isinstance(v, bool) and k not in _NOT_ATTRIBUTES)
    if attribute not in allowed:
        raise ValueError(f"probe: attribute {attribute!r} is not a categorical watch attribute; expected one of {allowed}")
    checkpoint = find_checkpoint(run)
    model = UnifiedVLM.load_from_checkpoint(checkpoint, map_location="cpu", weights_only=True).eval()
    if model.read_space is None:
        raise ValueError(f"probe: {checkpoint} has no read space (a generation-only model reads no images)")
    data_seed, size = _watch_source(Path(run), model)
    samples = [watch_sample(data_seed, "test", i, "vqa", size) for i in range(images)]
    values = [s.attrs.get(attribute) for s in samples]
    names = sorted(set(values), key=lambda v: (isinstance(v, str), v))
    labels = torch.tensor([names.index(v) for v in values])
    first, mean, flat = projector_features(model, [s.images[0] for s in samples])
    result: dict[str, Any] = {"attribute": attribute, "run": str(run), "checkpoint": str(checkpoint), "images": images,
                              "classes": [str(n) for n in names], "chance": 1.0 / len(names), "epochs": epochs,
                              "features": {}}
    embeddings = {}
    # The paper probes the first token and the mean; a place on the image (a corner) lives in *which* token
    # carries it, which both pool away, so the flattened tokens are probed too.
    for kind, x in (("first_token", first), ("mean_token", mean), ("all_tokens", flat)):
        result["features"][kind] = linear_probe(x, labels, len(names), epochs=epochs, seed=seed)
        embeddings[kind] = tsne(pca(x, 50), seed=seed)
    result["pca_components"] = int(min(50, images, first.shape[1]))
    out_dir = Path(out)
    out_dir.mkdir(parents=True, exist_ok=True)
    accs = ", ".join(f"{k} {v['accuracy']:.2f}" for k, v in result["features"].items())
    fig = _figure(embeddings, labels, result["classes"], attribute,
                  f"{attribute} after the read projector: probe {accs} (chance {result['chance']:.2f})")
    figure_path = out_dir / f"probe-{attribute}.png"
    fig.savefig(figure_path, dpi=110)
    from torch.utils.tensorboard import SummaryWriter

    with SummaryWriter(str(out_dir / "tb")) as writer:
        writer.add_figure(f"probe/{attribute}", fig, close=False)
    result["figure"] = str(figure_path)
    (out_dir / f"probe-{attribute}.json").write_text(json.dumps(result, indent=2) + "\n")
    print(json.dumps(result))
    return result

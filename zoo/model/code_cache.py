"""CodeCache: pre-encoded tokens of a frozen image space (VQ codes, or continuous features), so its
encoder runs once per image instead of once per sample and epoch."""
from __future__ import annotations

import hashlib
import os
import tempfile
from collections.abc import Iterable, Sequence

import torch
from PIL import Image
from safetensors import safe_open
from safetensors.torch import save_file

from zoo.spaces.base import ImageSpace

_CHECKED = ("kind", "num_tokens", "codebook_size", "image_size", "weights_sha256")


class CodeCache:
    """Per-image tokens of a frozen `space`, keyed by stable image keys: code indices [N] of a discrete
    space, or features [N, D] of a continuous one (opt-in: features cost memory, N x D floats per image).

    Misses are encoded in one batch under ``no_grad`` and kept in memory. `save`/`load` use one
    safetensors file at `path` (loaded at construction when it exists) whose metadata records the
    space's num_tokens, codebook_size, image_size and a hash of its weights; a file written for
    another space is refused. In DataLoader workers misses are encoded per worker and not shared:
    call `precompute` before training.
    """

    def __init__(self, space: ImageSpace, path: str | os.PathLike | None = None) -> None:
        if any(p.requires_grad for p in space.parameters()):
            raise ValueError(f"CodeCache needs a frozen space; {type(space).__name__} has trainable weights")
        self.space = space
        self.discrete = bool(space.discrete)
        self.path = os.fspath(path) if path is not None else None
        # One contiguous table (grown by doubling) plus a key -> row index: tens of thousands of small
        # per-image tensors fragment the heap between the encoder's large buffers, and the process grew by
        # 200-400 KB per cached image (6.5 MB per training step of 32; `unizoo bench --suite memory`).
        self._rows: dict[str, int] = {}
        self._table: torch.Tensor | None = None
        self._fingerprint: str | None = None
        if self.path is not None and os.path.exists(self.path):
            self.load()

    def __len__(self) -> int:
        return len(self._rows)

    def __contains__(self, key: str) -> bool:
        return key in self._rows

    def codes_for(self, images: Sequence[Image.Image], keys: Sequence[str]) -> torch.Tensor:
        """Codes [n, N] (long, CPU) of `images`, encoding those whose key is not cached yet."""
        if len(images) != len(keys):
            raise ValueError(f"CodeCache.codes_for: {len(images)} images but {len(keys)} keys")
        missing: dict[str, Image.Image] = {}
        for key, image in zip(keys, images):
            if key not in self._rows:
                missing.setdefault(key, image)
        if missing:
            self._store(list(missing), self._encode(list(missing.values())))
        if not keys:
            return torch.empty(0, self.space.num_tokens, dtype=torch.long)
        stacked = self._table[torch.tensor([self._rows[k] for k in keys])]
        return stacked.long() if self.discrete else stacked

    def precompute(self, items: Iterable[tuple[str, Image.Image]], batch_size: int = 64) -> int:
        """Encode every (key, image) not cached yet, `batch_size` at a time; return how many were new."""
        if batch_size < 1:
            raise ValueError(f"batch_size must be >= 1, got {batch_size}")
        pending: dict[str, Image.Image] = {}
        added = 0
        for key, image in items:
            if key in self._rows or key in pending:
                continue
            pending[key] = image
            if len(pending) == batch_size:
                self._store(list(pending), self._encode(list(pending.values())))
                added += len(pending)
                pending = {}
        if pending:
            self._store(list(pending), self._encode(list(pending.values())))
            added += len(pending)
        return added

    def _encode(self, images: list[Image.Image]) -> torch.Tensor:
        param = next(self.space.parameters(), None)
        device = param.device if param is not None else torch.device("cpu")
        pixels = torch.stack([self.space.preprocess(im) for im in images]).to(device)
        with torch.no_grad():
            features, codes = self.space.encode(pixels)
        if not self.discrete:
            return features.to("cpu", torch.float32)
        if codes is None:
            raise ValueError(f"{type(self.space).__name__}.encode returned no codes")
        expected = (len(images), self.space.num_tokens)
        if tuple(codes.shape) != expected:
            raise ValueError(f"{type(self.space).__name__}.encode gave codes {tuple(codes.shape)}, expected {expected}")
        return codes.to("cpu", torch.int32)

    def _store(self, keys: list[str], codes: torch.Tensor) -> None:
        new, seen = [], set()
        for i, key in enumerate(keys):  # a key already cached (or repeated here) keeps its first row
            if key not in self._rows and key not in seen:
                new.append(i)
                seen.add(key)
        codes = codes[new] if len(new) < len(keys) else codes
        start, size = len(self._rows), len(self._rows) + len(new)
        if self._table is None or size > self._table.shape[0]:
            grown = torch.empty((max(size, 2 * start, 1024), *codes.shape[1:]), dtype=codes.dtype)
            if self._table is not None:
                grown[:start] = self._table[:start]
            self._table = grown
        self._table[start:size] = codes
        for offset, i in enumerate(new):
            self._rows[keys[i]] = start + offset

    # --- file ------------------------------------------------------------------------------------------

    def _metadata(self) -> dict[str, str]:
        if self._fingerprint is None:
            self._fingerprint = _weights_sha256(self.space)
        return {
            "kind": "discrete" if self.discrete else "continuous",
            "num_tokens": str(self.space.num_tokens),
            "codebook_size": str(self.space.codebook_size),
            "image_size": str(self.space.image_size),
            "weights_sha256": self._fingerprint,
            "space": type(self.space).__name__,
        }

    def save(self, path: str | os.PathLike | None = None) -> str:
        """Write every cached code to `path` (default: the cache's path) atomically; return the path."""
        target = os.fspath(path) if path is not None else self.path
        if target is None:
            raise ValueError("CodeCache.save: no path given and the cache was built without one")
        keys = list(self._rows)  # insertion order: row i of the table is keys[i]
        bad = [k for k in keys if "\n" in k]
        if bad:
            raise ValueError(f"CodeCache.save: keys must not contain newlines, e.g. {bad[0]!r}")
        codes = self._table[: len(keys)] if keys else torch.empty(0, self.space.num_tokens, dtype=torch.int32)
        key_bytes = torch.frombuffer(bytearray("\n".join(keys).encode("utf-8")), dtype=torch.uint8) if keys else None
        tensors = {"codes": codes.contiguous()}
        tensors["keys"] = key_bytes if key_bytes is not None else torch.empty(0, dtype=torch.uint8)
        directory = os.path.dirname(os.path.abspath(target))
        os.makedirs(directory, exist_ok=True)
        fd, tmp = tempfile.mkstemp(prefix=".codes-", suffix=".tmp", dir=directory)
        os.close(fd)
        try:
            save_file(tensors, tmp, metadata=self._metadata())
            os.replace(tmp, target)  # readers never see a half-written file
        finally:
            if os.path.exists(tmp):
                os.remove(tmp)
        return target

    def load(self, path: str | os.PathLike | None = None) -> int:
        """Add the codes stored at `path` (default: the cache's path); return how many; refuse another space's file."""
        source = os.fspath(path) if path is not None else self.path
        if source is None:
            raise ValueError("CodeCache.load: no path given and the cache was built without one")
        with safe_open(source, framework="pt") as f:
            stored = f.metadata() or {}
            expected = self._metadata()
            for field in _CHECKED:
                if stored.get(field) != expected[field]:
                    raise ValueError(
                        f"{source}: code cache written for another space ({field} {stored.get(field)!r} in the "
                        f"file, {expected[field]!r} for {type(self.space).__name__}); delete it to re-encode"
                    )
            codes = f.get_tensor("codes")
            raw = f.get_tensor("keys")
        keys = bytes(raw.numpy()).decode("utf-8").split("\n") if raw.numel() else []
        if len(keys) != codes.shape[0]:
            raise ValueError(f"{source}: {len(keys)} keys but {codes.shape[0]} code rows; the file is corrupt")
        self._store(keys, codes.to(torch.int32) if self.discrete else codes.to(torch.float32))
        return len(keys)


def cache_for(spaces: Iterable[ImageSpace | None], codes: bool, features: bool) -> CodeCache | None:
    """The cache of a model's `cache_codes`/`cache_features` flags: one for the first frozen space of the
    wanted kind among `spaces` (a model lists its write side first: it is always encoded); None when
    neither flag is set.

    `codes` caches VQ codes only; `features` caches any frozen space, as codes where the space is discrete
    (its compact form), so swapping a recipe's space keeps the flag meaningful.
    """
    if not (codes or features):
        return None
    wanted = [s for s in spaces if s is not None and (features or (codes and s.discrete))]
    if not wanted:
        raise ValueError("cache_codes=True needs a discrete (VQ) space; cache_features=True a continuous one")
    return CodeCache(wanted[0])

def _weights_sha256(space: ImageSpace) -> str:
    """Hash of the space's state dict: codes from differently trained encoders must not mix."""
    digest = hashlib.sha256()
    for name, tensor in sorted(space.state_dict().items()):
        t = tensor.detach().to("cpu").contiguous()
        digest.update(f"{name}:{t.dtype}:{tuple(t.shape)};".encode())
        digest.update(t.reshape(-1).view(torch.uint8).numpy().tobytes())
    return digest.hexdigest()

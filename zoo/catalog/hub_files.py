"""Safe file primitives for zoo.catalog.hub: sha256, atomic writes and downloads, digest records, state-dict files."""
from __future__ import annotations

import hashlib
import http.client
import json
import logging
import os
import shutil
import tempfile
import time
import urllib.error
import urllib.parse
import urllib.request
from pathlib import Path
from typing import Any, BinaryIO

import torch

# The logger of zoo.catalog.hub, as before these primitives moved here: filters set on "zoo.catalog.hub" still apply.
log = logging.getLogger("zoo.catalog.hub")

_CHUNK = 1 << 20
_TIMEOUT_S = 60.0
PICKLE_SUFFIXES = (".pt", ".pth", ".bin", ".ckpt")


class ChecksumError(ValueError):
    """A file's sha256 differs from the expected one (the file has been removed when it was ours)."""

    def __init__(self, path: Path | str, expected: str, actual: str, why: str = "") -> None:
        self.path, self.expected, self.actual = Path(path), expected, actual
        super().__init__(f"sha256 mismatch for {path}: expected {expected}, got {actual}{why}")


class WeightsNotFoundError(FileNotFoundError):
    """No copy of the requested weights could be found (missing upstream, or offline with no cache)."""


class DownloadError(OSError):
    """A transfer failed or ended early."""


class UnsafeCheckpointError(ValueError):
    """A pickle-based checkpoint holds objects beyond tensors and plain containers."""


def sha256_file(path: str | Path) -> str:
    """Hex sha256 of a file, read in chunks."""
    digest = hashlib.sha256()
    with open(path, "rb") as fh:
        for chunk in iter(lambda: fh.read(_CHUNK), b""):
            digest.update(chunk)
    return digest.hexdigest()


# ----------------------------------------------------------------------------- atomic writes


def atomic_copy(src: BinaryIO, target: Path) -> None:
    """Copy the stream `src` to `target` through a temp file beside it, renamed once complete."""
    target.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp_name = tempfile.mkstemp(dir=target.parent, prefix=f".{target.name}.", suffix=".part")
    try:
        with os.fdopen(fd, "wb") as out:
            shutil.copyfileobj(src, out, _CHUNK)
        os.replace(tmp_name, target)
    except BaseException:
        Path(tmp_name).unlink(missing_ok=True)
        raise


def atomic_write_text(path: Path, text: str) -> None:
    """Write `text` to `path` through a temp file beside it, renamed once written."""
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp_name = tempfile.mkstemp(dir=path.parent, prefix=f".{path.name}.", suffix=".tmp")
    try:
        with os.fdopen(fd, "w") as out:
            out.write(text)
        os.replace(tmp_name, path)
    except BaseException:
        Path(tmp_name).unlink(missing_ok=True)
        raise


# ----------------------------------------------------------------------------- downloads


def download(url: str, target: Path, *, progress: bool) -> None:
    """Download `url` to `target` through a temp file beside it; renamed only if complete."""
    scheme = urllib.parse.urlsplit(url).scheme
    host = urllib.parse.urlsplit(url).hostname or ""
    if scheme == "http" and host not in ("localhost", "127.0.0.1", "::1"):
        log.warning("downloading %s over plain http: integrity rests on the sha256 check alone", url)
    target.parent.mkdir(parents=True, exist_ok=True)
    try:
        response = urllib.request.urlopen(url, timeout=_TIMEOUT_S)  # noqa: S310 (scheme checked above)
    except urllib.error.HTTPError as err:
        if err.code == 404:
            raise WeightsNotFoundError(f"{url}: not found (HTTP 404)") from err
        raise DownloadError(f"{url}: HTTP {err.code} {err.reason}") from err
    except (urllib.error.URLError, OSError) as err:
        reason = getattr(err, "reason", err)
        if scheme == "file" and isinstance(reason, FileNotFoundError):
            raise WeightsNotFoundError(f"{url}: no such file") from err
        raise DownloadError(f"{url}: cannot connect ({reason})") from err
    with response:
        announced = response.headers.get("Content-Length")
        total = int(announced) if announced and announced.isdigit() else None
        fd, tmp_name = tempfile.mkstemp(dir=target.parent, prefix=f".{target.name}.", suffix=".part")
        tmp = Path(tmp_name)
        try:
            with os.fdopen(fd, "wb") as out:
                received = _copy_with_progress(response, out, total, target.name, progress, url)
            if total is not None and received != total:
                raise DownloadError(f"{url}: transfer ended early: received {received} of {total} bytes "
                                    f"announced by Content-Length")
            os.replace(tmp, target)
        except BaseException:
            tmp.unlink(missing_ok=True)
            raise


def _copy_with_progress(src: BinaryIO, out: BinaryIO, total: int | None, label: str, progress: bool,
                        url: str) -> int:
    from rich.progress import BarColumn, DownloadColumn, Progress, TextColumn, TransferSpeedColumn

    columns = (TextColumn("{task.description}"), BarColumn(), DownloadColumn(), TransferSpeedColumn())
    received = 0
    with Progress(*columns, transient=True, disable=not progress) as bar:
        task = bar.add_task(label, total=total)
        while True:
            try:
                chunk = src.read(_CHUNK)
            except (OSError, http.client.HTTPException) as err:  # connection reset, IncompleteRead
                raise DownloadError(f"{url}: transfer failed after {received} bytes ({err})") from err
            if not chunk:
                return received
            out.write(chunk)
            received += len(chunk)
            bar.update(task, advance=len(chunk))


# ----------------------------------------------------------------------------- trust-on-first-use records


def read_digest_records(path: Path) -> dict[str, Any]:
    """The trust-on-first-use records in `path` (source key -> record); empty when the file is absent."""
    if not path.exists():
        return {}
    try:
        records = json.loads(path.read_text())
    except (OSError, json.JSONDecodeError) as err:
        raise ValueError(f"{path}: unreadable trust-on-first-use record ({err}); fix or delete it") from err
    if not isinstance(records, dict):
        raise ValueError(f"{path}: expected a JSON object of source -> record")
    return records


def add_digest_record(path: Path, key: str, digest: str, filename: str, first_seen_from: Path) -> None:
    """Record `digest` as the trusted sha256 of source `key` in `path` (rewritten atomically)."""
    records = read_digest_records(path)
    records[key] = {"sha256": digest, "filename": filename, "first_seen_from": str(first_seen_from),
                    "recorded_at": time.strftime("%Y-%m-%dT%H:%M:%S")}
    atomic_write_text(path, json.dumps(records, indent=2, sort_keys=True))


# ----------------------------------------------------------------------------- state-dict files


def load_state_dict_file(path: str | Path) -> dict[str, torch.Tensor]:
    """Tensors from a safetensors file, or from a .pt/.pth/.bin/.ckpt file loaded with weights_only=True."""
    path = Path(path)
    if not path.is_file():
        raise FileNotFoundError(f"weights file {path} does not exist")
    suffix = path.suffix.lower()
    if suffix == ".safetensors":
        from safetensors.torch import load_file

        try:
            return load_file(str(path), device="cpu")
        except Exception as err:  # safetensors raises its own SafetensorError for bad headers/sizes
            raise ValueError(f"{path}: not a valid safetensors file (truncated or corrupt?): {err}") from err
    if suffix not in PICKLE_SUFFIXES:
        raise ValueError(f"{path}: unknown weights format {suffix!r}; expected .safetensors or one of "
                         f"{', '.join(PICKLE_SUFFIXES)}")
    try:
        obj = torch.load(path, map_location="cpu", weights_only=True)
    except Exception as err:
        import pickle

        if isinstance(err, pickle.UnpicklingError):
            raise UnsafeCheckpointError(
                f"{path}: refused: the file holds pickled objects other than tensors and plain containers, "
                f"and unizoo only loads .pt files with torch.load(weights_only=True). Convert it to "
                f"safetensors from a trusted environment. ({str(err).splitlines()[0]})") from err
        raise ValueError(f"{path}: cannot read checkpoint (truncated or corrupt?): {err}") from err
    return _tensor_dict(obj, path)


def _tensor_dict(obj: Any, path: Path) -> dict[str, torch.Tensor]:
    if isinstance(obj, dict):
        for wrapper in ("state_dict", "model"):
            if isinstance(obj.get(wrapper), dict):
                obj = obj[wrapper]
                break
    if not isinstance(obj, dict):
        raise ValueError(f"{path}: expected a dict of tensors, found {type(obj).__name__}")
    bad = [k for k, v in obj.items() if not isinstance(k, str) or not isinstance(v, torch.Tensor)]
    if bad:
        raise ValueError(f"{path}: entries that are not tensors: {bad[:5]}{' ...' if len(bad) > 5 else ''}")
    return obj


def save_state_dict_file(state: dict[str, torch.Tensor], path: str | Path,
                         metadata: dict[str, str] | None = None) -> str:
    """Write `state` as safetensors atomically (temp file + rename); return the file's sha256."""
    from safetensors.torch import save_file

    path = Path(path)
    if path.suffix != ".safetensors":
        raise ValueError(f"{path}: state dicts are saved as .safetensors")
    bad = [k for k, v in state.items() if not isinstance(v, torch.Tensor)]
    if bad:
        raise ValueError(f"{path}: cannot save non-tensor entries {bad[:5]}")
    if metadata and any(not isinstance(k, str) or not isinstance(v, str) for k, v in metadata.items()):
        raise ValueError(f"{path}: safetensors metadata must map str -> str")
    plain: dict[str, torch.Tensor] = {}
    seen: set[int] = set()
    for key, tensor in state.items():
        tensor = tensor.detach().cpu()
        storage = tensor.untyped_storage().data_ptr()
        # safetensors refuses tensors sharing memory (tied weights): give repeats their own copy.
        plain[key] = tensor.clone().contiguous() if storage in seen and tensor.numel() else tensor.contiguous()
        seen.add(storage)
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp_name = tempfile.mkstemp(dir=path.parent, prefix=f".{path.name}.", suffix=".tmp")
    os.close(fd)
    try:
        save_file(plain, tmp_name, metadata=metadata)
        digest = sha256_file(tmp_name)
        os.replace(tmp_name, path)
    except BaseException:
        Path(tmp_name).unlink(missing_ok=True)
        raise
    return digest

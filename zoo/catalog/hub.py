"""Pulling weights safely: bundled file, cache, local mirror, then the source; sha256 before use.

Where a file is looked for, in order (`fetch`):
1. a file bundled in the `zoo` package (`WeightsSource.package_file`);
2. the cache: `$UNIZOO_CACHE`, else `$XDG_CACHE_HOME/unizoo`, else `~/.cache/unizoo`
   (files under `<cache>/weights/<sha256 or source key>/<filename>`);
3. a local mirror, `$UNIZOO_MIRROR`: either a directory or an http(s) base URL, where a file is looked
   up as `<mirror>/<sha256>/<filename>` first, then `<mirror>/<filename>` (a folder written by
   `unizoo zoo publish` is such a mirror). Files found in a mirror directory are used in place;
4. the source: a Hugging Face repo (through `hf_hub_download`, into Hugging Face's own cache so files
   are shared with transformers; `HF_HUB_OFFLINE` is honoured) or an https/file URL (urllib, rich
   progress bar, into our cache).

Every file is checked against its sha256 before it is returned. Downloads are written to a temporary
file beside the target and renamed only once the digest matches, so an interrupted transfer never
leaves a file that could pass as complete. Sources whose digest we do not know (upstream releases) are
trusted on first use: the digest of the first download is recorded in `<cache>/tofu.json` and every
later use is checked against it.

Offline mode (`offline=True`, `UNIZOO_OFFLINE=1` or `HF_HUB_OFFLINE=1`): only the bundled file, the
cache, a mirror directory and Hugging Face's local cache are used; nothing is contacted.

State-dict files: safetensors first; `.pt`/`.pth`/`.bin`/`.ckpt` only through
`torch.load(weights_only=True)`, so a file carrying arbitrary pickled objects is refused.
Nothing here ever passes `trust_remote_code`.

The file primitives (sha256, atomic writes and downloads, digest records, state-dict files) live in
`zoo.catalog.hub_files`; their public names are re-exported here.
"""
from __future__ import annotations

import contextlib
import hashlib
import logging
import os
import urllib.parse
from dataclasses import dataclass
from importlib import resources
from pathlib import Path
from collections.abc import Iterator
from typing import Any

from zoo.catalog.hub_files import (
    PICKLE_SUFFIXES,
    ChecksumError,
    DownloadError,
    UnsafeCheckpointError,
    WeightsNotFoundError,
    add_digest_record,
    atomic_copy,
    download,
    load_state_dict_file,
    read_digest_records,
    save_state_dict_file,
    sha256_file,
)

__all__ = ["PICKLE_SUFFIXES", "ZOO_PREFIX", "ChecksumError", "DownloadError", "UnsafeCheckpointError",
           "WeightsNotFoundError", "WeightsSource", "cache_dir", "fetch", "hub_load_kwargs", "load_state_dict_file",
           "offline_reason", "resolve_weights", "save_state_dict_file", "sha256_file", "upstream_errors"]

log = logging.getLogger(__name__)

_TRUE = {"1", "true", "yes", "on"}


@dataclass(frozen=True)
class WeightsSource:
    """Where one weights file lives: exactly one of `hf_repo`, `url`, `package_file`; its digest."""

    hf_repo: str | None = None
    hf_filename: str | None = None
    revision: str | None = None
    url: str | None = None
    package_file: str | None = None  # relative to the `zoo` package, e.g. "assets/weights/x.safetensors"
    sha256: str | None = None
    filename: str | None = None  # local file name; defaults to the source's basename
    size: int | None = None  # bytes, for the zoo table only

    def __post_init__(self) -> None:
        given = [k for k in ("hf_repo", "url", "package_file") if getattr(self, k)]
        if len(given) != 1:
            raise ValueError(f"WeightsSource needs exactly one of hf_repo, url, package_file; got {given or 'none'}")
        if self.hf_repo and not self.hf_filename:
            raise ValueError(f"WeightsSource for hf repo {self.hf_repo!r} needs hf_filename")
        if self.url:
            scheme = urllib.parse.urlsplit(self.url).scheme
            if scheme not in ("https", "http", "file"):
                raise ValueError(f"WeightsSource url {self.url!r}: scheme must be https, http or file")
        if self.sha256 is not None:
            digest = self.sha256.lower()
            if len(digest) != 64 or any(c not in "0123456789abcdef" for c in digest):
                raise ValueError(f"WeightsSource sha256 {self.sha256!r} is not 64 hex digits")
            object.__setattr__(self, "sha256", digest)
        name = self.local_name
        if not name or "/" in name or "\\" in name or name in (".", ".."):
            raise ValueError(f"WeightsSource filename {name!r} must be a plain file name")

    @property
    def local_name(self) -> str:
        """The file name used in the cache and looked up in mirrors."""
        if self.filename:
            return self.filename
        if self.hf_filename:
            return self.hf_filename.rsplit("/", 1)[-1]
        if self.url:
            return urllib.parse.unquote(urllib.parse.urlsplit(self.url).path.rsplit("/", 1)[-1])
        return str(self.package_file).rsplit("/", 1)[-1]

    @property
    def key(self) -> str:
        """A stable identity of the source (what trust-on-first-use records are keyed by)."""
        if self.hf_repo:
            return f"hf://{self.hf_repo}@{self.revision or 'main'}/{self.hf_filename}"
        if self.url:
            return self.url
        return f"package://zoo/{self.package_file}"

    def describe(self) -> str:
        """A short human-readable location."""
        if self.hf_repo:
            return f"hf:{self.hf_repo}/{self.hf_filename}" + (f"@{self.revision}" if self.revision else "")
        if self.package_file:
            return f"bundled: zoo/{self.package_file}"
        return str(self.url)


# ----------------------------------------------------------------------------- settings


def cache_dir() -> Path:
    """The unizoo cache directory (not created)."""
    if os.environ.get("UNIZOO_CACHE"):
        return Path(os.environ["UNIZOO_CACHE"]).expanduser()
    xdg = os.environ.get("XDG_CACHE_HOME")
    return (Path(xdg).expanduser() if xdg else Path.home() / ".cache") / "unizoo"


def offline_reason(offline: bool | None = None) -> str | None:
    """Why offline mode is on ("the offline flag", "HF_HUB_OFFLINE=1", ...), or None when online."""
    if offline is not None:
        return "offline=True" if offline else None
    for var in ("UNIZOO_OFFLINE", "HF_HUB_OFFLINE"):
        if os.environ.get(var, "").strip().lower() in _TRUE:
            return f"{var}={os.environ[var]}"
    return None


# ----------------------------------------------------------------------------- trust on first use


def _tofu_path() -> Path:
    return cache_dir() / "tofu.json"


def _tofu_records() -> dict[str, Any]:
    return read_digest_records(_tofu_path())


def _tofu_record(source: WeightsSource, digest: str, path: Path) -> None:
    add_digest_record(_tofu_path(), source.key, digest, source.local_name, path)
    log.warning("%s has no published sha256: trusting it on first use and recording sha256 %s in %s; "
                "later copies must match it", source.describe(), digest, _tofu_path())


def _expected_digest(source: WeightsSource) -> tuple[str | None, str]:
    """The digest to check against, and where it came from (for error messages)."""
    if source.sha256:
        return source.sha256, ""
    record = _tofu_records().get(source.key)
    if record:
        return record["sha256"], f" (digest recorded on first use in {_tofu_path()})"
    return None, ""


def _verify(path: Path, source: WeightsSource, *, ours: bool) -> Path:
    """Check `path` against the expected digest (or record it on first use); remove it on mismatch if ours."""
    expected, why = _expected_digest(source)
    actual = sha256_file(path)
    if expected is None:
        _tofu_record(source, actual, path)
        return path
    if actual != expected:
        if ours:
            path.unlink(missing_ok=True)
        raise ChecksumError(path, expected, actual, why)
    return path


# ----------------------------------------------------------------------------- fetch


def _cache_target(source: WeightsSource) -> Path:
    bucket = source.sha256 or "tofu-" + hashlib.sha256(source.key.encode()).hexdigest()[:16]
    return cache_dir() / "weights" / bucket / source.local_name


def fetch(source: WeightsSource, *, offline: bool | None = None, progress: bool = True) -> Path:
    """A local, sha256-verified copy of `source` (bundled file -> cache -> mirror -> source)."""
    reason = offline_reason(offline)
    if source.package_file:
        bundled = _package_path(source)
        if bundled is not None:
            return _verify(bundled, source, ours=False)
    target = _cache_target(source)
    if target.is_file():
        try:
            return _verify(target, source, ours=True)
        except ChecksumError as err:
            log.warning("cached copy is corrupt and was removed, fetching again: %s", err)
    found = _from_mirror(source, target, reason, progress)
    if found is not None:
        return found
    if reason is not None:
        if source.hf_repo:  # Hugging Face's own cache counts as a cache
            local = _from_hf(source, local_only=True)
            if local is not None:
                return local
        raise WeightsNotFoundError(
            f"{source.local_name} ({source.describe()}) is not in cache and offline mode is on ({reason}); "
            f"looked in {target.parent}; run `unizoo zoo pull` online, or set UNIZOO_MIRROR to a folder holding it")
    if source.hf_repo:
        return _from_hf(source)
    if source.url:
        download(source.url, target, progress=progress)
        return _verify(target, source, ours=True)
    raise WeightsNotFoundError(f"bundled weights zoo/{source.package_file} are missing from the installed "
                               f"package, and no cached or mirrored copy of {source.local_name} was found")


def _package_path(source: WeightsSource) -> Path | None:
    resource = resources.files("zoo").joinpath(*str(source.package_file).split("/"))
    if not resource.is_file():
        return None
    if isinstance(resource, Path):
        return resource
    # Installed from a zip: copy out once into the cache, then it is an ordinary cached file.
    target = _cache_target(source)
    with resource.open("rb") as src:
        atomic_copy(src, target)
    return target


def _from_mirror(source: WeightsSource, target: Path, reason: str | None, progress: bool) -> Path | None:
    mirror = os.environ.get("UNIZOO_MIRROR", "").strip()
    if not mirror:
        return None
    expected = _expected_digest(source)[0]
    relatives = ([f"{expected}/{source.local_name}"] if expected else []) + [source.local_name]
    scheme = urllib.parse.urlsplit(mirror).scheme
    if scheme in ("http", "https"):
        if reason is not None:
            return None  # a mirror URL is still the network
        for rel in relatives:
            url = mirror.rstrip("/") + "/" + urllib.parse.quote(rel)
            try:
                download(url, target, progress=progress)
            except WeightsNotFoundError:
                continue
            return _verify(target, source, ours=True)
        return None
    root = Path(urllib.parse.urlsplit(mirror).path if scheme == "file" else mirror).expanduser()
    if not root.is_dir():
        raise ValueError(f"UNIZOO_MIRROR={mirror!r} is neither an http(s) URL nor an existing directory")
    for rel in relatives:
        candidate = root / rel
        if candidate.is_file():
            # Mirror files are not ours to delete: a mismatch is reported and the file left alone.
            return _verify(candidate, source, ours=False)
    return None


def _from_hf(source: WeightsSource, *, local_only: bool = False) -> Path | None:
    from huggingface_hub import hf_hub_download
    from huggingface_hub.errors import (EntryNotFoundError, LocalEntryNotFoundError, RepositoryNotFoundError,
                                        RevisionNotFoundError)

    try:
        path = Path(hf_hub_download(repo_id=source.hf_repo, filename=source.hf_filename,
                                    revision=source.revision, local_files_only=local_only))
    except LocalEntryNotFoundError:
        if local_only:
            return None
        raise WeightsNotFoundError(f"{source.describe()} is not in Hugging Face's cache and huggingface_hub "
                                   f"is offline (HF_HUB_OFFLINE)") from None
    except (EntryNotFoundError, RepositoryNotFoundError, RevisionNotFoundError) as err:
        raise WeightsNotFoundError(f"{source.describe()} not found on the Hugging Face Hub: {err}") from err
    expected, why = _expected_digest(source)
    actual = sha256_file(path)
    if expected is None:
        _tofu_record(source, actual, path)
    elif actual != expected:
        # Remove the blob too so the bad copy cannot be picked up again from HF's cache.
        blob = path.resolve()
        path.unlink(missing_ok=True)
        blob.unlink(missing_ok=True)
        raise ChecksumError(path, expected, actual, why)
    return path


# ----------------------------------------------------------------------------- upstream hub models


def is_hub_id(value: str) -> bool:
    """True for a Hugging Face repo id ("org/name"), False for a local file or folder."""
    return bool(value) and not os.path.exists(value) and value.count("/") <= 1 and not value.startswith((".", "/", "~"))


def hub_load_kwargs(value: str, revision: str | None = None) -> dict[str, Any]:
    """Keyword arguments for a transformers `from_pretrained(value, ...)` of an upstream model.

    `revision` (a commit hash, pinned in the zoo entry) is passed for hub ids only; offline mode
    (`UNIZOO_OFFLINE=1` as well as `HF_HUB_OFFLINE=1`) asks for the local cache only, so nothing is contacted.
    """
    if not is_hub_id(value):
        return {}
    kwargs: dict[str, Any] = {"revision": revision} if revision else {}
    if offline_reason() is not None:
        kwargs["local_files_only"] = True
    return kwargs


def upstream_offline_message(repo_id: str, revision: str | None, reason: str) -> str:
    """The one-line "not in cache, offline" message, as `fetch` gives for zoo files."""
    try:
        from huggingface_hub.constants import HF_HUB_CACHE
    except ImportError:  # pragma: no cover - huggingface_hub is a dependency
        HF_HUB_CACHE = "Hugging Face's cache"
    where = os.environ.get("HF_HUB_CACHE") or HF_HUB_CACHE
    return (f"{repo_id} (hf:{repo_id}@{revision or 'main'}) is not in cache and offline mode is on ({reason}); "
            f"looked in {where}; download it online first (`unizoo zoo pull` of its zoo entry, or any "
            f"from_pretrained of {repo_id}), or point the config at a local copy")


@contextlib.contextmanager
def upstream_errors(repo_id: str, revision: str | None = None) -> Iterator[None]:
    """Turn the OSError transformers / huggingface_hub raise for an upstream model missing offline into
    `WeightsNotFoundError` with the one-line message zoo files get (`upstream_offline_message`)."""
    try:
        yield
    except WeightsNotFoundError:
        raise
    except OSError as err:
        reason = offline_reason()
        if reason is None or not is_hub_id(repo_id):
            raise
        raise WeightsNotFoundError(upstream_offline_message(repo_id, revision, reason)) from err


# ----------------------------------------------------------------------------- weights references

ZOO_PREFIX = "zoo:"


def resolve_weights(value: str, *, offline: bool | None = None) -> str:
    """A local path for a `pretrained`/`checkpoint` value.

    `zoo:NAME` -> the sha256-verified weights file of zoo entry NAME (fetched like any entry's weights);
    `zoo/assets/...` -> the file shipped inside the installed package; anything else is returned unchanged
    (a local path or a hub id).
    """
    from zoo.config import resolve_asset

    if not value.startswith(ZOO_PREFIX):
        return resolve_asset(value)
    from zoo.catalog.registry import get_entry  # imported here: the registry itself imports this module

    entry = get_entry(value[len(ZOO_PREFIX):])
    if entry.weights is None:
        raise ValueError(f"{value!r}: zoo entry {entry.name!r} lists no weights file to load")
    return str(fetch(entry.weights, offline=offline))

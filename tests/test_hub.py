"""zoo.catalog.hub: verified, atomic, cached fetching from a loopback server; safe state-dict files."""
from __future__ import annotations

import hashlib
import json
import logging
import os
import threading
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path

import pytest
import torch

from zoo.catalog import hub
from zoo.catalog.hub import ChecksumError, DownloadError, UnsafeCheckpointError, WeightsNotFoundError, WeightsSource

PAYLOAD = os.urandom(3000)
DIGEST = hashlib.sha256(PAYLOAD).hexdigest()


class Server:
    """A loopback HTTP server: `files[path] = bytes`; `truncate` paths announce all bytes, send half."""

    def __init__(self) -> None:
        self.files: dict[str, bytes] = {}
        self.truncate: set[str] = set()
        self.requests: list[str] = []
        owner = self

        class Handler(BaseHTTPRequestHandler):
            def do_GET(self) -> None:  # noqa: N802 (http.server's naming)
                owner.requests.append(self.path)
                body = owner.files.get(self.path)
                if body is None:
                    self.send_error(404)
                    return
                self.send_response(200)
                self.send_header("Content-Length", str(len(body)))
                self.end_headers()
                if self.path in owner.truncate:
                    self.wfile.write(body[: len(body) // 2])
                    self.wfile.flush()
                    self.close_connection = True
                    return
                self.wfile.write(body)

            def log_message(self, *args) -> None:
                pass

        self.httpd = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self.thread = threading.Thread(target=self.httpd.serve_forever, daemon=True)
        self.thread.start()

    def url(self, path: str) -> str:
        return f"http://127.0.0.1:{self.httpd.server_address[1]}{path}"

    def close(self) -> None:
        self.httpd.shutdown()
        self.httpd.server_close()


@pytest.fixture()
def server():
    srv = Server()
    yield srv
    srv.close()


@pytest.fixture()
def cache(tmp_path, monkeypatch) -> Path:
    """An isolated, online environment: our cache in tmp_path, no mirror, no offline flags, no proxies."""
    root = tmp_path / "cache"
    monkeypatch.setenv("UNIZOO_CACHE", str(root))
    for var in ("UNIZOO_MIRROR", "UNIZOO_OFFLINE", "HF_HUB_OFFLINE", "http_proxy", "HTTP_PROXY",
                "https_proxy", "HTTPS_PROXY", "all_proxy", "ALL_PROXY"):
        monkeypatch.delenv(var, raising=False)
    return root


def _files(root: Path) -> list[Path]:
    return [p for p in root.rglob("*") if p.is_file() and p.name != "tofu.json"] if root.exists() else []


def test_good_file_is_fetched_verified_and_cached(server, cache):
    server.files["/w.safetensors"] = PAYLOAD
    source = WeightsSource(url=server.url("/w.safetensors"), sha256=DIGEST)
    path = hub.fetch(source, progress=False)
    assert path.read_bytes() == PAYLOAD
    assert cache in path.parents and path.name == "w.safetensors"
    assert _files(cache) == [path]  # no temp file left behind
    assert hub.fetch(source, progress=False) == path
    assert server.requests == ["/w.safetensors"]  # the second fetch came from the cache


def test_checksum_mismatch_raises_and_leaves_nothing(server, cache):
    server.files["/w.bin"] = PAYLOAD[:-1] + b"\x00"
    source = WeightsSource(url=server.url("/w.bin"), sha256=DIGEST)
    with pytest.raises(ChecksumError) as info:
        hub.fetch(source, progress=False)
    message = str(info.value)
    assert "w.bin" in message and DIGEST in message
    assert hashlib.sha256(server.files["/w.bin"]).hexdigest() in message
    assert _files(cache) == []


def test_interrupted_transfer_leaves_no_complete_looking_file(server, cache):
    server.files["/w.bin"] = PAYLOAD
    server.truncate.add("/w.bin")
    with pytest.raises(DownloadError, match="ended early|transfer failed"):
        hub.fetch(WeightsSource(url=server.url("/w.bin"), sha256=DIGEST), progress=False)
    assert _files(cache) == []
    # Without a known digest (trust on first use) the short transfer must not be recorded either.
    with pytest.raises(DownloadError):
        hub.fetch(WeightsSource(url=server.url("/w.bin")), progress=False)
    assert _files(cache) == [] and not (cache / "tofu.json").exists()


def test_missing_file_is_a_clear_error(server, cache):
    with pytest.raises(WeightsNotFoundError, match="404"):
        hub.fetch(WeightsSource(url=server.url("/nope.bin"), sha256=DIGEST), progress=False)


def test_offline_uses_cache_only_and_never_contacts_server(server, cache, monkeypatch):
    server.files["/w.bin"] = PAYLOAD
    source = WeightsSource(url=server.url("/w.bin"), sha256=DIGEST)
    absent = WeightsSource(url=server.url("/other.bin"), sha256=DIGEST[::-1])
    with pytest.raises(WeightsNotFoundError, match=r"not in cache and offline mode is on \(offline=True\)"):
        hub.fetch(absent, offline=True)
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    with pytest.raises(WeightsNotFoundError, match=r"offline mode is on \(HF_HUB_OFFLINE=1\)"):
        hub.fetch(source)
    assert server.requests == []
    monkeypatch.delenv("HF_HUB_OFFLINE")
    path = hub.fetch(source, progress=False)
    monkeypatch.setenv("UNIZOO_OFFLINE", "1")
    assert hub.fetch(source) == path
    assert server.requests == ["/w.bin"]


def test_mirror_directory_by_filename_and_by_digest(server, cache, tmp_path, monkeypatch):
    mirror = tmp_path / "mirror"
    (mirror / DIGEST).mkdir(parents=True)
    (mirror / DIGEST / "w.bin").write_bytes(PAYLOAD)
    (mirror / "plain.bin").write_bytes(PAYLOAD)
    monkeypatch.setenv("UNIZOO_MIRROR", str(mirror))
    by_digest = hub.fetch(WeightsSource(url=server.url("/w.bin"), sha256=DIGEST), offline=True)
    assert by_digest == mirror / DIGEST / "w.bin"
    by_name = hub.fetch(WeightsSource(url=server.url("/plain.bin"), sha256=DIGEST), progress=False)
    assert by_name == mirror / "plain.bin"
    assert server.requests == []
    # A bad mirror copy is reported, and left alone (it is not ours to delete).
    (mirror / "bad.bin").write_bytes(b"nope")
    with pytest.raises(ChecksumError, match="bad.bin"):
        hub.fetch(WeightsSource(url=server.url("/bad.bin"), sha256=DIGEST), progress=False)
    assert (mirror / "bad.bin").exists()


def test_mirror_url_is_tried_before_the_source(server, cache, monkeypatch):
    server.files[f"/mirror/{DIGEST}/w.bin"] = PAYLOAD
    monkeypatch.setenv("UNIZOO_MIRROR", server.url("/mirror"))
    path = hub.fetch(WeightsSource(url=server.url("/upstream/w.bin"), sha256=DIGEST), progress=False)
    assert path.read_bytes() == PAYLOAD and cache in path.parents
    assert server.requests == [f"/mirror/{DIGEST}/w.bin"]
    # A mirror URL without the file falls through to the source (tried by digest, then by name).
    server.files["/upstream/v.bin"] = PAYLOAD
    hub.fetch(WeightsSource(url=server.url("/upstream/v.bin"), sha256=DIGEST), progress=False)
    assert server.requests[1:] == [f"/mirror/{DIGEST}/v.bin", "/mirror/v.bin", "/upstream/v.bin"]


def test_file_url_source(cache, tmp_path):
    src = tmp_path / "src" / "w.safetensors"
    src.parent.mkdir()
    src.write_bytes(PAYLOAD)
    path = hub.fetch(WeightsSource(url=src.as_uri(), sha256=DIGEST), progress=False)
    assert path.read_bytes() == PAYLOAD and cache in path.parents
    with pytest.raises(WeightsNotFoundError):
        hub.fetch(WeightsSource(url=(tmp_path / "none.bin").as_uri(), sha256=DIGEST), progress=False)


def test_trust_on_first_use_records_then_enforces(server, cache, caplog):
    server.files["/up.pt"] = PAYLOAD
    source = WeightsSource(url=server.url("/up.pt"))
    with caplog.at_level(logging.WARNING, logger="zoo.catalog.hub"):
        path = hub.fetch(source, progress=False)
    assert "trusting it on first use" in caplog.text
    records = json.loads((cache / "tofu.json").read_text())
    assert records[source.key]["sha256"] == DIGEST
    # A tampered cache copy is caught, removed and fetched again.
    path.write_bytes(b"tampered")
    assert hub.fetch(source, progress=False).read_bytes() == PAYLOAD
    # Upstream changes the file: the recorded digest no longer matches.
    path.unlink()
    server.files["/up.pt"] = PAYLOAD + b"changed"
    with pytest.raises(ChecksumError, match="first use"):
        hub.fetch(source, progress=False)
    assert _files(cache) == []


def test_package_file_is_verified_in_place(cache, tmp_path, monkeypatch):
    package = tmp_path / "pkg"
    (package / "assets" / "weights").mkdir(parents=True)
    (package / "assets" / "weights" / "t.safetensors").write_bytes(PAYLOAD)
    monkeypatch.setattr(hub.resources, "files", lambda name: package)
    source = WeightsSource(package_file="assets/weights/t.safetensors", sha256=DIGEST)
    assert hub.fetch(source, offline=True) == package / "assets" / "weights" / "t.safetensors"
    bad = WeightsSource(package_file="assets/weights/t.safetensors", sha256="0" * 64)
    with pytest.raises(ChecksumError):
        hub.fetch(bad, offline=True)
    assert (package / "assets" / "weights" / "t.safetensors").exists()


def test_weights_source_validation():
    with pytest.raises(ValueError, match="exactly one"):
        WeightsSource(sha256=DIGEST)
    with pytest.raises(ValueError, match="exactly one"):
        WeightsSource(url="https://x/y.bin", package_file="a.bin")
    with pytest.raises(ValueError, match="64 hex"):
        WeightsSource(url="https://x/y.bin", sha256="abc")
    with pytest.raises(ValueError, match="scheme"):
        WeightsSource(url="ftp://x/y.bin")
    with pytest.raises(ValueError, match="hf_filename"):
        WeightsSource(hf_repo="org/name")
    assert WeightsSource(hf_repo="org/n", hf_filename="sub/m.safetensors").local_name == "m.safetensors"


def test_cache_dir_precedence(monkeypatch, tmp_path):
    monkeypatch.setenv("UNIZOO_CACHE", str(tmp_path / "a"))
    assert hub.cache_dir() == tmp_path / "a"
    monkeypatch.delenv("UNIZOO_CACHE")
    monkeypatch.setenv("XDG_CACHE_HOME", str(tmp_path / "xdg"))
    assert hub.cache_dir() == tmp_path / "xdg" / "unizoo"
    monkeypatch.delenv("XDG_CACHE_HOME")
    assert hub.cache_dir() == Path.home() / ".cache" / "unizoo"


# ----------------------------------------------------------------------------- state-dict files


def _state() -> dict[str, torch.Tensor]:
    return {"a.weight": torch.randn(3, 4), "a.bias": torch.zeros(3)}


def test_safetensors_round_trip_and_metadata(tmp_path):
    from safetensors import safe_open

    state = _state()
    state["tied"] = state["a.weight"]  # shared memory must not stop the save
    path = tmp_path / "m.safetensors"
    digest = hub.save_state_dict_file(state, path, metadata={"name": "m"})
    assert digest == hub.sha256_file(path)
    assert [p.name for p in tmp_path.iterdir()] == ["m.safetensors"]
    loaded = hub.load_state_dict_file(path)
    assert set(loaded) == set(state) and torch.equal(loaded["tied"], state["a.weight"])
    with safe_open(str(path), "pt") as fh:
        assert fh.metadata() == {"name": "m"}
    with pytest.raises(ValueError, match="safetensors"):
        hub.save_state_dict_file(state, tmp_path / "m.pt")


def test_truncated_safetensors_is_a_clear_error(tmp_path):
    path = tmp_path / "m.safetensors"
    hub.save_state_dict_file(_state(), path)
    path.write_bytes(path.read_bytes()[:-20])
    with pytest.raises(ValueError, match=r"m\.safetensors.*truncated or corrupt"):
        hub.load_state_dict_file(path)


def test_pt_of_tensors_loads_and_unwraps(tmp_path):
    state = _state()
    torch.save(state, tmp_path / "plain.pt")
    torch.save({"state_dict": state, "epoch": 3}, tmp_path / "wrapped.ckpt")
    torch.save({"model": state}, tmp_path / "model.pth")
    for name in ("plain.pt", "wrapped.ckpt", "model.pth"):
        loaded = hub.load_state_dict_file(tmp_path / name)
        assert set(loaded) == set(state) and torch.equal(loaded["a.weight"], state["a.weight"])


class Payload:
    """Stands in for an arbitrary object a malicious pickle could build."""

    def __init__(self) -> None:
        self.x = 1


@pytest.mark.parametrize("obj", [Payload(), {"w": torch.ones(1), "hook": os.getcwd}], ids=["instance", "function"])
def test_pt_with_arbitrary_objects_is_refused(tmp_path, obj):
    path = tmp_path / "evil.pt"
    torch.save(obj, path)
    with pytest.raises(UnsafeCheckpointError, match=r"evil\.pt.*weights_only"):
        hub.load_state_dict_file(path)


def test_non_tensor_entries_and_unknown_extension(tmp_path):
    torch.save({"w": torch.ones(1), "step": 3}, tmp_path / "mixed.pt")
    with pytest.raises(ValueError, match=r"mixed\.pt.*step"):
        hub.load_state_dict_file(tmp_path / "mixed.pt")
    (tmp_path / "w.npz").write_bytes(b"x")
    with pytest.raises(ValueError, match="unknown weights format"):
        hub.load_state_dict_file(tmp_path / "w.npz")
    with pytest.raises(FileNotFoundError):
        hub.load_state_dict_file(tmp_path / "absent.safetensors")


def test_offline_hf_source_looks_only_in_hf_cache(cache, tmp_path, monkeypatch):
    monkeypatch.setenv("HF_HUB_CACHE", str(tmp_path / "hf"))
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    source = WeightsSource(hf_repo="org/none", hf_filename="m.safetensors", sha256=DIGEST)
    with pytest.raises(WeightsNotFoundError, match=r"hf:org/none/m\.safetensors.*HF_HUB_OFFLINE=1"):
        hub.fetch(source)

"""Upstream hub models are pinned to a commit, and offline a missing one fails with the zoo's one-line message."""
from __future__ import annotations

import json
import os
import subprocess
import sys
import textwrap
from pathlib import Path

import pytest

from zoo.catalog import hub, registry

ROOT = Path(__file__).resolve().parents[1]
HUB_ENTRIES = ("siglip-b16-224", "clip-l14-336", "vicuna-7b-v1.5")
OFFLINE_LINE = "is not in cache and offline mode is on (HF_HUB_OFFLINE=1)"


def _offline_env(tmp_path: Path) -> dict[str, str]:
    """Hubs offline, every cache an empty folder of tmp_path."""
    env = {k: v for k, v in os.environ.items() if not k.startswith(("HF_", "UNIZOO_", "TRANSFORMERS_"))}
    env.update(HF_HUB_OFFLINE="1", HF_HOME=str(tmp_path / "hf"), HF_HUB_CACHE=str(tmp_path / "hf" / "hub"),
               UNIZOO_CACHE=str(tmp_path / "unizoo"), PYTHONPATH=str(ROOT))
    return env


def test_hub_entries_carry_a_commit_passed_to_from_pretrained():
    for name in HUB_ENTRIES:
        entry = registry.get_entry(name)
        assert entry.revision is not None and len(entry.revision) == 40, name
        assert entry.init_args["revision"] == entry.revision, name  # what the class passes to from_pretrained
        assert entry.revision in entry.card.notes and "not verified" in entry.card.notes
        assert f"@ `{entry.revision[:10]}`" in registry.entries_table_markdown(name)
    llamagen = registry.get_entry("llamagen-vq16")  # no published commit or sha256: said so, nothing invented
    assert llamagen.revision is None and llamagen.weights.sha256 is None and "Not pinned" in llamagen.card.notes
    assert "trusted on first use" in registry.entries_table_markdown("llamagen-vq16")
    with pytest.raises(ValueError, match="40-hex"):
        registry.ZooEntry(name="x", kind="upstream", class_path="a.B", revision="main")


def test_revision_goes_to_hub_ids_only(tmp_path, monkeypatch):
    monkeypatch.delenv("HF_HUB_OFFLINE", raising=False)
    monkeypatch.delenv("UNIZOO_OFFLINE", raising=False)
    assert hub.hub_load_kwargs("org/model", "a" * 40) == {"revision": "a" * 40}
    assert hub.hub_load_kwargs("org/model") == {}
    assert hub.hub_load_kwargs(str(tmp_path), "a" * 40) == {}  # a local folder
    monkeypatch.setenv("UNIZOO_OFFLINE", "1")  # our own offline switch keeps transformers off the network too
    assert hub.hub_load_kwargs("org/model", "a" * 40) == {"revision": "a" * 40, "local_files_only": True}


def test_offline_missing_upstream_model_is_one_line(tmp_path):
    """`unizoo zoo pull` and building each hub entry, with HF_HUB_OFFLINE=1 and empty caches."""
    env = _offline_env(tmp_path)
    proc = subprocess.run([sys.executable, "-m", "tools.cli", "zoo", "pull", "siglip-b16-224"], cwd=ROOT, env=env,
                          capture_output=True, text=True, timeout=120)
    assert proc.returncode == 1, proc.stderr
    assert "Traceback" not in proc.stderr and OFFLINE_LINE in proc.stderr.splitlines()[0], proc.stderr
    assert "google/siglip-base-patch16-224@7fd15f0689" in proc.stderr

    script = textwrap.dedent("""
        import json, zoo
        out = {}
        for name in %r:
            try:
                zoo.create_model(name)
                out[name] = "built"
            except Exception as err:
                out[name] = [type(err).__name__, str(err)]
        print(json.dumps(out))
    """ % (HUB_ENTRIES,))
    proc = subprocess.run([sys.executable, "-c", script], cwd=ROOT, env=env, capture_output=True, text=True, timeout=300)
    assert proc.returncode == 0, proc.stderr
    results = json.loads(proc.stdout.strip().splitlines()[-1])
    for name in HUB_ENTRIES:
        kind, message = results[name]
        entry = registry.get_entry(name)
        assert kind == "WeightsNotFoundError" and "\n" not in message, (name, message)
        assert message.startswith(f"{entry.upstream_id} (hf:{entry.upstream_id}@{entry.revision})")
        assert OFFLINE_LINE in message and str(tmp_path / "hf" / "hub") in message


def test_pinned_revision_loads_from_the_hf_cache_and_another_does_not(tmp_path):
    """A tiny SigLIP in a Hugging Face cache layout: its commit loads offline, an unknown commit fails in one line."""
    env = _offline_env(tmp_path)
    script = textwrap.dedent("""
        import json, pathlib, sys
        import transformers
        from zoo.catalog.hub import WeightsNotFoundError
        from zoo.spaces.hf import HFVisionSpace

        rev = "1234567890abcdef1234567890abcdef12345678"
        repo = pathlib.Path(sys.argv[1]) / "models--org--tiny-siglip"
        config = transformers.SiglipVisionConfig(image_size=32, patch_size=8, hidden_size=32, num_hidden_layers=2,
                                                 num_attention_heads=1, intermediate_size=64)
        transformers.SiglipVisionModel(config).save_pretrained(repo / "snapshots" / rev)
        (repo / "refs").mkdir(parents=True)
        (repo / "refs" / "main").write_text(rev)
        space = HFVisionSpace(pretrained="org/tiny-siglip", revision=rev)
        out = {"loaded": [space.num_tokens, space.revision]}
        try:
            HFVisionSpace(pretrained="org/tiny-siglip", revision="f" * 40)
        except WeightsNotFoundError as err:
            out["other"] = str(err)
        print(json.dumps(out))
    """)
    proc = subprocess.run([sys.executable, "-c", script, env["HF_HUB_CACHE"]], cwd=ROOT, env=env,
                          capture_output=True, text=True, timeout=300)
    assert proc.returncode == 0, proc.stderr
    out = json.loads(proc.stdout.strip().splitlines()[-1])
    assert out["loaded"] == [16, "1234567890abcdef1234567890abcdef12345678"]
    assert out["other"].startswith("org/tiny-siglip (hf:org/tiny-siglip@" + "f" * 40 + ")") and OFFLINE_LINE in out["other"]

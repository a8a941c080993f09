"""`unizoo data smartwatch`: the study's on-disk layout, byte-identical reruns."""
from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import pytest
from PIL import Image

from datamodules.smartwatch import render_watch, sample_watch
from tools.cli import main

ROOT = Path(__file__).resolve().parents[1]


def _files(folder: Path) -> dict[str, bytes]:
    return {str(p.relative_to(folder)): p.read_bytes() for p in sorted(folder.rglob("*")) if p.is_file()}


def test_layout_and_byte_identical_reruns(tmp_path):
    a, b = tmp_path / "a", tmp_path / "b"
    main(["data", "smartwatch", str(a), "4", "--size", "64", "--split", "test", "--seed", "3"])
    main(["data", "smartwatch", str(b), "4", "--size", "64", "--split", "test", "--seed", "3"])
    files_a, files_b = _files(a), _files(b)
    assert files_a == files_b
    assert sorted(files_a) == ["images/test-000000.png", "images/test-000001.png", "images/test-000002.png",
                               "images/test-000003.png", "test.json"]
    records = json.loads(files_a["test.json"])
    assert [r["task"] for r in records] == ["generation", "vqa", "caption"] * 4
    for r in records:
        convo = r["conversations"]
        assert [t["from"] for t in convo] == ["human", "gpt"] * (len(convo) // 2)
        if r["task"] == "generation":
            assert convo[1]["value"].endswith("<image>") and "<image>" not in convo[0]["value"]
        else:
            assert convo[0]["value"].startswith("<image>\n")
            assert all("<image>" not in t["value"] for t in convo[1:])
    # the PNG holds exactly the watch of (seed, split, index)
    with Image.open(a / "images" / records[3]["image"]) as img:
        assert img.size == (64, 64)
        assert img.convert("RGB").tobytes() == render_watch(sample_watch(3, "test", 1), 64).tobytes()
    assert sample_watch(3, "test", 1).time in records[3]["conversations"][0]["value"]


def test_rerun_in_a_fresh_process_is_identical(tmp_path):
    main(["data", "smartwatch", str(tmp_path / "a"), "2", "--size", "64"])
    subprocess.run([sys.executable, "-m", "tools.cli", "data", "smartwatch", str(tmp_path / "b"), "2",
                    "--size", "64"], cwd=ROOT, check=True, capture_output=True, env={"PYTHONHASHSEED": "7", "PATH": ""})
    assert _files(tmp_path / "a") == _files(tmp_path / "b")


def test_bad_arguments(tmp_path):
    with pytest.raises(ValueError, match="split"):
        main(["data", "smartwatch", str(tmp_path), "1", "--split", "dev"])
    with pytest.raises(ValueError, match="images"):
        main(["data", "smartwatch", str(tmp_path), "-1"])


def test_help_documents_arguments(capsys):
    with pytest.raises(SystemExit):
        main(["data", "smartwatch", "--help"])
    out = capsys.readouterr().out
    assert "number of watch images" in out and "image side in pixels" in out

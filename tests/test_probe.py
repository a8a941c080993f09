"""Adapter analysis: a smoke-scale checkpoint probed on fresh watches; t-SNE and the linear probe themselves."""
from __future__ import annotations

import json

import pytest
import torch

from tools.probe import find_checkpoint, linear_probe, pca, probe, tsne


def smoke_checkpoint(run, architecture: str):
    """An untrained smoke-scale `architecture` saved as run/checkpoints/last.ckpt (a run dir the tools load)."""
    import lightning as L

    from zoo.catalog.presets import preset
    from zoo.config import build

    torch.manual_seed(0)
    model = build(preset(architecture, "smoke"))
    trainer = L.Trainer(logger=False, enable_checkpointing=False, enable_progress_bar=False, max_steps=0)
    trainer.strategy.connect(model)
    (run / "checkpoints").mkdir()
    trainer.save_checkpoint(run / "checkpoints" / "last.ckpt")
    return run


@pytest.fixture(scope="module")
def run_dir(tmp_path_factory):
    return smoke_checkpoint(tmp_path_factory.mktemp("run"), "siglip-siglip")


def test_probe_writes_json_and_figure(run_dir, tmp_path, capsys):
    out = tmp_path / "out"
    result = probe("weather", str(run_dir), images=40, out=str(out), epochs=10)
    saved = json.loads((out / "probe-weather.json").read_text())
    assert saved["classes"] == ["cloudy", "raining", "sunny"] and saved["chance"] == pytest.approx(1 / 3)
    for kind in ("first_token", "mean_token", "all_tokens"):
        stats = saved["features"][kind]
        assert 0.0 <= stats["accuracy"] <= 1.0 and 0.0 <= stats["majority"] <= 1.0
        assert stats["train"] == 32 and stats["test"] == 8
    assert (out / "probe-weather.png").stat().st_size > 1000
    assert list((out / "tb").glob("events.out.tfevents.*"))
    assert json.loads(capsys.readouterr().out.strip().splitlines()[-1])["attribute"] == "weather"
    assert result["checkpoint"].endswith("last.ckpt")
    with pytest.raises(ValueError, match="not a categorical watch attribute"):
        probe("face_color", str(run_dir), images=10, out=str(out))


def test_report_probe_flag_delegates(monkeypatch, tmp_path):
    import tools.probe
    from tools.report import report

    calls = []
    monkeypatch.setattr(tools.probe, "probe", lambda *args, **kw: calls.append((args, kw)))
    report(["RUN"], out=str(tmp_path), probe="weather_pos", probe_images=12)
    assert calls == [(("weather_pos", "RUN"), {"images": 12, "out": str(tmp_path)})]
    with pytest.raises(ValueError, match="no runs given"):
        report([], out=str(tmp_path), probe="weather")


def test_probe_over_runs_pools_seeds_per_arm(run_dir, tmp_path):
    """Several runs: one folder each, and a table per arm (the run name less `_seedN`) over its seeds."""
    import shutil

    from tools.report import report

    study = tmp_path / "runs"
    for name in ("und_seed0", "und_seed1", "mixed_seed0"):
        shutil.copytree(run_dir, study / name / "version_0")
    out = tmp_path / "probe"
    md = report([str(study / "*")], out=str(out), probe="weather_pos", probe_images=20)
    summary = json.loads((out / "probe-weather_pos.json").read_text())
    assert sorted(summary["runs"]) == ["mixed_seed0", "und_seed0", "und_seed1"]
    assert sorted(summary["arms"]) == ["mixed", "und"]
    und = [summary["runs"][f"und_seed{s}"]["features"]["mean_token"]["accuracy"] for s in (0, 1)]
    assert summary["arms"]["und"]["mean_token"]["mean"] == pytest.approx(sum(und) / 2)
    assert summary["arms"]["und"]["mean_token"]["n"] == 2 and summary["arms"]["mixed"]["mean_token"]["n"] == 1
    for name in summary["runs"]:
        assert (out / name / "probe-weather_pos.png").is_file()
    text = (out / "probe-weather_pos.md").read_text()
    assert md.endswith("probe-weather_pos.md") and "| und |" in text and "(n=2)" in text and "| mixed_seed0 |" in text
    with pytest.raises(ValueError, match="share the name"):
        report([str(study / "und_seed0"), str(study / "und_seed0" / "version_0")], out=str(out), probe="weather")


def test_run_names_and_arms():
    from tools.probe_runs import arm_of, run_name

    assert run_name("runs/study/f3/runs/vq-vq_mixed_seed2") == "vq-vq_mixed_seed2"
    assert run_name("runs/x/vq_seed1/version_0") == "vq_seed1" == run_name("runs/x/vq_seed1/test-step000131")
    assert run_name("runs/x/vq_seed1/version_0/checkpoints/last.ckpt") == "vq_seed1"
    assert arm_of("vq-vq-mixed_understanding_scratch_seed12") == ("vq-vq-mixed_understanding_scratch", 12)
    assert arm_of("quickstart") == ("quickstart", None)


def test_missing_checkpoint_is_named(tmp_path):
    with pytest.raises(ValueError, match="no checkpoint for run"):
        find_checkpoint(tmp_path)


def test_a_study_run_folder_leads_to_its_fit_version(tmp_path):
    """OUT/runs/NAME holds version_0/ (the fit) and test/ (no checkpoints): both the checkpoint and the
    data seed come from version_0."""
    import yaml

    from tools.probe import _watch_source

    run = tmp_path / "name_seed2"
    for version in ("version_0", "version_1"):
        (run / version / "checkpoints").mkdir(parents=True)
        (run / version / "checkpoints" / "last.ckpt").write_bytes(b"x")
        seed = int(version[-1]) + 5
        (run / version / "config.yaml").write_text(yaml.safe_dump(
            {"data": {"init_args": {"sources": [{"init_args": {"seed": seed, "size": 48}}]}}}))
    (run / "test").mkdir()
    (run / "test" / "config.yaml").write_text("{}")
    assert find_checkpoint(run) == run / "version_1" / "checkpoints" / "last.ckpt"
    model = type("M", (), {"read_space": None})()
    assert _watch_source(run, model) == (6, 48)


def test_linear_probe_reads_separable_features_and_tsne_keeps_clusters():
    generator = torch.Generator().manual_seed(0)
    labels = torch.arange(120) % 3
    centres = torch.randn(3, 16, generator=generator) * 6
    x = centres[labels] + torch.randn(120, 16, generator=generator)
    result = linear_probe(x, labels, 3, epochs=30)
    assert result["accuracy"] == 1.0 and result["train"] == 96
    noise = linear_probe(torch.randn(120, 16, generator=generator), labels, 3, epochs=30)
    assert noise["accuracy"] < 0.7  # nothing to read: near chance
    y = tsne(pca(x, 10), perplexity=20, iterations=400)
    assert y.shape == (120, 2) and torch.isfinite(y).all()
    # every point's nearest neighbour in the embedding shares its cluster
    d = torch.cdist(y, y).fill_diagonal_(float("inf"))
    assert (labels[d.argmin(1)] == labels).float().mean() > 0.95

"""`unizoo report` on fake run dirs: grouping, t intervals computed by hand, curves, affine gains, figures."""
from __future__ import annotations

import json
from pathlib import Path

import pytest
import yaml

from tools.report import Stat, load_run, report, t_quantile
from zoo.catalog.presets import preset

SIGLIP = preset("siglip-siglip", "tiny")
SIGLIP_VQ = preset("siglip-vq", "tiny")


def _misaligned(strength: float) -> dict:
    vq = preset("vq-vq", "tiny")["init_args"]
    return {"class_path": "zoo.model.variants.MisalignedVLM",
            "init_args": {"backbone": vq["backbone"], "space": vq["space"], "strength": strength, "projector": "linear"}}


def _metrics(vqa: float | None = None, cosine: float | None = None) -> dict:
    out: dict = {"protocol": {"samples": 10, "temperature": 0.0}}
    if vqa is not None:
        out["vqa"] = {"time": vqa / 2, "weather": 1.0, "position": 1.0, "battery": 0.9, "total": vqa,
                      "counts": {"time": 3, "total": 10}, "chance": {"total": 0.43, "weather": 1 / 3}}
    if cosine is not None:
        out["generation"] = {"feature_cosine": cosine, "retrieval_top1": 0.5, "retrieval_chance": 0.1, "images": 10}
    return out


def _run(root: Path, name: str, model: dict, mix, seed: int, metrics: dict | None, **config) -> Path:
    run = root / name / "version_0"
    run.mkdir(parents=True)
    cfg = {"seed_everything": seed, "model": model,
           "data": {"class_path": "datamodules.mixed.MixedTaskDataModule", "init_args": {"mix": mix}}, **config}
    (run / "config.yaml").write_text(yaml.safe_dump(cfg))
    if metrics is not None:
        (run / "eval").mkdir()
        (run / "eval" / "metrics.json").write_text(json.dumps(metrics))
    return run


# VQA totals and feature cosines per (architecture, mix) for seeds 0 and 1.
VQA = {("a", "mixed"): (0.80, 0.90), ("a", "understanding"): (0.70, 0.74), ("a", "generation"): (0.30, 0.40),
       ("b", "mixed"): (0.60, 0.60), ("b", "understanding"): (0.50, 0.56), ("b", "generation"): (0.20, 0.30)}
COS = {("a", "mixed"): (0.50, 0.60), ("a", "generation"): (0.40, 0.44),
       ("b", "mixed"): (0.30, 0.30), ("b", "generation"): (0.30, 0.36)}


@pytest.fixture()
def study(tmp_path) -> list[Path]:
    runs = []
    for (arch, mix), values in VQA.items():
        for seed, value in enumerate(values):
            model = SIGLIP if arch == "a" else SIGLIP_VQ
            cos = COS.get((arch, mix), (None, None))[seed]
            # understanding-only models write no images: no generation metrics at all
            runs.append(_run(tmp_path, f"{arch}-{mix}-{seed}", model, mix, seed, _metrics(value, cos)))
    # data-scaling checkpoints of run (a, mixed, seed 0): two eval-step folders in both layouts
    first = tmp_path / "a-mixed-0" / "version_0"
    (first / "eval-step000200").mkdir()
    (first / "eval-step000200" / "metrics.json").write_text(json.dumps(_metrics(0.5, 0.2)))
    (first / "eval-step000400" / "eval").mkdir(parents=True)
    (first / "eval-step000400" / "eval" / "metrics.json").write_text(json.dumps(_metrics(0.7, 0.4)))
    # affine series: one seed per strength, two seeds at 0.2
    for s, (mixed, und) in {0.1: (0.9, 0.7), 0.2: (0.8, 0.7), 0.3: (0.6, 0.6)}.items():
        runs.append(_run(tmp_path, f"aff-m-{s}", _misaligned(s), "mixed", 0, _metrics(mixed)))
        runs.append(_run(tmp_path, f"aff-u-{s}", _misaligned(s), "understanding", 0, _metrics(und)))
    runs.append(_run(tmp_path, "aff-m-0.2-s1", _misaligned(0.2), "mixed", 1, _metrics(0.84)))
    runs.append(_run(tmp_path, "aff-u-0.2-s1", _misaligned(0.2), "understanding", 1, _metrics(0.70)))
    runs.append(_run(tmp_path, "partial", SIGLIP, "mixed", 5, None))  # trained, never tested
    return runs


def test_t_quantile_matches_tables():
    for df, expected in [(1, 12.7062), (2, 4.3027), (4, 2.7764), (9, 2.2622), (30, 2.0423)]:
        assert t_quantile(0.975, df) == pytest.approx(expected, abs=1e-4)
    assert Stat.of([0.8, 0.9]).cell() == "0.850 ± 0.635 (n=2)"  # 12.7062 * 0.07071 / sqrt(2)
    assert Stat.of([0.5]).cell() == "0.500 (n=1)"


def test_report_tables_and_figures(study, tmp_path):
    out = tmp_path / "out"
    report([str(r) for r in study], out=str(out))
    md = (out / "report.md").read_text()
    summary = json.loads((out / "summary.json").read_text())
    lines = md.splitlines()
    row_a = next(line for line in lines if line.startswith("| SharedSpaceVLM(SiglipVisionModel[zoo:siglip-smartwatch-tiny])"))
    # vqa/total is the first table: mixed, understanding, generation columns, intervals by hand
    assert "| 0.850 ± 0.635 (n=2) | 0.720 ± 0.254 (n=2) | 0.350 ± 0.635 (n=2) |" in row_a
    assert "vqa/total (chance 0.430)" in md
    groups = {(g["architecture"].split("(")[0], g["mix"], g["metric"]): g for g in summary["groups"]}
    b_und = groups[("SeparateSpacesVLM", "understanding", "vqa/total")]
    assert b_und["mean"] == pytest.approx(0.53) and b_und["half_width"] == pytest.approx(12.7062 * 0.042426 / 2**0.5, rel=1e-4)
    b_mixed = groups[("SeparateSpacesVLM", "mixed", "vqa/total")]
    assert b_mixed["half_width"] == pytest.approx(0.0) and b_mixed["seeds"] == [0, 1]
    assert ("SharedSpaceVLM", "understanding", "generation/feature_cosine") not in groups
    assert groups[("SharedSpaceVLM", "generation", "generation/feature_cosine")]["mean"] == pytest.approx(0.42)
    # the multi-checkpoint run contributes its final eval (0.80) to the table, and a curve
    curve = summary["curves"][0]
    assert [p["step"] for p in curve["points"]] == [200, 400]
    assert [p["vqa/total"] for p in curve["points"]] == [0.5, 0.7]
    # gains paired by seed: a: (0.10, 0.16); generation: mixed - generation-only cosine (0.10, 0.16)
    gain_a = next(g for g in summary["gains"] if g["architecture"].startswith("SharedSpaceVLM"))
    assert gain_a["understanding"]["mean"] == pytest.approx(0.13)
    assert gain_a["understanding"]["half_width"] == pytest.approx(12.7062 * 0.042426 / 2**0.5, rel=1e-4)
    assert gain_a["generation"]["mean"] == pytest.approx(0.13)
    # affine: strength -> mixed - understanding, paired over seeds 0 and 1 at s = 0.2
    affine = {a["strength"]: a for a in summary["affine"]}
    assert affine[0.1]["mean"] == pytest.approx(0.2) and affine[0.1]["n"] == 1 and affine[0.1]["half_width"] is None
    assert affine[0.2]["mean"] == pytest.approx(0.12) and affine[0.2]["n"] == 2
    assert affine[0.3]["mean"] == pytest.approx(0.0)
    assert "| 0.1 | 0.200 (n=1) |" in md
    # figures on disk and in TensorBoard; the partial run is a note, not a crash
    names = {Path(p).name for p in summary["figures"]}
    assert {"mix-vqa-total.png", "mix-generation-feature-cosine.png", "curve-vqa-total.png", "affine-gain.png"} <= names
    for name in names:
        assert (out / name).stat().st_size > 1000
    assert list((out / "tb").glob("events.out.tfevents.*"))
    assert any("partial" in n and "no metrics" in n for n in summary["notes"])


def test_checkpoint_curves_pool_seeds_per_step(tmp_path):
    """The data-scaling curve: each cell's seeds pooled per checkpoint step (t interval by hand), the metrics
    chosen by name or prefix, one figure each."""
    runs = []
    for seed, (early, late) in enumerate([(0.40, 0.60), (0.50, 0.70)]):
        run = _run(tmp_path, f"c-{seed}", SIGLIP, "mixed", seed, _metrics(0.9))
        for step, value in ((100, early), (200, late)):
            (run / f"eval-step{step:06d}").mkdir()
            metrics = {**_metrics(value), "vqa_by_question": {"weather_pos": value / 2, "battery_pos": 1.0}}
            (run / f"eval-step{step:06d}" / "metrics.json").write_text(json.dumps(metrics))
        runs.append(run)
    out = tmp_path / "out"
    report([str(r) for r in runs], out=str(out))
    summary = json.loads((out / "summary.json").read_text())
    pooled = {c["metric"]: c for c in summary["pooled_curves"]}
    assert list(pooled) == ["vqa/total"]
    points = pooled["vqa/total"]["points"]
    assert [p["step"] for p in points] == [100, 200] and [p["n"] for p in points] == [2, 2]
    assert points[0]["mean"] == pytest.approx(0.45) and points[1]["mean"] == pytest.approx(0.65)
    assert points[0]["half_width"] == pytest.approx(12.7062 * 0.070711 / 2**0.5, rel=1e-4)
    md = (out / "report.md").read_text()
    assert "vqa/total (chance 0.430), mean over seeds per checkpoint step" in md
    assert "| 0.450 ± 0.635 (n=2) | 0.650 ± 0.635 (n=2) |" in md
    assert (out / "curve-pooled-vqa-total.png").stat().st_size > 1000

    report([str(r) for r in runs], out=str(out), curve_metrics=["vqa_by_question/", "vqa/weather"])
    summary = json.loads((out / "summary.json").read_text())
    pooled = {c["metric"]: c for c in summary["pooled_curves"]}
    assert sorted(pooled) == ["vqa/weather", "vqa_by_question/battery_pos", "vqa_by_question/weather_pos"]
    assert [p["mean"] for p in pooled["vqa_by_question/weather_pos"]["points"]] == pytest.approx([0.225, 0.325])
    assert (out / "curve-pooled-vqa-by-question-weather-pos.png").is_file()
    report([str(r) for r in runs], out=str(out), label_by_name=True)  # c-0, c-1: no _seedN, two labels
    assert {c["architecture"] for c in json.loads((out / "summary.json").read_text())["pooled_curves"]} == {"c-0", "c-1"}
    report([str(r) for r in runs], out=str(out), curve_metrics=["no/such"])
    assert any("none is evaluated" in n for n in json.loads((out / "summary.json").read_text())["notes"])


def test_cli_takes_one_run_a_glob_a_list_or_many_words(study, tmp_path):
    from tools.cli import main

    main(["report", str(tmp_path / "b-*" / "version_0"), "--out", str(tmp_path / "g")])
    summary = json.loads((tmp_path / "g" / "summary.json").read_text())
    assert {g["mix"] for g in summary["groups"]} == {"mixed", "understanding", "generation"}
    assert all(g["architecture"].startswith("SeparateSpacesVLM") for g in summary["groups"])
    main(["report", f"[{study[0]}, {study[1]}]", "--out", str(tmp_path / "l")])
    main(["report", str(study[0]), "--out", str(tmp_path / "one")])
    assert "(n=1)" in (tmp_path / "one" / "report.md").read_text()
    # What a shell makes of an unquoted glob: many words, also after the options.
    main(["report", str(study[0]), "--out", str(tmp_path / "w"), str(study[1])])
    assert json.loads((tmp_path / "w" / "summary.json").read_text())["groups"] == \
        json.loads((tmp_path / "l" / "summary.json").read_text())["groups"]
    with pytest.raises(ValueError, match="matches no run dir"):
        report(str(tmp_path / "nothing-*"), out=str(tmp_path / "x"))


def test_test_dir_takes_labels_from_its_fit_run(tmp_path):
    fit = _run(tmp_path, "fit", SIGLIP, "understanding", 3, None)
    (fit / "checkpoints").mkdir()
    ckpt = fit / "checkpoints" / "epoch=0-step=600.ckpt"
    # the test was launched with the recipe's default mix: the fit's config must win
    test = _run(tmp_path, "test", SIGLIP, "mixed", 0, _metrics(0.66), ckpt_path=str(ckpt))
    run = load_run(test, [])
    assert run.mix == "understanding" and run.seed == 3 and run.train_id == str(fit.resolve())
    assert run.evals[0][0] == 600


def test_mix_labels_and_bad_dirs(tmp_path):
    run = _run(tmp_path, "custom", SIGLIP, {"generation": 0.5}, 0, _metrics(0.5), )
    assert load_run(run, []).mix == "custom(generation=0.5)"
    extra = _run(tmp_path, "extra", SIGLIP, "mixed", 0, _metrics(0.5))
    cfg = yaml.safe_load((extra / "config.yaml").read_text())
    cfg["data"]["init_args"]["extra"] = {"understanding": 33000, "generation": 0}
    (extra / "config.yaml").write_text(yaml.safe_dump(cfg))
    assert load_run(extra, []).mix == "mixed +extra(understanding=33000)"
    # A mix that selects nothing the sources make: all training data is `extra`, so the label says "none".
    cfg["data"]["init_args"]["mix"] = {"generation": 0}
    cfg["data"]["init_args"]["extra"] = {"generation": 28000}
    cfg["data"]["init_args"]["sources"] = [{"class_path": "datamodules.smartwatch.source.SmartWatchSource",
                                            "init_args": {"tasks": ["generation"]}}]
    (extra / "config.yaml").write_text(yaml.safe_dump(cfg))
    assert load_run(extra, []).mix == "none +extra(generation=28000)"
    cfg["data"]["init_args"]["sources"][0]["init_args"]["tasks"] = ["generation", "vqa"]  # now VQA is selected
    (extra / "config.yaml").write_text(yaml.safe_dump(cfg))
    assert load_run(extra, []).mix == "understanding +extra(generation=28000)"
    empty = tmp_path / "empty"
    empty.mkdir()
    with pytest.raises(ValueError, match="empty.*neither config.yaml nor eval/metrics.json"):
        report([str(empty)], out=str(tmp_path / "o"))
    broken = _run(tmp_path, "broken", SIGLIP, "mixed", 0, None)
    (broken / "eval").mkdir()
    (broken / "eval" / "metrics.json").write_text("{not json")
    only_metrics = tmp_path / "bare"
    (only_metrics / "eval").mkdir(parents=True)
    (only_metrics / "eval" / "metrics.json").write_text(json.dumps(_metrics(0.4)))
    report([str(broken), str(only_metrics)], out=str(tmp_path / "o"))
    md = (tmp_path / "o" / "report.md").read_text()
    assert "metrics.json: unreadable" in md and "unknown (bare)" in md and "0.400 (n=1)" in md


def test_affine_series_takes_its_s0_point_from_the_aligned_twin(tmp_path):
    """VQ-VQ (SharedSpaceVLM, same space/backbone/projector) is s = 0 of the MisalignedVLM series; another projector is not."""
    vq = preset("vq-vq", "tiny")
    aligned = {"class_path": vq["class_path"], "init_args": {**vq["init_args"], "projector": "linear", "share_projector": True}}
    other = {"class_path": vq["class_path"], "init_args": {**vq["init_args"], "projector": "mlp", "share_projector": True}}
    misaligned = _misaligned(0.1)
    misaligned["init_args"]["share_projector"] = True
    runs = []
    for seed, (m, u) in enumerate([(0.6, 0.5), (0.8, 0.6)]):
        runs.append(_run(tmp_path, f"vq-m-{seed}", aligned, "mixed", seed, _metrics(m)))
        runs.append(_run(tmp_path, f"vq-u-{seed}", aligned, "understanding", seed, _metrics(u)))
        runs.append(_run(tmp_path, f"aff-m-{seed}", misaligned, "mixed", seed, _metrics(0.5)))
        runs.append(_run(tmp_path, f"aff-u-{seed}", misaligned, "understanding", seed, _metrics(0.45)))
    report([str(r) for r in runs], out=str(tmp_path / "out"))
    summary = json.loads((tmp_path / "out" / "summary.json").read_text())
    affine = {a["strength"]: a for a in summary["affine"]}
    assert set(affine) == {0.0, 0.1}
    assert affine[0.0]["mean"] == pytest.approx(0.15) and affine[0.0]["n"] == 2
    assert affine[0.0]["aligned_twin"].startswith("SharedSpaceVLM(") and affine[0.1]["mean"] == pytest.approx(0.05)
    assert "| 0 (aligned twin) | 0.150 ± " in (tmp_path / "out" / "report.md").read_text()
    # slope of the per-seed gains on s: points (0, 0.1), (0, 0.2), (0.1, 0.05), (0.1, 0.05) -> -1.0 per unit s
    trend = summary["affine_slope"][0]
    assert trend["mean"] == pytest.approx(-1.0) and trend["n"] == 4
    residual = 2 * 0.05**2  # about the line through (0, 0.15) and (0.1, 0.05); Sxx = 4 * 0.05**2
    assert trend["half_width"] == pytest.approx(t_quantile(0.975, 2) * (residual / 2 / (4 * 0.05**2)) ** 0.5)
    # the same VQ-VQ with another projector is a different model: no s = 0 point
    for path in runs[::4] + runs[1::4]:
        config = yaml.safe_load((path / "config.yaml").read_text())
        config["model"] = other
        (path / "config.yaml").write_text(yaml.safe_dump(config))
    report([str(r) for r in runs], out=str(tmp_path / "out2"))
    summary = json.loads((tmp_path / "out2" / "summary.json").read_text())
    assert {a["strength"] for a in summary["affine"]} == {0.1}


def test_a_kept_runs_tests_join_into_one_curve_without_its_fit_dir(tmp_path):
    """docs/results keeps runs/NAME/{test, test-stepN}/ (configs naming checkpoints of a fit dir that is gone):
    the tests of one run are one training run, so its checkpoint curve and final evaluation join up."""
    kept = tmp_path / "kept" / "runs"
    fit = "runs/study/g/runs/{name}/version_0/checkpoints/{ckpt}"  # as keep writes it: relative, not there
    for seed in (0, 1):
        name = f"arch_mixed_seed{seed}"
        for test, ckpt, value in (("test", "last.ckpt", 0.9), ("test-step000100", "step00100.ckpt", 0.4 + seed / 10),
                                  ("test-step000200", "step00200.ckpt", 0.6)):
            made = _run(tmp_path / "made", f"{name}-{test}", SIGLIP, "mixed", seed, _metrics(value),
                        ckpt_path=fit.format(name=name, ckpt=ckpt))
            (kept / name).mkdir(parents=True, exist_ok=True)
            made.rename(kept / name / test)  # _run writes NAME/version_0; the kept layout is NAME/TEST
    dirs = sorted(str(p) for p in kept.glob("*/test*"))
    out = tmp_path / "out"
    report(dirs, out=str(out))
    summary = json.loads((out / "summary.json").read_text())
    assert len(summary["curves"]) == 2  # one per run, each with its two checkpoint tests
    assert all(Path(c["run"]).name.startswith("arch_mixed_seed") for c in summary["curves"])
    pooled = next(c for c in summary["pooled_curves"] if c["metric"] == "vqa/total")["points"]
    assert [(p["step"], p["n"]) for p in pooled] == [(100, 2), (200, 2)] and pooled[0]["mean"] == pytest.approx(0.45)
    final = next(g for g in summary["groups"] if g["metric"] == "vqa/total" and g["mix"] == "mixed")
    assert final["mean"] == pytest.approx(0.9) and final["n"] == 2  # the final tests, not the checkpoints


def test_curve_legends_sit_below_the_axes_without_the_shared_backbone():
    """Long architecture labels once covered the curves: the legend goes under the axes, one entry per line,
    and the backbone every label shares moves to the title."""
    from matplotlib.backends.backend_agg import FigureCanvasAgg

    from tools.report_figures import _pooled_curve_figure
    from tools.report_stats import Stat

    arch = "SeparateSpacesVLM(SiglipVisionModel[zoo:a] -> VQTokenizer[zoo:b, tiny]) on LanguageBackbone[h128x4]"
    cells = {(arch, mix): [(131, Stat(0.4, 0.1, 3)), (262, Stat(0.5, 0.1, 3))] for mix in ("mixed", "understanding")}
    fig = _pooled_curve_figure(cells, "vqa/total", chance=0.4)
    FigureCanvasAgg(fig).draw()
    fig.tight_layout()
    ax = fig.axes[0]
    renderer = fig.canvas.get_renderer()
    legend = ax.get_legend()
    assert legend.get_window_extent(renderer).y1 <= ax.get_window_extent(renderer).y0
    labels = [t.get_text() for t in legend.get_texts()]
    assert all("LanguageBackbone" not in label for label in labels) and "LanguageBackbone[h128x4]" in ax.get_title()

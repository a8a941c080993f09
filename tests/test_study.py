"""`unizoo study`: the grid file, its command lines, the report's grouping, and a tiny grid run twice
(one run killed mid-fit and resumed, the finished one skipped, a bad override reported as failed)."""
from __future__ import annotations

import json
import os
import shlex
import signal
from pathlib import Path

import pytest
import yaml
from lightning.pytorch.callbacks import Callback

from tools.cli import main
from tools.study import load_grid

ROOT = Path(__file__).resolve().parents[1]
HERE = Path(__file__).resolve().parent
EXAMPLE = HERE / "data" / "study-tiny.yaml"


class KillOnce(Callback):
    """Test-only: record each training step (fsynced); SIGKILL this process before step `at + 1`, once
    (a flag file remembers the kill, so the resumed run goes on)."""

    def __init__(self, flag: str, record: str, at: int) -> None:
        self.flag, self.record, self.at = Path(flag), record, at

    def on_train_batch_start(self, trainer, pl_module, batch, batch_idx) -> None:  # noqa: D102
        if trainer.global_step == self.at and not self.flag.exists():
            self.flag.write_text("killed\n")
            os.kill(os.getpid(), signal.SIGKILL)

    def on_train_batch_end(self, trainer, pl_module, outputs, batch, batch_idx) -> None:  # noqa: D102
        with open(self.record, "a") as f:
            f.write(f"{trainer.global_step}\n")
            f.flush()
            os.fsync(f.fileno())


def test_example_grid_dry_run_prints_one_self_contained_line_per_run(tmp_path, capsys, monkeypatch):
    monkeypatch.chdir(ROOT)
    out, emitted = tmp_path / "grid", tmp_path / "commands.txt"
    main(["study", str(EXAMPLE), "--dry-run", "--emit-commands", str(emitted), "--out", str(out), "--threads", "2"])
    lines = capsys.readouterr().out.splitlines()
    assert len(lines) == 2 * 3 * 2 * 3 and emitted.read_text().splitlines() == lines
    assert not out.exists(), "a dry run writes nothing into the grid folder"
    names = set()
    for line in lines:
        words = shlex.split(line)
        assert words[:2] == ["cd", str(ROOT)] and "UNIZOO_THREADS=2" in words and "OMP_NUM_THREADS=2" in words
        fit = words[words.index("fit") - 2:]
        name = fit[fit.index("--trainer.logger.init_args.name") + 1]
        names.add(name)
        assert fit[fit.index("--trainer.logger.init_args.save_dir") + 1] == str(out / "runs")
        assert fit[fit.index("--trainer.logger.init_args.version") + 1] == "0"
        assert fit[fit.index("--ckpt_path") + 1] == "last"
        assert fit[fit.index("--data.init_args.mix") + 1] in ("understanding", "generation", "mixed")
        seed = next(w for w in fit if w.startswith("--seed_everything=")).split("=")[1]
        assert f"--data.init_args.seed={seed}" in fit and name.endswith(f"_seed{seed}")
        assert ("--model.init_args.alpha" in fit) == ("_alpha0.5_" in name)
        assert f"{out}/runs/{name}/version_0/config.yaml" in words and f"{out}/runs/{name}/done.json" in line
        assert line.count(f">> {out}/runs/{name}/log.txt 2>&1") == 2  # fit and test both log there
    assert len(names) == len(lines)
    assert any(n.startswith("siglip-siglip_understanding_base_seed") for n in names)


@pytest.mark.parametrize("spec, message", [
    ({"recipes": ["nope.yaml"]}, "not found"),
    ({"recipes": ["recipes/quickstart.yaml"], "seed": [0]}, "unknown key"),
    ({"recipes": ["recipes/quickstart.yaml"], "seeds": [0, 0]}, "repeats"),
    ({"recipes": ["recipes/quickstart.yaml"], "overrides": ["--x"]}, "mapping name"),
    ({"recipes": []}, "non-empty"),
    ({"recipes": ["recipes/quickstart.yaml"], "curve": "yes"}, "`curve` must be true or false"),
    ({"recipes": ["recipes/quickstart.yaml"], "curve": True, "test": False}, "needs `test: true`"),
    ({"recipes": ["recipes/quickstart.yaml"], "curve_args": ["--x", "1"]}, "needs `curve: true`"),
    ({"recipes": ["recipes/quickstart.yaml"], "curve_metrics": "vqa/total"}, "non-empty list of metric names"),
])
def test_bad_grid_files_are_refused_with_the_reason(tmp_path, monkeypatch, spec, message):
    monkeypatch.chdir(ROOT)
    grid = tmp_path / "grid.yaml"
    grid.write_text(yaml.safe_dump(spec))
    with pytest.raises((ValueError, FileNotFoundError), match=message):
        load_grid(grid)


def test_only_selects_runs_by_name_pattern(tmp_path, capsys, monkeypatch):
    monkeypatch.chdir(ROOT)
    main(["study", str(EXAMPLE), "--dry-run", "--out", str(tmp_path / "grid"), "--only", "vq-vq_mixed_*"])
    lines = capsys.readouterr().out.splitlines()
    assert len(lines) == 2 * 3 and all("vq-vq_mixed_" in line and "siglip" not in line for line in lines)
    with pytest.raises(ValueError, match="matches none"):
        main(["study", str(EXAMPLE), "--dry-run", "--out", str(tmp_path / "grid"), "--only", "nope*"])


def test_override_args_get_the_runs_seed(tmp_path, monkeypatch):
    monkeypatch.chdir(ROOT)
    grid = tmp_path / "grid.yaml"
    grid.write_text(yaml.safe_dump({"recipes": ["recipes/quickstart.yaml"], "seeds": [3, 4], "overrides": {
        "scratch": ["--model.init_args.init_from=null"],
        "warm": ["--model.init_args.init_from=runs/stage1_seed{seed}/last.ckpt"]}}))
    runs = {r.name: r.fit for r in load_grid(grid).runs}
    assert "--model.init_args.init_from=runs/stage1_seed4/last.ckpt" in runs["quickstart_warm_seed4"]
    assert "--model.init_args.init_from=null" in runs["quickstart_scratch_seed3"]


def _fake_test_run(folder: Path, seed: int, mix: str, value: float, alpha: float) -> Path:
    model = {"class_path": "zoo.model.variants.SharedSpaceVLM", "init_args": {"alpha": alpha}}
    folder.mkdir(parents=True)
    (folder / "config.yaml").write_text(yaml.safe_dump({"seed_everything": seed, "model": model,
                                                         "data": {"init_args": {"mix": mix}}}))
    (folder / "eval").mkdir()
    (folder / "eval" / "metrics.json").write_text(json.dumps({"vqa": {"total": value}}))
    return folder


def test_report_groups_each_recipe_mix_override_cell_over_its_seeds(tmp_path):
    from tools.report import report

    groups, values = {}, {("base", "mixed"): [0.5, 0.6, 0.7], ("lr", "mixed"): [0.1, 0.2, 0.3],
                          ("base", "understanding"): [0.4, 0.4, 0.4]}
    for (override, mix), vals in values.items():
        for seed, value in enumerate(vals):
            # The same architecture under both override sets: only the study's labels tell them apart.
            run = _fake_test_run(tmp_path / f"{override}-{mix}-{seed}", seed, mix, value, alpha=1.0)
            groups[str(run)] = f"siglip-siglip [{override}]"
    report(sorted(groups), out=str(tmp_path / "report"), groups=groups)
    md = (tmp_path / "report" / "report.md").read_text()
    table = md.split("### vqa/total")[1].split("##")[0]  # rows: recipe [override]; columns: mixes
    rows = {line.split(" | ")[0].strip("| "): line for line in table.splitlines() if line.startswith("| siglip-siglip [")}
    assert set(rows) == {"siglip-siglip [base]", "siglip-siglip [lr]"}
    assert "0.600 ± 0.248 (n=3)" in rows["siglip-siglip [base]"]  # t(0.975, 2) * 0.1 / sqrt(3) = 0.248
    assert "0.400 ± 0.000 (n=3)" in rows["siglip-siglip [base]"] and "0.200 ± 0.248 (n=3)" in rows["siglip-siglip [lr]"]
    assert "| siglip-siglip [base] | 0.200 ± 0.248 (n=3) |" in md.split("## Cross-task benefit")[1]  # paired by seed
    summary = json.loads((tmp_path / "report" / "summary.json").read_text())
    assert {(g["architecture"], g["mix"], g["n"]) for g in summary["groups"]} == {
        ("siglip-siglip [base]", "mixed", 3), ("siglip-siglip [lr]", "mixed", 3), ("siglip-siglip [base]", "understanding", 3)}
    assert list((tmp_path / "report").glob("*.png"))


STEPS, EVERY, KILL_AT = 8, 2, 5  # checkpoints at steps 2, 4, 6: the kill before step 6 loses step 5 only


def test_grid_resumes_a_killed_run_skips_the_finished_one_and_reports_a_failed_one(tmp_path, monkeypatch):
    from test_reliability_resume import smoke_recipe

    monkeypatch.chdir(ROOT)
    monkeypatch.setenv("PYTHONPATH", os.pathsep.join([str(ROOT), str(HERE)]))  # the children import KillOnce
    monkeypatch.delenv("UNIZOO_DEBUG", raising=False)
    recipe = smoke_recipe(tmp_path, steps=STEPS, every=EVERY, images=8)
    record, flag = tmp_path / "steps.txt", tmp_path / "killed.flag"
    kill = {"class_path": f"{KillOnce.__module__}.KillOnce",
            "init_args": {"flag": str(flag), "record": str(record), "at": KILL_AT}}
    grid_file, out = tmp_path / "grid.yaml", tmp_path / "grid"
    grid_file.write_text(yaml.safe_dump({
        "name": "tiny", "out": str(out), "recipes": [str(recipe)], "mixes": ["mixed"], "seeds": [3],
        "overrides": {"plain": [], "killed": [f"--trainer.callbacks+={json.dumps(kill)}"],
                      "bad": ["--model.init_args.no_such_argument", "1"]},
    }))
    runs = out / "runs"
    plain, killed, bad = (runs / f"recipe_mixed_{o}_seed3" for o in ("plain", "killed", "bad"))
    command = ["study", str(grid_file), "--workers", "2", "--threads", "1"]

    with pytest.raises(SystemExit) as first:
        main(command)
    assert first.value.code == 1
    assert (plain / "done.json").is_file() and (plain / "test" / "eval" / "metrics.json").is_file()
    assert not (killed / "done.json").exists() and flag.is_file()
    assert (killed / "version_0" / "checkpoints" / "last.ckpt").is_file()
    assert [int(s) for s in record.read_text().split()] == list(range(1, KILL_AT + 1))
    summary = json.loads((out / "study.json").read_text())
    status = {r["name"]: r for r in summary["runs"]}
    assert status[killed.name]["status"] == "failed" and "SIGKILL" in status[killed.name]["error"]
    assert status[bad.name]["status"] == "failed" and status[bad.name]["log"] == str(bad / "log.txt")
    assert "no_such_argument" in (bad / "log.txt").read_text()
    plain_done, plain_log = (plain / "done.json").read_text(), (plain / "log.txt").read_text()

    with pytest.raises(SystemExit) as second:
        main(command)
    assert second.value.code == 1  # the bad override fails again; everything else is done
    assert (plain / "done.json").read_text() == plain_done and (plain / "log.txt").read_text() == plain_log
    log = (killed / "log.txt").read_text()
    assert "fit (resumed)" in log and f"Restoring states from the checkpoint path at {killed}/version_0/checkpoints" in log
    steps = [int(s) for s in record.read_text().split()]
    resumed_from = steps.index(KILL_AT, KILL_AT)  # the second step-5 row: the resumed fit redoes step 5 only
    assert steps[:KILL_AT] == list(range(1, KILL_AT + 1)) and steps[resumed_from:] == list(range(KILL_AT, STEPS + 1))
    assert (killed / "done.json").is_file() and (killed / "test" / "eval" / "metrics.json").is_file()

    summary = json.loads((out / "study.json").read_text())
    status = {r["name"]: r for r in summary["runs"]}
    assert [status[n.name]["status"] for n in (plain, killed, bad)] == ["done", "done", "failed"]
    assert summary["failed"] == [bad.name] and len(summary["invocations"]) == 2
    assert summary["invocations"][1]["skipped"] == 1 and summary["workers"] == 2 and summary["threads"] == 1
    assert status[killed.name]["attempts"] == 3  # killed fit, resumed fit, test
    from tools.machine import machine_info

    assert status[killed.name]["machine"] == machine_info()  # what a bit-for-bit rerun must match
    assert summary["grid_wall_s"] > 0 and summary["run_wall_s"] >= status[killed.name]["wall_s"] > 0
    md = (out / "report.md").read_text()
    assert "recipe [plain]" in md and "recipe [killed]" in md and "recipe [bad]" not in md
    compute = md[md.index("## Compute"):]  # the grid's budget: wall vs summed runs, each invocation, each run
    assert f"speed-up {summary['parallel_speedup']}" in compute and compute.count("| 2 x 1 |") == 2
    assert f"| {killed.name} | {status[killed.name]['wall_s']:.0f} s |" in compute and "| 3 |" in compute
    assert list(out.glob("*.png")) and summary["report"] == str(out / "report.md")


def test_a_rerun_into_its_own_log_dir_keeps_the_config_only_when_it_is_the_same(tmp_path, monkeypatch):
    from test_reliability_resume import smoke_recipe

    from tools.lightning_cli import run_lightning_cli

    monkeypatch.chdir(ROOT)
    recipe = smoke_recipe(tmp_path, steps=1, every=1, images=4)
    args = ["fit", "--config", str(recipe), "--trainer.logger.init_args.version", "0"]
    run_lightning_cli(args)
    saved = tmp_path / "runs" / "smoke" / "version_0" / "config.yaml"
    text = saved.read_text()
    run_lightning_cli(args)  # the same command again (as `unizoo study` resumes): allowed, file kept
    assert saved.read_text() == text
    with pytest.raises(RuntimeError, match="to NOT exist"):  # another config over it: still refused
        run_lightning_cli([*args, "--seed_everything=1"])
    assert saved.read_text() == text


def test_grid_wall_counts_only_this_grid_files_invocations(tmp_path):
    # Two grid files sharing one OUT folder (e.g. a subset of seeds run separately): the speed-up of one
    # must not divide its runs' time by the other's invocations.
    from types import SimpleNamespace

    from tools.study import _write_summary

    out = tmp_path / "grid"
    out.mkdir()
    (out / "study.json").write_text(json.dumps({"invocations": [
        {"started": "a", "grid_file": str(tmp_path / "other.yaml"), "wall_s": 1000.0},
        {"started": "b", "wall_s": 5.0}]}))  # a record from before grid_file was kept: counted as this grid's
    grid = SimpleNamespace(name="g", file=tmp_path / "this.yaml", out=out, runs=[])
    summary = json.loads(_write_summary(grid, {}, 1, 1, "c", 7.0).read_text())
    assert summary["grid_wall_s"] == 12.0 and len(summary["invocations"]) == 3
    assert summary["invocations"][-1]["grid_file"] == str(tmp_path / "this.yaml")


def test_grid_wall_counts_overlapping_invocations_once():
    # two invocations of disjoint --only subsets side by side: 100 s and 60 s starting 50 s apart cover 110 s
    from tools.study import _covered_seconds

    side_by_side = [{"started": "2026-12-03T10:00:00+00:00", "wall_s": 100.0},
                    {"started": "2026-12-03T10:00:50+00:00", "wall_s": 60.0},
                    {"started": "2026-12-03T11:00:00+00:00", "wall_s": 5.0},  # a later, separate invocation
                    {"started": "2026-12-03T11:00:01+00:00", "wall_s": 1.0}]  # inside the one before
    assert _covered_seconds(side_by_side) == pytest.approx(115.0)
    assert _covered_seconds([{"started": "?", "wall_s": 7.0}, *side_by_side[:1]]) == pytest.approx(107.0)


def test_curve_tests_every_checkpoint_also_when_added_to_a_finished_grid(tmp_path, monkeypatch):
    """`curve: true` on a grid that already ran: the rerun tests each intermediate checkpoint into
    test-stepNNNNNN/ (final test not redone), the report pools them per step, a third run does nothing,
    and the emitted shell line does the same tests."""
    import subprocess

    from test_reliability_resume import smoke_recipe

    monkeypatch.chdir(ROOT)
    monkeypatch.delenv("UNIZOO_DEBUG", raising=False)
    recipe = smoke_recipe(tmp_path, steps=4, every=2, images=8)
    spec = yaml.safe_load(recipe.read_text())
    spec["trainer"]["callbacks"][0]["init_args"].update({"save_top_k": -1, "filename": "step{step:05d}", "auto_insert_metric_name": False})
    recipe.write_text(yaml.safe_dump(spec, sort_keys=False))
    grid_file, out = tmp_path / "grid.yaml", tmp_path / "grid"
    grid = {"name": "curve", "out": str(out), "recipes": [str(recipe)], "seeds": [0], "curve_metrics": ["vqa/"]}
    grid_file.write_text(yaml.safe_dump(grid))
    command = ["study", str(grid_file), "--workers", "1", "--threads", "1"]
    main(command)
    run = out / "runs" / "recipe_seed0"
    assert (run / "done.json").is_file() and not list(run.glob("test-step*"))
    assert sorted(p.name for p in (run / "version_0" / "checkpoints").glob("step*.ckpt")) == ["step00002.ckpt", "step00004.ckpt"]

    grid_file.write_text(yaml.safe_dump({**grid, "curve": True, "curve_args": ["--data.init_args.max_eval_samples", "1"]}))
    main(command)
    assert sorted(p.name for p in run.glob("test-step*")) == ["test-step000002", "test-step000004"]
    for step in ("000002", "000004"):
        config = yaml.safe_load((run / f"test-step{step}" / "config.yaml").read_text())
        assert config["ckpt_path"].endswith(f"step0{step[2:]}.ckpt")
        assert (run / f"test-step{step}" / "eval" / "metrics.json").is_file()
    log = (run / "log.txt").read_text()
    assert log.count(" test: ") == 2 and "test step 2: " in log and "test step 4: " in log  # start + end lines
    attempts = [json.loads(line)["step"] for line in (run / "attempts.jsonl").read_text().splitlines()]
    assert attempts == ["fit", "test", "test step 2", "test step 4"]
    md = (out / "report.md").read_text()
    assert "mean over seeds per checkpoint step" in md and "| 2 | 4 |" in md
    assert "### vqa/weather" in md and (out / "curve-pooled-vqa-weather.png").is_file()  # curve_metrics: [vqa/]
    summary = json.loads((out / "study.json").read_text())
    assert summary["invocations"][-1]["ran"] == 1 and summary["runs"][0]["test_wall_s"] > 0

    main(command)  # nothing left to do
    assert json.loads((out / "study.json").read_text())["invocations"][-1]["skipped"] == 1

    # the emitted line (for a cluster) tests the checkpoints the same way
    lines = tmp_path / "lines.sh"
    main(["study", str(grid_file), "--emit-commands", str(lines), "--threads", "1"])
    (run / "done.json").unlink()
    import shutil

    shutil.rmtree(run / "test-step000002")
    env = {**os.environ, "PYTHONPATH": str(ROOT)}
    done = subprocess.run(["sh", "-c", lines.read_text().strip()], env=env, cwd=ROOT)
    assert done.returncode == 0
    assert (run / "test-step000002" / "eval" / "metrics.json").is_file()
    assert json.loads((run / "done.json").read_text()) == {"external": True}

"""Multi-process runs as Lightning launches them (issue 14 item 2), on this machine: two CPU processes, gloo.

`unizoo test|predict|fit --trainer.devices 2 --trainer.strategy ddp`: the child rank runs the same command
(tools/launch.py), evaluation is gathered on rank 0 with each test item once (zoo/eval/gather.py), so the
files equal a single process's, and a fit checkpoints and resumes under DDP. A child that cannot start
stops the parent with a clear error instead of leaving it waiting.
"""
from __future__ import annotations

import json
import subprocess
import sys
import textwrap
import time
from pathlib import Path
from types import SimpleNamespace

import numpy as np
import pytest
import torch
import yaml
from PIL import Image

from test_predict import TEST_IMAGES, lines, vq_recipe
from test_reliability_resume import ROOT, unizoo
from tools.launch import ChildWatcher
from tools.lightning_cli import run_lightning_cli
from zoo.eval.gather import in_item_order

DDP = ["--trainer.accelerator", "cpu", "--trainer.devices", "2", "--trainer.strategy", "ddp"]


def run_unizoo(*args: str, timeout: float = 400) -> str:
    """`python -m tools.cli ARGS` to its end (a hang fails the test at `timeout`); its output."""
    proc = unizoo(*args)
    try:
        out = proc.communicate(timeout=timeout)[0]
    except subprocess.TimeoutExpired:
        proc.kill()
        out = proc.communicate()[0]
        pytest.fail(f"unizoo {' '.join(args[:1])} did not finish in {timeout} s:\n{out[-3000:]}")
    assert proc.returncode == 0, out[-4000:]
    return out


def newest(root: Path, pattern: str) -> Path:
    return max(root.glob(pattern), key=lambda p: int(p.parent.name.split("_")[-1]) if "version_" in str(p) else 0)


@pytest.fixture(scope="module")
def run(tmp_path_factory) -> Path:
    root = tmp_path_factory.mktemp("ddp-eval")
    cli = run_lightning_cli(["fit", "--config", str(vq_recipe(root))])
    return Path(cli.trainer.log_dir)


def test_ddp_test_and_predict_write_what_one_process_writes(run):
    args = ["--config", str(run / "config.yaml"), "--ckpt_path", str(run / "checkpoints" / "last.ckpt")]
    single = Path(run_lightning_cli(["test", *args]).model.eval_outputs["dir"])
    out = run_unizoo("test", *args, *DDP)
    assert "MEMBER: 2/2" in out  # the child rank ran the same command and joined
    versions = run.parent
    ddp = [p for p in versions.glob("version_*/eval") if p != single]
    assert len(ddp) == 1, "one rank writes the eval folder"
    ddp = ddp[0]
    answers = lines(ddp / "answers.jsonl")
    assert len(answers) == 3 * TEST_IMAGES  # 9 items over 2 ranks: the repeated one is scored once
    assert answers == lines(single / "answers.jsonl")
    assert json.loads((ddp / "metrics.json").read_text()) == json.loads((single / "metrics.json").read_text())
    pngs = sorted(p.name for p in (single / "images").iterdir())
    assert len(pngs) == TEST_IMAGES and pngs == sorted(p.name for p in (ddp / "images").iterdir())
    for name in pngs:  # the same codes decoded; Lightning runs each rank on fewer threads: rounding may differ by 1
        a, b = (np.asarray(Image.open(d / "images" / name), dtype=np.int16) for d in (single, ddp))
        assert np.abs(a - b).max() <= 1, name

    run_unizoo("predict", *args, *DDP)
    predicted = newest(versions, "version_*/predict")
    assert lines(predicted / "answers.jsonl") == answers


def test_ddp_fit_checkpoints_and_resumes(tmp_path):
    recipe = vq_recipe(tmp_path, steps=4, every=2, images=8)  # 24 train samples: 3 batches of 4 per rank
    spec = yaml.safe_load(recipe.read_text())
    spec["trainer"]["callbacks"][0]["init_args"]["save_top_k"] = -1  # keep the step-2 checkpoint too
    recipe.write_text(yaml.safe_dump(spec, sort_keys=False))
    run_unizoo("fit", "--config", str(recipe), *DDP)
    ckpts = tmp_path / "runs" / "smoke" / "version_0" / "checkpoints"
    mid, end = sorted(ckpts.glob("epoch=*-step=2.ckpt")), sorted(ckpts.glob("epoch=*-step=4.ckpt"))
    assert len(mid) == 1 and len(end) == 1, sorted(p.name for p in ckpts.iterdir())
    saved = torch.load(mid[0], map_location="cpu", weights_only=True)
    sampler = saved["MixedTaskDataModule"]["train_sampler"]
    assert saved["global_step"] == 2 and sampler["num_replicas"] == 2
    assert sampler["epoch"] == 0 and sampler["position"] == 2 * 4 * 2  # mid-epoch: 2 batches of 4 on 2 ranks

    run_unizoo("fit", "--config", str(recipe), "--ckpt_path", str(mid[0]), *DDP)  # resume mid-epoch
    resumed = sorted((tmp_path / "runs" / "smoke" / "version_1" / "checkpoints").glob("epoch=*-step=4.ckpt"))
    assert len(resumed) == 1
    a = torch.load(end[0], map_location="cpu", weights_only=True)
    b = torch.load(resumed[0], map_location="cpu", weights_only=True)
    assert a["global_step"] == b["global_step"] == 4 and a["state_dict"].keys() == b["state_dict"].keys()
    for key, value in a["state_dict"].items():
        assert torch.allclose(value.float(), b["state_dict"][key].float(), atol=1e-6), key


CHILD_FAILS = """
import sys
import tools.launch
tools.launch.child_command = lambda argv: [sys.executable, "-c", "print('not unizoo'); raise SystemExit({code})"]
from tools.lightning_cli import run_lightning_cli
run_lightning_cli(["test", "--config", {recipe!r}, {ddp}])
"""


@pytest.mark.parametrize("code", [0, 3])
def test_a_child_that_cannot_start_stops_the_parent_with_a_clear_error(tmp_path, code):
    recipe = vq_recipe(tmp_path)
    script = CHILD_FAILS.format(code=code, recipe=str(recipe), ddp=", ".join(map(repr, DDP)))
    start = time.monotonic()
    proc = subprocess.run([sys.executable, "-c", script], cwd=ROOT, capture_output=True, text=True, timeout=300)
    assert proc.returncode == 1, proc.stdout[-2000:] + proc.stderr[-2000:]
    assert f"rank 1 (pid" in proc.stderr and f"exited with status {code} before joining the process group" in proc.stderr
    assert time.monotonic() - start < 200  # not Lightning's 30-minute process-group timeout


def test_child_watcher_rules():
    def proc(code):
        return SimpleNamespace(poll=lambda: code, pid=7, args=["python", "-m", "tools.cli", "test"])

    watcher = ChildWatcher([proc(None)], "test", join_timeout=10)
    assert watcher.check(1, ready=False) is None and watcher.check(1, ready=True) is None
    assert "did not join the process group within 10 s" in watcher.check(11, ready=False)
    assert ChildWatcher([proc(0)], "test", join_timeout=10).check(1, ready=True) is None  # a normal end
    assert "status 0 before joining" in ChildWatcher([proc(0)], "test", join_timeout=10).check(1, ready=False)
    assert "status 2 after joining" in ChildWatcher([proc(2)], "test", join_timeout=10).check(1, ready=True)


def test_gathered_records_are_put_in_item_order_once():
    rank0 = [{"item": 0}, {"item": 2}]
    rank1 = [{"item": 1}, {"item": 0, "repeat": True}]  # DistributedSampler repeats item 0 to even the ranks
    assert in_item_order(rank0 + rank1, lambda r: r.get("item"), 2) == [{"item": 0}, {"item": 1}, {"item": 2}]
    with pytest.warns(UserWarning, match="cannot be de-duplicated"):
        assert in_item_order([{"a": 1}, {"a": 2}], lambda r: r.get("item"), 2) == [{"a": 1}, {"a": 2}]

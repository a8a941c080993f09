"""The README stays true: its two commands exist, CI calls the test one, its zoo table is current."""
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent


def test_readme_commands_are_the_makefile_targets_and_ci_runs_the_test_one():
    readme = (ROOT / "README.md").read_text()
    makefile = (ROOT / "Makefile").read_text()
    assert "make quickstart" in readme and "make test" in readme
    assert "\nquickstart:" in makefile and "\ntest:" in makefile
    assert "make test" in (ROOT / ".ci" / "run").read_text()


def test_readme_zoo_table_is_generated_from_the_registry():
    from tools.zoo_cmd import readme_table

    readme_table(str(ROOT / "README.md"), check=True)  # exits if stale: run `unizoo zoo readme-table`


def test_readme_command_lines_parse():
    """Every plain `unizoo` line of the README parses as written (Lightning lines: see test_recipes)."""
    import shlex

    from jsonargparse import CLI, capture_parser

    from tools.cli import COMMANDS, plain_command

    lines = [line.split("  #")[0] for line in (ROOT / "README.md").read_text().splitlines()
             if line.startswith(".venv/bin/unizoo ")]
    checked = 0
    for line in lines:
        command, *rest = shlex.split(line)[1:]
        if command not in COMMANDS:
            continue
        components, args = plain_command(command, rest)
        parser = capture_parser(lambda: CLI(components, args=args))
        parser.parse_args(args)  # an unknown or missing argument exits here, naming the line's problem
        checked += 1
    assert checked >= 6, lines


def test_bare_bool_flag_means_true():
    from tools.cli import bare_bool_flags

    def command(path: str, quick: bool = False, json: bool | None = None, n: int = 1) -> None:
        """A stand-in command."""

    assert bare_bool_flags(command, ["--quick"]) == ["--quick", "true"]
    assert bare_bool_flags(command, ["--quick", "false", "--json", "--n", "2"]) == ["--quick", "false", "--json", "true", "--n", "2"]
    assert bare_bool_flags(command, ["x", "--quick", "y"]) == ["x", "--quick", "true", "y"]
    assert bare_bool_flags(command, ["--n", "3"]) == ["--n", "3"]


def _python_snippets() -> list[str]:
    import re

    return re.findall(r"^```python\n(.*?)^```", (ROOT / "README.md").read_text(), flags=re.S | re.M)


def test_readme_python_snippets_run(tmp_path):
    """Every ```python block of the README runs as written, each in a fresh interpreter (offline)."""
    import os
    import subprocess
    import sys

    snippets = _python_snippets()
    assert len(snippets) >= 2, "the README shows the Python API"
    env = {**os.environ, "PYTHONPATH": str(ROOT), "HF_HUB_OFFLINE": "1", "UNIZOO_CACHE": str(tmp_path / "cache")}
    for i, code in enumerate(snippets):
        script = tmp_path / f"snippet_{i}.py"
        script.write_text(code)
        proc = subprocess.run([sys.executable, str(script)], cwd=tmp_path, env=env, capture_output=True, text=True,
                              timeout=300)
        assert proc.returncode == 0, f"README python snippet {i} failed:\n{code}\n{proc.stderr[-3000:]}"
        assert proc.stdout.strip(), f"README python snippet {i} printed nothing"


def test_readme_component_lines_work_as_written(capsys, monkeypatch):
    """The README's way of using a component file (a `--config` overlay after a recipe) gives the slot that file's spec."""
    import re
    import shlex

    import pytest
    import yaml

    from tools.lightning_cli import run_lightning_cli
    from zoo.config import build

    readme = (ROOT / "README.md").read_text()
    assert "not a second `--config`" not in readme
    lines = [m for m in re.findall(r"`(unizoo fit [^`]*recipes/components/[^`]*)`", readme)]
    assert lines, "the README shows how a component file is used"
    monkeypatch.chdir(ROOT)
    for line in lines:
        args = shlex.split(line)[2:]
        components = [args[i + 1] for i in range(len(args) - 1) if args[i] == "--config" and "recipes/components/" in args[i + 1]]
        assert components, f"{line}: a component is stacked with --config"
        with pytest.raises(SystemExit) as done:
            run_lightning_cli(["fit", *args, "--print_config"])
        assert done.value.code in (0, None), line
        config = yaml.safe_load(capsys.readouterr().out)
        for path in components:
            text = (ROOT / path).read_text()
            (slot, own), = yaml.safe_load(text)["model"]["init_args"].items()
            got = config["model"]["init_args"][slot]
            assert got["class_path"] == own["class_path"], line
            assert {k: got["init_args"][k] for k in own["init_args"]} == own["init_args"], line
            assert f"Slot `{slot}`" in text, path  # the file's own comment names its slot
        built = build(config["model"])  # the documented line builds (tiny components: nothing downloaded)
        assert built.read_space is not None

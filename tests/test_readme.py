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

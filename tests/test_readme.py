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

"""The `unizoo` command: LightningCLI for fit/validate/test/predict, a table of plain functions for the rest."""
from __future__ import annotations

import importlib
import os
import sys

# Bad input the user can fix: reported in one line (UNIZOO_DEBUG=1 shows the traceback). Anything else is
# a bug and keeps its traceback.
USER_ERRORS = (ValueError, OSError, FloatingPointError)

# One table (as litgpt does): command -> "module:function" or {subcommand: "module:function"}.
# Functions are imported lazily so `unizoo score` does not pay for torch + lightning start-up.
COMMANDS: dict[str, str | dict[str, str]] = {
    "data": {
        "smartwatch": "tools.data:smartwatch",
        "caption-to-generation": "tools.data:caption_to_generation",
    },
    "score": "tools.score:score",
    "zoo": {
        "list": "tools.zoo_cmd:list_entries",
        "info": "tools.zoo_cmd:info",
        "pull": "tools.zoo_cmd:pull",
        "publish": "tools.zoo_cmd:publish",
        "readme-table": "tools.zoo_cmd:readme_table",
    },
    "report": "tools.report:report",
    "bench": "tools.bench:bench",
    "generate": "tools.generate:generate",
    "quickstart": "tools.quickstart:quickstart",
}
LIGHTNING_COMMANDS = ("fit", "validate", "test", "predict")


def _load(target: str):
    module, func = target.split(":")
    return getattr(importlib.import_module(module), func)


def _usage() -> str:
    lines = ["usage: unizoo COMMAND [args]", "", "Lightning commands: " + ", ".join(LIGHTNING_COMMANDS)]
    for name, target in COMMANDS.items():
        subs = f" {{{'|'.join(target)}}}" if isinstance(target, dict) else ""
        lines.append(f"  {name}{subs}")
    lines.append("Run `unizoo COMMAND --help` for a command's arguments.")
    return "\n".join(lines)


def main(argv: list[str] | None = None, *, raise_errors: bool | None = None) -> None:
    """Entry point of the `unizoo` console script.

    Bad input (ValueError, OSError, FloatingPointError) exits with one line on stderr and status 2 for a
    recipe/argument error, 1 otherwise, unless `raise_errors` (default: when `argv` is given, as in-process
    callers do) or the environment variable UNIZOO_DEBUG=1 asks for the exception itself.
    """
    if raise_errors is None:
        raise_errors = argv is not None
    if raise_errors or os.environ.get("UNIZOO_DEBUG", "").strip() not in ("", "0"):
        _main(argv)
        return
    try:
        _main(argv)
    except USER_ERRORS as err:
        command = " ".join((sys.argv[1:] if argv is None else argv)[:1])
        print(f"unizoo {command}: error: {err}\n(UNIZOO_DEBUG=1 shows the traceback)", file=sys.stderr)
        cli = sys.modules.get("tools.lightning_cli")  # loaded only by the Lightning commands
        raise SystemExit(2 if cli is not None and isinstance(err, cli.RecipeError) else 1) from None


def _main(argv: list[str] | None) -> None:
    argv = list(sys.argv[1:] if argv is None else argv)
    if not argv or argv[0] in ("-h", "--help"):
        print(_usage())
        return
    command, rest = argv[0], argv[1:]
    if command in LIGHTNING_COMMANDS:
        from tools.lightning_cli import run_lightning_cli

        run_lightning_cli([command, *rest])
        return
    if command not in COMMANDS:
        print(f"unizoo: unknown command {command!r}\n\n{_usage()}", file=sys.stderr)
        raise SystemExit(2)
    from jsonargparse import CLI

    target = COMMANDS[command]
    if isinstance(target, dict):
        components = {sub: _load(t) for sub, t in target.items()}
        CLI(components, args=rest, prog=f"unizoo {command}")
    else:
        CLI(_load(target), args=rest, prog=f"unizoo {command}")


if __name__ == "__main__":
    main()

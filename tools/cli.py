"""The `unizoo` command: LightningCLI for fit/validate/test/predict, a table of plain functions for the rest."""
from __future__ import annotations

import importlib
import sys

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


def main(argv: list[str] | None = None) -> None:
    """Entry point of the `unizoo` console script."""
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

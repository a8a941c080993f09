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
    "compare": "tools.report_compare:compare",
    "keep": "tools.keep_results:keep",
    "bench": "tools.bench:bench",
    "generate": "tools.generate:generate",
    "quickstart": "tools.quickstart:quickstart",
    "study": "tools.study:study",
    "measure": {
        "spaces": "tools.measure:spaces",
        "generation": "tools.measure:generation",
        "guidance": "tools.measure:guidance",
        "prompt": "tools.measure:prompt",
        "attributes": "tools.measure_attributes:attributes",
        "answers": "tools.measure_answers:answers",
    },
}
LIGHTNING_COMMANDS = ("fit", "validate", "test", "predict")


def _load(target: str):
    module, func = target.split(":")
    return getattr(importlib.import_module(module), func)


_BOOL_WORDS = ("true", "false", "yes", "no")


def _type_hints(func) -> dict:
    """`func`'s resolved annotations; empty where they cannot be resolved (arguments then pass unchanged)."""
    import typing

    try:
        return typing.get_type_hints(func)
    except (NameError, TypeError):
        return {}


def bare_bool_flags(func, args: list[str]) -> list[str]:
    """`--flag` alone means `--flag true` for `func`'s bool parameters (jsonargparse itself wants a value)."""
    import typing

    flags = {f"--{name}" for name, hint in _type_hints(func).items() if hint in (bool, typing.Optional[bool])}
    out: list[str] = []
    for i, arg in enumerate(args):
        out.append(arg)
        following = args[i + 1] if i + 1 < len(args) else None
        if arg in flags and (following is None or following.lower() not in _BOOL_WORDS):
            out.append("true")
    return out


def dashed_flags(func, args: list[str]) -> list[str]:
    """`--dry-run` means `--dry_run` for `func`'s parameter dry_run (jsonargparse knows only the underscored name)."""
    import inspect

    names = {name.replace("_", "-"): name for name in inspect.signature(func).parameters if "_" in name}
    out = []
    for arg in args:
        flag, eq, value = arg.partition("=")
        out.append(f"--{names[flag[2:]]}{eq}{value}" if flag.startswith("--") and flag[2:] in names else arg)
    return out


def gathered_positionals(func, args: list[str]) -> list[str]:
    """Several positional words for `func`'s one list-typed positional parameter become one JSON list.

    jsonargparse takes a single token per positional; this lets a shell glob (`unizoo report runs/*/version_0`)
    expand into many words. Flags are assumed to take one value (bare bool flags are filled in before).
    """
    import inspect
    import json
    import typing

    required = [p for p in inspect.signature(func).parameters.values() if p.default is inspect.Parameter.empty]
    if len(required) != 1:
        return list(args)
    hint = _type_hints(func).get(required[0].name)
    if list not in {typing.get_origin(h) for h in (hint, *typing.get_args(hint))}:
        return list(args)
    positions, i = [], 0
    while i < len(args):
        if args[i].startswith("-"):
            i += 1 if "=" in args[i] or args[i] in ("-h", "--help") else 2
        else:
            positions.append(i)
            i += 1
    if len(positions) < 2:
        return list(args)
    words = [args[i] for i in positions]
    return [json.dumps(words), *(a for i, a in enumerate(args) if i not in positions)]


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

    components, rest = plain_command(command, rest)
    CLI(components, args=rest, prog=f"unizoo {command}")


def plain_command(command: str, args: list[str]):
    """(the function, or {subcommand: function}, of a plain command; its arguments with bare bool flags filled)."""
    target = COMMANDS[command]
    if isinstance(target, dict):
        components = {sub: _load(t) for sub, t in target.items()}
        sub = next((a for a in args if a in components), None)
        if sub is None:
            return components, list(args)
        func, at = components[sub], args.index(sub)
        # The subcommand's own words get the same fix-ups as a plain command's (bool flags, dashes, lists).
        tail = gathered_positionals(func, bare_bool_flags(func, dashed_flags(func, args[at + 1:])))
        return components, [*args[:at + 1], *tail]
    func = _load(target)
    return func, gathered_positionals(func, bare_bool_flags(func, dashed_flags(func, args)))


if __name__ == "__main__":
    main()

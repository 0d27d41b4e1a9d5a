"""docs/reference.md, generated: every command, its options, and every config key.

One source: the argparse parsers of `alignkit` and the config dataclasses (their
`setting(default, help)` fields). `make docs` (or `python -m alignkit.cli.reference >
docs/reference.md`) rewrites the file; a test fails when the checked-in file differs.
"""

from __future__ import annotations

import argparse
import dataclasses
import typing

HEADER = """# Command and config reference

Generated from the command-line parsers and the config dataclasses by
`make docs` (`python -m alignkit.cli.reference > docs/reference.md`); do not edit by hand.
Training commands take `--config FILE.yaml` and `key=value` overrides (dotted for nested
keys, e.g. `lora.r=8`); the common keys mean the same in every one of them
(docs/training.md explains them in prose).
"""


def _cell(text) -> str:
    return str(text).replace("|", "\\|").replace("\n", " ")


def _default(f: dataclasses.Field) -> str:
    """The default as it is written in a config file (YAML: null, false, 1.0e-05)."""
    import yaml

    value = f.default_factory() if f.default_factory is not dataclasses.MISSING else f.default
    if dataclasses.is_dataclass(value):
        value = dataclasses.asdict(value)
    return yaml.safe_dump(value, default_flow_style=True).strip().removesuffix("...").strip()


def _nested_settings(hint):
    """The dataclass of a nested settings key's type (LoraSettings | None), else None."""
    for candidate in typing.get_args(hint) or (hint,):
        if dataclasses.is_dataclass(candidate):
            return candidate
    return None


def config_rows(config_class) -> list[tuple[str, str, str]]:
    """(key, default, meaning) for every key of a training config, nested keys dotted."""
    hints = typing.get_type_hints(config_class)
    rows = []
    for f in dataclasses.fields(config_class):
        meaning = f.metadata.get("help", "")
        if f.metadata.get("choices"):
            meaning += f" (one of: {', '.join(map(str, f.metadata['choices']))})"
        rows.append((f.name, _default(f), meaning))
        nested = _nested_settings(hints[f.name])
        if nested is not None:
            rows.extend(
                (f"{f.name}.{sub.name}", _default(sub), f"see `{f.name}` above")
                for sub in dataclasses.fields(nested)
            )
    return rows


def option_rows(parser: argparse.ArgumentParser) -> list[tuple[str, str, str]]:
    """(option, default, meaning) for every argument of a (non-training) command."""
    rows = []
    for action in parser._actions:  # argparse keeps no public list of its arguments
        if isinstance(action, argparse._HelpAction):
            continue
        name = ", ".join(action.option_strings) or action.metavar or action.dest
        default = "" if action.default in (None, argparse.SUPPRESS) else str(action.default)
        if action.option_strings and action.nargs == 0:
            default = ""  # a flag
        rows.append((str(name), default, action.help or ""))
    return rows


def _table(header: tuple[str, str, str], rows) -> list[str]:
    lines = [f"| {' | '.join(header)} |", "|---|---|---|"]
    lines += [
        f"| `{_cell(a)}` | {'`' + _cell(b) + '`' if b else ''} | {_cell(c)} |" for a, b, c in rows
    ]
    return lines


def render_reference() -> str:
    import os
    from unittest import mock

    # argparse wraps usage lines at the terminal's width: fix it, so the file is the
    # same wherever it is generated
    with mock.patch.dict(os.environ, {"COLUMNS": "100"}):
        return _render()


def _render() -> str:
    from alignkit.cli import build_parser

    parser = build_parser()
    commands = next(a for a in parser._actions if isinstance(a, argparse._SubParsersAction))
    helps = {choice.dest: choice.help for choice in commands._choices_actions}
    lines = [HEADER, "## Commands", "", "| command | what it does |", "|---|---|"]
    lines += [
        f"| [`alignkit {name}`](#alignkit-{name}) | {_cell(helps.get(name, ''))} |"
        for name in commands.choices
    ]
    for name, sub in commands.choices.items():
        lines += ["", f"## alignkit {name}", "", _cell(sub.description or helps.get(name, "")), ""]
        lines += ["```", sub.format_usage().strip().removeprefix("usage: "), "```", ""]
        config_class = sub.get_default("config_class")
        if config_class is not None:
            lines += [f"Config keys (`{config_class.__name__}`):", ""]
            lines += _table(("key", "default", "meaning"), config_rows(config_class))
        else:
            lines += _table(("option", "default", "meaning"), option_rows(sub))
        # command groups (alignkit models list|convert, alignkit data ...)
        for group in (a for a in sub._actions if isinstance(a, argparse._SubParsersAction)):
            for sub_name, subsub in group.choices.items():
                lines += [
                    "",
                    f"### alignkit {name} {sub_name}",
                    "",
                    _cell(subsub.description or ""),
                    "",
                ]
                lines += ["```", subsub.format_usage().strip().removeprefix("usage: "), "```", ""]
                lines += _table(("option", "default", "meaning"), option_rows(subsub))
    return "\n".join(lines) + "\n"


if __name__ == "__main__":
    print(render_reference(), end="")

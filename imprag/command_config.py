"""`--config FILE.yaml` and `--print-config` for a command's own flags (every command but train, whose
nested TrainConfig has them through imprag/config_io.py).

A file's keys are the command's option names (`max_batch_size` or `max-batch-size`, `k` for `-k`); each
value is checked by the flag's own type and choices, so a bad one is reported at its file line, and it
becomes the flag's default: a flag given on the command line wins. Positional arguments (a prompt, the
runs to report) stay on the command line. `--print-config` prints the resolved options in the same form,
so its output is a config file for the same run.

    imprag serve --model ckpt --index idx --max-batch-size 4 --print-config > serve.yaml
    imprag serve --config serve.yaml --port 9000
"""

from __future__ import annotations

import argparse
from pathlib import Path
from typing import Any

import yaml

from imprag.config_io import read_yaml
from imprag.errors import UserError

_NOT_KEYS = ("help", "config", "print_config")


def add_config_options(parser: argparse.ArgumentParser) -> None:
    parser.add_argument(
        "--config",
        metavar="FILE.yaml",
        default=None,
        help="YAML file of these options (keys as `--print-config` prints them); command-line flags win",
    )
    parser.add_argument(
        "--print-config", action="store_true", help="print the resolved options as YAML and exit"
    )


def _options(parser: argparse.ArgumentParser) -> dict[str, argparse.Action]:
    """Option name -> its action, for every flag a file may set (positionals and --help excluded)."""
    return {a.dest: a for a in parser._actions if a.option_strings and a.dest not in _NOT_KEYS}


def _convert(action: argparse.Action, value: Any) -> Any:
    """A YAML value -> what the flag would have parsed it to (ValueError/TypeError when it cannot)."""
    if action.nargs == 0:  # --flag (store_true)
        if not isinstance(value, bool):
            raise ValueError("expected true or false")
        return value
    many = action.nargs in ("+", "*") or isinstance(action, argparse._AppendAction)
    if many:
        if not isinstance(value, list):
            value = [value]
        return [_convert_one(action, v) for v in value]
    return _convert_one(action, value)


def _convert_one(action: argparse.Action, value: Any) -> Any:
    if isinstance(value, bool | list | dict):
        raise ValueError("expected one value")
    out = action.type(str(value)) if callable(action.type) else str(value)  # as if typed on the command line
    if action.choices is not None and out not in action.choices:
        raise ValueError(f"choose one of: {', '.join(map(str, action.choices))}")
    return out


def apply_config_file(parser: argparse.ArgumentParser, argv: list[str]) -> None:
    """Read the file `--config` names in argv (if any) into the parser's defaults."""
    pre = argparse.ArgumentParser(add_help=False, allow_abbrev=False)
    pre.add_argument("--config", default=None)
    path = pre.parse_known_args(argv)[0].config
    if path is None:
        return
    data, lines = read_yaml(path)
    options = _options(parser)
    defaults: dict[str, Any] = {}
    for key, value in data.items():
        where = f"{path}:{lines.get(str(key), 1)}: key '{key}'"
        action = options.get(str(key).replace("-", "_"))
        if action is None:
            raise UserError(f"{where}: unknown key; known keys: {', '.join(options)}")
        flag = "/".join(action.option_strings)
        if value is None and action.default is None:
            defaults[action.dest] = None
            continue
        try:
            defaults[action.dest] = _convert(action, value)
        except (ValueError, TypeError, argparse.ArgumentTypeError) as e:
            reason = {int: "expected an integer", float: "expected a number"}.get(action.type, str(e))  # type: ignore[call-overload]
            raise UserError(f"{where}: {value!r} is not a value for {flag} ({reason})") from None
        action.required = False  # the file gave it
    parser.set_defaults(**defaults)


def resolved_options(parser: argparse.ArgumentParser, args: argparse.Namespace) -> str:
    """The parsed options as the YAML a --config file takes (paths as strings)."""

    def plain(v: Any) -> Any:
        if isinstance(v, Path):
            return str(v)
        if isinstance(v, list | tuple):
            return [plain(x) for x in v]
        return v

    values = {dest: plain(getattr(args, dest)) for dest in _options(parser)}
    return yaml.safe_dump(values, sort_keys=False, default_flow_style=False, allow_unicode=True)

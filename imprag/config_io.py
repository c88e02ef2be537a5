"""Dataclass configs <-> YAML files <-> command-line flags, with errors that name the key, file and line.

One typed dataclass tree is the single source of truth: a YAML file fills it, every field is also a
`--dotted.flag` (nested dataclasses by their field path, list items by index: `--stages.1.steps 200`),
and `dump_yaml` prints the resolved config (`--print-config`). Supported field types: str, int, float,
bool, `X | None`, `Literal[...]`, list[X], dict[str, X] and nested dataclasses (also inside lists).

    cfg = load_config(TrainConfig, "train.yaml", {"optim.lr": "3e-4"})

Help text comes from `field(metadata={"help": ...})` (see `option`).
"""

from __future__ import annotations

import argparse
import dataclasses
import types
import typing
from collections.abc import Mapping
from pathlib import Path
from typing import Any, Literal, TypeVar, Union

import yaml

from imprag.errors import UserError

T = TypeVar("T")

FLAG_DEST_PREFIX = "cfg__"
MAX_LIST_FLAGS = 8  # list-of-dataclass fields get indexed flags --name.0.x ... --name.7.x
_NONE_WORDS = {"none", "null", "~"}
_TRUE = {"true", "yes", "on", "1"}
_FALSE = {"false", "no", "off", "0"}


def option(default: Any = dataclasses.MISSING, help: str = "", default_factory: Any = dataclasses.MISSING):
    """A dataclass field with help text for the generated `--flag`."""
    if default_factory is not dataclasses.MISSING:
        return dataclasses.field(default_factory=default_factory, metadata={"help": help})
    return dataclasses.field(default=default, metadata={"help": help})


# ---------------------------------------------------------------------------------------- type helpers
def _hints(cls: type) -> dict[str, Any]:
    return typing.get_type_hints(cls)


def _is_union(tp: Any) -> bool:
    return typing.get_origin(tp) in (Union, types.UnionType)


def _strip_optional(tp: Any) -> tuple[Any, bool]:
    if _is_union(tp):
        args = [a for a in typing.get_args(tp) if a is not type(None)]
        optional = len(args) < len(typing.get_args(tp))
        if len(args) == 1:
            return args[0], optional
    return tp, False


def _type_name(tp: Any) -> str:
    tp, optional = _strip_optional(tp)
    origin = typing.get_origin(tp)
    if origin is Literal:
        name = " | ".join(repr(a) for a in typing.get_args(tp))
    elif origin is list:
        name = f"a list of {_type_name(typing.get_args(tp)[0])}"
    elif origin is dict:
        name = f"a mapping to {_type_name(typing.get_args(tp)[1])}"
    elif dataclasses.is_dataclass(tp):
        name = "a mapping"
    else:
        name = {int: "an integer", float: "a number", bool: "true or false", str: "a string"}.get(tp, str(tp))
    return f"{name} or null" if optional else name


# ---------------------------------------------------------------------------------------- dict -> dataclass
class _Where:
    """How an error names a value: `file:line: key 'a.b'` or `flag --a.b`."""

    def __init__(self, source: str, lines: Mapping[str, int] | None = None, flags: bool = False):
        self.source, self.lines, self.flags = source, dict(lines or {}), flags

    def __call__(self, key: str) -> str:
        if self.flags:
            return f"--{key}"
        line = self.lines.get(key)
        return f"{self.source}:{line}: key '{key}'" if line else f"{self.source}: key '{key}'"


def _coerce(value: Any, tp: Any, key: str, where: _Where, partial: bool = False) -> Any:
    inner, optional = _strip_optional(tp)
    if value is None or (isinstance(value, str) and where.flags and value.strip().lower() in _NONE_WORDS):
        if optional:
            return None
        raise UserError(f"{where(key)}: expected {_type_name(tp)}, got null")
    tp = inner
    origin = typing.get_origin(tp)

    def bad() -> UserError:
        return UserError(f"{where(key)}: expected {_type_name(tp)}, got {value!r}")

    if dataclasses.is_dataclass(tp):
        if not isinstance(value, Mapping):
            raise bad()
        return _from_mapping(tp, value, key, where, partial)  # type: ignore[arg-type]
    if origin is Literal:
        choices = typing.get_args(tp)
        if value not in choices:
            raise UserError(
                f"{where(key)}: {value!r} is not a choice; choose one of: {', '.join(map(str, choices))}"
            )
        return value
    if origin is list:
        (item,) = typing.get_args(tp)
        if isinstance(value, str) and where.flags:  # a comma-separated flag value
            value = [v.strip() for v in value.split(",") if v.strip()]
        if not isinstance(value, list | tuple):
            raise bad()
        return [_coerce(v, item, f"{key}.{i}", where, partial) for i, v in enumerate(value)]
    if origin is dict:
        _, item = typing.get_args(tp)
        if not isinstance(value, Mapping):
            raise bad()
        return {str(k): _coerce(v, item, f"{key}.{k}", where, partial) for k, v in value.items()}
    if tp is bool:
        if isinstance(value, bool):
            return value
        if isinstance(value, str) and value.strip().lower() in _TRUE | _FALSE:
            return value.strip().lower() in _TRUE
        raise bad()
    if tp is int:
        if isinstance(value, bool):
            raise bad()
        if isinstance(value, int):
            return value
        if isinstance(value, float) and value.is_integer():
            return int(value)
        if isinstance(value, str):
            try:
                return int(value.strip())
            except ValueError:
                try:
                    f = float(value)
                except ValueError:
                    raise bad() from None
                if f.is_integer():
                    return int(f)
        raise bad()
    if tp is float:
        if isinstance(value, bool):
            raise bad()
        if isinstance(value, int | float):
            return float(value)
        if isinstance(value, str):
            try:
                return float(value.strip())
            except ValueError:
                raise bad() from None
        raise bad()
    if tp is str:
        if isinstance(value, str):
            return value
        if isinstance(value, int | float) and not isinstance(value, bool):
            return str(value)
        raise bad()
    if tp is Any:
        return value
    raise TypeError(f"config_io: unsupported field type {tp!r} for {key}")


def _from_mapping(
    cls: type[T], data: Mapping[str, Any], prefix: str, where: _Where, partial: bool = False
) -> Any:
    fields = {f.name: f for f in dataclasses.fields(cls) if f.init}  # type: ignore[arg-type]
    hints = _hints(cls)
    kwargs: dict[str, Any] = {}
    for raw_key, value in data.items():
        name = str(raw_key).replace("-", "_")
        key = f"{prefix}.{raw_key}" if prefix else str(raw_key)
        if name not in fields:
            known = ", ".join(fields)
            raise UserError(
                f"{where(key)}: unknown key; known keys{' under ' + prefix if prefix else ''}: {known}"
            )
        kwargs[name] = _coerce(value, hints[name], f"{prefix}.{name}" if prefix else name, where, partial)
    if partial:
        return kwargs
    for name, f in fields.items():
        if (
            name not in kwargs
            and f.default is dataclasses.MISSING
            and f.default_factory is dataclasses.MISSING
        ):
            key = f"{prefix}.{name}" if prefix else name
            raise UserError(
                f"{where(key)}: required but missing ({f.metadata.get('help', '')})".rstrip(" ()")
            )
    return cls(**kwargs)


def from_dict(
    cls: type[T], data: Mapping[str, Any], source: str = "config", lines: Mapping[str, int] | None = None
) -> T:
    """Build `cls` from a (nested) mapping; unknown or mistyped keys -> UserError naming source and key."""
    if not isinstance(data, Mapping):
        raise UserError(
            f"{source}: expected a mapping of settings at the top level, got {type(data).__name__}"
        )
    return _from_mapping(cls, data, "", _Where(source, lines))


def to_dict(obj: Any) -> Any:
    """A dataclass tree -> plain dicts/lists (field order kept)."""
    if dataclasses.is_dataclass(obj) and not isinstance(obj, type):
        return {f.name: to_dict(getattr(obj, f.name)) for f in dataclasses.fields(obj)}
    if isinstance(obj, list | tuple):
        return [to_dict(v) for v in obj]
    if isinstance(obj, dict):
        return {k: to_dict(v) for k, v in obj.items()}
    return obj


def dump_yaml(obj: Any) -> str:
    return yaml.safe_dump(to_dict(obj), sort_keys=False, default_flow_style=False, allow_unicode=True)


# ---------------------------------------------------------------------------------------- YAML files
def _key_lines(node: Any, prefix: str, out: dict[str, int]) -> None:
    if isinstance(node, yaml.MappingNode):
        for k, v in node.value:
            key = f"{prefix}.{k.value}" if prefix else str(k.value)
            out[key] = k.start_mark.line + 1
            _key_lines(v, key, out)
    elif isinstance(node, yaml.SequenceNode):
        for i, v in enumerate(node.value):
            key = f"{prefix}.{i}"
            out[key] = v.start_mark.line + 1
            _key_lines(v, key, out)


def read_yaml(path: str | Path) -> tuple[dict[str, Any], dict[str, int]]:
    """(mapping, dotted key -> line number) of a YAML config file; UserError for a missing/bad file."""
    path = Path(path)
    if not path.is_file():
        raise UserError(f"{path}: config file not found")
    text = path.read_text(encoding="utf-8")
    try:
        data = yaml.safe_load(text)
        node = yaml.compose(text)
    except yaml.YAMLError as e:
        mark = getattr(e, "problem_mark", None)
        where = f"{path}:{mark.line + 1}" if mark is not None else str(path)
        problem = getattr(e, "problem", None) or str(e).splitlines()[0]
        raise UserError(f"{where}: not valid YAML ({problem})") from None
    if data is None:
        data = {}
    if not isinstance(data, dict):
        raise UserError(f"{path}: expected a mapping of settings at the top level, got {type(data).__name__}")
    lines: dict[str, int] = {}
    _key_lines(node, "", lines)
    return data, lines


# ---------------------------------------------------------------------------------------- flags
def _flag_fields(cls: type, prefix: str = "") -> list[tuple[str, Any, str, bool]]:
    """(dotted name, type, help, shown in --help) for every field reachable through dataclasses."""
    out: list[tuple[str, Any, str, bool]] = []
    hints = _hints(cls)
    for f in dataclasses.fields(cls):
        name = f"{prefix}{f.name}"
        tp, _ = _strip_optional(hints[f.name])
        help_text = f.metadata.get("help", "")
        if dataclasses.is_dataclass(tp):
            out += _flag_fields(tp, name + ".")  # type: ignore[arg-type]
            continue
        out.append((name, hints[f.name], help_text, True))
        if typing.get_origin(tp) is list:
            (item,) = typing.get_args(tp)
            item, _ = _strip_optional(item)
            if dataclasses.is_dataclass(item):
                for i in range(MAX_LIST_FLAGS):
                    out += [(n, t, h, False) for n, t, h, _ in _flag_fields(item, f"{name}.{i}.")]  # type: ignore[arg-type]
                out.append(
                    (
                        f"{name}.N.FIELD",
                        None,
                        f"one field of item N (0..{MAX_LIST_FLAGS - 1}) of {name}",
                        True,
                    )
                )
    return out


def add_config_flags(parser: argparse.ArgumentParser, cls: type, title: str = "config fields") -> None:
    """Register `--dotted.name VALUE` for every field of `cls` (values parsed later by `flag_overrides`).

    Also makes the parser's own errors (an unknown flag) one line, like every other input error."""
    prog = parser.prog

    def one_line_error(message: str):
        import sys

        hint = (
            " (`--print-config` shows every key; `--help` lists the flags)"
            if "unrecognized" in message
            else ""
        )
        print(f"{prog}: error: {message}{hint}", file=sys.stderr)
        raise SystemExit(2)

    parser.error = one_line_error  # type: ignore[method-assign]
    group = parser.add_argument_group(title, "every config-file key is also a flag; values are YAML scalars")
    for name, tp, help_text, shown in _flag_fields(cls):
        if tp is None:  # documentation line for indexed list flags
            group.add_argument(f"--{name}", dest=FLAG_DEST_PREFIX + "_doc_" + name, help=help_text,
                               default=argparse.SUPPRESS, metavar="VALUE")  # fmt: skip
            continue
        spellings = [f"--{name}"]
        if "_" in name:
            spellings.append(f"--{name.replace('_', '-')}")
        kind = _type_name(tp)
        extra: dict[str, Any] = {}
        if _strip_optional(tp)[0] is bool:  # `--flag` alone means true; `--flag false` also works
            extra = {"nargs": "?", "const": "true"}
        group.add_argument(
            *spellings,
            dest=FLAG_DEST_PREFIX + name,
            default=argparse.SUPPRESS,
            metavar="VALUE",
            help=(f"{help_text} ({kind})" if help_text else kind) if shown else argparse.SUPPRESS,
            **extra,
        )


def flag_overrides(args: argparse.Namespace) -> dict[str, str]:
    """The config flags actually given on the command line: dotted name -> raw string."""
    out = {}
    for dest, value in vars(args).items():
        if dest.startswith(FLAG_DEST_PREFIX + "_doc_"):
            raise UserError(
                f"--{dest[len(FLAG_DEST_PREFIX) + 5 :]} is a placeholder: put the item index and field name in it"
            )
        if dest.startswith(FLAG_DEST_PREFIX):
            out[dest[len(FLAG_DEST_PREFIX) :]] = value
    return out


def _set_dotted(data: dict[str, Any], cls: type, dotted: str, raw: str) -> None:
    """Put a raw flag string into the nested mapping at `dotted`, parsing it by the field's type."""
    parts = dotted.split(".")
    node: Any = data
    tp: Any = cls
    for i, part in enumerate(parts):
        last = i == len(parts) - 1
        tp, _ = _strip_optional(tp)
        if dataclasses.is_dataclass(tp):
            hints = _hints(tp)  # type: ignore[arg-type]
            name = part.replace("-", "_")
            if name not in hints:
                raise UserError(f"--{dotted}: unknown flag (`--print-config` shows every key)")
            field_tp = hints[name]
            if last:
                node[name] = _parse_flag_value(raw, field_tp)
                return
            if not isinstance(node.get(name), dict | list):
                node[name] = _default_value(tp, name, field_tp)  # start from the field's default
            node, tp = node[name], field_tp
        elif typing.get_origin(tp) is list:
            if not part.isdigit():
                raise UserError(f"--{dotted}: {part!r} must be a list index")
            idx = int(part)
            (item_tp,) = typing.get_args(tp)
            if idx > len(node):
                raise UserError(
                    f"--{dotted}: {'.'.join(parts[:i])} has {len(node)} items; index {idx} would leave a gap "
                    f"(use index {len(node)} to add one)"
                )
            if idx == len(node):
                node.append({})
            if last:
                node[idx] = _parse_flag_value(raw, item_tp)
                return
            if not isinstance(node[idx], dict):
                node[idx] = {}
            node, tp = node[idx], item_tp
        else:
            raise UserError(f"--{dotted}: unknown flag (`--print-config` shows every key)")


def _default_value(cls: Any, name: str, field_tp: Any) -> Any:
    """The plain-data default of field `name` of dataclass `cls` (lists keep their default items)."""
    f = next(f for f in dataclasses.fields(cls) if f.name == name)
    value: Any = None
    if f.default_factory is not dataclasses.MISSING:
        value = to_dict(f.default_factory())
    elif f.default is not dataclasses.MISSING:
        value = to_dict(f.default)
    if isinstance(value, dict | list):
        return value
    inner, _ = _strip_optional(field_tp)
    return [] if typing.get_origin(inner) is list else {}


def _parse_flag_value(raw: str, tp: Any) -> Any:
    """Strings stay strings for str fields; structured fields (lists, mappings) read YAML."""
    inner, optional = _strip_optional(tp)
    if optional and raw.strip().lower() in _NONE_WORDS:
        return None
    if (
        inner is str
        or typing.get_origin(inner) is Literal
        and all(isinstance(a, str) for a in typing.get_args(inner))
    ):
        return raw
    if typing.get_origin(inner) in (list, dict) or dataclasses.is_dataclass(inner):
        try:
            value = yaml.safe_load(raw)
        except yaml.YAMLError:
            return raw
        if (
            typing.get_origin(inner) is list
            and isinstance(value, str | int | float)
            and not isinstance(value, bool)
        ):
            # `--words a,b` / `--eval.k 5`: a comma-separated list of scalars
            value = [_scalar(v.strip()) for v in str(raw).split(",") if v.strip()]
        return value
    return raw


def _scalar(text: str) -> Any:
    try:
        value = yaml.safe_load(text)
    except yaml.YAMLError:
        return text
    return value if isinstance(value, str | int | float | bool) else text


def load_config(
    cls: type[T],
    path: str | Path | None = None,
    overrides: Mapping[str, str] | None = None,
    base: Mapping[str, Any] | None = None,
) -> T:
    """YAML file (optional) + dotted flag overrides (raw strings) -> a `cls` instance.

    Errors name the file and line for file keys, and the flag for overrides."""
    data: dict[str, Any] = dict(base or {})
    lines: dict[str, int] = {}
    source = "config"
    if path is not None:
        file_data, lines = read_yaml(path)
        data.update(file_data)
        source = str(path)
    # check the file alone first (keys and types; required keys may come from flags), so a bad key is
    # reported against the file and its line
    _from_mapping(cls, data, "", _Where(source, lines), partial=True)
    if not overrides:
        return from_dict(cls, data, source, lines)
    for dotted, raw in overrides.items():
        _set_dotted(data, cls, dotted, raw)
    try:
        return from_dict(cls, data, source, lines)
    except UserError:
        # re-run to name the flag rather than the file when an override broke it
        for dotted, raw in overrides.items():
            probe: dict[str, Any] = {}
            _set_dotted(probe, cls, dotted, raw)
            _check_flag(cls, dotted, probe)
        raise


def _check_flag(cls: type, dotted: str, probe: dict[str, Any]) -> None:
    """Coerce just the value one flag set, so its error names the flag."""
    node: Any = probe
    tp: Any = cls
    for part in dotted.split("."):
        tp, _ = _strip_optional(tp)
        if dataclasses.is_dataclass(tp):
            tp = _hints(tp)[part.replace("-", "_")]  # type: ignore[arg-type]
            node = node[part.replace("-", "_")]
        else:
            (tp,) = typing.get_args(tp)
            node = node[int(part)]
    _coerce_flag(node, tp, dotted)


def _coerce_flag(value: Any, tp: Any, dotted: str) -> None:
    inner, _ = _strip_optional(tp)
    if dataclasses.is_dataclass(inner) and isinstance(value, Mapping):
        hints = _hints(inner)  # type: ignore[arg-type]
        for k, v in value.items():
            if k in hints and v != {}:
                _coerce_flag(v, hints[k], f"{dotted}.{k}")
        return
    if typing.get_origin(inner) is list and isinstance(value, list):
        (item,) = typing.get_args(inner)
        for i, v in enumerate(value):
            if v != {}:
                _coerce_flag(v, item, f"{dotted}.{i}")
        return
    _coerce(value, tp, dotted, _Where("command line", flags=True))

"""Typed configs <-> YAML files <-> command-line flags, with errors that name the file and line or the flag.

Each command's options are one dataclass tree (its `Options`; train's is TrainConfig): every field is a
flag (`--max-batch-size`, nested dataclasses by their path: `--optim.lr`, list items by index or name:
`--stages.1.steps 200`, `--stages.distill.steps 200`), a `--config` YAML file fills the same fields
(flags win), and `dump_yaml` prints the resolved tree (`--print-config`). pydantic checks the types;
this module maps its first error to one line naming the file line or the flag.

    cfg = load_config(TrainConfig, "train.yaml", {"optim.lr": "3e-4"})

Help text and flag details come from `option(...)` fields.
"""

from __future__ import annotations

import argparse
import dataclasses
import types
import typing
from collections.abc import Callable, Mapping
from pathlib import Path
from typing import Any, Literal, TypeVar, Union

import yaml

from imprag.errors import UserError

T = TypeVar("T")

FLAG_DEST_PREFIX = "cfg__"
_NONE_WORDS = {"none", "null", "~"}


def option(
    default: Any = dataclasses.MISSING,
    help: str = "",
    default_factory: Any = dataclasses.MISSING,
    *,
    flags: tuple[str, ...] = (),
    positional: bool = False,
    repeat: bool = False,
    metavar: str | None = None,
):
    """A dataclass field with help text for its generated `--flag`: `flags` adds spellings (`-k`),
    `positional` makes it a positional argument (a list: one or more), `repeat` makes a list flag
    repeatable (`--stop A --stop B`) instead of comma-separated."""
    meta = {"help": help, "flags": flags, "positional": positional, "repeat": repeat, "metavar": metavar}
    if default_factory is not dataclasses.MISSING:
        return dataclasses.field(default_factory=default_factory, metadata=meta)
    return dataclasses.field(default=default, metadata=meta)


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
        name = f"a list, {_type_name(typing.get_args(tp)[0])} each"
    elif origin is dict:
        name = f"a mapping to {_type_name(typing.get_args(tp)[1])}"
    elif dataclasses.is_dataclass(tp):
        name = "a mapping"
    else:
        kinds = {int: "an integer", float: "a number", bool: "true or false", str: "a string", Path: "a path"}
        name = kinds.get(tp, str(tp))
    return f"{name} or null" if optional else name


# ---------------------------------------------------------------------------------------- dict -> dataclass
def _pydantic_config(cls: type) -> None:
    """Let pydantic refuse unknown keys (and read numbers as text) in `cls` and every dataclass inside it."""
    from pydantic import ConfigDict

    if "__pydantic_config__" in vars(cls):
        return
    cls.__pydantic_config__ = ConfigDict(extra="forbid", coerce_numbers_to_str=True)  # type: ignore[attr-defined]
    todo = list(_hints(cls).values())
    while todo:
        tp = todo.pop()
        todo += typing.get_args(tp)
        if dataclasses.is_dataclass(tp):
            _pydantic_config(tp)  # type: ignore[arg-type]


def _type_at(cls: type, loc: tuple) -> Any:
    """The declared type at a path of field names, list indexes and mapping keys (None off the tree)."""
    tp: Any = cls
    for part in loc:
        tp, _ = _strip_optional(tp)
        if dataclasses.is_dataclass(tp):
            tp = _hints(tp).get(str(part))  # type: ignore[arg-type]
        elif typing.get_origin(tp) in (list, dict):
            tp = typing.get_args(tp)[-1]
        else:
            return None
    return tp


def _build(cls: type[T], data: Mapping[str, Any], name: Callable[[str], str]) -> T:
    """pydantic builds and type-checks `cls` from plain data; its first error becomes one UserError line
    that names the key through `name` (a file line or a flag)."""
    from pydantic import TypeAdapter, ValidationError

    _pydantic_config(cls)
    try:
        return TypeAdapter(cls).validate_python(data)
    except ValidationError as e:
        err = e.errors()[0]
        loc, value = tuple(err["loc"]), err["input"]
        if err["type"] in ("unexpected_keyword_argument", "extra_forbidden"):
            under = ".".join(map(str, loc[:-1]))
            known = ", ".join(f.name for f in dataclasses.fields(_strip_optional(_type_at(cls, loc[:-1]))[0]))
            problem = f"unknown key; known keys{' under ' + under if under else ''}: {known}"
        elif err["type"].startswith("missing"):
            problem = "required but missing (`--help` lists the flags)"
        else:
            tp = _type_at(cls, loc)
            inner, _ = _strip_optional(tp)
            if typing.get_origin(inner) is Literal and value is not None:
                choices = ", ".join(map(str, typing.get_args(inner)))
                problem = f"{value!r} is not a choice; choose one of: {choices}"
            else:
                problem = f"expected {_type_name(tp)}, got {'null' if value is None else repr(value)}"
        raise UserError(f"{name('.'.join(map(str, loc)))}: {problem}") from None


def to_dict(obj: Any) -> Any:
    """A dataclass tree -> plain dicts/lists/strings (field order kept)."""
    from pydantic import TypeAdapter

    return TypeAdapter(type(obj)).dump_python(obj, mode="json")


def same_named(cls: type[T], options: Any, **values: Any) -> T:
    """`cls(**values)`, each other field of `cls` taken from the `options` attribute of the same name
    (a command's Options -> the library config it drives); fields `options` lacks keep their defaults."""
    for f in dataclasses.fields(cls):  # type: ignore[arg-type]
        if f.init and f.name not in values and hasattr(options, f.name):
            values[f.name] = getattr(options, f.name)
    return cls(**values)


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
def _flag_fields(cls: type, prefix: str = "") -> list[tuple[str, Any, dataclasses.Field]]:
    """(dotted name, type, field) for every field reachable through nested dataclasses."""
    out: list[tuple[str, Any, dataclasses.Field]] = []
    hints = _hints(cls)
    for f in dataclasses.fields(cls):
        tp, _ = _strip_optional(hints[f.name])
        if dataclasses.is_dataclass(tp):
            out += _flag_fields(tp, f"{prefix}{f.name}.")  # type: ignore[arg-type]
        else:
            out.append((f"{prefix}{f.name}", hints[f.name], f))
    return out


def _is_item_list(tp: Any) -> bool:
    """A list of dataclasses (train's stages): its items' fields are flags by index or by name."""
    tp, _ = _strip_optional(tp)
    return typing.get_origin(tp) is list and dataclasses.is_dataclass(
        _strip_optional(typing.get_args(tp)[0])[0]
    )


def add_config_flags(parser: argparse.ArgumentParser, cls: type) -> None:
    """Register `--dotted.name VALUE` for every field of `cls` (values parsed later by `flag_overrides`),
    and `--list.N.field` / `--list.NAME.field` for one field of one item of a list of dataclasses."""
    fields = _flag_fields(cls)
    lists = [name for name, tp, _ in fields if _is_item_list(tp)]
    # a bool flag alone means true; `--flag false` works too unless positionals follow (`--json PROMPT`)
    bool_takes_value = not any(f.metadata.get("positional") for _, _, f in fields)

    for name, tp, f in fields:
        meta = f.metadata
        kind = _type_name(tp)
        if f.default not in (dataclasses.MISSING, None, False) and "default" not in meta.get("help", ""):
            kind += f"; default {f.default}"
        if name in lists:
            kind += f"; or one item's field: --{name}.INDEX.FIELD or --{name}.NAME.FIELD"
        help_text = f"{meta['help']} ({kind})" if meta.get("help") else kind
        dest = FLAG_DEST_PREFIX + name
        if meta.get("positional"):
            many = typing.get_origin(_strip_optional(tp)[0]) is list
            parser.add_argument(dest, nargs="+" if many else None, metavar=name, help=help_text)
            continue
        spellings = [f"--{name.replace('_', '-')}", *meta.get("flags", ())]
        extra: dict[str, Any] = {"metavar": meta.get("metavar") or name.split(".")[-1].upper()}
        if meta.get("repeat"):
            extra["action"] = "append"
        elif _strip_optional(tp)[0] is bool:
            extra = (
                {"nargs": "?", "const": "true", "metavar": "true|false"}
                if bool_takes_value
                else {"action": "store_const", "const": "true"}
            )
        parser.add_argument(*spellings, dest=dest, default=argparse.SUPPRESS, help=help_text, **extra)
        if "_" in name:  # the key's own spelling works too
            parser.add_argument(
                f"--{name}", dest=dest, default=argparse.SUPPRESS, help=argparse.SUPPRESS, **extra
            )
    if not lists:
        return
    parse_known_args = parser.parse_known_args

    def parse_args(args=None, namespace=None):
        """argparse, then the item flags it cannot know (item names come from the config file)."""
        ns, rest = parse_known_args(args, namespace)
        while rest:
            flag, _, value = rest.pop(0).partition("=")
            if not any(flag.replace("-", "_").startswith(f"__{n}.") for n in lists):
                parser.error(f"unrecognized arguments: {flag}")
            if not value:  # a bool item field alone means true
                value = rest.pop(0) if rest and not rest[0].startswith("--") else "true"
            setattr(ns, FLAG_DEST_PREFIX + flag[2:], value)
        return ns

    parser.parse_args = parse_args  # type: ignore[method-assign,assignment]


def flag_overrides(args: argparse.Namespace) -> dict[str, Any]:
    """The config flags actually given on the command line: dotted name -> raw string."""
    n = len(FLAG_DEST_PREFIX)
    return {dest[n:]: value for dest, value in vars(args).items() if dest.startswith(FLAG_DEST_PREFIX)}


def _set_dotted(data: dict[str, Any], cls: type, dotted: str, raw: str | list[str]) -> None:
    """Put a raw flag string into the nested mapping at `dotted`, parsing it by the field's type (the
    strings of a positional list or a repeated flag are the list's items)."""
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
                node[name] = raw if isinstance(raw, list) else _parse_flag_value(raw, field_tp)
                return
            if not isinstance(node.get(name), dict | list):
                node[name] = _default_value(tp, name, field_tp)  # start from the field's default
            node, tp = node[name], field_tp
        elif typing.get_origin(tp) is list:
            names = [item.get("name") if isinstance(item, dict) else None for item in node]
            if not part.isdigit() and part not in names:
                raise UserError(
                    f"--{dotted}: {'.'.join(parts[:i])} has no item named {part!r} "
                    f"(names: {', '.join(map(str, names))}; or give the item's index)"
                )
            idx = int(part) if part.isdigit() else names.index(part)
            (item_tp,) = typing.get_args(tp)
            if idx > len(node):
                raise UserError(
                    f"--{dotted}: {'.'.join(parts[:i])} has {len(node)} items; index {idx} would leave a gap "
                    f"(use index {len(node)} to add one)"
                )
            if idx == len(node):
                node.append({})
            if last:
                node[idx] = raw if isinstance(raw, list) else _parse_flag_value(raw, item_tp)
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


def _underscored(tp: Any, value: Any) -> Any:
    """A file's keys as field names: `max-batch-size` is `max_batch_size`, as on the command line."""
    tp, _ = _strip_optional(tp)
    if dataclasses.is_dataclass(tp) and isinstance(value, Mapping):
        hints = _hints(tp)  # type: ignore[arg-type]
        out = {str(k).replace("-", "_"): v for k, v in value.items()}
        return {k: _underscored(hints[k], v) if k in hints else v for k, v in out.items()}
    if typing.get_origin(tp) is list and isinstance(value, list):
        return [_underscored(typing.get_args(tp)[0], v) for v in value]
    return value


def load_config(
    cls: type[T],
    path: str | Path | None = None,
    overrides: Mapping[str, Any] | None = None,
    base: Mapping[str, Any] | None = None,
) -> T:
    """YAML file (optional) + dotted flag overrides (`flag_overrides`) -> a `cls` instance.

    Errors name the file and line of a value the file set, else the flag."""
    data: dict[str, Any] = dict(base or {})
    lines: dict[str, int] = {}
    source = "config"
    if path is not None:
        file_data, lines = read_yaml(path)
        data.update(file_data)
        source = str(path)
    data = _underscored(cls, data)
    lines = {k.replace("-", "_"): v for k, v in lines.items()}
    for dotted, raw in (overrides or {}).items():
        _set_dotted(data, cls, dotted, raw)
    flags = [d.replace("-", "_") for d in overrides or {}]

    def name(key: str) -> str:
        flag = next((d for d in flags if key == d or key.startswith(d + ".")), None)
        if flag is None and key in lines:
            return f"{source}:{lines[key]}: key '{key}'"
        return "--" + (flag or key).replace("_", "-")  # every key is also a flag

    return _build(cls, data, name)

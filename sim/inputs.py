"""Loading and validating user files (scenarios, case files, sweeps) with clear errors.

Every problem with a user's file becomes an :class:`InputError` naming the file, the key
path inside it and the problem. The CLI prints it and exits with status 2, with no
traceback. Validation is strict: unknown keys and wrong types are errors, never ignored.
"""

from __future__ import annotations

import re
from collections.abc import Sequence
from pathlib import Path
from typing import Any, TypeVar

import yaml
from pydantic import BaseModel, ConfigDict, ValidationError


class InputError(Exception):
    """A problem with a user's input: which file, where in it, and what is wrong."""

    def __init__(self, file: str | Path, keypath: str, problem: str) -> None:
        self.file = str(file)
        self.keypath = keypath
        self.problem = problem
        where = f"{self.file}: {keypath}" if keypath else self.file
        super().__init__(f"{where}: {problem}")


class StrictModel(BaseModel):
    """Base for every schema: unknown keys are errors, and no silent type coercion."""

    model_config = ConfigDict(extra="forbid", strict=True, frozen=True)


def format_keypath(loc: Sequence[int | str]) -> str:
    """``("servers", 2, "port", 0)`` -> ``servers[2].port[0]``."""
    out = ""
    for part in loc:
        if isinstance(part, int):
            out += f"[{part}]"
        else:
            out += f".{part}" if out else str(part)
    return out


class _StrictLoader(yaml.SafeLoader):
    """``safe_load`` that refuses duplicate keys: PyYAML keeps the last one silently,
    so a key typed twice would otherwise lose a value without a word."""


def _construct_unique_mapping(
    loader: _StrictLoader, node: yaml.MappingNode, deep: bool = False
) -> Any:
    seen: set[Any] = set()
    for key_node, _ in node.value:
        key = loader.construct_object(key_node, deep=deep)
        try:
            duplicate = key in seen
            seen.add(key)
        except TypeError:  # an unhashable key; the schema rejects it later
            continue
        if duplicate:
            raise yaml.constructor.ConstructorError(
                None, None, f"duplicate key {key!r}", key_node.start_mark
            )
    return yaml.SafeLoader.construct_mapping(loader, node, deep)


_StrictLoader.add_constructor(
    yaml.resolver.BaseResolver.DEFAULT_MAPPING_TAG, _construct_unique_mapping
)


def load_yaml(path: str | Path) -> Any:
    """Read a YAML file with ``safe_load``; a missing file or bad YAML is an InputError."""
    p = Path(path)
    try:
        text = p.read_text(encoding="utf-8")
    except FileNotFoundError:
        raise InputError(p, "", "file not found") from None
    except IsADirectoryError:
        raise InputError(p, "", "is a directory, not a file") from None
    except (OSError, UnicodeDecodeError) as exc:
        raise InputError(p, "", f"cannot be read: {exc}") from None
    try:
        return yaml.load(text, Loader=_StrictLoader)  # a SafeLoader subclass: safe
    except yaml.YAMLError as exc:
        mark = getattr(exc, "problem_mark", None)
        where = f"line {mark.line + 1}, column {mark.column + 1}" if mark is not None else ""
        problem = getattr(exc, "problem", None) or str(exc)
        raise InputError(p, where, f"invalid YAML: {problem}") from None


M = TypeVar("M", bound=BaseModel)


def _describe(err: dict[str, Any]) -> str:
    kind = err.get("type", "")
    if kind == "extra_forbidden":
        return "unknown key"
    if kind == "missing":
        return "required key is missing"
    msg = str(err.get("msg", "invalid value"))
    msg = msg.removeprefix("Value error, ")
    if "input" in err and kind not in {"model_type", "dict_type"}:
        return f"{msg} (got {err['input']!r})"
    return msg


def validate(model: type[M], data: Any, file: str | Path, prefix: Sequence[int | str] = ()) -> M:
    """Validate ``data`` against ``model``; the first problem becomes an InputError.

    All problems are listed in the message, the first one names the key path.
    """
    if data is None:
        data = {}
    try:
        return model.model_validate(data)
    except ValidationError as exc:
        errors = exc.errors()
        first = errors[0]
        keypath = format_keypath([*prefix, *first["loc"]])
        problem = _describe(dict(first))
        if len(errors) > 1:
            more = "; ".join(
                f"{format_keypath([*prefix, *e['loc']]) or '(top level)'}: {_describe(dict(e))}"
                for e in errors[1:6]
            )
            extra = f" (and {len(errors) - 6} more)" if len(errors) > 6 else ""
            problem = f"{problem}; also {more}{extra}"
        raise InputError(file, keypath or "(top level)", problem) from None


# -- key paths into a document (--set, sweep axes) ------------------------------------
_PATH_PART = re.compile(r"([^.\[\]]+)|\[(\d+)\]")


def split_keypath(keypath: str) -> list[str | int]:
    """``guests[0].vcpus`` or ``guests.0.vcpus`` -> ``["guests", 0, "vcpus"]``."""
    parts: list[str | int] = []
    pos = 0
    for m in _PATH_PART.finditer(keypath):
        between = keypath[pos : m.start()]
        if between not in ("", "."):
            raise ValueError(f"cannot parse key path {keypath!r}")
        pos = m.end()
        if m.group(2) is not None:
            parts.append(int(m.group(2)))
        else:
            name = m.group(1)
            parts.append(int(name) if name.isdigit() else name)
    if not parts or pos != len(keypath):
        raise ValueError(f"cannot parse key path {keypath!r}")
    return parts


def set_keypath(data: dict[str, Any], keypath: str, value: Any, source: str) -> None:
    """Set ``value`` at ``keypath`` in raw scenario data, creating mappings as needed.

    The schema decides afterwards whether the key exists; indexing past the end of a
    list, or into a scalar, is an error here.
    """
    try:
        parts = split_keypath(keypath)
    except ValueError as exc:
        raise InputError(source, keypath, str(exc)) from None
    node: Any = data
    for depth, part in enumerate(parts[:-1]):
        here = ".".join(str(p) for p in parts[: depth + 1])
        if isinstance(part, int):
            if not isinstance(node, list) or part >= len(node):
                raise InputError(source, keypath, f"{here}: no such list item")
            node = node[part]
        else:
            if not isinstance(node, dict):
                raise InputError(source, keypath, f"{here}: not a mapping")
            node = node.setdefault(part, {})
    last = parts[-1]
    if isinstance(last, int):
        if not isinstance(node, list) or last >= len(node):
            raise InputError(source, keypath, "no such list item")
        node[last] = value
    else:
        if not isinstance(node, dict):
            raise InputError(source, keypath, "parent is not a mapping")
        node[last] = value


def parse_override(text: str) -> tuple[str, Any]:
    """``KEY.PATH=VALUE`` with VALUE read as a YAML scalar or flow collection."""
    if "=" not in text:
        raise InputError("--set", text, "expected KEY.PATH=VALUE")
    key, _, raw = text.partition("=")
    try:
        value = yaml.safe_load(raw) if raw.strip() else None
    except yaml.YAMLError as exc:
        raise InputError("--set", key, f"value {raw!r} is not valid YAML: {exc}") from None
    return key.strip(), value

"""Loading and validating user files (scenarios, case files, sweeps) with clear errors.

Every problem with a user's file becomes an :class:`InputError` naming the file, the key
path inside it and the problem, in one line of at most :data:`MAX_MESSAGE` characters that
never echoes more than :data:`MAX_ECHO` characters of a user's value. The CLI prints it
and exits with status 2, with no traceback. Validation is strict: unknown keys and wrong
types are errors, never ignored.

Every file goes through one loader, :func:`load_yaml` (and :func:`parse_yaml` for
``--set`` values): a regular file of at most :data:`MAX_FILE_BYTES`, safe YAML only, no
duplicate keys, nesting at most :data:`MAX_DEPTH` levels deep (also through aliases) and
aliases that expand to at most :data:`MAX_ALIAS_NODES` extra nodes, so that neither a
deep document nor an alias bomb can exhaust the stack or the memory.

Every number of every schema has a finite range: :func:`bounded` makes such a type and
records why the range is what it is (:class:`Reason`); ``tests/test_bounds.py`` walks the
schemas and fails for a number without both bounds. nan and infinity are never numbers.
"""

from __future__ import annotations

import math
import re
import reprlib
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Annotated, Any, TypeVar

import yaml
from pydantic import BaseModel, ConfigDict, Field, TypeAdapter, ValidationError

#: At most this many characters of a user's value appear in a message.
MAX_ECHO = 200
#: A whole message (file, key path and problem) is one line of at most this many characters.
MAX_MESSAGE = 300
#: Input files (YAML) larger than this are refused before they are read: the shipped ones
#: are a few KiB, and a file this size already takes PyYAML seconds to parse.
MAX_FILE_BYTES = 4 << 20
#: YAML nesting deeper than this is refused (a scenario needs about 8 levels). PyYAML
#: composes recursively, so without a limit a deep document ends in a RecursionError.
MAX_DEPTH = 32
#: Aliases may add at most this many nodes to a document once expanded (a
#: "billion laughs" document adds billions, and would be printed whole in a message).
MAX_ALIAS_NODES = 10_000


class InputError(Exception):
    """A problem with a user's input: which file, where in it, and what is wrong.

    The message is always one line of at most :data:`MAX_MESSAGE` characters: control
    characters and line breaks become spaces, and a long key path or problem is cut.
    """

    def __init__(self, file: str | Path, keypath: str, problem: str) -> None:
        self.file = one_line(str(file), 120)
        self.keypath = one_line(keypath, 100)
        where = f"{self.file}: {self.keypath}" if self.keypath else self.file
        self.problem = one_line(problem, max(MAX_MESSAGE - len(where) - 2, 60))
        super().__init__(f"{where}: {self.problem}")


class OutputError(InputError):
    """An output location that cannot be used (not a directory, read-only, disk full)."""


#: What may break a line or a terminal: C0 and C1 controls (U+0085 is a line break to
#: str.splitlines()), and Unicode's line and paragraph separators.
_CONTROL = re.compile(r"[\x00-\x1f\x7f-\x9f\u2028\u2029]+")


def is_one_line(text: str) -> bool:
    """Whether ``text`` holds no control character or line break."""
    return _CONTROL.search(text) is None


def one_line(text: str, limit: int) -> str:
    """``text`` on one line of at most ``limit`` characters. A long one is cut in the
    middle (`` ... ``): a message opens with what is wrong and ends with what to do."""
    text = _CONTROL.sub(" ", text)
    if len(text) <= limit:
        return text
    head = (limit - 5) * 2 // 3
    return text[:head] + " ... " + text[len(text) - (limit - 5 - head) :]


_ECHO = reprlib.Repr()
_ECHO.maxstring = MAX_ECHO
_ECHO.maxother = MAX_ECHO
_ECHO.maxlong = 60
_ECHO.maxlevel = 3


def echo(value: Any) -> str:
    """A user's value for a message: its repr, cut to :data:`MAX_ECHO` characters, built
    without ever rendering a huge value whole."""
    return one_line(_ECHO.repr(value), MAX_ECHO)


class StrictModel(BaseModel):
    """Base for every schema: unknown keys are errors, no silent type coercion, and a
    float is never nan or infinite."""

    model_config = ConfigDict(extra="forbid", strict=True, frozen=True, allow_inf_nan=False)


@dataclass(frozen=True)
class Reason:
    """Why a number's range is what it is (metadata of a :func:`bounded` type)."""

    text: str


def bounded(kind: type, low: float, high: float, why: str, *, above_low: bool = False) -> Any:
    """An ``int`` or ``float`` type limited to ``[low, high]`` (``(low, high]`` with
    ``above_low``), with the reason for its range; never nan or infinite."""
    if not (math.isfinite(low) and math.isfinite(high) and low <= high):
        raise ValueError(f"a bounded type needs finite low <= high, got {low}, {high}")
    lower = Field(gt=low) if above_low else Field(ge=low)
    return Annotated[kind, lower, Field(le=high), Reason(why)]  # type: ignore[valid-type]


def format_keypath(loc: Sequence[int | str]) -> str:
    """``("servers", 2, "port", 0)`` -> ``servers[2].port[0]``."""
    out = ""
    for part in loc:
        if isinstance(part, int):
            out += f"[{part}]"
        else:
            out += f".{part}" if out else str(part)
    return out


# -- the one YAML loader ----------------------------------------------------------------
#: libyaml's parser and composer when PyYAML was built with it (15 times faster); it
#: refuses nesting beyond 1000 levels itself, so its composer cannot exhaust the stack.
_Base: Any = yaml.CSafeLoader if getattr(yaml, "__with_libyaml__", False) else yaml.SafeLoader


def _check_expansion(root: yaml.Node) -> None:
    """Refuse a document nested deeper than MAX_DEPTH, or whose aliases expand it too
    far or refer to themselves. Aliases make the composed nodes a graph: each node is
    measured once, and a node met again counts with its whole height and size."""
    height: dict[int, int] = {}
    size: dict[int, int] = {}
    on_path: set[int] = set()
    distinct: set[int] = set()

    def refuse(problem: str, node: yaml.Node) -> None:
        raise yaml.composer.ComposerError(None, None, problem, node.start_mark)

    def visit(node: yaml.Node, depth: int) -> tuple[int, int]:
        key = id(node)
        if key in on_path:
            refuse("an alias refers to a node that contains it", node)
        if key in height:
            if depth + height[key] - 1 > MAX_DEPTH:
                refuse(f"aliases nest it deeper than {MAX_DEPTH} levels", node)
            return height[key], size[key]
        if depth > MAX_DEPTH:
            refuse(f"nested deeper than {MAX_DEPTH} levels", node)
        distinct.add(key)
        children: list[yaml.Node] = []
        if isinstance(node, yaml.SequenceNode):
            children = node.value
        elif isinstance(node, yaml.MappingNode):
            children = [n for pair in node.value for n in pair]
        on_path.add(key)
        h, s = 1, 1
        for child in children:
            ch, cs = visit(child, depth + 1)
            h, s = max(h, ch + 1), s + cs
            if s > len(distinct) + MAX_ALIAS_NODES:
                refuse(f"aliases expand it by more than {MAX_ALIAS_NODES} nodes", child)
        on_path.discard(key)
        height[key], size[key] = h, s
        return h, s

    visit(root, 1)


def _construct_unique_mapping(loader: Any, node: yaml.MappingNode, deep: bool = False) -> Any:
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
                None, None, f"duplicate key {echo(key)}", key_node.start_mark
            )
    return yaml.SafeLoader.construct_mapping(loader, node, deep)


def _strict_loader(base: Any) -> Any:
    """The strict loader on ``base`` (libyaml's or PyYAML's pure-Python parser)."""

    class StrictLoader(base):  # type: ignore[misc,valid-type]
        """``safe_load`` that refuses duplicate keys (PyYAML keeps the last one silently, so
        a key typed twice would otherwise lose a value without a word), deep nesting and
        alias expansion beyond a budget, all checked before a single object is built."""

        def compose_node(self, parent: Any, index: Any) -> Any:
            # The pure-Python composer recurses: stop it before Python's stack does. (libyaml
            # composes in C, never calling this; the graph is checked below either way.)
            self._depth = getattr(self, "_depth", 0) + 1
            try:
                if self._depth > MAX_DEPTH:
                    raise yaml.composer.ComposerError(
                        None,
                        None,
                        f"nested deeper than {MAX_DEPTH} levels",
                        self.peek_event().start_mark,
                    )
                return super().compose_node(parent, index)
            finally:
                self._depth -= 1

        def get_single_data(self) -> Any:
            node = self.get_single_node()
            if node is None:
                return None
            _check_expansion(node)
            return self.construct_document(node)

    StrictLoader.add_constructor(
        yaml.resolver.BaseResolver.DEFAULT_MAPPING_TAG, _construct_unique_mapping
    )
    return StrictLoader


_StrictLoader = _strict_loader(_Base)
#: The same on PyYAML's pure-Python parser (the fallback without libyaml; tests use both).
_PurePythonLoader = _strict_loader(yaml.SafeLoader)


def parse_yaml(text: str, source: str | Path, keypath: str = "") -> Any:
    """YAML text through the strict loader; any problem is one line naming ``source``."""
    try:
        return yaml.load(text, Loader=_StrictLoader)  # a SafeLoader subclass: safe
    except yaml.YAMLError as exc:
        mark = getattr(exc, "problem_mark", None)
        where = f"line {mark.line + 1}, column {mark.column + 1}" if mark is not None else ""
        parts = [getattr(exc, "context", None), getattr(exc, "problem", None)]
        problem = ": ".join(p for p in parts if p) or str(exc)
        raise InputError(source, keypath or where, f"invalid YAML: {problem}") from None
    except (ValueError, OverflowError, RecursionError, MemoryError) as exc:
        # Python refuses to read an int of more than 4300 digits (int_max_str_digits).
        problem = "a number has over 4300 digits" if "digits" in str(exc) else str(exc)
        raise InputError(source, keypath, f"invalid YAML value: {problem}") from None


def read_input_text(path: Path, limit: int = MAX_FILE_BYTES) -> str:
    """The text of a user's regular file of at most ``limit`` bytes, as UTF-8.

    A FIFO or a device would block or never end, so only regular files are read."""
    try:
        st = path.stat()
    except FileNotFoundError:
        raise InputError(path, "", "file not found") from None
    except (OSError, ValueError) as exc:  # ValueError: a NUL byte in the path
        raise InputError(
            path, "", f"cannot be read: {getattr(exc, 'strerror', None) or exc}"
        ) from None
    if path.is_dir():
        raise InputError(path, "", "is a directory, not a file")
    if not path.is_file():
        raise InputError(path, "", "is not a regular file")
    if st.st_size > limit:
        raise InputError(path, "", f"is {st.st_size} bytes; input files are limited to {limit}")
    try:
        with path.open("rb") as fh:
            data = fh.read(limit + 1)
    except OSError as exc:
        raise InputError(path, "", f"cannot be read: {exc.strerror or exc}") from None
    if len(data) > limit:
        raise InputError(path, "", f"is over {limit} bytes; input files are limited to that")
    try:
        return data.decode("utf-8")
    except UnicodeDecodeError as exc:
        raise InputError(path, "", f"is not UTF-8 text (byte {exc.start})") from None


def user_path(base: Path, text: str, file: str | Path, keypath: str) -> Path:
    """A path a user wrote (``base``-relative), resolved; a NUL byte or a symbolic-link
    loop is an InputError naming ``file`` and ``keypath``, not a ValueError."""
    if "\x00" in text:
        raise InputError(file, keypath, "a path cannot hold a NUL byte")
    try:
        return (base / text).resolve()
    except (OSError, RuntimeError, ValueError) as exc:
        raise InputError(file, keypath, f"{echo(text)} is not a usable path: {exc}") from None


def load_yaml(path: str | Path) -> Any:
    """Read a YAML file through the strict loader; every problem is an InputError."""
    p = Path(path)
    return parse_yaml(read_input_text(p), p)


# -- validation -----------------------------------------------------------------------
M = TypeVar("M", bound=BaseModel)

_SCALARS = (str, int, float, bool, type(None))
_BOUND_ERRORS = {
    "greater_than",
    "greater_than_equal",
    "less_than",
    "less_than_equal",
    "finite_number",
}


def _describe(err: dict[str, Any]) -> str:
    kind = err.get("type", "")
    if kind == "extra_forbidden":
        return "unknown key"
    if kind == "missing":
        return "required key is missing"
    msg = str(err.get("msg", "invalid value"))
    msg = msg.removeprefix("Value error, ")
    # Only a scalar is echoed: a cross-field error's input is the whole mapping.
    if "input" in err and isinstance(err["input"], _SCALARS):
        return f"{msg} (got {echo(err['input'])})"
    return msg


def _reasons(model: type[BaseModel]) -> dict[str, set[str]]:
    """Field name -> the reasons of its range, over every model reachable from ``model``."""
    found: dict[str, set[str]] = {}
    seen: set[type] = set()

    def walk(tp: Any) -> None:
        if isinstance(tp, type) and issubclass(tp, BaseModel):
            if tp in seen:
                return
            seen.add(tp)
            for name, field in tp.model_fields.items():
                for meta in _all_metadata(field.annotation, field.metadata):
                    if isinstance(meta, Reason):
                        found.setdefault(name, set()).add(meta.text)
                for arg in (field.annotation, *_type_args(field.annotation)):
                    walk(arg)

    walk(model)
    return found


def _type_args(tp: Any) -> list[Any]:
    """Every type inside ``tp`` (union members, list items, an Annotated's inner type)."""
    out = []
    for arg in getattr(tp, "__args__", ()) or ():
        out.append(arg)
        out.extend(_type_args(arg))
    return out


def _all_metadata(tp: Any, metadata: list[Any]) -> list[Any]:
    out = list(metadata)
    stack = [tp]
    while stack:
        t = stack.pop()
        out.extend(getattr(t, "__metadata__", ()) or ())
        stack.extend(getattr(t, "__args__", ()) or ())
    return out


def validate(model: type[M], data: Any, file: str | Path, prefix: Sequence[int | str] = ()) -> M:
    """Validate ``data`` against ``model``; the first problem becomes an InputError.

    All problems are listed in the message (cut to one line), the first one names the
    key path; a number out of its range also says why the range is what it is.
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
        names = [p for p in first["loc"] if isinstance(p, str)]
        if first.get("type") in _BOUND_ERRORS and names:
            reasons = _reasons(model).get(names[-1], set())
            if len(reasons) == 1:
                problem += f": {next(iter(reasons))}"
        if len(errors) > 1:
            more = "; ".join(
                f"{format_keypath([*prefix, *e['loc']]) or '(top level)'}: {_describe(dict(e))}"
                for e in errors[1:6]
            )
            extra = f" (and {len(errors) - 6} more)" if len(errors) > 6 else ""
            problem = f"{problem}; also {more}{extra}"
        raise InputError(file, keypath or "(top level)", problem) from None


def validate_value(tp: Any, value: Any, source: str, keypath: str) -> Any:
    """Check one value (a command-line flag) against a schema type, strictly."""
    try:
        return TypeAdapter(tp).validate_python(value, strict=True)
    except ValidationError as exc:
        first = exc.errors()[0]
        problem = _describe(dict(first))
        for meta in _all_metadata(tp, []):
            if isinstance(meta, Reason) and first.get("type") in _BOUND_ERRORS:
                problem += f": {meta.text}"
        raise InputError(source, keypath, problem) from None


# -- key paths into a document (--set, sweep axes) ------------------------------------
_PATH_PART = re.compile(r"([^.\[\]]+)|\[(\d+)\]")


def split_keypath(keypath: str) -> list[str | int]:
    """``guests[0].vcpus`` or ``guests.0.vcpus`` -> ``["guests", 0, "vcpus"]``."""
    parts: list[str | int] = []
    pos = 0
    for m in _PATH_PART.finditer(keypath):
        between = keypath[pos : m.start()]
        if between not in ("", "."):
            raise ValueError(f"cannot parse key path {echo(keypath)}")
        pos = m.end()
        if m.group(2) is not None:
            parts.append(int(m.group(2)))
        else:
            name = m.group(1)
            parts.append(int(name) if name.isdigit() else name)
    if not parts or pos != len(keypath):
        raise ValueError(f"cannot parse key path {echo(keypath)}")
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
    """``KEY.PATH=VALUE`` with VALUE read as YAML (a scalar or a flow collection)."""
    if "=" not in text:
        raise InputError("--set", echo(text), "expected KEY.PATH=VALUE")
    key, _, raw = text.partition("=")
    key = key.strip()
    if not raw.strip():
        return key, None
    try:
        return key, parse_yaml(raw, "--set", key)
    except InputError as exc:
        raise InputError("--set", key, f"value {echo(raw)} is {exc.problem}") from None

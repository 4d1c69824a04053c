"""YAML and JSON from files that kvm-manager does not control (ConfigMaps, Secrets, records on
shared volumes), parsed within bounds, so that no document makes a start slow, large or crash.
Pure.

A document may not nest deeper than MAX_DEPTH (Python's parsers recurse, and so does json.dumps
after them), nor hold more than MAX_NODES values or MAX_CHARS characters, counting what each
YAML alias repeats: a "billion laughs" document is small, but what it stands for is not. Safe
loading only (no Python tags), and a key given twice is an error, not the last one's win."""

from __future__ import annotations

import json
from collections.abc import Collection, Mapping
from typing import Any

import yaml

from kvmmgr.errors import short

MAX_DEPTH = 64  # nested collections: no configuration needs more
MAX_NODES = 100_000  # scalars and collections, each alias counted as what it repeats
MAX_CHARS = 16 << 20  # characters of scalars, likewise
_MERGE = "tag:yaml.org,2002:merge"
TEXT_OR_NULL = (str, type(None))  # a field's kinds, for fields()


class Invalid(Exception):
    """What is wrong with a document, in one line, and its line in the document if known."""

    def __init__(self, problem: str, line: int | None = None) -> None:
        self.problem = " ".join(problem.split())
        self.line = line
        super().__init__(self.problem)

    @property
    def at(self) -> str:
        """` line N`, for the message, when the line is known."""
        return f" line {self.line}" if self.line is not None else ""


class _UniqueKeys(yaml.constructor.SafeConstructor):
    """Safe construction that refuses a key given twice in a mapping (PyYAML keeps the last,
    silently: the reader of the file may have seen the first)."""

    def construct_mapping(self, node: yaml.MappingNode, deep: bool = False) -> dict[Any, Any]:
        seen: set[Any] = set()
        for key_node, _ in node.value:
            if not isinstance(key_node, yaml.ScalarNode) or key_node.tag == _MERGE:
                continue  # merged keys may be overridden; other keys are checked when built
            key = self.construct_object(key_node)
            try:
                twice = key in seen
                seen.add(key)
            except TypeError:
                continue  # unhashable (!!set, say): construction below says so
            if twice:
                raise yaml.constructor.ConstructorError(
                    None, None, f"key {short(key)} given twice", key_node.start_mark
                )
        return super().construct_mapping(node, deep)


class _PythonLoader(_UniqueKeys, yaml.SafeLoader):
    """PyYAML's own parser, where libyaml is missing."""


LOADER: type[yaml.SafeLoader] | type[yaml.CSafeLoader] = _PythonLoader
if yaml.__with_libyaml__:

    class _LibyamlLoader(_UniqueKeys, yaml.CSafeLoader):
        """libyaml's parser (PyYAML's wheels have it): ten to twenty times quicker."""

    LOADER = _LibyamlLoader


def load_yaml(data: bytes) -> Any:
    """The one document in `data` (None when there is none)."""
    try:
        _check_events(data)
        return yaml.load(data, Loader=LOADER)  # a safe loader
    except yaml.MarkedYAMLError as exc:
        mark = exc.problem_mark
        raise Invalid(exc.problem or str(exc), mark.line + 1 if mark else None) from None
    except yaml.reader.ReaderError as exc:
        raise Invalid(f"unacceptable character at byte {exc.position}: {exc.reason}") from None
    except yaml.YAMLError as exc:
        raise Invalid(str(exc)) from None
    except (ValueError, OverflowError) as exc:  # a constructor's: 2024-02-30, 10k digits
        raise Invalid(f"a value that cannot be read: {str(exc).split(';')[0]}") from None


def _check_events(data: bytes) -> None:
    """Walk the document's events (the parser keeps a stack, it does not recurse) and refuse
    it as soon as it nests too deep or expands too far; nothing is built yet."""
    frames: list[tuple[str | None, int, int]] = []  # per open collection: anchor, totals at start
    sizes: dict[str, tuple[int, int]] = {}  # anchor -> (values, characters) it stands for
    nodes = chars = 0
    for event in yaml.parse(data, Loader=LOADER):
        line = event.start_mark.line + 1 if event.start_mark else None
        if isinstance(event, yaml.CollectionStartEvent):
            if len(frames) >= MAX_DEPTH:
                raise Invalid(f"nests deeper than {MAX_DEPTH} levels", line)
            frames.append((event.anchor, nodes, chars))
            nodes += 1
        elif isinstance(event, yaml.CollectionEndEvent):
            anchor, nodes_then, chars_then = frames.pop()
            if anchor is not None:
                sizes[anchor] = (nodes - nodes_then, chars - chars_then)
        elif isinstance(event, yaml.ScalarEvent):
            nodes, chars = nodes + 1, chars + len(event.value)
            if event.anchor is not None:
                sizes[event.anchor] = (1, len(event.value))
        elif isinstance(event, yaml.AliasEvent):
            if any(anchor == event.anchor for anchor, _, _ in frames):
                raise Invalid(f"alias *{event.anchor} inside its own anchor: it never ends", line)
            more_nodes, more_chars = sizes.get(event.anchor or "", (1, 0))
            nodes, chars = nodes + more_nodes, chars + more_chars
        if nodes > MAX_NODES or chars > MAX_CHARS:
            raise Invalid(
                f"more than {MAX_NODES} values or {MAX_CHARS >> 20} Mi characters, "
                "each alias counted as what it repeats",
                line,
            )


def load_json(data: bytes) -> Any:
    """The JSON value in `data`: strict JSON (no NaN or Infinity), each key once."""
    # Every value but the first follows a comma or opens a collection: an upper bound of the
    # values, counted before json builds them all.
    if data.count(b",") + data.count(b"[") + data.count(b"{") >= MAX_NODES:
        raise Invalid(f"more than {MAX_NODES} values (counting its commas and brackets)")
    try:
        value = json.loads(data, object_pairs_hook=_unique_pairs, parse_constant=_no_constant)
    except RecursionError:
        raise Invalid(f"nests deeper than {MAX_DEPTH} levels") from None
    except json.JSONDecodeError as exc:
        raise Invalid(exc.msg, exc.lineno) from None
    except ValueError as exc:  # not UTF-8; a number of more than 4300 digits
        raise Invalid(str(exc).split(";")[0]) from None
    _check_depth(value)
    return value


def _unique_pairs(pairs: list[tuple[str, Any]]) -> dict[str, Any]:
    found: dict[str, Any] = {}
    for key, value in pairs:
        if key in found:
            raise Invalid(f"key {short(key)} given twice")
        found[key] = value
    return found


def _no_constant(name: str) -> Any:
    raise Invalid(f"{name} is not JSON")


def _check_depth(value: Any) -> None:
    pending = [(value, 1)]
    while pending:
        item, depth = pending.pop()
        if not isinstance(item, dict | list):
            continue
        if depth > MAX_DEPTH:
            raise Invalid(f"nests deeper than {MAX_DEPTH} levels")
        children = item.values() if isinstance(item, dict) else item
        pending += [(child, depth + 1) for child in children]


def fields(
    value: Any, kinds: Mapping[str, type | tuple[type, ...]], optional: Collection[str] = ()
) -> dict[str, Any]:
    """The keys of `kinds` in the JSON object `value`, each of its kind exactly (true is no
    number here; type(None) for null). Other keys are left out: a newer kvm-manager's."""
    if not isinstance(value, dict):
        raise Invalid(f"{short(value)} where an object was expected")
    found = {}
    for key, kind in kinds.items():
        if key not in value:
            if key in optional:
                continue
            raise Invalid(f"no {key}")
        allowed = kind if isinstance(kind, tuple) else (kind,)
        if type(value[key]) not in allowed:
            names = " or ".join("null" if t is type(None) else t.__name__ for t in allowed)
            raise Invalid(f"{key} is {short(value[key])}: expected {names}")
        found[key] = value[key]
    return found

"""Reading a configuration document: YAML or JSON bytes -> a validated :class:`Document`.

Decoding is structural first (msgspec, against the Struct tree of :mod:`gateway.config.model`), then
semantic (:func:`gateway.config.validate.validate`).  Every error is one line ``path: message`` where
``path`` is written like ``apis[3].backend.timeout_ms`` (no ``$.``), or ``(document)`` for the
document as a whole.  msgspec stops at the first structural error; to report more at once, a failed
document is decoded again section by section and list item by list item, so one run names the first
error of every broken item.  Semantic errors are all reported.
"""
from __future__ import annotations

import functools
import json
import os
import re
import types
from typing import Annotated, Any, Literal, Union, get_args, get_origin

import msgspec
import yaml

from .model import (
    CALLABLE_PATTERN,
    HOST_HEADER_PATTERN,
    HOSTNAME_PATTERN,
    NAME_PATTERN,
    PATH_PATTERN,
    VARIABLE_PATTERN,
    Document,
)
from .validate import validate

__all__ = ["ConfigError", "load_document", "parse_document"]


class ConfigError(Exception):
    """A configuration document that cannot be served.

    ``errors`` holds one ``"path: message"`` line per problem; ``str(exc)`` is those lines joined by
    newlines.  ``source`` is the file name when the document was read from a file."""

    def __init__(self, errors: list[str] | str, *, source: str | None = None):
        self.errors: list[str] = [errors] if isinstance(errors, str) else list(errors)
        self.source = source
        super().__init__("\n".join(self.errors))

    def __str__(self) -> str:
        return "\n".join(self.errors)


class _SyntaxError(ConfigError):
    """The bytes are not JSON (or YAML) at all: lets the suffix-less loader try the other format."""


# --------------------------------------------------------------------------------------------------
# Decoders: built once per process.  msgspec caches the decoding plan of a Struct type on the type,
# so ``msgspec.convert(obj, Document)`` for YAML reuses it as the JSON decoder does.

_JSON_DECODER = msgspec.json.Decoder(Document)
_RAW_JSON_DECODER = msgspec.json.Decoder()

_YamlBase = getattr(yaml, "CSafeLoader", yaml.SafeLoader)


class _YamlLoader(_YamlBase):  # type: ignore[misc, valid-type]
    """The safe YAML loader (C when available) that also refuses duplicate mapping keys, which
    PyYAML would otherwise resolve silently to the last one (``timeout_ms`` written twice)."""

    def construct_mapping(self, node: yaml.Node, deep: bool = False) -> dict[Any, Any]:
        if isinstance(node, yaml.MappingNode):
            seen: set[Any] = set()
            for key_node, _ in node.value:
                if key_node.tag == "tag:yaml.org,2002:merge":
                    continue  # '<<' merges are meant to be overridden by the keys beside them
                key = self.construct_object(key_node, deep=True)
                try:
                    duplicate = key in seen
                    seen.add(key)
                except TypeError:
                    continue  # unhashable: the base constructor reports it
                if duplicate:
                    raise yaml.constructor.ConstructorError(
                        "while constructing a mapping", node.start_mark,
                        f"found duplicate key {key!r}", key_node.start_mark)
        return super().construct_mapping(node, deep=deep)


# --------------------------------------------------------------------------------------------------
# Public API

def load_document(path: str | os.PathLike[str], data: bytes | None = None,
                  checked: bool = False) -> Document:
    """Read, decode and validate the document in file ``path``.

    ``.yaml``/``.yml`` are YAML, ``.json`` is JSON; any other suffix is tried as JSON, then YAML.
    ``data``: the file's contents, when the caller has read them already.  ``checked``: these
    very bytes were validated already (the gateway's master validates before its workers
    load): they are only decoded.
    Raises :class:`ConfigError` (also when the file cannot be read)."""
    name = os.fspath(path)
    if data is None:
        try:
            with open(name, "rb") as f:
                data = f.read()
        except OSError as exc:
            raise ConfigError(f"(document): cannot read {name}: {exc.strerror or exc}",
                              source=name) from exc
    suffix = os.path.splitext(name)[1].lower()
    try:
        if suffix in (".yaml", ".yml"):
            return parse_document(data, "yaml", checked)
        if suffix == ".json":
            return parse_document(data, "json", checked)
        try:
            return parse_document(data, "json", checked)
        except _SyntaxError:
            return parse_document(data, "yaml", checked)
    except ConfigError as exc:
        exc.source = name
        raise
    except (ValueError, RecursionError) as exc:
        # (what the decoders let through: invalid UTF-8 or an integer out of range met by the
        # second decode of a document the first refused, a nesting too deep for any decoder)
        problem = "nested too deeply" if isinstance(exc, RecursionError) else exc
        raise ConfigError(f"(document): cannot be decoded: {problem}", source=name) from None


def parse_document(data: str | bytes, fmt: str = "yaml", checked: bool = False) -> Document:
    """Decode and validate a document given as text or bytes in ``fmt`` ``"yaml"`` or ``"json"``
    (``checked``: validated already, only decoded).

    Raises :class:`ConfigError` listing the problems."""
    if fmt == "json":
        doc = _decode_json(data)
    elif fmt == "yaml":
        doc = _convert(_load_yaml(data))
    else:
        raise ValueError(f"unknown document format {fmt!r} (expected 'yaml' or 'json')")
    if checked:
        return doc
    errors = validate(doc)
    if errors:
        raise ConfigError(errors)
    return doc


# --------------------------------------------------------------------------------------------------
# Syntax

_EMPTY = "(document): empty"


def _decode_json(data: str | bytes) -> Document:
    if not (data.strip() if isinstance(data, (str, bytes)) else data):
        raise _SyntaxError(_EMPTY)
    try:
        return _JSON_DECODER.decode(data)
    except msgspec.ValidationError as exc:
        raw = _RAW_JSON_DECODER.decode(data)  # it decoded, so it is well-formed
        raise ConfigError(_structural_errors(raw, exc)) from None
    except msgspec.DecodeError as exc:
        raise _SyntaxError(f"(document): invalid JSON{_json_position(data, str(exc))}: "
                           f"{_json_problem(str(exc))}") from None


def _json_problem(message: str) -> str:
    message = re.sub(r"\s*\(byte \d+\)$", "", message)
    message = message.removeprefix("JSON is malformed: ")
    return message[:1].lower() + message[1:]


def _json_position(data: str | bytes, message: str) -> str:
    m = re.search(r"\(byte (\d+)\)$", message)
    if not m:
        return ""
    raw = data.encode() if isinstance(data, str) else data
    offset = int(m.group(1))
    before = raw[:offset]
    line = before.count(b"\n") + 1
    column = len(before) - (before.rfind(b"\n") + 1) + 1
    return f" at line {line}, column {column}"


def _load_yaml(data: str | bytes) -> Any:
    try:
        raw = yaml.load(data, Loader=_YamlLoader)  # noqa: S506 - a safe loader
    except yaml.MarkedYAMLError as exc:
        mark = exc.problem_mark or exc.context_mark
        where = f" at line {mark.line + 1}, column {mark.column + 1}" if mark else ""
        problem = ": ".join(filter(None, (exc.context, exc.problem))) or "invalid"
        raise _SyntaxError(f"(document): invalid YAML{where}: {_one_line(problem)}") from None
    except yaml.YAMLError as exc:  # ReaderError: bad encoding or control characters
        raise _SyntaxError(f"(document): invalid YAML: {_one_line(str(exc))}") from None
    if raw is None:
        raise _SyntaxError(_EMPTY)
    return raw


def _one_line(text: str) -> str:
    return " ".join(text.split())


# --------------------------------------------------------------------------------------------------
# Structure

def _convert(raw: Any) -> Document:
    try:
        return msgspec.convert(raw, Document)
    except msgspec.ValidationError as exc:
        raise ConfigError(_structural_errors(raw, exc)) from None


def _structural_errors(raw: Any, whole: msgspec.ValidationError) -> list[str]:
    """All the structural errors we can find: the first one of every section and list item."""
    if not isinstance(raw, dict):
        return [f"(document): the top level must be a mapping, got {_kind(raw)}"]
    errors: list[str] = []
    fields = _struct_fields(Document)
    for key, value in raw.items():
        if not isinstance(key, str):
            errors.append(f"(document): key {key!r}: expected str, got {type(key).__name__}")
            continue
        tp = fields.get(key)
        if tp is None:
            errors.append(f"{_key_display(key, first=True)}: unknown field")
            continue
        try:
            msgspec.convert(value, tp)
            continue
        except msgspec.ValidationError as exc:
            section_error = exc
        item_type = _item_type(tp)
        found: list[str] = []
        if item_type is not None and isinstance(value, list):
            for i, item in enumerate(value):
                try:
                    msgspec.convert(item, item_type)
                except msgspec.ValidationError as exc:
                    found.append(_map_error(exc, item, item_type, f"{key}[{i}]"))
        errors.extend(found or [_map_error(section_error, value, tp, key)])
    for name, _type in _required_fields(Document):
        if name not in raw:
            errors.append(f"{name}: missing required field")
    return errors or [_map_error(whole, raw, Document, "")]


def _kind(value: Any) -> str:
    if isinstance(value, list):
        return "a list"
    if isinstance(value, str):
        return "a string"
    if isinstance(value, bool):
        return "a boolean"
    if isinstance(value, (int, float)):
        return "a number"
    return type(value).__name__


# msgspec: "Expected `int`, got `str` - at `$.apis[0].backend.timeout_ms`"
#          "Expected `str` - at `key` in `$.groups[0].variables`"
_AT = re.compile(r" - at `(?:(key)` in `)?\$([^`]*)`$")
_SEGMENT = re.compile(r"\.([^.\[]+)|\[(\d+)\]|(\[\.\.\.\])")
_ANY_KEY = object()

_PATTERN_TEXT = {
    NAME_PATTERN: "a name: a letter, then up to 63 letters, digits, '_', '-' or '.'",
    VARIABLE_PATTERN: "a variable name: 3-32 characters, a letter, then letters, digits, '_' or '-'",
    HOSTNAME_PATTERN: "a lower-case host name without a port",
    CALLABLE_PATTERN: "a Python callable written 'package.module:function'",
    PATH_PATTERN: "a path starting with '/'",
    HOST_HEADER_PATTERN: "a host name, optionally with ':port'",
}


def _map_error(exc: msgspec.ValidationError, raw: Any, tp: Any, prefix: str) -> str:
    """``exc`` raised converting ``raw`` to ``tp`` -> ``"prefix.path: message"``."""
    text = str(exc)
    m = _AT.search(text)
    message, is_key, rest = (text[:m.start()], m.group(1), m.group(2)) if m else (text, None, "")
    segments: list[Any] = []
    for fld, index, any_key in _SEGMENT.findall(rest):
        segments.append(fld if fld else int(index) if index else _ANY_KEY)

    # walk the raw data along the path, naming the dict keys msgspec leaves as [...]
    path = prefix
    node, node_type = raw, tp
    for pos, seg in enumerate(segments):
        child_type = _step(node_type, seg)
        if seg is _ANY_KEY:
            key = _find_key(node, child_type, message, is_key, rest, pos, segments)
            if key is _ANY_KEY:
                path += "[...]"
                node = None
            else:
                path += _key_display(key, first=not path)
                node = node[key]
        elif isinstance(seg, int):
            path += f"[{seg}]"
            node = node[seg] if isinstance(node, list) and seg < len(node) else None
        else:
            path += _key_display(seg, first=not path)
            node = node.get(seg) if isinstance(node, dict) else None
        node_type = child_type

    if is_key:
        bad = next((k for k in node if not isinstance(k, str)), _ANY_KEY) \
            if isinstance(node, dict) else _ANY_KEY
        if bad is not _ANY_KEY:
            hint = " (YAML reads yes/no/on/off/true/false as booleans: quote it)" \
                if isinstance(bad, bool) else ""
            return (f"{path or '(document)'}: key {bad!r}: expected str, "
                    f"got {type(bad).__name__}{hint}")
        return f"{path or '(document)'}: invalid key: {_plain(message)}"

    m = re.fullmatch(r"Object contains unknown field `(.*)`", message)
    if m:
        return f"{path}{_key_display(m.group(1), first=not path)}: unknown field"
    m = re.fullmatch(r"Object missing required field `(.*)`", message)
    if m:
        return f"{path}{_key_display(m.group(1), first=not path)}: missing required field"
    m = re.fullmatch(r"Invalid (?:enum )?value (.*)", message)
    if m:
        if path == "version":
            return f"version: unsupported version {m.group(1)} (this gateway reads version 1)"
        allowed = _allowed_values(tp, segments)
        expected = f" (expected one of: {', '.join(map(str, allowed))})" if allowed else ""
        return f"{path or '(document)'}: invalid value {m.group(1)}{expected}"
    m = re.fullmatch(r"Expected `str` matching regex '(.*)'", message)
    if m and m.group(1) in _PATTERN_TEXT:
        return f"{path or '(document)'}: expected {_PATTERN_TEXT[m.group(1)]}"
    return f"{path or '(document)'}: {_plain(message)}"


def _plain(message: str) -> str:
    """msgspec's wording without its backticks: "Expected `int`, got `str`" -> "expected int, got str"."""
    message = message.replace("`", "")
    return message[:1].lower() + message[1:]


def _find_key(node: Any, value_type: Any, message: str, is_key: Any, rest: str, pos: int,
              segments: list[Any]) -> Any:
    """The key of dict ``node`` whose value fails the way msgspec reported (it writes ``[...]``)."""
    if not isinstance(node, dict) or value_type is None:
        return _ANY_KEY
    tail = "".join(("[...]" if s is _ANY_KEY else f"[{s}]" if isinstance(s, int) else f".{s}")
                   for s in segments[pos + 1:])
    for key, value in node.items():
        try:
            msgspec.convert(value, value_type)
        except msgspec.ValidationError as exc:
            m = _AT.search(str(exc))
            sub_message = str(exc)[:m.start()] if m else str(exc)
            sub_rest = m.group(2) if m else ""
            if sub_message == message and sub_rest == tail and bool(m and m.group(1)) == bool(is_key):
                return key
    return _ANY_KEY


_IDENTIFIER = re.compile(r"[A-Za-z_][A-Za-z0-9_-]*")


def _key_display(key: Any, first: bool) -> str:
    if isinstance(key, str) and _IDENTIFIER.fullmatch(key):
        return key if first else f".{key}"
    return f"[{json.dumps(key) if isinstance(key, str) else repr(key)}]"


# --------------------------------------------------------------------------------------------------
# Types along a path (to name the allowed values of an enumeration, and to resolve dict keys)

def _strip(tp: Any) -> Any:
    while get_origin(tp) is Annotated:
        tp = get_args(tp)[0]
    return tp


def _members(tp: Any) -> list[Any]:
    tp = _strip(tp)
    if get_origin(tp) in (Union, types.UnionType):
        return [_strip(a) for a in get_args(tp) if a is not type(None)]
    return [tp]


@functools.cache
def _struct_fields(cls: type) -> dict[str, Any]:
    return {f.encode_name: f.type for f in msgspec.structs.fields(cls)}


def _required_fields(cls: type) -> list[tuple[str, Any]]:
    return [(f.encode_name, f.type) for f in msgspec.structs.fields(cls)
            if f.default is msgspec.NODEFAULT and f.default_factory is msgspec.NODEFAULT]


def _is_struct(tp: Any) -> bool:
    return isinstance(tp, type) and issubclass(tp, msgspec.Struct)


def _item_type(tp: Any) -> Any:
    for m in _members(tp):
        if get_origin(m) in (tuple, list):
            return get_args(m)[0]
    return None


def _step(tp: Any, seg: Any) -> Any:
    if tp is None:
        return None
    for m in _members(tp):
        if seg is _ANY_KEY:
            if get_origin(m) is dict:
                return get_args(m)[1]
        elif isinstance(seg, int):
            if get_origin(m) in (tuple, list):
                return get_args(m)[0]
        elif _is_struct(m):
            found = _struct_fields(m).get(seg)
            if found is not None:
                return found
    return None


def _allowed_values(tp: Any, segments: list[Any]) -> tuple[Any, ...]:
    parent = tp
    for seg in segments[:-1]:
        parent = _step(parent, seg)
    if not segments or parent is None:
        return ()
    last = segments[-1]
    # a tagged union's tag ("type" of a rule destination)
    tags = [m.__struct_config__.tag for m in _members(parent)
            if _is_struct(m) and m.__struct_config__.tag_field == last]
    if tags:
        return tuple(tags)
    values: list[Any] = []
    for m in _members(_step(parent, last)):
        if get_origin(m) is Literal:
            values.extend(get_args(m))
    return tuple(values)

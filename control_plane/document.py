"""The configuration document as stored resources, and the validation of a candidate document.

The store keeps one body per resource (:mod:`control_plane.kinds`) and one settings document; the
gateway reads one :class:`~gateway.config.model.Document`.  :func:`split` and :func:`assemble` go
from one to the other (``assemble(*split(doc)) == doc``).

Every write is checked by building the whole candidate document and running the gateway's own
checks on it (:func:`check`): the structure (msgspec), :func:`gateway.config.validate.validate`,
and what only the snapshot compiler finds (``compile_snapshot(runtime=None)``).  The gateway names
a problem by its place in the document (``apis[3].backend.channel: unknown channel 'x'``); a
:class:`Problem` names it by resource: ``("apis", "<name of apis[3]>", "backend.channel",
"unknown channel 'x'")``.

A single body (a create, a replace, a patched body) is decoded by :func:`decode_body`, whose errors
are paths inside the body.  :func:`merge_patch` is JSON merge patch (RFC 7386).
"""
from __future__ import annotations

import re
from collections.abc import Iterable, Mapping
from typing import Any

import msgspec

from gateway.config import ConfigError, Document, parse_document, validate
from gateway.snapshot import compile_snapshot

from .kinds import (KINDS, SETTINGS, SETTINGS_FIELDS, SecretError, generate_secrets, keep_secrets,
                    kind, name_of, to_body)

__all__ = [
    "Problem", "DocumentError", "split", "assemble", "check", "locate", "with_resource",
    "decode_body", "normalize", "merge_patch", "create_body", "replace_body", "apply_patch",
]


class Problem(msgspec.Struct, frozen=True, kw_only=True):
    """One reason a document or a body cannot be served: the resource (``kind`` and ``name``;
    ``kind`` ``"settings"`` for the settings, None for the document as a whole), the field
    ``path`` inside it (``""`` for the resource itself) and the gateway's message."""

    kind: str | None
    name: str | None
    path: str
    message: str

    def __str__(self) -> str:
        where = "/".join(p for p in (self.kind, self.name) if p) or "(document)"
        return f"{where}: {self.path}: {self.message}" if self.path else f"{where}: {self.message}"


class DocumentError(ValueError):
    """A candidate document or body that cannot be served; ``problems`` says why, each with its
    resource and path."""

    def __init__(self, problems: list[Problem]):
        self.problems = problems
        super().__init__("\n".join(map(str, problems)))


# --------------------------------------------------------------------------------------------------
# Document <-> resources

def split(doc: Document) -> tuple[dict[str, Any], dict[str, list[dict[str, Any]]]]:
    """``(settings, {kind: [body, ...]})``: every kind present (empty lists too), bodies in
    document order, in JSON form with every field."""
    settings = {name: msgspec.json.decode(msgspec.json.encode(getattr(doc, name)))
                for name in SETTINGS_FIELDS}
    resources = {name: [to_body(item) for item in getattr(doc, name)] for name in KINDS}
    return settings, resources


def _raw(settings: Mapping[str, Any], resources: Mapping[str, Iterable[Mapping[str, Any]]]
         ) -> dict[str, Any]:
    unknown = set(resources) - set(KINDS)
    if unknown:
        raise KeyError(f"unknown kinds {sorted(unknown)}")
    raw = dict(settings)
    for name in KINDS:
        if name in resources:
            raw[name] = list(resources[name])
    return raw


def _structural_errors(raw: dict[str, Any]) -> list[str]:
    """The gateway loader's path-named errors for a document msgspec refused."""
    try:
        parse_document(msgspec.json.encode(raw), "json")
    except ConfigError as exc:
        return exc.errors
    return []  # pragma: no cover - (msgspec refused it, so the loader does too)


def assemble(settings: Mapping[str, Any],
             resources: Mapping[str, Iterable[Mapping[str, Any]]]) -> Document:
    """The document of ``settings`` and the bodies of each kind (in the order given).  Only the
    structure is checked here (:func:`check` does the rest); raises :class:`DocumentError`."""
    raw = _raw(settings, resources)
    try:
        return msgspec.convert(raw, Document)
    except msgspec.ValidationError:
        raise DocumentError([locate(line, raw) for line in _structural_errors(raw)]) from None


def check(settings: Mapping[str, Any], resources: Mapping[str, Iterable[Mapping[str, Any]]], *,
          compile: bool = True, base_dir: str = ".") -> Document:
    """The candidate document, checked as the gateway will: structure, semantic validation and,
    with ``compile``, the snapshot compiler (which reads certificate and CA files from
    ``base_dir``, and imports function backends and authorizers).  Raises
    :class:`DocumentError` with every problem found, each located by resource."""
    raw = _raw(settings, resources)
    try:
        doc = msgspec.convert(raw, Document)
    except msgspec.ValidationError:
        raise DocumentError([locate(line, raw) for line in _structural_errors(raw)]) from None
    errors = validate(doc)
    if not errors and compile:
        try:
            compile_snapshot(doc, runtime=None, base_dir=base_dir)
        except ConfigError as exc:
            errors = exc.errors
    if errors:
        raise DocumentError([locate(line, raw) for line in errors])
    return doc


# --------------------------------------------------------------------------------------------------
# Error lines -> resources

_STEP = r'(?:\[\d+\]|\[\.\.\.\]|\.[A-Za-z_][A-Za-z0-9_-]*|\["(?:[^"\\]|\\.)*"\])'
_LINE = re.compile(rf'(\(document\)|[A-Za-z_][A-Za-z0-9_]*{_STEP}*): (.*)', re.S)
_ITEM = re.compile(r"([a-z_]+)\[(\d+)\]")
_IN_MESSAGE = re.compile(rf"\b({'|'.join(KINDS)})\[(\d+)\]")


def _item_name(raw: Mapping[str, Any], kind_name: str, index: int) -> str | None:
    items = raw.get(kind_name)
    if isinstance(items, list) and index < len(items) and isinstance(items[index], Mapping):
        return name_of(kind_name, items[index])
    return None


def locate(line: str, raw: Mapping[str, Any]) -> Problem:
    """The gateway's ``"path: message"`` error line about document ``raw`` (plain data, the
    candidate) -> the :class:`Problem` of the resource it is about.  ``kind[i]`` in the message
    (another resource) is written ``kind/name``, the resource's address."""
    m = _LINE.fullmatch(line)
    if not m:
        return Problem(kind=None, name=None, path="", message=line)
    path, message = m.group(1), m.group(2)

    def address(found: re.Match[str]) -> str:
        name = _item_name(raw, found.group(1), int(found.group(2)))
        return f"{found.group(1)}/{name}" if name is not None else found.group(0)

    message = _IN_MESSAGE.sub(address, message)
    if path == "(document)":
        return Problem(kind=None, name=None, path="", message=message)
    head = re.match(r"[A-Za-z_][A-Za-z0-9_]*", path).group(0)
    if head in SETTINGS_FIELDS:
        return Problem(kind=SETTINGS, name=None, path=path, message=message)
    item = _ITEM.match(path)
    if head in KINDS and item:
        rest = path[item.end():].removeprefix(".")
        return Problem(kind=head, name=_item_name(raw, head, int(item.group(2))), path=rest,
                       message=message)
    # a kind's list as a whole ("apis: expected array") or an unknown top-level field
    return Problem(kind=head if head in KINDS else None, name=None,
                   path="" if head in KINDS else path, message=message)


def with_resource(resources: Mapping[str, list[Mapping[str, Any]]], kind_name: str,
                  name: str, body: Mapping[str, Any] | None) -> dict[str, list[Any]]:
    """A new mapping with resource ``kind_name``/``name`` replaced by ``body`` (in place: a
    rename keeps the position), appended when absent, or removed when ``body`` is None.  The
    other lists are shared, not copied."""
    kind(kind_name)
    out = dict(resources)
    items = list(out.get(kind_name, ()))
    index = next((i for i, item in enumerate(items) if name_of(kind_name, item) == name), None)
    if body is None:
        if index is not None:
            del items[index]
    elif index is None:
        items.append(body)
    else:
        items[index] = body
    out[kind_name] = items
    return out


# --------------------------------------------------------------------------------------------------
# One body

def decode_body(kind_name: str, body: Any) -> msgspec.Struct:
    """``body`` (plain data) as the kind's Struct; raises :class:`DocumentError` whose problems
    have paths inside the body (``backend.timeout_ms``), worded as the gateway's loader words
    them."""
    k = kind(kind_name)
    try:
        return msgspec.convert(body, k.struct)
    except msgspec.ValidationError:
        pass
    if not isinstance(body, Mapping):
        got = "a list" if isinstance(body, list) else type(body).__name__
        raise DocumentError([Problem(kind=kind_name, name=None, path="",
                                     message=f"expected an object, got {got}")]) from None
    if k.list_field is None:               # the settings: a document of their own
        raw: dict[str, Any] = dict(body)
        errors = _structural_errors(raw)
        problems = [Problem(kind=SETTINGS, name=None, path=p.path, message=p.message)
                    for p in (locate(e, raw) for e in errors)]
    else:
        raw = {"version": 1, k.list_field: [body]}
        problems = []
        for line in _structural_errors(raw):
            p = locate(line, raw)
            problems.append(Problem(kind=kind_name, name=name_of(kind_name, body),
                                    path=p.path, message=p.message))
    raise DocumentError(problems or [Problem(kind=kind_name, name=None, path="",
                                             message="invalid body")])


def normalize(kind_name: str, body: Any) -> dict[str, Any]:
    """The body decoded and written back in full JSON form (every field, defaults included);
    raises :class:`DocumentError`."""
    return to_body(decode_body(kind_name, body))


def merge_patch(target: Any, patch: Any) -> Any:
    """RFC 7386 JSON merge patch: ``patch`` applied to ``target`` (neither is changed)."""
    if not isinstance(patch, Mapping):
        return patch
    out = dict(target) if isinstance(target, Mapping) else {}
    for key, value in patch.items():
        if value is None:
            out.pop(key, None)
        else:
            out[key] = merge_patch(out.get(key), value)
    return out


def _prepare(kind_name: str, body: Any, stored: Mapping[str, Any] | None
             ) -> tuple[dict[str, Any], dict[str, str]]:
    if isinstance(body, Mapping):
        try:
            body = keep_secrets(kind_name, body, stored)
        except SecretError as exc:
            raise DocumentError([Problem(kind=kind_name, name=name_of(kind_name, body),
                                         path=exc.path, message=exc.message)]) from None
        body, generated = generate_secrets(kind_name, body)
    else:
        generated = {}
    return normalize(kind_name, body), generated


def create_body(kind_name: str, body: Any) -> tuple[dict[str, Any], dict[str, str]]:
    """The body a create stores, and the secrets generated for it (``{path: value}``, to show
    once): generated fields filled, decoded, normalized.  A ``"******"`` is refused (there is no
    stored secret for it to keep).  Raises :class:`DocumentError`."""
    return _prepare(kind_name, body, None)


def replace_body(kind_name: str, body: Any, stored: Mapping[str, Any]
                 ) -> tuple[dict[str, Any], dict[str, str]]:
    """The body a replace stores: the ``"******"`` sent back for a secret keeps the stored one; a
    generated field left out is generated again (and returned, to show once)."""
    return _prepare(kind_name, body, stored)


def apply_patch(kind_name: str, stored: Mapping[str, Any], patch: Any
                ) -> tuple[dict[str, Any], dict[str, str]]:
    """The body a PATCH makes of ``stored``: merged (RFC 7386), the ``"******"`` sent for secrets
    kept as stored, a generated field set to null generated again (a rotation), then decoded and
    normalized.  Raises :class:`DocumentError` (paths inside the body)."""
    return _prepare(kind_name, merge_patch(stored, patch), stored)

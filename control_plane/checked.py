"""The control plane's memory of the latest publish: what the next publish starts from.

A publish used to read the latest publish back from the store (decode of the whole stored
value), read every resource, and check the whole new document from scratch (decode, validation,
compile) -- seconds at 10,000 APIs.  :class:`LatestPublish` keeps, for the newest revision this
process published or read, the published state, the gateway document and its encoded answer to
gateways, and what its check made (the decoded document and its snapshot), so that the next
publish:

* takes the published state from memory when the store's latest revision is the one kept
  (another control plane on the same store published since: it is read from the store);
* decodes only the API entries that differ from the kept document's, validates only those on
  their own (:func:`gateway.config.validate` with ``previous``: the rules across APIs still run
  over all of them), and compiles with the kept snapshot as ``previous`` (unchanged APIs are
  taken from it); with anything but the APIs changed (settings, groups, policies...), every API
  is checked again;
* hands the gateways' endpoint the encoded document at once (not read back from the store).

Whatever the shortcut, a document with a problem is refused with the same located problems as
:func:`control_plane.document.check` (on a problem, the whole check runs again to name them).
"""
from __future__ import annotations

import dataclasses
from typing import Any

import msgspec

from gateway.config import ConfigError, Document, validate
from gateway.config.model import Api
from gateway.snapshot import Snapshot, compile_snapshot

from . import document as D

__all__ = ["Checked", "LatestPublish", "check"]


@dataclasses.dataclass
class Checked:
    """A gateway document that passed the check: its non-API sections encoded (``context``),
    its API entries with their decoded form by name, the decoded document and its snapshot."""

    context: bytes
    entries: dict[str, tuple[dict, Api]]
    doc: Document
    snapshot: Snapshot


@dataclasses.dataclass
class LatestPublish:
    """The newest publish this process knows (see the module's doc)."""

    revision: int
    published: dict[str, dict[str, dict]]
    document: dict
    checked: Checked | None = None
    entries: dict | None = None         # what publishing.gateway_apis may take (its ``into``)
    answer: bytes | None = None         # {"revision", "document"} encoded, for the gateways

    def encoded(self) -> bytes:
        if self.answer is None:
            self.answer = msgspec.json.encode({"revision": self.revision,
                                               "document": self.document})
        return self.answer


def check(settings: dict, resources: dict[str, list[dict]], apis: list[dict],
          previous: Checked | None) -> Checked:
    """Check the gateway document of ``settings``, ``resources`` (without ``apis``) and the
    API entries ``apis`` as :func:`control_plane.document.check` with ``compile=True`` does,
    reusing what ``previous`` (the last document checked) holds; raises
    :class:`~control_plane.document.DocumentError` (located problems)."""
    raw = D._raw(settings, {**resources, "apis": []})
    context = msgspec.json.encode(raw)
    if previous is not None and previous.context != context:
        previous = None         # (the APIs' own checks read the other sections)
    try:
        base = msgspec.convert(raw, Document)
        structs = []
        entries: dict[str, tuple[dict, Api]] = {}
        for entry in apis:
            kept = previous.entries.get(entry.get("name")) if previous is not None else None
            # (bodies are normalised when written: equal dicts decode to equal structs)
            if kept is not None and (kept[0] is entry or kept[0] == entry):
                struct = kept[1]
            else:
                struct = msgspec.convert(entry, Api)
            structs.append(struct)
            entries[struct.name] = (entry, struct)
    except msgspec.ValidationError as exc:
        _refuse(settings, resources, apis)      # (raises, naming each problem's resource)
        raise D.DocumentError([D.Problem(kind=None, name=None, path="", message=str(exc))]
                              ) from None       # pragma: no cover - (the whole check names it)
    doc = msgspec.structs.replace(base, apis=tuple(structs))
    errors = validate(doc, previous.doc if previous is not None else None)
    snapshot = None
    if not errors:
        try:
            snapshot = compile_snapshot(doc, runtime=None,
                                        previous=previous.snapshot if previous else None)
        except ConfigError as exc:
            errors = exc.errors
    if errors:
        full = {**raw, "apis": apis}
        raise D.DocumentError([D.locate(line, full) for line in errors])
    return Checked(context, entries, doc, snapshot)


def _refuse(settings: dict, resources: dict[str, list[dict]], apis: list[Any]) -> None:
    """The structural problems, located (the whole check names them)."""
    D.check(settings, {**resources, "apis": apis}, compile=False)

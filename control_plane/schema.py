"""OpenAPI 3.1 of the control plane's resources, generated from the Structs the server decodes with.

:func:`components` is the ``components.schemas`` of every kind, the settings, the whole document
and the envelopes, from ``msgspec.json.schema_components`` (so the schema is the model: a field
added to the model is in the schema).  Two adjustments say what the server accepts beyond one
Struct, both read from :mod:`control_plane.kinds`:

* a secret field also takes ``"******"`` (what every read returns, and what a replace or a patch
  sends back to keep the stored secret);
* a field the control plane generates when absent (a signature key's ``key`` and ``secret``, an
  IAM user's ``access_key`` and ``secret_key``) is not required.

:func:`openapi` is the whole document with the generic resource routes of every kind
(``/v1/{kind}`` list and create, ``/v1/{kind}/{name}`` get, replace, patch, delete), the
settings and the whole configuration; the REST app may add its own paths.
"""
from __future__ import annotations

from typing import Any

import msgspec

from gateway.config.model import Document

from .document import Problem
from .kinds import ALL_KINDS, KINDS, MASK, SETTINGS, Kind, steps

__all__ = ["ErrorBody", "components", "openapi", "page_name", "REF"]

REF = "#/components/schemas/{name}"


class ErrorBody(msgspec.Struct, kw_only=True):
    """Every error answer: a code (``TG.xxxx``), a message, the field path it is about (None when
    about no field) and, for a validation error, every problem found."""

    error_code: str
    error_msg: str
    path: str | None = None
    errors: list[Problem] = []


def page_name(kind_name: str) -> str:
    """The component name of a list page of a kind: ``ApiPage``."""
    return f"{KINDS[kind_name].struct.__name__}Page"


def _ref(name: str) -> dict[str, str]:
    return {"$ref": REF.format(name=name)}


def _deref(schemas: dict[str, Any], node: dict[str, Any]) -> dict[str, Any]:
    """The object schema behind ``node`` (``$ref``, or the non-null member of an ``anyOf``)."""
    while True:
        if "$ref" in node:
            node = schemas[node["$ref"].rsplit("/", 1)[1]]
        elif "anyOf" in node:
            node = next(m for m in node["anyOf"] if m.get("type") != "null")
        else:
            return node


def _containers(schemas: dict[str, Any], k: Kind, pattern: str) -> dict[str, Any]:
    """The object schema at ``pattern`` (a container pattern of kinds.py) in kind ``k``."""
    node = schemas[k.struct.__name__]
    for op, arg in steps(pattern) if pattern else []:
        node = _deref(schemas, node)
        node = node["properties"][arg] if op == "field" else node["items"]
    return _deref(schemas, node)


def _or_mask(schema: dict[str, Any]) -> dict[str, Any]:
    inner = {key: value for key, value in schema.items() if key != "default"}
    members = inner["anyOf"] if list(inner) == ["anyOf"] else [inner]
    out: dict[str, Any] = {"anyOf": [*members, {"const": MASK}]}
    if "default" in schema:
        out["default"] = schema["default"]
    return out


def components() -> dict[str, Any]:
    """``components.schemas``: every kind, ``Settings``, ``Document``, ``Problem``, ``Error`` and
    a ``<Struct>Page`` list envelope per kind."""
    structs = [*(k.struct for k in ALL_KINDS), Document, ErrorBody]
    _, schemas = msgspec.json.schema_components(structs, ref_template=REF)
    schemas = msgspec.json.decode(msgspec.json.encode(schemas))   # (JSON: tuple defaults -> [])
    schemas["Error"] = schemas.pop("ErrorBody")
    schemas["Error"]["title"] = "Error"
    for k in ALL_KINDS:
        for secret in k.secrets:
            if secret.style not in ("value", "items"):
                continue        # (urls, PEM and keys stay strings or objects when masked)
            holder = _containers(schemas, k, secret.container)
            prop = holder["properties"][secret.field]
            if secret.style == "items":
                prop = _deref(schemas, prop) if "anyOf" in prop else prop
                prop["items"] = _or_mask(prop["items"])
            else:
                holder["properties"][secret.field] = _or_mask(prop)
        for gen in k.generated:
            holder = _containers(schemas, k, gen.container)
            if gen.field in holder.get("required", []):
                holder["required"] = [f for f in holder["required"] if f != gen.field]
    for name, k in KINDS.items():
        schemas[page_name(name)] = {
            "title": page_name(name),
            "description": f"A page of {name}: the items from offset (at most limit), and how "
                           "many match in all.",
            "type": "object",
            "properties": {
                "items": {"type": "array", "items": _ref(k.struct.__name__)},
                "total": {"type": "integer", "minimum": 0},
                "offset": {"type": "integer", "minimum": 0},
                "limit": {"type": "integer", "minimum": 1},
            },
            "required": ["items", "total", "offset", "limit"],
            "additionalProperties": False,
        }
    return schemas


# --------------------------------------------------------------------------------------------------
# Paths

_JSON = "application/json"
_ERRORS = {"400": "malformed request", "401": "no valid token", "403": "a read-only token",
           "404": "no such resource", "409": "a reference problem (the users of a resource, or a "
           "name that exists)", "412": "If-Match does not match the current revision",
           "422": "the document would not be valid (every problem, with its path)"}


def _body(name: str) -> dict[str, Any]:
    return {"content": {_JSON: {"schema": _ref(name)}}}


def _answer(description: str, name: str | None = None) -> dict[str, Any]:
    out: dict[str, Any] = {"description": description}
    if name is not None:
        out.update(_body(name))
    return out


def _errors(*codes: str) -> dict[str, Any]:
    return {code: _answer(_ERRORS[code], "Error") for code in ("400", "401", "403", *codes)}


_NAME = {"name": "name", "in": "path", "required": True, "schema": {"type": "string"}}
_IF_MATCH = {"name": "If-Match", "in": "header", "required": False, "schema": {"type": "string"},
             "description": "the ETag of the revision the change is based on"}
_MERGE = {"content": {"application/merge-patch+json": {"schema": {"type": "object"}},
                      _JSON: {"schema": {"type": "object"}}}}


def _paths() -> dict[str, Any]:
    paths: dict[str, Any] = {}
    for name, k in KINDS.items():
        schema = k.struct.__name__
        filters = [{"name": f, "in": "query", "required": False, "schema": {"type": "string"}}
                   for f in k.filters]
        paths[f"/v1/{name}"] = {
            "get": {"operationId": f"list_{name}", "summary": f"List {name}",
                    "parameters": [
                        {"name": "offset", "in": "query", "required": False,
                         "schema": {"type": "integer", "minimum": 0, "default": 0}},
                        {"name": "limit", "in": "query", "required": False,
                         "schema": {"type": "integer", "minimum": 1, "maximum": 500,
                                    "default": 100}},
                        *filters,
                        {"name": "name_prefix", "in": "query", "required": False,
                         "schema": {"type": "string"}}],
                    "responses": {"200": _answer("a page (secrets masked)", page_name(name)),
                                  **_errors()}},
            "post": {"operationId": f"create_{name}", "summary": f"Create one of {name}",
                     "requestBody": {"required": True, **_body(schema)},
                     "responses": {"201": _answer("created: generated secrets shown this once",
                                                  schema), **_errors("409", "422")}},
        }
        paths[f"/v1/{name}/{{name}}"] = {
            "parameters": [_NAME],
            "get": {"operationId": f"get_{name}", "summary": f"Get one of {name}",
                    "responses": {"200": _answer("the resource (secrets masked)", schema),
                                  **_errors("404")}},
            "put": {"operationId": f"replace_{name}", "summary": f"Replace one of {name}",
                    "parameters": [_IF_MATCH], "requestBody": {"required": True, **_body(schema)},
                    "responses": {"200": _answer("replaced (secrets masked)", schema),
                                  **_errors("404", "409", "412", "422")}},
            "patch": {"operationId": f"patch_{name}", "summary": f"Patch one of {name} "
                      "(JSON merge patch)", "parameters": [_IF_MATCH],
                      "requestBody": {"required": True, **_MERGE},
                      "responses": {"200": _answer("patched (secrets masked)", schema),
                                    **_errors("404", "409", "412", "422")}},
            "delete": {"operationId": f"delete_{name}", "summary": f"Delete one of {name}",
                       "parameters": [_IF_MATCH],
                       "responses": {"204": _answer("deleted"),
                                     **_errors("404", "409", "412")}},
        }
    paths[f"/v1/{SETTINGS}"] = {
        "get": {"operationId": "get_settings", "summary": "The settings",
                "responses": {"200": _answer("the settings (secrets masked)", "Settings"),
                              **_errors()}},
        "put": {"operationId": "replace_settings", "summary": "Replace the settings",
                "parameters": [_IF_MATCH], "requestBody": {"required": True, **_body("Settings")},
                "responses": {"200": _answer("replaced", "Settings"),
                              **_errors("412", "422")}},
        "patch": {"operationId": "patch_settings", "summary": "Patch the settings",
                  "parameters": [_IF_MATCH], "requestBody": {"required": True, **_MERGE},
                  "responses": {"200": _answer("patched", "Settings"),
                                **_errors("412", "422")}},
    }
    paths["/v1/config"] = {
        "get": {"operationId": "export_config", "summary": "The whole document (secrets masked)",
                "responses": {"200": _answer("the document", "Document"), **_errors()}},
        "put": {"operationId": "replace_config", "summary": "Replace the whole document "
                "(validated completely before anything changes)",
                "requestBody": {"required": True, **_body("Document")},
                "responses": {"200": _answer("replaced", "Document"),
                              **_errors("409", "412", "422")}},
    }
    return paths


def openapi(*, title: str = "Tollgate control plane", version: str = "1",
            extra_paths: dict[str, Any] | None = None) -> dict[str, Any]:
    """The OpenAPI 3.1 document: the generic resource routes, ``extra_paths`` (the app's own), the
    components and bearer-token security on every operation."""
    return {
        "openapi": "3.1.0",
        "info": {"title": title, "version": version},
        "paths": {**_paths(), **(extra_paths or {})},
        "components": {
            "schemas": components(),
            "securitySchemes": {"bearer": {"type": "http", "scheme": "bearer"}},
        },
        "security": [{"bearer": []}],
    }

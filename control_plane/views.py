"""Views over parts of a resource: a group's environment variables and a channel's members.

ROMA manages environment variables and channel members as things of their own; here they are
fields of their group (``variables``) and channel (``members``).  These routes read and change
those fields in place, so a script can set one environment's variables or add one member
without sending the whole group or channel -- and without racing another writer's change of
another field.  A change goes through the same path as a ``PUT`` of the resource (checks,
If-Match, audit as a ``replace``); there is no second storage.

* ``GET /v1/groups/{name}/variables`` -> ``{env: {variable: value}}``;
  ``GET`` / ``PUT`` / ``DELETE /v1/groups/{name}/variables/{env}`` (``PUT`` replaces that
  environment's variables with the object sent).
* ``GET /v1/channels/{name}/members`` -> ``{"items": [member...]}``; ``POST`` adds one member
  (409 when a member with that host and port exists); ``DELETE
  /v1/channels/{name}/members/{host}?port=N`` removes the member(s) on that host (and port).

Answers carry the resource's new ``ETag``.
"""
from __future__ import annotations

import copy
from typing import Any, Callable

from starlette.requests import Request
from starlette.responses import Response

from . import document as D
from .app import (MAX_BODY, ApiError, _check_refs, _check_write, _if_match, _int_param, _invalid,
                  _json, _published_still_valid, _read_json, _resource_headers, _stale)
from .store import NotFound

__all__ = ["routes", "openapi_paths"]


async def _read(st, kind_name: str, name: str):
    record = await st.get(kind_name, name)
    if record is None:
        raise NotFound(kind_name, name)
    return record


async def _edit(request: Request, token, st, kind_name: str,
                change: Callable[[dict], None]):
    """Change the stored body of ``kind_name`` ``{name}`` in place with ``change`` (which may
    raise an :class:`ApiError`), then store it as a ``PUT`` of the whole body would."""
    name = request.path_params["name"]
    if_revision = _if_match(request)
    async with st.transaction() as tx:
        stored = await _read(tx, kind_name, name)
        _stale(if_revision, stored.revision)
        raw = copy.deepcopy(stored.body)
        change(raw)
        try:
            body, _ = D.replace_body(kind_name, raw, stored.body)
        except D.DocumentError as exc:
            raise _invalid(exc) from None
        await _check_refs(tx, kind_name, body)
        await _check_write(tx, kind_name, name, body, name, stored.body)
        await _published_still_valid(request, tx, kind_name, name, body)
        return await tx.replace(kind_name, name, body, token.name, if_revision=if_revision)


# ------------------------------------------------------------------------ environment variables

async def _all_variables(request: Request, token, st) -> Response:
    record = await _read(st, "groups", request.path_params["name"])
    return _json(200, record.body.get("variables") or {}, _resource_headers("groups", record))


async def _env_variables(request: Request, token, st) -> Response:
    record = await _read(st, "groups", request.path_params["name"])
    env = request.path_params["env"]
    variables = (record.body.get("variables") or {}).get(env)
    if variables is None:
        raise ApiError(404, "TG.0404", f"groups {record.name!r} has no variables in {env!r}")
    return _json(200, variables, _resource_headers("groups", record))


async def _put_env_variables(request: Request, token, st) -> Response:
    env = request.path_params["env"]
    values = await _read_json(request, MAX_BODY)
    if not isinstance(values, dict):
        raise ApiError(422, "TG.0422", f"variables.{env}: an object of variable names and values",
                       path=f"variables.{env}")

    def change(body: dict) -> None:
        body.setdefault("variables", {})[env] = values
    record = await _edit(request, token, st, "groups", change)
    return _json(200, record.body["variables"][env], _resource_headers("groups", record))


async def _delete_env_variables(request: Request, token, st) -> Response:
    env = request.path_params["env"]

    def change(body: dict) -> None:
        if env not in (body.get("variables") or {}):
            raise ApiError(404, "TG.0404",
                           f"groups {body['name']!r} has no variables in {env!r}")
        del body["variables"][env]
    record = await _edit(request, token, st, "groups", change)
    return Response(status_code=204, headers=_resource_headers("groups", record))


# ----------------------------------------------------------------------------- channel members

def _members_page(record) -> dict:
    return {"items": list(record.body.get("members") or ())}


async def _list_members(request: Request, token, st) -> Response:
    record = await _read(st, "channels", request.path_params["name"])
    return _json(200, _members_page(record), _resource_headers("channels", record))


async def _add_member(request: Request, token, st) -> Response:
    member = await _read_json(request, MAX_BODY)
    if not isinstance(member, dict):
        raise ApiError(422, "TG.0422", "members: a member object {host, port, weight...}",
                       path="members")

    def change(body: dict) -> None:
        members = list(body.get("members") or ())
        same = [m for m in members if m.get("host") == member.get("host")
                and (m.get("port") or 0) == (member.get("port") or 0)]
        if same:
            raise ApiError(409, "TG.0409", f"channels {body['name']!r} has a member "
                           f"{member.get('host')}:{member.get('port') or 0} already",
                           path="members")
        body["members"] = members + [member]
    record = await _edit(request, token, st, "channels", change)
    return _json(201, _members_page(record), _resource_headers("channels", record))


async def _delete_member(request: Request, token, st) -> Response:
    host = request.path_params["host"]
    port = (_int_param(request, "port", 0, 0, 65535)
            if "port" in request.query_params else None)

    def change(body: dict) -> None:
        members = list(body.get("members") or ())
        kept = [m for m in members if not (
            m.get("host") == host and (port is None or (m.get("port") or 0) == port))]
        if len(kept) == len(members):
            where = host if port is None else f"{host}:{port}"
            raise ApiError(404, "TG.0404", f"channels {body['name']!r} has no member {where}")
        body["members"] = kept
    record = await _edit(request, token, st, "channels", change)
    return _json(200, _members_page(record), _resource_headers("channels", record))


def routes() -> list[tuple[str, dict[str, tuple[bool, Any]], dict]]:
    return [
        ("/v1/groups/{name}/variables", {"GET": (False, _all_variables)}, {}),
        ("/v1/groups/{name}/variables/{env}", {"GET": (False, _env_variables),
                                               "PUT": (True, _put_env_variables),
                                               "DELETE": (True, _delete_env_variables)}, {}),
        ("/v1/channels/{name}/members", {"GET": (False, _list_members),
                                         "POST": (True, _add_member)}, {}),
        ("/v1/channels/{name}/members/{host}", {"DELETE": (True, _delete_member)}, {}),
    ]


def openapi_paths() -> dict[str, Any]:
    from .schema import REF
    err = {"description": "error", "content": {"application/json": {"schema": {
        "$ref": REF.format(name="Error")}}}}
    errors = {c: err for c in ("400", "401", "403", "404")}
    changes = {**errors, "409": err, "412": err, "413": err, "422": err}

    def param(name: str, where: str = "path", **schema) -> dict:
        return {"name": name, "in": where, "required": where == "path",
                "schema": schema or {"type": "string"}}
    values = {"type": "object", "additionalProperties": {"type": "string"}}
    member = {"$ref": REF.format(name="Member")}
    members = {"type": "object", "required": ["items"],
               "properties": {"items": {"type": "array", "items": member}}}

    def answer(description: str, schema: dict) -> dict:
        return {"description": description,
                "content": {"application/json": {"schema": schema}}}
    return {
        "/v1/groups/{name}/variables": {
            "parameters": [param("name")],
            "get": {"operationId": "group_variables",
                    "summary": "A group's environment variables, per environment",
                    "responses": {"200": answer("{env: {variable: value}}", {
                        "type": "object", "additionalProperties": values}), **errors}}},
        "/v1/groups/{name}/variables/{env}": {
            "parameters": [param("name"), param("env")],
            "get": {"operationId": "group_env_variables",
                    "summary": "A group's variables in one environment",
                    "responses": {"200": answer("{variable: value}", values), **errors}},
            "put": {"operationId": "set_group_env_variables",
                    "summary": "Replace a group's variables in one environment",
                    "requestBody": {"required": True, "content": {"application/json": {
                        "schema": values}}},
                    "responses": {"200": answer("{variable: value}", values), **changes}},
            "delete": {"operationId": "delete_group_env_variables",
                       "summary": "Remove a group's variables in one environment",
                       "responses": {"204": {"description": "removed"}, **changes}}},
        "/v1/channels/{name}/members": {
            "parameters": [param("name")],
            "get": {"operationId": "channel_members", "summary": "A channel's members",
                    "responses": {"200": answer("the members", members), **errors}},
            "post": {"operationId": "add_channel_member",
                     "summary": "Add a member to a channel (409 when its host and port are "
                                "there already)",
                     "requestBody": {"required": True, "content": {"application/json": {
                         "schema": member}}},
                     "responses": {"201": answer("the members", members), **changes}}},
        "/v1/channels/{name}/members/{host}": {
            "parameters": [param("name"), param("host"),
                           param("port", "query", type="integer", minimum=0, maximum=65535)],
            "delete": {"operationId": "delete_channel_member",
                       "summary": "Remove the members on a host (and port, when given)",
                       "responses": {"200": answer("the members left", members), **changes}}},
    }

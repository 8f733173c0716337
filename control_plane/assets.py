"""Asset export and import: the integration assets of a control plane, without secrets or
instance data, to back up a control plane or to move its assets to another.

What is an asset (after ROMA Connect's asset files) -- the rest is instance data, never exported:

================  ==========================================================================
kind              in an asset file
================  ==========================================================================
groups            yes, without ``domains`` and ``variables`` (environment information)
channels          yes, without ``members`` (the servers' addresses; member groups stay)
authorizers       yes, a url without credentials (``user:password@``, secret query
                  parameters such as ``?token=``), without ``user_data`` (free text that
                  often holds a key: configured again after an import)
datasources       yes, the url reduced to its scheme (``postgresql://``: address and
                  credentials are instance data)
apps              yes, without ``key``, ``secret``, ``app_codes``, ``quota``, ``acl``
                  (new key and secret are generated at import)
products          yes (with their thing models: services and properties)
apis              the APIs **published in RELEASE** (the body live there), and the APIs an
                  import brought that have not been published in RELEASE since (their edited
                  body): without ``environments`` (bindings to policies, signature keys and
                  apps, other environments), backend url credentials, backend ``tls`` files
                  (``ca_file``, ``client_cert``, ``client_key``)
(not assets)      environments (RELEASE always exists), throttles, acls, app_quotas,
                  signature_keys, certificates, devices, rules, the settings (IAM, Redis,
                  trusted proxies), tokens, published versions
================  ==========================================================================

The file: ``{"format": "tollgate-assets", "version": 1, "assets": {kind: [body, ...]}}``, the
kinds in document order, the bodies sorted by name, every field written (defaults too), no
timestamp: exporting what an import into an empty control plane made gives the same file.

Import (``mode`` ``add``: names that exist are refused, 409 listing them; ``merge``: they are
replaced -- their asset fields by the file's, their instance data kept, e.g. an app keeps its
key, secret and AppCodes, a channel its members), an optional ``prefix`` put before every name
of the file and every reference to them.  Everything is checked before anything is written
(the file's shape, each body, that it holds no secret or instance data, the whole candidate
document as the gateway validates it), then written in one transaction.  Imported APIs are
stored, not published (their policies are not in the file): the answer lists, per resource,
what must be configured again -- and an API whose environment variables or channel members are
missing cannot be published until they exist (``publishing.needs``).
"""
from __future__ import annotations

import asyncio
from typing import Any

import msgspec
from starlette.requests import Request

from gateway.config.model import RELEASE

from . import document as D
from .app import (ApiError, MAX_CONFIG_BODY, _all_resources, _check, _invalid, _json, _read_json,
                  _settings)
from .kinds import KINDS, _query_secrets, _split_url, kind, name_of, steps
from .kinds import _walk  # noqa: F401  (the same path patterns as the references)
from .publishing import _published, diff, needs

__all__ = ["FORMAT", "VERSION", "ASSET_KINDS", "as_asset", "export", "import_assets",
           "forget_imported", "routes", "openapi_paths"]

FORMAT = "tollgate-assets"
VERSION = 1
#: the kinds an asset file holds, in document order
ASSET_KINDS: tuple[str, ...] = tuple(k for k in KINDS if k in (
    "groups", "channels", "authorizers", "datasources", "apps", "products", "apis"))
MODES = ("add", "merge")

#: the store record of the APIs an import brought and RELEASE has not published since
_IMPORTED = ("asset_imports", "apis")

#: per kind, the top-level fields that are instance data: left out of the file, kept by a merge
_INSTANCE_FIELDS: dict[str, tuple[str, ...]] = {
    "groups": ("domains", "variables"),
    "channels": ("members",),
    "authorizers": ("url", "user_data"),
    "datasources": ("url",),
    "apps": ("key", "secret", "app_codes", "quota", "acl"),
    "apis": ("environments",),
}


# --------------------------------------------------------------------------------------------------
# The asset form of a body

def _no_credentials(url: Any) -> Any:
    """``url`` without its credentials and its secret query parameters (``?token=...``)."""
    if not isinstance(url, str):
        return url
    parts = _split_url(url)
    if parts is not None:
        url = parts[0] + parts[2]
    for _name, start, end in reversed(_query_secrets(url)):
        cut_from = url.rfind("&", 0, start)
        cut_from = cut_from if cut_from >= 0 else url.find("?")
        url = url[:cut_from + 1] + url[end + 1:] if url[end:end + 1] == "&" else url[:cut_from] \
            + url[end:]
    return url


def _strip_backend(backend: dict) -> None:
    if backend.get("url") is not None:
        backend["url"] = _no_credentials(backend["url"])
    tls = backend.get("tls")
    if isinstance(tls, dict):
        for field in ("ca_file", "client_cert", "client_key"):
            tls.pop(field, None)


def as_asset(kind_name: str, body: dict) -> dict:
    """The asset form of a (normalized) body: its secrets and instance data left out."""
    out = msgspec.json.decode(msgspec.json.encode(body))
    if kind_name == "datasources":
        scheme = out["url"].partition("://")[0] if "://" in out["url"] else ""
        out["url"] = f"{scheme}://"
    elif kind_name == "authorizers":
        if out.get("url") is not None:
            out["url"] = _no_credentials(out["url"])
        out.pop("user_data", None)          # free text holding keys, often: a secret
    else:
        for field in _INSTANCE_FIELDS.get(kind_name, ()):
            out.pop(field, None)
    if kind_name == "apis":
        _strip_backend(out.get("backend") or {})
        for cb in out.get("conditional_backends") or ():
            _strip_backend(cb.get("backend") or {})
    return D.normalize(kind_name, out)


def _by_name(bodies: list[dict], kind_name: str) -> dict[str, dict]:
    return {name_of(kind_name, b): b for b in bodies}


async def _imported(st) -> list[str]:
    record = await st.get(*_IMPORTED)
    return list(record.body.get("names", ())) if record else []


async def _set_imported(tx, names: list[str], who: str) -> None:
    record = await tx.get(*_IMPORTED)
    body = {"names": sorted(set(names))}
    if record is None:
        if names:
            await tx.create(*_IMPORTED, body, who)
    elif record.body != body:
        await tx.replace(*_IMPORTED, body, who)


async def forget_imported(tx, apis: list[str], who: str = "system") -> None:
    """APIs published in RELEASE: they are assets as published from now on (publishing)."""
    names = await _imported(tx)
    if names and set(apis) & set(names):
        await _set_imported(tx, [n for n in names if n not in set(apis)], who)


# --------------------------------------------------------------------------------------------------
# Export

async def export(st) -> dict:
    """The asset file of the control plane on store ``st`` (one consistent view)."""
    async with st.transaction() as tx:
        resources = await _all_resources(tx)
        release = _published(await tx.latest_publish()).get(RELEASE, {})
        imported = await _imported(tx)
    apis = {name: entry["body"] for name, entry in release.items()}
    edited = _by_name(resources["apis"], "apis")
    for name in imported:
        if name in edited:
            apis[name] = edited[name]
    assets: dict[str, list[dict]] = {}
    for kind_name in ASSET_KINDS:
        bodies = list(apis.values()) if kind_name == "apis" else resources[kind_name]
        assets[kind_name] = sorted((as_asset(kind_name, b) for b in bodies),
                                   key=lambda b: name_of(kind_name, b))
    return {"format": FORMAT, "version": VERSION, "assets": assets}


# --------------------------------------------------------------------------------------------------
# Import

def _problem(kind_name: str | None, name: str | None, path: str, message: str) -> D.Problem:
    return D.Problem(kind=kind_name, name=name, path=path, message=message)


def _set_each(node: Any, tokens: list, fn) -> None:
    """Replace every string the path pattern reaches in ``node`` by ``fn(value)``."""
    if not tokens:
        return
    (op, arg), rest = tokens[0], tokens[1:]
    if op == "field" and isinstance(node, dict) and node.get(arg) is not None:
        if rest:
            _set_each(node[arg], rest, fn)
        elif isinstance(node[arg], str):
            node[arg] = fn(node[arg])
    elif op == "items" and isinstance(node, list):
        for i, item in enumerate(node):
            if rest:
                _set_each(item, rest, fn)
            elif isinstance(item, str):
                node[i] = fn(item)
    elif op == "values" and isinstance(node, dict):
        for value in node.values():
            _set_each(value, rest, fn)


def _prefixed(assets: dict[str, list[dict]], prefix: str) -> dict[str, list[dict]]:
    """Every name of the file, and every reference to a name of the file, with ``prefix``."""
    names = {k: {b.get("name") for b in bodies if isinstance(b, dict)}
             for k, bodies in assets.items()}
    out: dict[str, list[dict]] = {}
    for kind_name, bodies in assets.items():
        renamed = []
        for body in bodies:
            if not isinstance(body, dict):
                renamed.append(body)        # (refused with the others by _normalized)
                continue
            body = msgspec.json.decode(msgspec.json.encode(body))
            if isinstance(body.get("name"), str):
                body["name"] = prefix + body["name"]
            for ref in kind(kind_name).refs:
                if "{*}" in ref.path:       # environment names: not in asset files
                    continue
                targets = names.get(ref.kind, set())
                _set_each(body, steps(ref.path),
                          lambda v, t=targets: prefix + v if v in t else v)
            renamed.append(body)
        out[kind_name] = renamed
    return out


def _read_file(data: Any) -> tuple[dict[str, list[dict]], list[D.Problem]]:
    """The file's bodies per kind (normalized), and every problem of its shape and bodies."""
    problems: list[D.Problem] = []
    if not isinstance(data, dict):
        return {}, [_problem(None, None, "", "an asset file is an object {format, version, "
                                             "assets}")]
    for field in sorted(set(data) - {"format", "version", "assets"}):
        problems.append(_problem(None, None, field, "unknown field"))
    if data.get("format") != FORMAT:
        problems.append(_problem(None, None, "format", f"expected {FORMAT!r} (this is not a "
                                                       "Tollgate asset file)"))
    if data.get("version") != VERSION:
        problems.append(_problem(None, None, "version", f"expected {VERSION} (asset files of "
                                                        "this version)"))
    assets = data.get("assets")
    if not isinstance(assets, dict):
        problems.append(_problem(None, None, "assets", "expected an object {kind: [...]}"))
        return {}, problems
    out: dict[str, list[dict]] = {}
    for kind_name, bodies in assets.items():
        if kind_name not in ASSET_KINDS:
            problems.append(_problem(None, None, f"assets.{kind_name}",
                                     f"not a kind of asset (one of: {', '.join(ASSET_KINDS)})"))
            continue
        if not isinstance(bodies, list):
            problems.append(_problem(kind_name, None, "", "expected an array"))
            continue
        out[kind_name] = bodies
    return out, problems


def _normalized(assets: dict[str, list[Any]]) -> tuple[dict[str, list[dict]], list[D.Problem]]:
    problems: list[D.Problem] = []
    out: dict[str, list[dict]] = {}
    for kind_name, bodies in assets.items():
        seen: set[str] = set()
        out[kind_name] = []
        for body in bodies:
            try:
                normal = D.normalize(kind_name, body)
            except D.DocumentError as exc:
                problems += exc.problems
                continue
            name = name_of(kind_name, normal)
            if name in seen:
                problems.append(_problem(kind_name, name, "name", "twice in the file"))
                continue
            seen.add(name)
            extra = diff(as_asset(kind_name, normal), normal, kind_name)
            for d in extra:
                problems.append(_problem(kind_name, name, d["path"].lstrip("."),
                                         "not in asset files (a secret or instance data): "
                                         "configure it after the import"))
            if not extra:
                out[kind_name].append(normal)
    return out, problems


def _merged(kind_name: str, asset: dict, stored: dict) -> dict:
    """A merge: the file's asset fields, the stored resource's instance data."""
    out = dict(asset)
    for field in _INSTANCE_FIELDS.get(kind_name, ()):
        if field in stored:
            out[field] = stored[field]
    if kind_name in ("authorizers", "datasources") and \
            as_asset(kind_name, stored).get("url") != asset.get("url"):
        out["url"] = asset["url"]         # another address than the stored one's: the file's
    return out


def _reconfigure(kind_name: str, name: str, body: dict, created: bool,
                 generated: dict[str, str], groups: dict, channels: dict) -> dict | None:
    """What must be configured again on an imported resource (None: nothing)."""
    todo: list[dict] = []

    def add(field: str, what: str, blocks: bool = False) -> None:
        todo.append({"field": field, "what": what, "blocks_publish": blocks})

    if kind_name == "apps" and created:
        add("key, secret", "new ones were generated (shown in this answer only): give them to "
                           "the app's callers")
        add("app_codes, quota, acl", "not in asset files: set them again if the app had them")
        add("authorizations", "authorize the app again for the APIs it calls "
                              "(apis[].environments.<ENV>.apps)")
    elif kind_name == "groups" and created:
        add("domains, variables", "not in asset files: the group's own domains, and the "
                                  "environment variables of its APIs (listed at the APIs)")
    elif kind_name == "channels" and not body.get("members"):
        add("members", "add the channel's members (host, port): the APIs using it cannot be "
                       "published until it has some", blocks=True)
    elif kind_name == "authorizers" and created:
        add("user_data", "not in asset files: set it again if the authorizer had one")
    elif kind_name == "datasources" and created:
        add("url", "give the data source's address and credentials")
    elif kind_name == "apis":
        for problem in needs(body, RELEASE, groups, channels):
            add(problem.path, problem.message, blocks=True)
        if created or not body.get("environments"):
            add("environments", "publish it (POST /v1/apis/{name}/publish); bind its throttle, "
                                "ACL, signature key and apps per environment again (not in "
                                "asset files)")
    if not todo:
        return None
    entry = {"kind": kind_name, "name": name, "items": todo}
    if generated:
        entry["generated"] = generated
    return entry


async def import_assets(st, data: Any, *, mode: str = "add", prefix: str | None = None,
                        who: str = "system") -> dict:
    """Import asset file ``data`` (decoded JSON): ``{imported: {kind: [names]}, reconfigure:
    [{kind, name, items: [{field, what, blocks_publish}], generated?}]}``.  Raises
    :class:`ApiError` (422: the file, every problem with its resource and path; 409: names that
    exist, with ``mode="add"``) before anything is written."""
    if mode not in MODES:
        raise ApiError(400, "TG.0400", f"mode: one of {', '.join(MODES)}", path="mode")
    raw, problems = _read_file(data)
    if prefix:
        raw = _prefixed(raw, prefix)
    assets, more = _normalized(raw)
    problems += more
    if problems:
        raise _invalid(D.DocumentError(problems))
    async with st.transaction() as tx:
        settings, _ = await _settings(tx)
        resources = await _all_resources(tx)
        stored = {k: _by_name(resources[k], k) for k in KINDS}
        existing = [f"{k}/{name_of(k, b)}" for k in ASSET_KINDS for b in assets.get(k, ())
                    if name_of(k, b) in stored[k]]
        if existing and mode == "add":
            raise ApiError(409, "TG.0409", f"these exist already (import with mode=merge to "
                                           f"replace them): {', '.join(existing)}",
                           errors=[_problem(e.split("/", 1)[0], e.split("/", 1)[1], "name",
                                            "exists already") for e in existing])
        final: dict[str, dict[str, dict]] = {}
        generated: dict[tuple[str, str], dict[str, str]] = {}
        for kind_name in ASSET_KINDS:
            final[kind_name] = {}
            for asset in assets.get(kind_name, ()):
                name = name_of(kind_name, asset)
                old = stored[kind_name].get(name)
                if old is not None:
                    body = D.normalize(kind_name, _merged(kind_name, asset, old))
                else:
                    body, made = D.create_body(kind_name, asset)
                    if made:
                        generated[(kind_name, name)] = made
                final[kind_name][name] = body
        candidate = {k: list({**stored[k], **final.get(k, {})}.values()) for k in KINDS}
        await asyncio.to_thread(_check, settings, candidate)     # (off the event loop)
        for kind_name in ASSET_KINDS:
            for name, body in final[kind_name].items():
                old = stored[kind_name].get(name)
                if old is None:
                    await tx.create(kind_name, name, body, who)
                elif old != body:
                    await tx.replace(kind_name, name, body, who)
        if final["apis"]:
            await _set_imported(tx, [*await _imported(tx), *final["apis"]], who)
    groups = _by_name(candidate["groups"], "groups")
    channels = _by_name(candidate["channels"], "channels")
    reconfigure = []
    for kind_name in ASSET_KINDS:
        for name, body in final[kind_name].items():
            entry = _reconfigure(kind_name, name, body, name not in stored[kind_name],
                                 generated.get((kind_name, name), {}), groups, channels)
            if entry is not None:
                reconfigure.append(entry)
    return {"imported": {k: sorted(final[k]) for k in ASSET_KINDS if final[k]},
            "reconfigure": reconfigure}


# --------------------------------------------------------------------------------------------------
# REST

async def _get(request: Request, token, st):
    return _json(200, await export(st))


async def _post(request: Request, token, st):
    q = request.query_params
    unknown = sorted(set(q) - {"mode", "prefix"})
    if unknown:
        raise ApiError(400, "TG.0400", f"{unknown[0]}: unknown parameter", path=unknown[0])
    data = await _read_json(request, MAX_CONFIG_BODY)
    return _json(200, await import_assets(st, data, mode=q.get("mode", "add"),
                                          prefix=q.get("prefix") or None, who=token.name))


def routes() -> list[tuple[str, dict[str, tuple[bool, Any]], dict]]:
    """``(template, {method: (write, handler)}, route options)`` for the app's ``route``."""
    return [("/v1/assets", {"GET": (False, _get), "POST": (True, _post)}, {})]


def openapi_paths() -> dict[str, Any]:
    from .schema import REF
    err = {"description": "error", "content": {"application/json": {"schema": {"$ref": REF.format(
        name="Error")}}}}
    errors = {c: err for c in ("400", "401", "403")}
    asset_file = {"type": "object", "required": ["format", "version", "assets"],
                  "additionalProperties": False, "properties": {
                      "format": {"const": FORMAT}, "version": {"const": VERSION},
                      "assets": {"type": "object", "additionalProperties": False, "properties": {
                          k: {"type": "array", "items": {"type": "object"}}
                          for k in ASSET_KINDS}}}}
    return {"/v1/assets": {
        "get": {"operationId": "export_assets",
                "summary": "The asset file: the integration assets without secrets or instance "
                           "data (APIs: those published in RELEASE)",
                "responses": {"200": {"description": "the asset file", "content": {
                    "application/json": {"schema": asset_file}}}, **errors}},
        "post": {"operationId": "import_assets",
                 "summary": "Import an asset file (all or nothing); the answer lists what must "
                            "be configured again, and the secrets generated (shown once)",
                 "parameters": [
                     {"name": "mode", "in": "query", "required": False,
                      "schema": {"enum": list(MODES), "default": "add"}},
                     {"name": "prefix", "in": "query", "required": False,
                      "schema": {"type": "string"}}],
                 "requestBody": {"required": True, "content": {"application/json": {
                     "schema": asset_file}}},
                 "responses": {"200": {"description": "{imported, reconfigure}"},
                               "409": err, "413": err, "422": err, **errors}}}}

"""Publishing (versions per API and environment) and distribution to gateways.

Editing a resource changes nothing live.  What gateways serve is the **published state**: per
environment, the APIs published there, each with the body it had when it was published (its
version).  Every publish, rollback or offline makes a new **publish revision** (the store's second
counter) whose stored value is::

    {"document": <the gateway document>,
     "published": {env: {api: {"version": n, "body": <the API as published>}}}}

The gateway document of a revision = the settings and the CURRENT definitions of every other
resource (groups, channels, policies, apps, certificates...) plus one entry per published API,
whose ``environments`` map is rebuilt from where it is published (the binding of each
environment: the one the API had when it was published there, none when it had none).  An API
published with different definitions in different environments (a new version in TEST, the old
one still in RELEASE) is one entry per definition: the entry of RELEASE (else of the first
environment by name) keeps the API's name, the others are named ``<api>.<env>`` (cut and
given a hash when that is too long for a name or is the name of another published API).

The document is checked with the gateway's compiler (:func:`document.check` with
``compile=True``) before it is stored: a publish never yields a document a gateway refuses (422
with the problems).  The publish and its API versions are stored in one transaction (the store
audits the publish).

Routes (registered by :func:`control_plane.app.create_app`):

* ``POST /v1/apis/{name}/publish {env, note}``, ``POST /v1/publish {env, apis: [..] | "all",
  note}`` (one revision for many APIs), ``POST /v1/apis/{name}/rollback {env, version, note}``,
  ``POST /v1/apis/{name}/offline {env, note}`` -- read-write tokens; 201 ``{revision,
  versions: {api: n}}`` (offline: ``versions`` empty);
* ``GET /v1/apis/{name}/versions?env=RELEASE``, ``GET /v1/apis/{name}/versions/{v}?env=``,
  ``GET /v1/apis/{name}/versions/{a}/diff/{b}?env=`` (a list of ``{path, before, after}``,
  secrets masked), ``GET /v1/publishes`` -- any admin token;
* ``GET /v1/gateway/config?after=N&wait=30`` -- ``gateway`` tokens only: 200 ``{revision,
  document}`` (secrets NOT masked) at once when the latest revision differs from ``N``, else
  when one is published within ``wait`` seconds (max 60), else 304;
* ``GET /v1/gateways`` -- any admin token: each gateway seen, its applied revision, last seen.
"""
from __future__ import annotations

import asyncio
import dataclasses
import hashlib
import re
from typing import Any

import msgspec
from starlette.requests import Request
from starlette.responses import Response

from gateway.config.model import RELEASE

from . import document as D
from .app import (ApiError, _all_bodies, _int_param, _invalid, _json, _page, _read_json,
                  _settings, MAX_BODY)
from .checked import LatestPublish, check as check_publish
from .kinds import KINDS, mask, refs_of

__all__ = ["routes", "gateway_apis", "diff", "stored_document", "needs"]

_NOTE_MAX = 1000


# --------------------------------------------------------------------------------------------------
# Pure parts

def gateway_apis(published: dict[str, dict[str, dict]], memo: dict | None = None,
                 into: dict | None = None) -> list[dict]:
    """The ``apis`` of the gateway document of a published state (see the module's doc).

    ``memo``: the ``into`` of an earlier call; the entries of an API published with the very
    same bodies (the same objects) in the same environments are taken from it.  ``into``: a
    dict filled with what a later call may take (an API's bodies and entries, by name)."""
    per_api: dict[str, list[tuple[str, dict]]] = {}
    for env in sorted(published, key=lambda e: (e != RELEASE, e)):
        for api, entry in published[env].items():
            per_api.setdefault(api, []).append((env, entry["body"]))
    out = []
    taken = set(per_api)        # (the names of the entries: unique, valid names)
    for api in sorted(per_api):
        bodies = per_api[api]
        kept = memo.get(api) if memo is not None else None
        if kept is not None and len(kept[0]) == len(bodies) and all(
                e == e2 and b is b2 for (e, b), (e2, b2) in zip(kept[0], bodies)) and \
                not any(e["name"] in taken for e in kept[1][1:]):
            taken.update(e["name"] for e in kept[1][1:])
            out += kept[1]
            if into is not None:
                into[api] = kept
            continue
        groups: list[tuple[dict, dict, str]] = []        # (body without environments, map, env)
        for env, body in bodies:
            core = {k: v for k, v in body.items() if k != "environments"}
            binding = (body.get("environments") or {}).get(env) or {}
            for g_core, g_envs, _ in groups:
                if g_core == core:
                    g_envs[env] = binding
                    break
            else:
                groups.append((core, {env: binding}, env))
        entries = []
        for i, (core, envs, env) in enumerate(groups):
            entry = dict(core, environments=envs)
            if i:
                entry["name"] = _entry_name(api, env, taken)
                taken.add(entry["name"])
            entries.append(entry)
        out += entries
        if into is not None:
            into[api] = (bodies, entries)
    return out


def _entry_name(api: str, env: str, taken: set[str]) -> str:
    """``<api>.<env>``; when that is longer than a name may be (64) or taken (an API of that
    name is published too), ``<api, cut>.<env, cut>.<hash>``: a valid name no entry has."""
    name = f"{api}.{env}"
    n = 0
    while len(name) > 64 or name in taken:
        digest = hashlib.sha256(f"{api}\0{env}\0{n}".encode()).hexdigest()[:10]
        name = f"{api[:32]}.{env[:20]}.{digest}"
        n += 1
    return name


def stored_document(settings: dict, resources: dict[str, list[dict]],
                    published: dict[str, dict[str, dict]], memo: dict | None = None,
                    into: dict | None = None) -> dict:
    """The gateway document: settings, the current resources, the published APIs (``memo``,
    ``into``: see :func:`gateway_apis`)."""
    return {**settings, **resources, "apis": gateway_apis(published, memo, into)}


_IDENT = re.compile(r"[A-Za-z_][A-Za-z0-9_-]*")


def _step(path: str, key: Any) -> str:
    if isinstance(key, int):
        return f"{path}[{key}]"
    if _IDENT.fullmatch(key):
        return f"{path}.{key}" if path else key
    return f"{path}[{msgspec.json.encode(key).decode()}]"


_MISSING = object()


def _diff(a: Any, b: Any, path: str, keys: tuple, out: list) -> None:
    if isinstance(a, dict) and isinstance(b, dict):
        for key in sorted(set(a) | set(b)):
            _diff(a.get(key, _MISSING), b.get(key, _MISSING), _step(path, key), keys + (key,),
                  out)
    elif isinstance(a, list) and isinstance(b, list):
        for i in range(max(len(a), len(b))):
            _diff(a[i] if i < len(a) else _MISSING, b[i] if i < len(b) else _MISSING,
                  _step(path, i), keys + (i,), out)
    elif a != b and not (a is _MISSING and b is _MISSING):
        out.append((path, keys))


def _at(node: Any, keys: tuple) -> Any:
    for key in keys:
        if isinstance(node, dict) and isinstance(key, str) and key in node:
            node = node[key]
        elif isinstance(node, list) and isinstance(key, int) and key < len(node):
            node = node[key]
        else:
            return None
    return node


def diff(before: dict, after: dict, kind_name: str = "apis") -> list[dict]:
    """The fields that differ between two bodies: ``[{path, before, after}]`` (None: absent),
    found on the real values, shown masked (a changed secret reads ``"******"`` twice)."""
    found: list = []
    _diff(before, after, "", (), found)
    shown_before, shown_after = mask(kind_name, before), mask(kind_name, after)
    return [{"path": path, "before": _at(shown_before, keys), "after": _at(shown_after, keys)}
            for path, keys in found]


# --------------------------------------------------------------------------------------------------
# What an API needs before it can be published (an imported asset arrives without these)

_VARIABLE_REF = re.compile(r"#([^#/?{}\s]*)#")


def needs(body: dict, env: str, groups: dict[str, dict], channels: dict[str, dict]
          ) -> list[D.Problem]:
    """What API ``body`` lacks to be served in ``env``: the environment variables its backends
    use that its group does not define there, and the channels it uses that have no members
    (``groups``, ``channels``: the current bodies by name).  Empty when it can be published."""
    name = body.get("name")
    group = groups.get(body.get("group")) or {}
    defined = (group.get("variables") or {}).get(env) or {}
    found: list[D.Problem] = []
    backends = [("backend", body.get("backend") or {})] + [
        (f"conditional_backends[{i}].backend", cb.get("backend") or {})
        for i, cb in enumerate(body.get("conditional_backends") or ())]
    for where, backend in backends:
        for field in ("url", "path"):
            text = backend.get(field)
            for var in sorted(set(_VARIABLE_REF.findall(text))) if isinstance(text, str) else ():
                if var not in defined:
                    found.append(D.Problem(
                        kind="apis", name=name, path=f"{where}.{field}",
                        message=f"variable '{var}' is not defined for environment '{env}' "
                                f"(groups/{body.get('group')}: variables.{env}.{var})"))
        channel = backend.get("channel")
        if channel in channels and not channels[channel].get("members"):
            found.append(D.Problem(kind="apis", name=name, path=f"{where}.channel",
                                   message=f"channel '{channel}' has no members "
                                           f"(channels/{channel}: members)"))
    return found


def _check_needs(change: dict[str, dict[str, dict | None]],
                 resources: dict[str, list[dict]]) -> None:
    """409 naming what the APIs of ``change`` lack to be published (see :func:`needs`)."""
    groups = {g["name"]: g for g in resources.get("groups", ())}
    channels = {c["name"]: c for c in resources.get("channels", ())}
    problems = [p for env, apis in change.items() for body in apis.values() if body is not None
                for p in needs(body, env, groups, channels)]
    if problems:
        first = problems[0]
        more = f" (and {len(problems) - 1} more)" if len(problems) > 1 else ""
        raise ApiError(409, "TG.0409", f"apis {first.name!r} cannot be published until it has "
                                       f"what it uses: {first.path}: {first.message}{more}",
                       path=first.path, errors=problems)


def published_refs(published: dict[str, dict[str, dict]]
                   ) -> dict[tuple[str, str], list[tuple[str, str, int, str]]]:
    """What the published state references, as the gateway document has it (each API in each
    environment it is published in, with that environment's binding): ``{(kind, name): [(api,
    env, version, path)]}``."""
    out: dict[tuple[str, str], list[tuple[str, str, str]]] = {}
    for env in sorted(published, key=lambda e: (e != RELEASE, e)):
        for api, entry in sorted(published[env].items()):
            body = entry["body"]
            served = dict(body, environments={
                env: (body.get("environments") or {}).get(env) or {}})
            for path, ref_kind, ref_name in refs_of("apis", served):
                out.setdefault((ref_kind, ref_name), []).append(
                    (api, env, entry["version"], path))
    return out


async def published_users(request: Request, tx) -> dict[tuple[str, str],
                                                         list[tuple[str, str, int, str]]]:
    """:func:`published_refs` of the latest publish (kept per revision: a delete does not
    decode the published state again)."""
    return (await published_state(request, tx))[1]


async def published_state(request: Request, tx) -> tuple[dict[str, dict[str, dict]], dict]:
    """The published state of the latest publish and its :func:`published_refs`."""
    distribution: Distribution = request.app.state.tollgate.distribution
    revision = await tx.publish_revision()
    kept = distribution.published_refs
    if kept is not None and kept[0] == revision:
        return kept[1], kept[2]
    latest = distribution.latest
    published = latest.published if latest is not None and latest.revision == revision else \
        _published(await tx.latest_publish())
    count = sum(map(len, published.values()))
    refs = published_refs(published) if count <= 200 else \
        await asyncio.to_thread(published_refs, published)    # (~0.1 s per 1,000: off the loop)
    distribution.published_refs = (revision, published, refs)
    return published, refs


# --------------------------------------------------------------------------------------------------
# Publishing

def _published(stored: tuple[int, dict] | None) -> dict[str, dict[str, dict]]:
    if stored is None:
        return {}
    value = stored[1]
    return value.get("published", {}) if isinstance(value, dict) else {}


def _env_names(settings: dict, resources: dict[str, list[dict]]) -> set[str]:
    return {RELEASE, *(e["name"] for e in resources.get("environments", []))}


async def _body(request: Request) -> dict:
    raw = await _read_json(request, MAX_BODY)
    if not isinstance(raw, dict):
        raise ApiError(422, "TG.0422", "expected an object")
    request.scope["tollgate.body"] = raw          # (the publish counter reads its env)
    return raw


def _field(raw: dict, name: str, types, required: bool, default=None):
    value = raw.get(name, default)
    if value is None and required:
        raise ApiError(422, "TG.0422", f"{name}: required", path=name)
    if value is not None and not isinstance(value, types):
        raise ApiError(422, "TG.0422", f"{name}: wrong type", path=name)
    return value


def _fields(raw: dict, allowed: tuple[str, ...]) -> None:
    unknown = sorted(set(raw) - set(allowed))
    if unknown:
        raise ApiError(422, "TG.0422", f"{unknown[0]}: unknown field", path=unknown[0])
    note = raw.get("note")
    if note is not None and (not isinstance(note, str) or len(note) > _NOTE_MAX):
        raise ApiError(422, "TG.0422", f"note: a string of at most {_NOTE_MAX} characters",
                       path="note")


async def _next_versions(tx, change: dict[str, dict[str, dict | None]]) -> dict[tuple, int]:
    out = {}
    for env, apis in change.items():
        latest = await tx.latest_api_versions(env, [a for a, b in apis.items() if b is not None])
        for api, body in apis.items():
            if body is not None:
                out[(env, api)] = latest.get(api, 0) + 1
    return out


async def _resources_but_apis(st) -> dict[str, list[dict]]:
    """The current resources but the edited APIs (a publish serves the published ones)."""
    return {name: await _all_bodies(st, name) for name in KINDS if name != "apis"}


async def _publish(request: Request, st, who: str, note: str,
                   change: dict[str, dict[str, dict | None]]) -> Response:
    distribution: Distribution = request.app.state.tollgate.distribution
    async with st.transaction() as tx:
        # the version numbers are known before the state is stored (writers are serialised)
        numbers = await _next_versions(tx, change)
        settings, _ = await _settings(tx)
        resources = await _resources_but_apis(tx)
        envs = _env_names(settings, resources)
        for env in change:
            if env not in envs:
                raise ApiError(422, "TG.0422", f"env: environment {env!r} does not exist",
                               path="env")
        _check_needs(change, resources)
        latest = distribution.latest
        if latest is None or latest.revision != await tx.publish_revision():
            # (another control plane published since, or none is known here yet)
            stored = await tx.latest_publish()
            latest = LatestPublish(stored[0], _published(stored), stored[1].get("document", {})
                                   ) if stored is not None else None
        published = {env: dict(apis) for env, apis in (latest.published if latest else {}).items()}
        for env, apis in change.items():
            target = published.setdefault(env, {})
            for api, body in apis.items():
                if body is None:
                    target.pop(api, None)
                else:
                    target[api] = {"version": numbers[(env, api)], "body": body}
            if not target:
                del published[env]
        entries: dict = {}
        document = stored_document(settings, resources, published,
                                   latest.entries if latest is not None else None, entries)
        try:
            checked = await asyncio.to_thread(
                check_publish, settings, resources, document["apis"],
                latest.checked if latest is not None else None)
        except D.DocumentError as exc:
            raise _invalid(exc) from None
        revision = await tx.add_publish({"document": document, "published": published},
                                        note, who)
        if RELEASE in change:          # published in RELEASE: no longer an import to publish
            from .assets import forget_imported
            await forget_imported(tx, [a for a, b in change[RELEASE].items() if b is not None])
        await tx.add_api_versions([(api, env, change[env][api], n)
                                   for (env, api), n in numbers.items()], revision, note, who)
        versions = {api: n for (env, api), n in numbers.items()}
    # committed: the next publish starts from this one, and the gateways get it from memory
    distribution.latest = LatestPublish(revision, published, document, checked, entries)
    return _json(201, {"revision": revision, "versions": versions})


def _env(raw: dict) -> str:
    env = _field(raw, "env", str, True)
    return env


async def _edited(st, name: str) -> dict:
    record = await st.get("apis", name)
    if record is None:
        raise ApiError(404, "TG.0404", f"apis {name!r} does not exist")
    return record.body


async def publish_one(request: Request, token, st) -> Response:
    raw = await _body(request)
    _fields(raw, ("env", "note"))
    env, name = _env(raw), request.path_params["name"]
    body = await _edited(st, name)
    return await _publish(request, st, token.name, raw.get("note") or "", {env: {name: body}})


async def publish_many(request: Request, token, st) -> Response:
    raw = await _body(request)
    _fields(raw, ("env", "apis", "note"))
    env = _env(raw)
    apis = raw.get("apis")
    if apis == "all":
        bodies = await _all_bodies(st, "apis")
        if not bodies:
            raise ApiError(422, "TG.0422", "apis: there is no API to publish", path="apis")
        change = {b["name"]: b for b in bodies}
    elif isinstance(apis, list) and apis and all(isinstance(a, str) for a in apis):
        change = {}
        for i, name in enumerate(apis):
            record = await st.get("apis", name)
            if record is None:
                raise ApiError(404, "TG.0404", f"apis[{i}]: apis {name!r} does not exist",
                               path=f"apis[{i}]")
            change[name] = record.body
    else:
        raise ApiError(422, "TG.0422", 'apis: a non-empty list of API names, or "all"',
                       path="apis")
    return await _publish(request, st, token.name, raw.get("note") or "", {env: change})


async def rollback(request: Request, token, st) -> Response:
    raw = await _body(request)
    _fields(raw, ("env", "version", "note"))
    env, name = _env(raw), request.path_params["name"]
    version = raw.get("version")
    if not isinstance(version, int) or isinstance(version, bool) or version < 1:
        raise ApiError(422, "TG.0422", "version: a version number (1, 2...)", path="version")
    found = next((v for v in await st.api_versions(name, env) if v.version == version), None)
    if found is None:
        raise ApiError(404, "TG.0404", f"apis {name!r} has no version {version} in {env!r}",
                       path="version")
    note = raw.get("note") or f"rollback to version {version}"
    return await _publish(request, st, token.name, note, {env: {name: found.body}})


async def offline(request: Request, token, st) -> Response:
    raw = await _body(request)
    _fields(raw, ("env", "note"))
    env, name = _env(raw), request.path_params["name"]
    if name not in _published(await st.latest_publish()).get(env, {}):
        raise ApiError(409, "TG.0409", f"apis {name!r} is not published in {env!r}")
    note = raw.get("note") or f"offline in {env}"
    return await _publish(request, st, token.name, note, {env: {name: None}})


# --------------------------------------------------------------------------------------------------
# Versions

def _query_env(request: Request) -> str:
    return request.query_params.get("env") or RELEASE


def _version_json(v, live: int | None) -> dict:
    return {"api": v.api, "env": v.env, "version": v.version,
            "publish_revision": v.publish_revision, "note": v.note, "who": v.who, "at": v.at,
            "live": v.version == live}


async def _live_version(st, name: str, env: str) -> int | None:
    entry = _published(await st.latest_publish()).get(env, {}).get(name)
    return entry["version"] if entry else None


async def list_versions(request: Request, token, st) -> Response:
    name, env = request.path_params["name"], _query_env(request)
    versions = await st.api_versions(name, env)
    live = await _live_version(st, name, env)
    return _json(200, {"items": [_version_json(v, live) for v in reversed(versions)],
                       "live": live})


def _version_number(request: Request, key: str) -> int:
    value = request.path_params[key]
    if not re.fullmatch(r"[0-9]{1,18}", value) or int(value) < 1:
        raise ApiError(400, "TG.0400", f"{value!r} is not a version number")
    return int(value)


async def _version(st, name: str, env: str, number: int):
    found = next((v for v in await st.api_versions(name, env) if v.version == number), None)
    if found is None:
        raise ApiError(404, "TG.0404", f"apis {name!r} has no version {number} in {env!r}")
    return found


async def get_version(request: Request, token, st) -> Response:
    name, env = request.path_params["name"], _query_env(request)
    v = await _version(st, name, env, _version_number(request, "v"))
    live = await _live_version(st, name, env)
    return _json(200, {**_version_json(v, live), "body": mask("apis", v.body)})


async def diff_versions(request: Request, token, st) -> Response:
    name, env = request.path_params["name"], _query_env(request)
    a = await _version(st, name, env, _version_number(request, "a"))
    b = await _version(st, name, env, _version_number(request, "b"))
    return _json(200, diff(a.body, b.body))


async def list_publishes(request: Request, token, st) -> Response:
    offset, limit = _page(request)
    items, total = await st.publishes(offset=offset, limit=limit)
    return _json(200, {"items": [dataclasses.asdict(i) for i in items],
                       "total": total, "offset": offset, "limit": limit})


# --------------------------------------------------------------------------------------------------
# Distribution

class Distribution:
    """The gateways' endpoint: the latest publish's answer encoded once per revision, and the
    waiters woken at shutdown (so that a stopping control plane does not hold long polls)."""

    def __init__(self) -> None:
        self._cached: tuple[int, bytes] | None = None
        #: the newest publish this process made (see control_plane.checked), or None
        self.latest: LatestPublish | None = None
        #: (revision, its published state, published_refs of it): what a write must not break
        self.published_refs: tuple[int, dict, dict] | None = None
        self._stopping: asyncio.Future | None = None

    def stopping(self) -> asyncio.Future:
        if self._stopping is None:
            self._stopping = asyncio.get_running_loop().create_future()
        return self._stopping

    def stop(self) -> None:
        """Wake every waiting gateway (503): call from the control plane's loop."""
        if not self.stopping().done():
            self._stopping.set_result(None)

    async def answer(self, raw_store, revision: int) -> bytes | None:
        latest = self.latest
        if latest is not None and latest.revision == revision:
            return latest.encoded()
        if self._cached is not None and self._cached[0] == revision:
            return self._cached[1]
        stored = await raw_store.publish_at(revision)
        if stored is None:
            return None
        body = msgspec.json.encode({"revision": revision, "document": stored["document"]})
        self._cached = (revision, body)
        return body

    async def config(self, request: Request, token, st) -> Response:
        raw = request.app.state.tollgate.raw_store
        after = _int_param(request, "after", 0, 0, None)
        wait = _int_param(request, "wait", 30, 0, 60)
        gateway_id = request.headers.get("x-tollgate-gateway")
        if gateway_id:
            applied = request.headers.get("x-tollgate-applied", "")
            address = request.client.host if request.client else ""
            applied = int(applied) if re.fullmatch(r"[0-9]{1,18}", applied) else after
            await raw.seen_gateway(gateway_id[:200], applied, address)
        latest = await raw.publish_revision()
        if latest == 0 or latest == after:
            stopping = self.stopping()
            watch = asyncio.ensure_future(raw.watch(after, wait))
            await asyncio.wait((watch, stopping), return_when=asyncio.FIRST_COMPLETED)
            if not watch.done():
                watch.cancel()
                raise ApiError(503, "TG.0503", "the control plane is stopping")
            latest = watch.result()
            if latest is None:
                return Response(status_code=304)
        body = await self.answer(raw, latest)
        if body is None:        # pragma: no cover - a publish is never deleted
            return Response(status_code=304)
        return Response(body, 200, media_type="application/json")


async def list_gateways(request: Request, token, st) -> Response:
    latest = await st.publish_revision()
    return _json(200, {"latest_revision": latest, "items": [
        {"id": g.id, "revision": g.revision, "address": g.address, "first_seen": g.first_seen,
         "last_seen": g.last_seen} for g in await st.gateways()]})


def routes(distribution: Distribution) -> list[tuple[str, dict[str, tuple[bool, Any]], dict]]:
    """``(template, {method: (write, handler)}, route options)`` for the app's ``route``."""
    from .auth import GATEWAY
    return [
        ("/v1/apis/{name}/publish", {"POST": (True, publish_one)}, {}),
        ("/v1/apis/{name}/rollback", {"POST": (True, rollback)}, {}),
        ("/v1/apis/{name}/offline", {"POST": (True, offline)}, {}),
        ("/v1/apis/{name}/versions", {"GET": (False, list_versions)}, {}),
        ("/v1/apis/{name}/versions/{v}", {"GET": (False, get_version)}, {}),
        ("/v1/apis/{name}/versions/{a}/diff/{b}", {"GET": (False, diff_versions)}, {}),
        ("/v1/publish", {"POST": (True, publish_many)}, {}),
        ("/v1/publishes", {"GET": (False, list_publishes)}, {}),
        ("/v1/gateways", {"GET": (False, list_gateways)}, {}),
        ("/v1/gateway/config", {"GET": (False, distribution.config)}, {"roles": (GATEWAY,)}),
    ]


def openapi_paths() -> dict[str, Any]:
    """The OpenAPI entries of the routes above."""
    from .schema import REF
    err = {"description": "error", "content": {"application/json": {"schema": {"$ref": REF.format(
        name="Error")}}}}
    errors = {c: err for c in ("400", "401", "403")}
    name = {"name": "name", "in": "path", "required": True, "schema": {"type": "string"}}
    env_q = {"name": "env", "in": "query", "required": False,
             "schema": {"type": "string", "default": RELEASE}}
    number = lambda n: {"name": n, "in": "path", "required": True,  # noqa: E731
                        "schema": {"type": "string", "pattern": "^[0-9]+$"}}
    note = {"type": "string", "maxLength": _NOTE_MAX}
    done = {"201": {"description": "published: the new revision and the versions recorded",
                    "content": {"application/json": {"schema": {
                        "type": "object", "required": ["revision", "versions"], "properties": {
                            "revision": {"type": "integer"},
                            "versions": {"type": "object",
                                         "additionalProperties": {"type": "integer"}}}}}}},
            "404": err, "409": err, "422": err, **errors}

    def body(props: dict, required: list[str]) -> dict:
        return {"required": True, "content": {"application/json": {"schema": {
            "type": "object", "required": required, "additionalProperties": False,
            "properties": {**props, "note": note}}}}}

    def post(op: str, summary: str, props: dict, required: list[str], params=(name,)) -> dict:
        return {"parameters": list(params), "post": {
            "operationId": op, "summary": summary, "requestBody": body(props, required),
            "responses": done}}

    def get(op: str, summary: str, params: list) -> dict:
        return {"parameters": params, "get": {"operationId": op, "summary": summary,
                                              "responses": {"200": {"description": "found"},
                                                            "404": err, **errors}}}
    env = {"env": {"type": "string"}}
    return {
        "/v1/apis/{name}/publish": post("publish_api", "Publish the API as edited now",
                                        env, ["env"]),
        "/v1/apis/{name}/rollback": post(
            "rollback_api", "Publish a version of the API again",
            {**env, "version": {"type": "integer", "minimum": 1}}, ["env", "version"]),
        "/v1/apis/{name}/offline": post("offline_api", "Stop serving the API in an environment",
                                        env, ["env"]),
        "/v1/publish": post("publish", "Publish many APIs (or all) as one revision",
                            {**env, "apis": {"anyOf": [
                                {"type": "array", "minItems": 1, "items": {"type": "string"}},
                                {"const": "all"}]}}, ["env", "apis"], params=()),
        "/v1/apis/{name}/versions": get("api_versions", "The versions published in an "
                                        "environment, newest first", [name, env_q]),
        "/v1/apis/{name}/versions/{v}": get("api_version", "One version (secrets masked)",
                                            [name, number("v"), env_q]),
        "/v1/apis/{name}/versions/{a}/diff/{b}": get(
            "api_version_diff", "The fields that differ ({path, before, after}, masked)",
            [name, number("a"), number("b"), env_q]),
        "/v1/publishes": get("publishes", "The publish revisions, newest first", []),
        "/v1/gateways": get("gateways", "The gateways following this control plane", []),
        "/v1/gateway/config": {"get": {
            "operationId": "gateway_config",
            "summary": "For gateway tokens: the latest published document (not masked) when "
                       "its revision is not `after`, else when one is published within `wait` "
                       "seconds, else 304",
            "parameters": [{"name": "after", "in": "query", "required": False,
                            "schema": {"type": "integer", "minimum": 0, "default": 0}},
                           {"name": "wait", "in": "query", "required": False,
                            "schema": {"type": "integer", "minimum": 0, "maximum": 60,
                                       "default": 30}}],
            "responses": {"200": {"description": "{revision, document}"},
                          "304": {"description": "nothing newer"}, "503": err, **errors}}},
    }

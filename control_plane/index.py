"""The fast single-resource write path: the reference index, claimed keys, and the check of one
write in the context it needs (not the whole document).

**Index rows** (kept by the store in every write's own transaction, see ``store/base.py``):

* ``refs(from_kind, from_name, seq, path, to_kind, to_name)``: every reference a body makes
  (:func:`kinds.refs_of`, unchecked ones too: a rule's ``http`` destination); "who uses X?" is an
  indexed lookup instead of a scan of every body.
* ``claims(claim, key, kind, name, detail)``: the keys the gateway's validator
  (``gateway/config/validate.py``) wants unique across resources, one row per key a resource
  holds (:func:`claims_of`):

  ====================  ===================================================  ==================
  claim                 key                                                  validate.py
  ====================  ===================================================  ==================
  ``app_key``           an app's ``key`` (identifies it in a signature)      ``check_apps``
  ``app_code``          each AppCode                                         ``check_apps``
  ``cert_domain``       a certificate domain, lower-cased, no trailing dot   ``check_edge``
  ``cert_default``      (one certificate may be the default)                 ``check_edge``
  ``group_domain``      a group domain                                       ``check_groups``
  ``device_id``         a device ``identifier``                              ``check_devices``
  ``route``             ``env, method, path shape, match mode`` of an API    ``check_routes``
                        (detail: its group; two routes collide when their
                        groups' domains overlap or both have none)
  ====================  ===================================================  ==================

  Names unique per kind are the store's primary key.

**The check of one write** (:func:`check_write`; the references were found to exist before,
409 otherwise):

1. a *mini document* -- the resource, the resources it references and theirs (the closure the
   validator reads), the settings -- and, when the resource is of a kind whose body its users'
   checks read (:data:`USERS_READ_BODY`: a group's variables, a channel's members, an
   authorizer's type, an ACL's entity, a device's product), its users and their closure -- goes
   through :func:`document.check` (the gateway's own validation).  Every check the validator
   makes on one resource sees the same resources it would see in the whole document, and the
   checks that span resources only report pairs both present: so its problems are the whole
   document's, but for the uniqueness rules (2);
2. the resource's claimed keys are looked up in ``claims``.  No other holder: accepted.  A holder
   (a conflict, the rare case): the whole candidate document is checked (off the event loop) and
   its answer is the answer -- word for word today's (which resource the gateway names, every
   problem, their order).

**Fallback to the whole document** (:func:`needs_whole`): a group whose ``domains`` change (it
changes which routes of every API of that group collide with routes of other groups); the settings
(``iam`` decides whether ``auth: iam`` APIs are valid) -- both rare, and checked off the loop.
"""
from __future__ import annotations

from collections.abc import Mapping
from typing import Any

from gateway.config.validate import _route_shape

from .kinds import KINDS, SETTINGS, _walk, kind, refs_of, steps

__all__ = ["refs_rows", "claims_of", "kind_rank", "USERS_READ_BODY", "needs_whole", "mini_resources",
           "claim_conflicts"]

#: kinds whose body (not only whose name) the checks of the resources that reference them read
USERS_READ_BODY = frozenset({"groups", "channels", "authorizers", "acls", "devices"})


def refs_rows(kind_name: str, body: Mapping[str, Any]) -> list[tuple[int, str, str, str]]:
    """``[(seq, path, to_kind, to_name)]`` of every reference of ``body`` (none for what is not
    a kind: the settings, the store's own records)."""
    if kind_name not in KINDS or not isinstance(body, Mapping):
        return []
    return [(i, path, k, n) for i, (path, k, n) in enumerate(refs_of(kind_name, body))]


def claims_of(kind_name: str, body: Mapping[str, Any]) -> list[tuple[str, str, str]]:
    """``[(claim, key, detail)]`` the resource holds (distinct)."""
    if kind_name not in KINDS or not isinstance(body, Mapping):
        return []
    out: list[tuple[str, str, str]] = []
    if kind_name == "apps":
        if isinstance(body.get("key"), str):
            out.append(("app_key", body["key"], ""))
        out += [("app_code", c, "") for c in body.get("app_codes") or () if isinstance(c, str)]
    elif kind_name == "certificates":
        out += [("cert_domain", d.lower().rstrip("."), "") for d in body.get("domains") or ()
                if isinstance(d, str)]
        if body.get("default"):
            out.append(("cert_default", "", ""))
    elif kind_name == "groups":
        out += [("group_domain", d, "") for d in body.get("domains") or () if isinstance(d, str)]
    elif kind_name == "devices":
        if isinstance(body.get("identifier"), str):
            out.append(("device_id", body["identifier"], ""))
    elif kind_name == "apis":
        path = body.get("path")
        if isinstance(path, str) and path.startswith("/"):
            shape = _route_shape(path)
            for env in body.get("environments") or {}:
                out.append(("route", route_key(env, body.get("method"), shape,
                                               body.get("match_mode")),
                            str(body.get("group"))))
    return list(dict.fromkeys(out))


def route_key(env: str, method: Any, shape: str, match_mode: Any) -> str:
    return "\x1f".join((env, str(method), shape, str(match_mode)))


def needs_whole(kind_name: str, old: Mapping[str, Any] | None, new: Mapping[str, Any] | None
                ) -> bool:
    """Whether this write must be checked against the whole document (see the module's doc)."""
    if kind_name == SETTINGS:
        return True
    if kind_name == "groups" and old is not None and new is not None:
        return list(old.get("domains") or ()) != list(new.get("domains") or ())
    return False


def _checked_refs(kind_name: str, body: Mapping[str, Any]) -> list[tuple[str, str]]:
    """The distinct ``(kind, name)`` the gateway requires ``body`` to reference (a rule's
    ``http`` destination is not one: the validator does not read that API)."""
    checked = [(steps(r.path), r.kind, r.implicit) for r in kind(kind_name).refs if r.checked]
    out: dict[tuple[str, str], None] = {}
    for pattern, ref_kind, implicit in checked:
        for _path, value in _walk(body, pattern):
            if isinstance(value, str) and value not in implicit:
                out[(ref_kind, value)] = None
    return list(out)


async def mini_resources(tx, kind_name: str, name: str, body: Mapping[str, Any],
                         old_name: str | None) -> dict[str, list[dict]]:
    """The resources of the mini document of a write of ``kind_name``/``name`` (``old_name``:
    the name it had, None for a create): each kind's list in the order the whole document has
    it (by name, a created resource last, a renamed one at its old place)."""
    members: dict[tuple[str, str], dict] = {(kind_name, name): dict(body)}
    order: dict[tuple[str, str], str] = {(kind_name, name): old_name if old_name is not None
                                         else "\U0010ffff"}       # (a create goes last)
    todo = [(kind_name, name)]
    if old_name is not None and kind_name in USERS_READ_BODY:
        for user_kind, user_name, _path in await tx.users(kind_name, old_name):
            key = (user_kind, user_name)
            if key not in members:
                record = await tx.get(user_kind, user_name)
                if record is not None:
                    members[key] = record.body
                    order[key] = user_name
                    todo.append(key)
    while todo:
        k, n = todo.pop()
        for ref_kind, ref_name in _checked_refs(k, members[(k, n)]):
            key = (ref_kind, ref_name)
            if key in members:
                continue
            record = await tx.get(ref_kind, ref_name)
            if record is not None:          # (a missing one was refused before: 409)
                members[key] = record.body
                order[key] = ref_name
                todo.append(key)
    resources: dict[str, list[dict]] = {k: [] for k in KINDS}
    for key in sorted(members, key=lambda kn: (kn[0], order[kn])):
        resources[key[0]].append(members[key])
    return resources


async def claim_conflicts(tx, kind_name: str, name: str, body: Mapping[str, Any],
                          old_name: str | None) -> bool:
    """Whether a key ``body`` claims is held by another resource (then the whole document
    decides)."""
    claims = claims_of(kind_name, body)
    if not claims:
        return False
    holders = await tx.claimants([(c, k) for c, k, _d in claims])
    mine = (kind_name, old_name if old_name is not None else name)
    routes: dict[str, str] = {}
    for claim, key, detail in claims:
        if claim == "route":
            routes[key] = detail
    domains_cache: dict[str, frozenset[str]] = {}

    async def domains(group: str) -> frozenset[str]:
        if group not in domains_cache:
            record = await tx.get("groups", group)
            domains_cache[group] = frozenset(record.body.get("domains") or ()) if record else \
                frozenset()
        return domains_cache[group]

    for claim, key, holder_kind, holder_name, detail in holders:
        if (holder_kind, holder_name) == mine:
            continue
        if claim != "route":
            return True
        ours, theirs = await domains(routes[key]), await domains(detail)
        if (ours & theirs) or (not ours and not theirs):
            return True
    return False


_RANK = {k: i for i, k in enumerate(KINDS)}


def kind_rank(kind_name: str) -> int:
    """The place of a kind in the document (the order users are listed in)."""
    return _RANK.get(kind_name, len(_RANK))

"""The control plane's resource kinds, declared once from :mod:`gateway.config.model`.

Every list of the configuration document whose items have a ``name`` is a resource kind, addressed
by that name; the kind's URL name is the list's name (``/v1/apis/{name}``).  What is not a list of
named items (``version``, ``iam``, ``redis``, ``trusted_proxies``) is one document, the *settings*
(:data:`SETTINGS`), not a kind.  The kinds follow the model: a list added to
:class:`~gateway.config.model.Document` becomes a kind here without a line changed.

What the model cannot say is declared in the two tables below, one line per field:

* :data:`_REFERENCES`: where a body names a resource of another kind (the same references
  :mod:`gateway.config.validate` checks, so what the control plane calls a reference is what the
  gateway refuses when it dangles; the one it does not refuse is marked ``checked=False``);
* :data:`_SECRETS` and :data:`_GENERATED`: the fields masked in every read and the values generated
  when a create does not give them (shown once, in the answer to that create).

Bodies are the JSON form of one list item (:func:`to_body` of its Struct, or what a client
sent): plain dicts, lists and scalars.  No function here changes the body it is given.

Path patterns (in :class:`Ref` and :class:`Secret`): fields joined by ``.``; ``[*]`` every item of a
list; ``.*`` every value of a mapping; ``{*}`` the keys of a mapping.  Concrete paths are written as
the gateway writes them: ``conditional_backends[0].backend.channel``, ``environments.TEST.apps[1]``,
``environments["my env"]``.
"""
from __future__ import annotations

import re
import secrets as _secrets
from urllib.parse import unquote_plus
from collections.abc import Callable, Iterable, Iterator, Mapping
from dataclasses import dataclass
from typing import Any, Literal, get_args, get_origin

import msgspec

from gateway.config.model import RELEASE, Document

__all__ = [
    "MASK", "SETTINGS", "SETTINGS_FIELDS", "KINDS", "Kind", "Ref", "Secret", "Generated",
    "SecretError", "Settings", "kind", "to_body", "name_of", "refs_of", "users_of", "mask",
    "generate_secrets", "keep_secrets", "path_join", "steps", "ALL_KINDS",
]

#: What a secret reads as after the create that made (or received) it.
MASK = "******"

#: The pseudo-kind of the settings document (``version``, ``iam``, ``redis``, ``trusted_proxies``).
SETTINGS = "settings"


# --------------------------------------------------------------------------------------------------
# Declarations

@dataclass(frozen=True)
class Ref:
    """``path`` (a pattern) of a body names a resource of kind ``kind``.

    ``checked``: the gateway refuses a document where the named resource does not exist (every
    reference but a rule's ``http`` destination, which may feed an API defined elsewhere).
    ``implicit``: names that exist without a resource (``RELEASE``): never reported."""

    path: str
    kind: str
    checked: bool = True
    implicit: tuple[str, ...] = ()


@dataclass(frozen=True)
class Secret:
    """``field`` of every object at ``container`` (a pattern; ``""`` the body itself) is secret.

    ``style``: ``value`` the whole value; ``items`` each string of a list; ``url`` the password of a
    url's credentials (``postgresql://user:******@host/db``); ``pem`` an inline PEM value (a file
    path is not secret); ``keys`` JWT keys: symmetric or private ones (strings that are not a
    public PEM, private members of JWK objects)."""

    container: str
    field: str
    style: Literal["value", "items", "url", "pem", "keys"] = "value"


@dataclass(frozen=True)
class Generated:
    """``field`` of every object at ``container`` gets ``make()`` when absent or null."""

    container: str
    field: str
    make: Callable[[], str]


@dataclass(frozen=True)
class Kind:
    """A resource kind: ``name`` (URL and document list), its Struct, how to name an item
    (``name_field``), its references, secrets and generated fields, and the fields a list can be
    filtered by (``name`` and the top-level references, e.g. an API's ``group``)."""

    name: str
    struct: type
    list_field: str | None
    name_field: str | None
    refs: tuple[Ref, ...]
    secrets: tuple[Secret, ...]
    generated: tuple[Generated, ...]
    filters: tuple[str, ...]


class SecretError(ValueError):
    """A body sends ``"******"`` where no stored secret can stand for it (``path``)."""

    def __init__(self, path: str, message: str):
        self.path = path
        self.message = message
        super().__init__(f"{path}: {message}")


def to_body(item: msgspec.Struct) -> dict[str, Any]:
    """The JSON form of a Struct of the model (every field, lists not tuples): a body."""
    return msgspec.json.decode(msgspec.json.encode(item))


def _copy(body: Any) -> Any:
    """A deep copy in JSON form (tuples become lists, so that items can be replaced)."""
    return msgspec.json.decode(msgspec.json.encode(body))


def _hex(nbytes: int) -> Callable[[], str]:
    return lambda: _secrets.token_hex(nbytes)


# The references between kinds (read off gateway/config/validate.py's ``self.ref`` calls).
_BACKEND_REFS = (("channel", "channels"), ("authorizer", "authorizers"),
                 ("data.datasource", "datasources"))
_REFERENCES: dict[str, tuple[Ref, ...]] = {
    "apps": (Ref("quota", "app_quotas"),),
    "groups": (Ref("variables{*}", "environments", implicit=(RELEASE,)),),
    "throttles": (Ref("specials[*].app", "apps"),),
    "apis": (
        Ref("group", "groups"),
        Ref("authorizer", "authorizers"),
        *(Ref(f"backend.{f}", k) for f, k in _BACKEND_REFS),
        *(Ref(f"conditional_backends[*].backend.{f}", k) for f, k in _BACKEND_REFS),
        Ref("environments{*}", "environments", implicit=(RELEASE,)),
        Ref("environments.*.throttle", "throttles"),
        Ref("environments.*.acl", "acls"),
        Ref("environments.*.signature_key", "signature_keys"),
        Ref("environments.*.apps[*]", "apps"),
    ),
    "devices": (Ref("product", "products"),),
    "rules": (
        Ref("source.product", "products"),
        Ref("source.device", "devices"),
        Ref("destinations[*].api", "apis", checked=False),
        Ref("destinations[*].datasource", "datasources"),
    ),
}

# A url's secrets: the password of its credentials and the values of its query parameters
# named like a password or a key (``?password=``, ``?sslpassword=``, ``?token=``...).  An
# authorizer's ``user_data`` is free text that custom authorizers commonly use for a shared key:
# masked when not empty.  (An API's backend url holds neither credentials nor a query: the
# gateway refuses them, secrets go in backend parameters.)
_SECRETS: dict[str, tuple[Secret, ...]] = {
    "apps": (Secret("", "secret"), Secret("", "app_codes", "items")),
    "authorizers": (Secret("", "url", "url"), Secret("", "user_data")),
    "signature_keys": (Secret("", "secret"),),
    "certificates": (Secret("", "key", "pem"),),
    "datasources": (Secret("", "url", "url"),),
    "devices": (Secret("", "password"),),
    SETTINGS: (Secret("iam.users[*]", "secret_key"), Secret("iam.jwt", "keys", "keys"),
               Secret("iam.jwt", "jwks_url", "url"), Secret("redis", "url", "url")),
}

# Formats of the contract: an app key 8-200 characters, an app secret 8-128.
_GENERATED: dict[str, tuple[Generated, ...]] = {
    "apps": (Generated("", "key", _hex(16)), Generated("", "secret", _hex(32))),
    "signature_keys": (Generated("", "key", _hex(8)), Generated("", "secret", _hex(32))),
    "devices": (Generated("", "password", _hex(16)),),
    SETTINGS: (Generated("iam.users[*]", "access_key", lambda: _secrets.token_hex(10).upper()),
               Generated("iam.users[*]", "secret_key", _hex(20))),
}


# --------------------------------------------------------------------------------------------------
# The table, from the model

def _named_list_item(tp: Any) -> type | None:
    """The Struct of ``tuple[Struct, ...]`` when that Struct has a ``name`` field."""
    if get_origin(tp) is not tuple:
        return None
    item = get_args(tp)[0]
    if isinstance(item, type) and issubclass(item, msgspec.Struct) and \
            "name" in item.__struct_fields__:
        return item
    return None


_DOC_FIELDS = msgspec.structs.fields(Document)
#: The document's fields that are not kinds: one settings document.
SETTINGS_FIELDS: tuple[str, ...] = tuple(f.name for f in _DOC_FIELDS
                                         if _named_list_item(f.type) is None)

#: The settings document as a Struct (the Document's fields that are not kinds, as declared there).
Settings = msgspec.defstruct(
    "Settings",
    [(f.name, f.type) if f.required else
     (f.name, f.type, msgspec.field(default_factory=f.default_factory)
      if f.default_factory is not msgspec.NODEFAULT else f.default)
     for f in _DOC_FIELDS if f.name in SETTINGS_FIELDS],
    frozen=True, forbid_unknown_fields=True, kw_only=True, module=__name__)
Settings.__doc__ = ("The settings of the configuration document: the version, IAM callers, Redis "
                    "and the trusted proxies (one document, not resources).")


def _filters(refs: tuple[Ref, ...]) -> tuple[str, ...]:
    return ("name", *(r.path for r in refs if re.fullmatch(r"[a-z_]+", r.path)))


def _build() -> dict[str, Kind]:
    kinds = {}
    for f in _DOC_FIELDS:
        struct = _named_list_item(f.type)
        if struct is None:
            continue
        refs = _REFERENCES.get(f.name, ())
        kinds[f.name] = Kind(f.name, struct, f.name, "name", refs, _SECRETS.get(f.name, ()),
                             _GENERATED.get(f.name, ()), _filters(refs))
    kinds[SETTINGS] = Kind(SETTINGS, Settings, None, None, (), _SECRETS[SETTINGS],
                           _GENERATED[SETTINGS], ())
    for table in (_REFERENCES, _SECRETS, _GENERATED):
        unknown = set(table) - set(kinds)
        assert not unknown, f"declarations for unknown kinds {unknown}"
    return kinds


_TABLE = _build()
#: Every resource kind by URL name, in document order (the settings pseudo-kind is not in it).
KINDS: dict[str, Kind] = {k: v for k, v in _TABLE.items() if k != SETTINGS}
#: The kinds and the settings pseudo-kind (last).
ALL_KINDS: tuple[Kind, ...] = tuple(_TABLE.values())


def kind(name: str) -> Kind:
    """The kind (or ``"settings"``) called ``name``; KeyError names the kinds that exist."""
    try:
        return _TABLE[name]
    except KeyError:
        raise KeyError(f"unknown kind {name!r} (expected one of: {', '.join(_TABLE)})") from None


def name_of(kind_name: str, body: Mapping[str, Any]) -> str | None:
    """The name of a resource body (None for the settings, or a body without one)."""
    field = kind(kind_name).name_field
    value = body.get(field) if field is not None and isinstance(body, Mapping) else None
    return value if isinstance(value, str) else None


# --------------------------------------------------------------------------------------------------
# Paths

_TOKEN = re.compile(r"([A-Za-z_][A-Za-z0-9_]*)|(\[\*\])|(\.\*)|(\{\*\})|(\.)")
_PLAIN_KEY = re.compile(r"[A-Za-z_][A-Za-z0-9_-]*")


def steps(pattern: str) -> list[tuple[str, str | None]]:
    """A path pattern as steps ``(op, field)``: ``field``, ``items``, ``values``, ``keys``."""
    out: list[tuple[str, str | None]] = []
    pos = 0
    while pos < len(pattern):
        m = _TOKEN.match(pattern, pos)
        assert m, f"bad path pattern {pattern!r}"
        if m.group(1):
            out.append(("field", m.group(1)))
        elif m.group(2):
            out.append(("items", None))
        elif m.group(3):
            out.append(("values", None))
        elif m.group(4):
            out.append(("keys", None))
        pos = m.end()
    return out


def path_join(path: str, step: str | int, key: bool = False) -> str:
    """``path`` followed by a field, a list index or (``key``) a mapping key, as the gateway
    writes paths: ``a.b``, ``a[3]``, ``a.TEST`` / ``a["my env"]``."""
    if isinstance(step, int):
        return f"{path}[{step}]"
    if key and not _PLAIN_KEY.fullmatch(step):
        return f'{path}["{step}"]'
    return f"{path}.{step}" if path else step


def _walk(node: Any, tokens: list[tuple[str, str | None]], path: str = "") -> Iterator[tuple[str, Any]]:
    """(concrete path, value) of every place the pattern reaches in ``node``; a ``{*}`` step
    yields the keys themselves (as values)."""
    if not tokens:
        yield path, node
        return
    (op, arg), rest = tokens[0], tokens[1:]
    if op == "field":
        if isinstance(node, Mapping) and node.get(arg) is not None:
            yield from _walk(node[arg], rest, path_join(path, arg))
    elif op == "items":
        if isinstance(node, list | tuple):
            for i, item in enumerate(node):
                yield from _walk(item, rest, path_join(path, i))
    elif op == "values":
        if isinstance(node, Mapping):
            for key, value in node.items():
                yield from _walk(value, rest, path_join(path, str(key), key=True))
    elif op == "keys":
        if isinstance(node, Mapping):
            for key in node:
                yield path_join(path, str(key), key=True), key


# --------------------------------------------------------------------------------------------------
# References

def refs_of(kind_name: str, body: Mapping[str, Any]) -> list[tuple[str, str, str]]:
    """Every reference ``body`` (of kind ``kind_name``) makes: ``[(path, kind, name)]`` in
    declaration order, e.g. ``("conditional_backends[0].backend.channel", "channels", "lots")``.
    Implicit names (``RELEASE``) are left out."""
    found = []
    for ref in kind(kind_name).refs:
        for path, value in _walk(body, steps(ref.path)):
            if isinstance(value, str) and value not in ref.implicit:
                found.append((path, ref.kind, value))
    return found


def _resources(doc: Any) -> Iterable[tuple[str, Any]]:
    """(kind, body) of every resource of a Document or of a mapping kind -> bodies."""
    if isinstance(doc, Document):
        for name in KINDS:
            for item in getattr(doc, name):
                yield name, to_body(item)
        return
    for name, bodies in doc.items():
        if name in KINDS:
            for body in bodies:
                yield name, body


def users_of(doc: Any, kind_name: str, name: str) -> list[tuple[str, str, str]]:
    """Who references resource ``kind_name``/``name``: ``[(kind, name, path)]`` (a delete of it is
    refused while this is not empty).  ``doc`` is a :class:`Document` or a mapping kind -> bodies
    (the store's view)."""
    kind(kind_name)
    users = []
    for user_kind, body in _resources(doc):
        for path, ref_kind, ref_name in refs_of(user_kind, body):
            if ref_kind == kind_name and ref_name == name:
                users.append((user_kind, name_of(user_kind, body), path))
    return users


# --------------------------------------------------------------------------------------------------
# Secrets

def _split_url(url: str) -> tuple[str, str, str, str | None] | None:
    """``scheme://user:password@host/rest`` -> (``scheme://``, user, ``host/rest``, password or
    None), or None when the url has no credentials."""
    head, sep, rest = url.partition("://")
    if not sep:
        return None
    cut = min((i for i in (rest.find("/"), rest.find("?"), rest.find("#")) if i >= 0),
              default=len(rest))
    netloc, tail = rest[:cut], rest[cut:]
    userinfo, at, hostport = netloc.rpartition("@")
    if not at:
        return None
    user, colon, password = userinfo.partition(":")
    return head + sep, user, hostport + tail, password if colon else None


def _url_with_password(url: str, password: str) -> str:
    parts = _split_url(url)
    assert parts is not None and parts[3] is not None
    head, user, hostrest, _ = parts
    return f"{head}{user}:{password}@{hostrest}"


def _url_password(url: Any) -> str | None:
    parts = _split_url(url) if isinstance(url, str) else None
    return parts[3] if parts else None


#: query parameters of a url whose values are secrets (names compared in lower case)
_SECRET_PARAMS = frozenset(("password", "passwd", "pwd", "pass", "sslpassword", "secret",
                            "client_secret", "token", "access_token", "auth_token", "api_key",
                            "apikey", "api_token", "sk", "secret_key", "access_key_secret"))


def _query_secrets(url: str) -> list[tuple[str, int, int]]:
    """``(name, start, end)`` of the value of every secret query parameter of ``url`` (in
    order; empty values left out)."""
    q = url.find("?")
    if q < 0:
        return []
    end = url.find("#", q)
    end = len(url) if end < 0 else end
    spans, pos = [], q + 1
    for part in url[q + 1:end].split("&"):
        name, eq, value = part.partition("=")
        key = unquote_plus(name).lower()
        if eq and value and key in _SECRET_PARAMS:
            spans.append((key, pos + len(name) + 1, pos + len(part)))
        pos += len(part) + 1
    return spans


def _mask_url(url: str) -> str:
    if _url_password(url) is not None:
        url = _url_with_password(url, MASK)
    for _name, start, end in reversed(_query_secrets(url)):
        url = url[:start] + MASK + url[end:]
    return url


def _restore_url(path: str, url: str, old: Any) -> str:
    """``url`` with each masked password or secret parameter the stored url's (``old``) again
    (a parameter: the stored one of the same name and rank)."""
    if _url_password(url) == MASK:
        old_password = _url_password(old)
        if old_password is None:
            raise _missing(path)
        url = _url_with_password(url, old_password)
    spans = _query_secrets(url)
    if any(url[start:end] == MASK for _n, start, end in spans):
        stored: dict[str, list[str]] = {}
        if isinstance(old, str):
            for name, start, end in _query_secrets(old):
                stored.setdefault(name, []).append(old[start:end])
        for name, start, end in reversed(spans):      # from the end: spans stay valid
            if url[start:end] != MASK:
                continue
            rank = sum(1 for n, s, _e in spans if n == name and s < start)
            values = stored.get(name, [])
            if rank >= len(values) or values[rank] == MASK:
                raise _missing(path)
            url = url[:start] + values[rank] + url[end:]
    return url


_PUBLIC_PEM = re.compile(r"^\s*-----BEGIN (PUBLIC KEY|CERTIFICATE|RSA PUBLIC KEY)-----")
#: JWK members that hold private or symmetric key material
_JWK_PRIVATE = ("d", "p", "q", "dp", "dq", "qi", "k", "oth")


def _secret_key_string(value: str) -> bool:
    return not _PUBLIC_PEM.match(value)


def _containers(body: Any, secret: Secret | Generated) -> Iterator[tuple[str, Any]]:
    return _walk(body, steps(secret.container)) if secret.container else iter([("", body)])


def _secret_values(body: Any, secret: Secret) -> Iterator[tuple[str, Any, Any, Any]]:
    """(path, container, key, value) of every secret value held at ``secret`` in ``body``:
    ``container[key]`` is the value (``key`` a field name, or a list index)."""
    for cpath, container in _containers(body, secret):
        if not isinstance(container, dict) or container.get(secret.field) is None:
            continue
        path = path_join(cpath, secret.field)
        value = container[secret.field]
        if secret.style in ("items", "keys") and isinstance(value, list):
            for i, item in enumerate(value):
                yield path_join(path, i), value, i, item
        else:
            yield path, container, secret.field, value


def mask(kind_name: str, body: Mapping[str, Any]) -> dict[str, Any]:
    """A copy of ``body`` with every secret as ``"******"`` (a url keeps all but its password, a
    file path is not a secret, a public key stays)."""
    out = _copy(body)
    for secret in kind(kind_name).secrets:
        for _path, holder, key, value in _secret_values(out, secret):
            if secret.style in ("value", "items") and isinstance(value, str) and value:
                holder[key] = MASK
            elif secret.style == "url":
                if isinstance(value, str):
                    holder[key] = _mask_url(value)
            elif secret.style == "pem":
                if isinstance(value, str) and "-----BEGIN" in value:
                    holder[key] = MASK
            elif secret.style == "keys":
                if isinstance(value, str) and _secret_key_string(value):
                    holder[key] = MASK
                elif isinstance(value, dict):
                    for member in _JWK_PRIVATE:
                        if member in value:
                            value[member] = MASK
    return out


def generate_secrets(kind_name: str, body: Mapping[str, Any]) -> tuple[dict[str, Any], dict[str, str]]:
    """``(body with every generated field filled, {path: generated value})``: the values to show
    once, in the answer to the create.  A field already given is kept."""
    out = _copy(body)
    made: dict[str, str] = {}
    for gen in kind(kind_name).generated:
        for cpath, container in _containers(out, gen):
            if isinstance(container, dict) and container.get(gen.field) is None:
                container[gen.field] = made[path_join(cpath, gen.field)] = gen.make()
    return out, made


def _same_place(stored: Any, cpath: str, container_pattern: str, new_container: Any) -> Any:
    """The stored container matching ``new_container``: the same path, or in a list of named
    items, the stored item of the same name (an IAM user keeps its secret when the list is
    reordered)."""
    if not container_pattern:
        return stored
    by_path = dict(_walk(stored, steps(container_pattern)))
    name = new_container.get("name") if isinstance(new_container, dict) else None
    if name is not None:
        for candidate in by_path.values():
            if isinstance(candidate, dict) and candidate.get("name") == name:
                return candidate
        return None
    return by_path.get(cpath)


def keep_secrets(kind_name: str, new_body: Mapping[str, Any],
                 stored_body: Mapping[str, Any] | None) -> dict[str, Any]:
    """A copy of ``new_body`` (a replace or a patched body) where every ``"******"`` a client sent
    back for a secret is the stored secret again.  Raises :class:`SecretError` (with the path) when
    there is no stored secret at that place (a mask never becomes a secret)."""
    out = _copy(new_body)
    for secret in kind(kind_name).secrets:
        for cpath, container in list(_containers(out, secret)):
            if not isinstance(container, dict) or container.get(secret.field) is None:
                continue
            path = path_join(cpath, secret.field)
            old_container = _same_place(stored_body, cpath, secret.container, container) \
                if stored_body is not None else None
            old = old_container.get(secret.field) if isinstance(old_container, dict) else None
            container[secret.field] = _restore(secret, path, container[secret.field], old)
    return out


def _missing(path: str) -> SecretError:
    return SecretError(path, f"'{MASK}' keeps a stored secret, and there is none here: "
                             "give the value")


def _restore(secret: Secret, path: str, value: Any, old: Any) -> Any:
    if secret.style in ("value", "pem"):
        if value == MASK:
            if not isinstance(old, str):
                raise _missing(path)
            return old
        return value
    if secret.style == "url":
        return _restore_url(path, value, old) if isinstance(value, str) else value
    if not isinstance(value, list):
        return value
    old_items = old if isinstance(old, list) else []
    restored = []
    for i, item in enumerate(value):
        ipath = path_join(path, i)
        previous = old_items[i] if i < len(old_items) else None
        if item == MASK:
            if previous is None or previous == MASK:
                raise _missing(ipath)
            restored.append(previous)
        elif secret.style == "keys" and isinstance(item, dict) and MASK in item.values():
            item = dict(item)
            for member, member_value in item.items():
                if member_value == MASK:
                    if not isinstance(previous, dict) or not isinstance(previous.get(member), str):
                        raise _missing(path_join(ipath, member))
                    item[member] = previous[member]
            restored.append(item)
        else:
            restored.append(item)
    return restored

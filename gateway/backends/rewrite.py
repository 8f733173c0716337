"""What the gateway adds to a backend request: backend parameters and a backend signature.

A :class:`RequestRewrite` is compiled per (API, environment) when its backend has ``params``
or the environment binds a ``signature_key``; APIs with neither never reach this module (the
backend builds its request head in C).  Per request it

* computes each backend parameter: from a frontend parameter (``request``: path, header or
  query), a ``constant`` or a ``system`` value (``$context.sourceIp``, ``appName``,
  ``authorizer.frontend.<key>`` ...);
* places it in the backend path (``{name}`` of the backend url), query or headers, encoded so
  that no value -- whoever chose it -- can add a path segment, a query parameter or a header
  line: path values are percent-encoded whole (``/`` and dot segments included), query names
  and values too, and header values lose nothing but have their control characters
  percent-encoded;
* reads a frontend parameter's ``default`` when the client sent none, and adds that default
  under the parameter's own name and location when no backend parameter moves or replaces it
  (as the client's own value would have been forwarded);
* removes what the client sent under the same header or query name (the gateway's value is
  the only one) and, for a parameter mapped to another name or place, the client's original;
* signs the request with ``SDK-HMAC-SHA256`` (the key's key and secret, over the method, path,
  query, ``Host`` and ``X-Sdk-Date`` and the body's SHA-256), as huaweicloudsdkcore does, so a
  backend verifies the call came through the gateway.
"""
from __future__ import annotations

import time
from urllib.parse import parse_qs, quote, unquote

from gateway.policy.params import default_text
from fastpath.sdksign import EMPTY_SHA256, canonical_query, canonical_uri, prepare_secret, signature_of

_SIGNED = b"host;x-sdk-date"
_CONTROL = {c: "%%%02X" % c for c in list(range(0x20)) + [0x7F]}


def encode_segment(value: str) -> str:
    """One path segment: every byte but unreserved ones escaped, dots too (so a value is never
    a dot segment a backend would resolve)."""
    return quote(value, safe="-_~").replace(".", "%2E")


def encode_query(value: str) -> str:
    return quote(value, safe="-_.~")


def header_value(value: str) -> bytes:
    """A header value that is one line whatever ``value`` holds: surrounding blanks dropped,
    control characters (CR, LF, NUL...) percent-encoded."""
    return value.strip(" \t").translate(_CONTROL).encode("utf-8")


def _caller_field(name):
    def read(ex):
        caller = ex.caller
        return (getattr(caller, name) or None) if caller is not None else None
    return read


def _system_reader(name: str):
    """A function ex -> str for the system value ``$context.<name>``; None when the request
    has no such value (no app, no such context key): the parameter is then not sent."""
    for kind in ("frontend", "backend"):
        prefix = f"authorizer.{kind}."
        if name.startswith(prefix):
            key = name[len(prefix):]
            return (lambda kind, key: lambda ex: getattr(ex.caller, kind).get(key)
                    if ex.caller is not None else None)(kind, key)
    readers = {
        "sourceIp": lambda ex: ex.client_ip,
        "stage": lambda ex: ex.env,
        "apiId": lambda ex: ex.api.name,        # (APIs are identified by name)
        "apiName": lambda ex: ex.api.name,
        "appId": _caller_field("app_key"),
        "appName": _caller_field("app"),
        "requestId": lambda ex: ex.request_id,
        "userName": _caller_field("user"),
        "accountName": _caller_field("account"),
    }
    readers["userId"] = readers["user"] = readers["userName"]
    readers["accountId"] = readers["account"] = readers["domainName"] = readers["accountName"]
    return readers[name]


SYSTEM_NAMES = ("sourceIp", "stage", "apiId", "apiName", "appId", "appName", "requestId",
                "userName", "userId", "user", "accountName", "accountId", "account", "domainName")


class _Param:
    __slots__ = ("name", "location", "read")

    def __init__(self, name, location, read):
        self.name = name
        self.location = location
        self.read = read                # ex, query dict -> str or None (None: not sent)


class RequestRewrite:
    """Backend parameters and the backend signature of one API in one environment."""

    def __init__(self, params=(), frontend=(), path_names=(), signature_key=None):
        """``params``: the backend's BackendParam list; ``frontend``: the API's Param list;
        ``path_names``: the API path template's parameters; ``signature_key``: a
        SignatureKey or None."""
        where = {p.name: p.location for p in frontend}
        where.update({name: "path" for name in path_names})
        # a frontend parameter's default: what a mapping reads when the client sent none
        defaults = {p.name: default_text(p.default) for p in frontend
                    if p.default is not None and p.location != "path"}
        self.params = []
        self.drop_headers = set()       # client header names (lower bytes) not forwarded
        self.drop_query = set()         # client query names not forwarded
        self.reads_query = False        # a parameter comes from the client's query
        for param in params:
            if param.origin == "constant":
                value = param.value
                read = (lambda v: lambda ex, q: v)(value)
            elif param.origin == "system":
                reader = _system_reader(param.value[len("$context."):])
                read = (lambda r: lambda ex, q: r(ex))(reader)
            else:
                source = where.get(param.value, "query")
                read = _request_reader(param.value, source, defaults.get(param.value))
                self.reads_query = self.reads_query or source == "query"
                if (source, param.value.lower() if source == "header" else param.value) != \
                        (param.location, param.name.lower() if param.location == "header"
                         else param.name):
                    if source == "header":          # mapped elsewhere: the original goes
                        self.drop_headers.add(param.value.lower().encode("latin-1"))
                    elif source == "query":
                        self.drop_query.add(param.value)
            self.params.append(_Param(param.name, param.location, read))
            if param.location == "header":
                self.drop_headers.add(param.name.lower().encode("latin-1"))
            elif param.location == "query":
                self.drop_query.add(param.name)
        # defaults sent under their own name when no backend parameter moved or replaced them
        self.default_query = tuple((p.name, encode_query(p.name) + "=" + encode_query(
            defaults[p.name])) for p in frontend
            if p.name in defaults and p.location == "query" and p.name not in self.drop_query)
        self.default_headers = tuple((p.name.lower().encode("latin-1"), p.name.encode("latin-1")
                                      + b": " + header_value(defaults[p.name]) + b"\r\n")
                                     for p in frontend if p.name in defaults
                                     and p.location == "header"
                                     and p.name.lower().encode("latin-1") not in self.drop_headers)
        self.reads_query = self.reads_query or bool(self.default_query)
        self.signing = None
        if signature_key is not None:
            self.signing = (signature_key.key.encode(), prepare_secret(signature_key.secret.encode()))
            self.drop_headers.update((b"authorization", b"x-sdk-date", b"x-sdk-content-sha256"))

    def path_values(self, ex) -> tuple[dict, list, list]:
        """(path values by name, query pairs, header lines) of the backend parameters."""
        # (the client's query is parsed only when a parameter reads it)
        query = parse_qs(ex.query.decode("latin-1"), keep_blank_values=True, encoding="utf-8",
                         errors="replace") if self.reads_query else None
        values = dict(ex.params) if ex.params else {}
        pairs = []
        lines = []
        for param in self.params:
            value = param.read(ex, query)
            if value is None:
                continue
            if param.location == "path":
                values[param.name] = encode_segment(value)
            elif param.location == "query":
                pairs.append(encode_query(param.name) + "=" + encode_query(value))
            else:
                lines.append(param.name.encode("latin-1") + b": " + header_value(value) + b"\r\n")
        for name, pair in self.default_query:
            if name not in query:
                pairs.append(pair)
        for key, line in self.default_headers:
            if ex.head.get(key) is None:
                lines.append(line)
        return values, pairs, lines

    def query(self, raw: bytes, pairs: list) -> bytes:
        """The client's query without the names the gateway sets, then the gateway's pairs."""
        kept = []
        if raw:
            for item in raw.split(b"&"):
                if not item:
                    continue
                name = unquote(item.partition(b"=")[0].decode("latin-1"), errors="replace")
                if name not in self.drop_query:
                    kept.append(item)
        kept.extend(p.encode("ascii") for p in pairs)
        return b"&".join(kept)

    def finish_head(self, head: bytes, lines: list, method: bytes, target: bytes, host: bytes,
                    body_hex) -> bytes:
        """The request head built by the backend (``head``), with the client's fields the
        gateway sets removed and the gateway's lines (parameters, signature) added."""
        if self.signing is not None:
            lines = lines + self._signature(method, target, host, body_hex)
        out = []
        parts = head.split(b"\r\n")
        out.append(parts[0])
        for line in parts[1:]:
            if not line:
                continue
            name = line.partition(b":")[0].lower()
            if name not in self.drop_headers:
                out.append(line)
        return b"\r\n".join(out) + b"\r\n" + b"".join(lines) + b"\r\n"

    def _signature(self, method, target, host, body_hex) -> list:
        key, secret = self.signing
        date = time.strftime("%Y%m%dT%H%M%SZ", time.gmtime()).encode()
        path, _, query = target.partition(b"?")
        canonical = b"\n".join((method.upper(), canonical_uri(path), canonical_query(query),
                                b"host:" + host + b"\nx-sdk-date:" + date + b"\n", _SIGNED,
                                body_hex or EMPTY_SHA256))
        signature = signature_of(secret, date, canonical)
        return [b"X-Sdk-Date: " + date + b"\r\n",
                b"Authorization: SDK-HMAC-SHA256 Access=" + key + b", SignedHeaders=" + _SIGNED
                + b", Signature=" + signature + b"\r\n"]


def _request_reader(name: str, location: str, default=None):
    """A reader of the frontend parameter ``name`` at ``location`` (values as received:
    path values as routed, header values decoded, query values percent-decoded; ``default``
    when the client sent none)."""
    if location == "path":
        def read_path(ex, q):
            raw = ex.params.get(name) if ex.params else None
            return unquote(raw) if raw is not None else None
        return read_path
    if location == "header":
        header = name.lower().encode("latin-1")

        def read_header(ex, q):
            raw = ex.head.get(header)
            return raw.decode("utf-8", "replace") if raw is not None else default
        return read_header

    def read_query(ex, q):
        found = q.get(name)
        return found[0] if found else default
    return read_query

"""Frontend parameter checks (``apis[].params``): required, type number, enum, min and max.

A :class:`ParamCheck` is built per API only when one of its parameters has a check; it runs
after authentication and throttling.  A request that breaks one is answered 400 APIC.0201
with a message naming the parameter and what is wrong (a client value it quotes is cut to
:data:`SHOWN` characters).

What is checked, per location:

* ``path``: the segment as routed, percent-decoded (UTF-8);
* ``header``: every field of that name (any case), each value as one value (a comma inside is
  not a separator), UTF-8, without surrounding blanks;
* ``query``: every occurrence of the name, names and values decoded as forms are
  (``+`` is a space, then percent-decoding, then UTF-8).  Invalid percent-encoding or
  UTF-8 in a value is refused naming the parameter.

Repeated parameters: every value must pass.  A parameter present with an empty value is
present (``required`` is met; a number check refuses the empty value).  ``number``: a finite
decimal number, optional sign, fraction and exponent (``-1``, ``2.5``, ``1e3``), nothing else
(no blanks, hex, ``NaN`` or ``inf``); min/max bound its value.  ``string``: min/max bound its
length in characters.

Defaults are not applied here: a missing parameter with a ``default`` is read as that value by
the backend parameters that map it, and is added to the backend request under its own name and
location when no backend parameter moves or replaces it (gateway/backends/rewrite.py).
"""
from __future__ import annotations

import math
import re
from urllib.parse import unquote_to_bytes

from gateway.errors import BadRequest

#: how many characters of a client value an error message quotes
SHOWN = 32
#: how many enum values an error message lists
LISTED = 10

_NUMBER = re.compile(r"[+-]?(?:[0-9]+(?:\.[0-9]*)?|\.[0-9]+)(?:[eE][+-]?[0-9]+)?")
_BAD_PERCENT = re.compile(rb"%(?![0-9A-Fa-f]{2})")


def default_text(value) -> str:
    """A configured default as the text sent (numbers as written in JSON/YAML)."""
    return value if isinstance(value, str) else repr(value)


def forwards_defaults(params) -> bool:
    """Whether an API's backend requests may get a default (a query or header parameter has
    one): its http backend then needs a gateway.backends.rewrite.RequestRewrite."""
    return any(p.default is not None and p.location != "path" for p in params)


def _shown(value: str) -> str:
    return "'" + (value if len(value) <= SHOWN else value[:SHOWN] + "...") + "'"


class _Param:
    """One parameter's checks."""

    __slots__ = ("name", "location", "key", "required", "number", "enum", "enum_text", "low",
                 "high", "checks_values")

    def __init__(self, param):
        self.name = param.name
        self.location = param.location
        self.key = param.name.lower().encode("latin-1") if param.location == "header" else None
        self.required = param.required
        self.number = param.type == "number"
        if param.enum:
            self.enum = frozenset(float(v) for v in param.enum) if self.number else \
                frozenset(param.enum)
            listed = [str(v) for v in param.enum[:LISTED]]
            self.enum_text = ", ".join(listed) + (", ..." if len(param.enum) > LISTED else "")
        else:
            self.enum = None
            self.enum_text = ""
        self.low = param.min
        self.high = param.max
        self.checks_values = (self.number or self.enum is not None or self.low is not None
                              or self.high is not None)


    def refuse(self, what: str):
        raise BadRequest(f"Invalid parameter {self.name}: {what}",
                         f"{self.location} parameter {self.name!r}: {what}")

    def missing(self):
        if self.required:
            raise BadRequest(f"Missing required parameter: {self.name}",
                             f"{self.location} parameter {self.name!r} is missing")

    def check(self, value: str):
        if self.number:
            if _NUMBER.fullmatch(value) is None:
                self.refuse(f"{_shown(value)} is not a number")
            number = float(value)
            if not math.isfinite(number):
                self.refuse(f"{_shown(value)} is not a finite number")
            if self.enum is not None and number not in self.enum:
                self.refuse(f"{_shown(value)} is not one of {self.enum_text}")
            if self.low is not None and number < self.low:
                self.refuse(f"{_shown(value)} is less than the minimum {self.low}")
            if self.high is not None and number > self.high:
                self.refuse(f"{_shown(value)} is greater than the maximum {self.high}")
            return
        if self.enum is not None and value not in self.enum:
            self.refuse(f"{_shown(value)} is not one of {self.enum_text}")
        if self.low is not None and len(value) < self.low:
            self.refuse(f"shorter than {self.low} characters")
        if self.high is not None and len(value) > self.high:
            self.refuse(f"longer than {self.high} characters")


def _decoded(param: _Param, raw: bytes, plus: bool) -> str:
    """A percent-encoded value as text, or a refusal naming the parameter."""
    if plus:
        raw = raw.replace(b"+", b" ")
    if b"%" in raw:
        if _BAD_PERCENT.search(raw) is not None:
            param.refuse("invalid percent-encoding")
        raw = unquote_to_bytes(raw)
    try:
        return raw.decode("utf-8")
    except UnicodeDecodeError:
        param.refuse("not valid UTF-8")


def _query_name(raw: bytes) -> str:
    raw = raw.replace(b"+", b" ")
    if b"%" in raw:
        raw = unquote_to_bytes(raw)
    return raw.decode("utf-8", "replace")      # (a name that does not decode is none of ours)


class ParamCheck:
    """The stage checking an API's frontend parameters (see the module)."""

    __slots__ = ("path", "headers", "query")

    def __init__(self, checks):
        self.path = tuple(c for c in checks if c.location == "path")
        self.headers = tuple(c for c in checks if c.location == "header")
        self.query = {c.name: c for c in checks if c.location == "query"}

    @classmethod
    def of(cls, params):
        """The stage for ``params`` (the API's Param list), or None when none has a check."""
        checks = [c for c in map(_Param, params)
                  if c.required or c.checks_values]
        return cls(checks) if checks else None

    def __call__(self, ex):
        for param in self.path:
            raw = ex.params.get(param.name) if ex.params else None
            if raw is None:
                param.missing()
            elif param.checks_values:
                param.check(_decoded(param, raw.encode("latin-1"), False))
        for param in self.headers:
            values = ex.head.get_all(param.key)
            if not values:
                param.missing()
            elif not param.checks_values:
                continue
            for raw in values:
                try:
                    value = raw.strip(b" \t").decode("utf-8")
                except UnicodeDecodeError:
                    param.refuse("not valid UTF-8")
                param.check(value)
        if self.query:
            self._check_query(ex.query)
        return None

    def _check_query(self, query: bytes):
        checks = self.query
        seen = set()
        if query:
            for item in query.split(b"&"):
                if not item:
                    continue
                name, _, raw = item.partition(b"=")
                param = checks.get(_query_name(name))
                if param is None:
                    continue
                seen.add(param.name)
                if param.checks_values:
                    param.check(_decoded(param, raw, True))
        if len(seen) != len(checks):
            for name, param in checks.items():
                if name not in seen:
                    param.missing()

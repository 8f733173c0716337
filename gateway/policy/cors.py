"""CORS per API (``apis[].cors: true``): what a browser needs to call the API from a page of
another origin.

* Preflights -- an ``OPTIONS`` request with ``Origin`` and ``Access-Control-Request-Method`` --
  are answered by the gateway itself, before any authentication: 200, empty body,
  ``Access-Control-Allow-Origin: *``, the API's methods, the headers a signed or token call
  needs (plus what the browser asked for, when every name it lists is a valid token) and
  ``Access-Control-Max-Age: 172800``.  :func:`preflight_method` tells a preflight apart;
  the pipeline routes it to the :class:`Preflight` handler of the API that serves the
  requested method (gateway/pipeline.py).
* Every other answer of the API -- the backend's and the gateway's own errors alike -- gets
  ``Access-Control-Allow-Origin: *`` and ``Access-Control-Expose-Headers``: the
  :func:`cors` stage, first of the API's stages, puts them in ``ex.resp_lines``.  The
  backend's own ``Access-Control-*`` fields are left out of the answer (the gateway's replace
  them: two ``Access-Control-Allow-Origin`` fields make browsers refuse the answer).
"""
from __future__ import annotations

import re

from gateway.exchange import Handler

#: the methods an ANY API allows
ANY_METHODS = "GET, POST, PUT, DELETE, PATCH, HEAD, OPTIONS"
#: the request headers every CORS API allows (signatures, tokens, AppCodes, the environment)
ALLOW_HEADERS = ("X-Stage", "X-Sdk-Date", "X-Sdk-Nonce", "X-Sdk-Content-Sha256",
                 "X-Proxy-Signed-Headers", "X-Auth-Token", "X-Apig-AppCode", "Authorization",
                 "Content-Type")
#: the answer headers a page may read besides the CORS-safelisted ones
EXPOSE_HEADERS = ("X-Request-Id", "X-Apig-Latency", "X-Apig-Upstream-Latency",
                  "X-Apig-RateLimit-api", "X-Apig-RateLimit-user", "X-Apig-RateLimit-app",
                  "X-Apig-RateLimit-api-allenv", "Retry-After")
MAX_AGE = 172800
#: bounds of the Access-Control-Request-Headers echoed back (beyond: not echoed at all)
MAX_REQUEST_HEADERS = 32
MAX_REQUEST_HEADERS_BYTES = 2048
#: the longest Access-Control-Request-Method taken for a method
MAX_METHOD = 16

DROP_PREFIX = b"access-control-"
ANSWER_LINES = (b"Access-Control-Allow-Origin: *\r\nAccess-Control-Expose-Headers: "
                + ", ".join(EXPOSE_HEADERS).encode() + b"\r\n")

_TOKEN = re.compile(rb"[!#$%&'*+\-.^_`|~0-9A-Za-z]+")
_ALLOWED_LOWER = frozenset(h.lower() for h in ALLOW_HEADERS)


def cors(ex):
    """The first stage of a CORS API: the CORS fields on whatever answer the exchange gets."""
    ex.resp_lines = ANSWER_LINES + ex.resp_lines if ex.resp_lines else ANSWER_LINES
    return None


def preflight_method(head):
    """The method a CORS preflight asks for (str), or None when the request is no preflight:
    no ``Origin``, no ``Access-Control-Request-Method``, or one that is not a method token."""
    method = head.get(b"access-control-request-method")
    if method is None or head.get(b"origin") is None:
        return None
    method = method.strip(b" \t")
    if not 0 < len(method) <= MAX_METHOD or _TOKEN.fullmatch(method) is None:
        return None
    return method.decode("ascii")


def allowed_methods(method: str) -> str:
    """The Access-Control-Allow-Methods of an API of ``method`` (a GET API serves HEAD)."""
    if method == "ANY":
        return ANY_METHODS
    if method == "GET":
        return "GET, HEAD"
    return method


def requested_headers(head):
    """The names of Access-Control-Request-Headers not allowed already (bytes, joined with
    ", "), or b"" when there are none, too many, or one is not a token (nothing echoed)."""
    values = head.get_all(b"access-control-request-headers")
    if not values:
        return b""
    extra = []
    total = 0
    for value in values:
        total += len(value)
        if total > MAX_REQUEST_HEADERS_BYTES:
            return b""
        for name in value.split(b","):
            name = name.strip(b" \t")
            if not name:
                continue
            if _TOKEN.fullmatch(name) is None:
                return b""
            lower = name.lower().decode("ascii")
            if lower not in _ALLOWED_LOWER and lower not in extra:
                extra.append(lower)
                if len(extra) > MAX_REQUEST_HEADERS:
                    return b""
    return ", ".join(extra).encode("ascii")


class Preflight(Handler):
    """The gateway's answer to the preflights of one CORS API (its handler for them: routed
    like the API, with no stage before it)."""

    def __init__(self, method: str):
        self.timeout_s = 0.0
        self.head_lines = (b"Access-Control-Allow-Origin: *\r\n"
                           b"Access-Control-Allow-Methods: " + allowed_methods(method).encode()
                           + b"\r\nAccess-Control-Max-Age: %d\r\n" % MAX_AGE)
        self.allow = ", ".join(ALLOW_HEADERS).encode()

    # (a body, which a preflight never has, is read and dropped as the base does)

    def on_request_end(self, ex):
        extra = requested_headers(ex.head)
        allow = self.allow + b", " + extra if extra else self.allow
        ex.respond_full(200, self.head_lines + b"Access-Control-Allow-Headers: " + allow + b"\r\n"
                        + b"Vary: Access-Control-Request-Method, Access-Control-Request-Headers"
                          b"\r\n", b"")

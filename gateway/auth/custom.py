"""Custom authorizers: a function of the user's decides whether a call may enter (``frontend``)
or obtains what the backend call needs (``backend``).

The function is an HTTP endpoint (POSTed a JSON request) or a Python callable
``package.module:callable`` (a coroutine function is awaited; a plain function runs on a small
thread pool, never on the event loop).  Either gets::

    {"method": "GET", "path": "/orders/7", "headers": {<identity headers>},
     "queryStringParameters": {<identity query parameters>}, "user_data": "...",
     "body": "..."}                                    (body only with need_body)

and answers ``{"status": "allow" | "deny", "context": {"key": "value", ...}}``.  The context
reaches the backend only through backend parameters (``$context.authorizer.frontend.<key>``,
``...backend.<key>``).

Every call is bounded by the authorizer's ``timeout_ms``; a call that fails, times out or
answers something else is a 500 naming the authorizer's trouble (or, in loose mode, lets the
call through with an empty context).  Decisions are cached for ``ttl_s`` keyed by the identity
values, in a bounded cache per worker.
"""
from __future__ import annotations

import asyncio
import importlib
import inspect
import logging
import re
import time
from concurrent.futures import ThreadPoolExecutor
from urllib.parse import parse_qs

import msgspec

from gateway.errors import AuthorizerDenied, AuthorizerFailed
from gateway.pipeline import HeldBody, Wait

from .caller import Caller, RepeatedField, caller_of, single_value

log = logging.getLogger("tollgate.auth")
# httpx logs every request's URL at INFO: an authorizer's or a key server's URL may carry
# credentials, and one line per call is noise
logging.getLogger("httpx").setLevel(logging.WARNING)
logging.getLogger("httpcore").setLevel(logging.WARNING)

_CONTEXT_KEY = re.compile(r"[A-Za-z][A-Za-z0-9_-]{0,31}\Z")
#: bounds on what an authorizer may answer: the whole answer, one context value, the keys
MAX_ANSWER_BYTES = 64 * 1024
MAX_CONTEXT_VALUE = 2048
MAX_CONTEXT_KEYS = 64
#: decisions kept per authorizer (per worker) when ttl_s > 0
CACHE_SIZE = 10000
#: threads for plain (synchronous) callables, per worker: a hung function holds one of them,
#: never the event loop; when all are held, calls queue and time out
SYNC_THREADS = 8

_decode = msgspec.json.Decoder()
_encode = msgspec.json.Encoder()


class BadAnswer(Exception):
    """The authorizer answered something that is not a decision."""


def load_callable(spec: str):
    """The callable named ``package.module:attribute`` (raises ValueError saying why not)."""
    module_name, _, attribute = spec.partition(":")
    try:
        module = importlib.import_module(module_name)
    except Exception as exc:        # (ImportError, or the module failing as it loads)
        raise ValueError(f"cannot import {module_name!r}: {type(exc).__name__}: {exc}") from None
    target = module
    for part in attribute.split("."):
        target = getattr(target, part, None)
        if target is None:
            raise ValueError(f"{module_name!r} has no {attribute!r}")
    if not callable(target):
        raise ValueError(f"{spec!r} is not callable")
    return target


def decision(answer) -> tuple[bool, dict]:
    """(allowed, context) from an authorizer's answer; BadAnswer when it is not one."""
    if not isinstance(answer, dict):
        raise BadAnswer("the answer is not a JSON object")
    status = answer.get("status")
    if status not in ("allow", "deny"):
        raise BadAnswer("'status' is neither 'allow' nor 'deny'")
    raw = answer.get("context") or {}
    if not isinstance(raw, dict):
        raise BadAnswer("'context' is not an object")
    if len(raw) > MAX_CONTEXT_KEYS:
        raise BadAnswer(f"'context' has more than {MAX_CONTEXT_KEYS} keys")
    context = {}
    for key, value in raw.items():
        if not isinstance(key, str) or not _CONTEXT_KEY.match(key):
            raise BadAnswer("a context key is not 1-32 characters [A-Za-z0-9_-] starting "
                            "with a letter")
        if isinstance(value, bool):
            value = "true" if value else "false"
        elif isinstance(value, (int, float)):
            value = str(value)
        elif not isinstance(value, str):
            raise BadAnswer(f"context value {key!r} is not a string")
        if len(value) > MAX_CONTEXT_VALUE:
            raise BadAnswer(f"context value {key!r} is longer than {MAX_CONTEXT_VALUE}")
        context[key] = value
    return status == "allow", context


class Identity:
    __slots__ = ("name", "header", "location", "pattern")

    def __init__(self, config):
        self.name = config.name
        self.header = config.name.lower().encode("latin-1")
        self.location = config.location
        self.pattern = re.compile(config.validation) if config.validation is not None else None


class Authorizer:
    """One configured authorizer as a worker runs it (shared by the APIs that use it)."""

    def __init__(self, config, runtime):
        self.name = config.name
        self.kind = config.type
        self.url = config.url
        self.function = load_callable(config.function) if config.function else None
        function = self.function
        self.is_async = function is not None and (
            inspect.iscoroutinefunction(function)
            or inspect.iscoroutinefunction(getattr(function, "__call__", None)))
        self.identities = tuple(Identity(i) for i in config.identities)
        self.ttl_s = config.ttl_s
        self.user_data = config.user_data
        self.need_body = config.need_body
        self.loose = config.loose
        self.timeout_s = config.timeout_ms / 1000.0
        self.runtime = runtime
        self.cache: dict = {}       # identity values -> (expires, allowed, context)

    # -- identities and the cache ----------------------------------------------------------
    def identity_values(self, ex) -> tuple:
        """The identity values of the request; missing or invalid ones are a 401 (the
        function is not called)."""
        if not self.identities:
            return ()
        query = None
        values = []
        for identity in self.identities:
            if identity.location == "header":
                try:
                    raw = single_value(ex.head, identity.header)
                except RepeatedField:
                    raw = None
                    repeated = True
                else:
                    repeated = False
                value = raw.decode("utf-8", "replace") if raw is not None else None
            else:
                if query is None:
                    query = parse_qs(ex.query.decode("latin-1"), keep_blank_values=True,
                                     encoding="utf-8", errors="replace")
                found = query.get(identity.name)
                repeated = found is not None and len(found) > 1
                value = found[0] if found else None
            if repeated:
                raise AuthorizerDenied(f"Incorrect authentication information: identity "
                                       f"{identity.name} is repeated", reason="invalid")
            if not value:
                raise AuthorizerDenied(f"Incorrect authentication information: missing "
                                       f"identity {identity.name}", reason="missing")
            if identity.pattern is not None and not identity.pattern.fullmatch(value):
                raise AuthorizerDenied(f"Incorrect authentication information: identity "
                                       f"{identity.name} is not valid", reason="invalid")
            values.append(value)
        return tuple(values)

    def cached(self, key):
        hit = self.cache.get(key)
        if hit is None:
            return None
        if hit[0] <= time.monotonic():
            del self.cache[key]
            return None
        return hit

    def remember(self, key, allowed, context):
        cache = self.cache
        if len(cache) >= CACHE_SIZE:
            now = time.monotonic()
            for stale in [k for k, v in cache.items() if v[0] <= now]:
                del cache[stale]
            while len(cache) >= CACHE_SIZE:      # (insertion order: the oldest first)
                del cache[next(iter(cache))]
        cache[key] = (time.monotonic() + self.ttl_s, allowed, context)

    # -- the call ------------------------------------------------------------------------
    def request(self, ex, body) -> dict:
        headers = {}
        query = {}
        for identity, value in zip(self.identities, ex.auth_state):
            (headers if identity.location == "header" else query)[identity.name] = value
        request = {"method": ex.method, "path": ex.path, "headers": headers,
                   "queryStringParameters": query, "user_data": self.user_data}
        if body is not None:
            request["body"] = body
        return request

    async def call(self, request: dict) -> tuple[bool, dict]:
        if self.function is not None:
            if self.is_async:
                answer = await self.function(request)
            else:
                answer = await asyncio.get_running_loop().run_in_executor(
                    _executor(self.runtime), self.function, request)
            if isinstance(answer, (bytes, str)):
                answer = _decode.decode(answer)
            return decision(answer)
        client = _http_client(self.runtime)
        async with client.stream("POST", self.url, content=_encode.encode(request),
                                 headers={"content-type": "application/json"}) as response:
            if response.status_code != 200:
                raise BadAnswer(f"status {response.status_code}")
            data = bytearray()
            async for chunk in response.aiter_bytes():
                data += chunk
                if len(data) > MAX_ANSWER_BYTES:
                    raise BadAnswer(f"an answer over {MAX_ANSWER_BYTES} bytes")
        try:
            answer = _decode.decode(data)
        except msgspec.DecodeError:
            raise BadAnswer("the answer is not JSON") from None
        return decision(answer)


class AuthorizerStage:
    """The stage of one API in one environment running one authorizer: ``frontend`` for
    ``auth: custom``, ``backend`` for ``backend.authorizer`` (last, just before the backend)."""

    def __init__(self, authorizer: Authorizer, api_name: str, metrics=None):
        self.authorizer = authorizer
        self.api_name = api_name
        self.metrics = metrics
        self.frontend = authorizer.kind == "frontend"
        self.what = f"{authorizer.kind} authorizer"

    def _count(self, ex, reason):
        if self.metrics is not None:
            self.metrics.count_auth_failure(self.api_name, ex.env, "custom", reason)

    def __call__(self, ex):
        authorizer = self.authorizer
        try:
            key = authorizer.identity_values(ex)
        except AuthorizerDenied as error:
            self._count(ex, error.reason)
            raise
        if authorizer.ttl_s:
            hit = authorizer.cached(key)
            if hit is not None:
                self._apply(ex, hit[1], hit[2])
                return None
        ex.auth_state = key
        if authorizer.need_body and ex.has_body and ex.body_digest is None:
            return HeldBody(self._after_body)
        return self._wait(ex)

    def _after_body(self, ex, digest):
        return self._wait(ex)

    def _wait(self, ex):
        failed = AuthorizerFailed(f"Custom authorizer failed: no answer within "
                                  f"{self.authorizer.timeout_s * 1000:.0f} ms", reason="timeout")
        # (the backstop of the connection's sweep; the call's own timeout comes first)
        return Wait(self._decide(ex), self.authorizer.timeout_s + 1.0, failed)

    async def _decide(self, ex):
        authorizer = self.authorizer
        body = None
        if authorizer.need_body and ex.held is not None:
            body = b"".join(ex.held.chunks).decode("utf-8", "replace")
        request = authorizer.request(ex, body)
        problem = None
        try:
            # (asyncio.timeout, not wait_for: the call runs in this task, so whatever it
            # raises -- SystemExit included -- is caught here, not by the event loop)
            async with asyncio.timeout(authorizer.timeout_s):
                allowed, context = await authorizer.call(request)
        except asyncio.TimeoutError:
            problem, reason = f"no answer within {authorizer.timeout_s * 1000:.0f} ms", "timeout"
        except BadAnswer as exc:
            problem, reason = f"unusable answer ({exc})", "bad_answer"
        except asyncio.CancelledError:
            if asyncio.current_task().cancelling():
                raise           # (the exchange is over: the client left, or it timed out)
            problem, reason = "the call failed", "failed"      # (raised by the function)
            log.warning("authorizer %s: the call failed: CancelledError", authorizer.name)
        except BaseException as exc:    # (SystemExit, KeyboardInterrupt from a function too:
            problem, reason = "the call failed", "failed"      # never the worker's end)
            log.warning("authorizer %s: the call failed: %s: %s", authorizer.name,
                        type(exc).__name__, exc)
        if problem is not None:
            if authorizer.loose:
                allowed, context = True, {}     # (not cached: the next call asks again)
            else:
                self._count(ex, reason)
                raise AuthorizerFailed(f"Custom authorizer failed: {problem}",
                                       f"authorizer {authorizer.name}: {problem}", reason=reason)
        elif authorizer.ttl_s:
            authorizer.remember(ex.auth_state, allowed, context)
        self._apply(ex, allowed, context)

    def _apply(self, ex, allowed, context):
        if not allowed:
            self._count(ex, "denied")
            raise AuthorizerDenied(f"Incorrect authentication information: {self.what}",
                                   f"{self.what} {self.authorizer.name} denied", reason="denied")
        if self.frontend:
            ex.caller = Caller("custom", frontend=context)
        else:
            caller_of(ex).backend = context


def _executor(runtime):
    executor = getattr(runtime, "authorizer_threads", None)
    if executor is None:
        executor = runtime.authorizer_threads = ThreadPoolExecutor(
            SYNC_THREADS, thread_name_prefix="tollgate-authorizer")
    return executor


def _http_client(runtime):
    client = getattr(runtime, "authorizer_http", None)
    if client is None:
        import httpx    # (imported when an HTTP authorizer is first called)

        client = runtime.authorizer_http = httpx.AsyncClient(
            limits=httpx.Limits(max_connections=64, max_keepalive_connections=16),
            timeout=None, follow_redirects=False, trust_env=False)
    return client

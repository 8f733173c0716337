"""Entering the pipeline: normalise, route, then the API's own stages.

The stage list is built per API in the snapshot (authentication, then the policies), so an
API pays only for what it uses.  A stage is ``stage(ex)``; it refuses by raising a GatewayError
and otherwise returns one of

* ``None``: done, the next stage runs at once (the common case: no object, no await);
* a :class:`HeldBody`: the stage needs the whole request body first.  The client connection
  collects it (hashed as it arrives, kept once, bounded by the body limit), then calls
  ``finish(ex, hex digest)``, which returns None or a :class:`Wait` like a stage;
* a :class:`Wait`: the stage must wait for I/O (an authorizer call, a key fetch).  The
  connection runs the awaitable as a task, holds the request body back meanwhile (reading is
  paused; what was already read is kept), bounds the wait by ``timeout_s`` and cancels the
  task when the client goes away.  Its result is ignored: it raises a GatewayError to refuse.

The pipeline then resumes with the next stage (:meth:`Pipeline.resume`).  Only an exchange
whose stage returned something pays for suspending; APIs whose stages never wait run as
before, in one call.
"""
from __future__ import annotations

from fastpath import PathError, normalize_path

import hashlib

from gateway.errors import BadRequest, FramingError, NotFound
from gateway.policy.cors import preflight_method

try:
    import cython

    _COMPILED = cython.compiled
except ImportError:  # pragma: no cover - without Cython only the interpreted form exists
    _COMPILED = False

DEFAULT_ENV = "RELEASE"


def _query_start(raw):
    """Index of the '?' that starts the query, -1 when there is none, or -2 when the target
    holds a '#' anywhere: a fragment is never sent, in the path or after the query (a C scan
    when compiled)."""
    if _COMPILED:
        q = -1
        for i in range(len(raw)):
            c = raw[i]
            if c == 63:
                if q < 0:
                    q = i
            elif c == 35:
                return -2
        return q
    if b"#" in raw:
        return -2
    return raw.find(b"?")


def _preflight_route(router, ex, env, path):
    """The route of a CORS preflight no OPTIONS API took: the preflight answer of the API that
    serves the method it asks for, in the same environment and host, when that API has CORS;
    else None."""
    method = preflight_method(ex.head)
    if method is None:
        return None
    found = router.match(env, ex.host, method, path)
    if found is None or found[0].preflight is None:
        return None
    return (found[0].preflight, found[1], found[2])


class HeldBody:
    """A request body held until a stage has checked it: hashed as it arrives (SHA-256, the
    digest signatures need), kept once, released to the backend afterwards."""

    __slots__ = ("chunks", "hasher", "finish")

    def __init__(self, finish=None):
        self.chunks = []
        self.hasher = hashlib.sha256()
        self.finish = finish    # finish(ex, hex digest bytes) -> None or a Wait; may raise

    def add(self, chunk):
        self.chunks.append(chunk)
        self.hasher.update(chunk)


class Wait:
    """What a stage returns to wait for I/O: ``awaitable`` (a coroutine) is run as a task;
    ``timeout_s`` bounds it (the awaitable should enforce its own, more precise, timeout:
    this is the backstop of the connection's sweep); ``error`` is the GatewayError answered
    when the backstop fires."""

    __slots__ = ("awaitable", "timeout_s", "error")

    def __init__(self, awaitable, timeout_s, error):
        self.awaitable = awaitable
        self.timeout_s = timeout_s
        self.error = error


class Pipeline:
    """Routes exchanges for one worker (attribute types: gateway/pipeline.pxd).

    ``router`` is the live snapshot's; the worker sets it with the snapshot (one reference,
    swapped atomically: an exchange routed before a reload keeps the API it was given)."""

    def __init__(self, worker):
        self.worker = worker
        self.router = None

    def enter(self, ex):
        raw = ex.raw_target
        q = _query_start(raw)
        if q == -2:
            raise FramingError("Malformed request target",
                               f"target {raw[:128]!r}: a raw '#' (fragments are never sent)")
        if q >= 0:
            ex.query = raw[q + 1:]
            raw = raw[:q]
        try:
            path = normalize_path(raw.decode("latin-1"))
        except PathError as exc:
            raise BadRequest("Malformed request path", f"path {raw[:128]!r}: {exc}") from None
        ex.path = path
        stage = ex.stage
        env = stage.decode("latin-1") if stage is not None else DEFAULT_ENV
        ex.env = env
        found = self.router.match(env, ex.host, ex.method, path)
        if found is None:
            if ex.method == "OPTIONS":      # a CORS preflight: to the API of the method asked
                found = _preflight_route(self.router, ex, env, path)
            if found is None:
                raise NotFound("No API matches this request")
        api, ex.params, ex.rest = found
        if api.preflight is not None and ex.method == "OPTIONS" and preflight_method(ex.head):
            api = api.preflight             # (an ANY API with CORS: the gateway answers)
        ex.api = api
        ex.handler = api.handler
        return self.resume(ex)          # (from the first stage: ex.next_stage is 0)

    def resume(self, ex):
        """Run the stages from ``ex.next_stage`` (after the one that suspended the exchange);
        returns like enter."""
        stages = ex.api.stages
        for i in range(ex.next_stage, len(stages)):
            pending = stages[i](ex)
            if pending is not None:
                ex.next_stage = i + 1
                return pending
        ex.next_stage = len(stages)
        return None

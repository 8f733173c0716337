"""Entering the pipeline: normalise, route, then the API's own stages.

The stage list is built per API in the snapshot (empty for now; authentication, throttling,
access control and parameter mapping come as stages), so an API pays only for what it uses.
A stage is ``stage(ex) -> None`` and answers by raising a GatewayError.
"""
from __future__ import annotations

from fastpath import PathError, normalize_path

from gateway.errors import BadRequest, FramingError, NotFound

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
            raise NotFound("No API matches this request")
        api, ex.params, ex.rest = found
        ex.api = api
        ex.handler = api.handler
        for stage in api.stages:
            stage(ex)

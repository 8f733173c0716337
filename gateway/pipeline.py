"""Entering the pipeline: normalise, route, then the API's own stages.

The stage list is built per API in the snapshot (empty for now; authentication, throttling,
access control and parameter mapping come as stages), so an API pays only for what it uses.
A stage is ``stage(ex) -> None`` and answers by raising a GatewayError.
"""
from __future__ import annotations

from fastpath import PathError, normalize_path

from gateway.errors import BadRequest, NotFound

try:
    import cython

    _COMPILED = cython.compiled
except ImportError:  # pragma: no cover - without Cython only the interpreted form exists
    _COMPILED = False

DEFAULT_ENV = "RELEASE"


def _query_start(raw):
    """Index of the '?' that starts the query, or -1 (a C scan when compiled)."""
    if _COMPILED:
        for i in range(len(raw)):
            if raw[i] == 63:
                return i
        return -1
    return raw.find(b"?")


class Pipeline:
    """Routes exchanges for one worker (attribute types: gateway/pipeline.pxd)."""

    def __init__(self, worker):
        self.worker = worker

    def enter(self, ex):
        raw = ex.raw_target
        q = _query_start(raw)
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
        router = self.worker.snapshot.router   # one read: a reload swaps the whole snapshot
        found = router.match(env, ex.host, ex.method, path)
        if found is None:
            raise NotFound("No API matches this request")
        api, ex.params, ex.rest = found
        ex.api = api
        ex.handler = api.handler
        for stage in api.stages:
            stage(ex)

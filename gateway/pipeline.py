"""Entering the pipeline: normalise, route, then the API's own stages.

The stage list is built per API in the snapshot (empty for now; authentication, throttling,
access control and parameter mapping come as stages), so an API pays only for what it uses.
A stage is ``stage(ex) -> None`` and answers by raising a GatewayError.
"""
from __future__ import annotations

from fastpath import PathError, normalize_path

from gateway.errors import BadRequest, NotFound

DEFAULT_ENV = "RELEASE"


class Pipeline:
    """Routes exchanges for one worker (attribute types: gateway/pipeline.pxd)."""

    def __init__(self, worker):
        self.worker = worker

    def enter(self, ex):
        raw = ex.raw_target
        q = raw.find(b"?")
        if q >= 0:
            ex.query = raw[q + 1:]
            raw = raw[:q]
        try:
            path = normalize_path(raw.decode("latin-1"))
        except PathError as exc:
            raise BadRequest("Malformed request path", f"path {raw[:128]!r}: {exc}") from None
        ex.path = path
        stage = ex.conn.h_stage
        env = stage.decode("latin-1") if stage is not None else DEFAULT_ENV
        ex.env = env
        found = self.worker.snapshot.router.match(env, ex.host, ex.method, path)
        if found is None:
            raise NotFound("No API matches this request")
        api, ex.params, ex.rest = found
        ex.api = api
        ex.handler = api.handler
        for stage in api.stages:
            stage(ex)

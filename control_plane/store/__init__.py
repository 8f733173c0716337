"""The control plane's store: :func:`open_store` and the interface of :mod:`.base`.

URLs:

* ``sqlite:///relative/path.db`` or ``sqlite:////absolute/path.db`` (three slashes then the
  path, as SQLAlchemy writes them); :data:`DEFAULT_URL` when none is given;
* ``postgresql://user:password@host:port/database`` (also ``postgres://``; any libpq URL
  asyncpg accepts).
"""
from __future__ import annotations

from control_plane.store.base import (ApiVersion, AuditEntry, Conflict, Gateway, NotFound,
                                      PublishInfo, Record, SchemaTooNew, StaleRevision, Store,
                                      StoreError, StoreUnavailable, Token, body_hash,
                                      canonical_json)

#: a file in the working directory
DEFAULT_URL = "sqlite:///tollgate-control-plane.db"

__all__ = ["open_store", "DEFAULT_URL", "Store", "Record", "AuditEntry", "PublishInfo",
           "ApiVersion", "Token", "Gateway", "StoreError", "StoreUnavailable", "NotFound", "Conflict",
           "StaleRevision", "SchemaTooNew", "body_hash", "canonical_json"]


async def open_store(url: str | None = None, *, audit_key: bytes | None = None) -> Store:
    """Open (creating the schema when missing) the store at ``url``; ``await store.close()``
    when done.  ``audit_key``: the key of the audit log's hashes (:mod:`control_plane.audit`;
    None: a random one of this process).  ValueError for a URL of no known engine."""
    store = await _open(url or DEFAULT_URL)
    store.audit_key = audit_key
    return store


async def _open(url: str) -> Store:
    if url.startswith("sqlite://"):
        from control_plane.store.sqlite import SqliteStore
        path = url[len("sqlite://"):]
        if not path.startswith("/") or path == "/":
            raise ValueError(f"store URL {url!r}: write sqlite:///relative/file.db or "
                             "sqlite:////absolute/file.db")
        return await SqliteStore(path[1:]).open()
    if url.startswith(("postgresql://", "postgres://")):
        from control_plane.store.postgres import PostgresStore
        return await PostgresStore(url).open()
    raise ValueError(f"store URL {url!r}: expected sqlite:///FILE or postgresql://...")

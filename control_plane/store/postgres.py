"""The PostgreSQL engine (asyncpg): several control planes share one database.

A pool of connections; each write is one transaction at READ COMMITTED whose first statement
bumps a counter row (``UPDATE counters ... RETURNING``): the row lock serialises writers until
commit, so the checks a write makes (``if_revision``, name taken) and the write itself see the
same state, and revisions commit in order.  Reads run in a read-only REPEATABLE READ
transaction (a page and its total agree).

Publishes are announced with ``NOTIFY tollgate_publish, '<revision>'`` inside the publishing
transaction (PostgreSQL delivers it at commit); every store object keeps one more connection
that LISTENs, so ``watch()`` wakes on a publish made through any control plane on the database.
That connection is re-opened (with back-off) if it drops; watchers then read the revision again.

The server down (stopped, restarting, unreachable): every call raises :class:`StoreUnavailable`
(the app answers 503) instead of the driver's error; a waiting ``watch()`` is woken when the
LISTEN connection drops, so it raises too rather than waiting out its timeout.  Nothing needs a
restart when the server is back: the pool's connections are replaced (they are all expired when
the LISTEN connection drops: the server went away for every connection, not only that one) and
the LISTEN connection is re-opened.
"""
from __future__ import annotations

import asyncio
import contextlib
import functools
import logging

import asyncpg

from control_plane.store.base import (SCHEMA_VERSION, SchemaTooNew, Store, StoreUnavailable,
                                      _Conn, build_index, schema_statements)

CHANNEL = "tollgate_publish"
#: a constant key for pg_advisory_xact_lock: control planes starting together migrate in turn
_MIGRATION_LOCK = 0x7011_6a7e

log = logging.getLogger("tollgate.control_plane.store")

#: seconds to open a connection before the store counts as unavailable
CONNECT_TIMEOUT_S = 5.0

#: what a refused or lost connection raises: the server stopped, restarting, or unreachable
_UNAVAILABLE = (OSError,                  # refused, reset, timed out (TimeoutError is one)
                asyncpg.PostgresConnectionError,  # ConnectionDoesNotExist, ConnectionFailure...
                asyncpg.exceptions.AdminShutdownError,
                asyncpg.exceptions.CrashShutdownError,
                asyncpg.exceptions.CannotConnectNowError)


def _lost(exc: BaseException) -> bool:
    """True when ``exc`` says the server or the connection is gone (not a bug or a bad query)."""
    if isinstance(exc, _UNAVAILABLE):
        return True
    # asyncpg raises a bare InterfaceError for a call on a connection that the server closed
    return isinstance(exc, asyncpg.InterfaceError) and "closed" in str(exc)


@functools.lru_cache(maxsize=256)
def _numbered(sql: str) -> str:
    """``?`` placeholders as PostgreSQL's ``$1, $2...`` (the shared SQL has no literal ``?``)."""
    parts = sql.split("?")
    out = [parts[0]]
    for i, part in enumerate(parts[1:], 1):
        out.append(f"${i}{part}")
    return "".join(out)


class _PgConn(_Conn):
    for_update = " FOR UPDATE"

    def __init__(self, conn: asyncpg.Connection):
        self._conn = conn

    async def execute(self, sql: str, *args) -> None:
        await self._conn.execute(_numbered(sql), *args)

    async def fetchone(self, sql: str, *args):
        return await self._conn.fetchrow(_numbered(sql), *args)

    async def fetchall(self, sql: str, *args):
        return await self._conn.fetch(_numbered(sql), *args)

    async def executemany(self, sql, rows) -> None:
        await self._conn.executemany(_numbered(sql), [tuple(r) for r in rows])

    def json_field(self) -> str:
        # body is TEXT holding compact JSON; ``json`` (not jsonb) keeps a value's text as stored
        return "(body::json -> CAST(? AS TEXT))::text"


class PostgresStore(Store):
    """The store on a PostgreSQL database (tables created when missing)."""

    # min_size 0: connections are opened on demand (asyncpg would otherwise keep re-opening a
    # floor of them while the server is down, logging a traceback at every attempt)
    def __init__(self, dsn: str, *, min_size: int = 0, max_size: int = 10):
        self.dsn = dsn
        self._init_watch()
        self._size = (min_size, max_size)
        self._pool: asyncpg.Pool | None = None
        self._listener: asyncpg.Connection | None = None
        self._relisten_task: asyncio.Task | None = None
        self._tasks: set[asyncio.Task] = set()
        self._closed = False

    async def open(self) -> "PostgresStore":
        self._pool = await asyncpg.create_pool(self.dsn, min_size=self._size[0],
                                               max_size=self._size[1],
                                               timeout=CONNECT_TIMEOUT_S)
        try:
            async with self._writer() as c:
                await c.fetchone("SELECT pg_advisory_xact_lock(?)", _MIGRATION_LOCK)
                await _migrate(c)
            await self._listen()
        except BaseException:
            await self._pool.close()
            raise
        return self

    async def _listen(self) -> None:
        conn = await asyncpg.connect(self.dsn, timeout=CONNECT_TIMEOUT_S)
        await conn.add_listener(CHANNEL, self._on_notify)
        conn.add_termination_listener(self._on_listener_lost)
        self._listener = conn

    def _on_notify(self, conn, pid, channel, payload) -> None:
        self._publish_seen()

    def _on_listener_lost(self, conn) -> None:
        if self._closed or self._relisten_task is not None:
            return
        # the server may be gone for every connection: replace the pool's at their next use
        # (not one failed call each), and let the watchers read again now (they get the store's
        # state, or StoreUnavailable, instead of waiting out their timeout)
        self._expire()
        self._publish_seen()
        self._relisten_task = asyncio.get_running_loop().create_task(self._relisten())

    async def _relisten(self) -> None:
        delay = 0.1
        try:
            while not self._closed:
                try:
                    await self._listen()
                    self._publish_seen()     # publishes may have been missed: re-read
                    return
                except (OSError, asyncpg.PostgresError, asyncpg.InterfaceError) as exc:
                    log.warning("store: LISTEN connection lost (%s); retrying in %.1f s", exc, delay)
                    await asyncio.sleep(delay)
                    delay = min(delay * 2, 5.0)
        finally:
            self._relisten_task = None

    @contextlib.asynccontextmanager
    async def _reader(self):
        try:
            async with self._pool.acquire() as conn:
                async with conn.transaction(isolation="repeatable_read", readonly=True):
                    yield _PgConn(conn)
        except Exception as exc:
            if _lost(exc):
                raise self._unavailable(exc) from exc
            raise

    @contextlib.asynccontextmanager
    async def _writer(self):
        if self._pool is None:
            raise RuntimeError("the store is not open")
        try:
            async with self._pool.acquire() as conn:
                async with conn.transaction():
                    yield _PgConn(conn)
        except Exception as exc:
            if _lost(exc):
                raise self._unavailable(exc) from exc
            raise

    def _expire(self) -> None:
        """Replace every pooled connection at its next acquire (from sync code: a task)."""
        if self._pool is not None and not self._closed:
            task = asyncio.get_running_loop().create_task(self._pool.expire_connections())
            self._tasks.add(task)
            task.add_done_callback(self._tasks.discard)

    def _unavailable(self, exc: BaseException) -> StoreUnavailable:
        self._expire()                           # the others are likely dead too
        return StoreUnavailable(f"the store (PostgreSQL) cannot be reached: "
                                f"{type(exc).__name__}: {exc}")

    async def _notify_publish(self, conn: _Conn, revision: int) -> None:
        await conn.fetchone("SELECT pg_notify(?, ?)", CHANNEL, str(revision))

    async def close(self) -> None:
        self._closed = True
        if self._relisten_task is not None:
            self._relisten_task.cancel()
        if self._listener is not None:
            await self._listener.close()
        if self._pool is not None:
            await self._pool.close()


async def _migrate(c: _Conn) -> None:
    await c.execute("CREATE TABLE IF NOT EXISTS schema_version (version INTEGER NOT NULL)")
    row = await c.fetchone("SELECT version FROM schema_version")
    if row is not None and row[0] > SCHEMA_VERSION:
        raise SchemaTooNew(f"the store's schema is version {row[0]}; this Tollgate knows "
                           f"versions up to {SCHEMA_VERSION}: upgrade Tollgate")
    if row is None:
        for stmt in schema_statements("BIGSERIAL PRIMARY KEY", "DOUBLE PRECISION", "BIGINT"):
            await c.execute(stmt)
        await c.execute("INSERT INTO schema_version (version) VALUES (?)", SCHEMA_VERSION)
    elif row[0] < SCHEMA_VERSION:           # 1 -> 2: the index tables, filled from the bodies
        for stmt in schema_statements("BIGSERIAL PRIMARY KEY", "DOUBLE PRECISION", "BIGINT"):
            await c.execute(stmt)
        await build_index(c)
        await c.execute("UPDATE schema_version SET version = ?", SCHEMA_VERSION)

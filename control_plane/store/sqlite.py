"""The SQLite engine (the default: a file, nothing to install).

Python's sqlite3 on two dedicated threads: one writer connection (every write transaction,
``BEGIN IMMEDIATE`` behind an asyncio lock: in-process writers queue on the lock, writers of
other processes on SQLite's own file lock) and one reader connection (reads see the last
committed state, never a transaction in progress).  WAL, ``synchronous=FULL`` (a committed
transaction is in the WAL on disk before the call returns: an acknowledged write survives
``kill -9`` and power loss), foreign keys on.

``watch()`` wakes at once on publishes made through this store object.  Two processes on one
file do not wake each other's watchers (there is no notification channel in SQLite): a watcher
sees the other's publish when its wait ends.  Run one control plane per SQLite file; several
control planes share a PostgreSQL database instead.
"""
from __future__ import annotations

import asyncio
import contextlib
import sqlite3
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

from control_plane.store.base import (SCHEMA_VERSION, SchemaTooNew, Store, _Conn, build_index,
                                      schema_statements)

#: how long a writer waits for another process's write transaction on the same file
BUSY_TIMEOUT_MS = 30_000


class _SqliteConn(_Conn):
    def __init__(self, pool: ThreadPoolExecutor, conn: sqlite3.Connection):
        self._pool, self._conn = pool, conn

    async def _run(self, fn, *args):
        return await asyncio.get_running_loop().run_in_executor(self._pool, fn, *args)

    def _exec(self, sql, args):
        return self._conn.execute(sql, args).fetchall()

    async def execute(self, sql: str, *args) -> None:
        await self._run(self._exec, sql, args)

    async def fetchone(self, sql: str, *args):
        rows = await self._run(self._exec, sql, args)   # read to the end: the statement is done
        return rows[0] if rows else None

    async def fetchall(self, sql: str, *args):
        return await self._run(self._exec, sql, args)

    async def executemany(self, sql, rows) -> None:
        await self._run(self._conn.executemany, sql, [tuple(r) for r in rows])


class SqliteStore(Store):
    """The store on one SQLite file (created with its schema when missing)."""

    def __init__(self, path: str | Path):
        self.path = Path(path)
        self._init_watch()
        self._wpool = ThreadPoolExecutor(1, thread_name_prefix="tollgate-store-w")
        self._rpool = ThreadPoolExecutor(1, thread_name_prefix="tollgate-store-r")
        self._w: _SqliteConn | None = None
        self._r: _SqliteConn | None = None
        self._wlock = asyncio.Lock()
        self._rlock = asyncio.Lock()

    async def open(self) -> "SqliteStore":
        loop = asyncio.get_running_loop()
        if self.path.parent and not self.path.parent.exists():
            self.path.parent.mkdir(parents=True, exist_ok=True)
        try:
            wconn = await loop.run_in_executor(self._wpool, self._connect, True)
            self._w = _SqliteConn(self._wpool, wconn)
            async with self._writer() as c:
                await _migrate(c)
            rconn = await loop.run_in_executor(self._rpool, self._connect, False)
            self._r = _SqliteConn(self._rpool, rconn)
        except BaseException:
            await self.close()
            raise
        return self

    def _connect(self, writer: bool) -> sqlite3.Connection:
        conn = sqlite3.connect(self.path, isolation_level=None, check_same_thread=False,
                               timeout=BUSY_TIMEOUT_MS / 1000)
        conn.execute(f"PRAGMA busy_timeout = {BUSY_TIMEOUT_MS}")
        if writer:
            mode = conn.execute("PRAGMA journal_mode = WAL").fetchone()[0]
            if mode.lower() != "wal":
                raise RuntimeError(f"{self.path}: SQLite refused WAL mode ({mode})")
        conn.execute("PRAGMA synchronous = FULL")
        conn.execute("PRAGMA foreign_keys = ON")
        return conn

    @contextlib.asynccontextmanager
    async def _reader(self):
        async with self._rlock:
            await self._r.execute("BEGIN")       # one snapshot for the reads of one call
            try:
                yield self._r
            finally:
                await self._r.execute("COMMIT")

    @contextlib.asynccontextmanager
    async def _writer(self):
        if self._w is None:
            raise RuntimeError("the store is not open")
        async with self._wlock:
            await self._w.execute("BEGIN IMMEDIATE")
            try:
                yield self._w
            except BaseException:
                await asyncio.shield(self._w.execute("ROLLBACK"))
                raise
            try:
                await self._w.execute("COMMIT")
            except BaseException:
                if self._w._conn.in_transaction:
                    await asyncio.shield(self._w.execute("ROLLBACK"))
                raise

    async def close(self) -> None:
        loop = asyncio.get_running_loop()
        for conn, pool in ((self._w, self._wpool), (self._r, self._rpool)):
            if conn is not None:
                await loop.run_in_executor(pool, conn._conn.close)
            pool.shutdown(wait=True)
        self._w = self._r = None


async def _migrate(c: _Conn) -> None:
    await c.execute("CREATE TABLE IF NOT EXISTS schema_version (version INTEGER NOT NULL)")
    row = await c.fetchone("SELECT version FROM schema_version")
    if row is not None and row[0] > SCHEMA_VERSION:
        raise SchemaTooNew(f"the store's schema is version {row[0]}; this Tollgate knows "
                           f"versions up to {SCHEMA_VERSION}: upgrade Tollgate")
    if row is None:
        for stmt in schema_statements("INTEGER PRIMARY KEY AUTOINCREMENT", "REAL", "INTEGER"):
            await c.execute(stmt)
        await c.execute("INSERT INTO schema_version (version) VALUES (?)", SCHEMA_VERSION)
    elif row[0] < SCHEMA_VERSION:           # 1 -> 2: the index tables, filled from the bodies
        for stmt in schema_statements("INTEGER PRIMARY KEY AUTOINCREMENT", "REAL", "INTEGER"):
            await c.execute(stmt)
        await build_index(c)
        await c.execute("UPDATE schema_version SET version = ?", SCHEMA_VERSION)
    # (later versions: migrate step by step from row[0] here)

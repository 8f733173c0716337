"""The control plane's store: one async interface, two engines (SQLite, PostgreSQL).

What is stored
--------------
* **Resources**: ``(kind, name) -> Record(id, revision, body)``.  ``kind`` is a list of the
  configuration document (``"apis"``, ``"channels"``...), ``name`` the item's name, ``body`` the
  item itself (JSON-able dict).  ``id`` is generated at create (uuid4 hex) and kept across
  renames.  Every write (create, replace, rename, delete) bumps one global, monotonic
  **resource revision**; a record carries the revision of its last write (its ETag).
* **Audit**: one entry per change, written in the same transaction as the change: who, action,
  kind, name, when, and the HMAC-SHA-256 (key :attr:`Store.audit_key`, kept outside the store)
  of the canonical JSON of the body before and after -- never the body itself (bodies hold
  secrets).
* **Publishes**: frozen gateway documents numbered by a second counter, the **publish revision**;
  ``watch(after, timeout)`` waits for one newer than ``after``.  **API versions**: what was
  published, per (API, environment), numbered 1, 2, ...
* **Tokens** (stored hashed) and the **gateways** registry (last seen, applied revision).

Writes are transactional: each call is its own transaction, or joins the one opened by
``async with store.transaction() as tx`` (then every call made on ``tx`` commits together, or
nothing does when the block raises).  An acknowledged write is durable.

Concurrency: writers are serialised on the counter row (PostgreSQL: the row lock of ``UPDATE
counters``; SQLite: one writer connection and ``BEGIN IMMEDIATE``), so an ``if_revision`` check
and the write it guards see the same state: of two replaces of one resource made with the same
``if_revision``, exactly one succeeds and the other raises :class:`StaleRevision`.

The logic is written once, here, over a small SQL connection adapter (:class:`_Conn`); the
engines (``sqlite.py``, ``postgres.py``) give the connection, the schema's DDL and the wake-ups.
"""
from __future__ import annotations

import abc
import asyncio
import contextlib
import hashlib
import hmac
import json
import re
import secrets
import time
import uuid
from dataclasses import dataclass, field
from typing import Any, AsyncIterator, Sequence

import msgspec

#: the schema version this code writes and reads (a row of ``schema_version``)
SCHEMA_VERSION = 2
# 1 -> 2: the reference index and claimed keys (tables refs, claims; rows built at open)

RESOURCE_COUNTER = "resource"
PUBLISH_COUNTER = "publish"


# ------------------------------------------------------------------------------------ errors

class StoreError(Exception):
    """Base of the store's errors."""


class NotFound(StoreError):
    """No resource (or token...) of that kind and name."""

    def __init__(self, kind: str, name: str):
        super().__init__(f"{kind} {name!r} does not exist")
        self.kind, self.name = kind, name


class Conflict(StoreError):
    """The name is taken (create, or rename to an existing name)."""

    def __init__(self, kind: str, name: str):
        super().__init__(f"{kind} {name!r} already exists")
        self.kind, self.name = kind, name


class StaleRevision(StoreError):
    """``if_revision`` does not match the resource's revision (HTTP 412); ``current`` is the
    revision it has now."""

    def __init__(self, kind: str, name: str, expected: int, current: int):
        super().__init__(f"{kind} {name!r} is at revision {current}, not {expected}")
        self.kind, self.name, self.expected, self.current = kind, name, expected, current


class StoreUnavailable(StoreError):
    """The store cannot be reached (PostgreSQL down, restarting, or the connection lost): the
    call changed nothing it did not commit; try again later (HTTP 503)."""


class SchemaTooNew(StoreError):
    """The database was written by a newer Tollgate (its schema version is unknown here)."""


# ------------------------------------------------------------------------------------ records

@dataclass(frozen=True)
class Record:
    """One stored resource.  ``revision`` is the global resource revision of its last write."""
    kind: str
    name: str
    id: str
    revision: int
    body: dict
    created_at: float
    updated_at: float


@dataclass(frozen=True)
class AuditEntry:
    """One change.  ``action``: create, replace, rename, delete, token.add, token.delete,
    publish.  The hashes are :func:`body_hash` of the body before / after (None when there is
    none); ``previous_name`` is set on renames."""
    seq: int
    at: float
    who: str
    action: str
    kind: str
    name: str
    resource_id: str | None
    revision: int | None
    before_hash: str | None
    after_hash: str | None
    previous_name: str | None


@dataclass(frozen=True)
class PublishInfo:
    """A publish, without its document."""
    revision: int
    note: str
    who: str
    at: float


@dataclass(frozen=True)
class ApiVersion:
    api: str
    env: str
    version: int
    publish_revision: int
    body: dict
    note: str
    who: str
    at: float


@dataclass(frozen=True)
class Token:
    """A stored admin token.  ``hash`` is the stored SHA-256 (hex) of its value, read by
    :meth:`Store.token_by_hash` only (for the constant-time check of :mod:`control_plane.auth`);
    empty elsewhere, and never shown."""
    id: str
    name: str
    role: str
    created_at: float
    hash: str = field(default="", repr=False, compare=False)


@dataclass(frozen=True)
class Gateway:
    id: str
    revision: int
    address: str
    first_seen: float
    last_seen: float


def canonical_json(value: Any) -> str:
    """The one JSON form hashes are computed on (sorted keys, no spaces, UTF-8)."""
    return json.dumps(value, sort_keys=True, separators=(",", ":"), ensure_ascii=False)


def body_hash(body: Any, key: bytes) -> str:
    """HMAC-SHA-256 (hex) with ``key`` of :func:`canonical_json` of ``body``: what the audit log
    keeps.  Keyed, so that a reader of the audit log cannot confirm a guessed secret by hashing
    a body with it (the key is kept outside the store: :mod:`control_plane.audit`)."""
    return hmac.new(key, canonical_json(body).encode(), hashlib.sha256).hexdigest()


#: the audit key of a store opened without one: random, so hashes compare only within a process
_PROCESS_KEY = secrets.token_bytes(32)


def _dump(body: Any) -> str:
    # stored as written (key order kept: exports read like what was sent); compact, so that a
    # top-level scalar field's JSON text is the same in both engines (``where`` filters)
    return json.dumps(body, separators=(",", ":"), ensure_ascii=False)


_FIELD = re.compile(r"^[A-Za-z_][A-Za-z0-9_]*$")


# ------------------------------------------------------------------------ connection adapter

class _Conn(abc.ABC):
    """One SQL connection as the shared logic sees it: ``?`` placeholders, rows as tuples."""

    #: appended to the SELECT that reads a row before changing it (PostgreSQL: FOR UPDATE)
    for_update = ""

    @abc.abstractmethod
    async def execute(self, sql: str, *args) -> None: ...

    @abc.abstractmethod
    async def fetchone(self, sql: str, *args) -> tuple | None: ...

    @abc.abstractmethod
    async def fetchall(self, sql: str, *args) -> list[tuple]: ...

    async def executemany(self, sql: str, rows: Sequence[Sequence]) -> None:
        for args in rows:
            await self.execute(sql, *args)

    def json_field(self) -> str:
        """SQL for the compact JSON text of the top-level field named by a parameter."""
        return "(body -> ?)"


# ------------------------------------------------------------------------------- interface

_RECORD_COLUMNS = "kind, name, id, revision, body, created_at, updated_at"


def _record(row) -> Record:
    kind, name, id_, revision, body, created, updated = row
    return Record(kind, name, id_, int(revision), json.loads(body), float(created), float(updated))


class Store(abc.ABC):
    """The store.  Open with :func:`control_plane.store.open_store`; ``await close()`` at the end.

    Every method is a coroutine.  Calls made on the store itself run in their own transaction;
    calls made on the object ``transaction()`` yields run in that one transaction.
    """

    #: the key of the audit log's body hashes (``open_store(audit_key=...)``); None: a random
    #: key of this process (hashes comparable only within it)
    audit_key: bytes | None = None

    def _hash(self, body: Any) -> str:
        return body_hash(body, self.audit_key or _PROCESS_KEY)

    def _hash_text(self, text: bytes) -> str:
        """The keyed hash of an already encoded body (a publish's document: encoding it again
        canonically costs about 0.4 s at 10,000 APIs)."""
        return hmac.new(self.audit_key or _PROCESS_KEY, text, hashlib.sha256).hexdigest()

    # -- engine hooks -------------------------------------------------------------------

    @abc.abstractmethod
    def _reader(self) -> contextlib.AbstractAsyncContextManager[_Conn]:
        """A connection for reads outside of any transaction."""

    @abc.abstractmethod
    def _writer(self) -> contextlib.AbstractAsyncContextManager[_Conn]:
        """A connection in a new write transaction: committed when the block ends, rolled back
        when it raises."""

    @abc.abstractmethod
    async def close(self) -> None:
        """Release connections and threads (the store is unusable afterwards)."""

    async def _notify_publish(self, conn: _Conn, revision: int) -> None:
        """Called inside the publish's transaction (PostgreSQL: NOTIFY, sent at commit)."""

    # -- wake-ups of watch() ------------------------------------------------------------

    def _init_watch(self) -> None:
        self._watch_gen = 0
        self._watch_waiter: asyncio.Future | None = None

    def _publish_seen(self) -> None:
        """A publish was committed (here, or by another control plane): wake the watchers."""
        self._watch_gen += 1
        waiter, self._watch_waiter = self._watch_waiter, None
        if waiter is not None and not waiter.done():
            waiter.set_result(None)

    # -- transactions -------------------------------------------------------------------

    @contextlib.asynccontextmanager
    async def transaction(self) -> AsyncIterator["Store"]:
        """``async with store.transaction() as tx:`` -- the calls made on ``tx`` (same methods
        as the store) commit together when the block ends, or not at all if it raises.  Other
        writers wait meanwhile (keep it short).  A ``transaction()`` of ``tx`` joins it."""
        async with self._writer() as conn:
            tx = _Tx(self, conn)
            try:
                yield tx
            finally:
                tx._conn = None             # over: a later call on tx raises StoreError
        for callback in tx.after_commit:
            callback()

    @contextlib.asynccontextmanager
    async def _read(self) -> AsyncIterator[_Conn]:
        async with self._reader() as conn:
            yield conn

    @contextlib.asynccontextmanager
    async def _write(self) -> AsyncIterator[_Conn]:
        async with self.transaction() as tx:
            yield tx._conn, tx

    async def lock(self) -> None:
        """Inside a transaction: wait for the other writers now (the lock of the counter row
        every write takes), so that what the transaction reads next is what its writes change
        (read, check, then write without a writer in between).  SQLite's write transactions
        hold the lock from their start; outside a transaction this does nothing useful."""
        async with self._write() as (c, _):
            await c.fetchone(f"SELECT value FROM counters WHERE name = ?{c.for_update}",
                             RESOURCE_COUNTER)

    # -- resources ----------------------------------------------------------------------

    async def get(self, kind: str, name: str) -> Record | None:
        """The resource, or None."""
        async with self._read() as c:
            return await _get(c, kind, name)

    async def get_by_id(self, kind: str, id: str) -> Record | None:
        """The resource of that id (stable across renames), or None."""
        async with self._read() as c:
            row = await c.fetchone(f"SELECT {_RECORD_COLUMNS} FROM resources "
                                   "WHERE kind = ? AND id = ?", kind, id)
            return _record(row) if row else None

    async def list(self, kind: str, *, name_prefix: str | None = None,
                   where: dict[str, str | int | bool] | None = None,
                   offset: int = 0, limit: int = 100) -> tuple[list[Record], int]:
        """A page of the resources of ``kind`` ordered by name, and how many match in all.

        ``name_prefix``: names starting with it.  ``where``: top-level body fields equal to the
        given scalar (e.g. ``{"group": "shop"}``); a field absent from a body does not match.
        """
        if offset < 0 or limit < 0:
            raise ValueError("offset and limit must be >= 0")
        sql, args = " FROM resources WHERE kind = ?", [kind]
        if name_prefix:
            sql += " AND substr(name, 1, ?) = ?"
            args += [len(name_prefix), name_prefix]
        async with self._read() as c:
            for field, value in (where or {}).items():
                if not _FIELD.match(field):
                    raise ValueError(f"not a field name: {field!r}")
                if not isinstance(value, (str, int, bool)):
                    raise ValueError(f"where {field}: only strings, integers and booleans")
                sql += f" AND {c.json_field()} = CAST(? AS TEXT)"
                args += [field, _dump(value)]
            total = (await c.fetchone("SELECT count(*)" + sql, *args))[0]
            rows = await c.fetchall(f"SELECT {_RECORD_COLUMNS}{sql} ORDER BY name LIMIT ? OFFSET ?",
                                    *args, limit, offset)
        return [_record(r) for r in rows], int(total)

    async def create(self, kind: str, name: str, body: dict, who: str) -> Record:
        """Store a new resource; :class:`Conflict` if the name is taken."""
        async with self._write() as (c, _):
            revision = await _bump(c, RESOURCE_COUNTER)
            if await _get(c, kind, name, lock=True) is not None:
                raise Conflict(kind, name)
            now, id_, text = time.time(), uuid.uuid4().hex, _dump(body)
            await c.execute("INSERT INTO resources (kind, name, id, revision, body, created_at, "
                            "updated_at) VALUES (?, ?, ?, ?, ?, ?, ?)",
                            kind, name, id_, revision, text, now, now)
            await _reindex(c, kind, None, name, body)
            await _audit(c, who, "create", kind, name, id_, revision, None, self._hash(body), now)
            return Record(kind, name, id_, revision, json.loads(text), now, now)

    async def replace(self, kind: str, name: str, body: dict, who: str, *,
                      if_revision: int | None = None, new_name: str | None = None) -> Record:
        """Replace the body of a resource (a rename when ``new_name`` differs from ``name``:
        the id is kept).  :class:`NotFound`; :class:`StaleRevision` when ``if_revision`` is given
        and is not the resource's revision; :class:`Conflict` when ``new_name`` is taken."""
        async with self._write() as (c, _):
            revision = await _bump(c, RESOURCE_COUNTER)
            old = await _get(c, kind, name, lock=True)
            if old is None:
                raise NotFound(kind, name)
            if if_revision is not None and if_revision != old.revision:
                raise StaleRevision(kind, name, if_revision, old.revision)
            target = name if new_name is None else new_name
            if target != name and await _get(c, kind, target, lock=True) is not None:
                raise Conflict(kind, target)
            now, text = time.time(), _dump(body)
            await c.execute("UPDATE resources SET name = ?, revision = ?, body = ?, updated_at = ? "
                            "WHERE kind = ? AND id = ?", target, revision, text, now, kind, old.id)
            await _reindex(c, kind, name, target, body)
            await _audit(c, who, "rename" if target != name else "replace", kind, target, old.id,
                         revision, self._hash(old.body), self._hash(body), now,
                         previous_name=name if target != name else None)
            return Record(kind, target, old.id, revision, json.loads(text), old.created_at, now)

    async def delete(self, kind: str, name: str, who: str, *,
                     if_revision: int | None = None) -> int:
        """Delete a resource; the revision of the deletion.  :class:`NotFound`,
        :class:`StaleRevision` as for :meth:`replace`."""
        async with self._write() as (c, _):
            revision = await _bump(c, RESOURCE_COUNTER)
            old = await _get(c, kind, name, lock=True)
            if old is None:
                raise NotFound(kind, name)
            if if_revision is not None and if_revision != old.revision:
                raise StaleRevision(kind, name, if_revision, old.revision)
            await c.execute("DELETE FROM resources WHERE kind = ? AND id = ?", kind, old.id)
            await _reindex(c, kind, name, None, None)
            await _audit(c, who, "delete", kind, name, old.id, revision, self._hash(old.body),
                         None, time.time())
            return revision

    async def users(self, kind: str, name: str) -> list[tuple[str, str, str]]:
        """Who references ``kind``/``name``: ``[(kind, name, path)]``, in the order of
        :func:`control_plane.kinds.users_of` (kinds in document order, then names, then the
        order of the references in the body) -- an indexed lookup of the ``refs`` rows."""
        async with self._read() as c:
            rows = await c.fetchall("SELECT from_kind, from_name, seq, path FROM refs "
                                    "WHERE to_kind = ? AND to_name = ?", kind, name)
        from control_plane.index import kind_rank
        rows = sorted(rows, key=lambda r: (kind_rank(r[0]), r[1], int(r[2])))
        return [(r[0], r[1], r[3]) for r in rows]

    async def claimants(self, claims: Sequence[tuple[str, str]]
                        ) -> list[tuple[str, str, str, str, str]]:
        """The holders of these ``(claim, key)``: ``[(claim, key, kind, name, detail)]``."""
        out: list[tuple[str, str, str, str, str]] = []
        async with self._read() as c:
            for claim, key in dict.fromkeys(claims):
                rows = await c.fetchall("SELECT claim, key, kind, name, detail FROM claims "
                                        "WHERE claim = ? AND key = ?", claim, key)
                out += [tuple(r) for r in rows]
        return out

    async def revision(self) -> int:
        """The current resource revision (0 before the first write)."""
        async with self._read() as c:
            return await _counter(c, RESOURCE_COUNTER)

    # -- audit --------------------------------------------------------------------------

    async def audit(self, offset: int = 0, limit: int = 100) -> tuple[list[AuditEntry], int]:
        """A page of the audit log, newest first, and the number of entries."""
        async with self._read() as c:
            total = (await c.fetchone("SELECT count(*) FROM audit"))[0]
            rows = await c.fetchall(
                "SELECT seq, at, who, action, kind, name, resource_id, revision, before_hash, "
                "after_hash, previous_name FROM audit ORDER BY seq DESC LIMIT ? OFFSET ?",
                limit, offset)
        return [AuditEntry(*r) for r in rows], int(total)

    # -- publishes and API versions -----------------------------------------------------

    async def add_publish(self, document: dict, note: str, who: str) -> int:
        """Store a gateway document as the next publish revision (returned); watchers wake
        when it is committed.  (Its audit hash is the SHA-256 of the stored text: a publish
        is megabytes at 10,000 APIs, encoded once, not again in the canonical form.)"""
        text = msgspec.json.encode(document)
        async with self._write() as (c, tx):
            revision = await _bump(c, PUBLISH_COUNTER)
            now = time.time()
            await c.execute("INSERT INTO publishes (revision, document, note, who, at) "
                            "VALUES (?, ?, ?, ?, ?)", revision, text.decode(), note, who, now)
            await _audit(c, who, "publish", "publishes", str(revision), None, None, None,
                         self._hash_text(text), now)
            await self._notify_publish(c, revision)
            tx.after_commit.append(self._publish_seen)
            return revision

    async def latest_publish(self) -> tuple[int, dict] | None:
        """``(revision, document)`` of the newest publish, or None if none was made."""
        async with self._read() as c:
            row = await c.fetchone("SELECT revision, document FROM publishes "
                                   "ORDER BY revision DESC LIMIT 1")
        return (int(row[0]), json.loads(row[1])) if row else None

    async def publish_at(self, revision: int) -> dict | None:
        """The document of that publish revision, or None."""
        async with self._read() as c:
            row = await c.fetchone("SELECT document FROM publishes WHERE revision = ?", revision)
        return json.loads(row[0]) if row else None

    async def publishes(self, offset: int = 0, limit: int = 100) -> tuple[list[PublishInfo], int]:
        """A page of the publishes (newest first, without documents) and their number."""
        async with self._read() as c:
            total = (await c.fetchone("SELECT count(*) FROM publishes"))[0]
            rows = await c.fetchall("SELECT revision, note, who, at FROM publishes "
                                    "ORDER BY revision DESC LIMIT ? OFFSET ?", limit, offset)
        return [PublishInfo(int(r[0]), r[1], r[2], float(r[3])) for r in rows], int(total)

    async def publish_revision(self) -> int:
        """The newest publish revision (0 before the first publish)."""
        async with self._read() as c:
            return await _counter(c, PUBLISH_COUNTER)

    async def add_api_version(self, api: str, env: str, body: dict, publish_revision: int,
                              note: str, who: str) -> int:
        """Record what was published of ``api`` in ``env``: the next version number (1, 2...)
        of that pair, returned."""
        async with self._write() as (c, _):
            # serialised with the other writers (the counter row), so max + 1 is free
            await c.fetchone(f"SELECT value FROM counters WHERE name = ?{c.for_update}",
                             PUBLISH_COUNTER)
            row = await c.fetchone("SELECT max(version) FROM api_versions WHERE api = ? AND env = ?",
                                   api, env)
            version = int(row[0] or 0) + 1
            await c.execute("INSERT INTO api_versions (api, env, version, publish_revision, body, "
                            "note, who, at) VALUES (?, ?, ?, ?, ?, ?, ?, ?)",
                            api, env, version, publish_revision, _dump(body), note, who, time.time())
            return version

    async def latest_api_versions(self, env: str, apis: Sequence[str] | None = None
                                  ) -> dict[str, int]:
        """The newest version number of each API published in ``env`` ever (by API name; of
        ``apis`` only, when given: a few are read by the primary key, many in one scan)."""
        async with self._read() as c:
            if apis is not None and len(apis) <= 100:
                out = {}
                for api in apis:
                    row = await c.fetchone("SELECT max(version) FROM api_versions "
                                           "WHERE api = ? AND env = ?", api, env)
                    if row and row[0] is not None:
                        out[api] = int(row[0])
                return out
            rows = await c.fetchall("SELECT api, max(version) FROM api_versions WHERE env = ? "
                                    "GROUP BY api", env)
        return {r[0]: int(r[1]) for r in rows}

    async def add_api_versions(self, items: Sequence[tuple[str, str, dict, int]],
                               publish_revision: int, note: str, who: str) -> None:
        """Record many publishes of ``(api, env, body, version)`` at once: the versions are
        the next of each pair (:meth:`latest_api_versions` + 1, read in the same writer
        transaction; :meth:`add_api_version` finds it for one)."""
        now = time.time()
        async with self._write() as (c, _):
            await c.executemany(
                "INSERT INTO api_versions (api, env, version, publish_revision, body, note, who, "
                "at) VALUES (?, ?, ?, ?, ?, ?, ?, ?)",
                [(api, env, version, publish_revision, _dump(body), note, who, now)
                 for api, env, body, version in items])

    async def api_versions(self, api: str, env: str) -> list[ApiVersion]:
        """Every version of ``api`` in ``env``, oldest first."""
        async with self._read() as c:
            rows = await c.fetchall(
                "SELECT api, env, version, publish_revision, body, note, who, at FROM api_versions "
                "WHERE api = ? AND env = ? ORDER BY version", api, env)
        return [ApiVersion(r[0], r[1], int(r[2]), int(r[3]), json.loads(r[4]), r[5], r[6],
                           float(r[7])) for r in rows]

    async def watch(self, after: int, timeout: float) -> int | None:
        """The newest publish revision as soon as it is > ``after``; None after ``timeout``
        seconds without one.  Wakes at once on a publish made through this store object; with
        PostgreSQL also on one made through any other control plane on the same database
        (LISTEN/NOTIFY).  With SQLite, a publish made by another process on the same file is
        seen only at the next call (or when this store publishes): run one control plane per
        SQLite file."""
        loop = asyncio.get_running_loop()
        deadline = loop.time() + timeout
        while True:
            gen = self._watch_gen
            latest = await self.publish_revision()
            if latest > after:
                return latest
            remaining = deadline - loop.time()
            if remaining <= 0:
                return None
            if self._watch_gen != gen:      # a publish arrived while we read: read again
                continue
            if self._watch_waiter is None:
                self._watch_waiter = loop.create_future()
            try:
                await asyncio.wait_for(asyncio.shield(self._watch_waiter), remaining)
            except asyncio.TimeoutError:
                return None

    # -- tokens -------------------------------------------------------------------------

    async def add_token(self, name: str, role: str, token_hash: str, who: str = "system") -> Token:
        """Store a token by its hash; :class:`Conflict` if the name (or the hash) is taken."""
        async with self._write() as (c, _):
            await _bump(c, RESOURCE_COUNTER)
            if await c.fetchone(f"SELECT name FROM tokens WHERE name = ? OR hash = ?{c.for_update}",
                                name, token_hash):
                raise Conflict("tokens", name)
            token = Token(uuid.uuid4().hex, name, role, time.time())
            await c.execute("INSERT INTO tokens (id, name, role, hash, created_at) "
                            "VALUES (?, ?, ?, ?, ?)", token.id, name, role, token_hash,
                            token.created_at)
            await _audit(c, who, "token.add", "tokens", name, token.id, None, None,
                         self._hash({"name": name, "role": role}), token.created_at)
            return token

    async def tokens(self) -> list[Token]:
        """Every token, by name."""
        async with self._read() as c:
            rows = await c.fetchall("SELECT id, name, role, created_at FROM tokens ORDER BY name")
        return [Token(r[0], r[1], r[2], float(r[3])) for r in rows]

    async def token_by_hash(self, token_hash: str) -> Token | None:
        """The token of that hash (an index lookup: compare the presented token's hash)."""
        async with self._read() as c:
            r = await c.fetchone("SELECT id, name, role, created_at, hash FROM tokens "
                                 "WHERE hash = ?", token_hash)
        return Token(r[0], r[1], r[2], float(r[3]), r[4]) if r else None

    async def delete_token(self, name: str, who: str = "system") -> None:
        """:class:`NotFound` if there is no such token."""
        async with self._write() as (c, _):
            await _bump(c, RESOURCE_COUNTER)
            row = await c.fetchone(f"SELECT id, role FROM tokens WHERE name = ?{c.for_update}", name)
            if row is None:
                raise NotFound("tokens", name)
            await c.execute("DELETE FROM tokens WHERE name = ?", name)
            await _audit(c, who, "token.delete", "tokens", name, row[0], None,
                         self._hash({"name": name, "role": row[1]}), None, time.time())

    # -- gateways -----------------------------------------------------------------------

    async def seen_gateway(self, id: str, revision: int, address: str) -> None:
        """Record that gateway ``id`` (at ``address``) called, having applied ``revision``."""
        now = time.time()
        async with self._writer() as c:       # not a resource change: no revision, no audit
            await c.execute(
                "INSERT INTO gateways (id, revision, address, first_seen, last_seen) "
                "VALUES (?, ?, ?, ?, ?) ON CONFLICT (id) DO UPDATE SET revision = excluded.revision, "
                "address = excluded.address, last_seen = excluded.last_seen",
                id, revision, address, now, now)

    async def gateways(self) -> list[Gateway]:
        """Every gateway seen, by id."""
        async with self._read() as c:
            rows = await c.fetchall("SELECT id, revision, address, first_seen, last_seen "
                                    "FROM gateways ORDER BY id")
        return [Gateway(r[0], int(r[1]), r[2], float(r[3]), float(r[4])) for r in rows]


class _Tx(Store):
    """The store as seen inside one transaction: every call uses its connection."""

    def __init__(self, store: Store, conn: _Conn):
        self._store, self._conn = store, conn
        self.after_commit: list = []

    @property
    def audit_key(self):
        return self._store.audit_key

    def _live(self) -> _Conn:
        if self._conn is None:
            raise StoreError("the transaction is over: use the store")
        return self._conn

    def _reader(self):
        return contextlib.nullcontext(self._live())

    def _writer(self):
        return contextlib.nullcontext(self._live())

    @contextlib.asynccontextmanager
    async def _read(self):
        yield self._live()

    @contextlib.asynccontextmanager
    async def _write(self):
        yield self._live(), self

    @contextlib.asynccontextmanager
    async def transaction(self):
        yield self

    async def _notify_publish(self, conn, revision):
        await self._store._notify_publish(conn, revision)

    @property
    def _publish_seen(self):
        return self._store._publish_seen

    async def watch(self, after, timeout):
        raise StoreError("watch() cannot run inside a transaction")

    async def close(self):
        raise StoreError("close the store, not its transaction")


# ------------------------------------------------------------------------------- helpers

async def _get(c: _Conn, kind: str, name: str, lock: bool = False) -> Record | None:
    row = await c.fetchone(f"SELECT {_RECORD_COLUMNS} FROM resources WHERE kind = ? AND name = ?"
                           + (c.for_update if lock else ""), kind, name)
    return _record(row) if row else None


async def _reindex(c: _Conn, kind: str, old_name: str | None, name: str | None,
                   body: dict | None) -> None:
    """The index rows (references, claimed keys) of resource ``kind``/``old_name`` replaced by
    those of ``body`` named ``name`` (None: deleted) -- in the write's own transaction."""
    if old_name is not None:
        await c.execute("DELETE FROM refs WHERE from_kind = ? AND from_name = ?", kind, old_name)
        await c.execute("DELETE FROM claims WHERE kind = ? AND name = ?", kind, old_name)
    if body is None or name is None:
        return
    await _insert_index(c, [(kind, name, body)])


async def _insert_index(c: _Conn, resources: Sequence[tuple[str, str, dict]]) -> None:
    from control_plane.index import claims_of, refs_rows
    refs, claims = [], []
    for kind, name, body in resources:
        refs += [(kind, name, seq, path, k, n) for seq, path, k, n in refs_rows(kind, body)]
        claims += [(claim, key, kind, name, detail) for claim, key, detail in claims_of(kind, body)]
    if refs:
        await c.executemany("INSERT INTO refs (from_kind, from_name, seq, path, to_kind, to_name) "
                            "VALUES (?, ?, ?, ?, ?, ?)", refs)
    if claims:
        await c.executemany("INSERT INTO claims (claim, key, kind, name, detail) "
                            "VALUES (?, ?, ?, ?, ?)", claims)


async def build_index(c: _Conn) -> None:
    """(Re)build every index row from the stored bodies: the migration to schema version 2."""
    await c.execute("DELETE FROM refs")
    await c.execute("DELETE FROM claims")
    rows = await c.fetchall("SELECT kind, name, body FROM resources")
    await _insert_index(c, [(kind, name, json.loads(body)) for kind, name, body in rows])


async def _bump(c: _Conn, counter: str) -> int:
    """The counter's next value (its row stays locked until the transaction ends: writers are
    serialised here, before they read what they check)."""
    row = await c.fetchone("UPDATE counters SET value = value + 1 WHERE name = ? RETURNING value",
                           counter)
    return int(row[0])


async def _counter(c: _Conn, counter: str) -> int:
    row = await c.fetchone("SELECT value FROM counters WHERE name = ?", counter)
    return int(row[0])


async def _audit(c: _Conn, who, action, kind, name, resource_id, revision, before_hash,
                 after_hash, at, previous_name=None) -> None:
    await c.execute("INSERT INTO audit (at, who, action, kind, name, resource_id, revision, "
                    "before_hash, after_hash, previous_name) VALUES (?, ?, ?, ?, ?, ?, ?, ?, ?, ?)",
                    at, who, action, kind, name, resource_id, revision, before_hash, after_hash,
                    previous_name)


def schema_statements(autoincrement: str, real: str, bigint: str) -> Sequence[str]:
    """The DDL of :data:`SCHEMA_VERSION` in an engine's words for an auto-numbered key, a
    float, a 64-bit integer."""
    return (
        f"CREATE TABLE IF NOT EXISTS counters (name TEXT PRIMARY KEY, value {bigint} NOT NULL)",
        f"""CREATE TABLE IF NOT EXISTS resources (
            kind TEXT NOT NULL, name TEXT NOT NULL, id TEXT NOT NULL UNIQUE,
            revision {bigint} NOT NULL, body TEXT NOT NULL,
            created_at {real} NOT NULL, updated_at {real} NOT NULL,
            PRIMARY KEY (kind, name))""",
        f"""CREATE TABLE IF NOT EXISTS audit (
            seq {autoincrement}, at {real} NOT NULL, who TEXT NOT NULL, action TEXT NOT NULL,
            kind TEXT NOT NULL, name TEXT NOT NULL, resource_id TEXT, revision {bigint},
            before_hash TEXT, after_hash TEXT, previous_name TEXT)""",
        f"""CREATE TABLE IF NOT EXISTS publishes (
            revision {bigint} PRIMARY KEY, document TEXT NOT NULL, note TEXT NOT NULL,
            who TEXT NOT NULL, at {real} NOT NULL)""",
        f"""CREATE TABLE IF NOT EXISTS api_versions (
            api TEXT NOT NULL, env TEXT NOT NULL, version {bigint} NOT NULL,
            publish_revision {bigint} NOT NULL REFERENCES publishes (revision),
            body TEXT NOT NULL, note TEXT NOT NULL, who TEXT NOT NULL, at {real} NOT NULL,
            PRIMARY KEY (api, env, version))""",
        f"""CREATE TABLE IF NOT EXISTS tokens (
            id TEXT PRIMARY KEY, name TEXT NOT NULL UNIQUE, role TEXT NOT NULL,
            hash TEXT NOT NULL UNIQUE, created_at {real} NOT NULL)""",
        f"""CREATE TABLE IF NOT EXISTS gateways (
            id TEXT PRIMARY KEY, revision {bigint} NOT NULL, address TEXT NOT NULL,
            first_seen {real} NOT NULL, last_seen {real} NOT NULL)""",
        # the reference index and the claimed keys (control_plane/index.py), schema version 2
        f"""CREATE TABLE IF NOT EXISTS refs (
            from_kind TEXT NOT NULL, from_name TEXT NOT NULL, seq {bigint} NOT NULL,
            path TEXT NOT NULL, to_kind TEXT NOT NULL, to_name TEXT NOT NULL)""",
        "CREATE INDEX IF NOT EXISTS refs_to ON refs (to_kind, to_name)",
        "CREATE INDEX IF NOT EXISTS refs_from ON refs (from_kind, from_name)",
        """CREATE TABLE IF NOT EXISTS claims (
            claim TEXT NOT NULL, key TEXT NOT NULL, kind TEXT NOT NULL, name TEXT NOT NULL,
            detail TEXT NOT NULL)""",
        "CREATE INDEX IF NOT EXISTS claims_key ON claims (claim, key)",
        "CREATE INDEX IF NOT EXISTS claims_owner ON claims (kind, name)",
        "INSERT INTO counters (name, value) VALUES ('resource', 0) ON CONFLICT (name) DO NOTHING",
        "INSERT INTO counters (name, value) VALUES ('publish', 0) ON CONFLICT (name) DO NOTHING",
    )

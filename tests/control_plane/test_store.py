"""The control plane's store, every test on both engines: SQLite (a file in tmp_path) and a real
PostgreSQL (one server for the session: ``conftest.pg_server``; a fresh database per test)."""
from __future__ import annotations

import asyncio
import sqlite3
import subprocess
import sys
from pathlib import Path

import pytest

from control_plane.store import (Conflict, NotFound, SchemaTooNew, StaleRevision, StoreError,
                                 body_hash, open_store)

#: the audit key of the stores of these tests
AUDIT_KEY = b"audit-key-of-the-store-tests"

ROOT = Path(__file__).resolve().parents[2]

pytestmark = pytest.mark.once      # pure Python: the fastpath form changes nothing here


@pytest.fixture(params=["sqlite", "postgresql"])
def url(request, tmp_path):
    if request.param == "sqlite":
        return f"sqlite:///{tmp_path}/store.db"
    return request.getfixturevalue("pg_server").create_database()


def run(url, fn):
    """Open the store at url, run ``fn(store)``, close it."""
    async def main():
        store = await open_store(url, audit_key=AUDIT_KEY)
        try:
            return await fn(store)
        finally:
            await store.close()
    return asyncio.run(main())


API = {"name": "orders", "group": "shop", "req_uri": "/orders", "backend": {"type": "http"}}


# ------------------------------------------------------------------------------ resources

def test_create_get_and_global_revision(url):
    async def fn(s):
        assert await s.revision() == 0
        assert await s.get("apis", "orders") is None
        a = await s.create("apis", "orders", API, "alice")
        assert (a.kind, a.name, a.body, a.revision) == ("apis", "orders", API, 1)
        assert len(a.id) == 32 and int(a.id, 16) >= 0
        # one counter for every kind
        c = await s.create("channels", "orders", {"name": "orders", "members": []}, "alice")
        assert c.revision == 2 and c.id != a.id
        got = await s.get("apis", "orders")
        assert got == a
        assert list(got.body) == list(API)           # key order kept
        with pytest.raises(Conflict):
            await s.create("apis", "orders", {"name": "orders"}, "bob")
        assert (await s.get("apis", "orders")).body == API     # the refused create changed nothing
        assert await s.revision() >= 2
        assert await s.get_by_id("apis", a.id) == a
        assert await s.get_by_id("channels", a.id) is None
    run(url, fn)


def test_replace_and_delete_check_if_revision(url):
    async def fn(s):
        a = await s.create("apis", "orders", API, "alice")
        b = await s.replace("apis", "orders", {**API, "req_uri": "/v2"}, "alice", if_revision=a.revision)
        assert b.revision > a.revision and b.id == a.id and b.body["req_uri"] == "/v2"
        with pytest.raises(StaleRevision) as e:
            await s.replace("apis", "orders", {**API, "req_uri": "/v3"}, "bob", if_revision=a.revision)
        assert (e.value.expected, e.value.current) == (a.revision, b.revision)
        assert (await s.get("apis", "orders")).body["req_uri"] == "/v2"
        c = await s.replace("apis", "orders", {**API, "req_uri": "/v4"}, "bob")  # no If-Match
        assert c.revision > b.revision
        with pytest.raises(NotFound):
            await s.replace("apis", "nope", API, "bob")
        with pytest.raises(StaleRevision) as e:
            await s.delete("apis", "orders", "bob", if_revision=b.revision)
        assert e.value.current == c.revision
        assert await s.get("apis", "orders") is not None
        deleted_at = await s.delete("apis", "orders", "bob", if_revision=c.revision)
        assert deleted_at > c.revision and await s.revision() >= deleted_at
        assert await s.get("apis", "orders") is None
        with pytest.raises(NotFound):
            await s.delete("apis", "orders", "bob")
        again = await s.create("apis", "orders", API, "bob")      # the name is free again
        assert again.id != a.id
    run(url, fn)


def test_rename_keeps_the_id(url):
    async def fn(s):
        a = await s.create("apis", "orders", API, "alice")
        await s.create("apis", "taken", {"name": "taken"}, "alice")
        r = await s.replace("apis", "orders", {**API, "name": "orders2"}, "alice",
                            new_name="orders2", if_revision=a.revision)
        assert r.id == a.id and r.name == "orders2" and r.created_at == a.created_at
        assert await s.get("apis", "orders") is None
        assert (await s.get_by_id("apis", a.id)).name == "orders2"
        with pytest.raises(Conflict):
            await s.replace("apis", "orders2", {"name": "taken"}, "alice", new_name="taken")
        assert (await s.get("apis", "taken")).body == {"name": "taken"}
        assert (await s.get("apis", "orders2")).body["name"] == "orders2"
        entry = (await s.audit(limit=1))[0][0]
        assert entry.action == "rename" and entry.previous_name == "orders" and entry.name == "orders2"
    run(url, fn)


def test_list_filters_paginates_and_counts(url):
    async def fn(s):
        async with s.transaction() as tx:
            for i in range(25):
                await tx.create("apis", f"api-{i:02d}", {"name": f"api-{i:02d}",
                                "group": "g1" if i % 2 else "g2", "n": i, "on": i < 5}, "alice")
            await tx.create("apis", "other", {"name": "other"}, "alice")   # no group field
            await tx.create("groups", "api-zz", {"name": "api-zz"}, "alice")  # another kind
        page, total = await s.list("apis", limit=10)
        assert total == 26 and [r.name for r in page] == [f"api-{i:02d}" for i in range(10)]
        page, total = await s.list("apis", offset=20, limit=10)
        assert total == 26 and [r.name for r in page] == [f"api-{i:02d}" for i in range(20, 25)] + ["other"]
        page, total = await s.list("apis", where={"group": "g1"}, limit=5, offset=5)
        assert total == 12 and [r.name for r in page] == [f"api-{i:02d}" for i in (11, 13, 15, 17, 19)]
        page, total = await s.list("apis", name_prefix="api-1", where={"group": "g2"})
        assert total == 5 and {r.body["group"] for r in page} == {"g2"}
        assert (await s.list("apis", where={"n": 7}))[1] == 1
        assert (await s.list("apis", where={"on": True}))[1] == 5
        assert (await s.list("apis", where={"group": "none"})) == ([], 0)
        assert (await s.list("apis", name_prefix="api_"))[1] == 0    # not a LIKE pattern
        assert (await s.list("apis", limit=0)) == ([], 26)
        assert (await s.list("nothing")) == ([], 0)
        with pytest.raises(ValueError):
            await s.list("apis", where={"group') OR 1=1 --": "x"})
        with pytest.raises(ValueError):
            await s.list("apis", where={"group": ["g1"]})
        with pytest.raises(ValueError):
            await s.list("apis", offset=-1)
    run(url, fn)


# --------------------------------------------------------------------------- transactions

def test_transaction_commits_together_or_rolls_back_wholly(url):
    async def fn(s):
        keep = await s.create("apis", "keep", {"name": "keep"}, "alice")
        revision, audit_count = await s.revision(), (await s.audit())[1]

        class Boom(Exception):
            pass
        with pytest.raises(Boom):
            async with s.transaction() as tx:
                await tx.create("apis", "a", {"name": "a"}, "alice")
                await tx.replace("apis", "keep", {"name": "keep", "x": 1}, "alice")
                assert (await tx.get("apis", "a")) is not None      # seen inside
                assert (await s.get("apis", "a")) is None           # not outside, yet
                await tx.add_publish({"p": 1}, "n", "alice")
                await tx.add_token("t", "read-only", "h" * 64)
                raise Boom
        assert await s.get("apis", "a") is None
        assert await s.get("apis", "keep") == keep
        assert await s.revision() == revision
        assert (await s.audit())[1] == audit_count
        assert await s.latest_publish() is None and await s.tokens() == []

        # a store error inside the block rolls back what came before it too
        with pytest.raises(Conflict):
            async with s.transaction() as tx:
                await tx.create("apis", "b", {"name": "b"}, "alice")
                await tx.create("apis", "keep", {"name": "keep"}, "alice")
        assert await s.get("apis", "b") is None

        async with s.transaction() as tx:
            await tx.create("apis", "b", {"name": "b"}, "alice")
            async with tx.transaction() as inner:         # joins the outer one
                await inner.replace("apis", "keep", {"name": "keep", "y": 2}, "alice")
        assert (await s.get("apis", "b")) is not None
        assert (await s.get("apis", "keep")).body == {"name": "keep", "y": 2}
        with pytest.raises(StoreError):                  # a finished transaction is not reused
            await tx.create("apis", "late", {}, "alice")
        assert await s.get("apis", "late") is None
    run(url, fn)


# ---------------------------------------------------------------------------------- audit

def test_audit_keeps_hashes_never_bodies(url):
    secret = "s3cr3t-Very-Private-0042"
    app = {"name": "billing", "secret": secret, "app_codes": [secret + "-code"]}

    async def fn(s):
        await s.create("apps", "billing", app, "alice")
        changed = {**app, "secret": secret + "-2"}
        await s.replace("apps", "billing", changed, "bob")
        await s.delete("apps", "billing", "carol")
        entries, total = await s.audit()
        assert total == 3
        delete, replace, create = entries                         # newest first
        assert [(e.who, e.action, e.kind, e.name) for e in entries] == [
            ("carol", "delete", "apps", "billing"), ("bob", "replace", "apps", "billing"),
            ("alice", "create", "apps", "billing")]
        assert (create.before_hash, create.after_hash) == (None, body_hash(app, AUDIT_KEY))
        assert (replace.before_hash, replace.after_hash) == (body_hash(app, AUDIT_KEY), body_hash(changed, AUDIT_KEY))
        assert (delete.before_hash, delete.after_hash) == (body_hash(changed, AUDIT_KEY), None)
        # the hash does not depend on key order
        assert body_hash(dict(reversed(list(app.items()))), AUDIT_KEY) == body_hash(app, AUDIT_KEY)
        assert create.resource_id == replace.resource_id == delete.resource_id
        assert create.revision < replace.revision < delete.revision
        assert secret not in repr(entries)
        page, _ = await s.audit(offset=1, limit=1)
        assert page == [replace]
    run(url, fn)


def test_audit_is_not_readable_as_bodies_in_the_database(tmp_path):
    """The raw audit table (SQLite file) holds no body text."""
    secret = "s3cr3t-in-the-file-only-once"
    url = f"sqlite:///{tmp_path}/store.db"

    async def fn(s):
        await s.create("apps", "a", {"name": "a", "secret": secret}, "alice")
        await s.delete("apps", "a", "alice")
    run(url, fn)
    rows = sqlite3.connect(tmp_path / "store.db").execute("SELECT * FROM audit").fetchall()
    assert rows and secret not in repr(rows)


# --------------------------------------------------------------------- tokens and gateways

def test_tokens(url):
    async def fn(s):
        assert await s.tokens() == []
        t = await s.add_token("admin", "read-write", "a" * 64, who="bootstrap")
        await s.add_token("ci", "read-only", "b" * 64)
        assert [(x.name, x.role) for x in await s.tokens()] == [("admin", "read-write"),
                                                                 ("ci", "read-only")]
        assert await s.token_by_hash("a" * 64) == t
        assert await s.token_by_hash("c" * 64) is None
        with pytest.raises(Conflict):
            await s.add_token("admin", "read-only", "d" * 64)
        with pytest.raises(Conflict):                       # the same token twice
            await s.add_token("other", "read-only", "a" * 64)
        await s.delete_token("ci", who="admin")
        assert await s.token_by_hash("b" * 64) is None
        with pytest.raises(NotFound):
            await s.delete_token("ci")
        entries, _ = await s.audit()
        assert [(e.action, e.name, e.who) for e in entries] == [
            ("token.delete", "ci", "admin"), ("token.add", "ci", "system"),
            ("token.add", "admin", "bootstrap")]
        assert "a" * 64 not in repr(entries) and "b" * 64 not in repr(entries)
    run(url, fn)


def test_gateways_registry(url):
    async def fn(s):
        assert await s.gateways() == []
        await s.seen_gateway("gw-1", 0, "10.0.0.1:8080")
        await s.seen_gateway("gw-2", 3, "10.0.0.2:8080")
        first = (await s.gateways())[0]
        await s.seen_gateway("gw-1", 4, "10.0.0.9:8080")
        g1, g2 = await s.gateways()
        assert (g1.id, g1.revision, g1.address) == ("gw-1", 4, "10.0.0.9:8080")
        assert g1.first_seen == first.first_seen and g1.last_seen >= first.last_seen
        assert (g2.id, g2.revision) == ("gw-2", 3)
        assert await s.revision() == 0 and (await s.audit())[1] == 0   # not resource changes
    run(url, fn)


# ------------------------------------------------------------------- publishes and watch

def test_publishes_and_api_versions(url):
    async def fn(s):
        assert await s.latest_publish() is None and await s.publish_revision() == 0
        await s.create("apis", "orders", API, "alice")
        r1 = await s.add_publish({"apis": [API]}, "first", "alice")
        r2 = await s.add_publish({"apis": []}, "second", "bob")
        assert (r1, r2) == (1, 2)                   # its own counter, not the resource one
        assert await s.latest_publish() == (2, {"apis": []})
        assert await s.publish_at(1) == {"apis": [API]}
        assert await s.publish_at(3) is None
        infos, total = await s.publishes()
        assert total == 2 and [(p.revision, p.note, p.who) for p in infos] == [
            (2, "second", "bob"), (1, "first", "alice")]
        assert await s.add_api_version("orders", "RELEASE", API, r1, "v1", "alice") == 1
        assert await s.add_api_version("orders", "RELEASE", {**API, "x": 1}, r2, "v2", "bob") == 2
        assert await s.add_api_version("orders", "TEST", API, r2, "t", "bob") == 1
        versions = await s.api_versions("orders", "RELEASE")
        assert [(v.version, v.publish_revision, v.note) for v in versions] == [(1, 1, "v1"), (2, 2, "v2")]
        assert versions[1].body == {**API, "x": 1}
        assert await s.api_versions("orders", "nope") == []
        with pytest.raises(Exception):              # a version names an existing publish
            await s.add_api_version("orders", "RELEASE", API, 99, "bad", "bob")
        assert len(await s.api_versions("orders", "RELEASE")) == 2
        assert (await s.audit(limit=1))[0][0].action == "publish"
    run(url, fn)


def test_watch_wakes_on_publish_and_times_out(url):
    async def fn(s):
        assert await s.watch(0, 0.05) is None                     # nothing published
        waiter = asyncio.ensure_future(s.watch(0, 60))
        await asyncio.sleep(0.05)
        assert not waiter.done()
        rev = await s.add_publish({"n": 1}, "", "alice")
        assert await asyncio.wait_for(waiter, 10) == rev          # well before its 60 s
        assert await s.watch(0, 60) == rev                        # already newer: at once
        assert await s.watch(rev, 0.05) is None
        # a publish rolled back wakes nobody and is not seen
        waiter = asyncio.ensure_future(s.watch(rev, 0.5))
        with pytest.raises(RuntimeError):
            async with s.transaction() as tx:
                await tx.add_publish({"n": 2}, "", "alice")
                raise RuntimeError
        assert await waiter is None
        # several watchers, one publish
        waiters = [asyncio.ensure_future(s.watch(rev, 60)) for _ in range(3)]
        await asyncio.sleep(0.05)
        async with s.transaction() as tx:
            rev2 = await tx.add_publish({"n": 3}, "", "alice")
        assert await asyncio.wait_for(asyncio.gather(*waiters), 10) == [rev2] * 3
    run(url, fn)


def test_watch_across_two_control_planes_on_postgresql(pg_server):
    url = pg_server.create_database()

    async def main():
        a, b = await open_store(url), await open_store(url)
        try:
            waiter = asyncio.ensure_future(a.watch(0, 60))
            await asyncio.sleep(0.1)
            assert not waiter.done()
            rev = await b.add_publish({"from": "b"}, "", "alice")
            assert await asyncio.wait_for(waiter, 10) == rev       # NOTIFY, well before 60 s
            assert await a.latest_publish() == (rev, {"from": "b"})
        finally:
            await a.close()
            await b.close()
    asyncio.run(main())


def test_watch_survives_a_lost_listen_connection_on_postgresql(pg_server):
    """The LISTEN connection is killed by the server: it is re-opened, and a publish made on
    another control plane after that still wakes the watcher."""
    url = pg_server.create_database()

    async def main():
        a, b = await open_store(url), await open_store(url)
        try:
            pid = a._listener.get_server_pid()
            pg_server.sql(f"SELECT pg_terminate_backend({pid})", database=url.rsplit("/", 1)[1])
            waiter = asyncio.ensure_future(a.watch(0, 60))
            for _ in range(200):                    # until the listener is back
                if a._listener is not None and a._listener.get_server_pid() != pid \
                        and not a._listener.is_closed():
                    break
                await asyncio.sleep(0.05)
            assert a._listener.get_server_pid() != pid
            rev = await b.add_publish({"from": "b"}, "", "alice")
            assert await asyncio.wait_for(waiter, 10) == rev
        finally:
            await a.close()
            await b.close()
    asyncio.run(main())


def test_two_sqlite_stores_on_one_file_see_each_others_publish_at_the_next_call(tmp_path):
    """Documented: no cross-process wake-up on SQLite; the data is shared all the same."""
    url = f"sqlite:///{tmp_path}/store.db"

    async def main():
        a, b = await open_store(url), await open_store(url)
        try:
            rev = await b.add_publish({"from": "b"}, "", "alice")
            assert await a.watch(0, 0.05) == rev
            assert await a.latest_publish() == (rev, {"from": "b"})
        finally:
            await a.close()
            await b.close()
    asyncio.run(main())


# ------------------------------------------------------------------- durability, concurrency

WRITER = """
import asyncio, sys
from control_plane.store import open_store
async def main():
    s = await open_store(sys.argv[1])
    r = await s.create("apis", "durable", {"name": "durable", "n": 1}, "proc")
    rev = await s.add_publish({"apis": ["durable"]}, "note", "proc")
    print("ok", r.id, rev, flush=True)
    await asyncio.sleep(60)
asyncio.run(main())
"""


def test_an_acknowledged_write_survives_kill_9(url):
    proc = subprocess.Popen([sys.executable, "-c", WRITER, url], cwd=ROOT,
                            stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    try:
        line = proc.stdout.readline()
        proc.kill()                                   # at once, after the acknowledgement
    finally:
        proc.kill()
        proc.wait(10)
        err = proc.stderr.read()
        proc.stdout.close()
        proc.stderr.close()
    assert line.startswith("ok "), err
    _, id_, rev = line.split()

    async def fn(s):
        r = await s.get("apis", "durable")
        assert r is not None and r.id == id_ and r.body == {"name": "durable", "n": 1}
        assert await s.latest_publish() == (int(rev), {"apis": ["durable"]})
        assert (await s.create("apis", "next", {}, "me")).revision > r.revision
    run(url, fn)


def test_concurrent_if_match_replaces_lose_no_update(url):
    async def fn(s):
        base = await s.create("apis", "x", {"name": "x", "n": 0}, "alice")
        # two writers with the same If-Match: exactly one wins
        results = await asyncio.gather(
            *(s.replace("apis", "x", {"name": "x", "by": who}, who, if_revision=base.revision)
              for who in ("a", "b")), return_exceptions=True)
        won = [r for r in results if not isinstance(r, Exception)]
        lost = [r for r in results if isinstance(r, Exception)]
        assert len(won) == 1 and len(lost) == 1 and isinstance(lost[0], StaleRevision), results
        assert (await s.get("apis", "x")).body == won[0].body

        # read-modify-write increments with retries on StaleRevision: none lost
        async def bump(times):
            for _ in range(times):
                while True:
                    cur = await s.get("apis", "x")
                    try:
                        await s.replace("apis", "x", {"name": "x", "n": cur.body.get("n", 0) + 1},
                                        "w", if_revision=cur.revision)
                        break
                    except StaleRevision:
                        pass
        await s.replace("apis", "x", {"name": "x", "n": 0}, "alice")
        await asyncio.gather(*(bump(10) for _ in range(4)))
        assert (await s.get("apis", "x")).body["n"] == 40
    run(url, fn)


RACER = """
import asyncio, sys
from control_plane.store import open_store, StaleRevision
async def main():
    s = await open_store(sys.argv[1])
    print("ready", flush=True)
    await asyncio.get_running_loop().run_in_executor(None, sys.stdin.readline)
    try:
        await s.replace("apis", "x", {"name": "x", "by": sys.argv[3]}, sys.argv[3],
                        if_revision=int(sys.argv[2]))
        print("won", flush=True)
    except StaleRevision:
        print("stale", flush=True)
    await s.close()
asyncio.run(main())
"""


def test_two_processes_replacing_with_one_if_match_one_wins(url):
    async def setup(s):
        return (await s.create("apis", "x", {"name": "x"}, "alice")).revision
    rev = run(url, setup)
    procs = [subprocess.Popen([sys.executable, "-c", RACER, url, str(rev), tag], cwd=ROOT,
                              stdin=subprocess.PIPE, stdout=subprocess.PIPE, text=True)
             for tag in ("p1", "p2")]
    try:
        for p in procs:
            assert p.stdout.readline() == "ready\n"
        for p in procs:
            p.stdin.write("go\n")
            p.stdin.flush()
        outcome = {tag: p.stdout.readline().strip() for tag, p in zip(("p1", "p2"), procs)}
        for p in procs:
            assert p.wait(30) == 0
    finally:
        for p in procs:
            p.kill()
            p.wait(10)
            p.stdin.close()
            p.stdout.close()
    assert sorted(outcome.values()) == ["stale", "won"], outcome
    winner = next(tag for tag, o in outcome.items() if o == "won")

    async def check(s):
        assert (await s.get("apis", "x")).body == {"name": "x", "by": winner}
    run(url, check)


# ---------------------------------------------------------------------------------- opening

def test_bad_urls_are_refused():
    for bad in ("mysql://x/y", "sqlite://relative.db", "sqlite:///"):
        with pytest.raises(ValueError):
            asyncio.run(open_store(bad))


def test_a_newer_schema_is_refused_and_reopening_keeps_the_data(url, request):
    run(url, lambda s: s.create("apis", "a", {"name": "a"}, "alice"))
    # reopening an existing store migrates nothing and keeps everything
    assert run(url, lambda s: s.get("apis", "a")).body == {"name": "a"}
    if url.startswith("sqlite"):
        db = sqlite3.connect(url[len("sqlite:///"):])
        db.execute("UPDATE schema_version SET version = 99")
        db.commit()
        db.close()
    else:
        request.getfixturevalue("pg_server").sql("UPDATE schema_version SET version = 99",
                                                 database=url.rsplit("/", 1)[1])
    with pytest.raises(SchemaTooNew):
        run(url, lambda s: s.get("apis", "a"))

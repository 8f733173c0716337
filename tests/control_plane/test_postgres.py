"""Control planes on a PostgreSQL store, over real processes: two control planes sharing one
database, a gateway following one of them through publishes, rollbacks, offlines, a control-plane
crash and a store restart with traffic running (no request may fail), and what the control plane
answers while the store is down.  One PostgreSQL server for the session (``conftest.pg_server``),
a fresh database per test."""
from __future__ import annotations

import asyncio
import threading
import time

import httpx
import pytest

from tests.support.control_plane import ControlPlaneProcess

from .test_publishing import Traffic, base_doc, follower, get, gone, mock_api, ok, serves, wait_for

pytestmark = pytest.mark.once      # the control plane is pure Python; the gateway only follows

ADMIN = "admin-token-for-postgresql-tests-0123"


@pytest.fixture
def pg(pg_server):
    """The session's server, for a test that stops it: started again whatever the test did."""
    yield pg_server
    pg_server.resume()


@pytest.fixture(scope="module")
def two(pg_server, tmp_path_factory):
    """Two control planes, A and B, on one fresh database (shared by the module's tests: each
    test uses its own API names)."""
    url = pg_server.create_database()
    a = ControlPlaneProcess(tmp_path_factory.mktemp("a"), admin_token=ADMIN, store=url)
    b = ControlPlaneProcess(tmp_path_factory.mktemp("b"), admin_token=ADMIN, store=url)
    for proc in (a, b):
        proc.start(wait=False)
    for proc in (a, b):
        proc.wait_serving()
    yield a, b
    pg_server.resume()
    for proc in (a, b):
        if proc.proc is not None:
            assert proc.stop() == 0, proc.log()


@pytest.fixture(scope="module")
def gw(two, tmp_path_factory):
    """A gateway following B (its token made on A)."""
    a, b = two
    with a.client(ADMIN) as ca:
        token = gateway_token(ca)
    workdir = tmp_path_factory.mktemp("gw")
    gateway = follower(b, token, workdir / "state", workdir, ready=False)
    yield gateway
    gateway.stop()


def gateway_token(admin, name="gw") -> str:
    return ok(admin.post("/v1/tokens", json={"name": name, "role": "gateway"}))["token"]


def latest_revision(client) -> int:
    return ok(client.get("/v1/publishes"), 200)["items"][0]["revision"]


def assert_store_down(r):
    """The answer of a control plane whose store is unreachable: a JSON 503, no traceback."""
    assert r.status_code == 503, r.text
    body = r.json()
    assert body["error_code"] == "TG.0503" and "store" in body["error_msg"], body
    assert "Traceback" not in r.text and r.headers["retry-after"]
    assert r.headers["x-request-id"]


# ------------------------------------------------------------------- two control planes

def test_two_control_planes_on_one_store(two, gw):
    a, b = two
    with a.client(ADMIN) as ca, b.client(ADMIN) as cb:
        # a write on A is read on B (and its ETag is good there)
        ok(ca.put("/v1/config", json=base_doc(mock_api("x", "/x", "x1"))), 200)
        r = cb.get("/v1/apis/x")
        assert r.status_code == 200 and r.json()["backend"]["mock"]["body"] == "x1"
        assert ca.get("/v1/apis/x").headers["etag"] == r.headers["etag"]
        r = ok(cb.post("/v1/channels", json={"name": "spare", "port": 9001}))
        assert ca.get("/v1/channels/spare").json() == r
        # a gateway following B applies a publish made on A (LISTEN/NOTIFY wakes B's long poll)
        ok(ca.post("/v1/apis/x/publish", json={"env": "RELEASE"}))
        wait_for(serves(gw, "/x", "x1"), what="a publish on A -> the gateway of B")
        # the gateway waits in a long poll on B; the next publish on A wakes it
        revision = latest_revision(ca)
        wait_for(lambda: [g["revision"] for g in cb.get("/v1/gateways").json()["items"]]
                 == [revision], what="the gateway's poll on B")
        time.sleep(0.3)                          # (its next poll is waiting on B)
        ok(ca.patch("/v1/apis/x", json={"backend": {"mock": {"body": "x2"}}}), 200)
        started = time.monotonic()
        ok(ca.post("/v1/apis/x/publish", json={"env": "RELEASE"}))
        wait_for(serves(gw, "/x", "x2"), what="a second publish on A -> the gateway of B")
        print(f"publish on A -> served by the gateway of B: {time.monotonic() - started:.3f} s")
        assert [g["id"] for g in ca.get("/v1/gateways").json()["items"]] == ["gateway"]
        # publishes of two APIs at once, one through A, one through B: neither is lost
        for name in ("p", "q"):
            ok(ca.post("/v1/apis", json=mock_api(name, f"/{name}", name)))
        barrier, published = threading.Barrier(2), {}

        def publish(proc, name):
            with proc.client(ADMIN) as c:
                barrier.wait()
                published[name] = c.post(f"/v1/apis/{name}/publish", json={"env": "RELEASE"})
        threads = [threading.Thread(target=publish, args=pair) for pair in ((a, "p"), (b, "q"))]
        for t in threads:
            t.start()
        for t in threads:
            t.join(30)
        assert sorted(r.status_code for r in published.values()) == [201, 201]
        before = latest_revision(ca) - 2
        assert {r.json()["revision"] for r in published.values()} == {before + 1, before + 2}
        for name, body in (("p", "p"), ("q", "q"), ("x", "x2")):
            wait_for(serves(gw, f"/{name}", body), what=f"{name} served after both publishes")
        # two replaces with one If-Match, through A and through B at once: exactly one 412
        for round_ in range(3):
            r = ca.get("/v1/channels/spare")
            etag, body = r.headers["etag"], r.json()
            barrier, answers = threading.Barrier(2), {}

            def replace(proc, port):
                with proc.client(ADMIN) as c:
                    barrier.wait()
                    answers[port] = c.put("/v1/channels/spare", json={**body, "port": port},
                                          headers={"If-Match": etag})
            threads = [threading.Thread(target=replace, args=(proc, 9100 + 10 * round_ + i))
                       for i, proc in enumerate((a, b))]
            for t in threads:
                t.start()
            for t in threads:
                t.join(30)
            statuses = sorted(r.status_code for r in answers.values())
            assert statuses == [200, 412], {p: r.text for p, r in answers.items()}
            winner = next(p for p, r in answers.items() if r.status_code == 200)
            for c in (ca, cb):                       # the winner's write, on both
                assert c.get("/v1/channels/spare").json()["port"] == winner
            loser = next(r for r in answers.values() if r.status_code == 412)
            assert loser.json()["error_code"] == "TG.0412"


# -------------------------------------------------------- the scenario, under traffic

def test_gateway_follows_through_publishes_crash_and_store_restart_under_traffic(pg, two, gw):
    """Admin calls go to A; the gateway follows B.  Traffic runs on ``live`` from start to end:
    no request may fail, whatever happens to the other API, to B or to the store."""
    a, b = two
    with a.client(ADMIN) as ca:
        assert ca.post("/v1/groups", json={"name": "main"}).status_code in (201, 409)
        ok(ca.post("/v1/apis", json=mock_api("live", "/live", "live")))
        ok(ca.post("/v1/apis", json=mock_api("other", "/other", "o1")))
        ok(ca.post("/v1/publish", json={"env": "RELEASE", "apis": ["live", "other"]}))
        wait_for(serves(gw, "/live", "live"), what="the first publish")
        with Traffic(gw.url + "/live") as traffic:
            # publish, rollback, offline of the OTHER API
            ok(ca.patch("/v1/apis/other", json={"backend": {"mock": {"body": "o2"}}}), 200)
            ok(ca.post("/v1/apis/other/publish", json={"env": "RELEASE"}))
            wait_for(serves(gw, "/other", "o2"), what="publish")
            ok(ca.post("/v1/apis/other/rollback", json={"env": "RELEASE", "version": 1}))
            wait_for(serves(gw, "/other", "o1"), what="rollback")
            ok(ca.post("/v1/apis/other/offline", json={"env": "RELEASE"}))
            wait_for(gone(gw, "/other"), what="offline")
            for _ in range(20):
                r = get(gw, "/other")
                assert r.status_code == 404 and r.json()["error_code"], r.text
            # kill -9 of the control plane the gateway follows; a publish meanwhile (on A)
            b.kill()
            ok(ca.patch("/v1/apis/other", json={"backend": {"mock": {"body": "o3"}}}), 200)
            ok(ca.post("/v1/apis/other/publish", json={"env": "RELEASE"}))
            time.sleep(0.5)
            assert get(gw, "/other").status_code == 404       # B is down: nothing new
            b.start()
            wait_for(serves(gw, "/other", "o3"), timeout=20, what="catch-up after B's crash")
            # the store restarts: both control planes must reconnect (pool and LISTEN)
            pg.halt()
            assert_store_down(ca.get("/v1/apis/other"))
            count = traffic.ok
            wait_for(lambda: traffic.ok > count + 20, what="traffic while the store is down")
            resumed = time.time()           # (no poll can be recorded while it is down)
            pg.resume()
            wait_for(lambda: ca.get("/v1/apis/other").status_code == 200, timeout=20,
                     what="A answers again")
            revision = ok(ca.get("/v1/publishes"), 200)["items"][0]["revision"]

            def polling_again():        # the gateway's poll reached B after the restart
                items = ca.get("/v1/gateways").json()["items"]
                return items and items[0]["revision"] == revision and \
                    items[0]["last_seen"] > resumed
            wait_for(polling_again, timeout=30, what="the gateway polling B again")
            time.sleep(0.3)
            # B's long poll is woken by A's publish only if B listens again
            ok(ca.patch("/v1/apis/other", json={"backend": {"mock": {"body": "o4"}}}), 200)
            ok(ca.post("/v1/apis/other/publish", json={"env": "RELEASE"}))
            wait_for(serves(gw, "/other", "o4"), what="a publish after the store restart")
            count = traffic.ok
            wait_for(lambda: traffic.ok > count + 20, what="traffic after the restart")
        assert traffic.failed == [], traffic.failed[:10]
        assert traffic.ok > 0
        assert get(gw, "/live").text == "live"


# ---------------------------------------------------------------- the store down, and back

def test_store_down_is_a_503_long_polls_end_and_it_recovers(pg, tmp_path):
    cp = ControlPlaneProcess(tmp_path, admin_token=ADMIN, store=pg.create_database()).start()
    try:
        with cp.client(ADMIN) as admin:
            ok(admin.put("/v1/config", json=base_doc(mock_api("x", "/x", "x1"))), 200)
            token = gateway_token(admin, "gw-2")
            gw_headers = {"Authorization": f"Bearer {token}", "X-Tollgate-Gateway": "g1"}
            # a long poll waiting when the store goes away is answered, not left hanging
            waiting = {}

            def long_poll():
                waiting["r"] = httpx.get(cp.url + "/v1/gateway/config",
                                         params={"after": 0, "wait": 60}, headers=gw_headers,
                                         timeout=30)
            poller = threading.Thread(target=long_poll)
            poller.start()
            wait_for(lambda: admin.get("/v1/gateways").json()["items"], what="the poll seen")
            time.sleep(0.3)
            pg.halt()
            poller.join(30)
            assert not poller.is_alive(), "the long poll hangs while the store is down"
            assert_store_down(waiting["r"])
            # every call: a JSON 503, reads, writes, publishes, the gateways' endpoint
            assert_store_down(admin.get("/v1/apis"))
            assert_store_down(admin.get("/v1/apis/x"))
            assert_store_down(admin.post("/v1/apps", json={"name": "during"}))
            assert_store_down(admin.put("/v1/config", json=base_doc()))
            assert_store_down(admin.post("/v1/apis/x/publish", json={"env": "RELEASE"}))
            r = httpx.get(cp.url + "/v1/gateway/config", params={"after": 0, "wait": 5},
                          headers=gw_headers, timeout=30)
            assert_store_down(r)
            # back: served again without a restart of the control plane
            pg.resume()
            wait_for(lambda: admin.get("/v1/apis").status_code == 200, timeout=20,
                     what="reads again")
            assert admin.get("/v1/apps/during").status_code == 404      # the refused write
            ok(admin.post("/v1/apps", json={"name": "after"}))
            assert admin.get("/v1/apps/after").status_code == 200
            # a long poll waits again, and a publish wakes it
            poller = threading.Thread(target=long_poll)
            poller.start()
            time.sleep(0.5)
            assert poller.is_alive()
            ok(admin.post("/v1/apis/x/publish", json={"env": "RELEASE"}))
            poller.join(30)
            assert waiting["r"].status_code == 200 and waiting["r"].json()["revision"] == 1
        assert "Traceback" not in cp.log(), cp.log()[-3000:]
    finally:
        pg.resume()
        assert cp.stop() == 0, cp.log()


# ---------------------------------------------------------------------- crash after a write

def test_an_acknowledged_write_over_http_survives_kill_9(tmp_path):
    # SQLite (the default store); the store's own suite kills a writer on both engines
    cp = ControlPlaneProcess(tmp_path, admin_token=ADMIN).start()
    try:
        with cp.client(ADMIN) as admin:
            made = ok(admin.post("/v1/channels", json={"name": "kept", "port": 9001}))
            etag = admin.get("/v1/channels/kept").headers["etag"]
            r = admin.patch("/v1/channels/kept", json={"port": 9002}, headers={"If-Match": etag})
            assert r.status_code == 200
        cp.kill()                                    # right after the answer
        cp.start()
        with cp.client(ADMIN) as admin:
            got = admin.get("/v1/channels/kept")
            assert got.status_code == 200 and got.json() == {**made, "port": 9002}
            assert got.headers["etag"] == r.headers["etag"]
            assert [e["action"] for e in admin.get("/v1/audit").json()["items"][:2]] == \
                ["replace", "create"]
    finally:
        cp.stop()


# ------------------------------------------------------------- control planes starting together

def test_control_planes_starting_together_make_one_admin_token(pg_server):
    """Several control planes started at once on one new database (replicas of a deployment):
    each must start, with one ``admin`` token between them."""
    from control_plane.auth import ensure_admin_token, token_hash
    from control_plane.store import open_store

    async def together(url, configured):
        stores = [await open_store(url) for _ in range(3)]
        try:
            made = await asyncio.gather(*(ensure_admin_token(s, configured) for s in stores))
            return made, await stores[0].tokens(), await stores[0].token_by_hash(
                token_hash(configured or "") if configured else "")
        finally:
            for s in stores:
                await s.close()

    made, tokens, found = asyncio.run(together(pg_server.create_database(), ADMIN))
    assert made == [None, None, None]
    assert [(t.name, t.role) for t in tokens] == [("admin", "read-write")] and found is not None
    made, tokens, _ = asyncio.run(together(pg_server.create_database(), None))
    assert sum(m is not None for m in made) == 1          # one generated (and printed) token
    assert [(t.name, t.role) for t in tokens] == [("admin", "read-write")]


def test_the_store_raises_store_unavailable_and_reconnects(pg):
    """The store's contract under the app's 503: StoreUnavailable (not the driver's errors)
    while the server is down, reads and writes again as soon as it is back, same object."""
    from control_plane.store import StoreUnavailable, open_store

    async def main(url):
        s = await open_store(url)
        try:
            await s.create("apps", "before", {"name": "before"}, "t")
            pg.halt()
            for call in (lambda: s.get("apps", "before"), lambda: s.list("apps"),
                         lambda: s.create("apps", "during", {"name": "during"}, "t"),
                         lambda: s.watch(0, 5), lambda: s.publish_revision()):
                with pytest.raises(StoreUnavailable):
                    await call()
            pg.resume()
            assert (await s.get("apps", "before")).body == {"name": "before"}   # at once
            assert await s.get("apps", "during") is None
            await s.create("apps", "after", {"name": "after"}, "t")
            # the LISTEN connection is back too: a publish through another store wakes a watch
            other = await open_store(url)
            try:
                watch = asyncio.ensure_future(s.watch(0, 30))
                await asyncio.sleep(0.3)
                await other.add_publish({"version": 1}, "", "t")
                assert await asyncio.wait_for(watch, 20) == 1
            finally:
                await other.close()
        finally:
            await s.close()
    asyncio.run(main(pg.create_database()))

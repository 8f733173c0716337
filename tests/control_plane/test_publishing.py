"""Publishing and live distribution over real processes: ``tollgate control-plane`` (SQLite; the
tests parametrized with ``engine`` also on PostgreSQL: test_postgres.py follows a gateway through
publish, rollback and offline there) and ``tollgate gateway --control-plane``
following it, real backends, real HTTP."""
from __future__ import annotations

import threading
import time

import httpx
import pytest

from control_plane.publishing import diff, gateway_apis
from tests.gateway.test_app_auth import signed_request
from tests.support.backend import Backend
from tests.support.control_plane import running
from tests.support.gateway import GatewayProcess

from .conftest import ENGINES, store_url

ADMIN = "admin-token-for-publishing-tests-0123"


def mock_api(name, path, body, envs=("RELEASE",), **extra):
    return {"name": name, "group": "main", "method": "GET", "path": path,
            "backend": {"type": "mock", "mock": {"status": 200, "body": body}},
            "environments": {e: {} for e in envs}, **extra}


def base_doc(*apis):
    return {"version": 1, "environments": [{"name": "TEST"}], "groups": [{"name": "main"}],
            "apis": list(apis)}


def wait_for(check, timeout=10.0, what="the condition"):
    """Poll ``check()`` until it is truthy (bounded: the test fails after ``timeout``)."""
    deadline = time.monotonic() + timeout
    last = None
    while time.monotonic() < deadline:
        last = check()
        if last:
            return last
        time.sleep(0.05)
    raise AssertionError(f"{what} did not happen in {timeout}s (last: {last!r})")


def get(gw, path, stage=None):
    headers = {"X-Stage": stage} if stage else {}
    return httpx.get(gw.url + path, headers=headers, timeout=5.0)


def serves(gw, path, body, stage=None):
    def check():
        r = get(gw, path, stage)
        return r.status_code == 200 and r.text == body
    return check


def gone(gw, path, stage=None):
    return lambda: get(gw, path, stage).status_code == 404


@pytest.fixture
def engine(request):
    """The store engine (SQLite unless a test is parametrized over ``ENGINES``)."""
    return getattr(request, "param", "sqlite")


@pytest.fixture
def cp(engine, request, tmp_path):
    with running(tmp_path, admin_token=ADMIN,
                               store=store_url(request, engine, tmp_path)) as proc:
        yield proc


@pytest.fixture
def admin(cp):
    with cp.client(ADMIN) as c:
        yield c


@pytest.fixture
def gateway_token(admin):
    r = admin.post("/v1/tokens", json={"name": "gw", "role": "gateway"})
    assert r.status_code == 201, r.text
    return r.json()["token"]


def follower(cp, token, state_dir, tmp_path, name="gateway", ready=True, port=None):
    gw = GatewayProcess(None, tmp_path, name=name, port=port,
                        extra_args=["--control-plane", cp.url, f"--token={token}",
                                    "--state-dir", str(state_dir), "--gateway-id", name])
    return gw.start(ready=ready)


@pytest.fixture
def gateway(cp, gateway_token, tmp_path):
    gw = follower(cp, gateway_token, tmp_path / "state", tmp_path, ready=False)
    yield gw
    gw.stop()


def ok(r, status=201):
    assert r.status_code == status, r.text
    return r.json()


# ------------------------------------------------------------------------------- pure parts

def test_gateway_apis_one_entry_per_definition():
    a1 = mock_api("a", "/a", "v1", envs=("RELEASE", "TEST"))
    a2 = mock_api("a", "/a", "v2")
    a2["environments"] = {"TEST": {"throttle": "t"}}
    published = {"RELEASE": {"a": {"version": 1, "body": a1}},
                 "TEST": {"a": {"version": 2, "body": a2}, "b": {"version": 1,
                                                                 "body": mock_api("b", "/b", "b")}}}
    apis = gateway_apis(published)
    assert [(x["name"], x["environments"]) for x in apis] == [
        ("a", {"RELEASE": {}}), ("a.TEST", {"TEST": {"throttle": "t"}}), ("b", {"TEST": {}})]
    # the same definition in two environments is one entry
    published["TEST"]["a"] = {"version": 2, "body": a1}
    assert [(x["name"], x["environments"]) for x in gateway_apis(published)][0] == \
        ("a", {"RELEASE": {}, "TEST": {}})


def test_diff_paths_and_masked_secrets():
    before = {"name": "shop", "key": "k", "secret": "s1", "app_codes": ["c1"], "quota": None}
    after = {"name": "shop", "key": "k", "secret": "s2", "app_codes": ["c1", "c2"],
             "quota": "q"}
    changes = {c["path"]: (c["before"], c["after"]) for c in diff(before, after, "apps")}
    assert changes == {"secret": ("******", "******"), "app_codes[1]": (None, "******"),
                       "quota": (None, "q")}
    assert diff(before, before, "apps") == []


# ------------------------------------------------------------------------- publish and follow

def test_publish_follow_versions_diff_rollback_offline(cp, admin, gateway):
    assert gateway.status("/readyz")[0] == 503       # nothing published yet: not ready
    assert get(gateway, "/a").status_code == 404
    ok(admin.put("/v1/config", json=base_doc(mock_api("a", "/a", "a1"),
                                             mock_api("b", "/b", "b1"))), 200)
    assert get(gateway, "/a").status_code == 404     # edited, not published

    first = ok(admin.post("/v1/apis/a/publish", json={"env": "RELEASE", "note": "first"}))
    assert first["versions"] == {"a": 1}
    wait_for(serves(gateway, "/a", "a1"), what="publish -> gateway")
    wait_for(lambda: gateway.status("/readyz")[0] == 200, what="ready after the first publish")
    assert get(gateway, "/b").status_code == 404     # b was not published

    # an edit changes nothing live; PUT /v1/config does not publish either
    ok(admin.patch("/v1/apis/a", json={"backend": {"mock": {"body": "a2"}}}), 200)
    doc = admin.get("/v1/config").json()
    doc["apis"][1]["backend"]["mock"]["body"] = "b2"
    ok(admin.put("/v1/config", json=doc), 200)
    time.sleep(0.5)
    assert get(gateway, "/a").text == "a1" and get(gateway, "/b").status_code == 404

    # many APIs as one revision
    many = ok(admin.post("/v1/publish", json={"env": "RELEASE", "apis": ["a", "b"]}))
    assert many["revision"] == first["revision"] + 1
    assert many["versions"] == {"a": 2, "b": 1}
    wait_for(serves(gateway, "/b", "b2"))
    assert get(gateway, "/a").text == "a2"
    assert ok(admin.get("/v1/publishes"), 200)["total"] == 2

    # versions, one version, a diff
    versions = ok(admin.get("/v1/apis/a/versions", params={"env": "RELEASE"}), 200)
    assert [(v["version"], v["live"], v["note"]) for v in versions["items"]] == \
        [(2, True, ""), (1, False, "first")]
    assert ok(admin.get("/v1/apis/a/versions/1"), 200)["body"]["backend"]["mock"]["body"] == "a1"
    assert ok(admin.get("/v1/apis/a/versions/1/diff/2"), 200) == [
        {"path": "backend.mock.body", "before": "a1", "after": "a2"}]

    # rollback: version 1 is served again (as a new version)
    back = ok(admin.post("/v1/apis/a/rollback", json={"env": "RELEASE", "version": 1}))
    assert back["versions"] == {"a": 3}
    wait_for(serves(gateway, "/a", "a1"), what="rollback -> gateway")

    # another environment with another definition; RELEASE keeps its own
    ok(admin.post("/v1/apis/a/publish", json={"env": "TEST"}))
    wait_for(serves(gateway, "/a", "a2", stage="TEST"))
    assert get(gateway, "/a").text == "a1"

    # offline: gone from that environment only
    ok(admin.post("/v1/apis/a/offline", json={"env": "RELEASE"}))
    wait_for(gone(gateway, "/a"), what="offline -> gateway")
    assert get(gateway, "/a", stage="TEST").text == "a2"
    assert get(gateway, "/b").text == "b2"

    # the control plane lists the gateway and the revision it applied
    latest = back["revision"] + 2
    wait_for(lambda: [(g["id"], g["revision"]) for g in admin.get("/v1/gateways").json()["items"]]
             == [("gateway", latest)], what="the gateway's applied revision listed")


@pytest.mark.parametrize("engine", ENGINES, indirect=True)
def test_publish_errors_change_nothing(cp, admin, gateway):
    ok(admin.put("/v1/config", json=base_doc(mock_api("a", "/a", "a1"))), 200)
    revision = ok(admin.post("/v1/apis/a/publish", json={"env": "RELEASE"}))["revision"]
    wait_for(serves(gateway, "/a", "a1"))
    for path, body, status in [
            ("/v1/apis/nope/publish", {"env": "RELEASE"}, 404),
            ("/v1/apis/a/publish", {"env": "NOPE"}, 422),
            ("/v1/apis/a/publish", {}, 422),
            ("/v1/apis/a/publish", {"env": "RELEASE", "extra": 1}, 422),
            ("/v1/apis/a/publish", {"env": "RELEASE", "note": 5}, 422),
            ("/v1/publish", {"env": "RELEASE", "apis": []}, 422),
            ("/v1/publish", {"env": "RELEASE", "apis": ["a", "nope"]}, 404),
            ("/v1/publish", {"env": "RELEASE", "apis": "some"}, 422),
            ("/v1/apis/a/rollback", {"env": "RELEASE", "version": 9}, 404),
            ("/v1/apis/a/rollback", {"env": "RELEASE", "version": "1"}, 422),
            ("/v1/apis/a/offline", {"env": "TEST"}, 409)]:
        r = admin.post(path, json=body)
        assert r.status_code == status, (path, body, r.text)
        assert r.json()["error_code"] == f"TG.0{status}"
    assert admin.post("/v1/apis/a/publish", content=b"{not json").status_code == 400
    assert admin.get("/v1/apis/a/versions/x").status_code == 400
    assert admin.get("/v1/apis/a/versions/7").status_code == 404
    assert "/v1/apis/{name}/publish" in admin.get("/v1/openapi.json").json()["paths"]
    # a document the gateway would refuse is not published: the published (old) a still owns
    # GET /a, and a new API on the same route is published alone
    ok(admin.patch("/v1/apis/a", json={"path": "/moved"}), 200)
    ok(admin.post("/v1/apis", json=mock_api("c", "/a", "c1")))
    r = admin.post("/v1/apis/c/publish", json={"env": "RELEASE"})
    assert r.status_code == 422, r.text
    assert r.json()["errors"] and "apis" in {e["kind"] for e in r.json()["errors"]}
    assert admin.get("/v1/publishes").json()["total"] == 1
    assert admin.get("/v1/apis/c/versions").json()["items"] == []
    # both together are fine
    ok(admin.post("/v1/publish", json={"env": "RELEASE", "apis": "all"}))
    wait_for(serves(gateway, "/a", "c1"))
    assert get(gateway, "/moved").text == "a1"
    assert revision == 1


def test_tokens_gateway_role_and_admin_role_are_apart(cp, admin, gateway_token):
    with cp.client(gateway_token) as gw_client:
        for method, path in (("GET", "/v1/apis"), ("GET", "/v1/config"), ("GET", "/v1/gateways"),
                             ("POST", "/v1/apis/a/publish"), ("GET", "/v1/tokens"),
                             ("GET", "/v1/apis/a/versions")):
            assert gw_client.request(method, path).status_code == 403, (method, path)
        r = gw_client.get("/v1/gateway/config", params={"after": 0, "wait": 0})
        assert r.status_code == 304
    # an admin token does not get the unmasked document
    assert admin.get("/v1/gateway/config", params={"wait": 0}).status_code == 403
    r = admin.post("/v1/tokens", json={"name": "reader", "role": "read-only"})
    with cp.client(ok(r)["token"]) as reader:
        assert ok(reader.get("/v1/gateways"), 200)["items"] == []
        assert reader.post("/v1/apis/a/publish", json={"env": "RELEASE"}).status_code == 403
    with cp.client(gateway_token) as gw_client:
        assert gw_client.get("/v1/gateway/config", params={"wait": 61}).status_code == 400


def test_secrets_reach_the_gateway_unmasked(cp, admin, gateway):
    backend = Backend().start()
    try:
        doc = base_doc({"name": "signed", "group": "main", "method": "GET", "path": "/echo/x",
                        "auth": "app", "backend": {"type": "http",
                                                   "url": f"http://{backend.address}/echo/x"},
                        "environments": {"RELEASE": {"apps": ["shop"]}}})
        doc["apps"] = [{"name": "shop"}]                   # key and secret generated
        shop = ok(admin.put("/v1/config", json=doc), 200)["apps"][0]   # generated: shown once
        app = ok(admin.post("/v1/apps", json={"name": "other"}))
        assert admin.get("/v1/apps/shop").json()["secret"] == "******"
        ok(admin.post("/v1/apis/signed/publish", json={"env": "RELEASE"}))

        def passes():
            return signed_request(gateway.port, key=shop["key"], secret=shop["secret"]).status
        wait_for(lambda: passes() == 200, what="a call signed with the app's secret passes")
        assert signed_request(gateway.port, key=app["key"], secret=app["secret"]).status == 403
        published = (gateway.workdir / "state" / "published.json").read_text()
        assert shop["secret"] in published and "******" not in published
    finally:
        backend.stop()


# ------------------------------------------------------------------ the control plane down

class Traffic:
    """Requests in a loop on a thread, counting the answers that were not 200."""

    def __init__(self, url):
        self.url, self.ok, self.failed = url, 0, []
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, daemon=True)

    def _run(self):
        with httpx.Client(timeout=5.0) as c:
            while not self._stop.is_set():
                try:
                    r = c.get(self.url)
                    if r.status_code == 200:
                        self.ok += 1
                    else:
                        self.failed.append(r.status_code)
                except httpx.HTTPError as exc:
                    self.failed.append(repr(exc))

    def __enter__(self):
        self._thread.start()
        return self

    def __exit__(self, *exc):
        self._stop.set()
        self._thread.join(10)


def test_control_plane_down_gateway_serves_and_restarts_from_its_state(
        cp, admin, gateway_token, tmp_path):
    state = tmp_path / "state"
    gw = follower(cp, gateway_token, state, tmp_path, ready=False)
    try:
        ok(admin.put("/v1/config", json=base_doc(mock_api("a", "/a", "a1"))), 200)
        ok(admin.post("/v1/apis/a/publish", json={"env": "RELEASE"}))
        wait_for(serves(gw, "/a", "a1"))
        with Traffic(gw.url + "/a") as traffic:
            assert cp.stop() == 0, cp.log()          # the long poll does not hold the stop
            wait_for(lambda: "control plane" in gw.log() and "still serving revision 1"
                     in gw.log(), what="the outage logged")
            count = traffic.ok
            wait_for(lambda: traffic.ok > count + 50, what="traffic during the outage")
        assert traffic.failed == [] and traffic.ok > 0
        assert gw.log().count("still serving revision 1, retrying") == 1   # logged once
        port = gw.port
        assert gw.stop() == 0
        # restarted while the control plane is down: serves what it applied last
        gw = follower(cp, gateway_token, state, tmp_path, name="gateway", port=port)
        assert get(gw, "/a").text == "a1"
        # the control plane comes back: a new publish arrives
        cp.start()
        ok(admin.patch("/v1/apis/a", json={"backend": {"mock": {"body": "a2"}}}), 200)
        ok(admin.post("/v1/apis/a/publish", json={"env": "RELEASE"}))
        wait_for(serves(gw, "/a", "a2"), timeout=15, what="a publish after the outage")
        assert "answers again" in gw.log()
    finally:
        gw.stop()


def test_gateway_flags_are_checked(tmp_path):
    import subprocess
    import sys
    from tests.support.gateway import ROOT
    for args, message in (
            (["--control-plane", "http://127.0.0.1:1"], "--token"),
            (["--control-plane", "ftp://x", "--token", "t"], "http"),
            (["--control-plane", "http://127.0.0.1:1", "--token", "t", "--config", "x.yaml"],
             "exclude"),
            ([], "--config")):
        r = subprocess.run([sys.executable, "-m", "tollgate", "gateway", *args], cwd=ROOT,
                           capture_output=True, text=True, timeout=30,
                           env={k: v for k, v in __import__("os").environ.items()
                                if k != "TOLLGATE_GATEWAY_TOKEN"})
        assert r.returncode == 2 and message in r.stderr, (args, r.stderr)

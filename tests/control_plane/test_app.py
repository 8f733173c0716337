"""The REST app over real HTTP: ``tollgate control-plane`` in a subprocess, on both store engines
(a SQLite file, and a fresh database of the session's PostgreSQL server): one control plane per
module and engine.  The tests whose subject does not touch the store's engine (OpenAPI, metrics,
body limits, the first token) run on SQLite only (:func:`one_engine`)."""
from __future__ import annotations

import asyncio
import copy
import json

import pytest

from control_plane import document as D
from control_plane.kinds import KINDS, MASK, SETTINGS, mask
from control_plane.store import open_store
from gateway.config import parse_document
from tests.support.control_plane import ControlPlaneProcess, running

from .conftest import ENGINES, store_url
from .examples import SECRET_VALUES, contract, rich

ADMIN = "admin-token-for-tests-0123456789"


def one_engine(test):
    """The test's subject is the same on every store engine: run it on SQLite only."""
    test.one_engine = True
    return test


def pytest_generate_tests(metafunc):
    if "cp" in metafunc.fixturenames:
        engines = ENGINES[:1] if getattr(metafunc.function, "one_engine", False) else ENGINES
        metafunc.parametrize("engine", engines, scope="module", indirect=True)


@pytest.fixture(scope="module")
def engine(request):
    return request.param


@pytest.fixture(scope="module")
def cp(engine, request, tmp_path_factory):
    workdir = tmp_path_factory.mktemp(f"cp-{engine}")
    with running(workdir, admin_token=ADMIN,
                               store=store_url(request, engine, workdir)) as proc:
        yield proc


@pytest.fixture
def admin(cp):
    with cp.client(ADMIN) as c:
        r = c.put("/v1/config", json=rich())            # every test starts from the rich example
        assert r.status_code == 200, r.text
        yield c


def stored_body(cp, kind, name):
    """The body as stored (unmasked), read from the store's file directly."""
    async def read():
        store = await open_store(cp.store)
        try:
            return (await store.get(kind, name)).body
        finally:
            await store.close()
    return asyncio.run(read())


def expected_document(raw: dict) -> dict:
    """``raw`` as GET /v1/config answers it: normalized, masked, each list by name."""
    settings, resources = D.split(parse_document(json.dumps(raw), "json"))
    return {**mask(SETTINGS, settings),
            **{k: sorted((mask(k, b) for b in bodies), key=lambda b: b["name"])
               for k, bodies in resources.items()}}


def assert_error(r, status, code, path=None):
    assert r.status_code == status, r.text
    body = r.json()
    assert body["error_code"] == code and body["error_msg"]
    if path is not None:
        assert body["path"] == path, body
    assert r.headers["x-request-id"]
    return body


# ------------------------------------------------------------------------------------- tokens

def test_no_token_or_a_wrong_one_is_401_on_every_route(cp):
    with cp.client(None) as anon, cp.client("not-a-token") as wrong:
        for client in (anon, wrong):
            for method, path in (("GET", "/v1/apis"), ("POST", "/v1/apis"), ("GET", "/v1/config"),
                                 ("GET", "/v1/openapi.json"), ("GET", "/metrics"),
                                 ("DELETE", "/v1/channels/lots"), ("GET", "/v1/tokens")):
                assert_error(client.request(method, path), 401, "TG.0401")
    with cp.client(None) as anon:
        r = anon.get("/v1/apis", headers={"Authorization": f"Basic {ADMIN}"})
        assert_error(r, 401, "TG.0401")


def test_tokens_roles_and_management(admin, cp):
    r = admin.post("/v1/tokens", json={"name": "reader", "role": "read-only"})
    assert r.status_code == 201, r.text
    reader = r.json()["token"]
    assert len(reader) >= 40
    listed = admin.get("/v1/tokens").json()["items"]
    assert {t["name"]: t["role"] for t in listed} == {"admin": "read-write", "reader": "read-only"}
    assert reader not in json.dumps(listed) and all("token" not in t for t in listed)
    with cp.client(reader) as ro:
        assert ro.get("/v1/apis").status_code == 200
        assert ro.get("/v1/config").status_code == 200
        assert_error(ro.post("/v1/apps", json={"name": "nope"}), 403, "TG.0403")
        assert_error(ro.put("/v1/config", json=rich()), 403, "TG.0403")
        assert_error(ro.delete("/v1/apps/parking-app"), 403, "TG.0403")
        assert_error(ro.get("/v1/tokens"), 403, "TG.0403")
        assert_error(ro.post("/v1/tokens", json={"name": "x", "role": "read-write"}), 403,
                     "TG.0403")
    assert admin.get("/v1/apps/nope").status_code == 404          # nothing was created
    r = admin.post("/v1/tokens", json={"name": "gw", "role": "gateway"})
    with cp.client(r.json()["token"]) as gw:
        assert_error(gw.get("/v1/apis"), 403, "TG.0403")           # not an admin token
    assert_error(admin.post("/v1/tokens", json={"name": "reader", "role": "read-only"}), 409,
                 "TG.0409")
    assert_error(admin.post("/v1/tokens", json={"name": "x", "role": "root"}), 422, "TG.0422",
                 path="role")
    assert_error(admin.post("/v1/tokens", json={"name": "", "role": "read-only"}), 422,
                 "TG.0422", path="name")
    assert admin.delete("/v1/tokens/reader").status_code == 204
    assert admin.delete("/v1/tokens/gw").status_code == 204
    with cp.client(reader) as ro:
        assert_error(ro.get("/v1/apis"), 401, "TG.0401")
    assert_error(admin.delete("/v1/tokens/reader"), 404, "TG.0404")
    assert_error(admin.delete("/v1/tokens/admin"), 409, "TG.0409")    # the last read-write one
    audit = admin.get("/v1/audit", params={"limit": 20}).json()["items"]
    assert {"token.add", "token.delete"} <= {e["action"] for e in audit}
    assert reader not in json.dumps(audit)


def test_the_first_token_is_generated_once_and_printed_once(tmp_path):
    proc = ControlPlaneProcess(tmp_path).start()
    try:
        lines = [l for l in proc.log().splitlines() if "first read-write token" in l]
        assert len(lines) == 1
        token = lines[0].rsplit(" ", 1)[1]
        with proc.client(token) as c:
            assert c.get("/v1/tokens").json()["items"][0]["name"] == "admin"
    finally:
        assert proc.stop() == 0
    proc.start()                                   # the same store: no new token, none printed
    try:
        assert sum("first read-write token" in l for l in proc.log().splitlines()) == 1
        with proc.client(token) as c:
            assert c.get("/v1/apis").status_code == 200
            assert len(c.get("/v1/tokens").json()["items"]) == 1
        assert token not in tmp_path.joinpath("cp.db").read_bytes().decode("latin-1")
    finally:
        assert proc.stop() == 0


def test_the_admin_token_from_the_environment(tmp_path):
    proc = ControlPlaneProcess(tmp_path, env={"TOLLGATE_ADMIN_TOKEN": "from-the-env-1234"}).start()
    try:
        assert "first read-write token" not in proc.log()
        with proc.client("from-the-env-1234") as c:
            assert c.get("/v1/apis").status_code == 200
    finally:
        assert proc.stop() == 0


def test_the_store_from_the_environment(tmp_path):
    """TOLLGATE_STORE names the store when --store is not given (a URL with a password stays
    out of the process list)."""
    db = tmp_path / "from-the-env.db"
    proc = ControlPlaneProcess(tmp_path, env={"TOLLGATE_STORE": f"sqlite:///{db}",
                                              "TOLLGATE_ADMIN_TOKEN": "from-the-env-1234"})
    i = proc.args.index("--store")
    del proc.args[i:i + 2]
    proc.start()
    try:
        with proc.client("from-the-env-1234") as c:
            assert c.post("/v1/groups", json={"name": "kept"}).status_code == 201
    finally:
        assert proc.stop() == 0
    assert db.exists() and not proc.store_path.exists()


# -------------------------------------------------------------------------------------- CRUD

def test_crud_of_several_kinds(admin):
    r = admin.post("/v1/channels", json={"name": "spare", "port": 9005,
                                         "members": [{"host": "127.0.0.1"}]})
    assert r.status_code == 201, r.text
    assert r.headers["location"] == "/v1/channels/spare" and r.headers["etag"]
    assert r.json()["members"][0]["host"] == "127.0.0.1" and r.json()["balance"] == "wrr"
    r = admin.post("/v1/apis", json={"name": "spare-api", "group": "parking", "method": "GET",
                                     "path": "/spare", "backend": {"type": "http",
                                                                   "channel": "spare",
                                                                   "path": "/s"},
                                     "environments": {"RELEASE": {}}})
    assert r.status_code == 201, r.text
    assert admin.get("/v1/apis/spare-api").json()["backend"]["channel"] == "spare"
    r = admin.patch("/v1/apis/spare-api", content=json.dumps({"path": "/spare2"}),
                    headers={"Content-Type": "application/merge-patch+json"})
    assert r.status_code == 200 and r.json()["path"] == "/spare2"
    body = admin.get("/v1/apis/spare-api").json()
    body["method"] = "POST"
    assert admin.put("/v1/apis/spare-api", json=body).json()["method"] == "POST"
    r = admin.post("/v1/groups", json={"name": "ops"})
    assert r.status_code == 201 and r.json()["variables"] == {}
    assert admin.delete("/v1/apis/spare-api").status_code == 204
    assert admin.delete("/v1/channels/spare").status_code == 204
    assert admin.delete("/v1/groups/ops").status_code == 204
    assert_error(admin.get("/v1/apis/spare-api"), 404, "TG.0404")
    assert_error(admin.delete("/v1/groups/ops"), 404, "TG.0404")
    assert_error(admin.post("/v1/channels", json={"name": "lots", "port": 1}), 409, "TG.0409",
                 path="name")
    body = assert_error(admin.post("/v1/channels", json={"name": "c", "port": "x"}), 422,
                        "TG.0422", path="port")
    assert body["errors"][0]["kind"] == "channels"
    assert_error(admin.post("/v1/channels", json={"name": "c", "port": 1, "prot": 1}), 422,
                 "TG.0422", path="prot")
    assert_error(admin.put("/v1/channels/none", json={"name": "none", "port": 1}), 404, "TG.0404")
    assert_error(admin.get("/v1/nothing"), 404, "TG.0404")
    r = admin.patch("/v1/apis/free-slots", content=b'{"path": "/x"}',
                    headers={"Content-Type": "text/plain"})
    assert_error(r, 415, "TG.0415")


def test_a_whole_document_problem_is_422_with_the_path(admin):
    # a second API on the route of free-slots: only the whole document shows the clash
    api = admin.get("/v1/apis/free-slots").json()
    api["name"] = "clash"
    body = assert_error(admin.post("/v1/apis", json=api), 422, "TG.0422")
    assert any(p["kind"] == "apis" for p in body["errors"]), body
    assert_error(admin.get("/v1/apis/clash"), 404, "TG.0404")


def test_pagination_and_filters(admin):
    for i in range(7):
        assert admin.post("/v1/apps", json={"name": f"page-{i}"}).status_code == 201
    seen, offset = [], 0
    while True:
        page = admin.get("/v1/apps", params={"name_prefix": "page-", "offset": offset,
                                             "limit": 3}).json()
        assert page["total"] == 7 and page["limit"] == 3 and len(page["items"]) <= 3
        seen += [a["name"] for a in page["items"]]
        offset += 3
        if offset >= page["total"]:
            break
    assert seen == [f"page-{i}" for i in range(7)]
    assert [a["name"] for a in admin.get("/v1/apps", params={"name": "page-3"}).json()["items"]] \
        == ["page-3"]
    assert admin.get("/v1/apps", params={"name": "page-9"}).json() == \
        {"items": [], "total": 0, "offset": 0, "limit": 100}
    groups = {a["name"]: a["group"] for a in admin.get("/v1/apis", params={"limit": 500})
              .json()["items"]}
    assert admin.get("/v1/apis", params={"group": "parking"}).json()["total"] == \
        sum(g == "parking" for g in groups.values()) > 0
    assert admin.get("/v1/apis", params={"group": "nope"}).json()["total"] == 0
    for bad in ({"limit": 501}, {"limit": 0}, {"limit": "x"}, {"offset": -1}):
        assert_error(admin.get("/v1/apps", params=bad), 400, "TG.0400", path=next(iter(bad)))


def test_etag_if_match_and_rename_keeps_the_id(admin):
    r = admin.get("/v1/channels/lots")
    etag, rid = r.headers["etag"], r.headers["x-resource-id"]
    body = r.json()
    body["port"] = 9009
    r = admin.put("/v1/channels/lots", json=body, headers={"If-Match": etag})
    assert r.status_code == 200 and r.headers["etag"] != etag
    body["port"] = 9010
    assert_error(admin.put("/v1/channels/lots", json=body, headers={"If-Match": etag}), 412,
                 "TG.0412")
    assert_error(admin.patch("/v1/channels/lots", json={"port": 1}, headers={"If-Match": etag}),
                 412, "TG.0412")
    assert_error(admin.delete("/v1/channels/lots", headers={"If-Match": etag}), 412, "TG.0412")
    assert admin.get("/v1/channels/lots").json()["port"] == 9009      # nothing changed
    # a rename: the id is kept, the old name is gone
    r = admin.get("/v1/acls/office")
    acl, etag, rid = r.json(), r.headers["etag"], r.headers["x-resource-id"]
    apis_using = [a["name"] for a in admin.get("/v1/apis", params={"limit": 500}).json()["items"]
                  if "office" in json.dumps(a)]
    if apis_using:      # a used resource cannot be renamed from under its users
        body = assert_error(admin.put("/v1/acls/office", json={**acl, "name": "hq"}), 409,
                            "TG.0409")
        assert {e["name"] for e in body["errors"]} == set(apis_using)
        r = admin.post("/v1/acls", json={**acl, "name": "spare-acl"})
        acl, etag, rid = r.json(), r.headers["etag"], r.headers["x-resource-id"]
    old = acl["name"]
    r = admin.put(f"/v1/acls/{old}", json={**acl, "name": "renamed-acl"}, headers={"If-Match": etag})
    assert r.status_code == 200, r.text
    assert r.headers["x-resource-id"] == rid
    assert admin.get("/v1/acls/renamed-acl").headers["x-resource-id"] == rid
    assert_error(admin.get(f"/v1/acls/{old}"), 404, "TG.0404")
    assert admin.get("/v1/audit", params={"limit": 1}).json()["items"][0]["action"] == "rename"


# ------------------------------------------------------------------------------------ secrets

def test_secrets_are_masked_in_every_read_and_shown_once(admin, cp):
    reads = [admin.get("/v1/config").text, admin.get("/v1/settings").text,
             admin.get("/v1/audit", params={"limit": 500}).text]
    for name in KINDS:
        reads.append(admin.get(f"/v1/{name}", params={"limit": 500}).text)
        for item in admin.get(f"/v1/{name}").json()["items"]:
            reads.append(admin.get(f"/v1/{name}/{item['name']}").text)
    for label, value in SECRET_VALUES.items():
        assert all(value not in text for text in reads), label
    assert admin.get("/v1/apps/parking-app").json()["secret"] == MASK
    # a create shows what it generated, once
    r = admin.post("/v1/signature_keys", json={"name": "fresh"})
    assert r.status_code == 201
    made = r.json()["secret"]
    assert made != MASK and len(made) >= 16
    assert admin.get("/v1/signature_keys/fresh").json()["secret"] == MASK
    assert made not in admin.get("/v1/config").text
    assert stored_body(cp, "signature_keys", "fresh")["secret"] == made
    # the mask sent back keeps the stored secret; a new value replaces it
    app = admin.get("/v1/apps/parking-app").json()
    assert app["secret"] == MASK and app["app_codes"] == [MASK]
    r = admin.put("/v1/apps/parking-app", json={**app, "quota": None})
    assert r.status_code == 200, r.text
    assert r.json()["secret"] == MASK
    stored = stored_body(cp, "apps", "parking-app")
    assert stored["secret"] == SECRET_VALUES["apps.secret"]
    assert stored["app_codes"] == [SECRET_VALUES["apps.app_codes"]]
    assert admin.patch("/v1/apps/parking-app", json={"secret": "a-brand-new-secret"}) \
        .status_code == 200
    assert stored_body(cp, "apps", "parking-app")["secret"] == "a-brand-new-secret"
    # a mask with nothing stored behind it is refused
    assert_error(admin.post("/v1/devices", json={"name": "d2", "product": "parking-sensor",
                                                 "password": MASK}), 422, "TG.0422",
                 path="password")


# --------------------------------------------------------------------------------- references

def test_a_missing_reference_is_409_with_its_path(admin):
    api = {"name": "dangling", "group": "parking", "method": "GET", "path": "/dangling",
           "backend": {"type": "http", "channel": "ghost", "path": "/x"},
           "environments": {"RELEASE": {}}}
    body = assert_error(admin.post("/v1/apis", json=api), 409, "TG.0409", path="backend.channel")
    assert "ghost" in body["error_msg"]
    body = assert_error(admin.post("/v1/apis", json={**api, "group": "nogroup"}), 409, "TG.0409")
    assert {e["path"] for e in body["errors"]} == {"group", "backend.channel"}
    assert_error(admin.patch("/v1/apps/parking-app", json={"quota": "weekly"}), 409, "TG.0409",
                 path="quota")
    assert_error(admin.get("/v1/apis/dangling"), 404, "TG.0404")


def test_delete_of_a_used_channel_lists_its_users(admin):
    users = [a["name"] for a in admin.get("/v1/apis", params={"limit": 500}).json()["items"]
             if "lots" in json.dumps(a.get("backend")) + json.dumps(a.get("conditional_backends"))]
    assert users
    body = assert_error(admin.delete("/v1/channels/lots"), 409, "TG.0409")
    assert {(e["kind"], e["name"]) for e in body["errors"]} == {("apis", n) for n in users}
    assert all(e["path"] for e in body["errors"])
    assert "apis/" in body["error_msg"]
    assert admin.get("/v1/channels/lots").status_code == 200
    # once its users are gone, it can go
    for name in users:
        assert admin.delete(f"/v1/apis/{name}").status_code == 204
    assert admin.delete("/v1/channels/lots").status_code == 204


# ------------------------------------------------------------------------------ whole document

def test_the_contract_example_round_trips_through_put_config(admin):
    raw = contract()
    r = admin.put("/v1/config", json=raw)
    assert r.status_code == 200, r.text
    got = admin.get("/v1/config").json()
    assert got == expected_document(raw)
    assert r.json() == got            # (every secret was given: nothing generated to show)


def test_put_config_is_all_or_nothing(admin):
    before = admin.get("/v1/config").json()
    bad = rich()
    bad["channels"].append({"name": "fine", "port": 9100})
    bad["apis"][0]["backend"] = {"type": "http", "channel": "ghost", "path": "/x"}
    body = assert_error(admin.put("/v1/config", json=bad), 422, "TG.0422")
    assert any(e["kind"] == "apis" and "ghost" in e["message"] for e in body["errors"])
    bad = rich()
    bad["apps"][0]["secret"] = 5
    bad["apis"] = "nope"
    body = assert_error(admin.put("/v1/config", json=bad), 422, "TG.0422")
    assert {e["kind"] for e in body["errors"]} == {"apps", "apis"}
    assert_error(admin.put("/v1/config", json=[1]), 422, "TG.0422")
    assert admin.get("/v1/config").json() == before
    assert admin.get("/v1/channels/fine").status_code == 404
    # a smaller document deletes what it does not name, and keeps masked secrets
    small = json.loads(admin.get("/v1/config").text)
    small["devices"], small["rules"] = [], []
    r = admin.put("/v1/config", json=small)
    assert r.status_code == 200, r.text
    assert admin.get("/v1/devices").json()["total"] == 0
    assert admin.get("/v1/config").json() == {**before, "devices": [], "rules": []}
    # If-Match on the whole document
    etag = admin.get("/v1/config").headers["etag"]
    assert admin.post("/v1/groups", json={"name": "later"}).status_code == 201
    assert_error(admin.put("/v1/config", json=small, headers={"If-Match": etag}), 412, "TG.0412")


def test_settings(admin, cp):
    r = admin.get("/v1/settings")
    settings = r.json()
    assert settings["iam"]["users"][0]["secret_key"] == MASK
    settings["trusted_proxies"] = ["192.168.0.0/16"]
    r2 = admin.put("/v1/settings", json=settings, headers={"If-Match": r.headers["etag"]})
    assert r2.status_code == 200, r2.text
    assert admin.get("/v1/settings").json()["trusted_proxies"] == ["192.168.0.0/16"]
    assert stored_body(cp, SETTINGS, "settings")["iam"]["users"][0]["secret_key"] == \
        SECRET_VALUES["iam.users.secret_key"]
    assert_error(admin.put("/v1/settings", json=settings, headers={"If-Match": r.headers["etag"]}),
                 412, "TG.0412")
    assert_error(admin.patch("/v1/settings", json={"redis": {"timeout_ms": 0}}), 422, "TG.0422",
                 path="redis.timeout_ms")


# ------------------------------------------------------------------------------- bad requests

@one_engine
def test_malformed_json_and_oversize_bodies(admin):
    r = admin.post("/v1/apps", content=b'{"name": "x",', headers={"Content-Type": "application/json"})
    assert_error(r, 400, "TG.0400")
    assert_error(admin.put("/v1/config", content=b"not json"), 400, "TG.0400")
    big = json.dumps({"name": "big", "app_codes": ["x" * 100] * 11_000}).encode()
    assert len(big) > 1 << 20
    assert_error(admin.post("/v1/apps", content=big), 413, "TG.0413")
    # without a Content-Length (chunked), the limit holds as well
    assert_error(admin.post("/v1/apps", content=iter([big[:600_000], big[600_000:]])), 413,
                 "TG.0413")
    assert admin.get("/v1/apps/big").status_code == 404
    # a whole document may be larger than a resource
    doc = rich()
    doc["apps"].append({"name": "padded", "app_codes": ["c" * 90 + f"{i:010d}" for i in range(12_000)]})
    r = admin.put("/v1/config", json=doc)
    assert r.status_code != 413, r.text


@one_engine
def test_openapi_is_served_and_valid(admin):
    validate = pytest.importorskip("openapi_spec_validator").validate
    r = admin.get("/v1/openapi.json")
    assert r.status_code == 200 and r.headers["x-request-id"]
    doc = r.json()
    validate(doc)
    for path in ("/v1/apis", "/v1/apis/{name}", "/v1/config", "/v1/settings", "/v1/tokens",
                 "/v1/audit"):
        assert path in doc["paths"]


@one_engine
def test_metrics_count_requests_by_route_template(admin):
    admin.get("/v1/apis/free-slots")
    text = admin.get("/metrics").text
    assert 'route="/v1/apis/{name}"' in text and 'status="200"' in text
    assert "tollgate_control_plane_store_seconds_bucket" in text
    assert "free-slots" not in text


def test_an_unexpected_error_is_a_json_500_logged_once_with_its_request_id(tmp_path):
    """A store file damaged under a running control plane: every call fails unexpectedly; each
    gets the JSON error of every other answer, and the log has the request id once."""
    proc = ControlPlaneProcess(tmp_path, admin_token=ADMIN).start()
    try:
        with proc.client(ADMIN) as c:
            assert c.post("/v1/groups", json={"name": "before"}).status_code == 201
            for path in (proc.store_path, proc.store_path.with_name("cp.db-wal")):
                with open(path, "r+b") as f:        # (the write-ahead log holds the last writes)
                    f.write(b"\xff" * 16384)        # the header and first pages: not a database
            r = c.get("/v1/groups/before")
            body = assert_error(r, 500, "TG.0500")
            request_id = r.headers["x-request-id"]
            assert request_id in body["error_msg"]
            assert r.headers["content-type"] == "application/json"
    finally:
        proc.stop()
    log = proc.log()
    assert log.count(f"internal error (request {request_id})") == 1, log
    assert log.count("Traceback") == 1 and "Exception in ASGI application" not in log, log


@pytest.mark.parametrize("url, says", [
    ("postgresql://tollgate:pw-not-shown@127.0.0.1:{port}/db", "cannot be reached"),
    ("mysql://tollgate:pw-not-shown@db.example/x", "expected sqlite:///FILE or postgresql://"),
])
def test_a_store_that_cannot_be_opened_is_one_line_and_exit_1(url, says):
    import subprocess
    import sys

    from tests.support.gateway import ROOT, free_port
    url = url.format(port=free_port())              # (nothing listens there)
    r = subprocess.run([sys.executable, "-m", "tollgate", "control-plane", "--listen",
                        f"127.0.0.1:{free_port()}", "--store", url], cwd=ROOT,
                       capture_output=True, text=True, timeout=60)
    assert r.returncode == 1, (r.stdout, r.stderr)
    assert "cannot open the store" in r.stderr and says in r.stderr, r.stderr
    assert "Traceback" not in r.stderr and "pw-not-shown" not in r.stderr + r.stdout
    assert "serving" not in r.stdout

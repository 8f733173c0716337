"""Second adversarial review of the control plane, from outside: real HTTP against ``tollgate
control-plane`` (publishing, the write path, assets).  Each test here failed before the fix it
came with."""
from __future__ import annotations

import httpx
import pytest

from tests.support.control_plane import running

from .test_publishing import follower, serves, wait_for

pytestmark = pytest.mark.once      # pure Python: the fastpath form changes nothing here

ADMIN = "admin-token-for-review2-tests-012345"


@pytest.fixture
def cp(tmp_path):
    with running(tmp_path, admin_token=ADMIN) as proc:
        yield proc


@pytest.fixture
def admin(cp):
    with cp.client(ADMIN) as c:
        yield c


def ok(r: httpx.Response, status: int = 201) -> dict:
    assert r.status_code == status, r.text
    return r.json() if r.content else {}


def refused(r: httpx.Response, status: int, *words: str) -> dict:
    assert r.status_code == status, r.text
    body = r.json()
    for word in words:
        assert word in body["error_msg"], body
    return body


def channel_doc() -> dict:
    return {"version": 1, "environments": [{"name": "TEST"}], "groups": [{"name": "main"}],
            "channels": [{"name": "lots", "port": 9001, "members": [{"host": "127.0.0.1"}]}],
            "apis": [{"name": "by-channel", "group": "main", "method": "GET", "path": "/c",
                      "backend": {"type": "http", "channel": "lots", "path": "/x"},
                      "environments": {"RELEASE": {}, "TEST": {}}}]}


def test_what_a_published_version_uses_cannot_be_removed_so_offline_stays_possible(cp, admin):
    # (before: the channel's delete was accepted -- the edited API no longer used it -- and from
    # then on every publish, and every offline, was a 422 naming the published API: no way out
    # but to re-create what was deleted)
    ok(admin.put("/v1/config", json=channel_doc()), 200)
    ok(admin.post("/v1/publish", json={"env": "RELEASE", "apis": "all"}))
    ok(admin.post("/v1/publish", json={"env": "TEST", "apis": "all"}))
    ok(admin.patch("/v1/apis/by-channel", json={
        "backend": {"type": "mock", "channel": None, "path": None, "mock": {"status": 200}},
        "environments": {"TEST": None}}), 200)
    # the edited API uses neither the channel nor TEST: only the published versions do
    body = refused(admin.delete("/v1/channels/lots"), 409, "apis/by-channel",
                   "published in RELEASE")
    assert [(e["kind"], e["name"], e["path"]) for e in body["errors"]] == [
        ("apis", "by-channel", "backend.channel"), ("apis", "by-channel", "backend.channel")]
    refused(admin.put("/v1/channels/lots", json={"name": "lots2", "port": 9001, "members": [
        {"host": "127.0.0.1"}]}), 409, "apis/by-channel")
    refused(admin.delete("/v1/environments/TEST"), 409, "apis/by-channel", "published in TEST")
    doc = admin.get("/v1/config").json()
    doc["channels"] = []
    refused(admin.put("/v1/config", json=doc), 409, "channels 'lots'", "apis/by-channel")
    assert [c["name"] for c in admin.get("/v1/channels").json()["items"]] == ["lots"]
    # what the answer says to do works: take it offline, then remove
    ok(admin.post("/v1/apis/by-channel/offline", json={"env": "TEST"}))
    ok(admin.delete("/v1/environments/TEST"), 204)
    refused(admin.delete("/v1/channels/lots"), 409, "published in RELEASE")
    ok(admin.post("/v1/apis/by-channel/publish", json={"env": "RELEASE"}))     # (no channel)
    ok(admin.delete("/v1/channels/lots"), 204)
    ok(admin.post("/v1/apis/by-channel/offline", json={"env": "RELEASE"}))


def mock_api(name: str, path: str, body: str) -> dict:
    return {"name": name, "group": "main", "method": "GET", "path": path,
            "backend": {"type": "mock", "mock": {"status": 200, "body": body}},
            "environments": {"RELEASE": {}, "TEST": {}}}


@pytest.mark.parametrize("name, other", [
    ("a" * 60, None),           # <name>.<env>: longer than a name may be
    ("x", "x.TEST"),            # <name>.<env>: the name of another published API
])
def test_a_new_version_in_test_publishes_whatever_the_api_is_named(cp, admin, name, other,
                                                                   tmp_path):
    # (before: the TEST entry of an API published with another body in RELEASE was named
    # <name>.<env> -- a 422 about a name the user never wrote when that was too long or taken)
    ok(admin.put("/v1/config", json={"version": 1, "environments": [{"name": "TEST"}],
                                     "groups": [{"name": "main"}]}), 200)
    ok(admin.post("/v1/apis", json=mock_api(name, "/a", "release")))
    apis = [name]
    if other is not None:
        ok(admin.post("/v1/apis", json=mock_api(other, "/b", "other")))
        apis.append(other)
    ok(admin.post("/v1/publish", json={"env": "RELEASE", "apis": apis}))
    ok(admin.patch(f"/v1/apis/{name}", json={"backend": {"mock": {"body": "test"}}}), 200)
    ok(admin.post(f"/v1/apis/{name}/publish", json={"env": "TEST"}))
    ok(admin.post(f"/v1/apis/{name}/publish", json={"env": "TEST"}))       # (and again)
    if other is not None:       # and the other API publishes a new version too
        ok(admin.patch(f"/v1/apis/{other}", json={"backend": {"mock": {"body": "o2"}}}), 200)
        ok(admin.post(f"/v1/apis/{other}/publish", json={"env": "TEST"}))
    assert {v["version"]: v["live"] for v in admin.get(
        f"/v1/apis/{name}/versions", params={"env": "TEST"}).json()["items"]} == \
        {1: False, 2: True}
    # a gateway following serves each environment its own version
    token = ok(admin.post("/v1/tokens", json={"name": "gw", "role": "gateway"}))["token"]
    gw = follower(cp, token, tmp_path / "state", tmp_path)
    try:
        wait_for(serves(gw, "/a", "release"), what="RELEASE serving its version")
        wait_for(serves(gw, "/a", "test", stage="TEST"), what="TEST serving its version")
        if other is not None:
            wait_for(serves(gw, "/b", "other"), what="the other API in RELEASE")
            wait_for(serves(gw, "/b", "o2", stage="TEST"), what="the other API in TEST")
    finally:
        gw.stop()


def test_entry_names_stay_unique_when_an_api_of_that_name_is_published_later():
    from control_plane.publishing import gateway_apis

    def body(name, text):
        return {"name": name, "path": f"/{name}", "backend": {"mock": {"body": text}}}
    published = {"RELEASE": {"x": {"version": 1, "body": body("x", "r")}},
                 "TEST": {"x": {"version": 2, "body": body("x", "t")}}}
    memo: dict = {}
    assert [a["name"] for a in gateway_apis(published, into=memo)] == ["x", "x.TEST"]
    published["RELEASE"]["x.TEST"] = {"version": 1, "body": body("x.TEST", "other")}
    names = [a["name"] for a in gateway_apis(published, memo=memo)]     # (x's entries kept?)
    assert len(set(names)) == 3 and names[0] == "x" and "x.TEST" in names, names
    assert all(len(n) <= 64 for n in names)


def test_a_change_that_would_break_published_versions_is_refused(cp, admin):
    # (before: removing the variable two published versions use was accepted -- the edited APIs
    # no longer used it -- and then taking either API offline was a 422 naming the other one)
    http = {"type": "http", "url": "http://#host1#/x"}
    ok(admin.put("/v1/config", json={
        "version": 1,
        "groups": [{"name": "g", "variables": {"RELEASE": {"host1": "127.0.0.1:9001"}}}],
        "channels": [{"name": "lots", "port": 9001, "members": [{"host": "127.0.0.1"}]}],
        "apis": [{"name": n, "group": "g", "method": "GET", "path": f"/{n}", "backend": backend,
                  "environments": {"RELEASE": {}}}
                 for n, backend in (("a", http), ("b", http),
                                    ("c", {"type": "http", "channel": "lots", "path": "/x"}))]}),
       200)
    ok(admin.post("/v1/publish", json={"env": "RELEASE", "apis": "all"}))
    mock = {"type": "mock", "url": None, "channel": None, "path": None, "mock": {"status": 200}}
    for name in ("a", "b", "c"):
        ok(admin.patch(f"/v1/apis/{name}", json={"backend": mock}), 200)
    body = refused(admin.patch("/v1/groups/g", json={"variables": {"RELEASE": None}}), 409,
                   "apis/a", "published in RELEASE", "host1")
    assert {(e["kind"], e["name"], e["path"]) for e in body["errors"]} == {
        ("apis", "a", "backend.url"), ("apis", "b", "backend.url")}
    refused(admin.patch("/v1/channels/lots", json={"members": []}), 409, "apis/c",
            "no members")
    # (the same through the views of variables and members)
    refused(admin.delete("/v1/groups/g/variables/RELEASE"), 409, "apis/a", "host1")
    refused(admin.delete("/v1/channels/lots/members/127.0.0.1"), 409, "apis/c", "no members")
    assert admin.get("/v1/groups/g").json()["variables"] == {"RELEASE": {"host1": "127.0.0.1:9001"}}
    assert len(admin.get("/v1/channels/lots").json()["members"]) == 1
    # a change the published versions do not mind is accepted
    ok(admin.patch("/v1/groups/g", json={"variables": {"RELEASE": {"other": "x"}}}), 200)
    # once the versions that need it are replaced, it goes
    ok(admin.post("/v1/publish", json={"env": "RELEASE", "apis": ["a", "b"]}))
    ok(admin.patch("/v1/groups/g", json={"variables": {"RELEASE": None}}), 200)
    ok(admin.post("/v1/apis/c/offline", json={"env": "RELEASE"}))
    ok(admin.patch("/v1/channels/lots", json={"members": []}), 200)


def test_the_settings_or_the_document_cannot_break_published_versions(cp, admin):
    # (before: both were accepted when the edited APIs did not mind, and then every publish and
    # offline of the other APIs was a 422 naming the published one)
    ok(admin.put("/v1/config", json={
        "version": 1,
        "iam": {"users": [{"name": "bob", "account": "acme", "access_key": "AK-bob",
                           "secret_key": "iam-sk-value-02"}]},
        "groups": [{"name": "g", "variables": {"RELEASE": {"host1": "127.0.0.1:9001"}}}],
        "apis": [{"name": "i", "group": "g", "method": "GET", "path": "/i", "auth": "iam",
                  "backend": {"type": "http", "url": "http://#host1#/x"},
                  "environments": {"RELEASE": {}}}]}), 200)
    ok(admin.post("/v1/apis/i/publish", json={"env": "RELEASE"}))
    ok(admin.patch("/v1/apis/i", json={"auth": "none", "backend": {"url": "http://127.0.0.1:9/x"}}),
       200)
    body = refused(admin.patch("/v1/settings", json={"iam": {"users": []}}), 409,
                   "the settings", "apis/i", "published in RELEASE")
    assert [(e["name"], e["path"]) for e in body["errors"]] == [("i", "auth")]
    doc = admin.get("/v1/config").json()
    doc["groups"][0]["variables"] = {}
    refused(admin.put("/v1/config", json=doc), 409, "the document", "apis/i", "host1")
    assert admin.get("/v1/settings").json()["iam"]["users"][0]["name"] == "bob"
    assert admin.get("/v1/groups/g").json()["variables"] == {"RELEASE": {"host1": "127.0.0.1:9001"}}
    # once the published version no longer needs them, both go
    ok(admin.post("/v1/apis/i/publish", json={"env": "RELEASE"}))
    ok(admin.patch("/v1/settings", json={"iam": {"users": []}}), 200)
    ok(admin.put("/v1/config", json=admin.get("/v1/config").json() | {"groups": [
        {"name": "g"}]}), 200)

"""The publish shortcuts: the control plane checks only the API entries that changed since the
last publish it made (control_plane.checked), and the gateway's validation and compile skip the
APIs equal to the previous document's.  Each shortcut must refuse what the whole check refuses,
and a control plane must not publish from a stale memory."""
from __future__ import annotations

import msgspec
import pytest

from control_plane import checked as C
from control_plane import document as D
from control_plane.kinds import KINDS
from gateway.config import Document, validate
from gateway.snapshot import compile_snapshot
from tests.control_plane.test_publishing import (ADMIN, base_doc, mock_api, ok, serves,
                                                 wait_for)
from tests.control_plane.test_store import run, url  # noqa: F401 (fixtures)
from tests.support.control_plane import ControlPlaneProcess


def url_api(i, url="http://#backend#/items/{id}"):
    return {"name": f"api{i}", "group": "main", "method": "GET", "path": f"/svc{i}/{{id}}",
            "backend": {"url": url}, "environments": {"RELEASE": {}, "TEST": {}}}


def parts(n=5, variables=None):
    """(settings, resources without apis, normalised API entries) of a document of n APIs."""
    variables = variables if variables is not None else {"backend": "127.0.0.1:9001"}
    settings = D.normalize("settings", {"version": 1})
    resources = {k: [] for k in KINDS if k != "apis"}
    resources["environments"] = [D.normalize("environments", {"name": "TEST"})]
    resources["groups"] = [D.normalize("groups", {"name": "main", "variables": {
        "RELEASE": variables, "TEST": variables}})]
    apis = [D.normalize("apis", url_api(i)) for i in range(n)]
    return settings, resources, apis


def whole_check_problems(settings, resources, apis):
    with pytest.raises(D.DocumentError) as whole:
        D.check(settings, {**resources, "apis": apis}, compile=True)
    return whole.value.problems


# ------------------------------------------------------------------------- control_plane.checked

def test_incremental_check_agrees_with_the_whole_check_and_reuses_the_rest():
    settings, resources, apis = parts()
    first = C.check(settings, resources, apis, None)
    assert first.doc == D.check(settings, {**resources, "apis": apis}, compile=True)
    changed = [dict(a) for a in apis]
    changed[2] = D.normalize("apis", url_api(2, "http://#backend#/v2/{id}"))
    second = C.check(settings, resources, changed, first)
    assert second.doc == msgspec.convert({**D._raw(settings, resources), "apis": changed},
                                         Document)
    assert second.snapshot.reused == 8            # 4 unchanged APIs x 2 environments
    assert second.entries["api0"][1] is first.entries["api0"][1]    # decoded once
    assert second.entries["api2"][1] is not first.entries["api2"][1]
    assert second.doc.apis[2].backend.url == "http://#backend#/v2/{id}"


@pytest.mark.parametrize("bad", ["route", "group", "structure", "variable"])
def test_incremental_check_refuses_a_bad_changed_api_as_the_whole_check_does(bad):
    settings, resources, apis = parts()
    first = C.check(settings, resources, apis, None)
    changed = [dict(a) for a in apis]
    if bad == "route":              # the same route as an API that did not change
        changed[3] = dict(changed[3], path="/svc1/{id}")
    elif bad == "group":
        changed[3] = dict(changed[3], group="nope")
    elif bad == "structure":
        changed[3] = dict(changed[3], method=7)
    else:                           # found by the compile only
        changed[3] = dict(changed[3], backend=dict(changed[3]["backend"],
                                                   url="http://#missing#/x"))
    with pytest.raises(D.DocumentError) as exc:
        C.check(settings, resources, changed, first)
    assert exc.value.problems == whole_check_problems(settings, resources, changed)
    assert any(p.kind == "apis" and p.name == "api3" for p in exc.value.problems)


def test_a_change_beside_the_apis_checks_the_unchanged_apis_again():
    settings, resources, apis = parts()
    first = C.check(settings, resources, apis, None)
    # the group loses the variable every (unchanged) API uses: each of them is refused
    _, bare, _ = parts(variables={"other": "x"})
    with pytest.raises(D.DocumentError) as exc:
        C.check(settings, bare, apis, first)
    assert {p.name for p in exc.value.problems} == {f"api{i}" for i in range(5)}
    assert exc.value.problems == whole_check_problems(settings, bare, apis)


# ------------------------------------------------------------------------------ the store

def test_versions_stored_many_at_once_and_the_latest_read_back(url):
    async def fn(s):
        async with s.transaction() as tx:
            revision = await tx.add_publish({"document": {}, "published": {}}, "n", "me")
            await tx.add_api_versions([("a", "RELEASE", {"v": 1}, 1), ("b", "RELEASE", {"v": 1}, 1),
                                       ("a", "TEST", {"v": 1}, 1)], revision, "n", "me")
        async with s.transaction() as tx:
            revision = await tx.add_publish({"document": {}, "published": {}}, "n", "me")
            await tx.add_api_versions([("a", "RELEASE", {"v": 2}, 2)], revision, "n", "me")
        assert await s.latest_api_versions("RELEASE") == {"a": 2, "b": 1}
        assert await s.latest_api_versions("RELEASE", ["a", "nope"]) == {"a": 2}
        assert await s.latest_api_versions("TEST", [f"x{i}" for i in range(200)] + ["a"]) \
            == {"a": 1}
        assert [v.body for v in await s.api_versions("a", "RELEASE")] == [{"v": 1}, {"v": 2}]
        # a version number taken already: nothing of that call is stored
        with pytest.raises(Exception):
            async with s.transaction() as tx:
                revision = await tx.add_publish({"document": {}, "published": {}}, "n", "me")
                await tx.add_api_versions([("b", "RELEASE", {"v": 2}, 2),
                                           ("a", "RELEASE", {"v": 3}, 2)], revision, "n", "me")
        assert await s.latest_api_versions("RELEASE") == {"a": 2, "b": 1}
        assert await s.publish_revision() == 2
    run(url, fn)


# ------------------------------------------------------------------ gateway validate / compile

def test_validate_with_previous_skips_equal_apis_only_when_the_rest_is_equal():
    settings, resources, apis = parts()
    doc = D.check(settings, {**resources, "apis": apis})
    raw = {**D._raw(settings, resources), "apis": [dict(a) for a in apis]}
    raw["apis"][4]["group"] = "nope"           # changed: checked
    assert validate(msgspec.convert(raw, Document), doc) == ["apis[4].group: unknown group 'nope'"]
    raw = {**D._raw(settings, resources), "apis": [dict(a) for a in apis]}
    raw["groups"] = []                         # the rest changed: every API checked again
    errors = validate(msgspec.convert(raw, Document), doc)
    assert len([e for e in errors if "unknown group" in e]) == 5


def test_compile_reuses_equal_apis_and_rebuilds_those_of_a_changed_group():
    settings, resources, apis = parts()
    doc = D.check(settings, {**resources, "apis": apis})
    first = compile_snapshot(doc)
    again = compile_snapshot(doc, previous=first)
    assert again.reused == 10 and all(again.apis[k] is first.apis[k] for k in first.apis)
    _, moved, _ = parts(variables={"backend": "127.0.0.1:9002"})
    doc2 = D.check(settings, {**moved, "apis": apis})
    third = compile_snapshot(doc2, previous=again)
    assert third.reused == 0 and all(third.apis[k] is not again.apis[k] for k in again.apis)


# ----------------------------------------------------------------------- over real processes
def test_a_gateway_reload_refuses_a_changed_api_that_breaks_a_rule_with_an_unchanged_one(
        make_gateway):
    from tests.gateway.test_reload import get, reload
    doc = base_doc(*(mock_api(f"m{i}", f"/m{i}", f"v{i}") for i in range(6)))
    gw = make_gateway(doc)
    assert get(gw, "/m5") == (200, b"v5")
    for bad, error in [({"path": "/m1"}, "apis[5].path: the same method and path as apis[1]"),
                       ({"group": "nope"}, "apis[5].group: unknown group 'nope'")]:
        changed = base_doc(*(mock_api(f"m{i}", f"/m{i}", f"v{i}") for i in range(6)))
        changed["apis"][5].update(bad)
        reload(gw, changed)
        wait_for(lambda: error in gw.log(), what=f"{error} logged")
        assert get(gw, "/m5") == (200, b"v5") and get(gw, "/m1") == (200, b"v1")
    good = base_doc(*(mock_api(f"m{i}", f"/m{i}", f"v{i}") for i in range(6)))
    good["apis"][5]["backend"]["mock"]["body"] = "new"
    reload(gw, good)
    wait_for(lambda: get(gw, "/m5") == (200, b"new"), what="the good change served")



def test_a_publish_refused_after_a_group_change_names_the_unchanged_api(cp_admin):
    cp, admin = cp_admin
    doc = base_doc(mock_api("a", "/a", "a1"))
    doc["groups"].append({"name": "other", "domains": ["o.example.com"]})
    doc["apis"].append(dict(mock_api("u", "/a", "u1"), group="other"))
    ok(admin.put("/v1/config", json=doc), 200)
    ok(admin.post("/v1/publish", json={"env": "RELEASE", "apis": "all"}))
    # edits that are fine for the edited document (u moves to /u, then its group answers on
    # every host) but not for the published one, where u is still on /a, now on a's hosts:
    # publishing a (u unchanged) is refused, naming u
    ok(admin.patch("/v1/apis/u", json={"path": "/u"}), 200)
    ok(admin.patch("/v1/groups/other", json={"domains": []}), 200)
    ok(admin.patch("/v1/apis/a", json={"backend": {"mock": {"body": "a2"}}}), 200)
    r = admin.post("/v1/apis/a/publish", json={"env": "RELEASE"})
    assert r.status_code == 422, r.text
    assert {e["name"] for e in r.json()["errors"]} == {"u"}
    assert admin.get("/v1/publishes").json()["total"] == 1
    # with u published as edited, the publish goes through
    assert ok(admin.post("/v1/publish", json={"env": "RELEASE", "apis": ["a", "u"]})
              )["revision"] == 2


def test_a_publish_made_by_another_control_plane_is_not_lost(cp_admin, tmp_path):
    cp, admin = cp_admin
    ok(admin.put("/v1/config", json=base_doc(mock_api("a", "/a", "a1"), mock_api("b", "/b", "b1"),
                                              mock_api("c", "/c", "c1"))), 200)
    ok(admin.post("/v1/apis/a/publish", json={"env": "RELEASE"}))      # remembered by cp
    other = ControlPlaneProcess(tmp_path / "other", store=cp.store)
    (tmp_path / "other").mkdir()
    other.start()
    try:
        with other.client(ADMIN) as admin2:
            ok(admin2.post("/v1/apis/b/publish", json={"env": "RELEASE"}))
    finally:
        assert other.stop() == 0, other.log()
    assert ok(admin.post("/v1/apis/c/publish", json={"env": "RELEASE"}))["revision"] == 3
    token = ok(admin.post("/v1/tokens", json={"name": "gw", "role": "gateway"}))["token"]
    with cp.client(token) as gw:
        answer = gw.get("/v1/gateway/config", params={"after": 0, "wait": 0}).json()
    assert answer["revision"] == 3
    assert sorted(a["name"] for a in answer["document"]["apis"]) == ["a", "b", "c"]


def test_a_following_gateway_serves_each_incremental_publish(cp_admin, gateway_follow):
    cp, admin = cp_admin
    ok(admin.put("/v1/config", json=base_doc(*(mock_api(f"m{i}", f"/m{i}", "v0")
                                               for i in range(20)))), 200)
    ok(admin.post("/v1/publish", json={"env": "RELEASE", "apis": "all"}))
    gw = gateway_follow()
    wait_for(serves(gw, "/m7", "v0"))
    for round_ in range(1, 4):
        ok(admin.patch("/v1/apis/m7", json={"backend": {"mock": {"body": f"v{round_}"}}}), 200)
        ok(admin.post("/v1/apis/m7/publish", json={"env": "RELEASE"}))
        wait_for(serves(gw, "/m7", f"v{round_}"))
        assert serves(gw, "/m8", "v0")()
    # the workers kept the compiled APIs that did not change
    wait_for(lambda: "is live (19 of 20 compiled APIs kept" in gw.log(), what="reuse logged")


@pytest.fixture
def cp_admin(tmp_path):
    proc = ControlPlaneProcess(tmp_path, admin_token=ADMIN).start()
    try:
        with proc.client(ADMIN) as c:
            yield proc, c
    finally:
        assert proc.stop() == 0, proc.log()


@pytest.fixture
def gateway_follow(cp_admin, tmp_path):
    from tests.control_plane.test_publishing import follower
    started = []

    def start():
        cp, admin = cp_admin
        token = ok(admin.post("/v1/tokens", json={"name": "gw", "role": "gateway"}))["token"]
        gw = follower(cp, token, tmp_path / "state", tmp_path, ready=False)
        started.append(gw)
        return gw
    yield start
    for gw in started:
        gw.stop()

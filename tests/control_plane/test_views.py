"""A group's environment variables and a channel's members, read and changed in place over
real HTTP (``tollgate control-plane`` in a subprocess)."""
from __future__ import annotations

import pytest

from tests.support.control_plane import running

from .examples import rich
from .test_app import assert_error

ADMIN = "admin-token-for-views-0123456789"


@pytest.fixture(scope="module")
def cp(tmp_path_factory):
    with running(tmp_path_factory.mktemp("cp"), admin_token=ADMIN) as proc:
        yield proc


@pytest.fixture
def admin(cp):
    with cp.client(ADMIN) as c:
        r = c.put("/v1/config", json=rich())
        assert r.status_code == 200, r.text
        yield c


def test_variables_of_a_group_per_environment(admin):
    r = admin.get("/v1/groups/parking/variables")
    assert r.status_code == 200, r.text
    assert r.json() == {"RELEASE": {"lot_backend": "127.0.0.1:9001"},
                        "TEST": {"lot_backend": "127.0.0.1:9002"}}
    etag = r.headers["etag"]
    assert admin.get("/v1/groups/parking/variables/TEST").json() == {
        "lot_backend": "127.0.0.1:9002"}

    r = admin.put("/v1/groups/parking/variables/TEST", json={"lot_backend": "10.0.0.7:8080"},
                  headers={"If-Match": etag})
    assert r.status_code == 200, r.text
    assert r.json() == {"lot_backend": "10.0.0.7:8080"} and r.headers["etag"] != etag
    group = admin.get("/v1/groups/parking").json()
    assert group["variables"]["TEST"] == {"lot_backend": "10.0.0.7:8080"}
    assert group["variables"]["RELEASE"] == {"lot_backend": "127.0.0.1:9001"}   # untouched
    entry = admin.get("/v1/audit", params={"limit": 1}).json()["items"][0]
    assert (entry["action"], entry["kind"], entry["name"]) == ("replace", "groups", "parking")

    # the old ETag is stale now: nothing changes
    assert_error(admin.put("/v1/groups/parking/variables/TEST", json={"lot_backend": "x:1"},
                           headers={"If-Match": etag}), 412, "TG.0412")
    assert admin.get("/v1/groups/parking/variables/TEST").json() == {
        "lot_backend": "10.0.0.7:8080"}


def test_variables_an_api_needs_cannot_go(admin):
    # free-slots' backend url uses #lot_backend# in TEST: the gateway would refuse the document
    body = assert_error(admin.put("/v1/groups/parking/variables/TEST", json={"other": "1"}),
                        422, "TG.0422")
    assert "lot_backend" in body["error_msg"], body
    body = assert_error(admin.delete("/v1/groups/parking/variables/TEST"), 422, "TG.0422")
    assert "lot_backend" in body["error_msg"], body
    assert admin.get("/v1/groups/parking/variables/TEST").json() == {
        "lot_backend": "127.0.0.1:9002"}


def test_variables_errors(admin, cp):
    assert_error(admin.get("/v1/groups/parking/variables/PROD"), 404, "TG.0404")
    assert_error(admin.get("/v1/groups/nope/variables"), 404, "TG.0404")
    assert_error(admin.put("/v1/groups/nope/variables/TEST", json={}), 404, "TG.0404")
    assert_error(admin.delete("/v1/groups/parking/variables/PROD"), 404, "TG.0404")
    # an environment that does not exist is a missing reference
    assert_error(admin.put("/v1/groups/parking/variables/PROD", json={"a": "b"}),
                 409, "TG.0409", path="variables.PROD")
    assert_error(admin.put("/v1/groups/parking/variables/TEST", json=["x"]), 422, "TG.0422",
                 path="variables.TEST")
    assert_error(admin.put("/v1/groups/parking/variables/TEST", json={"lot_backend": 5}),
                 422, "TG.0422")
    with cp.client(ADMIN) as c:
        token = c.post("/v1/tokens", json={"name": "views-reader", "role": "read-only"}).json()
    with cp.client(token["token"]) as reader:
        assert reader.get("/v1/groups/parking/variables").status_code == 200
        assert_error(reader.put("/v1/groups/parking/variables/TEST", json={}), 403, "TG.0403")
        assert_error(reader.delete("/v1/channels/lots/members/127.0.0.1"), 403, "TG.0403")


def test_members_of_a_channel(admin):
    r = admin.get("/v1/channels/lots/members")
    assert r.status_code == 200, r.text
    assert [(m["host"], m["port"]) for m in r.json()["items"]] == [
        ("127.0.0.1", 9001), ("127.0.0.1", 9003)]

    r = admin.post("/v1/channels/lots/members", json={"host": "10.0.0.9", "port": 9001,
                                                       "weight": 5, "group": "main"})
    assert r.status_code == 201, r.text
    assert [(m["host"], m["port"], m["weight"]) for m in r.json()["items"]][-1] == (
        "10.0.0.9", 9001, 5)
    channel = admin.get("/v1/channels/lots").json()
    assert len(channel["members"]) == 3 and channel["health_check"]["path"] == "/health"

    # the same host and port again: refused, nothing added
    assert_error(admin.post("/v1/channels/lots/members", json={"host": "10.0.0.9",
                                                               "port": 9001}), 409, "TG.0409")
    # a member the gateway would refuse: its path is named
    body = assert_error(admin.post("/v1/channels/lots/members",
                                   json={"host": "10.0.0.10", "port": "x"}), 422, "TG.0422")
    assert "port" in body["error_msg"], body
    assert_error(admin.post("/v1/channels/lots/members", json={"host": "10.0.0.11",
                                                               "group": "nope"}), 422, "TG.0422")
    assert len(admin.get("/v1/channels/lots").json()["members"]) == 3

    r = admin.delete("/v1/channels/lots/members/10.0.0.9", params={"port": 9001})
    assert r.status_code == 200, r.text
    assert [(m["host"], m["port"]) for m in r.json()["items"]] == [
        ("127.0.0.1", 9001), ("127.0.0.1", 9003)]
    assert_error(admin.delete("/v1/channels/lots/members/10.0.0.9"), 404, "TG.0404")
    assert_error(admin.delete("/v1/channels/lots/members/127.0.0.1", params={"port": "x"}),
                 400, "TG.0400")
    assert_error(admin.get("/v1/channels/nope/members"), 404, "TG.0404")
    # without a port, every member on the host goes (here: both): the channel's APIs would
    # have no member left -- the gateway refuses that, so nothing changes
    r = admin.delete("/v1/channels/lots/members/127.0.0.1")
    assert_error(r, 422, "TG.0422")
    assert len(admin.get("/v1/channels/lots").json()["members"]) == 2

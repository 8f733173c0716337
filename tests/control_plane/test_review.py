"""Adversarial checks of the control plane from outside: real HTTP against ``tollgate
control-plane``, and real gateways following a control plane that misbehaves.  Each test here
failed before the fix it came with."""
from __future__ import annotations

import json

import httpx
import pytest

from tests.support.control_plane import ControlPlaneProcess

from .examples import rich, without_certificates

ADMIN = "admin-token-for-tests-0123456789"


@pytest.fixture(scope="module")
def cp(tmp_path_factory):
    proc = ControlPlaneProcess(tmp_path_factory.mktemp("cp"), admin_token=ADMIN).start()
    yield proc
    assert proc.stop() == 0, proc.log()


@pytest.fixture
def admin(cp):
    with cp.client(ADMIN) as c:
        r = c.put("/v1/config", json=without_certificates(rich()))
        assert r.status_code == 200, r.text
        yield c


def assert_error(r: httpx.Response, status: int, code: str) -> dict:
    assert r.status_code == status, r.text
    assert r.headers["content-type"].startswith("application/json"), r.headers
    body = r.json()
    assert body["error_code"] == code and body["error_msg"], body
    assert r.headers["x-request-id"]
    return body


# ------------------------------------------------------------------------- hostile bodies

def test_deeply_nested_json_is_a_400_not_a_500(cp, admin):
    deep = "[" * 100_000 + "]" * 100_000
    inner = '{"name": "x", "a": ' + "[" * 5000 + "]" * 5000 + "}"
    for method, path, body in (("POST", "/v1/environments", deep),
                               ("POST", "/v1/environments", inner),
                               ("PUT", "/v1/config", deep),
                               ("PATCH", "/v1/apps/parking-app", inner),
                               ("POST", "/v1/publish", deep)):
        r = admin.request(method, path, content=body,
                          headers={"Content-Type": "application/json"})
        assert_error(r, 400, "TG.0400")
    # nothing changed
    assert [e["name"] for e in admin.get("/v1/environments").json()["items"]] == ["TEST"]


def test_a_version_number_in_other_digits_is_a_400(cp, admin):
    r = admin.post("/v1/apis/free-slots/publish", json={"env": "RELEASE"})
    assert r.status_code == 201, r.text
    for path in ("/v1/apis/free-slots/versions/%C2%B2",            # '²': isdigit(), not int()
                 "/v1/apis/free-slots/versions/1/diff/%C2%B3",
                 "/v1/apis/free-slots/versions/" + "9" * 40):
        assert_error(admin.get(path), 400, "TG.0400")


def test_a_gateway_reporting_a_strange_applied_revision_is_answered(cp, admin):
    r = admin.post("/v1/tokens", json={"name": "gw-strange", "role": "gateway"})
    assert r.status_code == 201, r.text
    token = r.json()["token"]
    admin.post("/v1/apis/free-slots/publish", json={"env": "RELEASE"})
    with cp.client(token) as gw:
        for applied in ("\u00b2".encode("latin-1"), b"9" * 40, b"-1"):
            r = gw.get("/v1/gateway/config", params={"after": 0, "wait": 0},
                       headers={"X-Tollgate-Gateway": "odd", "X-Tollgate-Applied": applied})
            assert r.status_code == 200, r.text
            assert r.json()["revision"] >= 1

"""Traffic policies attacked from outside (review): a signed token whose subject or account is
not text, and a Redis that accepts writes but refuses the budgets' scripts."""
from __future__ import annotations

import time

import pytest
import redis

from tests.gateway.test_iam_auth import ISSUER, _pem, rsa_key, token  # noqa: F401 (fixture)
from tests.gateway.test_throttle import HOUR, api, doc
from tests.support.client import request


def iam_doc(key, **extra):
    return doc([{"name": "t", **HOUR, "api_limit": 100, "user_limit": 10}],
               [api("a", "/a", "t", auth="iam")],
               iam={"jwt": {"issuer": ISSUER, "audience": "tollgate",
                            "keys": [_pem(key.public_key())]}}, **extra)


@pytest.mark.parametrize("claims", [{"sub": "\ud800x"}, {"account": "\udfff"}],
                         ids=["subject", "account"])
def test_a_signed_token_whose_identity_is_not_text_is_refused(make_gateway, rsa_key, claims):
    """JSON may escape a lone surrogate ("\\ud800"): such a subject cannot be a user name (the
    throttle's user key, the access log and backend headers are UTF-8).  It is a refused
    token (401), not an internal error."""
    gw = make_gateway(iam_doc(rsa_key))
    r = request(gw.port, "GET", "/a", {"X-Auth-Token": token(rsa_key, **claims)})
    assert (r.status, r.json()["error_code"]) == (401, "APIC.0301"), r.body
    assert "Traceback" not in gw.log()
    # the gateway serves the next caller as before
    assert request(gw.port, "GET", "/a", {"X-Auth-Token": token(rsa_key)}).status == 200


@pytest.mark.once       # (Redis leases: the same code in both forms)
def test_a_redis_refusing_scripts_is_down_once_not_flapping(make_gateway, redis_server):
    """A Redis user allowed to write but not to run scripts (an ACL mistake): the budgets
    cannot be counted there, so Redis stays down (one warning) instead of being found up by
    every probe and down again by the next lease (two warnings a second, forever)."""
    admin = redis.Redis(port=redis_server.port)
    admin.execute_command("ACL", "SETUSER", "gw", "on", ">pw", "~*", "+@all", "-@scripting")
    admin.close()
    url = f"redis://gw:pw@127.0.0.1:{redis_server.port}/0"
    gw = make_gateway(doc([{"name": "t", **HOUR, "api_limit": 1000}], [api("a", "/a", "t")],
                          redis={"url": url, "timeout_ms": 200, "fail_mode": "closed"}))
    deadline = time.monotonic() + 3
    seen = []
    while time.monotonic() < deadline:
        seen.append(request(gw.port, "GET", "/a").status)
        time.sleep(0.05)
    assert set(seen) == {503}, seen
    log = gw.log()
    assert log.count("answers again; ") == 0, log
    assert log.count("failed (") == 1, log
    assert gw.metric("tollgate_redis_up") == 0

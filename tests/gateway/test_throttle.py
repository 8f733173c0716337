"""Request throttling and app quotas on one node, end to end through the real gateway: each
dimension, specials, shared and exclusive policies, the answers (429 APIC.0308 with
Retry-After, 405 APIC.0501), debug headers, workers sharing one budget, reloads keeping the
counts, and the documents refused at load."""
from __future__ import annotations

import copy
import glob
import os
import signal
import socket
import time

import pytest

from tests.gateway.test_app_auth import APPS, signed_request
from tests.gateway.test_iam_auth import _pem, rsa_key, token  # noqa: F401 (fixture)
from tests.support.client import request

MOCK = {"type": "mock", "mock": {"status": 200, "body": "ok"}}
HOUR = {"interval": 1, "unit": "hour"}      # windows far longer than a test: no clock edge


def api(name, path, throttle=None, auth="none", env="RELEASE", **extra):
    binding = {"throttle": throttle} if throttle else {}
    if auth == "app":
        binding["apps"] = ["shop", "other"]
    return {"name": name, "group": "main", "method": "GET", "path": path, "auth": auth,
            "backend": MOCK, "environments": {env: binding}, **extra}


def doc(throttles, apis, **extra):
    extra.setdefault("apps", copy.deepcopy(APPS))    # (tests change theirs: never the module's)
    return {"version": 1, "groups": [{"name": "main"}], "environments": [{"name": "TEST"}],
            "throttles": throttles, "apis": apis, **extra}


def statuses(port, path, n, **kwargs):
    return [request(port, "GET", path, **kwargs).status for _ in range(n)]


def test_over_the_api_limit_is_429_with_retry_after(make_gateway):
    gw = make_gateway(doc([{"name": "t", **HOUR, "api_limit": 3}], [api("a", "/a", "t")]))
    assert statuses(gw.port, "/a", 3) == [200] * 3
    r = request(gw.port, "GET", "/a")
    assert r.status == 429
    body = r.json()
    assert body["error_code"] == "APIC.0308"
    assert body["error_msg"] == ("The throttling threshold has been reached: policy api over "
                                 "ratelimit, limit:3,time:1 hour")
    assert body["request_id"] == r.header("x-request-id")
    # sliding window: a call passes once 3 calls of a window weigh 2 at most: a third of the
    # next window in (the window's end is 0 to 1 hour away)
    retry = int(r.header("retry-after"))
    assert 1200 <= retry <= 4800
    gw.wait_metric("tollgate_throttled_total", 1, policy="t", dimension="api")


def test_ip_limit_counts_each_client_address(make_gateway):
    gw = make_gateway(doc([{"name": "t", **HOUR, "api_limit": 10, "ip_limit": 2}],
                          [api("a", "/a", "t")]))
    assert statuses(gw.port, "/a", 3, source="127.0.0.2") == [200, 200, 429]
    assert statuses(gw.port, "/a", 3, source="127.0.0.3") == [200, 200, 429]
    r = request(gw.port, "GET", "/a", source="127.0.0.2")
    assert "policy ip over ratelimit" in r.json()["error_msg"]
    # the refused calls did not spend the API's budget: 10 - 4 left for new addresses
    for address in ("127.0.0.4", "127.0.0.5", "127.0.0.6"):
        assert statuses(gw.port, "/a", 2, source=address) == [200, 200]
    r = request(gw.port, "GET", "/a", source="127.0.0.7")
    assert r.status == 429 and "policy api over ratelimit" in r.json()["error_msg"]
    gw.wait_metric("tollgate_throttled_total", 1, policy="t", dimension="api")
    gw.wait_metric("tollgate_throttled_total", 3, policy="t", dimension="ip")


def test_app_limit_with_a_special_for_one_app(make_gateway):
    throttle = {"name": "t", **HOUR, "api_limit": 100, "app_limit": 2,
                "specials": [{"app": "shop", "limit": 4}]}
    gw = make_gateway(doc([throttle], [api("a", "/echo/x", "t", auth="app")]))
    shop = [signed_request(gw.port).status for _ in range(5)]
    other = [signed_request(gw.port, key="other-key-0001", secret="other-secret-0001").status
             for _ in range(3)]
    assert shop == [200] * 4 + [429]
    assert other == [200, 200, 429]


def test_user_limit_with_a_special_for_one_user(make_gateway, rsa_key):  # noqa: F811
    throttle = {"name": "t", **HOUR, "api_limit": 100, "user_limit": 2,
                "specials": [{"user": "alice", "limit": 1}]}
    document = doc([throttle], [api("a", "/a", "t", auth="iam")],
                   iam={"jwt": {"algorithms": ["RS256"], "keys": [_pem(rsa_key.public_key())]}})
    gw = make_gateway(document)

    def call(user):
        return request(gw.port, "GET", "/a",
                       {"X-Auth-Token": token(rsa_key, sub=user, iss=None, aud=None)}).status

    assert [call("alice") for _ in range(2)] == [200, 429]
    assert [call("carol") for _ in range(3)] == [200, 200, 429]


def test_exclusive_counts_each_api_and_environment_shared_counts_all(make_gateway):
    throttles = [{"name": "own", **HOUR, "api_limit": 2},
                 {"name": "pool", **HOUR, "api_limit": 3, "shared": True}]
    apis = [api("a", "/a", "own"), api("b", "/b", "own"),
            api("a-test", "/a", "own", env="TEST"),
            api("c", "/c", "pool"), api("d", "/d", "pool"), api("c-test", "/c", "pool", env="TEST")]
    gw = make_gateway(doc(throttles, apis))
    assert statuses(gw.port, "/a", 3) == [200, 200, 429]
    assert statuses(gw.port, "/b", 3) == [200, 200, 429]
    assert statuses(gw.port, "/a", 3, headers={"X-Stage": "TEST"}) == [200, 200, 429]
    assert statuses(gw.port, "/c", 1) == [200]
    assert statuses(gw.port, "/d", 1) == [200]
    assert statuses(gw.port, "/c", 2, headers={"X-Stage": "TEST"}) == [200, 429]
    assert statuses(gw.port, "/d", 1) == [429]


def test_debug_mode_shows_each_dimension(make_gateway):
    gw = make_gateway(doc([{"name": "t", "interval": 2, "unit": "minute", "api_limit": 5,
                            "ip_limit": 2}], [api("a", "/a", "t")]))
    r = request(gw.port, "GET", "/a", {"X-Apig-Mode": "debug"})
    assert r.status == 200
    assert r.header("x-apig-ratelimit-ip") == "remain:1,limit:2,time:2 minute"
    assert r.header("x-apig-ratelimit-api") == "remain:4,limit:5,time:2 minute"
    assert request(gw.port, "GET", "/a").header("x-apig-ratelimit-api") is None
    request(gw.port, "GET", "/a")
    r = request(gw.port, "GET", "/a", {"X-Apig-Mode": "DEBUG"})
    assert r.status == 429
    assert r.header("x-apig-ratelimit-ip") == "remain:0,limit:2,time:2 minute"


def _worker_of(master_pid, gateway_port, client_port):
    """The pid of the worker process holding the gateway's end of the connection from
    ``client_port`` (/proc: the socket's inode among the workers' descriptors), or None while
    no worker has accepted it (its row then has inode 0).  The row is the one from the
    gateway's port to the client's: another connection may have the same remote port."""
    inode = None
    with open("/proc/net/tcp") as f:
        for line in f.readlines()[1:]:
            fields = line.split()
            if (int(fields[1].split(":")[1], 16) == gateway_port
                    and int(fields[2].split(":")[1], 16) == client_port):
                inode = fields[9]
    if inode is None or inode == "0":
        return None
    with open(f"/proc/{master_pid}/task/{master_pid}/children") as f:
        children = f.read().split()
    for pid in children:
        for fd in glob.glob(f"/proc/{pid}/fd/*"):
            try:
                if os.readlink(fd) == f"socket:[{inode}]":
                    return int(pid)
            except OSError:
                continue
    return None


def _connections_held_by_both_workers(gw, per_worker=5):
    """``per_worker`` connections to each of the gateway's two workers.  The kernel gives a new
    connection to whichever worker accepts first, which may be the same one every time; so
    while one worker is stopped (SIGSTOP), the connections made go to the other."""
    deadline = time.monotonic() + 20
    while True:
        with open(f"/proc/{gw.proc.pid}/task/{gw.proc.pid}/children") as f:
            workers = [int(pid) for pid in f.read().split()]
        if len(workers) == 2:
            break
        assert time.monotonic() < deadline, f"the gateway has workers {workers}"
        time.sleep(0.05)
    conns = []
    try:
        for held, stopped in (workers, workers[::-1]):
            os.kill(stopped, signal.SIGSTOP)
            try:
                for _ in range(per_worker):
                    s = socket.create_connection(("127.0.0.1", gw.port), timeout=10)
                    conns.append(s)
                    owner = None
                    accepted_by = time.monotonic() + 10
                    while owner is None and time.monotonic() < accepted_by:
                        time.sleep(0.005)
                        owner = _worker_of(gw.proc.pid, gw.port, s.getsockname()[1])
                    assert owner == held, f"a connection went to {owner}, not to {held}"
            finally:
                os.kill(stopped, signal.SIGCONT)
    except BaseException:
        for s in conns:
            s.close()
        raise
    return conns


def test_workers_of_a_node_share_one_budget(make_gateway):
    """Two workers, one budget: calls over connections held by both workers pass exactly
    ``api_limit`` times in total (each worker granting the limit would let twice through)."""
    gw = make_gateway(doc([{"name": "t", **HOUR, "api_limit": 30}], [api("a", "/a", "t")]),
                      workers=2)
    conns = _connections_held_by_both_workers(gw)
    try:
        passed = refused = 0
        for _ in range(8):
            for s in conns:
                s.sendall(b"GET /a HTTP/1.1\r\nHost: x\r\n\r\n")
                data = b""
                while b"\r\n\r\n" not in data or len(data) < data.index(b"\r\n\r\n") + 4 + int(
                        data.split(b"Content-Length: ")[1].split(b"\r\n")[0]):
                    chunk = s.recv(65536)
                    assert chunk, "the gateway closed a kept-alive connection"
                    data += chunk
                passed += data.startswith(b"HTTP/1.1 200")
                refused += data.startswith(b"HTTP/1.1 429")
    finally:
        for s in conns:
            s.close()
    assert passed == 30 and refused == 8 * len(conns) - 30


def test_a_reload_keeps_the_counts(make_gateway):
    document = doc([{"name": "t", **HOUR, "api_limit": 3}], [api("a", "/a", "t")])
    gw = make_gateway(document)
    assert statuses(gw.port, "/a", 2) == [200, 200]
    document["apis"].append(api("b", "/b"))
    gw.write_config(document)
    gw.signal(signal.SIGHUP)
    deadline = time.monotonic() + 10
    while request(gw.port, "GET", "/b").status != 200:      # (until the reload is live)
        assert time.monotonic() < deadline, "the reload did not apply"
        time.sleep(0.05)
    assert statuses(gw.port, "/a", 2) == [200, 429]
    assert statuses(gw.port, "/b", 3) == [200, 200, 200]     # (not bound to the throttle)


# -- app quotas ----------------------------------------------------------------------------------

def test_an_exhausted_app_quota_is_405_until_the_window_resets(make_gateway):
    apps = [dict(APPS[0], quota="small"), APPS[1]]
    document = doc([], [api("a", "/echo/x", auth="app")], apps=apps,
                   app_quotas=[{"name": "small", "limit": 2, "interval": 1, "unit": "day",
                                "reset_time": "00:00"}])
    gw = make_gateway(document)
    assert [signed_request(gw.port).status for _ in range(2)] == [200, 200]
    r = signed_request(gw.port)
    assert r.status == 405
    assert r.json()["error_code"] == "APIC.0501"
    # the window is the UTC day: Retry-After is the time to the next 00:00 UTC
    to_midnight = 86_400 - int(time.time()) % 86_400
    assert abs(int(r.header("retry-after")) - to_midnight) <= 5
    # an app without a quota is not counted
    assert [signed_request(gw.port, key="other-key-0001", secret="other-secret-0001").status
            for _ in range(3)] == [200] * 3
    gw.wait_metric("tollgate_app_quota_exhausted_total", 1, quota="small")


@pytest.mark.parametrize("change, path, says", [
    (lambda d: d["throttles"][0].update(user_limit=50, app_limit=60), "throttles[0].app_limit",
     "must not exceed user_limit"),
    (lambda d: d["throttles"][0].update(user_limit=200), "throttles[0].user_limit",
     "must not exceed api_limit"),
    (lambda d: d["throttles"][0].update(ip_limit=101), "throttles[0].ip_limit",
     "must not exceed api_limit"),
    (lambda d: d["throttles"][0].update(api_limit=3_000_000_000), "throttles[0].api_limit",
     "must not exceed 2000000000"),
    (lambda d: d["apis"][0]["environments"]["RELEASE"].update(throttle="nope"),
     "apis[0].environments.RELEASE.throttle", "nope"),
    (lambda d: d["throttles"][0].update(specials=[{"app": "ghost", "limit": 1}]),
     "throttles[0].specials[0].app", "ghost"),
    (lambda d: d["throttles"][0].update(unit="week"), "throttles[0].unit", ""),
    (lambda d: d["apps"][0].update(quota="missing"), "apps[0].quota", "missing"),
])
def test_bad_policy_documents_are_refused_naming_the_path(tmp_path, change, path, says):
    from gateway.config import ConfigError, load_document
    from gateway.snapshot import compile_snapshot
    import json

    document = doc([{"name": "t", **HOUR, "api_limit": 100}], [api("a", "/a", "t")])
    change(document)
    f = tmp_path / "c.json"
    f.write_text(json.dumps(document))
    with pytest.raises(ConfigError) as err:
        compile_snapshot(load_document(str(f)))
    text = str(err.value)
    assert path in text and says in text, text


def test_a_flood_of_new_callers_filling_the_table_never_unlimits_an_api(make_gateway):
    """With room for 1,024 caller keys, 1,500 client addresses fill the table: their own
    dimension goes untracked (and is counted as such), yet every API's own limit holds,
    including one first called after the flood."""
    document = doc([{"name": "per-ip", "interval": 1, "unit": "day", "api_limit": 100_000,
                     "ip_limit": 5},
                    {"name": "small", "interval": 1, "unit": "day", "api_limit": 3}],
                   [api("fill", "/fill", "per-ip"), api("victim", "/victim", "small")],
                   trusted_proxies=["127.0.0.1"])
    gw = make_gateway(document, extra_args=("--throttle-keys", "1024"))
    with socket.create_connection(("127.0.0.1", gw.port), timeout=10) as s:
        batch = b"".join(b"GET /fill HTTP/1.1\r\nHost: x\r\nX-Forwarded-For: 10.0.%d.%d\r\n\r\n"
                         % (i // 250, i % 250) for i in range(1500))
        s.sendall(batch)
        data, answers = b"", 0
        while answers < 1500:
            chunk = s.recv(1 << 20)
            assert chunk, "the gateway closed the connection"
            data += chunk
            answers = data.count(b"HTTP/1.1 ")
    assert data.count(b"HTTP/1.1 200") == 1500
    deadline = time.monotonic() + 5
    while gw.metric("tollgate_throttle_untracked_total", policy="per-ip") == 0:
        assert time.monotonic() < deadline, "the flood did not fill the table"
        time.sleep(0.1)
    assert statuses(gw.port, "/victim", 5) == [200, 200, 200, 429, 429]

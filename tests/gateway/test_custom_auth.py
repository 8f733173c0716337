"""Custom authorizers end to end: a real HTTP authorizer and Python callables loaded by the real
gateway process; the stages that wait hold the request back, time out, survive a client that
leaves, and pass the authorizer's context to the backend through backend parameters."""
from __future__ import annotations

import os
import socket
import time

import pytest

from tests.support.authorizer import AuthorizerServer
from tests.support.client import exchange, request

# (custom authorizers (gateway/auth/custom.py) are Python in either form: CI runs this module in
# the compiled pass only)
pytestmark = pytest.mark.once

FUNCTIONS = '''
import asyncio, os, time

MARKS = os.environ["AUTHZ_MARKS"]

def mark(name):
    open(os.path.join(MARKS, name), "w").close()

async def check(req):
    token = req["headers"].get("X-Token")
    if token == "slow":
        try:
            await asyncio.sleep(30)
        except asyncio.CancelledError:
            mark("cancelled")
            raise
    if token == "boom":
        raise RuntimeError("the authorizer broke")
    if token == "garbage":
        return {"status": "maybe"}
    if token == "body":
        return {"status": "allow", "context": {"seen": str(len(req.get("body", "")))}}
    if token and token.startswith("user-"):
        return {"status": "allow", "context": {"user": token[5:], "role": "reader"}}
    return {"status": "deny"}

def blocking(req):
    if req["headers"].get("X-Token") == "hang":
        time.sleep(30)          # a sync function that never returns in time
    return {"status": "allow", "context": {"via": "thread"}}

async def exits(req):
    raise SystemExit(1)        # a function must never end the worker

async def cancels(req):
    raise asyncio.CancelledError()

def backend_credentials(req):
    return {"status": "allow", "context": {"token": "backend-" + req["user_data"]}}
'''


def config(backend_address, authorizer, **api_options):
    api = {"name": "guarded", "group": "main", "method": "ANY", "path": "/guarded",
           "auth": "custom", "authorizer": authorizer["name"],
           "backend": {"type": "http", "url": f"http://{backend_address}/echo",
                       "params": [
                           {"name": "X-User", "location": "header", "origin": "system",
                            "value": "$context.authorizer.frontend.user"},
                           {"name": "X-Seen", "location": "header", "origin": "system",
                            "value": "$context.authorizer.frontend.seen"}]},
           "environments": {"RELEASE": {}}}
    api.update(api_options)
    return {"version": 1, "groups": [{"name": "main"}], "authorizers": [authorizer],
            "apis": [api, {"name": "open", "group": "main", "method": "GET", "path": "/open",
                           "backend": {"type": "http", "url": f"http://{backend_address}/echo"},
                           "environments": {"RELEASE": {}}}]}


def header(record, name):
    return [v for k, v in record["headers"] if k.lower() == name.lower()]


@pytest.fixture
def marks(tmp_path):
    (tmp_path / "authz_functions.py").write_text(FUNCTIONS)
    path = tmp_path / "marks"
    path.mkdir()
    return path


@pytest.fixture
def start(make_gateway, tmp_path, marks):
    env = {"PYTHONPATH": os.pathsep.join(filter(None, [str(tmp_path),
                                                        os.environ.get("PYTHONPATH")])),
           "AUTHZ_MARKS": str(marks)}

    def run(doc):
        return make_gateway(doc, env=env)
    return run


@pytest.fixture
def http_authorizer():
    server = AuthorizerServer().start()
    yield server
    server.stop()


def http_authorizer_config(server, **options):
    return {"name": "remote", "url": server.url,
            "identities": [{"name": "X-Token", "location": "header"}], **options}


def test_allow_passes_the_context_to_the_backend_and_deny_never_reaches_it(
        start, backend, http_authorizer):
    http_authorizer.answers = {"t-alice": {"status": "allow", "context": {"user": "alice"}},
                               "t-mallory": {"status": "deny"}}
    gw = start(config(backend.address, http_authorizer_config(http_authorizer,
                                                               user_data="tenant-7")))
    r = request(gw.port, "GET", "/guarded?x=1", {"X-Token": "t-alice", "X-User": "forged"})
    assert r.status == 200, r.body
    record = backend.requests[-1]
    assert header(record, "X-User") == ["alice"], "the authorizer's context, and only it"
    call = http_authorizer.calls[-1]
    assert call["headers"] == {"X-Token": "t-alice"}
    assert (call["method"], call["path"], call["user_data"]) == ("GET", "/guarded", "tenant-7")

    seen = len(backend.requests)
    r = request(gw.port, "GET", "/guarded", {"X-Token": "t-mallory"})
    assert (r.status, r.json()["error_code"]) == (401, "APIC.0305")
    assert r.json()["error_msg"] == "Incorrect authentication information: frontend authorizer"
    assert len(backend.requests) == seen
    gw.wait_metric("tollgate_auth_failures_total", 1, api="guarded", type="custom",
                   reason="denied")


def test_missing_or_invalid_identity_is_refused_before_calling(start, backend, http_authorizer):
    auth = http_authorizer_config(http_authorizer)
    auth["identities"][0]["validation"] = "t-[a-z]+"
    gw = start(config(backend.address, auth))
    r = request(gw.port, "GET", "/guarded")
    assert (r.status, r.json()["error_code"]) == (401, "APIC.0305")
    assert "missing identity X-Token" in r.json()["error_msg"]
    r = request(gw.port, "GET", "/guarded", {"X-Token": "T-UPPER"})
    assert r.status == 401 and "not valid" in r.json()["error_msg"]
    assert http_authorizer.calls == [] and backend.requests == []


def test_decisions_are_cached_for_ttl_by_identity(start, backend, http_authorizer):
    http_authorizer.answers = {"t-a": {"status": "allow", "context": {"user": "a"}},
                               "t-b": {"status": "deny"}}
    gw = start(config(backend.address, http_authorizer_config(http_authorizer, ttl_s=60)))
    for _ in range(3):
        assert request(gw.port, "GET", "/guarded", {"X-Token": "t-a"}).status == 200
        assert request(gw.port, "GET", "/guarded", {"X-Token": "t-b"}).status == 401
    assert [c["headers"]["X-Token"] for c in http_authorizer.calls] == ["t-a", "t-b"]
    assert header(backend.requests[-1], "X-User") == ["a"], "a cached decision keeps its context"


GARBAGE = {
    "503": (("status", 503), "unusable answer (status 503)"),
    "not-json": (("raw", b"<html>not json</html>"), "unusable answer (the answer is not JSON)"),
    "bad-key": ({"status": "allow", "context": {"9bad": "x"}}, "unusable answer (a context key"),
    "nested-value": ({"status": "allow", "context": {"k": {"nested": 1}}}, "is not a string"),
    "huge": (("raw", b"x" * 100000), "unusable answer"),
    "no-status": ({"context": {}}, "neither 'allow' nor 'deny'"),
}


def test_a_garbage_answer_is_a_clear_500(start, backend, http_authorizer):
    http_authorizer.answers = {token: answer for token, (answer, _) in GARBAGE.items()}
    gw = start(config(backend.address, http_authorizer_config(http_authorizer)))
    for token, (_, says) in GARBAGE.items():
        r = request(gw.port, "GET", "/guarded", {"X-Token": token})
        assert (r.status, r.json()["error_code"]) == (500, "APIC.0601"), (token, r.body)
        assert r.json()["error_msg"].startswith("Custom authorizer failed: ")
        assert says in r.json()["error_msg"], token
    assert backend.requests == []


def test_a_slow_http_authorizer_times_out_and_loose_mode_lets_the_call_through(
        start, backend, http_authorizer):
    http_authorizer.answers = {"t": ("sleep", 3, {"status": "allow"})}
    auth = http_authorizer_config(http_authorizer, timeout_ms=300)
    strict = config(backend.address, auth)
    loose = config(backend.address, dict(auth, name="loose", loose=True))
    loose["apis"][0].update(name="loose", path="/loose")
    strict["authorizers"].append(loose["authorizers"][0])
    strict["apis"].append(loose["apis"][0])
    gw = start(strict)
    began = time.monotonic()
    r = request(gw.port, "GET", "/guarded", {"X-Token": "t"})
    assert (r.status, r.json()["error_msg"]) == (
        500, "Custom authorizer failed: no answer within 300 ms")
    assert time.monotonic() - began < 2.5, "the call's timeout bounds the wait"
    assert backend.requests == []
    r = request(gw.port, "GET", "/loose", {"X-Token": "t"})
    assert r.status == 200, "loose mode: a failing authorizer lets the call through"
    assert header(backend.requests[-1], "X-User") == [], "with an empty context"


def test_a_dead_http_authorizer_is_a_500(start, backend):
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    gw = start(config(backend.address, {"name": "dead", "url": f"http://127.0.0.1:{port}/x",
                                        "identities": [{"name": "X-Token",
                                                        "location": "header"}]}))
    r = request(gw.port, "GET", "/guarded", {"X-Token": "t"})
    assert (r.status, r.json()["error_msg"]) == (500, "Custom authorizer failed: the call failed")


def test_python_callables_async_and_sync(start, backend):
    doc = config(backend.address, {"name": "py", "function": "authz_functions:check",
                                   "identities": [{"name": "X-Token", "location": "header"}]})
    doc["authorizers"].append({"name": "sync", "function": "authz_functions:blocking",
                               "timeout_ms": 500,
                               "identities": [{"name": "X-Token", "location": "header"}]})
    doc["apis"].append({"name": "sync", "group": "main", "method": "GET", "path": "/sync",
                        "auth": "custom", "authorizer": "sync",
                        "backend": {"type": "http", "url": f"http://{backend.address}/echo"},
                        "environments": {"RELEASE": {}}})
    gw = start(doc)
    r = request(gw.port, "GET", "/guarded", {"X-Token": "user-carol"})
    assert r.status == 200 and header(backend.requests[-1], "X-User") == ["carol"]
    r = request(gw.port, "GET", "/guarded", {"X-Token": "boom"})
    assert (r.status, r.json()["error_msg"]) == (500, "Custom authorizer failed: the call failed")
    r = request(gw.port, "GET", "/guarded", {"X-Token": "garbage"})
    assert r.status == 500 and "neither 'allow' nor 'deny'" in r.json()["error_msg"]
    assert request(gw.port, "GET", "/sync", {"X-Token": "fine"}).status == 200
    # a plain function that hangs holds a thread, never the event loop: the request times out
    # and the worker keeps answering meanwhile
    began = time.monotonic()
    r = request(gw.port, "GET", "/sync", {"X-Token": "hang"})
    assert r.status == 500 and "no answer within 500 ms" in r.json()["error_msg"]
    assert time.monotonic() - began < 2.5
    assert request(gw.port, "GET", "/open").status == 200
    assert "the authorizer broke" in gw.log(), "the failure's cause is in the log"
    # a worker whose function still hangs in a thread stops when asked, not when it returns
    assert gw.stop(timeout=15) == 0


def test_a_function_raising_systemexit_or_cancelled_is_a_500_not_a_dead_worker(start, backend):
    doc = config(backend.address, {"name": "exits", "function": "authz_functions:exits"})
    doc["authorizers"].append({"name": "cancels", "function": "authz_functions:cancels",
                               "loose": True})
    doc["apis"].append({"name": "cancels", "group": "main", "method": "GET", "path": "/cancels",
                        "auth": "custom", "authorizer": "cancels",
                        "backend": {"type": "http", "url": f"http://{backend.address}/echo"},
                        "environments": {"RELEASE": {}}})
    gw = start(doc)
    for _ in range(3):
        r = request(gw.port, "GET", "/guarded")
        assert (r.status, r.json()["error_msg"]) == (500, "Custom authorizer failed: the call failed")
    r = request(gw.port, "GET", "/cancels")
    assert r.status == 200, "loose mode: the failing function lets the call through"
    assert request(gw.port, "GET", "/open").status == 200
    assert "exited" not in gw.log() and "starting it again" not in gw.log()


def test_a_repeated_identity_is_refused(start, backend, http_authorizer):
    http_authorizer.answers = {"t-a": {"status": "allow", "context": {"user": "a"}}}
    gw = start(config(backend.address, http_authorizer_config(http_authorizer)))
    raw = b"GET /guarded HTTP/1.1\r\nHost: gw\r\nX-Token: t-a\r\nX-Token: t-admin\r\n\r\n"
    responses, _ = exchange(gw.port, raw)
    assert (responses[0].status, responses[0].json()["error_code"]) == (401, "APIC.0305")
    assert "identity X-Token is repeated" in responses[0].json()["error_msg"]
    assert http_authorizer.calls == [] and backend.requests == []


def test_authorizer_urls_are_not_logged(start, backend, http_authorizer):
    http_authorizer.answers = {"t-a": {"status": "allow"}}
    auth = http_authorizer_config(http_authorizer)
    auth["url"] += "?api_key=SECRET-IN-URL"
    gw = start(config(backend.address, auth))
    assert request(gw.port, "GET", "/guarded", {"X-Token": "t-a"}).status == 200
    assert "SECRET-IN-URL" not in gw.log()


def test_a_client_leaving_during_the_wait_cancels_it(start, backend, marks):
    gw = start(config(backend.address, {"name": "py", "function": "authz_functions:check",
                                        "identities": [{"name": "X-Token",
                                                        "location": "header"}],
                                        "timeout_ms": 20000}))
    with socket.create_connection(("127.0.0.1", gw.port)) as s:
        s.sendall(b"GET /guarded HTTP/1.1\r\nHost: gw\r\nX-Token: slow\r\n\r\n")
        time.sleep(0.3)
    deadline = time.monotonic() + 5
    while not (marks / "cancelled").exists() and time.monotonic() < deadline:
        time.sleep(0.05)
    assert (marks / "cancelled").exists(), "the authorizer call was not cancelled"
    assert backend.requests == []
    assert request(gw.port, "GET", "/open").status == 200


def test_the_body_is_held_back_while_waiting_and_arrives_whole(start, backend):
    body = os.urandom(300_000)
    gw = start(config(backend.address, {"name": "py", "function": "authz_functions:check",
                                        "identities": [{"name": "X-Token",
                                                        "location": "header"}]}))
    r = request(gw.port, "POST", "/guarded", {"X-Token": "user-dan"}, body=body)
    assert r.status == 200, r.body
    import hashlib
    record = backend.requests[-1]
    assert (record["body_length"], record["body_sha256"]) == (len(body),
                                                              hashlib.sha256(body).hexdigest())
    # refused: the body (sent in pieces, with Expect: 100-continue) never reaches the backend
    seen = len(backend.requests)
    raw = (b"POST /guarded HTTP/1.1\r\nHost: gw\r\nX-Token: nobody\r\nContent-Length: 10\r\n"
           b"Expect: 100-continue\r\n\r\n")
    responses, _ = exchange(gw.port, b"", chunks=[raw, b"0123456789"])
    assert responses[0].status == 401
    assert len(backend.requests) == seen


def test_need_body_hands_the_body_to_the_authorizer(start, backend):
    gw = start(config(backend.address, {"name": "py", "function": "authz_functions:check",
                                        "identities": [{"name": "X-Token",
                                                        "location": "header"}],
                                        "need_body": True}))
    chunks = [b"POST /guarded HTTP/1.1\r\nHost: gw\r\nX-Token: body\r\n"
              b"Transfer-Encoding: chunked\r\n\r\n", b"5\r\nhello\r\n", b"6\r\n world\r\n",
              b"0\r\n\r\n"]
    responses, _ = exchange(gw.port, b"", chunks=chunks)
    assert responses[0].status == 200, responses[0].body
    record = backend.requests[-1]
    assert header(record, "X-Seen") == ["11"], "the authorizer saw the whole body"
    assert record["body_length"] == 11


def test_a_backend_authorizer_supplies_backend_credentials(start, backend):
    doc = config(backend.address, {"name": "creds", "type": "backend",
                                   "function": "authz_functions:backend_credentials",
                                   "user_data": "svc"}, auth="none")
    del doc["apis"][0]["authorizer"]
    doc["apis"][0]["backend"]["authorizer"] = "creds"
    doc["apis"][0]["backend"]["params"] = [
        {"name": "X-Backend-Token", "location": "header", "origin": "system",
         "value": "$context.authorizer.backend.token"}]
    gw = start(doc)
    assert request(gw.port, "GET", "/guarded").status == 200
    assert header(backend.requests[-1], "X-Backend-Token") == ["backend-svc"]


def test_a_callable_that_cannot_be_imported_is_refused_at_load(tmp_path):
    import subprocess
    import sys
    import yaml
    path = tmp_path / "c.yaml"
    path.write_text(yaml.safe_dump(config("127.0.0.1:1", {"name": "x",
                                                           "function": "no_such_module:f"})))
    out = subprocess.run([sys.executable, "-m", "tollgate", "validate", str(path)],
                         capture_output=True, text=True, timeout=60)
    assert out.returncode != 0
    assert "authorizers[0].function: cannot import 'no_such_module'" in out.stdout + out.stderr


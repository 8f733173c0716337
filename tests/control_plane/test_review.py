"""Adversarial checks of the control plane from outside: real HTTP against ``tollgate
control-plane``, and real gateways following a control plane that misbehaves.  Each test here
failed before the fix it came with."""
from __future__ import annotations

import json

import httpx
import pytest

from tests.support.control_plane import ControlPlaneProcess, running

from .examples import rich, without_certificates

ADMIN = "admin-token-for-tests-0123456789"


@pytest.fixture(scope="module")
def cp(tmp_path_factory):
    with running(tmp_path_factory.mktemp("cp"), admin_token=ADMIN) as proc:
        yield proc


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


# ------------------------------------------------------------ a gateway following garbage

class FakeControlPlane:
    """A 'control plane' on a real socket answering the gateways' endpoint from a script: each
    poll gets the next ``(status, body bytes)``, the last one repeated (a 304 when empty)."""

    def __init__(self, answers: list[tuple[int, bytes]]):
        import http.server
        import threading

        self.answers = list(answers)
        self.polls = 0
        self.paths: list[str] = []
        fake = self

        class Handler(http.server.BaseHTTPRequestHandler):
            def do_GET(self):
                fake.polls += 1
                fake.paths.append(self.path)
                status, body = fake.answers.pop(0) if len(fake.answers) > 1 else \
                    (fake.answers[0] if fake.answers else (304, b""))
                self.send_response(status)
                if status == 503:
                    self.send_header("Retry-After", "1")
                self.send_header("Content-Type", "application/json")
                self.send_header("Content-Length", str(len(body)))
                self.end_headers()
                self.wfile.write(body)

            def log_message(self, *args):
                pass

        self.server = http.server.ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self.url = f"http://127.0.0.1:{self.server.server_address[1]}"
        self._thread = threading.Thread(target=self.server.serve_forever, daemon=True)

    def __enter__(self):
        self._thread.start()
        return self

    def __exit__(self, *exc):
        self.server.shutdown()
        self.server.server_close()


def _publish(revision: int, body: str) -> bytes:
    from .test_publishing import base_doc, mock_api
    doc = base_doc(mock_api("a", "/a", body))
    return json.dumps({"revision": revision, "document": doc}).encode()


@pytest.mark.parametrize("garbage", [
    pytest.param(b'{"revision": 2, "document": ' + b"[" * 100_000 + b"]" * 100_000 + b"}",
                 id="deeply-nested"),
    pytest.param(b'{"revision": 2, "document": {"version": 1, "x": "\xff\xfe"}}',
                 id="invalid-utf8"),
    pytest.param(b'{"revision": 2, "document": {"version": 1' + b"0" * 400 + b"}}",
                 id="huge-integer"),
    pytest.param(b'{"revision": 2, "document": {"version": 1, "apis": "nope"}}',
                 id="refused-document"),
])
def test_a_gateway_survives_a_control_plane_answering_garbage(tmp_path, garbage):
    """A document the gateway cannot load, whatever the way it is broken, is refused like an
    invalid one: the gateway keeps serving its last revision and takes the next good one."""
    from tests.support.gateway import GatewayProcess
    from .test_publishing import serves, wait_for
    answers = [(200, _publish(1, "one")), (200, garbage), (200, _publish(3, "three")),
               (304, b"")]
    with FakeControlPlane(answers) as fake:
        gw = GatewayProcess(None, tmp_path, extra_args=[
            "--control-plane", fake.url, "--token=t", "--state-dir", str(tmp_path / "state")])
        gw.start(ready=False)
        try:
            try:
                wait_for(serves(gw, "/a", "three"), timeout=20, what="the revision after garbage")
            except AssertionError as exc:
                raise AssertionError(f"{exc}\n{gw.log()}") from None
            assert gw.proc.poll() is None
            assert "Traceback" not in gw.log(), gw.log()
        finally:
            gw.stop()


# ---------------------------------------------------------------------- the command line

def _control_plane_cli(*args, timeout=30):
    import os
    import subprocess
    import sys
    from tests.support.gateway import ROOT
    env = {k: v for k, v in os.environ.items() if k not in ("TOLLGATE_STORE",
                                                            "TOLLGATE_ADMIN_TOKEN")}
    return subprocess.run([sys.executable, "-m", "tollgate", "control-plane", *args], cwd=ROOT,
                          capture_output=True, text=True, timeout=timeout, env=env)


def test_control_plane_refuses_a_bad_store_or_a_taken_port_clearly(tmp_path, cp):
    from tests.support.gateway import free_port
    not_a_dir = tmp_path / "file"
    not_a_dir.write_text("x")
    not_a_db = tmp_path / "garbage.db"
    not_a_db.write_text("this is not a database\n" * 100)
    for store, said in ((f"mysql://user:PW-SECRET-1@db/x", "expected sqlite"),
                        (f"sqlite:///{not_a_dir}/sub/cp.db", "cannot open the store"),
                        (f"sqlite:///{not_a_db}", "not a database"),
                        ("postgresql://user:PW-SECRET-2@127.0.0.1:1/db", "cannot open the store")):
        r = _control_plane_cli("--listen", f"127.0.0.1:{free_port()}", "--store", store)
        assert r.returncode == 1, (store, r.returncode, r.stdout, r.stderr)
        out = r.stdout + r.stderr
        assert said in out and "Traceback" not in out and "PW-SECRET" not in out, (store, out)
        assert "serving" not in out, out
    # the port of the running control plane is taken
    r = _control_plane_cli("--listen", f"127.0.0.1:{cp.port}",
                           "--store", f"sqlite:///{tmp_path / 'other.db'}")
    out = r.stdout + r.stderr
    assert r.returncode == 1 and "cannot listen on" in out and "Traceback" not in out, out
    assert "serving" not in out, out


def test_up_refuses_a_bad_state_dir_a_bad_store_or_a_taken_port_clearly(tmp_path, cp):
    import os
    import subprocess
    import sys
    from tests.support.gateway import ROOT, free_port

    def up(state, cp_port=None):
        args = [sys.executable, "-m", "tollgate", "up", "--state-dir", str(state),
                "--control-plane-listen", f"127.0.0.1:{cp_port or free_port()}",
                "--listen", f"127.0.0.1:{free_port()}",
                "--status-listen", f"127.0.0.1:{free_port()}"]
        env = {k: v for k, v in os.environ.items() if k != "TOLLGATE_ADMIN_TOKEN"}
        r = subprocess.run(args, cwd=ROOT, capture_output=True, text=True, timeout=60, env=env)
        return r.returncode, r.stdout + r.stderr

    a_file = tmp_path / "a-file"
    a_file.write_text("x")
    bad_store = tmp_path / "bad-store"
    bad_store.mkdir()
    (bad_store / "control-plane.db").write_text("this is not a database\n" * 100)
    for state, cp_port, said in ((a_file, None, "cannot make the state directory"),
                                 (bad_store, None, "cannot open the store"),
                                 (tmp_path / "fresh", cp.port, "cannot listen on")):
        code, out = up(state, cp_port)
        assert code == 1 and said in out and "Traceback" not in out, (state, code, out)
        assert "admin token" not in out and "gateway http" not in out, out


def test_an_unexpected_failure_is_a_json_500_with_the_request_id(tmp_path):
    """A store broken under the control plane (a table gone): the answer is still the JSON
    error every other failure gets, naming the request id the log has."""
    import sqlite3
    proc = ControlPlaneProcess(tmp_path, admin_token=ADMIN).start()
    try:
        with proc.client(ADMIN) as admin:
            assert admin.post("/v1/environments", json={"name": "A"}).status_code == 201
            with sqlite3.connect(proc.store_path) as db:
                db.execute("DROP TABLE audit")
            r = admin.post("/v1/environments", json={"name": "B"})
            body = assert_error(r, 500, "TG.0500")
            assert r.headers["x-request-id"] in body["error_msg"]
    finally:
        proc.stop()


def test_publishing_to_an_environment_that_does_not_exist_says_so(cp, admin):
    # free-slots uses a variable its group defines per environment: the missing environment,
    # not the missing variable, is what is wrong
    for r in (admin.post("/v1/apis/free-slots/publish", json={"env": "NOPE"}),
              admin.post("/v1/publish", json={"env": "NOPE", "apis": "all"})):
        body = assert_error(r, 422, "TG.0422")
        assert body["path"] == "env" and "'NOPE' does not exist" in body["error_msg"], body


def test_a_gateway_refuses_a_revision_that_is_not_positive(tmp_path):
    """A revision below 1 is no publish: taken, the gateway would ask for ``after=-1`` from then
    on (and after a restart: it is kept in the state directory), which a control plane refuses
    (400) -- the gateway would never follow again."""
    from urllib.parse import parse_qs, urlsplit
    from tests.support.gateway import GatewayProcess
    from .test_publishing import serves, wait_for
    answers = [(200, _publish(-1, "minus-one")), (200, _publish(3, "three")), (304, b"")]
    with FakeControlPlane(answers) as fake:
        gw = GatewayProcess(None, tmp_path, extra_args=[
            "--control-plane", fake.url, "--token=t", "--state-dir", str(tmp_path / "state")])
        gw.start(ready=False)
        try:
            wait_for(serves(gw, "/a", "three"), timeout=20, what="revision 3")
            wait_for(lambda: len(fake.paths) >= 3, what="a poll after revision 3")
        finally:
            gw.stop()
    afters = [int(parse_qs(urlsplit(p).query)["after"][0]) for p in fake.paths]
    assert all(a >= 0 for a in afters), afters


def test_a_gateway_that_cannot_write_its_state_keeps_following(tmp_path):
    """The state directory refuses a write (here: a directory where the candidate file goes):
    the gateway says so, keeps serving, and takes the revision once it can write again (the
    follower used to die silently: no revision was ever applied again)."""
    import os
    from tests.support.gateway import GatewayProcess
    from .test_publishing import serves, wait_for
    state = tmp_path / "state"
    state.mkdir()
    (state / "published.json").write_text('{"version": 1}\n')
    (state / "published.json.new").mkdir()          # an OSError for every write of a candidate
    with FakeControlPlane([(200, _publish(1, "one"))]) as fake:
        gw = GatewayProcess(None, tmp_path, extra_args=[
            "--control-plane", fake.url, "--token=t", "--state-dir", str(state)])
        gw.start(ready=False)
        try:
            wait_for(lambda: "cannot keep revision 1" in gw.log(), timeout=20,
                     what="the write refused, logged")
            os.rmdir(state / "published.json.new")
            wait_for(serves(gw, "/a", "one"), timeout=30, what="revision 1 once writable")
            assert gw.proc.poll() is None
        finally:
            gw.stop()


def test_a_gateway_asks_again_when_a_503_says_not_after_a_growing_back_off(tmp_path):
    """The control plane's store was down for a while (5 answers 503 with Retry-After: 1): the
    gateway asks again a second later each time, so the publish that follows reaches it in
    about 5 s -- not after a back-off grown to 0.5 + 1 + 2 + 4 + 8 s."""
    from tests.support.gateway import GatewayProcess
    from .test_publishing import serves, wait_for
    down = (503, b'{"error_code": "TG.0503", "error_msg": "the store is unavailable"}')
    answers = [(200, _publish(1, "one"))] + [down] * 5 + [(200, _publish(2, "two")), (304, b"")]
    with FakeControlPlane(answers) as fake:
        gw = GatewayProcess(None, tmp_path, extra_args=[
            "--control-plane", fake.url, "--token=t", "--state-dir", str(tmp_path / "state")])
        gw.start(ready=False)
        try:
            wait_for(serves(gw, "/a", "one"), timeout=20, what="the first revision")
            wait_for(serves(gw, "/a", "two"), timeout=12,
                     what="the revision after the 503s (the back-off grew?)")
            assert gw.log().count("still serving revision 1") == 1, gw.log()  # (logged once)
        finally:
            gw.stop()

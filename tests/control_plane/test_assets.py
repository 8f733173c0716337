"""Asset export and import over real processes: ``tollgate control-plane`` (SQLite), its REST
``/v1/assets``, ``tollgate assets`` and ``tollgate up`` (a control plane and a gateway following
it), real HTTP."""
from __future__ import annotations

import contextlib
import copy
import json
import os
import signal
import subprocess
import sys
import threading

import httpx
import pytest

from control_plane.assets import ASSET_KINDS
from tests.control_plane.examples import SECRET_VALUES, rich, without_certificates
from tests.control_plane.test_publishing import mock_api, wait_for
from tests.support.control_plane import running
from tests.support.gateway import ROOT, free_port

ADMIN = "admin-token-for-asset-tests-0123456"

#: instance data of source(): none may appear in an asset file (with the secrets)
INSTANCE_VALUES = [
    '"127.0.0.1:9001"', '"127.0.0.1:9002"',              # group variables
    "db.example", "reporter", "parking.db",               # data source addresses
    "authz-user", "authz-pw-01",                          # an authorizer url's credentials
    '"TEST"', '"STAGE"',                                  # non-default environments
    '"basic"', '"office"', '"daily"', '"to-backend"',     # policies and signature keys
    "AK-bob", "alice", "slot-001", "AA:BB:CC", "parking-to-stream",   # IAM, devices, rules
    "parking.example.com",                                # a group domain
]


def source() -> dict:
    """The rich example (every kind, every secret) with: credentials in an authorizer's url, a
    group domain, an API published in TEST only and one
    never published."""
    raw = without_certificates(rich())
    raw["environments"].append({"name": "STAGE"})
    raw["groups"][0]["domains"] = ["parking.example.com"]
    raw["authorizers"][1]["url"] = "http://authz-user:authz-pw-01@127.0.0.1:9101/creds"
    raw["apis"][0]["conditional_backends"][0]["backend"]["url"] = \
        "https://127.0.0.1:9004/lots/{lot}/free"
    raw["apis"][0]["conditional_backends"][0]["backend"]["tls"] = {"server_name": "lots.local"}
    raw["apis"].append({**mock_api("test-only", "/test-only", "t", envs=("TEST",)),
                        "group": "parking"})
    raw["apis"].append({**mock_api("draft", "/draft", "d", envs=("STAGE",)), "group": "parking"})
    return raw


@pytest.fixture
def cp(tmp_path):
    with running(tmp_path, admin_token=ADMIN) as proc:
        yield proc


@pytest.fixture
def cp2(tmp_path):
    (tmp_path / "second").mkdir()
    with running(tmp_path / "second", admin_token=ADMIN) as proc:
        yield proc


def ok(r, status=200):
    assert r.status_code == status, r.text
    return r.json()


@contextlib.contextmanager
def loaded(cp):
    """A client of ``cp`` with source() stored and published: free-slots, by-channel and
    ingest-status in RELEASE, test-only in TEST (draft nowhere)."""
    with cp.client(ADMIN) as c:
        ok(c.put("/v1/config", json=source()))
        ok(c.post("/v1/publish", json={"env": "RELEASE",
                                       "apis": ["free-slots", "by-channel", "ingest-status"]}),
           201)
        ok(c.post("/v1/apis/test-only/publish", json={"env": "TEST"}), 201)
        yield c


def export_of(cp) -> dict:
    with loaded(cp) as c:
        return ok(c.get("/v1/assets"))


def get(cp, path) -> dict:
    with cp.client(ADMIN) as c:
        return ok(c.get(path))


def state(c) -> tuple:
    """What an import must not change when it is refused."""
    return ok(c.get("/v1/config")), ok(c.get("/v1/audit"))["total"]


def by_name(items):
    return {i["name"]: i for i in items}


def test_export_holds_the_assets_and_no_secret_or_instance_data(cp):
    with loaded(cp) as c:
        export_checks(cp, c)


def export_checks(cp, c):
    exported = ok(c.get("/v1/assets"))
    text = json.dumps(exported)
    for what, value in SECRET_VALUES.items():
        assert value not in text, what
    app_key = source()["apps"][0]["key"]
    assert app_key not in text
    for value in INSTANCE_VALUES:
        assert value not in text, value
    assert exported["format"] == "tollgate-assets" and exported["version"] == 1
    assets = exported["assets"]
    assert tuple(assets) == ASSET_KINDS
    # APIs: those published in RELEASE only (test-only is in TEST, draft is not published)
    assert [a["name"] for a in assets["apis"]] == ["by-channel", "free-slots", "ingest-status"]
    assert all(a["environments"] == {} for a in assets["apis"])
    canary = by_name(assets["apis"])["free-slots"]["conditional_backends"][0]["backend"]
    assert canary["url"] == "https://127.0.0.1:9004/lots/{lot}/free"
    assert canary["tls"]["server_name"] == "lots.local" and canary["tls"]["ca_file"] is None
    assert assets["groups"] == [{"name": "parking", "domains": [], "variables": {}}]
    lots = assets["channels"][0]
    assert lots["members"] == [] and lots["member_groups"] == [{"name": "main", "weight": 1}]
    assert lots["health_check"]["path"] == "/health"
    app = assets["apps"][0]
    assert (app["name"], app["key"], app["secret"], app["app_codes"], app["quota"],
            app["acl"]) == ("parking-app", None, None, [], None, None)
    assert {d["name"]: d["url"] for d in assets["datasources"]} == {
        "parking-db": "sqlite://", "warehouse": "postgresql://"}
    assert by_name(assets["authorizers"])["backend-auth"]["url"] == "http://127.0.0.1:9101/creds"
    assert [p["name"] for p in assets["products"]] == ["parking-sensor"]
    assert assets["products"][0]["services"][0]["properties"][1]["enum"] == ["0", "1"]
    # a read-only token may export (there is no secret in it)
    token = ok(c.post("/v1/tokens", json={"name": "reader", "role": "read-only"}), 201)["token"]
    with cp.client(token) as reader:
        assert reader.get("/v1/assets").json() == exported
        assert reader.post("/v1/assets", json=exported).status_code == 403


def test_import_into_an_empty_control_plane_round_trip_and_reconfigure(cp, cp2):
    exported = export_of(cp)
    with cp2.client(ADMIN) as c:
        done = ok(c.post("/v1/assets", json=exported))
        assert done["imported"] == {
            "apps": ["parking-app"], "groups": ["parking"], "channels": ["lots"],
            "authorizers": ["backend-auth", "token-check"], "apis": [
                "by-channel", "free-slots", "ingest-status"],
            "datasources": ["parking-db", "warehouse"], "products": ["parking-sensor"]}
        todo = {(e["kind"], e["name"]): e for e in done["reconfigure"]}
        # new secrets, shown in this answer only
        app = todo[("apps", "parking-app")]
        assert set(app["generated"]) == {"key", "secret"}
        assert app["generated"]["secret"] != SECRET_VALUES["apps.secret"]
        stored = ok(c.get("/v1/apps/parking-app"))
        assert stored["key"] == app["generated"]["key"] and stored["secret"] == "******"
        assert any(i["field"] == "authorizations" for i in app["items"])
        assert [i["field"] for i in todo[("channels", "lots")]["items"]] == ["members"]
        assert todo[("datasources", "warehouse")]["items"][0]["field"] == "url"
        # the APIs that lack variables or members are listed as blocked
        blocked = {(k, i["field"]) for (k, _), e in todo.items() for i in e["items"]
                   if i["blocks_publish"] and k == "apis"}
        assert blocked == {("apis", "backend.url"), ("apis", "backend.channel"),
                           ("apis", "conditional_backends[1].backend.channel")}
        free = [i for i in todo[("apis", "free-slots")]["items"] if i["blocks_publish"]]
        assert "variable 'lot_backend'" in free[0]["what"]
        assert not any(i["blocks_publish"] for i in todo[("apis", "ingest-status")]["items"])
        # nothing was published by the import
        assert ok(c.get("/v1/publishes"))["total"] == 0
        # round trip: the export of what the import made is the file imported
        assert ok(c.get("/v1/assets")) == exported

        # unpublishable until the variables and the members exist
        r = c.post("/v1/apis/free-slots/publish", json={"env": "RELEASE"})
        assert r.status_code == 409, r.text
        assert "variable 'lot_backend' is not defined for environment 'RELEASE'" in \
            r.json()["error_msg"]
        assert {e["path"] for e in r.json()["errors"]} == {
            "backend.url", "conditional_backends[1].backend.channel"}
        r = c.post("/v1/apis/by-channel/publish", json={"env": "RELEASE"})
        assert r.status_code == 409 and "channel 'lots' has no members" in r.json()["error_msg"]
        r = c.post("/v1/publish", json={"env": "RELEASE", "apis": "all"})
        assert r.status_code == 409 and len(r.json()["errors"]) == 3
        assert ok(c.get("/v1/publishes"))["total"] == 0
        ok(c.post("/v1/apis/ingest-status/publish", json={"env": "RELEASE"}), 201)

        ok(c.patch("/v1/groups/parking",
                   json={"variables": {"RELEASE": {"lot_backend": "127.0.0.1:9001"}}}))
        r = c.post("/v1/apis/free-slots/publish", json={"env": "RELEASE"})
        assert r.status_code == 409 and [e["path"] for e in r.json()["errors"]] == [
            "conditional_backends[1].backend.channel"]
        ok(c.patch("/v1/channels/lots", json={"members": [{"host": "127.0.0.1", "port": 9001}]}))
        ok(c.post("/v1/publish", json={"env": "RELEASE", "apis": ["free-slots", "by-channel"]}),
           201)
        # published in RELEASE now: still the same assets
        assert ok(c.get("/v1/assets")) == exported


def test_import_add_merge_and_prefix(cp):
    with loaded(cp) as c:
        add_merge_prefix(c)


def add_merge_prefix(c):
    exported = ok(c.get("/v1/assets"))
    before = state(c)

    # add: names that exist are refused, all of them listed, nothing written
    r = c.post("/v1/assets", json=exported)
    assert r.status_code == 409, r.text
    listed = {(e["kind"], e["name"]) for e in r.json()["errors"]}
    assert ("groups", "parking") in listed and ("apis", "free-slots") in listed
    assert len(listed) == sum(len(v) for v in exported["assets"].values())
    assert "mode=merge" in r.json()["error_msg"]
    assert state(c) == before

    # prefix: every name and every reference to a name of the file
    done = ok(c.post("/v1/assets", params={"prefix": "copy."}, json=exported))
    assert done["imported"]["apis"] == ["copy.by-channel", "copy.free-slots",
                                        "copy.ingest-status"]
    api = ok(c.get("/v1/apis/copy.by-channel"))
    assert (api["group"], api["backend"]["channel"], api["backend"]["authorizer"]) == (
        "copy.parking", "copy.lots", "copy.backend-auth")
    free = ok(c.get("/v1/apis/copy.free-slots"))
    assert free["authorizer"] == "copy.token-check"
    assert free["conditional_backends"][1]["backend"]["channel"] == "copy.lots"
    assert free["environments"] == {}
    assert ok(c.get("/v1/channels/copy.lots"))["members"] == []
    # the originals are untouched
    assert ok(c.get("/v1/apis/by-channel"))["group"] == "parking"

    # merge: the file's asset fields replace, the stored instance data stays
    changed = copy.deepcopy(exported)
    by_name(changed["assets"]["apis"])["by-channel"]["path"] = "/by-channel-v2"
    by_name(changed["assets"]["channels"])["lots"]["balance"] = "wlc"
    done = ok(c.post("/v1/assets", params={"mode": "merge"}, json=changed))
    todo = {(e["kind"], e["name"]): e for e in done["reconfigure"]}
    assert "generated" not in todo.get(("apps", "parking-app"), {})
    assert ("channels", "lots") not in todo             # it kept its members
    app = ok(c.get("/v1/apps/parking-app"))
    assert app["key"] == source()["apps"][0]["key"] and app["quota"] == "daily"
    assert app["app_codes"] == ["******"]
    lots = ok(c.get("/v1/channels/lots"))
    assert lots["balance"] == "wlc" and [m["port"] for m in lots["members"]] == [9001, 9003]
    api = ok(c.get("/v1/apis/by-channel"))
    assert api["path"] == "/by-channel-v2"
    assert api["environments"]["TEST"]["throttle"] == "basic"      # bindings kept
    assert ok(c.get("/v1/groups/parking"))["variables"]["TEST"] == {
        "lot_backend": "127.0.0.1:9002"}
    # the merged API is an asset as imported (not as published) until published in RELEASE
    assert by_name(ok(c.get("/v1/assets"))["assets"]["apis"])["by-channel"]["path"] == \
        "/by-channel-v2"


@pytest.mark.parametrize(("change", "expected"), [
    (lambda f: f.update(format="other"), [(None, None, "format")]),
    (lambda f: f.update(version=2), [(None, None, "version")]),
    (lambda f: f["assets"].update(throttles=[]), [(None, None, "assets.throttles")]),
    (lambda f: f["assets"]["apps"][0].update(secret="given-secret-01"),
     [("apps", "parking-app", "secret")]),
    (lambda f: f["assets"]["channels"][0].update(members=[{"host": "10.0.0.1", "port": 1}]),
     [("channels", "lots", "members[0]")]),
    (lambda f: f["assets"]["apis"][0].update(environments={"RELEASE": {}}),
     [("apis", "by-channel", "environments.RELEASE")]),
    (lambda f: f["assets"]["apis"][0].update(timeout=3), [("apis", "by-channel", "timeout")]),
    (lambda f: f["assets"]["groups"].append({"name": "parking"}),
     [("groups", "parking", "name")]),
    # a reference to nothing: found by the whole-document check, after the file's own checks
    (lambda f: f["assets"]["apis"][1].update(group="nowhere"),
     [("apis", "free-slots", "group")]),
])
def test_a_bad_file_changes_nothing_and_names_every_problem(cp2, cp, change, expected):
    exported = export_of(cp)
    bad = copy.deepcopy(exported)
    change(bad)
    with cp2.client(ADMIN) as c:
        before = state(c)
        r = c.post("/v1/assets", json=bad)
        assert r.status_code == 422, r.text
        found = [(e["kind"], e["name"], e["path"]) for e in r.json()["errors"]]
        assert found == expected, r.json()
        assert state(c) == before


def test_bad_requests_change_nothing(cp):
    with cp.client(ADMIN) as c:
        before = state(c)
        assert c.post("/v1/assets", content=b"{nope").status_code == 400
        assert c.post("/v1/assets", params={"mode": "replace"},
                      json={"format": "tollgate-assets", "version": 1,
                            "assets": {}}).status_code == 400
        r = c.post("/v1/assets", json=[1, 2])
        assert r.status_code == 422 and r.json()["errors"][0]["path"] == ""
        r = c.post("/v1/assets", json={"format": "tollgate-assets", "version": 1,
                                       "assets": {"apps": [{"name": "bad name!"}]}})
        assert r.status_code == 422 and r.json()["errors"][0]["path"] == "name"
        assert state(c) == before
        with cp.client(None) as anonymous:
            assert anonymous.get("/v1/assets").status_code == 401
        # an empty file imports nothing
        assert ok(c.post("/v1/assets", json={"format": "tollgate-assets", "version": 1,
                                             "assets": {}})) == {"imported": {},
                                                                 "reconfigure": []}


def tollgate(*args, env=None, timeout=120):
    full = dict(os.environ)
    full.pop("TOLLGATE_ADMIN_TOKEN", None)
    full.update(env or {})
    return subprocess.run([sys.executable, "-m", "tollgate", *args], cwd=ROOT,
                          capture_output=True, text=True, timeout=timeout, env=full)


def test_cli_export_and_import(cp, cp2, tmp_path):
    exported = export_of(cp)
    out = tmp_path / "assets.json"
    done = tollgate("assets", "--control-plane", cp.url, "--token", ADMIN, "export",
                    "--out", str(out))
    assert done.returncode == 0, done.stderr
    assert "3 apis" in done.stdout
    assert json.loads(out.read_text()) == exported

    done = tollgate("assets", "--control-plane", cp2.url, "import", str(out),
                    env={"TOLLGATE_ADMIN_TOKEN": ADMIN})
    assert done.returncode == 0, done.stderr
    assert "imported: 1 apps" in done.stdout
    assert "channels/lots:" in done.stdout and "[needed to publish]" in done.stdout
    assert "new key:" in done.stdout
    # again: the names exist (exit 1, every one listed), then merged with a prefix
    done = tollgate("assets", "--control-plane", cp2.url, "--token", ADMIN, "import", str(out))
    assert done.returncode == 1 and "apis/free-slots: name: exists already" in done.stderr
    done = tollgate("assets", "--control-plane", cp2.url, "--token", ADMIN, "import", str(out),
                    "--mode", "merge", "--prefix", "b.")
    assert done.returncode == 0, done.stderr
    assert get(cp2, "/v1/apis/b.free-slots")["group"] == "b.parking"
    # no token, a missing file, a control plane that is not there
    done = tollgate("assets", "--control-plane", cp2.url, "export", "--out", str(out))
    assert done.returncode != 0 and "TOLLGATE_ADMIN_TOKEN" in done.stderr
    done = tollgate("assets", "--control-plane", cp2.url, "--token", ADMIN, "import",
                    str(tmp_path / "none.json"))
    assert done.returncode == 1 and "cannot read" in done.stderr
    done = tollgate("assets", "--control-plane", f"http://127.0.0.1:{free_port()}",
                    "--token", ADMIN, "export", "--out", str(out))
    assert done.returncode == 1 and "cannot reach" in done.stderr


def answer(url: str) -> str | None:
    try:
        return httpx.get(url, timeout=5).text
    except httpx.TransportError:
        return None


class Up:
    """``tollgate up`` on free ports, its output collected line by line."""

    def __init__(self, state_dir, extra=()):
        self.ports = {"gw": free_port(), "cp": free_port(), "status": free_port()}
        env = dict(os.environ)
        env.pop("TOLLGATE_ADMIN_TOKEN", None)
        self.proc = subprocess.Popen(
            [sys.executable, "-m", "tollgate", "up", "--state-dir", str(state_dir),
             "--listen", f"127.0.0.1:{self.ports['gw']}",
             "--control-plane-listen", f"127.0.0.1:{self.ports['cp']}",
             "--status-listen", f"127.0.0.1:{self.ports['status']}", *extra],
            cwd=ROOT, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True, env=env)
        self.lines: list[str] = []
        self.reader = threading.Thread(target=self._read, daemon=True)
        self.reader.start()

    def _read(self):
        for line in self.proc.stdout:
            self.lines.append(line)

    @property
    def output(self) -> str:
        return "".join(self.lines)

    def line(self, start: str) -> str:
        return wait_for(lambda: next((ln for ln in self.lines if ln.startswith(start)), None),
                        timeout=30, what=f"a line {start!r}")

    def stop(self) -> int:
        if self.proc.poll() is None:
            self.proc.send_signal(signal.SIGTERM)
            try:
                self.proc.wait(60)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait()
        self.reader.join(10)
        self.proc.stdout.close()
        return self.proc.returncode


def test_tollgate_up_serves_published_apis_prints_the_token_once_and_stops(tmp_path):
    state_dir = tmp_path / "state"
    up = Up(state_dir)
    try:
        token = up.line("tollgate up: admin token (read-write; shown this once").split()[-1]
        up.line("tollgate up: Ctrl-C stops both")
        cp_url = f"http://127.0.0.1:{up.ports['cp']}"
        gw_url = f"http://127.0.0.1:{up.ports['gw']}"
        with httpx.Client(base_url=cp_url, timeout=30,
                          headers={"Authorization": f"Bearer {token}"}) as c:
            ok(c.post("/v1/groups", json={"name": "main"}), 201)
            ok(c.post("/v1/apis", json=mock_api("hello", "/hello", "hi up")), 201)
            ok(c.post("/v1/apis/hello/publish", json={"env": "RELEASE"}), 201)
            wait_for(lambda: answer(gw_url + "/hello") == "hi up", timeout=30,
                     what="the gateway serving the published API")
            gateways = ok(c.get("/v1/gateways"))["items"]
            assert [g["id"] for g in gateways] == ["tollgate-up"]
    finally:
        code = up.stop()
    assert code == 0, up.output
    assert "tollgate up: stopped" in up.output
    for port in up.ports.values():          # both children are gone: nothing listens
        with pytest.raises(httpx.TransportError):
            httpx.get(f"http://127.0.0.1:{port}/", timeout=2)

    # a second start: the token is not printed again, the store and what is published remain
    again = Up(state_dir)
    try:
        again.line("tollgate up: Ctrl-C stops both")
        assert token not in again.output
        assert "not shown again" in again.output
        wait_for(lambda: answer(f"http://127.0.0.1:{again.ports['gw']}/hello") == "hi up",
                 timeout=30,
                 what="the published API served after a restart")
        with httpx.Client(base_url=f"http://127.0.0.1:{again.ports['cp']}", timeout=30,
                          headers={"Authorization": f"Bearer {token}"}) as c:
            tokens = [t["name"] for t in ok(c.get("/v1/tokens"))["items"]]
            assert sorted(tokens) == ["admin", "tollgate-up-gateway"]   # replaced, not added
    finally:
        assert again.stop() == 0, again.output
    assert token not in again.output


def test_tollgate_up_with_a_given_admin_token_and_with_a_taken_port(tmp_path):
    state_dir = tmp_path / "state"
    up = Up(state_dir, extra=("--admin-token", "operator-chosen-token-0001"))
    try:
        up.line("tollgate up: Ctrl-C stops both")
        assert "admin token: the one given" in up.output
        assert "operator-chosen-token-0001" not in up.output
    finally:
        assert up.stop() == 0, up.output
    # a port already taken: up says the control plane did not start, and exits 1
    taken = Up(tmp_path / "other")
    try:
        taken.line("tollgate up: Ctrl-C stops both")
        clash = subprocess.run(
            [sys.executable, "-m", "tollgate", "up", "--state-dir", str(tmp_path / "third"),
             "--control-plane-listen", f"127.0.0.1:{taken.ports['cp']}",
             "--listen", f"127.0.0.1:{free_port()}",
             "--status-listen", f"127.0.0.1:{free_port()}"],
            cwd=ROOT, capture_output=True, text=True, timeout=60)
    finally:
        assert taken.stop() == 0, taken.output
    assert clash.returncode != 0


def test_an_api_served_nowhere_may_use_an_empty_channel_a_served_one_may_not():
    from gateway.config import ConfigError, parse_document

    doc = {"version": 1, "groups": [{"name": "g"}], "channels": [{"name": "c", "port": 80}],
           "apis": [{"name": "a", "group": "g", "method": "GET", "path": "/a",
                     "backend": {"channel": "c", "path": "/"}}]}
    parse_document(json.dumps(doc).encode(), "json")           # an imported API, not published
    doc["apis"][0]["environments"] = {"RELEASE": {}}
    with pytest.raises(ConfigError) as refused:
        parse_document(json.dumps(doc).encode(), "json")
    assert refused.value.errors == ["apis[0].backend.channel: channel 'c' has no members"]

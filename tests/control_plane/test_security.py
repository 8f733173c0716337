"""Admin security details of the control plane over real HTTP (``tollgate control-plane`` in a
subprocess, SQLite): token checks, the keyed audit hashes, secrets masked everywhere (reads,
exports, logs, audit), and the control plane's metrics of publishes and gateways."""
from __future__ import annotations

import asyncio
import hashlib
import hmac
import json
import os
import sqlite3
import stat
import subprocess
import sys

import pytest

from control_plane.auth import AuthError, authenticate, ensure_admin_token, token_hash
from control_plane.kinds import MASK, keep_secrets, mask
from control_plane.store import canonical_json, open_store
from tests.support.control_plane import ControlPlaneProcess, running
from tests.support.gateway import ROOT

from .examples import SECRET_VALUES, rich
from .test_app import stored_body
from .test_publishing import base_doc, follower, mock_api, ok, wait_for

ADMIN = "admin-token-for-security-tests-0123"


def run(coro):
    return asyncio.run(coro)




# ------------------------------------------------------------------------------------- tokens

def _loose_tokens_table(path):
    """Make the tokens table compare hashes case-insensitively (a store whose lookup is looser
    than byte equality): the lookup alone would then accept a row of another hash."""
    db = sqlite3.connect(path)
    with db:
        db.execute("ALTER TABLE tokens RENAME TO tokens_old")
        db.execute("CREATE TABLE tokens (id TEXT PRIMARY KEY, name TEXT NOT NULL UNIQUE, "
                   "role TEXT NOT NULL, hash TEXT NOT NULL UNIQUE COLLATE NOCASE, "
                   "created_at REAL NOT NULL)")
        db.execute("INSERT INTO tokens SELECT * FROM tokens_old")
        db.execute("DROP TABLE tokens_old")
    db.close()


def test_the_stored_hash_of_the_token_found_is_compared_with_the_computed_one(tmp_path):
    url = f"sqlite:///{tmp_path}/cp.db"
    token = "a-token-whose-hash-is-stored-in-upper-case"

    async def main():
        store = await open_store(url)
        await store.close()
        _loose_tokens_table(tmp_path / "cp.db")
        store = await open_store(url)
        try:
            await store.add_token("loose", "read-write", token_hash(token).upper())
            await store.add_token("exact", "read-only", token_hash("an-exact-token"))
            # the lookup finds the row 'loose' (NOCASE) but its hash is not the computed one
            assert (await store.token_by_hash(token_hash(token))).name == "loose"
            with pytest.raises(AuthError) as refused:
                await authenticate(store, f"Bearer {token}")
            assert refused.value.status == 401
            assert (await authenticate(store, "Bearer an-exact-token")).name == "exact"
            # --admin-token: an 'admin' row of a hash that only matches loosely is not taken
            # for the one given: it is replaced by the exact hash
            await store.add_token("admin", "read-write", token_hash("the-admin-token").upper())
            assert await ensure_admin_token(store, "the-admin-token") is None
            found = await store.token_by_hash(token_hash("the-admin-token"))
            assert found.name == "admin" and found.hash == token_hash("the-admin-token")
            assert (await authenticate(store, "Bearer the-admin-token")).role == "read-write"
            # the hash is read for the check only: never part of a listing
            assert all(t.hash == "" for t in await store.tokens())
        finally:
            await store.close()
    run(main())


def test_token_hashes_are_never_in_answers(tmp_path):
    cp = ControlPlaneProcess(tmp_path, admin_token=ADMIN).start()
    try:
        with cp.client(ADMIN) as admin:
            made = ok(admin.post("/v1/tokens", json={"name": "reader", "role": "read-only"}))
            texts = [admin.get("/v1/tokens").text, admin.get("/v1/audit").text]
            for value in (ADMIN, made["token"]):
                assert all(token_hash(value) not in t and value not in t for t in texts)
            assert set(admin.get("/v1/tokens").json()["items"][0]) == {"id", "name", "role",
                                                                        "created_at"}
    finally:
        assert cp.stop() == 0, cp.log()


# -------------------------------------------------------------------------------- audit hashes

def _hmac(key: bytes, body) -> str:
    return hmac.new(key, canonical_json(body).encode(), hashlib.sha256).hexdigest()


def _entries(admin, **match):
    items = admin.get("/v1/audit", params={"limit": 500}).json()["items"]
    return [e for e in items if all(e[k] == v for k, v in match.items())]


def test_audit_hashes_are_keyed_stable_across_a_restart_and_confirm_nothing_without_the_key(
        tmp_path):
    cp = ControlPlaneProcess(tmp_path, admin_token=ADMIN)
    key_file = tmp_path / "cp.db.audit-key"
    guessed = {"name": "weak", "key": "weak-app-key-01", "secret": "password1"}
    cp.start()
    try:
        assert "generated the audit key" in cp.log() and str(key_file) in cp.log()
        assert stat.S_IMODE(key_file.stat().st_mode) == 0o600
        key = key_file.read_text().strip().encode()
        with cp.client(ADMIN) as admin:
            ok(admin.post("/v1/apps", json=guessed))
            body = stored_body(cp, "apps", "weak")
            created = _entries(admin, action="create", name="weak")[0]["after_hash"]
    finally:
        assert cp.stop() == 0, cp.log()
    # a reader of the audit log who guesses the secret cannot confirm it: the hash is not the
    # plain SHA-256 of the body, nor the HMAC of another key; only the key kept outside the
    # store (not in the database file) gives it
    assert created != hashlib.sha256(canonical_json(body).encode()).hexdigest()
    assert created != _hmac(b"another-key-of-sixteen-chars-or-more", body)
    assert created == _hmac(key, body)
    assert key not in (tmp_path / "cp.db").read_bytes()
    # restarted on the same key file (no new key): the same body has the same hash
    log_before = cp.log()
    cp.start()
    try:
        assert cp.log().count("generated the audit key") == log_before.count(
            "generated the audit key")
        with cp.client(ADMIN) as admin:
            assert admin.delete("/v1/apps/weak").status_code == 204
            deleted = _entries(admin, action="delete", name="weak")[0]
            assert deleted["before_hash"] == created
            ok(admin.post("/v1/apps", json=guessed))
            assert _entries(admin, action="create", name="weak")[0]["after_hash"] == created
    finally:
        assert cp.stop() == 0, cp.log()


def test_the_audit_key_from_the_environment_or_a_file_and_bad_keys(tmp_path):
    env_key = "an-audit-key-shared-by-control-planes"
    cp = ControlPlaneProcess(tmp_path / "env", admin_token=ADMIN,
                             env={"TOLLGATE_AUDIT_KEY": env_key})
    (tmp_path / "env").mkdir()
    cp.start()
    try:
        assert "generated the audit key" not in cp.log()
        assert not (tmp_path / "env" / "cp.db.audit-key").exists()
        with cp.client(ADMIN) as admin:
            ok(admin.post("/v1/environments", json={"name": "STAGING"}))
            entry = _entries(admin, action="create", name="STAGING")[0]
        assert entry["after_hash"] == _hmac(env_key.encode(),
                                            stored_body(cp, "environments", "STAGING"))
    finally:
        assert cp.stop() == 0, cp.log()
    # --audit-key-file wins over the environment; a missing file is generated there
    (tmp_path / "file").mkdir()
    key_file = tmp_path / "keys" / "audit.key"
    cp = ControlPlaneProcess(tmp_path / "file", admin_token=ADMIN,
                             env={"TOLLGATE_AUDIT_KEY": env_key})
    cp.args += ["--audit-key-file", str(key_file)]
    cp.start()
    try:
        assert f"generated the audit key {key_file}" in cp.log()
        with cp.client(ADMIN) as admin:
            ok(admin.post("/v1/environments", json={"name": "STAGING"}))
            entry = _entries(admin, action="create", name="STAGING")[0]
        assert entry["after_hash"] == _hmac(key_file.read_text().strip().encode(),
                                            stored_body(cp, "environments", "STAGING"))
    finally:
        assert cp.stop() == 0, cp.log()
    # a key too short, from the file or the environment: refused at start, with the reason
    short = tmp_path / "short.key"
    short.write_text("short\n")
    for extra, env in ((["--audit-key-file", str(short)], {}),
                       ([], {"TOLLGATE_AUDIT_KEY": "short"})):
        out = subprocess.run([sys.executable, "-m", "tollgate", "control-plane", "--store",
                              f"sqlite:///{tmp_path}/refused.db", "--listen", "127.0.0.1:1",
                              *extra], cwd=ROOT, capture_output=True, text=True, timeout=60,
                             env={**os.environ, **env})
        assert out.returncode == 1, out
        assert "at least 16 characters" in out.stderr


# ------------------------------------------------------------------------- secrets everywhere

#: the secrets this module adds to the rich example
MORE_SECRETS = {
    "datasources.url (query)": "ds-query-pw",
    "authorizers.url (query)": "authz-token-qs",
    "authorizers.user_data": "authz-user-data-secret",
}


def secret_document() -> dict:
    raw = rich()
    raw["datasources"].append({"name": "qs", "url": "postgresql://db.example:5432/wh?"
                               "sslmode=require&password=ds-query-pw"})
    raw["authorizers"].append({"name": "keyed", "url": "http://127.0.0.1:9102/check?"
                               "token=authz-token-qs", "user_data": "authz-user-data-secret"})
    return raw


ALL_SECRETS = {**SECRET_VALUES, **MORE_SECRETS}


@pytest.fixture(scope="module")
def secret_cp(tmp_path_factory):
    with running(tmp_path_factory.mktemp("secrets"), admin_token=ADMIN) as proc:
        yield proc


def _leaks(text: str) -> list[str]:
    return [label for label, value in ALL_SECRETS.items() if value in text]


def test_secrets_are_masked_in_reads_exports_audit_and_logs(secret_cp):
    cp = secret_cp
    with cp.client(ADMIN) as admin:
        r = admin.put("/v1/config", json=secret_document())
        assert r.status_code == 200, r.text
        assert _leaks(r.text) == []         # given, not generated: not shown back either
        reads = {"config": admin.get("/v1/config"), "settings": admin.get("/v1/settings"),
                 "assets": admin.get("/v1/assets"),
                 "audit": admin.get("/v1/audit", params={"limit": 500})}
        for kind_name in ("apps", "authorizers", "datasources", "certificates", "devices",
                          "signature_keys"):
            reads[kind_name] = admin.get(f"/v1/{kind_name}", params={"limit": 500})
            for item in reads[kind_name].json()["items"]:
                reads[f"{kind_name}/{item['name']}"] = admin.get(
                    f"/v1/{kind_name}/{item['name']}")
        for label, answer in reads.items():
            assert answer.status_code == 200, (label, answer.text)
            assert _leaks(answer.text) == [], label
        keyed = reads["authorizers/keyed"].json()
        assert keyed["user_data"] == MASK
        assert keyed["url"] == f"http://127.0.0.1:9102/check?token={MASK}"
        assert reads["datasources/qs"].json()["url"] == \
            f"postgresql://db.example:5432/wh?sslmode=require&password={MASK}"
        exported = {a["name"]: a for a in reads["assets"].json()["assets"]["authorizers"]}
        assert exported["keyed"]["user_data"] == "" and "token" not in exported["keyed"]["url"]
        # the asset file imported again (merge): the stored user_data is kept
        r = admin.post("/v1/assets", params={"mode": "merge"}, json=reads["assets"].json())
        assert r.status_code == 200, r.text
        assert _leaks(r.text) == []
        assert stored_body(cp, "authorizers", "keyed")["user_data"] == "authz-user-data-secret"
        # GET /v1/config is masked and reads back through PUT /v1/config: the masks keep the
        # stored secrets
        r = admin.put("/v1/config", json=reads["config"].json())
        assert r.status_code == 200, r.text
        assert stored_body(cp, "authorizers", "keyed")["user_data"] == "authz-user-data-secret"
        assert stored_body(cp, "datasources", "qs")["url"].endswith("password=ds-query-pw")
        assert stored_body(cp, "apps", "parking-app")["secret"] == SECRET_VALUES["apps.secret"]
        # creates and failing writes carrying secrets: the answers and the log show none
        errors = [
            admin.post("/v1/authorizers", json={"name": "keyed", "user_data":
                                                "authz-user-data-secret"}),          # 409
            admin.post("/v1/datasources", json={"name": "bad", "url":
                                                "postgresql://u:s3cr3t-pw@h/db", "x": 1}),
            admin.post("/v1/apps", json={"name": "long", "secret": "ds-query-pw" * 20}),
            admin.post("/v1/devices", content=b'{"name": "d", "password": "device-pw-001"'),
            admin.put("/v1/datasources/qs", json={"name": "qs", "url":
                                                  f"postgresql://h/db?password={MASK}&"
                                                  f"password={MASK}"}),
        ]
        assert [e.status_code for e in errors] == [409, 422, 422, 400, 422]
        for e in errors:
            assert _leaks(e.text) == [], e.text
        made = ok(admin.post("/v1/authorizers", json={
            "name": "made", "url": "http://127.0.0.1:9102/x?api_key=authz-token-qs",
            "user_data": "authz-user-data-secret"}))
        assert made["user_data"] == MASK and made["url"].endswith(f"api_key={MASK}")
        assert _leaks(admin.get("/v1/audit", params={"limit": 500}).text) == []
    assert _leaks(cp.log()) == [], cp.log()


def test_url_secrets_mask_and_restore():
    url = "postgresql://u:pw@h/db?sslmode=require&Password=a&password=b&x=1#frag"
    masked = mask("datasources", {"name": "d", "url": url})["url"]
    assert masked == (f"postgresql://u:{MASK}@h/db?sslmode=require&Password={MASK}&"
                      f"password={MASK}&x=1#frag")
    # sent back masked: each value is the stored one of the same name and rank
    assert keep_secrets("datasources", {"name": "d", "url": masked},
                        {"name": "d", "url": url})["url"] == url
    # a new value replaces; a mask with no stored value behind it is refused
    changed = masked.replace(f"password={MASK}", "password=new", 1)
    assert keep_secrets("datasources", {"name": "d", "url": changed},
                        {"name": "d", "url": url})["url"].endswith("password=new&x=1#frag")
    with pytest.raises(ValueError, match="url"):
        keep_secrets("datasources", {"name": "d", "url": "mysql://h/db?pwd=" + MASK},
                     {"name": "d", "url": "mysql://h/db"})
    # the settings: Redis and JWKS urls, IAM secret keys
    settings = {"version": 1, "redis": {"url": "redis://h:6379/0?password=rp"},
                "iam": {"users": [{"name": "u", "account": "a", "access_key": "AK",
                                   "secret_key": "SK-1"}],
                        "jwt": {"jwks_url": "https://idp/jwks?access_token=tok"}}}
    shown = json.dumps(mask("settings", settings))
    assert "=rp" not in shown and "SK-1" not in shown and "=tok" not in shown
    assert f"access_token={MASK}" in shown and f"password={MASK}" in shown
    # empty user_data is not a secret (nothing to hide, and nothing to keep)
    assert mask("authorizers", {"name": "a", "user_data": ""})["user_data"] == ""


# ------------------------------------------------------------------------------------- metrics

def _metric(text: str, name: str, **labels) -> float | None:
    want = ",".join(f'{k}="{v}"' for k, v in sorted(labels.items()))
    for line in text.splitlines():
        if line.startswith("#"):
            continue
        series, _, value = line.rpartition(" ")
        if series == (f"{name}{{{want}}}" if labels else name):
            return float(value)
    return None


def test_metrics_of_publishes_and_gateways(tmp_path):
    cp = ControlPlaneProcess(tmp_path, admin_token=ADMIN).start()
    gw = None
    try:
        with cp.client(ADMIN) as admin:
            text = admin.get("/metrics").text
            assert _metric(text, "tollgate_control_plane_publish_revision") == 0
            assert _metric(text, "tollgate_control_plane_gateways_connected") == 0
            gateway_token = ok(admin.post("/v1/tokens", json={"name": "gw",
                                                              "role": "gateway"}))["token"]
            gw = follower(cp, gateway_token, tmp_path / "state", tmp_path, name="edge-1",
                          ready=False)
            r = admin.put("/v1/config", json=base_doc(mock_api("hello", "/hello", "hi")))
            assert r.status_code == 200, r.text
            ok(admin.post("/v1/apis/hello/publish", json={"env": "RELEASE"}))
            # a refused publish: an environment that does not exist is no label of its own
            r = admin.post("/v1/apis/hello/publish", json={"env": "no-such-env-xyz"})
            assert r.status_code == 422, r.text
            r = admin.post("/v1/apis/hello/offline", json={"env": "TEST"})
            assert r.status_code == 409, r.text

            def applied():
                text = admin.get("/metrics").text
                return _metric(text, "tollgate_control_plane_gateway_applied_revision",
                               gateway="edge-1") == 1 and text
            text = wait_for(applied, 20.0, "the gateway reporting revision 1")
            assert _metric(text, "tollgate_control_plane_publishes_total", env="RELEASE",
                           result="ok") == 1
            # (TEST exists but was never published: a failure there is "other" too)
            assert _metric(text, "tollgate_control_plane_publishes_total", env="other",
                           result="refused") == 2
            assert _metric(text, "tollgate_control_plane_publishes_total", env="TEST",
                           result="refused") is None
            assert "no-such-env-xyz" not in text
            assert _metric(text, "tollgate_control_plane_publish_revision") == 1
            assert _metric(text, "tollgate_control_plane_gateways_connected") == 1
            assert _metric(text, "tollgate_control_plane_requests_total",
                           route="/v1/apis/{name}/publish", method="POST", status="201") == 1
            assert 'operation="transaction"' in text          # (store latency)
            # a second publish: the revision and the gateway follow
            ok(admin.post("/v1/apis/hello/publish", json={"env": "RELEASE", "note": "again"}))
            wait_for(lambda: _metric(admin.get("/metrics").text,
                                     "tollgate_control_plane_gateway_applied_revision",
                                     gateway="edge-1") == 2, 20.0, "revision 2 applied")
            text = admin.get("/metrics").text
            assert _metric(text, "tollgate_control_plane_publishes_total", env="RELEASE",
                           result="ok") == 2
            assert _metric(text, "tollgate_control_plane_publish_revision") == 2
            # the metrics need an admin token (a gateway token may only follow)
            with cp.client(gateway_token) as gw_client:
                assert gw_client.get("/metrics").status_code == 403
    finally:
        if gw is not None:
            gw.stop()
        assert cp.stop() == 0, cp.log()

"""The authentication benchmark's pieces: the requests it signs, the tokens it mints, the wrk
script that sends them, through a real gateway; then a very short run of the whole thing (the
figures in RESULTS.md are only as good as these)."""
from __future__ import annotations

import shutil
import subprocess
import sys
from urllib.parse import parse_qs, urlsplit

import jwt
import pytest

from benchmarks import auth_bench as ab
from benchmarks import run as harness
from tests.support.gateway import ROOT, GatewayProcess

needs_wrk = pytest.mark.skipif(not shutil.which("wrk"), reason="wrk is not installed")


@pytest.fixture(scope="module")
def rsa_key():
    return ab.make_signing_key()


def test_signed_requests_differ_and_carry_the_sdk_signature():
    gets = ab.signed_requests(3, "127.0.0.1:8080")
    assert [r.target for r in gets] == [f"/signed?id={i}&view=full" for i in range(3)]
    for r in gets:
        assert r.method == "GET" and r.body is None
        assert r.headers["Host"] == "127.0.0.1:8080" and r.headers["X-Sdk-Date"].endswith("Z")
        assert r.headers["Authorization"].startswith(
            f"SDK-HMAC-SHA256 Access={ab.APP_KEY}, SignedHeaders=host;x-sdk-date, Signature=")
    assert len({r.headers["Authorization"] for r in gets}) == 3
    post = ab.signed_requests(2, "127.0.0.1:8080", "POST", "/signed-post")[1]
    assert post.body == ab.json_body(1) and post.headers["Content-Type"] == "application/json"
    assert "SignedHeaders=content-type;host;x-sdk-date," in post.headers["Authorization"]


def test_tokens_have_the_claims_the_gateway_checks(rsa_key):
    tokens = ab.make_tokens(rsa_key, 5)
    claims = [jwt.decode(t, ab.public_pem(rsa_key), algorithms=["RS256"], audience=ab.AUDIENCE,
                         issuer=ab.ISSUER) for t in tokens]
    assert len({c["sub"] for c in claims}) == 5
    for c in claims:
        assert c["exp"] - c["iat"] == 3600 and c["account"]
    assert [r.headers for r in ab.jwt_requests(tokens[:1])] == [{"X-Auth-Token": tokens[0]}]


def test_the_lua_script_escapes_and_chunks():
    assert ab.lua_string('a"b\\c\n\u00e9') == '"a\\"b\\\\c\\010\\195\\169"'
    reqs = ab.plain_requests(1200, "POST")
    script = ab.lua_script(reqs)
    assert script.count(";(function()") == 3        # 500 per function: Lua's constant limits
    assert script.count("  add(") == 1200
    assert 'add("POST", "/json?id=1199&view=full", {["Content-Type"] = "application/json"}, ' \
           '"{\\"order\\":1199,' in script
    with pytest.raises(ValueError):
        ab.lua_script([])


@needs_wrk
def test_wrk_sends_each_signed_request_and_token_through_the_gateway(tmp_path, backend_m, rsa_key):
    """The gateway of the benchmark in front of a backend that records what reaches it: every
    request of each script is accepted, in turn; tampered ones are refused."""
    cmd = harness.tollgate_command()
    conf, jwt_skipped = ab.configure(tmp_path, backend_m.address, cmd, ab.public_pem(rsa_key))
    assert jwt_skipped is None, jwt_skipped     # the gateway serves auth: iam
    gw = GatewayProcess(conf.read_text(), tmp_path).start()
    try:
        n = 1200
        kinds = ["app", "app-post", "none-post", "jwt"]
        tokens = ab.make_tokens(rsa_key, n)
        for name in kinds:
            _label, method, path, kind = ab.TARGETS[name]
            t = ab.AuthTarget(name, None, gw.port, method, path, kind)
            ab.prepare(t, tmp_path, n, tokens)
            ab.check_target(t, ab.make_signing_key(), expect=None)
            backend_m.requests.clear()
            r = harness.run_wrk(f"http://127.0.0.1:{gw.port}/", 1, 1, 4, script=t.script)
            assert r.requests > 100 and r.errors == 0, (name, r.raw)
            seen = [parse_qs(urlsplit(x["target"]).query)["id"][0] for x in backend_m.requests]
            assert len(seen) >= r.requests
            assert len(set(seen)) >= min(n, r.requests) - 10, (name, len(set(seen)), r.requests)
            if method == "POST":
                assert {x["body_length"] for x in backend_m.requests} >= {len(ab.json_body(0))}
    finally:
        gw.stop()


@needs_wrk
@pytest.mark.skipif(not shutil.which("nginx") and not shutil.os.path.exists(harness.NGINX),
                    reason="nginx is not installed")
def test_a_short_run_end_to_end():
    out = subprocess.run([sys.executable, "-m", "benchmarks.auth_bench", "--duration", "1",
                          "--reps", "1", "--warmup", "1", "--requests", "600", "--no-write"],
                         cwd=ROOT, capture_output=True, text=True, timeout=120)
    assert out.returncode == 0, out.stdout[-2000:] + out.stderr[-3000:]
    for label in ("nginx (plain proxy)", "Tollgate, auth: none", "Tollgate, auth: app (signed GET)",
                  "Tollgate, auth: app, signed POST JSON"):
        assert f"| {label} | " in out.stdout, out.stdout
    assert "| Tollgate, JWT (cached) | " in out.stdout, out.stdout
    assert "fastpath.IMPLEMENTATION" in out.stdout and "WARNING" not in out.stdout

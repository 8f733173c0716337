"""https:// backends: verification on by default, per-backend TLS settings, pooled connections.

The backend is the tests' real HTTP backend serving TLS with certificates made by the tests
(tests/support/certs.py); the gateway is the real process.
"""
from __future__ import annotations

import gc
import ssl
import subprocess
import sys

import pytest
import yaml

from tests.conftest import proxy_config
from tests.support.backend import Backend
from tests.support.certs import TestCA
from tests.support.client import exchange

# The test backend runs on asyncio's own loop, which leaves the transport of a handshake it
# refused (the tests provoke several) for the GC to find unclosed: a warning about the test's
# backend, not about the gateway.  Each test collects it before it ends (stop()), under these.
pytestmark = [pytest.mark.filterwarnings("ignore::ResourceWarning"),
              pytest.mark.filterwarnings("ignore::pytest.PytestUnraisableExceptionWarning")]


def stop(backend):
    backend.stop()
    gc.collect()


@pytest.fixture
def ca(tmp_path):
    return TestCA(tmp_path / "pki")


def tls_backend(ca, names=("backend.test",), client_ca=None):
    cert, key = ca.issue("backend", list(names))
    ctx = ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER)
    ctx.load_cert_chain(cert, key)
    if client_ca is not None:
        ctx.verify_mode = ssl.CERT_REQUIRED
        ctx.load_verify_locations(cafile=str(client_ca.path))
    return Backend(ssl_context=ctx).start()


def https_config(backend, tls=None):
    doc = proxy_config(backend.address)
    api = doc["apis"][0]
    api["backend"]["url"] = "https://#backend#/"
    if tls is not None:
        api["backend"]["tls"] = tls
    return doc


def get(gw, target="/echo?t=https"):
    responses, _ = exchange(gw.port, b"GET %s HTTP/1.1\r\nHost: gw.test\r\n\r\n" % target.encode())
    assert len(responses) == 1, responses
    return responses[0]


def test_an_https_backend_verified_with_its_ca_is_served_on_pooled_connections(make_gateway, ca):
    backend = tls_backend(ca)
    try:
        gw = make_gateway(https_config(backend, {"ca_file": str(ca.path),
                                                 "server_name": "backend.test"}))
        for i in range(3):
            r = get(gw, f"/echo?t=https{i}")
            assert r.status == 200, r
            assert r.json()["target"] == f"/echo?t=https{i}"
        assert backend.connections == 1, "the TLS connection to the backend is reused"
    finally:
        stop(backend)


@pytest.mark.parametrize("case", ["unknown-ca", "wrong-name", "system-store"])
def test_a_backend_certificate_that_fails_verification_is_502(make_gateway, ca, tmp_path, case):
    backend = tls_backend(ca)
    other = TestCA(tmp_path / "other", name="Other CA")
    tls = {"unknown-ca": {"ca_file": str(other.path), "server_name": "backend.test"},
           "wrong-name": {"ca_file": str(ca.path), "server_name": "other.test"},
           "system-store": {"server_name": "backend.test"}}[case]
    try:
        gw = make_gateway(https_config(backend, tls))
        r = get(gw)
        assert r.status == 502 and r.json()["error_code"] == "APIC.0202", r
        assert b"CERTIFICATE" not in r.body.upper(), "the reason is for the log, not the client"
        assert "CERTIFICATE_VERIFY_FAILED" in gw.log()
        assert backend.requests == []
    finally:
        stop(backend)


def test_verification_off_serves_an_unknown_certificate(make_gateway, ca, tmp_path):
    backend = tls_backend(TestCA(tmp_path / "self", name="Self Signed"))
    try:
        gw = make_gateway(https_config(backend, {"verify": False}))
        assert get(gw).status == 200
    finally:
        stop(backend)


def test_a_client_certificate_is_presented_to_a_backend_that_requires_one(make_gateway, ca, tmp_path):
    client_ca = TestCA(tmp_path / "clients", name="Client CA")
    backend = tls_backend(ca, client_ca=client_ca)
    cert, key = client_ca.issue("gateway-client", ["gateway.test"])
    try:
        gw = make_gateway(https_config(backend, {"ca_file": str(ca.path), "server_name": "backend.test",
                                                 "client_cert": str(cert), "client_key": str(key)}))
        assert get(gw).status == 200
        bare = make_gateway(https_config(backend, {"ca_file": str(ca.path),
                                                   "server_name": "backend.test"}), name="bare")
        assert get(bare).status == 502
    finally:
        stop(backend)


def test_the_backend_is_told_the_client_used_https_only_when_it_did(make_gateway, ca):
    backend = tls_backend(ca)
    try:
        gw = make_gateway(https_config(backend, {"ca_file": str(ca.path),
                                                 "server_name": "backend.test"}))
        headers = {k.lower(): v for k, v in get(gw).json()["headers"]}
        assert headers["x-forwarded-proto"] == "http"      # the client came over plain HTTP
        assert headers["host"] == backend.address
    finally:
        stop(backend)


def test_bad_backend_tls_files_are_refused_at_load_with_the_field(tmp_path, ca):
    doc = proxy_config("127.0.0.1:9")
    doc["apis"][0]["backend"]["url"] = "https://#backend#/"
    doc["apis"][0]["backend"]["tls"] = {"ca_file": str(tmp_path / "missing.pem")}
    path = tmp_path / "bad.yaml"
    path.write_text(yaml.safe_dump(doc))
    done = subprocess.run([sys.executable, "-m", "tollgate", "validate", str(path)],
                          capture_output=True, text=True, timeout=60)
    assert done.returncode == 1
    assert "apis[0].backend.tls.ca_file: cannot read" in done.stdout, done.stdout
    cert, _ = ca.issue("x", ["x.test"])
    doc["apis"][0]["backend"]["tls"] = {"client_cert": str(cert), "client_key": str(cert)}
    path.write_text(yaml.safe_dump(doc))
    done = subprocess.run([sys.executable, "-m", "tollgate", "validate", str(path)],
                          capture_output=True, text=True, timeout=60)
    assert done.returncode == 1
    assert "apis[0].backend.tls.client_key:" in done.stdout, done.stdout


def test_a_renewed_ca_file_is_read_again_on_sighup_and_pooling_survives_reloads(make_gateway, ca,
                                                                                tmp_path):
    import shutil
    import signal
    import time
    backend = tls_backend(ca)
    other = TestCA(tmp_path / "other", name="Other CA")
    ca_file = tmp_path / "backend-ca.pem"
    shutil.copy(other.path, ca_file)             # the wrong CA first
    try:
        doc = https_config(backend, {"ca_file": str(ca_file), "server_name": "backend.test"})
        gw = make_gateway(doc)
        assert get(gw).status == 502
        shutil.copy(ca.path, ca_file)            # renewed in place
        gw.signal(signal.SIGHUP)
        deadline = time.monotonic() + 10
        while get(gw).status != 200:
            assert time.monotonic() < deadline, "the renewed CA file was not read again"
            time.sleep(0.2)
        # reloads that change nothing of the backend's TLS keep its pooled connection
        opened = backend.connections
        for i in range(3):
            doc["apis"][1]["backend"]["mock"]["body"] = f'{{"mock":{i}}}'
            gw.write_config(doc)
            deadline = time.monotonic() + 10
            while get(gw, "/mock").body != f'{{"mock":{i}}}'.encode():
                assert time.monotonic() < deadline
                time.sleep(0.1)
            assert get(gw).status == 200
        assert backend.connections == opened
    finally:
        stop(backend)

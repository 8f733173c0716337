"""TLS termination on --tls-listen: certificates chosen by SNI, refusals, reloads, bad input.

Certificates are made by the tests (tests/support/certs.py) and the clients are Python's ``ssl``
and curl (installed by .ci/run): real handshakes against the real gateway process.
"""
from __future__ import annotations

import json
import signal
import socket
import ssl
import subprocess
import sys
import time
import warnings

import pytest

from tests.conftest import proxy_config
from tests.support.certs import TestCA
from tests.support.gateway import GatewayProcess, free_port

# (TLS termination (gateway/tls.py, gateway/http/tls_server.py) is Python in either form: CI runs
# this module in the compiled pass only)
pytestmark = pytest.mark.once

ROOT_ARGS = [sys.executable, "-m", "tollgate"]


@pytest.fixture
def ca(tmp_path):
    return TestCA(tmp_path / "pki")


def tls_config(backend_address, certificates):
    doc = proxy_config(backend_address)
    doc["certificates"] = certificates
    return doc


def two_domains(ca, default=True):
    a_cert, a_key = ca.issue("a", ["a.test"])
    b_cert, b_key = ca.issue("b", ["*.b.test"])
    return [{"name": "a", "cert": str(a_cert), "key": str(a_key), "domains": ["a.test"],
             "default": default},
            {"name": "b", "cert": str(b_cert), "key": str(b_key), "domains": ["*.b.test"]}]


def start_tls_gateway(tmp_path, config, **kwargs):
    tls_port = free_port()
    gw = GatewayProcess(config, tmp_path, extra_args=["--tls-listen", f"127.0.0.1:{tls_port}"],
                        **kwargs).start()
    gw.tls_port = tls_port
    return gw


def client_context(ca, **options):
    ctx = ssl.create_default_context(cafile=str(ca.path))
    for name, value in options.items():
        setattr(ctx, name, value)
    return ctx


def tls_request(port, server_name, ctx, request=None, host=None):
    """One request over a new TLS connection: (status, headers dict, body, peer CN, tls)."""
    host = host or server_name or "a.test"
    request = request or f"GET /mock HTTP/1.1\r\nHost: {host}\r\nConnection: close\r\n\r\n".encode()
    with socket.create_connection(("127.0.0.1", port), timeout=10) as raw:
        with ctx.wrap_socket(raw, server_hostname=server_name) as sock:
            cert = sock.getpeercert()
            alpn = sock.selected_alpn_protocol()
            version = sock.version()
            sock.sendall(request)
            data = b""
            while True:
                part = sock.recv(65536)
                if not part:
                    break
                data += part
    head, _, body = data.partition(b"\r\n\r\n")
    lines = head.decode("latin-1").split("\r\n")
    headers = dict(line.split(": ", 1) for line in lines[1:])
    cn = dict(x[0] for x in cert["subject"])["commonName"] if cert else None
    return int(lines[0].split()[1]), headers, body, cn, (version, alpn)


def test_the_certificate_is_chosen_by_sni_exact_and_wildcard(tmp_path, backend, ca):
    gw = start_tls_gateway(tmp_path, tls_config(backend.address, two_domains(ca)))
    try:
        ctx = client_context(ca)
        status, _, body, cn, (version, alpn) = tls_request(gw.tls_port, "a.test", ctx)
        assert (status, body, cn) == (200, b'{"mock":true}', "a.test")
        assert version in ("TLSv1.2", "TLSv1.3") and alpn in (None, "http/1.1")
        assert tls_request(gw.tls_port, "x.b.test", ctx)[3] == "*.b.test"
        assert tls_request(gw.tls_port, "X.B.TEST", ctx)[3] == "*.b.test"   # names fold case
        # a wildcard covers one label: a.x.b.test is not its name, so the default answers
        # (and a client checking the name refuses it)
        lax = client_context(ca, check_hostname=False)
        assert tls_request(gw.tls_port, "a.x.b.test", lax, host="a.test")[3] == "a.test"
        with pytest.raises(ssl.SSLCertVerificationError):
            tls_request(gw.tls_port, "a.x.b.test", ctx)
    finally:
        gw.stop()


def test_a_client_without_sni_gets_the_default_certificate(tmp_path, backend, ca):
    gw = start_tls_gateway(tmp_path, tls_config(backend.address, two_domains(ca)))
    try:
        ctx = client_context(ca, check_hostname=False)
        assert tls_request(gw.tls_port, None, ctx)[3] == "a.test"
    finally:
        gw.stop()


def test_without_a_default_an_unknown_name_is_refused_at_the_handshake(tmp_path, backend, ca):
    gw = start_tls_gateway(tmp_path, tls_config(backend.address, two_domains(ca, default=False)))
    try:
        lax = client_context(ca, check_hostname=False)
        for name in ("other.test", None):
            # (uvloop closes at once, before the alert goes out: the client sees the end)
            with pytest.raises((ssl.SSLError, ConnectionError)):
                tls_request(gw.tls_port, name, lax)
        assert tls_request(gw.tls_port, "a.test", client_context(ca))[0] == 200
        gw.wait_metric("tollgate_tls_handshake_failures_total", 2.0, reason="unknown_server_name")
        assert "handshake" not in gw.log().lower(), "a refused handshake is not logged at info"
    finally:
        gw.stop()


def test_alpn_selects_http_1_1_and_the_backend_is_told_https(tmp_path, backend, ca):
    gw = start_tls_gateway(tmp_path, tls_config(backend.address, two_domains(ca)))
    try:
        ctx = client_context(ca)
        ctx.set_alpn_protocols(["h2", "http/1.1"])
        status, _, body, _, (_, alpn) = tls_request(
            gw.tls_port, "a.test", ctx,
            b"GET /echo?t=tls HTTP/1.1\r\nHost: a.test\r\nConnection: close\r\n\r\n")
        assert status == 200 and alpn == "http/1.1"
        seen = json.loads(body)
        headers = {k.lower(): v for k, v in seen["headers"]}
        assert headers["x-forwarded-proto"] == "https"
        # the plain listener still says http
        plain = socket.create_connection(("127.0.0.1", gw.port), timeout=10)
        plain.sendall(b"GET /echo?t=plain HTTP/1.1\r\nHost: a.test\r\nConnection: close\r\n\r\n")
        data = b""
        while part := plain.recv(65536):
            data += part
        plain.close()
        seen = json.loads(data.partition(b"\r\n\r\n")[2])
        assert {k.lower(): v for k, v in seen["headers"]}["x-forwarded-proto"] == "http"
        gw.wait_metric("tollgate_tls_handshakes_total", 1.0, state="completed")
    finally:
        gw.stop()


def test_tls_1_1_and_plain_http_are_refused_and_counted(tmp_path, backend, ca):
    gw = start_tls_gateway(tmp_path, tls_config(backend.address, two_domains(ca)))
    try:
        with warnings.catch_warnings():     # (Python deprecates these versions too)
            warnings.simplefilter("ignore", DeprecationWarning)
            old = ssl.SSLContext(ssl.PROTOCOL_TLS_CLIENT)
            old.check_hostname = False
            old.verify_mode = ssl.CERT_NONE
            old.minimum_version = ssl.TLSVersion.TLSv1
            old.maximum_version = ssl.TLSVersion.TLSv1_1
            old.set_ciphers("DEFAULT:@SECLEVEL=0")
        with pytest.raises((ssl.SSLError, ConnectionError)):
            tls_request(gw.tls_port, "a.test", old)
        with socket.create_connection(("127.0.0.1", gw.tls_port), timeout=10) as sock:
            sock.sendall(b"GET / HTTP/1.1\r\nHost: a.test\r\n\r\n")
            sock.settimeout(10)
            data = b""
            try:
                while part := sock.recv(65536):
                    data += part
            except ConnectionResetError:
                pass
        assert b"HTTP/1.1" not in data, "a plain request on the TLS port is never answered in clear"
        gw.wait_metric("tollgate_tls_handshake_failures_total", 1.0, reason="protocol_version")
        gw.wait_metric("tollgate_tls_handshake_failures_total", 1.0, reason="not_tls")
    finally:
        gw.stop()


def test_curl_with_cacert(tmp_path, backend, ca):
    gw = start_tls_gateway(tmp_path, tls_config(backend.address, two_domains(ca)))
    try:
        done = subprocess.run(
            ["curl", "-sS", "--cacert", str(ca.path), "--resolve", f"x.b.test:{gw.tls_port}:127.0.0.1",
             f"https://x.b.test:{gw.tls_port}/mock", "-w", " %{http_code}"],
            capture_output=True, text=True, timeout=30)
        assert done.stdout == '{"mock":true} 200', done.stderr
    finally:
        gw.stop()


def test_inline_pem_is_served(tmp_path, backend, ca):
    cert, key = ca.issue("inline", ["inline.test"])
    gw = start_tls_gateway(tmp_path, tls_config(backend.address, [
        {"name": "inline", "cert": cert.read_text(), "key": key.read_text(),
         "domains": ["inline.test"]}]))
    try:
        assert tls_request(gw.tls_port, "inline.test", client_context(ca))[3] == "inline.test"
    finally:
        gw.stop()


def test_a_reload_replaces_the_certificate_and_open_connections_keep_theirs(tmp_path, backend, ca):
    certs = two_domains(ca)
    gw = start_tls_gateway(tmp_path, tls_config(backend.address, certs))
    try:
        ctx = client_context(ca)
        raw = socket.create_connection(("127.0.0.1", gw.tls_port), timeout=10)
        kept = ctx.wrap_socket(raw, server_hostname="a.test")
        first_serial = kept.getpeercert()["serialNumber"]
        ask = b"GET /mock HTTP/1.1\r\nHost: a.test\r\n\r\n"
        kept.sendall(ask)
        assert b"200 OK" in kept.recv(65536)
        ca.issue("a", ["a.test"])                  # renewed in place: same paths
        gw.signal(signal.SIGHUP)
        deadline = time.monotonic() + 10
        while time.monotonic() < deadline:
            serial = tls_request(gw.tls_port, "a.test", ctx, ask.replace(
                b"\r\n\r\n", b"\r\nConnection: close\r\n\r\n"))
            if serial[0] == 200:
                with socket.create_connection(("127.0.0.1", gw.tls_port), timeout=10) as r2:
                    with ctx.wrap_socket(r2, server_hostname="a.test") as s2:
                        if s2.getpeercert()["serialNumber"] != first_serial:
                            break
            time.sleep(0.2)
        else:
            pytest.fail("the renewed certificate was not served after SIGHUP")
        kept.sendall(ask)                          # the connection opened before still works
        assert b"200 OK" in kept.recv(65536)
        assert kept.getpeercert()["serialNumber"] == first_serial
        kept.close()
    finally:
        gw.stop()


def validate(path):
    return subprocess.run([*ROOT_ARGS, "validate", str(path)], capture_output=True, text=True,
                          timeout=60)


def write_doc(tmp_path, certificates):
    import yaml
    path = tmp_path / "tls.yaml"
    path.write_text(yaml.safe_dump(tls_config("127.0.0.1:9", certificates), sort_keys=False))
    return path


def test_bad_certificates_are_refused_at_load_with_the_field(tmp_path, ca):
    a_cert, a_key = ca.issue("a", ["a.test"])
    _, other_key = ca.issue("other", ["other.test"])
    garbage = tmp_path / "garbage.pem"
    garbage.write_text("-----BEGIN CERTIFICATE-----\nnot base64 at all\n-----END CERTIFICATE-----\n")
    reversed_chain = tmp_path / "reversed.pem"
    reversed_chain.write_bytes(ca.path.read_bytes() + a_cert.read_bytes())
    cases = {
        "mismatch": ({"cert": str(a_cert), "key": str(other_key)},
                     "certificates[0].key: does not match the certificate"),
        "unreadable": ({"cert": str(tmp_path / "missing.pem"), "key": str(a_key)},
                       "certificates[0].cert: cannot read"),
        "malformed": ({"cert": str(garbage), "key": str(a_key)},
                      "certificates[0].cert: not a PEM certificate"),
        "key-is-a-cert": ({"cert": str(a_cert), "key": str(a_cert)},
                          "certificates[0].key: not a PEM private key"),
        "chain-out-of-order": ({"cert": str(reversed_chain), "key": str(a_key)},
                               "certificates[0].cert: the certificate of the key must come first"),
    }
    for name, (files, message) in cases.items():
        path = write_doc(tmp_path, [{"name": "a", "domains": ["a.test"], **files}])
        done = validate(path)
        assert done.returncode == 1 and message in done.stdout, (name, done.stdout, done.stderr)
        # and the gateway refuses to start on it, naming the same field
        gw = GatewayProcess(path.read_text(), tmp_path, name=f"bad-{name}",
                            extra_args=["--tls-listen", f"127.0.0.1:{free_port()}"])
        with pytest.raises(RuntimeError) as failed:
            gw.start()
        assert message in str(failed.value), name


def test_an_expired_certificate_is_warned_about_and_its_expiry_exported(tmp_path, backend, ca):
    old_cert, old_key = ca.issue("old", ["old.test"], expired=True)
    soon_cert, soon_key = ca.issue("soon", ["soon.test"], days=5)
    certs = [{"name": "old", "cert": str(old_cert), "key": str(old_key), "domains": ["old.test"]},
             {"name": "soon", "cert": str(soon_cert), "key": str(soon_key), "domains": ["soon.test"]}]
    done = validate(write_doc(tmp_path, certs))
    assert done.returncode == 0, done.stdout
    assert "warning: certificates[0]: certificate 'old' expired on" in done.stdout
    assert "warning: certificates[1]: certificate 'soon' expires on" in done.stdout
    gw = start_tls_gateway(tmp_path, tls_config(backend.address, certs))
    try:
        deadline = time.monotonic() + 5
        while gw.metric("tollgate_certificate_expiry_timestamp_seconds", certificate="soon") == 0:
            assert time.monotonic() < deadline
            time.sleep(0.1)
        expiry = gw.metric("tollgate_certificate_expiry_timestamp_seconds", certificate="soon")
        assert 4 * 86400 < expiry - time.time() < 6 * 86400
        assert gw.metric("tollgate_certificate_expiry_timestamp_seconds", certificate="old") < time.time()
        assert "certificate 'old' expired" in gw.log()
    finally:
        gw.stop()


def test_a_broken_certificate_in_a_reload_keeps_the_old_one_serving(tmp_path, backend, ca):
    certs = two_domains(ca)
    gw = start_tls_gateway(tmp_path, tls_config(backend.address, certs))
    try:
        _, other_key = ca.issue("other", ["other.test"])
        broken = [dict(certs[0], key=str(other_key)), certs[1]]
        gw.write_config(tls_config(backend.address, broken))
        deadline = time.monotonic() + 10
        while "certificates[0].key: does not match" not in gw.log():
            assert time.monotonic() < deadline, gw.log()
            time.sleep(0.1)
        assert tls_request(gw.tls_port, "a.test", client_context(ca))[0] == 200
    finally:
        gw.stop()


def test_a_bad_client_ca_is_refused_at_load(tmp_path, ca):
    a_cert, a_key = ca.issue("a", ["a.test"])
    for value, message in ((str(tmp_path / "missing-ca.pem"), "certificates[0].client_ca: cannot read"),
                           (str(a_key), "certificates[0].client_ca: not a PEM CA certificate")):
        done = validate(write_doc(tmp_path, [{"name": "a", "cert": str(a_cert), "key": str(a_key),
                                              "domains": ["a.test"], "client_ca": value}]))
        assert done.returncode == 1 and message in done.stdout, done.stdout


def test_plain_listener_can_be_off(tmp_path, backend, ca):
    tls_port = free_port()
    gw = GatewayProcess(tls_config(backend.address, two_domains(ca)), tmp_path,
                        extra_args=["--tls-listen", f"127.0.0.1:{tls_port}"])
    gw.args[gw.args.index("--listen") + 1] = "off"
    gw.start()
    try:
        assert tls_request(tls_port, "a.test", client_context(ca))[0] == 200
        with pytest.raises(OSError):
            socket.create_connection(("127.0.0.1", gw.port), timeout=2).close()
    finally:
        gw.stop()


# -- closing, resumption, odd names ------------------------------------------------------------

def worker_fds(gw) -> int:
    import os
    pid = json.loads(gw.status("/readyz")[1])["workers"][0]["pid"]
    return len(os.listdir(f"/proc/{pid}/fd"))


def test_a_tls_connection_the_gateway_closes_is_released_in_seconds(tmp_path, backend, ca):
    """After answering a bad request the gateway closes; a client that never sends its
    close_notify must not hold the socket for long (the TLS shutdown wait is bounded)."""
    gw = start_tls_gateway(tmp_path, tls_config(backend.address, two_domains(ca)))
    held = []
    try:
        ctx = client_context(ca)
        before = worker_fds(gw)
        for _ in range(5):
            raw = socket.create_connection(("127.0.0.1", gw.tls_port), timeout=10)
            sock = ctx.wrap_socket(raw, server_hostname="a.test")
            sock.sendall(b"GET /x HTTP/1.1\r\nHost: a.test\r\nContent-Length: -1\r\n\r\n")
            assert b" 400 " in sock.recv(65536)
            held.append(sock)           # open, and never answering the close_notify
        deadline = time.monotonic() + 8
        while worker_fds(gw) > before + 1:
            assert time.monotonic() < deadline, "closed TLS connections held their sockets"
            time.sleep(0.2)
    finally:
        for sock in held:
            sock.close()
        gw.stop()


def test_a_half_close_over_tls_ends_the_connection_without_a_log_line(tmp_path, backend, ca):
    gw = start_tls_gateway(tmp_path, tls_config(backend.address, two_domains(ca)))
    try:
        raw = socket.create_connection(("127.0.0.1", gw.tls_port), timeout=10)
        sock = client_context(ca).wrap_socket(raw, server_hostname="a.test")
        sock.sendall(b"GET /mock HTTP/1.1\r\nHost: a.test\r\n\r\n")
        assert b"200 OK" in sock.recv(65536)
        sock.shutdown(socket.SHUT_WR)   # a FIN under TLS (no close_notify)
        sock.close()
        time.sleep(0.5)
        assert "eof_received" not in gw.log()
    finally:
        gw.stop()


def test_sessions_are_not_resumed_across_names(tmp_path, backend, ca):
    gw = start_tls_gateway(tmp_path, tls_config(backend.address, two_domains(ca)))
    try:
        ctx = client_context(ca, check_hostname=False)
        for version in (ssl.TLSVersion.TLSv1_2, ssl.TLSVersion.TLSv1_3):
            ctx.maximum_version = version
            with socket.create_connection(("127.0.0.1", gw.tls_port), timeout=10) as raw:
                with ctx.wrap_socket(raw, server_hostname="a.test") as first:
                    first.sendall(b"GET /mock HTTP/1.1\r\nHost: a.test\r\n\r\n")
                    first.recv(65536)           # (TLS 1.3 tickets come after the handshake)
                    session = first.session
            with socket.create_connection(("127.0.0.1", gw.tls_port), timeout=10) as raw:
                with ctx.wrap_socket(raw, server_hostname="x.b.test", session=session) as again:
                    assert not again.session_reused
                    assert dict(x[0] for x in again.getpeercert()["subject"])["commonName"] == "*.b.test"
    finally:
        gw.stop()


def test_a_non_ascii_server_name_is_refused_and_counted_not_logged(tmp_path, backend, ca):
    gw = start_tls_gateway(tmp_path, tls_config(backend.address, two_domains(ca)))
    try:
        for _ in range(3):
            subprocess.run(["openssl", "s_client", "-connect", f"127.0.0.1:{gw.tls_port}",
                            "-servername", "b\xfccher.test", "-brief"], input=b"",
                           capture_output=True, timeout=30)
        gw.wait_metric("tollgate_tls_handshake_failures_total", 3.0, reason="bad_server_name")
        assert "Traceback" not in gw.log() and "UnicodeDecodeError" not in gw.log()
    finally:
        gw.stop()


# -- client certificates (mTLS) ---------------------------------------------------------------

def mtls_setup(tmp_path, ca):
    clients = TestCA(tmp_path / "clients", name="Client CA")
    strangers = TestCA(tmp_path / "strangers", name="Stranger CA")
    certs = two_domains(ca)
    certs[0]["client_ca"] = str(clients.path)      # a.test verifies clients; *.b.test does not
    return certs, clients, strangers


def with_client_cert(ctx, issuer, stem):
    cert, key = issuer.issue(stem, [f"{stem}.client.test"])
    ctx.load_cert_chain(cert, key)
    return ctx


def test_mtls_a_client_certificate_of_the_domains_ca_is_required_and_accepted(tmp_path, backend, ca):
    certs, clients, strangers = mtls_setup(tmp_path, ca)
    gw = start_tls_gateway(tmp_path, tls_config(backend.address, certs))
    try:
        good = with_client_cert(client_context(ca), clients, "alice")
        assert tls_request(gw.tls_port, "a.test", good)[0] == 200
        # no certificate: refused right after the handshake, nothing answered
        with pytest.raises((ssl.SSLError, ConnectionError, ValueError, IndexError)):
            tls_request(gw.tls_port, "a.test", client_context(ca))
        # a certificate of another CA: refused at the handshake
        bad = with_client_cert(client_context(ca), strangers, "mallory")
        with pytest.raises((ssl.SSLError, ConnectionError, ValueError, IndexError)):
            tls_request(gw.tls_port, "a.test", bad)
        # the domain without client_ca serves clients without a certificate
        assert tls_request(gw.tls_port, "x.b.test", client_context(ca))[0] == 200
        gw.wait_metric("tollgate_tls_handshake_failures_total", 2.0, reason="client_certificate")
    finally:
        gw.stop()

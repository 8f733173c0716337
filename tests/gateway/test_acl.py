"""Access control policies (``acls``) and the client address behind trusted proxies, end to end:
the real gateway, a real backend that echoes what reached it, real sockets (IPv4 and IPv6).

Most tests vary the client's address through ``trusted_proxies: [127.0.0.1]`` (the test client is
a trusted proxy, its X-Forwarded-For names the client); the others check that nothing but a
trusted peer can move the address."""
from __future__ import annotations

import json
import socket
import time
from pathlib import Path

import pytest

from tests.conftest import proxy_config
from tests.gateway.test_app_auth import APPS, signed_request
from tests.gateway.test_iam_auth import _pem, token
from tests.support.client import exchange
from tests.support.gateway import GatewayProcess, free_port

# (ACL lookups and the client address (gateway/policy/acl.py, iprules.py, forwarded.py) are Python
# in either form: CI runs this module in the compiled pass only)
pytestmark = pytest.mark.once

CLIENT_IP = {"name": "X-Client-Ip", "location": "header", "origin": "system",
             "value": "$context.sourceIp"}


def acl_config(backend_address, acl=None, binding=None, trusted=None, **api_options):
    """proxy_config with the prefix API's backend telling the backend the client address, one
    ACL bound in RELEASE (``binding`` overrides the bindings), and trusted proxies."""
    doc = proxy_config(backend_address, params=[CLIENT_IP])
    api = doc["apis"][0]
    api.update(api_options)
    if acl is not None:
        doc["acls"] = acl if isinstance(acl, list) else [acl]
        api["environments"] = {"RELEASE": {"acl": doc["acls"][0]["name"]}}
    if binding is not None:
        api["environments"] = binding
    if trusted is not None:
        doc["trusted_proxies"] = trusted
    return doc


def get(port, target="/echo/x", headers=None, host="127.0.0.1"):
    lines = [f"GET {target} HTTP/1.1", "Host: gw.test"]
    lines += [f"{k}: {v}" for k, v in (headers or {}).items()]
    responses, _ = exchange(port, ("\r\n".join(lines) + "\r\n\r\n").encode("latin-1"), host=host,
                            check_close=False)
    assert responses and responses[0].complete, "no complete answer"
    return responses[0]


def from_client(port, client, target="/echo/x"):
    """A request the trusted test client forwards for ``client``."""
    return get(port, target, {"X-Forwarded-For": client})


def header(record, name):
    return [v for k, v in record["headers"] if k.lower() == name.lower()]


def refused(r, code="APIC.0402"):
    return r.status == 403 and r.json()["error_code"] == code


# --------------------------------------------------------------------------------------------------
# IP ACLs

@pytest.mark.parametrize("action, values, served", [
    ("PERMIT", ["127.0.0.1"], True),
    ("PERMIT", ["10.0.0.0/8", "192.0.2.1-192.0.2.9"], False),
    ("DENY", ["127.0.0.0/8"], False),
    ("DENY", ["10.0.0.1", "::1"], True),
])
def test_an_ip_acl_permits_or_denies_the_peer(make_gateway, backend, action, values, served):
    gw = make_gateway(acl_config(backend.address, {"name": "office", "action": action,
                                                   "values": values}))
    r = get(gw.port)
    if served:
        assert r.status == 200, r.body
        assert len(backend.requests) == 1
    else:
        assert refused(r), r.body
        assert r.json()["error_msg"] == "The client address is not allowed to call this API"
        assert backend.requests == []
        gw.wait_metric("tollgate_acl_denials_total", 1, acl="office", entity="ip")
    assert get(gw.port, "/mock").status == 200      # (the API without the ACL: served)


EDGES = {"name": "edges", "action": "PERMIT",
         "values": ["10.0.0.10-10.0.0.20", "192.168.0.0/30", "2001:db8::/127", "172.16.5.5",
                    "fe80::1-fe80::3", "198.51.100.0/24"]}


@pytest.mark.parametrize("client, served", [
    ("10.0.0.9", False), ("10.0.0.10", True), ("10.0.0.20", True), ("10.0.0.21", False),
    ("192.167.255.255", False), ("192.168.0.0", True), ("192.168.0.3", True),
    ("192.168.0.4", False), ("172.16.5.5", True), ("172.16.5.4", False), ("172.16.5.6", False),
    ("2001:db8::", True), ("2001:db8::1", True), ("2001:db8::2", False),
    ("2001:0DB8:0:0::1", True), ("fe80::", False), ("fe80::3", True), ("fe80::4", False),
    ("::ffff:10.0.0.15", True), ("::ffff:10.0.0.21", False), ("198.51.100.255", True),
    ("198.51.101.0", False), ("::a00:f", False),     # (::10.0.0.15 is no IPv4 address)
])
def test_ranges_and_cidrs_to_their_edges(backend_m, client, served, request_gw):
    gw = request_gw(acl_config(backend_m.address, EDGES, trusted=["127.0.0.1"]))
    r = from_client(gw.port, client)
    assert (r.status == 200) == served, (client, r.status, r.body)
    if not served:
        assert refused(r)


@pytest.fixture(scope="module")
def _gateways(tmp_path_factory):
    """Gateways shared by the parametrized cases of a test (one per configuration)."""
    started = {}
    yield started, tmp_path_factory
    for gw in started.values():
        gw.stop()


@pytest.fixture
def request_gw(_gateways):
    started, factory = _gateways

    def make(config):
        key = json.dumps(config, sort_keys=True)
        if key not in started:
            started[key] = GatewayProcess(config, factory.mktemp("acl")).start()
        return started[key]
    return make


def test_a_large_acl_still_answers_exactly(make_gateway, backend):
    # 4096 single addresses (every other one of 10.1.0.0/19) and 1024 IPv6 /64s
    values = [f"10.1.{i // 128}.{(i % 128) * 2}" for i in range(4096)]
    values += [f"2001:db8:{i:x}::/64" for i in range(0, 2048, 2)]
    gw = make_gateway(acl_config(backend.address, {"name": "big", "action": "DENY",
                                                   "values": values}, trusted=["127.0.0.1"]))
    for client, served in [("10.1.0.0", False), ("10.1.0.1", True), ("10.1.17.100", False),
                           ("10.1.17.101", True), ("10.1.31.254", False), ("10.1.31.255", True),
                           ("10.1.32.0", True), ("10.0.255.254", True),
                           ("2001:db8:0::1", False), ("2001:db8:1::1", True),
                           ("2001:db8:7fe:0:ffff:ffff:ffff:ffff", False),
                           ("2001:db8:7fe:1::", True), ("2001:db8:7ff::", True),
                           ("2001:db8:800::", True)]:
        r = from_client(gw.port, client)
        assert (r.status == 200) == served, (client, r.status, r.body)


def test_the_ip_acl_runs_before_authentication_and_before_the_body(make_gateway, backend):
    doc = acl_config(backend.address, {"name": "nobody", "action": "DENY",
                                       "values": ["127.0.0.1"]}, auth="app")
    doc["apps"] = APPS
    doc["apis"][0]["environments"]["RELEASE"]["apps"] = ["shop"]
    gw = make_gateway(doc)
    # no credentials at all: the address is refused first (403, not 401)
    assert refused(get(gw.port))
    # a body announced but never sent: answered without waiting for it
    responses, _ = exchange(gw.port, b"POST /echo/x HTTP/1.1\r\nHost: gw.test\r\n"
                                     b"Content-Length: 100000\r\n\r\npartial", timeout=5)
    assert responses and refused(responses[0])
    assert refused(signed_request(gw.port))
    assert backend.requests == []


def test_an_acl_bound_in_one_environment_only(make_gateway, backend):
    gw = make_gateway(acl_config(backend.address, {"name": "closed", "action": "PERMIT",
                                                   "values": ["10.0.0.1"]},
                                 binding={"RELEASE": {"acl": "closed"}, "TEST": {}}))
    assert refused(get(gw.port))
    r = get(gw.port, headers={"X-Stage": "TEST"})
    assert r.status == 200, r.body


def test_one_policy_serves_every_api_bound_to_it(make_gateway, backend):
    doc = acl_config(backend.address, {"name": "shared", "action": "DENY",
                                       "values": ["127.0.0.1"]})
    doc["apis"][1]["environments"] = {"RELEASE": {"acl": "shared"}, "TEST": {}}
    gw = make_gateway(doc)
    assert refused(get(gw.port)) and refused(get(gw.port, "/mock"))
    assert get(gw.port, "/mock", {"X-Stage": "TEST"}).status == 200
    gw.wait_metric("tollgate_acl_denials_total", 2, acl="shared", entity="ip")


@pytest.fixture
def ipv6_gateway(make_gateway, tmp_path):
    try:
        with socket.socket(socket.AF_INET6) as s:
            s.bind(("::1", 0))
    except OSError:
        pytest.skip("no IPv6 loopback here")

    def make(config):
        port = free_port()
        return make_gateway(config, port=port, extra_args=["--listen", f"[::1]:{port}"])
    return make


@pytest.mark.parametrize("action, values, served", [
    ("PERMIT", ["::1"], True),
    ("PERMIT", ["::/127"], True),
    ("PERMIT", ["127.0.0.1"], False),         # (::1 is not 127.0.0.1)
    ("DENY", ["::1-::5"], False),
    ("DENY", ["127.0.0.0/8", "2001:db8::/32"], True),
])
def test_ip_acls_over_ipv6(ipv6_gateway, backend, action, values, served):
    gw = ipv6_gateway(acl_config(backend.address, {"name": "v6", "action": action,
                                                   "values": values}))
    r = get(gw.port, host="::1")
    assert (r.status == 200) == served, r.body
    if served:
        assert header(backend.requests[-1], "X-Client-Ip") == ["::1"]
        assert header(backend.requests[-1], "X-Forwarded-For") == ["::1"]
    else:
        assert refused(r)


# --------------------------------------------------------------------------------------------------
# Account ACLs

@pytest.fixture(scope="module")
def rsa_key():
    from cryptography.hazmat.primitives.asymmetric import rsa

    return rsa.generate_private_key(public_exponent=65537, key_size=2048)


def iam_acl_config(backend_address, key, action, values):
    doc = acl_config(backend_address, {"name": "accounts", "entity": "account",
                                       "action": action, "values": values}, auth="iam")
    doc["iam"] = {"users": [{"name": "bob", "account": "builders", "access_key": "AK-BOB-0001",
                             "secret_key": "SK-BOB-0001-secret"}],
                  "jwt": {"issuer": "https://iam.test", "audience": "tollgate",
                          "algorithms": ["RS256"], "keys": [_pem(key.public_key())]}}
    return doc


def as_account(port, key, account):
    """A call with a token of user alice in ``account`` (None: a token without an account)."""
    return get(port, headers={"X-Auth-Token": token(key, account=account)})


def test_a_permit_account_acl(make_gateway, backend, rsa_key):
    gw = make_gateway(iam_acl_config(backend.address, rsa_key, "PERMIT", ["acme", "builders"]))
    assert as_account(gw.port, rsa_key, "acme").status == 200
    r = as_account(gw.port, rsa_key, "other")
    assert refused(r, "APIC.0302"), r.body
    assert r.json()["error_msg"] == "The caller's account is not allowed to call this API"
    assert refused(as_account(gw.port, rsa_key, None), "APIC.0302")   # no account: not listed
    assert refused(as_account(gw.port, rsa_key, "ACME"), "APIC.0302")  # (names are exact)
    # an AK/SK-signed IAM user: its account is the user's
    r = signed_request(gw.port, key="AK-BOB-0001", secret="SK-BOB-0001-secret")
    assert r.status == 200, r.body
    # authentication comes first: no credential is 401, not 403
    r = get(gw.port)
    assert (r.status, r.json()["error_code"]) == (401, "APIC.0301")
    assert len(backend.requests) == 2
    gw.wait_metric("tollgate_acl_denials_total", 3, acl="accounts", entity="account")


def test_a_deny_account_acl(make_gateway, backend, rsa_key):
    gw = make_gateway(iam_acl_config(backend.address, rsa_key, "DENY", ["builders"]))
    assert as_account(gw.port, rsa_key, "acme").status == 200
    assert refused(as_account(gw.port, rsa_key, "builders"), "APIC.0302")
    assert as_account(gw.port, rsa_key, None).status == 200     # no account: not listed
    assert refused(signed_request(gw.port, key="AK-BOB-0001", secret="SK-BOB-0001-secret"),
                   "APIC.0302")


def test_an_account_acl_with_an_ip_acl_beside_it_on_another_environment(make_gateway, backend,
                                                                       rsa_key):
    doc = iam_acl_config(backend.address, rsa_key, "PERMIT", ["acme"])
    doc["acls"].append({"name": "lan", "action": "PERMIT", "values": ["10.0.0.0/8"]})
    doc["apis"][0]["environments"] = {"RELEASE": {"acl": "accounts"}, "TEST": {"acl": "lan"}}
    doc["groups"][0]["variables"]["TEST"] = doc["groups"][0]["variables"]["RELEASE"]
    gw = make_gateway(doc)
    assert as_account(gw.port, rsa_key, "acme").status == 200
    r = get(gw.port, headers={"X-Auth-Token": token(rsa_key), "X-Stage": "TEST"})
    assert refused(r, "APIC.0402")


# --------------------------------------------------------------------------------------------------
# Refused at load

@pytest.mark.parametrize("binding, says", [
    ({"RELEASE": {"acl": "nope"}}, "apis[0].environments.RELEASE.acl: unknown acl 'nope'"),
    ({"RELEASE": {}, "TEST": {"acl": "nope"}},
     "apis[0].environments.TEST.acl: unknown acl 'nope'"),
    ({"RELEASE": {"acl": "accounts"}},
     "apis[0].environments.RELEASE.acl: account ACL 'accounts' applies to APIs with auth: iam"),
])
def test_a_bad_binding_is_refused_at_load(make_gateway, backend, binding, says):
    doc = acl_config(backend.address, [{"name": "accounts", "action": "PERMIT",
                                        "entity": "account", "values": ["acme"]}],
                     binding=binding, auth="app")
    doc["apps"] = APPS
    with pytest.raises(RuntimeError) as info:
        make_gateway(doc)
    assert says in str(info.value)


# --------------------------------------------------------------------------------------------------
# The client address: trusted proxies

def test_a_spoofed_header_from_an_untrusted_peer_moves_nothing(make_gateway, backend):
    doc = acl_config(backend.address, {"name": "lan", "action": "PERMIT",
                                       "values": ["10.0.0.0/8"]}, trusted=["10.0.0.0/8", "::1"])
    gw = make_gateway(doc)
    r = from_client(gw.port, "10.0.0.1")
    assert refused(r), r.body
    assert backend.requests == []


@pytest.mark.parametrize("trusted", [None, ["10.0.0.0/8"]])
def test_a_spoofed_header_never_moves_an_apps_client_acl(make_gateway, backend, trusted):
    doc = acl_config(backend.address, trusted=trusted, auth="app")
    doc["apps"] = [dict(APPS[0], acl={"action": "PERMIT", "values": ["10.0.0.1"]})]
    doc["apis"][0]["environments"] = {"RELEASE": {"apps": ["shop"]}}
    gw = make_gateway(doc)
    r = signed_request(gw.port, headers={"X-Forwarded-For": "10.0.0.1"})
    assert refused(r), r.body
    assert "for this app" in r.json()["error_msg"]


def test_a_spoofed_header_is_not_sent_on_nor_is_the_client_address_moved(make_gateway, backend):
    gw = make_gateway(acl_config(backend.address, trusted=["10.0.0.0/8"]))
    r = from_client(gw.port, "10.0.0.1, 198.51.100.1")
    assert r.status == 200, r.body
    record = backend.requests[-1]
    assert header(record, "X-Client-Ip") == ["127.0.0.1"]
    assert header(record, "X-Forwarded-For") == ["127.0.0.1"]


@pytest.fixture
def proxied(make_gateway, backend, tmp_path):
    log = tmp_path / "access.log"
    gw = make_gateway(acl_config(backend.address, trusted=["127.0.0.1", "10.0.0.0/8",
                                                           "2001:db8:1::/48"]),
                      access_log=str(log))
    gw.access_log_path = log
    return gw


@pytest.mark.parametrize("lines, client", [
    (["198.51.100.7"], "198.51.100.7"),
    (["6.6.6.6, 198.51.100.7, 10.0.0.2, 10.9.9.9"], "198.51.100.7"),     # trusted hops skipped
    (["10.0.0.2, 10.0.0.3"], "10.0.0.2"),                                  # all trusted: leftmost
    (["198.51.100.7, not-an-address, 10.0.0.2"], "10.0.0.2"),              # garbage stops the walk
    (["198.51.100.7, 10.0.0.300"], "127.0.0.1"),
    (["198.51.100.7", "10.0.0.2, 10.0.0.3"], "198.51.100.7"),              # several lines, in order
    (["10.0.0.4", "198.51.100.8", "10.0.0.3"], "198.51.100.8"),
    (["2001:db8:2::7, 2001:db8:1::1"], "2001:db8:2::7"),                   # IPv6 entries
    (["[2001:db8:2::8]:443"], "2001:db8:2::8"),
    (["198.51.100.9:8080, ,"], "198.51.100.9"),
])
def test_the_client_behind_trusted_proxies(proxied, backend, lines, client):
    head = b"GET /echo/x HTTP/1.1\r\nHost: gw.test\r\n" + b"".join(
        b"X-Forwarded-For: %s\r\n" % line.encode() for line in lines) + b"\r\n"
    responses, _ = exchange(proxied.port, head)
    assert responses[0].status == 200
    record = backend.requests[-1]
    assert header(record, "X-Client-Ip") == [client]
    # the backend gets the chain as received (empty elements left out), then the peer
    sent = [e.strip() for line in lines for e in line.split(",") if e.strip()]
    assert header(record, "X-Forwarded-For") == [", ".join(sent + ["127.0.0.1"])]
    logged = access_record(proxied, record)
    assert logged["client"] == client
    assert logged.get("peer", "") == ("127.0.0.1" if client != "127.0.0.1" else "")


def access_record(gw, backend_record):
    request_id = header(backend_record, "X-Request-Id")[0]
    deadline = time.monotonic() + 5     # (the access log is written on the worker's tick)
    while time.monotonic() < deadline:
        for line in Path(gw.access_log_path).read_text().splitlines():
            record = json.loads(line)
            if record["request_id"] == request_id:
                return record
        time.sleep(0.1)
    raise AssertionError(f"request {request_id} not in the access log")


def test_a_reload_changes_the_trusted_proxies(make_gateway, backend):
    acl = {"name": "lan", "action": "PERMIT", "values": ["10.0.0.0/8"]}
    gw = make_gateway(acl_config(backend.address, acl, trusted=["127.0.0.1"]))
    assert from_client(gw.port, "10.1.2.3").status == 200
    assert header(backend.requests[-1], "X-Client-Ip") == ["10.1.2.3"]
    gw.write_config(acl_config(backend.address, acl, trusted=["192.0.2.0/24"]))
    deadline = time.monotonic() + 10
    while time.monotonic() < deadline and from_client(gw.port, "10.1.2.3").status == 200:
        time.sleep(0.1)
    assert refused(from_client(gw.port, "10.1.2.3"))     # the test client is no longer trusted
    gw.write_config(acl_config(backend.address))          # no trusted proxies, no ACL
    deadline = time.monotonic() + 10
    while time.monotonic() < deadline and from_client(gw.port, "10.1.2.3").status != 200:
        time.sleep(0.1)
    assert from_client(gw.port, "10.1.2.3").status == 200
    assert header(backend.requests[-1], "X-Client-Ip") == ["127.0.0.1"]
    assert header(backend.requests[-1], "X-Forwarded-For") == ["127.0.0.1"]

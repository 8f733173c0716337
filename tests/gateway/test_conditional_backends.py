"""Conditional backends (canary, grayscale) through the real gateway: which backend serves a
call, by the client address, a request parameter, a system value and a percentage split."""
from __future__ import annotations

from collections import Counter

import pytest

from tests.support.backend import Backend
from tests.support.client import request

APP = {"name": "canary-app", "key": "canary-app-key-0001", "secret": "canary-app-secret-0001"}


@pytest.fixture(scope="module")
def stable_and_canary():
    stable, canary, pool = Backend().start(), Backend().start(), Backend().start()
    yield stable, canary, pool
    for b in (stable, canary, pool):
        b.stop()


def _api(name, path, conditional, stable, params=(), **fields):
    return {"name": name, "group": "g", "method": "GET", "path": path, "params": list(params),
            "backend": {"url": f"http://{stable.address}{path}"},
            "conditional_backends": conditional, "environments": {"RELEASE": {}, "TEST": {}},
            **fields}


def _to(b, path="/"):
    return {"url": f"http://{b.address}{path}"}


@pytest.fixture(scope="module")
def gw(make_gateway_m, stable_and_canary):
    stable, canary, pool = stable_and_canary
    apis = [
        _api("by-ip", "/ip", [{"name": "office", "conditions": [
            {"source": "source_ip", "op": "cidr", "value": "127.0.0.64/26"}],
            "backend": _to(canary, "/office")}], stable),
        _api("by-header", "/header", [{"name": "beta", "conditions": [
            {"source": "param", "name": "X-Beta", "op": "enum", "value": ["1", "yes"]}],
            "backend": _to(canary, "/beta")}], stable,
            params=[{"name": "X-Beta", "location": "header", "type": "string"}]),
        _api("by-query", "/query/{item}", [
            {"name": "pattern", "conditions": [
                {"source": "param", "name": "user", "op": "pattern", "value": "tester-[0-9]+"}],
             "backend": _to(canary, "/pattern")},
            {"name": "path-param", "conditions": [
                {"source": "param", "name": "item", "op": "equal", "value": "special"}],
             "backend": _to(canary, "/special")}], stable),
        _api("by-default", "/default", [{"name": "dflt", "conditions": [
            {"source": "param", "name": "mode", "op": "equal", "value": "fast"}],
            "backend": _to(canary, "/fast")}], stable,
            params=[{"name": "mode", "location": "query", "type": "string", "default": "fast"}]),
        _api("by-stage", "/stage", [{"name": "test-env", "conditions": [
            {"source": "system", "name": "$context.stage", "op": "equal", "value": "TEST"}],
            "backend": _to(canary, "/test-env")}], stable),
        _api("split", "/split", [{"name": "tenth", "conditions": [
            {"source": "param", "name": "X-Split", "op": "equal", "value": "on"}],
            "percentage": 10, "backend": _to(canary, "/tenth")},
            {"name": "rest", "conditions": [
                {"source": "param", "name": "X-Split", "op": "equal", "value": "on"}],
             "percentage": 50, "backend": {"channel": "pool", "path": "/rest"}}], stable),
        _api("all-conditions", "/both", [{"name": "both", "conditions": [
            {"source": "param", "name": "X-A", "op": "equal", "value": "1"},
            {"source": "param", "name": "X-B", "op": "equal", "value": "1"}],
            "backend": {"type": "mock", "mock": {"status": 200, "body": "both"}}}], stable),
    ]
    document = {"version": 1, "environments": [{"name": "TEST"}], "groups": [{"name": "g"}],
                "channels": [{"name": "pool", "port": pool.port,
                              "members": [{"host": "127.0.0.1"}]}],
                "apis": apis}
    return make_gateway_m(document)


def served(gw, path, n=1, **kwargs):
    seen = Counter()
    for _ in range(n):
        r = request(gw.port, "GET", path, **kwargs)
        assert r.status == 200, (r.status, r.body)
        seen[r.body if r.header("x-backend") is None else
             (int(r.header("x-backend")), r.json()["target"].split("?")[0])] += 1
    return seen


def test_the_client_address(gw, stable_and_canary):
    stable, canary, _ = stable_and_canary
    assert served(gw, "/ip", source="127.0.0.70") == {(canary.port, "/office"): 1}
    assert served(gw, "/ip", source="127.0.0.10") == {(stable.port, "/ip"): 1}


def test_a_spoofed_forwarded_for_does_not_choose_the_backend(gw, stable_and_canary):
    stable, _, _ = stable_and_canary
    # no trusted_proxies: the header is the client's word, not its address
    assert served(gw, "/ip", source="127.0.0.10", headers={"X-Forwarded-For": "127.0.0.70"}) \
        == {(stable.port, "/ip"): 1}


def test_a_header_parameter_in_a_list(gw, stable_and_canary):
    stable, canary, _ = stable_and_canary
    assert served(gw, "/header", headers={"X-Beta": "yes"}) == {(canary.port, "/beta"): 1}
    assert served(gw, "/header", headers={"X-Beta": "no"}) == {(stable.port, "/header"): 1}
    assert served(gw, "/header") == {(stable.port, "/header"): 1}       # absent: no match


def test_a_pattern_matches_the_whole_value_and_path_parameters_count(gw, stable_and_canary):
    stable, canary, _ = stable_and_canary
    assert served(gw, "/query/a?user=tester-42") == {(canary.port, "/pattern"): 1}
    assert served(gw, "/query/a?user=tester-42x") == {(stable.port, "/query/a"): 1}
    assert served(gw, "/query/a?user=tester-%34%32") == {(canary.port, "/pattern"): 1}
    assert served(gw, "/query/special") == {(canary.port, "/special"): 1}
    assert served(gw, "/query/a") == {(stable.port, "/query/a"): 1}


def test_a_parameter_default_is_matched(gw, stable_and_canary):
    stable, canary, _ = stable_and_canary
    assert served(gw, "/default") == {(canary.port, "/fast"): 1}
    assert served(gw, "/default?mode=slow") == {(stable.port, "/default"): 1}


def test_a_system_value(gw, stable_and_canary):
    stable, canary, _ = stable_and_canary
    assert served(gw, "/stage", headers={"X-Stage": "TEST"}) == {(canary.port, "/test-env"): 1}
    assert served(gw, "/stage") == {(stable.port, "/stage"): 1}


def test_percentages_split_exactly_and_fall_through(gw, stable_and_canary):
    stable, canary, pool = stable_and_canary
    got = served(gw, "/split", 100, headers={"X-Split": "on"})
    # 10 % to the first; of the 90 others, 50 % to the channel; the rest to the default
    assert got == {(canary.port, "/tenth"): 10, (pool.port, "/rest"): 45,
                   (stable.port, "/split"): 45}
    assert served(gw, "/split", 5) == {(stable.port, "/split"): 5}


def test_every_condition_must_hold(gw, stable_and_canary):
    stable, _, _ = stable_and_canary
    assert served(gw, "/both", headers={"X-A": "1", "X-B": "1"}) == {b"both": 1}
    assert served(gw, "/both", headers={"X-A": "1"}) == {(stable.port, "/both"): 1}
    gw.wait_metric("tollgate_conditional_backend_calls_total", 1, api="all-conditions",
                   env="RELEASE", backend="both")

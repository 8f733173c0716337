"""Shared fixtures: a real backend, the real gateway process, free ports."""
from __future__ import annotations

import os

import pytest
from hypothesis import settings

from tests.support.backend import Backend
from tests.support.gateway import GatewayProcess
from tests.support.raw_backend import RawBackend
from tests.support.redis_server import RedisServer


# Property tests run the same examples on every run (a suite that passes passes again: CI
# must not fail on a case drawn for the first time); TOLLGATE_HYPOTHESIS=explore draws new
# ones, to hunt for cases (then add each found to the tests as an explicit example).
settings.register_profile("reproducible", derandomize=True)
settings.register_profile("explore", derandomize=False)
settings.load_profile(os.environ.get("TOLLGATE_HYPOTHESIS", "reproducible"))


@pytest.fixture
def backend():
    b = Backend().start()
    yield b
    b.stop()


@pytest.fixture(scope="module")
def backend_m():
    """One real backend shared by the tests of a module (cheaper than one per test)."""
    b = Backend().start()
    yield b
    b.stop()


@pytest.fixture
def raw():
    """Start raw-socket backends with ``raw(script)`` (tests.support.raw_backend); a script
    that failed an assertion fails the test."""
    started = []

    def start(script):
        b = RawBackend(script).start()
        started.append(b)
        return b

    yield start
    for b in started:
        b.stop()
        assert not b.errors, b.errors


@pytest.fixture(scope="module")
def make_gateway_m(tmp_path_factory):
    """``make_gateway`` for gateways a module's tests share (starting one per test is slow)."""
    started = []

    def make(config, **kwargs):
        gw = GatewayProcess(config, tmp_path_factory.mktemp("gateway"), **kwargs)
        started.append(gw)
        return gw.start()

    yield make
    for gw in started:
        gw.stop()


@pytest.fixture
def fresh_backend_m(backend_m):
    """The module's backend, its record of requests emptied for this test."""
    backend_m.requests.clear()
    return backend_m


@pytest.fixture
def redis_server():
    """A real redis-server on a free port, for one test (kill, pause, resume, restart it)."""
    r = RedisServer().start()
    yield r
    r.stop()


@pytest.fixture(scope="module")
def redis_server_m():
    """One real redis-server shared by the tests of a module (flush it between tests if needed)."""
    r = RedisServer().start()
    yield r
    r.stop()


@pytest.fixture
def make_gateway(tmp_path):
    """Start gateways with ``make_gateway(config_dict, workers=1, access_log=None)``."""
    started = []

    def make(config, **kwargs):
        gw = GatewayProcess(config, tmp_path, **kwargs)
        started.append(gw)
        return gw.start()

    yield make
    for gw in started:
        gw.stop()


def proxy_config(backend_address: str, **backend_options) -> dict:
    """A document with a prefix API '/' to the backend and a mock API '/mock'."""
    return {
        "version": 1,
        "environments": [{"name": "TEST"}],
        "groups": [{"name": "main", "variables": {"RELEASE": {"backend": backend_address},
                                                   "TEST": {"backend": backend_address}}}],
        "apis": [
            {"name": "all", "group": "main", "method": "ANY", "path": "/", "match_mode": "prefix",
             "backend": {"type": "http", "url": "http://#backend#/", **backend_options},
             "environments": {"RELEASE": {}}},
            {"name": "mock", "group": "main", "method": "GET", "path": "/mock",
             "backend": {"type": "mock", "mock": {"status": 200, "headers": {"Content-Type": "application/json"},
                                                   "body": '{"mock":true}'}},
             "environments": {"RELEASE": {}, "TEST": {}}},
        ],
    }

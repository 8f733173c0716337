"""The workers' metric pushes carry only what changed since the previous push; the master keeps
each worker's totals.  /metrics must stay exact: traffic on many APIs across two workers, a
worker killed (its counts kept, not counted twice), workers stopped right after traffic (their
last push counted once), a reload that removes an API and one that brings it back."""
from __future__ import annotations

import http.client
import json
import os
import signal
import time

import pytest

from tests.support.gateway import GatewayProcess

# (compiled pass only: 30 s of traffic over many APIs; the interpreted form's pushes are
# checked end to end by test_observability's totals in the interpreted pass)
pytestmark = pytest.mark.once

N_APIS = 40
REQ = "tollgate_requests_total"


def many_mock_apis(n=N_APIS, skip=()):
    """n mock APIs /m<i>; every fifth answers 503, every fourth is in TEST too."""
    apis = []
    for i in range(n):
        if i in skip:
            continue
        envs = {"RELEASE": {}, "TEST": {}} if i % 4 == 0 else {"RELEASE": {}}
        apis.append({"name": f"api-{i}", "group": "g", "method": "GET", "path": f"/m{i}",
                     "backend": {"type": "mock", "mock": {"status": 503 if i % 5 == 0 else 200,
                                                          "body": f"m{i}"}},
                     "environments": envs})
    return {"version": 1, "environments": [{"name": "TEST"}], "groups": [{"name": "g"}],
            "apis": apis}


class Counts:
    """What the test sent: (api, env, status class) -> requests answered."""

    def __init__(self):
        self.by = {}
        self.workers = set()

    def send(self, gw, i, env="RELEASE", times=1, expect=None):
        """``times`` requests to /m<i> in ``env``, each on a new connection (the kernel spreads
        new connections over the workers)."""
        headers = {"X-Stage": env} if env != "RELEASE" else {}
        status = expect or (503 if i % 5 == 0 else 200)
        for _ in range(times):
            c = http.client.HTTPConnection("127.0.0.1", gw.port, timeout=10)
            try:
                c.request("GET", f"/m{i}", headers=headers)
                r = c.getresponse()
                r.read()
            finally:
                c.close()
            assert r.status == status, (i, env, r.status)
            self.workers.add(r.getheader("X-Request-Id")[:16])     # per-process prefix
            key = (f"api-{i}", env, f"{status // 100}xx") if expect is None else \
                ("", "", f"{status // 100}xx")
            self.by[key] = self.by.get(key, 0) + 1

    def round(self, gw, apis, times=lambda i: 1 + i % 3):
        for i in apis:
            self.send(gw, i, times=times(i))
            if i % 4 == 0:
                self.send(gw, i, env="TEST")


def scrape(gw) -> dict:
    from prometheus_client.parser import text_string_to_metric_families
    status, body = gw.status("/metrics")
    assert status == 200
    return {(s.name, tuple(sorted(s.labels.items()))): s.value
            for family in text_string_to_metric_families(body.decode()) for s in family.samples}


def requests_of(m) -> dict:
    """(api, env, status) -> tollgate_requests_total, and the request duration counts."""
    got, durations = {}, {}
    for (name, labels), v in m.items():
        d = dict(labels)
        if name == REQ:
            got[(d["api"], d["env"], d["status"])] = v
        elif name == "tollgate_request_duration_seconds_count":
            durations[(d["api"], d["env"])] = v
    return got, durations


def wait_exact(gw, counts, timeout=15.0):
    """Poll /metrics (bounded: pushes are every 0.5 s) until its request totals are exactly what
    was sent; then they must stay so over the next pushes (nothing counted twice later)."""
    expected_durations = {}
    for (api, env, _status), n in counts.by.items():
        expected_durations[(api, env)] = expected_durations.get((api, env), 0) + n
    deadline = time.monotonic() + timeout
    got = None
    while time.monotonic() < deadline:
        m = scrape(gw)
        got, durations = requests_of(m)
        if got == counts.by:
            assert durations == expected_durations
            break
        time.sleep(0.1)
    else:
        raise AssertionError(f"/metrics request totals {got} != sent {counts.by}")
    for _ in range(3):                           # a few more pushes: still exact
        time.sleep(0.6)
        assert requests_of(scrape(gw))[0] == counts.by
    return m


def readyz(gw):
    status, body = gw.status("/readyz")
    return status, json.loads(body)


def wait_workers(gw, gone, timeout=30.0):
    """Until /readyz is 200 with two ready workers, none of them in ``gone``."""
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        code, ready = readyz(gw)
        pids = [w["pid"] for w in ready["workers"]]
        if code == 200 and len(pids) == 2 and not set(pids) & set(gone):
            return pids
        time.sleep(0.1)
    raise AssertionError(f"workers {gone} not replaced: {ready}")


def test_totals_exact_over_many_apis_and_two_workers(make_gateway):
    gw = make_gateway(many_mock_apis(), workers=2)
    counts = Counts()
    # rounds on overlapping subsets, each pushed before the next: a push carries only the
    # pairs that changed, and the master must keep the totals of the others
    counts.round(gw, range(N_APIS))
    wait_exact(gw, counts)
    counts.round(gw, range(0, N_APIS, 3), times=lambda i: 2)
    counts.send(gw, 1, env="TEST", expect=404)       # no API in TEST: counted under no API
    m = wait_exact(gw, counts)
    assert len(counts.workers) == 2, "only one worker answered: the test needs both"
    assert m[("tollgate_workers", ())] == 2
    assert m[(REQ, (("api", "api-5"), ("env", "RELEASE"), ("status", "5xx")))] == 3
    assert m[("tollgate_errors_total", (("code", "APIC.0101"),))] == 1
    # an API without traffic has no sample (as with full pushes)
    idle = many_mock_apis(N_APIS + 1)
    gw.write_config(idle)
    gw.signal(signal.SIGHUP)
    deadline = time.monotonic() + 15
    while time.monotonic() < deadline and scrape(gw).get(
            ("tollgate_config_reloads_total", (("result", "ok"),))) != 1:
        time.sleep(0.1)
    m = wait_exact(gw, counts)
    assert not [k for k in m if dict(k[1]).get("api") == f"api-{N_APIS}"]


def test_killed_and_stopped_workers_keep_their_counts_once(make_gateway):
    gw = make_gateway(many_mock_apis(), workers=2)
    counts = Counts()
    counts.round(gw, range(N_APIS))
    wait_exact(gw, counts)
    assert len(counts.workers) == 2
    # SIGKILL: what the worker pushed stays counted (its totals are the master's)
    _, ready = readyz(gw)
    first = [w["pid"] for w in ready["workers"]]
    os.kill(first[0], signal.SIGKILL)
    pids = wait_workers(gw, [first[0]])
    m = wait_exact(gw, counts)
    assert m[("tollgate_workers", ())] == 2
    # traffic, then both workers stopped at once: each one's last push (sent as it exits) is
    # read before it is retired, and counted once
    counts.round(gw, range(0, N_APIS, 2), times=lambda i: 1)
    for pid in pids:
        os.kill(pid, signal.SIGTERM)
    wait_workers(gw, pids)
    wait_exact(gw, counts)
    # the new workers count on top
    counts.round(gw, range(1, N_APIS, 4))
    m = wait_exact(gw, counts)
    assert m[("tollgate_workers", ())] == 2


def test_reload_that_removes_an_api_keeps_its_totals(make_gateway):
    gw = make_gateway(many_mock_apis(), workers=2)
    counts = Counts()
    counts.round(gw, range(N_APIS))
    wait_exact(gw, counts)
    version = readyz(gw)[1]["config_version"]
    removed = (0, 1, 2, 3)

    def reload_to(config, old):
        gw.write_config(config)
        gw.signal(signal.SIGHUP)
        deadline = time.monotonic() + 20
        while time.monotonic() < deadline:
            code, ready = readyz(gw)
            if ready["config_version"] != old and code == 200 and all(
                    w["config_version"] == ready["config_version"] for w in ready["workers"]):
                return ready["config_version"]
            time.sleep(0.1)
        raise AssertionError(f"reload not live: {ready}")

    version = reload_to(many_mock_apis(skip=removed), version)
    # the removed APIs answer 404 now (counted under no API); their totals stay
    for i in removed:
        counts.send(gw, i, expect=404, times=2)
    counts.round(gw, range(4, N_APIS, 5))
    wait_exact(gw, counts)
    # brought back, an API counts on from its totals
    reload_to(many_mock_apis(), version)
    counts.round(gw, removed)
    m = wait_exact(gw, counts)
    assert m[(REQ, (("api", "api-1"), ("env", "RELEASE"), ("status", "2xx")))] == 2 + 2
    assert m[("tollgate_config_reloads_total", (("result", "ok"),))] == 2


def test_auth_failures_pushed_as_they_change(make_gateway):
    """Labelled counters (auth failures here) are pushed as changed rows too: their totals stay
    exact over pushes that do not carry them, across two workers."""
    doc = many_mock_apis(10)
    doc["apps"] = [{"name": "shop", "key": "shop-key-0001", "secret": "shop-secret-0001"}]
    for api in doc["apis"]:
        api["auth"] = "app"
        api["environments"] = {"RELEASE": {"apps": ["shop"]}}
    gw = make_gateway(doc, workers=2)
    sent = {}
    workers = set()

    def refused(i, times):
        for _ in range(times):
            c = http.client.HTTPConnection("127.0.0.1", gw.port, timeout=10)
            try:
                c.request("GET", f"/m{i}")             # no credentials
                r = c.getresponse()
                r.read()
            finally:
                c.close()
            assert r.status == 401, r.status
            workers.add(r.getheader("X-Request-Id")[:16])
            sent[f"api-{i}"] = sent.get(f"api-{i}", 0) + 1

    def wait_auth_exact():
        deadline = time.monotonic() + 15
        got = None
        while time.monotonic() < deadline:
            got = {dict(k[1])["api"]: v for k, v in scrape(gw).items()
                   if k[0] == "tollgate_auth_failures_total"
                   and dict(k[1])["reason"] == "missing"}
            if got == sent:
                break
            time.sleep(0.1)
        else:
            raise AssertionError(f"auth failures {got} != sent {sent}")
        time.sleep(1.2)                                 # more pushes without them: kept
        assert {dict(k[1])["api"]: v for k, v in scrape(gw).items()
                if k[0] == "tollgate_auth_failures_total"} == sent

    for i in range(10):
        refused(i, 1 + i % 3)
    wait_auth_exact()
    for i in (2, 5):
        refused(i, 4)
    wait_auth_exact()
    assert len(workers) == 2, "only one worker answered: the test needs both"

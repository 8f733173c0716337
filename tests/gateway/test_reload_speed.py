"""The fast reload path: a compile reuses the CompiledApi of the APIs a reload did not change
(the router is built anew), the workers take the bytes their master validated without
validating them again, and the backend url checks made cheap keep every error they gave.

In-process tests compile real documents (both forms: the snapshot builds compiled objects);
the last ones run the real gateway, a real backend per address, and reload it with SIGHUP.
"""
from __future__ import annotations

import copy
import http.client
import json
import re
import signal
import time

import msgspec
import pytest

from gateway.config import ConfigError, Document, load_document, parse_document
from gateway.snapshot import compile_snapshot
from tests.support.backend import Backend


def document(n=3, url="http://#backend#/items/{id}", **extra) -> dict:
    doc = {"version": 1, "environments": [{"name": "TEST"}],
           "groups": [{"name": "g", "variables": {"RELEASE": {"backend": "127.0.0.1:9001"},
                                                   "TEST": {"backend": "127.0.0.1:9002"}}}],
           "apis": [{"name": f"api-{i}", "group": "g", "method": "GET",
                     "path": f"/svc{i}/items/{{id}}", "backend": {"url": url},
                     "environments": {"RELEASE": {}, "TEST": {}}} for i in range(n)]}
    doc.update(extra)
    return doc


def compiled(doc: dict, previous=None):
    return compile_snapshot(msgspec.convert(doc, Document), previous=previous)


def matched(snapshot, env, path):
    found = snapshot.router.match(env, "", "GET", path)
    return found[0] if found is not None else None


# -- reuse -------------------------------------------------------------------------------------

def test_a_reload_reuses_the_unchanged_apis_and_rebuilds_the_changed_one():
    before = compiled(document())
    changed = document()
    changed["apis"][1]["backend"]["url"] = "http://#backend#/v2/items/{id}"
    after = compiled(changed, previous=before)
    assert after.reused == 4                         # 2 APIs x 2 environments
    for env in ("RELEASE", "TEST"):
        for name in ("api-0", "api-2"):
            assert after.apis[(name, env)] is before.apis[(name, env)]
        assert after.apis[("api-1", env)] is not before.apis[("api-1", env)]
        assert after.apis[("api-1", env)].fingerprint != before.apis[("api-1", env)].fingerprint
        assert after.apis[("api-1", env)].handler.path_parts == ["/v2/items/", "id", ""]
        # the router is new, and routes every API to the new snapshot's CompiledApi
        assert after.router is not before.router
        for i in range(3):
            assert matched(after, env, f"/svc{i}/items/7") is after.apis[(f"api-{i}", env)]
    assert after.router.frozen


def test_an_api_added_or_removed_by_a_reload_is_routed_or_not():
    before = compiled(document(3))
    after = compiled(document(2), previous=before)
    assert after.reused == 4
    assert matched(after, "RELEASE", "/svc2/items/7") is None
    again = compiled(document(4), previous=after)
    assert again.reused == 4
    assert matched(again, "RELEASE", "/svc3/items/7") is again.apis[("api-3", "RELEASE")]


def test_a_changed_group_variable_rebuilds_the_apis_of_the_group():
    before = compiled(document())
    changed = document()
    changed["groups"][0]["variables"]["TEST"]["backend"] = "127.0.0.1:9003"
    after = compiled(changed, previous=before)
    assert after.reused == 0
    assert after.apis[("api-0", "TEST")].handler.key[:2] == ("127.0.0.1", 9003)


def test_nothing_is_reused_when_the_rest_of_the_document_changed():
    before = compiled(document())
    after = compiled(document(apps=[{"name": "new-app"}]), previous=before)
    assert after.reused == 0
    assert all(after.apis[k] is not before.apis[k] for k in after.apis)


def test_a_policy_an_api_is_bound_to_that_changes_rebuilds_it():
    doc = document(throttles=[{"name": "t", "api_limit": 10}])
    doc["apis"][0]["environments"]["RELEASE"]["throttle"] = "t"
    before = compiled(doc)
    changed = copy.deepcopy(doc)
    changed["throttles"][0]["api_limit"] = 20
    assert compiled(changed, previous=before).reused == 0


def test_https_backends_are_always_rebuilt():
    """(their TLS files are read when compiled: a reload must read them again)"""
    before = compiled(document(url="https://#backend#/items/{id}"))
    after = compiled(document(url="https://#backend#/items/{id}"), previous=before)
    assert after.reused == 0


def test_every_error_is_still_found_with_a_previous_snapshot():
    before = compiled(document())
    bad = document()
    bad["apis"].append(copy.deepcopy(bad["apis"][0]) | {"name": "twin"})   # same route
    with pytest.raises(ConfigError) as fresh:
        compiled(bad)
    with pytest.raises(ConfigError) as reusing:
        compiled(bad, previous=before)
    assert str(reusing.value) == str(fresh.value)
    assert "apis[3].path: GET /svc0/items/{id} conflicts with API 'api-0' in environment" \
        in str(reusing.value)


def test_a_bad_template_is_refused_by_every_router_that_is_given_it(router_forms):
    for Router in router_forms:
        first = Router()
        first.add("RELEASE", (), "GET", "/a/{id}", "exact", "a")
        first.freeze()
        second = Router(first)
        second.add("RELEASE", (), "GET", "/a/{id}", "exact", "b")
        for router in (Router(first), second):
            with pytest.raises(ValueError, match="uses parameter name 'x' twice"):
                router.add("RELEASE", (), "GET", "/b/{x}/{x}", "exact", "c")
        second.freeze()
        assert second.match("RELEASE", "", "GET", "/a/1") == ("b", {"id": "1"}, "")
        assert first.match("RELEASE", "", "GET", "/a/1") == ("a", {"id": "1"}, "")


@pytest.fixture
def router_forms():
    import fastpath
    from tests.fastpath.conftest import NO_EXTENSIONS
    forms = [fastpath.load("router", compiled=False).Router]
    if not NO_EXTENSIONS:
        forms.append(fastpath.load("router", compiled=True).Router)
    return forms


# -- the validation of backend urls: the same errors, found cheaply ----------------------------

@pytest.mark.parametrize("url, message", [
    ("http://exa mple.com/x", "spaces or control characters in the url"),
    ("http://example.com/a\tb", "spaces or control characters in the url"),
    ("http://example.com/a\u3000b", "spaces or control characters in the url"),
    ("http://example.com/a\u200bb", "spaces or control characters in the url"),
    ("http://ex_ample!.com/x", "invalid host in 'http://ex_ample!.com/x'"),
    ("http://user:pw@example.com/x", "credentials do not belong in the url"),
    ("http://example.com:0/x", "invalid port 0"),
    ("http://example.com:99999/x", "invalid url: Port out of range 0-65535"),
    ("http://example.com/x?a=1", "a backend url has no query"),
])
def test_a_bad_backend_url_gets_its_error(url, message):
    doc = document(1, url=url)
    with pytest.raises(ConfigError) as err:
        parse_document(json.dumps(doc), "json")
    assert f"apis[0].backend.url: {message}" in str(err.value)


@pytest.mark.parametrize("url", ["http://[::1]:8080/x", "http://10.0.0.1/x",
                                 "http://a-b.example/x"])
def test_a_good_backend_url_is_accepted(url):
    parse_document(json.dumps(document(1, url=url)), "json")


def test_a_variable_that_makes_a_bad_url_in_one_environment_is_named_with_it():
    doc = document(2)
    doc["groups"][0]["variables"]["TEST"]["backend"] = "bad host"
    with pytest.raises(ConfigError) as err:
        parse_document(json.dumps(doc), "json")
    errors = str(err.value)
    for i in range(2):      # (the url is checked once, its errors given to every API using it)
        assert (f"apis[{i}].backend.url: in environment 'TEST': spaces or control characters "
                "in the url") in errors
    assert "'RELEASE'" not in errors


def test_checked_bytes_are_decoded_only(tmp_path):
    """What the workers do with bytes their master validated: the same document, unchecked."""
    bad = document(1, url="http://bad host/x")
    path = tmp_path / "doc.json"
    path.write_text(json.dumps(bad))
    with pytest.raises(ConfigError):
        load_document(path)
    doc = load_document(path, data=path.read_bytes(), checked=True)
    assert doc.apis[0].backend.url == "http://bad host/x"


# -- the real gateway ------------------------------------------------------------------------

def two_backends_config(first, second):
    return {"version": 1,
            "groups": [{"name": "g", "variables": {"RELEASE": {"one": first.address,
                                                               "two": second.address}}}],
            "apis": [{"name": f"api-{i}", "group": "g", "method": "GET",
                      "path": f"/svc{i}/{{rest+}}",
                      "backend": {"url": "http://#one#/{rest}"},
                      "environments": {"RELEASE": {}}} for i in range(3)]}


def served_by(gw, target):
    c = http.client.HTTPConnection("127.0.0.1", gw.port, timeout=10)
    try:
        c.request("GET", target)
        r = c.getresponse()
        r.read()
        return r.status, r.getheader("X-Backend")
    finally:
        c.close()


def wait_for(predicate, what, timeout=10.0):
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if predicate():
            return
        time.sleep(0.05)
    raise AssertionError(f"{what}: not reached in {timeout} s")


@pytest.fixture
def second_backend():
    b = Backend().start()
    yield b
    b.stop()


@pytest.mark.parametrize("workers", [1, 2])
def test_an_incremental_reload_serves_the_new_backend_and_keeps_the_others(
        make_gateway, backend, second_backend, workers):
    config = two_backends_config(backend, second_backend)
    gw = make_gateway(config, workers=workers)
    one, two = str(backend.port), str(second_backend.port)
    for i in range(3):
        assert served_by(gw, f"/svc{i}/x") == (200, one)
    changed = copy.deepcopy(config)
    changed["apis"][1]["backend"]["url"] = "http://#two#/{rest}"
    gw.write_config(changed)
    gw.signal(signal.SIGHUP)
    wait_for(lambda: len(re.findall(r"is live \(2 of 3 compiled APIs kept", gw.log())) == workers,
             "every worker reports the reload, reusing the two unchanged APIs")
    assert served_by(gw, "/svc1/x") == (200, two)
    assert served_by(gw, "/svc0/x") == (200, one)
    assert served_by(gw, "/svc2/x") == (200, one)

    # a bad document afterwards is refused with its error; the reused APIs keep serving
    bad = copy.deepcopy(changed)
    bad["apis"][2]["backend"]["url"] = "http://#three#/{rest}"
    gw.write_config(bad)
    gw.signal(signal.SIGHUP)
    wait_for(lambda: "variable 'three' is not defined for environment 'RELEASE'" in gw.log(),
             "the error is logged")
    assert "apis[2].backend.url" in gw.log()
    assert served_by(gw, "/svc1/x") == (200, two)
    assert served_by(gw, "/svc2/x") == (200, one)
    assert "Traceback" not in gw.log()

"""Differential tests: random inputs, both forms, and a slow reference oracle written here.

The forms must agree with each other on every result (value, or exception type and message),
and with an oracle that implements the documented rules in the most direct way (a scan over
every route, ranking candidates by an explicit key; a regex-and-split path normalizer), so the
semantics are checked and not only the agreement.

Hypothesis runs from a fixed seed (``SEED`` in tests/fastpath/conftest.py), printed in the
pytest header; set TOLLGATE_TEST_SEED to try another.  A failure prints the falsifying example and a @reproduce_failure blob.
"""
from __future__ import annotations

import re

import pytest
from hypothesis import HealthCheck, given, seed, settings
from hypothesis import strategies as st

from .conftest import NO_EXTENSIONS, SEED, load_form

SETTINGS = settings(max_examples=300, deadline=None, print_blob=True, database=None,
                    suppress_health_check=[HealthCheck.too_slow])


@pytest.fixture(scope="module")
def pathnorm_forms():
    """[pure] or [pure, compiled]: the compiled form is left out only under TOLLGATE_NO_EXTENSIONS=1."""
    return available_forms("pathnorm")


@pytest.fixture(scope="module")
def router_forms():
    return available_forms("router")


def available_forms(name):
    forms = [load_form(name, "pure")]
    if not NO_EXTENSIONS:
        forms.append(load_form(name, "compiled"))  # fails when it is not built
    return forms


def outcome(fn, *args):
    """What a call gives, comparable across the forms: ("ok", value) or ("error", type, message)."""
    try:
        return ("ok", fn(*args))
    except Exception as exc:  # the comparison itself is the assertion
        return ("error", type(exc).__name__, str(exc))


# --- normalize_path ----------------------------------------------------------------------------

_UNRESERVED = set("ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789-._~")


def reference_normalize(path):
    """The rules of fastpath/pathnorm.py, written out directly.  Returns a str or raises ValueError."""
    if not path.startswith("/"):
        raise ValueError("start")
    if re.search(r"[^\x21-\x7e]|[#\\]", path):
        raise ValueError("character")

    def escape(seg):
        if re.search(r"%(?![0-9A-Fa-f]{2})", seg):
            raise ValueError("percent")

        def one(mo):
            ch = chr(int(mo.group(1), 16))
            if ch == "\0":
                raise ValueError("nul")
            return ch if ch in _UNRESERVED else "%" + mo.group(1).upper()
        return re.sub(r"%([0-9A-Fa-f]{2})", one, seg)

    raw = path[1:].split("/")
    decoded = [escape(seg) for seg in raw]
    out = []
    for seg in decoded:
        if seg in ("", "."):
            continue
        if seg == "..":
            if not out:
                raise ValueError("climb")
            out.pop()
            continue
        out.append(seg)
    trailing = decoded[-1] in ("", ".", "..")
    if not out:
        return "/"
    return "/" + "/".join(out) + ("/" if trailing else "")


_PATH_PIECES = st.sampled_from([
    "/", "/", "/", "a", "b", "Z", ".", "..", "%2e", "%2E", "%41", "%7e", "%2f", "%5c", "%25", "%00",
    "%", "%4", "%zz", "#", "\\", " ", "\x00", "\xe9", "~", "-", "_", "9", ".a", "%c3%a9",
])


@st.composite
def raw_paths(draw):
    body = "".join(draw(st.lists(_PATH_PIECES, max_size=12)))
    return body if draw(st.integers(0, 20)) == 0 else "/" + body


@seed(SEED)
@SETTINGS
@given(path=raw_paths())
def test_normalize_path_forms_and_reference_agree(pathnorm_forms, path):
    results = [outcome(mod.normalize_path, path) for mod in pathnorm_forms]
    assert all(got == results[0] for got in results)
    try:
        expected = reference_normalize(path)
    except ValueError:
        assert results[0][:2] == ("error", "PathError")
        return
    assert results[0] == ("ok", expected)
    for mod in pathnorm_forms:
        # The normal form is a fixed point, handed back as the same object.
        assert mod.normalize_path(expected) is expected


# --- Router ----------------------------------------------------------------------------------

METHODS = ("GET", "POST", "PUT", "DELETE", "PATCH", "HEAD", "OPTIONS", "ANY")
ENVS = ("RELEASE", "TEST")
HOST_SETS = ((), (), ("a.com",), ("b.com",), ("a.com", "b.com"))
LITERALS = ("a", "b", "c")


@st.composite
def templates(draw):
    """A template with 0-3 segments; returns (template, [(kind, text)]) with canonical parts."""
    count = draw(st.integers(0, 3))
    parts = []
    for index in range(count):
        kind = draw(st.sampled_from(["literal", "literal", "param", "greedy"]
                                    if index == count - 1 else ["literal", "literal", "param"]))
        if kind == "literal":
            parts.append(("literal", draw(st.sampled_from(LITERALS))))
        else:
            parts.append((kind, f"p{index}"))
    text = "/" + "/".join(t if k == "literal" else "{" + t + ("+}" if k == "greedy" else "}")
                          for k, t in parts)
    if parts and draw(st.booleans()):
        text += "/"   # ignored
    return text, parts


@st.composite
def route_specs(draw):
    template, parts = draw(templates())
    return {
        "env": draw(st.sampled_from(ENVS + ("RELEASE", "RELEASE"))),
        "hosts": draw(st.sampled_from(HOST_SETS)),
        "method": draw(st.sampled_from(METHODS + ("GET",) * 5 + ("ANY", "ANY", "HEAD"))),
        "template": template,
        "parts": parts,
        "mode": draw(st.sampled_from(["exact", "prefix"])),
    }


@st.composite
def route_sets(draw):
    """Random routes, some of them twins of an earlier one in the other match mode or method,
    so that routes ending at the same node (exact against prefix, method fallbacks) are common."""
    specs = draw(st.lists(route_specs(), min_size=5, max_size=30))
    for spec in list(specs):
        twist = draw(st.sampled_from(["none", "none", "mode", "method"]))
        if twist == "mode":
            specs.append(dict(spec, mode="prefix" if spec["mode"] == "exact" else "exact"))
        elif twist == "method":
            specs.append(dict(spec, method=draw(st.sampled_from(METHODS))))
    return specs


@st.composite
def requests(draw):
    segments = draw(st.lists(st.sampled_from(LITERALS + LITERALS + ("d",)), max_size=4))
    path = "/" + "/".join(segments)
    if segments and draw(st.booleans()):
        path += "/"
    return (draw(st.sampled_from(ENVS + ("RELEASE", "RELEASE", "DEV"))),
            draw(st.sampled_from(["a.com", "A.COM:8080", "b.com.", "c.com", ""])),
            draw(st.sampled_from(METHODS[:-1] + ("TRACE",) + ("GET",) * 6 + ("HEAD",) * 3)),
            path)


def shape(parts):
    return tuple(t if k == "literal" else k for k, t in parts)


def oracle_host(host):
    host = host.lower()
    if host.startswith("["):
        host = host[:host.index("]") + 1] if "]" in host else host
    elif ":" in host:
        host = host[:host.index(":")]
    return host[:-1] if host.endswith(".") else host


def method_rank(route_method, method):
    if route_method == method:
        return 0
    if route_method == "ANY":
        return 1
    if method == "HEAD" and route_method == "GET":
        return 2
    return None


def oracle_candidate(route, method, segments, trailing):
    """(rank key, result) when ``route`` matches, else None.  Ranked by the documented rules."""
    rank = method_rank(route["method"], method)
    if rank is None:
        return None
    parts = route["parts"]
    k = len(parts)
    greedy = bool(parts) and parts[-1][0] == "greedy"
    fixed = parts[:-1] if greedy else parts
    if len(segments) < len(fixed) or (greedy and len(segments) <= len(fixed)):
        return None
    params = {}
    key = []
    for (kind, text), seg in zip(fixed, segments):
        if kind == "literal":
            if seg != text:
                return None
            key.append(0)
        else:
            params[text] = seg
            key.append(1)
    consumed = len(segments) if greedy else len(fixed)
    if greedy:
        params[parts[-1][1]] = "/".join(segments[len(fixed):])
        key.append(2)
    exact = route["mode"] == "exact"
    if exact and consumed != len(segments):
        return None
    if consumed == len(segments):
        # Where the path ends: exact before prefix.
        key.append(0 if exact else 1)
        rest = "" if exact else ("/" if trailing else "")
    else:
        # Stopping with segments left ranks after every way of going deeper.
        key.append(3)
        rest = "".join("/" + s for s in segments[consumed:]) + ("/" if trailing else "")
    key.append(rank)
    assert k == len(fixed) + greedy
    return tuple(key), (route["target"], params or None, rest)


def oracle_match(routes, env, host, method, path):
    body = path[1:]
    trailing = path.endswith("/")
    if trailing:
        body = body[:-1]
    segments = body.split("/") if body else []
    for tree_host in (oracle_host(host), None):
        candidates = []
        for route in routes:
            if route["env"] != env:
                continue
            if tree_host is None and route["hosts"] != ():
                continue
            if tree_host is not None and tree_host not in route["hosts"]:
                continue
            found = oracle_candidate(route, method, segments, trailing)
            if found is not None:
                candidates.append(found)
        if candidates:
            candidates.sort(key=lambda c: c[0])
            assert len(candidates) == 1 or candidates[0][0] != candidates[1][0], "oracle tie"
            return candidates[0][1]
    return None


def oracle_conflict(routes, spec):
    for route in routes:
        if (route["env"] == spec["env"] and route["method"] == spec["method"]
                and route["mode"] == spec["mode"] and shape(route["parts"]) == shape(spec["parts"])
                and (set(route["hosts"]) & set(spec["hosts"]) or route["hosts"] == spec["hosts"] == ())):
            return route
    return None


@seed(SEED)
@SETTINGS
@given(specs=route_sets(), reqs=st.lists(requests(), min_size=1, max_size=30))
def test_router_forms_and_oracle_agree(router_forms, specs, reqs):
    routers = [mod.Router() for mod in router_forms]
    routes = []
    for number, spec in enumerate(specs):
        target = f"r{number}"
        args = (spec["env"], spec["hosts"], spec["method"], spec["template"], spec["mode"], target)
        results = [outcome(router.add, *args) for router in routers]
        assert all(got == results[0] for got in results)
        clash = oracle_conflict(routes, spec)
        if clash is None:
            assert results[0] == ("ok", None)
            routes.append(dict(spec, target=target))
        else:
            assert results[0][:2] == ("error", "RouteConflict")
            assert repr(clash["target"]) in results[0][2]
    for router in routers:
        router.freeze()
    for env, host, method, path in reqs:
        expected = oracle_match(routes, env, host, method, path)
        for router in routers:
            assert router.match(env, host, method, path) == expected


@pytest.mark.parametrize("path", ["/a/b/c", "/a/b/d", "/a/x/d", "/a/b", "/a/b/", "/b/c/d/e", "/", "/c"])
def test_oracle_agrees_with_the_worked_example(path):
    # Pin the oracle itself on the backtracking example of the brief, so that a wrong oracle
    # cannot make the random test pass for the wrong reason.
    def route(template, parts, mode, target):
        return {"env": "E", "hosts": (), "method": "GET", "template": template, "parts": parts,
                "mode": mode, "target": target}
    routes = [
        route("/a/b/c", [("literal", "a"), ("literal", "b"), ("literal", "c")], "exact", "abc"),
        route("/a/{x}/d", [("literal", "a"), ("param", "x"), ("literal", "d")], "exact", "axd"),
        route("/a/{r+}", [("literal", "a"), ("greedy", "r")], "exact", "ar"),
        route("/b", [("literal", "b")], "prefix", "b"),
    ]
    expected = {
        "/a/b/c": ("abc", None, ""), "/a/b/d": ("axd", {"x": "b"}, ""),
        "/a/x/d": ("axd", {"x": "x"}, ""), "/a/b": ("ar", {"r": "b"}, ""),
        "/a/b/": ("ar", {"r": "b"}, ""), "/b/c/d/e": ("b", None, "/c/d/e"), "/": None, "/c": None,
    }[path]
    assert oracle_match(routes, "E", "", "GET", path) == expected

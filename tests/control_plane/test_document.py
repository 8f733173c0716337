"""Document <-> resources, whole-document checks located by resource, bodies and merge patch."""
from __future__ import annotations

import copy
import json

import pytest

from control_plane import document as D
from control_plane.kinds import KINDS, MASK, to_body
from gateway.config import Api, Channel, Document, Member, parse_document

from .examples import contract, rich, without_certificates


def doc_of(raw: dict) -> Document:
    return parse_document(json.dumps(raw), "json")


@pytest.mark.parametrize("example", [contract, rich])
def test_a_document_split_into_resources_and_assembled_back_is_identical(example):
    doc = doc_of(example())
    settings, resources = D.split(doc)
    assert list(resources) == list(KINDS)
    assert set(settings) == {"version", "iam", "redis", "trusted_proxies"}
    assert D.assemble(settings, resources) == doc
    # the bodies are plain JSON (what the store keeps), every field written
    text = json.dumps([settings, resources])
    assert json.loads(text) == [settings, resources]
    assert resources["apis"][0]["backend"]["timeout_ms"] == 5000
    # through JSON and back too (what comes out of a store)
    again = json.loads(text)
    assert D.assemble(again[0], again[1]) == doc
    assert D.check(*again, compile=False) == doc


def test_assemble_keeps_the_order_given_and_leaves_out_nothing():
    settings, resources = D.split(doc_of(rich()))
    resources["apis"].reverse()
    doc = D.assemble(settings, resources)
    assert [a.name for a in doc.apis] == ["ingest-status", "by-channel", "free-slots"]
    partial = D.assemble(settings, {"groups": resources["groups"]})
    assert partial.apis == () and partial.groups[0].name == "parking"
    with pytest.raises(KeyError, match="unknown kinds"):
        D.assemble(settings, {"tokens": []})


def test_assemble_names_structural_problems_by_resource():
    settings, resources = D.split(doc_of(rich()))
    resources["channels"][0]["port"] = "9001"
    with pytest.raises(D.DocumentError) as info:
        D.assemble(settings, resources)
    assert info.value.problems == [D.Problem(kind="channels", name="lots", path="port",
                                             message="expected int, got str")]


# --------------------------------------------------------------------------------------------------
# Whole-document checks, each problem located at its resource

def _api(raw, name):
    return next(a for a in raw["apis"] if a["name"] == name)


def _mutate(change):
    raw = without_certificates(rich())
    change(raw)
    return raw


BROKEN = {
    "api channel": (lambda r: _api(r, "by-channel")["backend"].update(channel="nope"),
                    ("apis", "by-channel", "backend.channel", "unknown channel 'nope'")),
    "conditional backend channel": (
        lambda r: _api(r, "free-slots")["conditional_backends"][1]["backend"].update(channel="x"),
        ("apis", "free-slots", "conditional_backends[1].backend.channel", "unknown channel 'x'")),
    "environment binding": (
        lambda r: _api(r, "free-slots")["environments"]["RELEASE"].update(throttle="fast"),
        ("apis", "free-slots", "environments.RELEASE.throttle", "unknown throttle 'fast'")),
    "app quota": (lambda r: r["apps"][0].update(quota="weekly"),
                  ("apps", "parking-app", "quota", "unknown app quota 'weekly'")),
    "throttle special": (lambda r: r["throttles"][0]["specials"][0].update(app="gone"),
                         ("throttles", "basic", "specials[0].app", "unknown app 'gone'")),
    "duplicate name": (lambda r: r["apps"].append({"name": "parking-app"}),
                       ("apps", "parking-app", "name", "duplicate name 'parking-app'")),
    "wrong type": (lambda r: _api(r, "by-channel")["backend"].update(timeout_ms="slow"),
                   ("apis", "by-channel", "backend.timeout_ms", "expected int, got str")),
    "unknown field": (lambda r: r["channels"][0].update(prot=1),
                      ("channels", "lots", "prot", "unknown field")),
    "settings range": (lambda r: r["redis"].update(timeout_ms=0),
                       ("settings", None, "redis.timeout_ms", "expected int >= 1")),
    "settings duplicate": (lambda r: r["iam"]["users"][1].update(access_key="AK..."),
                           ("settings", None, "iam.users[1].access_key",
                            "duplicate access_key 'AK...'")),
    "device product": (lambda r: r["devices"][0].update(product="camera"),
                       ("devices", "slot-001", "product", "unknown product 'camera'")),
    "rule datasource": (lambda r: r["rules"][0]["destinations"][3].update(datasource="dw"),
                        ("rules", "parking-to-stream", "destinations[3].datasource",
                         "unknown datasource 'dw'")),
    "group variables": (lambda r: r["groups"][0]["variables"].update(PROD={"a_b_c": "h"}),
                        ("groups", "parking", "variables.PROD", "unknown environment 'PROD'")),
    "route conflict, the other API named": (
        lambda r: r["apis"].append({**copy.deepcopy(_api(r, "by-channel")), "name": "twin"}),
        ("apis", "twin", "path", "the same method and path as apis/by-channel ('by-channel')")),
    "emptied channel, found at its user": (
        lambda r: r["channels"][0].update(members=[]),
        ("apis", "free-slots", "conditional_backends[1].backend.channel",
         "channel 'lots' has no members")),
    "compiler only": (
        lambda r: r["certificates"].append({"name": "shop", "cert": "./no/such.pem",
                                            "key": "./no/such-key.pem"}),
        ("certificates", "shop", "cert", "cannot read ././no/such.pem")),
    "version": (lambda r: r.update(version=2),
                ("settings", None, "version", "unsupported version 2")),
    "unknown top-level field": (lambda r: r.update(tokens=[]),
                                (None, None, "tokens", "unknown field")),
}


@pytest.mark.parametrize("case", list(BROKEN))
def test_each_problem_of_a_broken_document_is_located_at_its_resource(case):
    change, (kind, name, path, message) = BROKEN[case]
    raw = _mutate(change)
    settings = {k: raw.pop(k) for k in list(raw) if k not in KINDS}
    before = copy.deepcopy([settings, raw])
    with pytest.raises(D.DocumentError) as info:
        D.check(settings, raw) if "tokens" not in settings else D.assemble(settings, raw)
    found = [(p.kind, p.name, p.path) for p in info.value.problems]
    assert (kind, name, path) in found, info.value.problems
    problem = info.value.problems[found.index((kind, name, path))]
    assert problem.message.startswith(message), problem
    assert [settings, raw] == before          # nothing given was changed


def test_the_unbroken_document_passes_and_the_compiler_is_optional():
    raw = without_certificates(rich())
    settings = {k: raw.pop(k) for k in list(raw) if k not in KINDS}
    assert D.check(settings, raw).apis[1].name == "by-channel"
    raw["certificates"] = [{"name": "shop", "cert": "./no/such.pem", "key": "./no/such-key.pem"}]
    assert D.check(settings, raw, compile=False).certificates[0].name == "shop"
    with pytest.raises(D.DocumentError):
        D.check(settings, raw)


def test_locate_reads_every_form_of_path():
    raw = {"apis": [{"name": "a"}], "groups": [{"name": "g"}], "apps": [{"name": 3}]}
    cases = {
        "apis[0].backend.channel: unknown channel 'x'":
            D.Problem(kind="apis", name="a", path="backend.channel", message="unknown channel 'x'"),
        'groups[0].variables["my env"]: unknown environment \'my env\'':
            D.Problem(kind="groups", name="g", path='variables["my env"]',
                      message="unknown environment 'my env'"),
        "apps[0].key: the same key as apis[0]":
            D.Problem(kind="apps", name=None, path="key", message="the same key as apis/a"),
        "apis[0]: an http backend needs url or channel (one of them)":
            D.Problem(kind="apis", name="a", path="", message="an http backend needs url or "
                                                              "channel (one of them)"),
        "apis: expected array, got object":
            D.Problem(kind="apis", name=None, path="", message="expected array, got object"),
        "(document): empty": D.Problem(kind=None, name=None, path="", message="empty"),
        "iam.jwt: give keys": D.Problem(kind="settings", name=None, path="iam.jwt",
                                        message="give keys"),
        "not a path line": D.Problem(kind=None, name=None, path="", message="not a path line"),
        "apis[7].name: beyond the list":
            D.Problem(kind="apis", name=None, path="name", message="beyond the list"),
    }
    for line, problem in cases.items():
        assert D.locate(line, raw) == problem, line
    assert str(D.locate("apis[0].backend.channel: unknown channel 'x'", raw)) == \
        "apis/a: backend.channel: unknown channel 'x'"


def test_with_resource_replaces_in_place_appends_and_removes():
    _, resources = D.split(doc_of(rich()))
    before = copy.deepcopy(resources)
    renamed = D.with_resource(resources, "apis", "free-slots", {"name": "slots"})
    assert [a["name"] for a in renamed["apis"]] == ["slots", "by-channel", "ingest-status"]
    added = D.with_resource(resources, "channels", "more", {"name": "more"})
    assert [c["name"] for c in added["channels"]] == ["lots", "more"]
    removed = D.with_resource(resources, "apis", "by-channel", None)
    assert [a["name"] for a in removed["apis"]] == ["free-slots", "ingest-status"]
    assert D.with_resource(resources, "apis", "nope", None)["apis"] == resources["apis"]
    assert resources == before
    with pytest.raises(KeyError):
        D.with_resource(resources, "api", "x", None)


def test_a_write_that_breaks_a_reference_is_located_and_a_delete_check_names_users():
    raw = without_certificates(rich())
    settings = {k: raw.pop(k) for k in list(raw) if k not in KINDS}
    candidate = D.with_resource(raw, "channels", "lots", None)
    with pytest.raises(D.DocumentError) as info:
        D.check(settings, candidate)
    assert {(p.kind, p.name, p.path) for p in info.value.problems} == {
        ("apis", "free-slots", "conditional_backends[1].backend.channel"),
        ("apis", "by-channel", "backend.channel")}


# --------------------------------------------------------------------------------------------------
# One body

def test_decode_body_gives_the_struct_or_problems_inside_the_body():
    api = D.decode_body("apis", {"name": "a", "group": "g", "method": "GET", "path": "/a",
                                 "backend": {"type": "mock", "mock": {}}})
    assert isinstance(api, Api) and api.backend.timeout_ms == 5000
    cases = [
        ({"name": "a", "group": "g", "method": "GET", "path": "/a",
          "backend": {"timout_ms": 3}}, "backend.timout_ms", "unknown field"),
        ({"name": "a", "group": "g", "method": "FETCH", "path": "/a", "backend": {}},
         "method", "invalid value 'FETCH' (expected one of: GET, POST"),
        ({"group": "g", "method": "GET", "path": "/a", "backend": {}}, "name",
         "missing required field"),
        ({"name": "9a", "group": "g", "method": "GET", "path": "/a", "backend": {}}, "name",
         "expected a name"),
        ([], "", "expected an object, got a list"),
        ("x", "", "expected an object, got str"),
    ]
    for body, path, message in cases:
        with pytest.raises(D.DocumentError) as info:
            D.decode_body("apis", body)
        problem = info.value.problems[0]
        assert problem.kind == "apis" and problem.path == path, (body, problem)
        assert problem.message.startswith(message), problem
    with pytest.raises(D.DocumentError) as info:
        D.decode_body("settings", {"version": 1, "iam": {"users": [{"name": "u"}]}})
    assert [(p.kind, p.path) for p in info.value.problems] == [("settings", "iam.users[0].account")]


def test_normalize_writes_every_field():
    body = D.normalize("channels", {"name": "c", "port": 80, "members": [{"host": "h"}]})
    assert body == to_body(Channel(name="c", port=80, members=(Member(host="h"),)))
    assert body["balance"] == "wrr" and body["members"][0]["weight"] == 1
    assert body["health_check"] is None and body["member_groups"] == []


RFC7386 = [   # RFC 7386, appendix A
    ({"a": "b"}, {"a": "c"}, {"a": "c"}),
    ({"a": "b"}, {"b": "c"}, {"a": "b", "b": "c"}),
    ({"a": "b"}, {"a": None}, {}),
    ({"a": "b", "b": "c"}, {"a": None}, {"b": "c"}),
    ({"a": ["b"]}, {"a": "c"}, {"a": "c"}),
    ({"a": "c"}, {"a": ["b"]}, {"a": ["b"]}),
    ({"a": {"b": "c"}}, {"a": {"b": "d", "c": None}}, {"a": {"b": "d"}}),
    ({"a": [{"b": "c"}]}, {"a": [1]}, {"a": [1]}),
    (["a", "b"], ["c", "d"], ["c", "d"]),
    ({"a": "b"}, ["c"], ["c"]),
    ({"a": "foo"}, None, None),
    ({"a": "foo"}, "bar", "bar"),
    ({"e": None}, {"a": 1}, {"e": None, "a": 1}),
    ([1, 2], {"a": "b", "c": None}, {"a": "b"}),
    ({}, {"a": {"bb": {"ccc": None}}}, {"a": {"bb": {}}}),
]


@pytest.mark.parametrize("target, patch, result", RFC7386)
def test_merge_patch_follows_rfc_7386(target, patch, result):
    before = copy.deepcopy(target)
    assert D.merge_patch(target, patch) == result
    assert target == before


def test_a_patch_is_merged_keeps_masked_secrets_and_is_validated_with_paths():
    stored = D.normalize("apps", rich()["apps"][0])
    body, made = D.apply_patch("apps", stored, {"secret": MASK, "acl": None,
                                                "app_codes": [MASK, "code-two"]})
    assert made == {}
    assert body["secret"] == stored["secret"] and body["acl"] is None
    assert body["app_codes"] == [stored["app_codes"][0], "code-two"]
    # a null secret is a rotation: generated again, shown once
    body, made = D.apply_patch("apps", stored, {"secret": None})
    assert list(made) == ["secret"] and body["secret"] == made["secret"] != stored["secret"]
    for patch, path, message in [
            ({"quota": 5}, "quota", "expected str"),
            ({"acl": {"action": "MAYBE"}}, "acl.action", "invalid value 'MAYBE'"),
            ({"key": "short"}, "key", "expected str of length >= 8"),
            ({"app_codes": [MASK, MASK]}, "app_codes[1]", "'******' keeps a stored secret"),
            ([1], "", "expected an object")]:
        with pytest.raises(D.DocumentError) as info:
            D.apply_patch("apps", stored, patch)
        problem = info.value.problems[0]
        assert (problem.kind, problem.path) == ("apps", path), problem
        assert problem.message.startswith(message), problem
    assert stored == D.normalize("apps", rich()["apps"][0])      # the stored body is untouched


def test_create_and_replace_generate_what_is_missing_and_refuse_a_bare_mask():
    body, made = D.create_body("signature_keys", {"name": "sk"})
    assert set(made) == {"key", "secret"} and body["type"] == "hmac"
    with pytest.raises(D.DocumentError) as info:
        D.create_body("devices", {"name": "d", "product": "p", "identifier": "i",
                                  "password": MASK})
    assert info.value.problems[0].path == "password"
    stored = body
    replaced, made = D.replace_body("signature_keys", {"name": "sk", "key": stored["key"],
                                                       "secret": MASK}, stored)
    assert replaced == stored and made == {}

"""The resource kinds table: derived from the model, its references are the gateway's, users are
found, secrets are masked, generated and kept."""
from __future__ import annotations

import copy
import json
import re

import msgspec
import pytest

from control_plane import kinds as K
from control_plane.document import split
from gateway.config import Document, SignatureKey, App, parse_document, validate

from .examples import PUBLIC_PEM, SECRET_VALUES, contract, rich


def doc_of(raw: dict) -> Document:
    return parse_document(json.dumps(raw), "json")


def test_every_list_of_named_items_is_a_kind_and_the_rest_are_settings():
    fields = [f.name for f in msgspec.structs.fields(Document)]
    assert K.SETTINGS_FIELDS == ("version", "iam", "redis", "trusted_proxies")
    assert list(K.KINDS) == [f for f in fields if f not in K.SETTINGS_FIELDS]
    assert len(K.KINDS) == 15 and "settings" not in K.KINDS
    for name, k in K.KINDS.items():
        assert k.list_field == name and k.name_field == "name"
        assert k.struct is msgspec.structs.fields(Document)[fields.index(name)].type.__args__[0]
    assert K.kind("settings").struct is K.Settings
    with pytest.raises(KeyError, match="unknown kind 'channel'.*channels"):
        K.kind("channel")


def test_the_settings_struct_decodes_the_settings_of_the_contract_example():
    settings, _ = split(doc_of(contract()))
    decoded = msgspec.convert(settings, K.Settings)
    assert decoded.iam.users[0].name == "alice" and decoded.redis.fail_mode == "open"
    with pytest.raises(msgspec.ValidationError, match="unknown field `apis`"):
        msgspec.convert({**settings, "apis": []}, K.Settings)


def test_list_filters_are_the_name_and_top_level_references():
    assert K.KINDS["apis"].filters == ("name", "group", "authorizer")
    assert K.KINDS["devices"].filters == ("name", "product")
    assert K.KINDS["channels"].filters == ("name",)


# --------------------------------------------------------------------------------------------------
# References

def _set(node, path: str, value):
    """Set the value at a concrete path; a mapping key (the last step) is renamed."""
    steps = re.findall(r'\[(\d+)\]|\["([^"]*)"\]|\.?([A-Za-z_][A-Za-z0-9_-]*)', path)
    keys = [int(i) if i else (q or f) for i, q, f in steps]
    for key in keys[:-1]:
        node = node[key]
    last = keys[-1]
    if isinstance(node, dict) and last in node and node[last] == value:  # pragma: no cover
        raise AssertionError("no change")
    node[last] = value


def _rename_key(node, path: str, new: str):
    parent, _, key = path.rpartition(".")
    for part in re.findall(r"[A-Za-z_][A-Za-z0-9_-]*|\d+", parent):
        node = node[int(part)] if isinstance(node, list) else node[part]
    node[new] = node.pop(key)


def test_every_declared_reference_is_one_the_gateway_checks():
    """Break each reference of the rich example in turn: the gateway's validator then names that
    very path as unknown (and did not before); the one reference declared unchecked it ignores.
    Every reference pattern of the table is exercised."""
    base = rich()
    # data backends (refused by the gateway today, yet their datasource is a reference)
    base["apis"].append({"name": "data-api", "group": "parking", "method": "GET", "path": "/d",
                         "backend": {"type": "data", "data": {"datasource": "parking-db",
                                                               "statement": "SELECT 1"}},
                         "conditional_backends": [
                             {"name": "c", "conditions": [{"source": "source_ip", "op": "cidr",
                                                           "value": "10.0.0.0/8"}],
                              "backend": {"type": "data", "authorizer": "backend-auth",
                                          "data": {"datasource": "warehouse",
                                                   "statement": "SELECT 2"}}}],
                         "environments": {"RELEASE": {}}})
    base_doc = msgspec.convert(base, Document)
    base_errors = validate(base_doc)
    exercised = set()
    checked = 0
    for kind_name, k in K.KINDS.items():
        for i, body in enumerate(base[kind_name]):
            for pattern in k.refs:
                paths = [(p, v) for p, v in K._walk(body, K.steps(pattern.path))
                         if v not in pattern.implicit]
                if paths:
                    exercised.add((kind_name, pattern.path))
                for path, _ in paths:
                    _break(base, base_errors, kind_name, i, path, pattern)
                    checked += pattern.checked
    declared = {(name, r.path) for name, k in K.KINDS.items() for r in k.refs}
    assert exercised == declared, declared - exercised
    assert checked >= 25


def _break(base, base_errors, kind_name, i, path, pattern):
    """Point reference ``path`` of ``base[kind_name][i]`` at nothing; the validator must name it
    (unless the reference is declared unchecked)."""
    raw = copy.deepcopy(base)
    full = f"{kind_name}[{i}].{path}"
    if pattern.path.endswith("{*}"):
        _rename_key(raw[kind_name][i], path, "MISSING")
        full = full.rsplit(".", 1)[0] + ".MISSING"
    else:
        _set(raw[kind_name][i], path, "missing-x")
    errors = validate(msgspec.convert(raw, Document))
    mine = [e for e in errors if e.startswith(f"{full}: unknown ")]
    assert not [e for e in base_errors if e.startswith(f"{full}: unknown ")]
    if pattern.checked:
        assert mine, (full, errors)
    else:
        assert not mine and pattern.kind == "apis"


def test_refs_of_an_api_lists_every_reference_with_its_path():
    raw = rich()
    api = raw["apis"][0]
    assert K.refs_of("apis", api) == [
        ("group", "groups", "parking"),
        ("authorizer", "authorizers", "token-check"),
        ("conditional_backends[1].backend.channel", "channels", "lots"),
        ("environments.TEST", "environments", "TEST"),          # RELEASE is implicit
        ("environments.RELEASE.throttle", "throttles", "basic"),
        ("environments.RELEASE.acl", "acls", "office"),
        ("environments.RELEASE.signature_key", "signature_keys", "to-backend"),
        ("environments.RELEASE.apps[0]", "apps", "parking-app"),
        ("environments.TEST.apps[0]", "apps", "parking-app"),
    ]
    assert K.refs_of("rules", raw["rules"][0]) == [
        ("source.product", "products", "parking-sensor"),
        ("source.device", "devices", "slot-001"),
        ("destinations[1].api", "apis", "ingest-status"),
        ("destinations[3].datasource", "datasources", "parking-db"),
    ]
    assert K.refs_of("channels", raw["channels"][0]) == []
    odd = {"name": "x", "environments": {"my env": {"apps": ["a"]}}}
    assert K.refs_of("apis", odd) == [('environments["my env"]', "environments", "my env"),
                                      ('environments["my env"].apps[0]', "apps", "a")]


def test_users_of_finds_every_user_in_a_document_and_in_the_stored_view():
    doc = doc_of(rich())
    _, stored = split(doc)
    for source in (doc, stored):
        assert K.users_of(source, "channels", "lots") == [
            ("apis", "free-slots", "conditional_backends[1].backend.channel"),
            ("apis", "by-channel", "backend.channel"),
        ]
        assert K.users_of(source, "apps", "parking-app") == [
            ("throttles", "basic", "specials[0].app"),
            ("apis", "free-slots", "environments.RELEASE.apps[0]"),
            ("apis", "free-slots", "environments.TEST.apps[0]"),
        ]
        assert K.users_of(source, "environments", "TEST") == [
            ("groups", "parking", "variables.TEST"),
            ("apis", "free-slots", "environments.TEST"),
            ("apis", "by-channel", "environments.TEST"),
        ]
        assert K.users_of(source, "throttles", "basic") == [
            ("apis", "free-slots", "environments.RELEASE.throttle"),
            ("apis", "by-channel", "environments.TEST.throttle"),
        ]
        assert K.users_of(source, "authorizers", "backend-auth") == [
            ("apis", "by-channel", "backend.authorizer")]
        assert K.users_of(source, "app_quotas", "daily") == [("apps", "parking-app", "quota")]
        assert K.users_of(source, "products", "parking-sensor") == [
            ("devices", "slot-001", "product"), ("rules", "parking-to-stream", "source.product")]
        assert K.users_of(source, "devices", "slot-001") == [
            ("rules", "parking-to-stream", "source.device")]
        assert K.users_of(source, "datasources", "parking-db") == [
            ("rules", "parking-to-stream", "destinations[3].datasource")]
        assert K.users_of(source, "apis", "ingest-status") == [
            ("rules", "parking-to-stream", "destinations[1].api")]
        assert K.users_of(source, "datasources", "warehouse") == []
        assert K.users_of(source, "channels", "nope") == []
    with pytest.raises(KeyError):
        K.users_of(doc, "channel", "lots")


# --------------------------------------------------------------------------------------------------
# Secrets

def test_masking_hides_every_secret_of_every_kind_and_the_settings():
    doc = doc_of(rich())
    settings, resources = split(doc)
    masked = {"settings": K.mask("settings", settings),
              **{name: [K.mask(name, b) for b in bodies] for name, bodies in resources.items()}}
    text = json.dumps(masked)
    plain = json.dumps({"settings": settings, **resources})
    for where, value in SECRET_VALUES.items():
        assert value in plain, where                    # (the example holds it)
        assert value not in text, where
    assert "iam-sk-value-02" not in text
    # what is not a secret stays: names, keys that identify, url hosts, file paths, public keys
    assert masked["apps"][0]["key"] == "2f1c0a..."
    assert masked["apps"][0]["app_codes"] == [K.MASK]
    assert masked["datasources"][1]["url"] == "postgresql://reporter:******@db.example:5432/wh"
    assert masked["datasources"][0]["url"] == "sqlite:///parking.db"
    assert masked["certificates"][0]["key"] == "./certs/shop-key.pem"
    assert masked["certificates"][1]["key"] == K.MASK
    assert masked["settings"]["iam"]["jwt"]["keys"] == [
        K.MASK, {"kty": "oct", "kid": "k1", "k": K.MASK}, PUBLIC_PEM]
    assert masked["settings"]["redis"]["url"] == "redis://:******@127.0.0.1:6379/0"
    assert masked["settings"]["iam"]["users"][0]["access_key"] == "AK..."
    # the bodies given are not changed
    assert json.dumps({"settings": settings, **resources}) == plain


def test_masking_leaves_absent_secrets_absent():
    assert K.mask("apps", {"name": "a", "secret": None}) == {"name": "a", "secret": None}
    assert K.mask("devices", {"name": "d"}) == {"name": "d"}


def test_generated_secrets_have_the_contract_formats_and_are_shown_once():
    body, made = K.generate_secrets("apps", {"name": "a", "quota": None})
    assert set(made) == {"key", "secret"}
    assert body == {"name": "a", "quota": None, **made}
    assert 8 <= len(made["key"]) <= 200 and 8 <= len(made["secret"]) <= 128
    assert all(re.fullmatch(r"[0-9a-f]+", v) for v in made.values())
    msgspec.convert(body, App)
    again, made_again = K.generate_secrets("apps", {"name": "a"})
    assert made_again["secret"] != made["secret"]
    kept, none = K.generate_secrets("apps", {"name": "a", "key": "my-key-123", "secret": "s" * 8})
    assert none == {} and kept["key"] == "my-key-123"
    body, made = K.generate_secrets("signature_keys", {"name": "s"})
    assert set(made) == {"key", "secret"}
    msgspec.convert(body, SignatureKey)
    body, made = K.generate_secrets("devices", {"name": "d", "product": "p", "identifier": "i"})
    assert list(made) == ["password"]
    settings = {"version": 1, "iam": {"users": [{"name": "u", "account": "a"},
                                                {"name": "v", "account": "a", "access_key": "AK1",
                                                 "secret_key": "SK1"}]}}
    body, made = K.generate_secrets("settings", settings)
    assert set(made) == {"iam.users[0].access_key", "iam.users[0].secret_key"}
    msgspec.convert(body, K.Settings)
    assert body["iam"]["users"][1]["secret_key"] == "SK1"
    assert "access_key" not in settings["iam"]["users"][0]         # (input unchanged)
    assert K.generate_secrets("channels", {"name": "c", "port": 1}) == (
        {"name": "c", "port": 1}, {})


def test_keep_secrets_puts_the_stored_secret_back_for_its_mask():
    stored = rich()
    app = stored["apps"][0]
    sent = K.mask("apps", app) | {"quota": None}
    kept = K.keep_secrets("apps", sent, app)
    assert kept["secret"] == app["secret"] and kept["app_codes"] == app["app_codes"]
    assert kept["quota"] is None
    # a new value replaces; a new code beside a masked one is added
    kept = K.keep_secrets("apps", {**sent, "secret": "brand-new-secret",
                                   "app_codes": [K.MASK, "second-code"]}, app)
    assert kept["secret"] == "brand-new-secret"
    assert kept["app_codes"] == [app["app_codes"][0], "second-code"]
    ds = stored["datasources"][1]
    assert K.keep_secrets("datasources", K.mask("datasources", ds), ds) == ds
    moved = {**ds, "url": "postgresql://reporter:******@db2.example/wh"}
    assert K.keep_secrets("datasources", moved, ds)["url"] == \
        "postgresql://reporter:s3cr3t-pw@db2.example/wh"
    settings, _ = split(doc_of(stored))
    masked = K.mask("settings", settings)
    masked["iam"]["users"].reverse()           # IAM users are matched by name, not position
    kept = K.keep_secrets("settings", masked, settings)
    assert [u["secret_key"] for u in kept["iam"]["users"]] == ["iam-sk-value-02", "iam-sk-value-01"]
    assert kept["iam"]["jwt"]["keys"] == settings["iam"]["jwt"]["keys"]
    assert kept["redis"]["url"] == settings["redis"]["url"]


@pytest.mark.parametrize("kind_name, body, stored, path", [
    ("apps", {"name": "a", "secret": K.MASK}, None, "secret"),
    ("apps", {"name": "a", "secret": K.MASK}, {"name": "a"}, "secret"),
    ("apps", {"name": "a", "app_codes": ["c1", K.MASK]}, {"name": "a", "app_codes": ["c1"]},
     "app_codes[1]"),
    ("datasources", {"name": "d", "url": "mysql://u:******@h/db"},
     {"name": "d", "url": "mysql://h/db"}, "url"),
    ("settings", {"iam": {"users": [{"name": "new", "secret_key": K.MASK}]}},
     {"iam": {"users": [{"name": "old", "secret_key": "x"}]}}, "iam.users[0].secret_key"),
    ("settings", {"iam": {"jwt": {"keys": [{"kty": "oct", "k": K.MASK}]}}},
     {"iam": {"jwt": {"keys": []}}}, "iam.jwt.keys[0].k"),
])
def test_a_mask_without_a_stored_secret_behind_it_is_refused_with_its_path(
        kind_name, body, stored, path):
    with pytest.raises(K.SecretError) as info:
        K.keep_secrets(kind_name, body, stored)
    assert info.value.path == path
    assert "give the value" in str(info.value)


def test_users_of_is_exactly_what_the_gateway_refuses_after_a_delete():
    """Delete each resource of the rich example in turn: the references the gateway's validator
    then reports unknown are exactly the users users_of named (the rule's API destination aside:
    the gateway lets it dangle)."""
    from control_plane.document import locate
    base = rich()
    for kind_name in K.KINDS:
        for i, body in enumerate(base[kind_name]):
            name = body["name"]
            expected = {(k, n, p) for k, n, p in K.users_of(base, kind_name, name)
                        if not (k == "rules" and ".api" in p)}
            raw = copy.deepcopy(base)
            del raw[kind_name][i]
            errors = [e for e in validate(msgspec.convert(raw, Document)) if ": unknown " in e]
            found = {(p.kind, p.name, p.path) for p in (locate(e, raw) for e in errors)}
            assert found == expected, (kind_name, name)

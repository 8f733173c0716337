"""The Struct tree of the configuration document: options, immutability, defaults, constraints."""
from __future__ import annotations

import inspect
from typing import get_args

import msgspec
import pytest

from gateway.config import model
from gateway.config.model import (
    Api,
    Backend,
    Binding,
    Channel,
    Document,
    Group,
    HealthCheck,
    Member,
    Mock,
    Throttle,
)

STRUCTS = [obj for name in model.__all__
           if inspect.isclass(obj := getattr(model, name)) and issubclass(obj, msgspec.Struct)]


def test_every_struct_is_frozen_forbids_unknown_fields_and_has_a_docstring():
    assert len(STRUCTS) > 30
    for cls in STRUCTS:
        config = cls.__struct_config__
        assert config.frozen, cls
        assert config.forbid_unknown_fields, cls
        assert cls.__doc__ and cls.__doc__.strip(), cls


def test_structs_are_keyword_only():
    with pytest.raises(TypeError):
        Mock(200)  # type: ignore[misc]


def test_a_document_cannot_be_modified():
    doc = Document(version=1)
    with pytest.raises(AttributeError):
        doc.version = 2  # type: ignore[misc]
    backend = Backend(type="mock", mock=Mock())
    with pytest.raises(AttributeError):
        backend.timeout_ms = 1  # type: ignore[misc]


def test_sequences_are_tuples_so_the_tree_is_immutable():
    doc = msgspec.convert({"version": 1, "environments": [{"name": "TEST"}]}, Document)
    assert doc.environments == (model.Environment(name="TEST"),)
    assert isinstance(doc.apis, tuple)


def test_document_fields_are_the_contract_names():
    assert Document.__struct_fields__ == (
        "version", "apps", "iam", "environments", "redis", "trusted_proxies", "certificates",
        "app_quotas", "groups", "channels", "authorizers", "throttles", "acls", "signature_keys",
        "apis", "datasources", "products", "devices", "rules")


def test_document_defaults_are_empty_except_version():
    doc = Document(version=1)
    assert doc.apps == doc.environments == doc.groups == doc.apis == doc.rules == ()
    assert doc.iam == model.Iam()
    assert doc.iam.users == () and doc.iam.jwt is None
    with pytest.raises(msgspec.ValidationError, match="missing required field `version`"):
        msgspec.convert({}, Document)


def test_environment_names_always_start_with_release():
    assert Document(version=1).environment_names() == ("RELEASE",)
    doc = msgspec.convert({"version": 1, "environments": [{"name": "TEST"}, {"name": "RELEASE"}]},
                          Document)
    assert doc.environment_names() == ("RELEASE", "TEST")


def test_backend_defaults():
    b = Backend()
    assert (b.type, b.url, b.channel, b.path, b.method) == ("http", None, None, None, None)
    assert (b.timeout_ms, b.retries, b.host_header) == (5000, -1, None)
    assert (b.params, b.mock, b.function, b.data) == ((), None, None, None)


def test_mock_defaults():
    assert (Mock().status, Mock().headers, Mock().body) == (200, {}, "")


def test_api_defaults():
    api = msgspec.convert({"name": "a", "group": "g", "method": "GET", "path": "/",
                           "backend": {"type": "mock", "mock": {}}}, Api)
    assert (api.match_mode, api.auth, api.authorizer) == ("exact", "none", None)
    assert (api.app_code_auth, api.cors, api.params, api.environments) == (False, False, (), {})


def test_policy_and_channel_defaults():
    t = msgspec.convert({"name": "t", "api_limit": 10}, Throttle)
    assert (t.interval, t.unit, t.user_limit, t.shared, t.specials) == (1, "second", None, False, ())
    c = msgspec.convert({"name": "c", "port": 80}, Channel)
    assert (c.balance, c.members, c.health_check) == ("wrr", (), None)
    m = Member(host="h")
    assert (m.port, m.weight, m.backup, m.enabled, m.group) == (0, 1, False, True, None)
    hc = HealthCheck()
    assert (hc.protocol, hc.path, hc.method, hc.healthy_threshold, hc.unhealthy_threshold) == \
        ("tcp", "/", "GET", 2, 5)
    assert Binding() == Binding(throttle=None, acl=None, signature_key=None, apps=())
    assert Group(name="g").variables == {} and Group(name="g").domains == ()


def test_enumerations_are_the_contract_sets():
    assert set(get_args(model.Method)) == {"GET", "POST", "PUT", "DELETE", "PATCH", "HEAD",
                                           "OPTIONS", "ANY"}
    fields = {f.name: f.type for f in msgspec.structs.fields(Backend)}
    assert set(get_args(fields["type"])) == {"http", "mock", "function", "data"}
    api_fields = {f.name: f.type for f in msgspec.structs.fields(Api)}
    assert set(get_args(api_fields["match_mode"])) == {"exact", "prefix"}
    assert set(get_args(api_fields["auth"])) == {"app", "iam", "custom", "none"}
    channel_fields = {f.name: f.type for f in msgspec.structs.fields(Channel)}
    assert set(get_args(channel_fields["balance"])) == {"wrr", "wlc", "source_hash", "uri_hash"}
    assert set(get_args(model.TimeUnit)) == {"second", "minute", "hour", "day"}


@pytest.mark.parametrize(("cls", "data", "ok"), [
    (Backend, {"timeout_ms": 1}, True),
    (Backend, {"timeout_ms": 600000}, True),
    (Backend, {"timeout_ms": 0}, False),
    (Backend, {"timeout_ms": 600001}, False),
    (Backend, {"retries": -1}, True),
    (Backend, {"retries": 10}, True),
    (Backend, {"retries": -2}, False),
    (Backend, {"retries": 11}, False),
    (Member, {"host": "h", "weight": 0}, True),
    (Member, {"host": "h", "weight": 10000}, True),
    (Member, {"host": "h", "weight": 10001}, False),
    (Mock, {"status": 100}, True),
    (Mock, {"status": 599}, True),
    (Mock, {"status": 99}, False),
    (Mock, {"status": 600}, False),
    (Group, {"name": "parking"}, True),
    (Group, {"name": "9parking"}, False),
    (Group, {"name": "a b"}, False),
    (Group, {"name": "parking", "domains": ["api.example.com"]}, True),
    (Group, {"name": "parking", "domains": ["API.example.com"]}, False),
    (Group, {"name": "parking", "domains": ["api.example.com:80"]}, False),
])
def test_ranges_and_patterns_are_enforced(cls, data, ok):
    if ok:
        msgspec.convert(data, cls)
    else:
        with pytest.raises(msgspec.ValidationError):
            msgspec.convert(data, cls)


def test_backend_method_none_means_the_api_method_and_any_is_allowed():
    assert Backend().method is None
    assert msgspec.convert({"method": "ANY"}, Backend).method == "ANY"


def test_rule_destinations_are_tagged_by_type():
    rule = msgspec.convert({"name": "r", "source": {"product": "p"}, "destinations": [
        {"type": "redis_stream", "stream": "s"}, {"type": "http", "api": "a"},
        {"type": "mqtt", "topic": "t"}, {"type": "sql", "datasource": "d", "table": "t"}]},
        model.Rule)
    assert [type(d) for d in rule.destinations] == [
        model.RedisStreamDestination, model.HttpDestination, model.MqttDestination,
        model.SqlDestination]


def test_json_round_trip_keeps_the_contract_names():
    doc = msgspec.convert({"version": 1, "apis": [{
        "name": "a", "group": "g", "method": "GET", "path": "/x",
        "backend": {"type": "mock", "mock": {"status": 201}}, "environments": {"RELEASE": {}}}]},
        Document)
    assert msgspec.json.decode(msgspec.json.encode(doc), type=Document) == doc
    raw = msgspec.json.decode(msgspec.json.encode(doc))
    assert raw["apis"][0]["backend"]["timeout_ms"] == 5000
    assert raw["apis"][0]["environments"] == {"RELEASE": {"throttle": None, "acl": None,
                                                          "signature_key": None, "apps": []}}

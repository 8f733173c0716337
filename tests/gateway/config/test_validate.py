"""Semantic validation: names, references, variables, backends, routes, and refused features."""
from __future__ import annotations

import copy
from typing import Any

import msgspec
import pytest

from gateway.config import Document, validate


def mock_api(name: str = "a", path: str = "/a", **extra: Any) -> dict[str, Any]:
    api = {"name": name, "group": "g", "method": "GET", "path": path,
           "backend": {"type": "mock", "mock": {"body": "hi"}}, "environments": {"RELEASE": {}}}
    api.update(extra)
    return api


def http_api(url: str, name: str = "h", path: str = "/h/{id}", envs=("RELEASE",),
             **backend: Any) -> dict[str, Any]:
    return mock_api(name, path, backend={"type": "http", "url": url, **backend},
                    environments={e: {} for e in envs})


def check(apis: list[dict[str, Any]] | None = None, **sections: Any) -> list[str]:
    raw: dict[str, Any] = {"version": 1, "groups": [{"name": "g"}],
                           "apis": [mock_api()] if apis is None else apis}
    raw.update(sections)
    return validate(msgspec.convert(raw, Document))


def test_a_valid_document_has_no_errors():
    assert check() == []
    assert check(apis=[]) == []
    assert validate(Document(version=1)) == []


# --------------------------------------------------------------------------------------------------
# Names

@pytest.mark.parametrize(("kind", "item"), [
    ("apps", {"name": "x"}), ("environments", {"name": "x"}), ("channels", {"name": "x", "port": 1}),
    ("authorizers", {"name": "x", "url": "http://h/a"}), ("throttles", {"name": "x", "api_limit": 1}),
    ("acls", {"name": "x", "action": "PERMIT", "values": ["127.0.0.1"]}),
    ("signature_keys", {"name": "x", "key": "k", "secret": "s"}),
    ("datasources", {"name": "x", "url": "sqlite:///x.db"}), ("products", {"name": "x"}),
    ("rules", {"name": "x", "source": {"product": "p"}, "destinations": [{"type": "mqtt", "topic": "t"}]}),
])
def test_names_are_unique_per_kind(kind, item):
    extra = {"products": [{"name": "p"}]} if kind == "rules" else {}
    errors = check(**extra, **{kind: [item, copy.deepcopy(item)]})
    assert f"{kind}[1].name: duplicate name 'x'" in errors


def test_duplicate_group_and_api_names():
    errors = check(groups=[{"name": "parking"}, {"name": "g"}, {"name": "parking"}],
                   apis=[mock_api("a", "/a"), mock_api("a", "/b")])
    assert errors == ["groups[2].name: duplicate name 'parking'", "apis[1].name: duplicate name 'a'"]


def test_release_may_be_listed_but_not_twice():
    assert check(environments=[{"name": "RELEASE"}]) == []
    assert check(environments=[{"name": "RELEASE"}, {"name": "RELEASE"}]) == \
        ["environments[1].name: duplicate name 'RELEASE'"]


def test_nested_names_are_unique():
    errors = check(channels=[{"name": "c", "port": 80, "member_groups": [{"name": "m"}, {"name": "m"}]}],
                   products=[{"name": "p", "services": [{"name": "s", "properties": [
                       {"name": "x"}, {"name": "x"}]}]}])
    assert errors == ["channels[0].member_groups[1].name: duplicate name 'm'",
                      "products[0].services[0].properties[1].name: duplicate name 'x'"]


# --------------------------------------------------------------------------------------------------
# References

def test_api_references_must_exist():
    errors = check(apis=[mock_api(group="nope", environments={"RELEASE": {}, "PROD": {}})])
    assert errors == ["apis[0].group: unknown group 'nope'",
                      "apis[0].environments.PROD: unknown environment 'PROD'"]


def test_release_is_implicit_and_listed_environments_exist():
    assert check(apis=[mock_api(environments={"RELEASE": {}, "TEST": {}})],
                 environments=[{"name": "TEST"}]) == []


def test_binding_references_must_exist():
    api = mock_api(backend={"type": "http", "url": "http://h/x"}, auth="app", environments={"RELEASE": {"throttle": "t", "acl": "a",
                                                          "signature_key": "k", "apps": ["x"]}})
    errors = [e for e in check(apis=[api]) if "not supported in this version" not in e]
    assert errors == ["apis[0].environments.RELEASE.throttle: unknown throttle 't'",
                      "apis[0].environments.RELEASE.acl: unknown acl 'a'",
                      "apis[0].environments.RELEASE.signature_key: unknown signature key 'k'",
                      "apis[0].environments.RELEASE.apps[0]: unknown app 'x'"]


def test_authorizer_reference_must_exist():
    errors = [e for e in check(apis=[mock_api(authorizer="z")]) if "not supported in this version" not in e]
    assert errors == ["apis[0].authorizer: unknown authorizer 'z'"]


def test_group_variables_environments_must_exist():
    assert check(groups=[{"name": "g", "variables": {"PROD": {"host": "x"}}}]) == \
        ["groups[0].variables.PROD: unknown environment 'PROD'"]


def test_channel_references():
    api = mock_api(backend={"type": "http", "channel": "nope", "path": "/x"})
    errors = [e for e in check(apis=[api], channels=[
        {"name": "c", "port": 80, "members": [{"host": "127.0.0.1", "group": "m"}]}])
        if "not supported in this version" not in e]
    assert errors == ["channels[0].members[0].group: unknown member group 'm'",
                      "apis[0].backend.channel: unknown channel 'nope'"]


def test_device_and_rule_references():
    errors = check(products=[{"name": "p"}, {"name": "q"}],
                   devices=[{"name": "d1", "product": "nope", "identifier": "i1"},
                            {"name": "d2", "product": "q", "identifier": "i2"}],
                   rules=[{"name": "r", "source": {"product": "zz"}, "destinations": [
                       {"type": "sql", "datasource": "db", "table": "t"}]},
                          {"name": "r2", "source": {"product": "p", "device": "d2"},
                           "destinations": [{"type": "http", "api": "defined-elsewhere"}]}])
    assert errors == ["devices[0].product: unknown product 'nope'",
                      "rules[0].source.product: unknown product 'zz'",
                      "rules[0].destinations[0].datasource: unknown datasource 'db'",
                      "rules[1].source.device: device 'd2' is of product 'q', not 'p'"]


def test_data_backend_datasource_must_exist():
    api = mock_api(backend={"type": "data", "data": {"datasource": "db", "statement": "SELECT 1"}})
    errors = [e for e in check(apis=[api]) if "not supported in this version" not in e]
    assert errors == ["apis[0].backend.data.datasource: unknown datasource 'db'"]


# --------------------------------------------------------------------------------------------------
# Environment variables

GROUP_VARS = [{"name": "g", "variables": {"RELEASE": {"lot_backend": "127.0.0.1:9001"},
                                          "TEST": {"other": "x"}}}]


def test_variables_defined_in_every_published_environment_are_fine():
    groups = [{"name": "g", "variables": {"RELEASE": {"lot_backend": "127.0.0.1:9001"},
                                          "TEST": {"lot_backend": "127.0.0.1:9002"}}}]
    api = http_api("http://#lot_backend#/lots/{id}", envs=("RELEASE", "TEST"))
    assert check(apis=[api], groups=groups, environments=[{"name": "TEST"}]) == []


def test_an_undefined_variable_names_the_environment_and_the_variable():
    api = http_api("http://#lot_backend#/lots/{id}", envs=("RELEASE", "TEST"))
    assert check(apis=[api], groups=GROUP_VARS, environments=[{"name": "TEST"}]) == [
        "apis[0].backend.url: variable 'lot_backend' is not defined for environment 'TEST' "
        "(groups[0].variables.TEST)"]


def test_variables_are_not_needed_where_the_api_is_not_published():
    api = http_api("http://#lot_backend#/lots/{id}", envs=("RELEASE",))
    assert check(apis=[api], groups=GROUP_VARS, environments=[{"name": "TEST"}]) == []


def test_variable_names_are_checked():
    groups = [{"name": "g", "variables": {"RELEASE": {"ab": "x", "9ab": "x", "ok_1": "x"}}}]
    errors = check(groups=groups)
    assert errors == [
        "groups[0].variables.RELEASE.ab: invalid variable name 'ab' (3-32 characters: a letter, "
        "then letters, digits, '_' or '-')",
        'groups[0].variables.RELEASE["9ab"]: invalid variable name \'9ab\' (3-32 characters: a '
        "letter, then letters, digits, '_' or '-')"]
    errors = check(apis=[http_api("http://#ab#/x")])
    assert errors == ["apis[0].backend.url: invalid variable name '#ab#' (3-32 characters: a "
                      "letter, then letters, digits, '_' or '-')"]


def test_a_lone_hash_in_a_url_is_refused():
    assert check(apis=[http_api("http://127.0.0.1/x#frag", path="/h")]) == [
        "apis[0].backend.url: a lone '#' (variables are written #name#; a url has no fragment)"]


def test_the_url_is_checked_with_the_values_of_each_environment():
    groups = [{"name": "g", "variables": {"RELEASE": {"host": "127.0.0.1:99999"}}}]
    errors = check(apis=[http_api("http://#host#/x", path="/h")], groups=groups)
    assert len(errors) == 1
    assert errors[0].startswith("apis[0].backend.url: in environment 'RELEASE': invalid url: ")


# --------------------------------------------------------------------------------------------------
# Backends

def test_http_backend_needs_url_or_channel():
    api = mock_api(backend={"type": "http"})
    assert check(apis=[api]) == ["apis[0].backend: an http backend needs url or channel (one of them)"]
    api = mock_api(backend={"type": "http", "url": "http://h/", "channel": "c"})
    assert "apis[0].backend: an http backend needs url or channel (one of them)" in check(apis=[api])


def test_channel_backend_needs_path_and_url_backend_has_none():
    api = mock_api(backend={"type": "http", "channel": "c"})
    errors = check(apis=[api], channels=[{"name": "c", "port": 80}])
    assert "apis[0].backend.path: a channel backend needs path" in errors
    api = mock_api(backend={"type": "http", "url": "http://h/", "path": "/x"})
    assert check(apis=[api]) == \
        ["apis[0].backend.path: path is only used with channel; put the path in url"]


def test_backend_url_must_be_http_or_https():
    assert check(apis=[http_api("ftp://h/x", path="/h")]) == \
        ["apis[0].backend.url: expected a url starting with http:// (or https://)"]
    assert check(apis=[http_api("https://h/x", path="/h")]) == []
    assert check(apis=[http_api("https://h/x", path="/h2", tls={"client_cert": "c.pem"})]) == \
        ["apis[0].backend.tls: client_cert and client_key go together"]


@pytest.mark.parametrize(("url", "message"), [
    ("http://h/x?a=1", "a backend url has no query (use backend params)"),
    ("http://u:p@h/x", "credentials do not belong in the url (use backend params)"),
    ("http:///x", "invalid host in 'http:///x'"),
    ("http://h:0/x", "invalid port 0"),
    ("http://h/a b", "spaces or control characters in the url"),
])
def test_backend_url_shape(url, message):
    assert check(apis=[http_api(url, path="/h")]) == [f"apis[0].backend.url: {message}"]


def test_backend_path_parameters_must_be_api_path_parameters():
    assert check(apis=[http_api("http://h/lots/{id}", path="/h/{id}")]) == []
    assert check(apis=[http_api("http://h/lots/{lot}", path="/h/{id}")]) == \
        ["apis[0].backend.url: '{lot}' is not a path parameter of the API"]
    assert check(apis=[http_api("http://{id}/x", path="/h/{id}")]) == \
        ["apis[0].backend.url: {parameters} may appear only in the path of the url"]


def test_mock_backend_needs_mock_and_nothing_of_http():
    api = mock_api(backend={"type": "mock", "url": "http://h/"})
    assert check(apis=[api]) == ["apis[0].backend.url: not used by mock backends",
                                 "apis[0].backend.mock: a mock backend needs mock"]
    api = mock_api(backend={"type": "http", "url": "http://h/", "mock": {}})
    assert check(apis=[api]) == ["apis[0].backend.mock: not used by http backends"]


def test_mock_headers_and_status_are_checked():
    api = mock_api(backend={"type": "mock", "mock": {
        "status": 204, "body": "x", "headers": {"Content-Length": "5", "bad name": "v", "x": "a\r\nb"}}})
    assert check(apis=[api]) == [
        "apis[0].backend.mock.body: a 204 response has no body",
        "apis[0].backend.mock.headers.Content-Length: 'Content-Length' is set by the gateway",
        "apis[0].backend.mock.headers[\"bad name\"]: invalid header name 'bad name'",
        "apis[0].backend.mock.headers.x: a header value has no CR, LF or NUL"]
    api = mock_api(backend={"type": "mock", "mock": {"status": 101}})
    assert check(apis=[api]) == \
        ["apis[0].backend.mock.status: an informational (1xx) status cannot answer a request"]


# --------------------------------------------------------------------------------------------------
# Path templates and routes

@pytest.mark.parametrize(("path", "message"), [
    ("/a//b", "empty path segment ('//')"),
    ("/a/../b", "'..' is not allowed as a path segment"),
    ("/a/x{id}", "a parameter is a whole segment written {name} or {name+}, got 'x{id}'"),
    ("/{rest+}/a", "{rest+} must be the last segment"),
    ("/{id}/{id}", "parameter 'id' appears twice"),
    ("/a?b=1", "a path has no '?' or '#' (query parameters are params)"),
    ("/a b", "invalid character in path segment 'a b'"),
    ("/a/%2e%2E/b", "'%2e%2E' is not allowed as a path segment"),
    ("/a/%zz", "invalid character in path segment '%zz'"),
    ("/{a.b}", "a parameter is a whole segment written {name} or {name+}, got '{a.b}'"),
])
def test_path_templates(path, message):
    assert check(apis=[mock_api(path=path)]) == [f"apis[0].path: {message}"]


def test_good_path_templates():
    for path in ("/", "/a/", "/a/{id}", "/a/{rest+}", "/v1/{a}/b/{c}", "/a:b@c", "/a/%7E%2F",
                 "/{_x-1}"):
        assert check(apis=[mock_api(path=path)]) == [], path


def test_two_apis_on_the_same_route_in_the_same_environment_conflict():
    errors = check(apis=[mock_api("a", "/x/{id}"), mock_api("b", "/x/{other}")])
    assert errors == ["apis[1].path: the same method and path as apis[0] ('a') in environment 'RELEASE'"]


@pytest.mark.parametrize(("first", "second"), [("/a", "/a/"), ("/x/~", "/x/%7e"), ("/%2f", "/%2F"),
                                               ("/a/{x+}", "/a/{y+}")])
def test_routes_collide_as_the_router_compares_them(first, second):
    errors = check(apis=[mock_api("a", first), mock_api("b", second)])
    assert errors == ["apis[1].path: the same method and path as apis[0] ('a') in environment 'RELEASE'"]


def test_routes_that_differ_do_not_conflict():
    assert check(apis=[mock_api("a", "/x"), mock_api("b", "/x", method="POST"),
                       mock_api("c", "/x", match_mode="prefix"),
                       mock_api("d", "/x", environments={"TEST": {}}),
                       mock_api("e", "/x", group="h")],
                 environments=[{"name": "TEST"}],
                 groups=[{"name": "g"}, {"name": "h", "domains": ["api.example.com"]}]) == []


def test_a_domain_belongs_to_one_group():
    assert check(groups=[{"name": "g", "domains": ["a.example"]},
                         {"name": "h", "domains": ["a.example"]}]) == \
        ["groups[1].domains[0]: domain 'a.example' already used by group 'g'"]


# --------------------------------------------------------------------------------------------------
# Policies and other resources

def test_throttle_limits_are_ordered():
    errors = check(throttles=[{"name": "t", "api_limit": 10, "user_limit": 20, "app_limit": 30,
                               "ip_limit": 11, "specials": [{"app": "nope", "limit": 5},
                                                            {"limit": 5}]}])
    assert errors == ["throttles[0].user_limit: must not exceed api_limit",
                      "throttles[0].app_limit: must not exceed user_limit",
                      "throttles[0].ip_limit: must not exceed api_limit",
                      "throttles[0].specials[0].app: unknown app 'nope'",
                      "throttles[0].specials[1]: give app or user (one of them)"]


def test_acl_ip_values():
    acl = {"name": "a", "action": "DENY",
           "values": ["10.0.0.1", "10.0.0.0/8", "10.0.0.1-10.0.0.9", "::1", "nope", "10.0.0.9-10.0.0.1"]}
    assert check(acls=[acl]) == [
        "acls[0].values[4]: expected an IP address, a range 'a-b' or a CIDR, got 'nope'",
        "acls[0].values[5]: expected an IP address, a range 'a-b' or a CIDR, got '10.0.0.9-10.0.0.1'"]
    assert check(acls=[{"name": "a", "action": "PERMIT", "entity": "account", "values": ["acme"]}]) == []


def test_acl_account_values():
    acl = {"name": "a", "action": "DENY", "entity": "account",
           "values": ["acme", "10.0.0.1", "acme", " builders", "Acme"]}
    assert check(acls=[acl]) == [
        "acls[0].values[2]: account 'acme' listed twice",
        "acls[0].values[3]: an account name has no leading or trailing blanks, got ' builders'"]


@pytest.mark.parametrize("auth, errors", [
    ("iam", []),
    ("app", ["apis[0].environments.TEST.acl: account ACL 'who' applies to APIs with auth: iam "
             "(only IAM callers have an account)"]),
    ("none", ["apis[0].environments.TEST.acl: account ACL 'who' applies to APIs with auth: iam "
              "(only IAM callers have an account)"]),
])
def test_account_acls_are_bound_to_iam_apis(auth, errors):
    api = mock_api(auth=auth, environments={"RELEASE": {"acl": "ip"}, "TEST": {"acl": "who"}})
    assert check(apis=[api], environments=[{"name": "TEST"}],
                 iam={"users": [{"name": "u", "account": "acme", "access_key": "AK",
                                 "secret_key": "SK"}]},
                 acls=[{"name": "ip", "action": "DENY", "values": ["10.0.0.1"]},
                       {"name": "who", "action": "PERMIT", "entity": "account",
                        "values": ["acme"]}]) == errors


def test_app_keys_are_unique():
    assert check(apps=[{"name": "a", "key": "k" * 10}, {"name": "b", "key": "k" * 10}]) == \
        ["apps[1].key: the same key as apps[0]"]


def test_channel_health_check():
    channel = {"name": "c", "port": 80, "health_check": {"timeout_s": 5, "interval_s": 5,
                                                         "http_codes": "200-299,700"}}
    assert check(channels=[channel]) == [
        "channels[0].health_check.timeout_s: must be less than interval_s",
        "channels[0].health_check.http_codes: expected codes 100-599 like '200,201' or '200-299'"]


def test_authorizer_needs_url_or_function_and_identities_when_cached():
    assert check(authorizers=[{"name": "x", "ttl_s": 10}]) == [
        "authorizers[0]: give url or function (one of them)",
        "authorizers[0].identities: a cached authorizer (ttl_s > 0) needs identities "
        "(they are the cache key)"]


def test_datasource_url_scheme():
    assert check(datasources=[{"name": "d", "url": "mongodb://x"}]) == [
        "datasources[0].url: expected a url starting with sqlite://, postgresql://, postgres://, "
        "mysql://"]


# --------------------------------------------------------------------------------------------------
# Refused features

def test_every_auth_kind_is_served_and_iam_needs_callers():
    assert check(apis=[mock_api(auth="app")]) == []
    assert check(apis=[mock_api(auth="iam")]) == [
        "apis[0].auth: auth: iam needs IAM callers: iam.users (AK/SK) or iam.jwt (tokens)"]
    assert check(apis=[mock_api(auth="iam")],
                 iam={"jwt": {"jwks_url": "https://iam.test/jwks.json"}}) == []
    assert check(apis=[mock_api(auth="custom", authorizer="z")],
                 authorizers=[{"name": "z", "url": "http://h/"}]) == []
    assert check(apis=[mock_api(auth="custom")],
                 authorizers=[{"name": "z", "url": "http://h/"}]) == [
        "apis[0].authorizer: auth: custom needs an authorizer"]


def test_apps_are_authorized_for_app_auth_apis_only():
    assert check(apps=[{"name": "x", "key": "key-of-x-1", "secret": "secret-of-x"}],
                 apis=[mock_api(environments={"RELEASE": {"apps": ["x"]}})]) == [
        "apis[0].environments.RELEASE.apps: apps are authorized for APIs with auth: app only"]


def test_app_codes_and_key_headers_need_app_auth():
    assert check(apis=[mock_api(app_code_auth=True, app_api_key=True)]) == [
        "apis[0].app_code_auth: AppCodes are accepted by APIs with auth: app only",
        "apis[0].app_api_key: app keys and secrets are accepted by APIs with auth: app only"]
    assert check(apis=[mock_api(auth="app", app_code_auth=True, app_api_key=True)]) == []


def test_an_app_acl_is_served_and_its_values_checked():
    assert check(apps=[{"name": "x", "acl": {"action": "PERMIT",
                                             "values": ["10.0.0.0/8", "::1", "10.0.0.1-10.0.0.9"]}}]) == []
    errors = check(apps=[{"name": "x", "acl": {"action": "DENY", "values": ["10.0.0.300"]}}])
    assert [e.split(": ", 1)[0] for e in errors] == ["apps[0].acl.values[0]"]


def test_backend_parameters_and_signature_keys_are_for_http_backends():
    params = [{"name": "X-A", "location": "header", "origin": "constant", "value": "v"}]
    assert check(apis=[mock_api(backend={"type": "http", "url": "http://h/", "params": params},
                                environments={"RELEASE": {"signature_key": "k"}})],
                 signature_keys=[{"name": "k", "key": "k", "secret": "s"}]) == []
    assert check(apis=[mock_api(backend={"type": "mock", "mock": {}, "params": params},
                                environments={"RELEASE": {"signature_key": "k"}})],
                 signature_keys=[{"name": "k", "key": "k", "secret": "s"}]) == [
        "apis[0].backend.params: backend parameters apply to http backends",
        "apis[0].environments: a signature key signs requests to http backends"]


@pytest.mark.parametrize(("api", "path"), [
    (mock_api(backend={"type": "function", "function": "pkg.mod:fn"}), "apis[0].backend.type"),
    (mock_api(backend={"type": "data", "data": {"datasource": "z", "statement": "SELECT 1"}}),
     "apis[0].backend.type"),
])
def test_unimplemented_features_are_refused(api, path):
    refused = [e for e in check(apis=[api], authorizers=[{"name": "z", "url": "http://h/"}],
                                channels=[{"name": "c", "port": 80}],
                                datasources=[{"name": "z", "url": "sqlite:///x"}],
                                throttles=[{"name": "t", "api_limit": 1}],
                                acls=[{"name": "a", "action": "DENY", "values": ["10.0.0.1"]}],
                                signature_keys=[{"name": "k", "key": "k", "secret": "s"}],
                                apps=[{"name": "x"}])
               if "not supported in this version" in e]
    assert [e.split(": ", 1)[0] for e in refused] == [path]


def test_definitions_of_unused_kinds_are_accepted():
    assert check(apps=[{"name": "x"}], throttles=[{"name": "t", "api_limit": 1}],
                 channels=[{"name": "c", "port": 80, "members": [{"host": "127.0.0.1"}]}],
                 authorizers=[{"name": "z", "function": "pkg.mod:fn"}],
                 iam={"users": [{"name": "u", "account": "a", "access_key": "AK", "secret_key": "SK"}]},
                 signature_keys=[{"name": "k", "key": "k", "secret": "s"}]) == []


# --------------------------------------------------------------------------------------------------
# Fields the contract grew: checked now, refused until this version serves them

@pytest.mark.parametrize(("sections", "path"), [
    ({"apis": [mock_api(conditional_backends=[{
        "name": "canary", "conditions": [{"source": "source_ip", "op": "cidr", "value": "10.0.0.0/8"}],
        "backend": {"type": "mock", "mock": {"body": "canary"}}}])]}, "apis[0].conditional_backends"),
])
def test_new_contract_fields_are_refused_in_this_version(sections, path):
    errors = check(**sections)
    assert errors == [e for e in errors if e.endswith("not supported in this version")], errors
    assert [e.split(": ", 1)[0] for e in errors] == [path]


def test_new_contract_definitions_alone_are_accepted():
    assert check(app_quotas=[{"name": "q", "limit": 100, "interval": 1, "unit": "day",
                              "reset_time": "08:30"}],
                 iam={"jwt": {"jwks_url": "https://iam.test/jwks.json", "leeway_s": 30}}) == []


def test_references_and_shapes_of_the_new_fields():
    errors = check(
        apps=[{"name": "x", "quota": "nope"}],
        iam={"jwt": {"jwks_url": "ftp://iam.test/jwks"}},
        trusted_proxies=["10.0.0.0/8", "not-an-ip"],
        certificates=[
            {"name": "a", "cert": "a.pem", "key": "a.key", "domains": ["shop.test", "*.shop.test"],
             "default": True},
            {"name": "b", "cert": "b.pem", "key": "b.key", "domains": ["SHOP.test", "bad_host!"],
             "default": True}],
        apis=[http_api("http://h/x", authorizer="front")],
        authorizers=[{"name": "front", "url": "http://h/auth"}])
    assert [e for e in errors if not e.endswith("in this version")] == [
        "apps[0].quota: unknown app quota 'nope'",
        "iam.jwt.jwks_url: expected a url starting with http:// or https://",
        "trusted_proxies[1]: expected an IP address or a CIDR, got 'not-an-ip'",
        "certificates[1].default: certificates[0] is already the default",
        "certificates[1].domains[0]: domain 'SHOP.test' is already served by certificates[0]",
        "certificates[1].domains[1]: expected a host name, optionally with a leading '*.' "
        "(a wildcard for one label)",
        "apis[0].backend.authorizer: a backend authorizer has type: backend",
    ]


def test_a_jwt_section_needs_a_source_of_keys():
    assert check(iam={"jwt": {"issuer": "x"}}) == [
        "iam.jwt: give keys, keys_file or jwks_url to check tokens with"]


@pytest.mark.parametrize(("condition", "message"), [
    ({"source": "source_ip", "op": "equal", "value": "10.0.0.1"},
     "op: a source_ip condition takes op: cidr"),
    ({"source": "source_ip", "op": "cidr", "value": "10.0.0.300/8"}, "value: expected a CIDR, got '10.0.0.300/8'"),
    ({"source": "param", "op": "equal", "value": "1"}, "name: a param condition names the parameter it reads"),
    ({"source": "param", "name": "X-Canary", "op": "enum", "value": "1"},
     "value: op: enum takes a non-empty list of values"),
    ({"source": "param", "name": "X-Canary", "op": "equal", "value": ["1", "2"]},
     "value: op: equal takes one value"),
    ({"source": "param", "name": "q", "op": "pattern", "value": "("},
     "value: invalid regular expression: missing ), unterminated subpattern at position 0"),
    ({"source": "system", "name": "$context.nope", "op": "equal", "value": "x"},
     "name: unknown system value '$context.nope'"),
    ({"source": "param", "name": "q", "op": "cidr", "value": "10.0.0.0/8"},
     "op: op: cidr is for source_ip conditions"),
])
def test_conditions_of_conditional_backends_are_checked(condition, message):
    api = mock_api(conditional_backends=[{"name": "c", "conditions": [condition],
                                          "backend": {"type": "mock", "mock": {"body": "c"}}}])
    errors = [e for e in check(apis=[api]) if not e.endswith("in this version")]
    assert errors == [f"apis[0].conditional_backends[0].conditions[0].{message}"]


def test_a_conditional_backend_is_checked_like_the_main_one():
    api = mock_api(conditional_backends=[
        {"name": "c", "conditions": [{"source": "system", "name": "$context.appName", "op": "enum",
                                      "value": ["a", "b"]}],
         "backend": {"type": "http", "url": "http://#missing#/x"}},
        {"name": "c", "conditions": [{"source": "param", "name": "q", "op": "pattern", "value": "^a+$"}],
         "percentage": 10, "backend": {"type": "mock", "mock": {"body": "c"}}}])
    errors = [e for e in check(apis=[api]) if not e.endswith("in this version")]
    assert errors == [
        "apis[0].conditional_backends[1].name: duplicate name 'c'",
        "apis[0].conditional_backends[0].backend.url: variable 'missing' is not defined for "
        "environment 'RELEASE' (groups[0].variables.RELEASE)",
    ]

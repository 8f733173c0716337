"""The OpenAPI document: generated from the Structs the server decodes with, so the schema and the
server accept and refuse the same bodies.  The schema side is checked with ``jsonschema`` (Draft
2020-12, the dialect of OpenAPI 3.1) when it is installed; the server side always."""
from __future__ import annotations

import json

import msgspec
import pytest

from control_plane import document as D
from control_plane import schema as S
from control_plane.kinds import KINDS, MASK, mask
from gateway.config import parse_document

from .examples import rich

OPENAPI = S.openapi()


def validator(name: str):
    jsonschema = pytest.importorskip("jsonschema")
    root = {"$ref": S.REF.format(name=name), "components": OPENAPI["components"]}
    return jsonschema.Draft202012Validator(root)


def schema_name(kind_name: str) -> str:
    return "Settings" if kind_name == "settings" else KINDS[kind_name].struct.__name__


def test_the_document_is_valid_openapi_3_1():
    validate = pytest.importorskip("openapi_spec_validator").validate
    validate(OPENAPI)
    assert OPENAPI["openapi"] == "3.1.0"
    json.dumps(OPENAPI)                         # plain JSON all the way down


def test_every_kind_has_its_schema_its_page_and_its_routes():
    schemas = OPENAPI["components"]["schemas"]
    for name, k in KINDS.items():
        assert k.struct.__name__ in schemas
        page = schemas[S.page_name(name)]
        assert page["required"] == ["items", "total", "offset", "limit"]
        assert set(OPENAPI["paths"][f"/v1/{name}"]) == {"get", "post"}
        assert {"get", "put", "patch", "delete"} <= set(OPENAPI["paths"][f"/v1/{name}/{{name}}"])
        params = [p["name"] for p in OPENAPI["paths"][f"/v1/{name}"]["get"]["parameters"]]
        assert params[:2] == ["offset", "limit"] and "name" in params
    assert "group" in [p["name"] for p in OPENAPI["paths"]["/v1/apis"]["get"]["parameters"]]
    for name in ("Settings", "Document", "Error", "Problem"):
        assert name in schemas
    assert set(schemas["Error"]["required"]) == {"error_code", "error_msg"}
    extra = S.openapi(extra_paths={"/v1/publish": {"post": {"responses": {}}}})
    assert "/v1/publish" in extra["paths"] and "/v1/apis" in extra["paths"]


def test_the_contract_example_resources_validate_plain_and_masked():
    settings, resources = D.split(parse_document(json.dumps(rich()), "json"))
    for name, bodies in resources.items():
        v = validator(schema_name(name))
        for body in bodies:
            v.validate(body)
            v.validate(mask(name, body))
    validator("Settings").validate(settings)
    validator("Settings").validate(mask("settings", settings))
    validator("Document").validate({**settings, **resources})
    page = {"items": resources["apis"], "total": 3, "offset": 0, "limit": 100}
    validator(S.page_name("apis")).validate(page)
    assert not validator(S.page_name("apis")).is_valid({**page, "total": -1})


BAD = [
    ("apis", {"name": "a", "group": "g", "method": "GET", "path": "/a", "backend": {},
              "colour": "red"}),                                           # unknown field
    ("apis", {"name": "a", "group": "g", "method": "FETCH", "path": "/a", "backend": {}}),
    ("apis", {"name": "a", "group": "g", "method": "GET", "path": "a", "backend": {}}),
    ("apis", {"name": "a", "group": "g", "method": "GET", "path": "/a",
              "backend": {"timeout_ms": 0}}),                              # below the range
    ("apis", {"group": "g", "method": "GET", "path": "/a", "backend": {}}),  # no name
    ("channels", {"name": "c", "port": "80"}),                             # wrong type
    ("channels", {"name": "c", "port": 70000}),
    ("apps", {"name": "1app"}),                                            # name pattern
    ("apps", {"name": "a", "secret": "short"}),                            # 5 chars, not a mask
    ("apps", {"name": "a", "app_codes": ["1", "2", "3", "4", "5", "6"]}),
    ("rules", {"name": "r", "source": {"product": "p"}, "destinations": [{"type": "ftp"}]}),
    ("rules", {"name": "r", "source": {"product": "p"}, "destinations": []}),
    ("throttles", {"name": "t", "api_limit": 0}),
    ("settings", {"version": 2}),
    ("settings", {"version": 1, "redis": {"url": "http://x"}}),
]

GOOD = [
    ("apis", {"name": "a", "group": "g", "method": "GET", "path": "/a", "backend": {}}),
    ("apps", {"name": "a"}),
    ("apps", {"name": "a", "secret": MASK, "app_codes": [MASK, "code"]}),
    ("signature_keys", {"name": "s"}),             # key and secret are generated
    ("settings", {"version": 1, "iam": {"users": [{"name": "u", "account": "a"}]}}),
    ("rules", {"name": "r", "source": {"product": "p"},
               "destinations": [{"type": "sql", "datasource": "d", "table": "t"}]}),
]


@pytest.mark.parametrize("kind_name, body", BAD)
def test_the_schema_and_the_server_refuse_the_same_bad_bodies(kind_name, body):
    with pytest.raises(D.DocumentError):
        D.create_body(kind_name, body)
    assert not validator(schema_name(kind_name)).is_valid(body)


@pytest.mark.parametrize("kind_name, body", GOOD)
def test_the_schema_and_the_server_accept_the_same_good_bodies(kind_name, body):
    if MASK in json.dumps(body):    # a mask is accepted where a stored secret stands behind it
        stored = {"name": "a", "secret": "stored-secret", "app_codes": ["c0"]}
        assert D.replace_body(kind_name, body, stored)[0]["app_codes"] == ["c0", "code"]
    else:
        D.create_body(kind_name, body)
    validator(schema_name(kind_name)).validate(body)


def test_an_error_answer_matches_the_error_schema():
    with pytest.raises(D.DocumentError) as info:
        D.create_body("apis", {"name": "a"})
    answer = S.ErrorBody(error_code="TG.4220", error_msg=str(info.value),
                         path=info.value.problems[0].path, errors=info.value.problems)
    validator("Error").validate(msgspec.to_builtins(answer))
    assert not validator("Error").is_valid({"error_msg": "no code"})

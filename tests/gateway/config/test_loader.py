"""Reading documents: YAML and JSON, the contract example, and the form of every kind of error."""
from __future__ import annotations

import copy
import json
import re
from pathlib import Path

import msgspec
import pytest
import yaml

from gateway.config import ConfigError, Document, load_document, parse_document
from gateway.config import loader

REPO = Path(__file__).resolve().parents[3]
CONTRACT = REPO.parent / "shared" / "spec" / "config-model.md"
# A copy of the contract's YAML example, kept in the repository: the spec lives beside the
# checkout on a workstation (../shared) but not in CI's clean checkout.
CONTRACT_COPY = Path(__file__).with_name("contract_example.yaml")
EXAMPLE = REPO / "tollgate" / "examples" / "gateway.yaml"


def contract_example() -> str:
    """The literal YAML example of spec/config-model.md (the contract other tools write)."""
    return CONTRACT_COPY.read_text(encoding="utf-8")


@pytest.mark.skipif(not CONTRACT.exists(), reason="../shared/spec/config-model.md is not beside this "
                    "checkout (CI): the copy cannot be compared with it here")
def test_the_copy_of_the_contract_example_is_current():
    m = re.search(r"```yaml\n(.*?)```", CONTRACT.read_text(encoding="utf-8"), re.S)
    assert m, f"no yaml example in {CONTRACT}"
    assert contract_example() == m.group(1), (
        f"the contract example changed: copy it from {CONTRACT} to {CONTRACT_COPY}")


def supported_example() -> dict:
    """The contract example minus the features the data plane refuses today."""
    raw = yaml.safe_load(contract_example())
    for name in ("redis", "certificates"):
        del raw[name]
    del raw["apps"][0]["quota"]
    raw["apps"][0].pop("acl", None)
    api = raw["apis"][0]
    for name in ("auth", "authorizer", "params", "conditional_backends"):
        del api[name]
    for name in ("params", "tls", "websocket_idle_timeout_ms"):
        del api["backend"][name]
    api["environments"] = {"RELEASE": {}, "TEST": {}}
    return raw


def errors_of(text: str | bytes, fmt: str = "yaml") -> list[str]:
    with pytest.raises(ConfigError) as info:
        parse_document(text, fmt)
    return info.value.errors


MINIMAL = """\
version: 1
groups: [{name: g}]
apis:
  - name: a
    group: g
    method: GET
    path: /a
    backend: {type: mock, mock: {body: hi}}
    environments: {RELEASE: {}}
"""


# --------------------------------------------------------------------------------------------------
# Valid documents

def test_the_contract_example_is_accepted_whole():
    doc = parse_document(contract_example())
    assert doc.channels[0].members[1].backup is True
    assert doc.apis[0].conditional_backends[0].conditions[1].value == ("1", "yes")


def test_the_contract_example_minus_refused_features_parses_from_yaml():
    doc = parse_document(yaml.safe_dump(supported_example()))
    api = doc.apis[0]
    assert (api.name, api.group, api.method, api.path) == \
        ("free-slots", "parking", "GET", "/parking/{lot}/free")
    assert api.backend.url == "http://#lot_backend#/lots/{lot}/free"
    assert (api.backend.timeout_ms, api.backend.retries, api.backend.host_header) == (5000, -1, None)
    assert set(api.environments) == {"RELEASE", "TEST"}
    assert doc.groups[0].variables["TEST"] == {"lot_backend": "127.0.0.1:9002"}
    assert doc.channels[0].members[1].backup is True
    assert doc.throttles[0].specials[1].user == "alice"
    assert doc.rules[0].destinations[3].mapping == {"DeviceId": "data.deviceId",
                                                     "Status": "data.status"}
    assert doc.environment_names() == ("RELEASE", "TEST")


def test_the_same_document_in_json_and_yaml_decodes_equal():
    raw = supported_example()
    from_yaml = parse_document(yaml.safe_dump(raw), "yaml")
    from_json = parse_document(json.dumps(raw), "json")
    assert from_json == from_yaml
    assert parse_document(json.dumps(raw).encode(), "json") == from_yaml


def test_the_shipped_example_config_loads():
    doc = load_document(EXAMPLE)
    assert {a.backend.type for a in doc.apis} == {"mock", "http"}
    http = next(a for a in doc.apis if a.backend.type == "http")
    assert "#" in http.backend.url and http.backend.url.startswith("http://")
    assert http.backend.url.split("#")[1] in doc.groups[0].variables["RELEASE"]
    assert all(set(a.environments) == {"RELEASE", "TEST"} for a in doc.apis)


def test_load_document_picks_the_format_by_suffix(tmp_path):
    raw = yaml.safe_load(MINIMAL)
    for name, text in [("c.yaml", MINIMAL), ("c.yml", MINIMAL), ("c.json", json.dumps(raw)),
                       ("c.conf", json.dumps(raw)), ("c.conf2", MINIMAL)]:
        path = tmp_path / name
        path.write_text(text)
        assert load_document(path).apis[0].backend.mock.body == "hi", name
        assert load_document(str(path)) == load_document(path)


def test_json_content_in_a_yaml_file_is_read_as_yaml(tmp_path):
    path = tmp_path / "c.yaml"
    path.write_text(json.dumps(yaml.safe_load(MINIMAL)))
    assert load_document(path).version == 1


def test_a_json_file_with_yaml_content_is_refused(tmp_path):
    path = tmp_path / "c.json"
    path.write_text(MINIMAL)
    with pytest.raises(ConfigError) as info:
        load_document(path)
    assert info.value.errors[0].startswith("(document): invalid JSON at line 1, column 1")
    assert info.value.source == str(path)


def test_parse_document_takes_text_or_bytes():
    assert parse_document(MINIMAL) == parse_document(MINIMAL.encode())


def test_an_unknown_format_is_a_programming_error():
    with pytest.raises(ValueError, match="unknown document format"):
        parse_document(MINIMAL, "toml")


def test_one_decoder_is_reused():
    assert isinstance(loader._JSON_DECODER, msgspec.json.Decoder)
    assert loader._JSON_DECODER.type is Document
    before = loader._JSON_DECODER
    parse_document(json.dumps(yaml.safe_load(MINIMAL)), "json")
    assert loader._JSON_DECODER is before


# --------------------------------------------------------------------------------------------------
# Structural errors: one line "path: message"

def broken(**changes) -> str:
    """MINIMAL with the API's backend (or more) replaced."""
    raw = yaml.safe_load(MINIMAL)
    for dotted, value in changes.items():
        node = raw
        *parents, last = dotted.split("__")
        for p in parents:
            node = node[int(p)] if isinstance(node, list) else node[p]
        node[last] = value
    return yaml.safe_dump(raw)


def test_unknown_field_at_depth_names_its_path_exactly():
    raw = yaml.safe_load(MINIMAL)
    raw["apis"] = [copy.deepcopy(raw["apis"][0]) for _ in range(4)]
    for i, api in enumerate(raw["apis"]):
        api["name"] = f"a{i}"
        api["path"] = f"/a{i}"
    raw["apis"][3]["backend"]["timout_ms"] = 3000
    for fmt, text in (("yaml", yaml.safe_dump(raw)), ("json", json.dumps(raw))):
        assert errors_of(text, fmt) == ["apis[3].backend.timout_ms: unknown field"]


def test_unknown_top_level_field():
    assert errors_of(MINIMAL + "servics: []\n") == ["servics: unknown field"]


def test_wrong_type_keeps_msgspec_wording_without_backticks():
    assert errors_of(broken(apis__0__backend__timeout_ms="3000")) == \
        ["apis[0].backend.timeout_ms: expected int, got str"]
    assert errors_of(broken(apis__0__cors="yes")) == ["apis[0].cors: expected bool, got str"]
    assert errors_of(broken(apis__0__backend=None)) == \
        ["apis[0].backend: expected object, got null"]


def test_bad_enum_value_lists_the_allowed_ones():
    assert errors_of(broken(apis__0__method="get")) == [
        "apis[0].method: invalid value 'get' "
        "(expected one of: GET, POST, PUT, DELETE, PATCH, HEAD, OPTIONS, ANY)"]
    assert errors_of(broken(apis__0__backend__type="lambda")) == [
        "apis[0].backend.type: invalid value 'lambda' (expected one of: http, mock, function, data)"]


def test_bad_tag_of_a_rule_destination_lists_the_types():
    text = MINIMAL + "rules: [{name: r, source: {product: p}, destinations: [{type: kafka}]}]\n"
    assert errors_of(text) == ["rules[0].destinations[0].type: invalid value 'kafka' "
                               "(expected one of: redis_stream, http, mqtt, sql)"]


def test_out_of_range():
    assert errors_of(broken(apis__0__backend__timeout_ms=600001)) == \
        ["apis[0].backend.timeout_ms: expected int <= 600000"]
    assert errors_of(broken(apis__0__backend__retries=-2)) == \
        ["apis[0].backend.retries: expected int >= -1"]
    assert errors_of(broken(apis__0__backend__mock__status=600)) == \
        ["apis[0].backend.mock.status: expected int <= 599"]


def test_bad_name_says_what_a_name_is():
    assert errors_of(broken(groups__0__name="1g")) == [
        "groups[0].name: expected a name: a letter, then up to 63 letters, digits, '_', '-' or '.'"]


def test_missing_required_field_names_the_field():
    raw = yaml.safe_load(MINIMAL)
    del raw["apis"][0]["path"]
    assert errors_of(yaml.safe_dump(raw)) == ["apis[0].path: missing required field"]
    del raw["version"]
    assert "version: missing required field" in errors_of(yaml.safe_dump(raw))


def test_unsupported_version():
    assert errors_of(MINIMAL.replace("version: 1", "version: 2")) == \
        ["version: unsupported version 2 (this gateway reads version 1)"]


def test_errors_inside_dicts_name_the_key():
    text = broken(groups__0__variables={"RELEASE": {"host": 9001}})
    assert errors_of(text) == ["groups[0].variables.RELEASE.host: expected str, got int"]
    text = broken(apis__0__environments={"RELEASE": {}, "TEST": {"thrtl": "x"}})
    assert errors_of(text) == ["apis[0].environments.TEST.thrtl: unknown field"]
    text = broken(apis__0__backend__mock__headers={"content type": 1})
    assert errors_of(text) == ['apis[0].backend.mock.headers["content type"]: expected str, got int']


def test_a_non_string_key_is_named_with_a_hint_for_yaml_booleans():
    text = MINIMAL.replace("groups: [{name: g}]", "groups: [{name: g, variables: {on: {}}}]")
    assert errors_of(text) == ["groups[0].variables: key True: expected str, got bool "
                               "(YAML reads yes/no/on/off/true/false as booleans: quote it)"]


def test_the_first_error_of_every_broken_item_is_reported():
    raw = yaml.safe_load(MINIMAL)
    raw["apps"] = [{"name": "x", "key": "short"}, {"name": "ok"}, {"name": "y", "zz": 1}]
    raw["apis"][0]["backend"]["timeout_ms"] = 0
    raw["bogus"] = 1
    assert errors_of(yaml.safe_dump(raw, sort_keys=False)) == [
        "apis[0].backend.timeout_ms: expected int >= 1",
        "apps[0].key: expected str of length >= 8",
        "apps[2].zz: unknown field",
        "bogus: unknown field",
    ]


def test_semantic_errors_are_all_reported_after_decoding():
    raw = yaml.safe_load(MINIMAL)
    raw["groups"].append({"name": "g"})
    raw["apis"][0]["group"] = "nope"
    raw["apis"][0]["environments"] = {"PROD": {}}
    assert errors_of(yaml.safe_dump(raw)) == [
        "groups[1].name: duplicate name 'g'",
        "apis[0].group: unknown group 'nope'",
        "apis[0].environments.PROD: unknown environment 'PROD'",
    ]


# --------------------------------------------------------------------------------------------------
# Syntax errors, empty and non-mapping documents

def test_bad_yaml_names_line_and_column():
    errors = errors_of("version: 1\napis:\n  - name: a\n   group: g\n")
    assert len(errors) == 1
    assert errors[0].startswith("(document): invalid YAML at line 4, column ")


def test_unclosed_yaml_flow_names_the_line():
    errors = errors_of("version: 1\napis: [\n")
    assert errors == ["(document): invalid YAML at line 3, column 1: "
                      "while parsing a flow node: did not find expected node content"]


def test_duplicate_yaml_keys_are_refused():
    text = MINIMAL.replace("    group: g\n", "    group: g\n    group: h\n")
    assert errors_of(text) == ["(document): invalid YAML at line 6, column 5: "
                               "while constructing a mapping: found duplicate key 'group'"]


def test_yaml_merge_keys_still_work():
    text = ("version: 1\ngroups: [{name: g}]\nx-backend: &b {type: mock, mock: {}}\n"
            "apis: [{name: a, group: g, method: GET, path: /a, backend: {<<: *b, type: mock}}]\n")
    # the anchor's holder is an unknown field: that, and only that, is reported
    assert errors_of(text) == ["x-backend: unknown field"]


def test_python_tags_are_refused_by_the_safe_loader():
    errors = errors_of("version: !!python/object/apply:os.getcwd []\n")
    assert errors[0].startswith("(document): invalid YAML at line 1")


def test_bad_json_names_line_and_column():
    assert errors_of('{\n  "version": 1,\n  "apis": [}\n}', "json") == \
        ["(document): invalid JSON at line 3, column 12: invalid character"]
    assert errors_of('{"version": 1,', "json") == \
        ["(document): invalid JSON: input data was truncated"]


@pytest.mark.parametrize(("text", "fmt"), [("", "yaml"), ("  \n", "yaml"), ("# nothing\n", "yaml"),
                                           ("", "json"), (b"\n", "json"), ("---\n", "yaml")])
def test_an_empty_document(text, fmt):
    assert errors_of(text, fmt) == ["(document): empty"]


def test_an_empty_file(tmp_path):
    path = tmp_path / "empty.yaml"
    path.write_bytes(b"")
    with pytest.raises(ConfigError) as info:
        load_document(path)
    assert info.value.errors == ["(document): empty"]


@pytest.mark.parametrize(("text", "fmt", "kind"), [
    ("- a\n- b\n", "yaml", "a list"), ("hello\n", "yaml", "a string"), ("42", "yaml", "a number"),
    ("[1]", "json", "a list"), ('"x"', "json", "a string")])
def test_a_top_level_non_mapping(text, fmt, kind):
    assert errors_of(text, fmt) == [f"(document): the top level must be a mapping, got {kind}"]


def test_a_missing_file_is_a_config_error(tmp_path):
    with pytest.raises(ConfigError) as info:
        load_document(tmp_path / "nope.yaml")
    assert info.value.errors[0].startswith(f"(document): cannot read {tmp_path / 'nope.yaml'}: ")


def test_config_error_str_is_one_error_per_line():
    exc = ConfigError(["a: one", "b: two"])
    assert exc.errors == ["a: one", "b: two"]
    assert str(exc) == "a: one\nb: two"
    assert ConfigError("c: three").errors == ["c: three"]
    assert exc.source is None

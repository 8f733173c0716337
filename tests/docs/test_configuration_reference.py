"""docs/configuration.md is the reference of the configuration document: it must describe exactly
the model (gateway.config.model), with its defaults and allowed values, and its examples must load.

Each Struct of the model is documented by a section headed with its path in the document
(``### `apis[].backend` ``) holding a table whose first column lists its fields (``| `name` |``) and
whose third gives the default (``required``, or the default as YAML: ``"http"``, ``5000``,
``null``, ``[]``, ``{}``).
"""
from __future__ import annotations

import json
import re
import types
from pathlib import Path
from typing import Annotated, Literal, Union, get_args, get_origin

import msgspec
import pytest
import yaml

from gateway.config import ConfigError, Document, parse_document

REFERENCE = Path(__file__).resolve().parents[2] / "docs" / "configuration.md"
TEXT = REFERENCE.read_text(encoding="utf-8")


def _strip(tp):
    while get_origin(tp) is Annotated:
        tp = get_args(tp)[0]
    return tp


def _members(tp):
    tp = _strip(tp)
    if get_origin(tp) in (Union, types.UnionType):
        return [_strip(a) for a in get_args(tp)]
    return [tp]


def _is_struct(tp):
    return isinstance(tp, type) and issubclass(tp, msgspec.Struct)


def model_sections() -> dict[str, list[type]]:
    """Path of every Struct in the document -> the Struct(s) found there (a tagged union has
    several), walking the model from Document; each Struct type is documented once."""
    found: dict[str, list[type]] = {}
    seen: set[type] = set()

    def walk(path, structs):
        new = [s for s in structs if s not in seen]
        if not new:
            return
        seen.update(new)
        found[path] = new
        for cls in new:
            for f in msgspec.structs.fields(cls):
                base = f"{path}.{f.encode_name}" if path != "(document)" else f.encode_name
                for m in _members(f.type):
                    origin = get_origin(m)
                    if origin is tuple:
                        items = [i for i in _members(get_args(m)[0]) if _is_struct(i)]
                        if items:
                            walk(base + "[]", items)
                    elif origin is dict:
                        value = _strip(get_args(m)[1])
                        if _is_struct(value):
                            walk(base + ".<ENV>", [value])
                    elif _is_struct(m):
                        walk(base, [m])

    walk("(document)", [Document])
    return found


def doc_sections() -> dict[str, dict[str, list[str]]]:
    """Section path -> {field: [cells of its row]} as written in the reference."""
    sections: dict[str, dict[str, list[str]]] = {}
    current = None
    for line in TEXT.splitlines():
        m = re.fullmatch(r"### `([^`]+)`", line)
        if m:
            current = sections.setdefault(m.group(1), {})
            continue
        if line.startswith("#"):
            current = None
            continue
        m = re.match(r"\| `([A-Za-z_0-9]+)` \|", line)
        if m and current is not None:
            cells = [c.strip() for c in line.strip().strip("|").split("|")]
            assert m.group(1) not in current, f"{m.group(1)} documented twice: {line}"
            current[m.group(1)] = cells
    return sections


def render_default(field: msgspec.structs.FieldInfo) -> str:
    if field.default is msgspec.NODEFAULT:
        return "required" if field.default_factory is msgspec.NODEFAULT else "`{}`"
    value = field.default
    if isinstance(value, tuple):
        value = list(value)
    return f"`{json.dumps(value)}`"


MODEL = model_sections()
DOC = doc_sections()


def test_every_struct_of_the_model_has_a_section_and_no_section_is_extra():
    assert set(DOC) == set(MODEL), (sorted(set(MODEL) - set(DOC)), sorted(set(DOC) - set(MODEL)))


@pytest.mark.parametrize("path", sorted(MODEL))
def test_each_section_lists_exactly_the_fields_of_the_model(path):
    expected = {}
    for cls in MODEL[path]:
        config = cls.__struct_config__
        if config.tag_field:
            expected[config.tag_field] = None
        for f in msgspec.structs.fields(cls):
            expected[f.encode_name] = f
    assert set(DOC[path]) == set(expected), (path, sorted(set(expected) ^ set(DOC[path])))


@pytest.mark.parametrize("path", sorted(MODEL))
def test_defaults_and_allowed_values_are_those_of_the_model(path):
    for cls in MODEL[path]:
        for f in msgspec.structs.fields(cls):
            cells = DOC[path][f.encode_name]
            assert len(cells) == 4 and all(cells), (path, cells)
            assert cells[2] == render_default(f), (path, f.encode_name, cells[2], render_default(f))
            for m in _members(f.type):
                inner = [m] + ([_strip(get_args(m)[0])] if get_origin(m) is tuple else [])
                for tp in inner:
                    if get_origin(tp) is Literal:
                        for value in get_args(tp):
                            assert f"`{value}`" in cells[1], (path, f.encode_name, value, cells[1])


def yaml_examples() -> list[str]:
    return [m for m in re.findall(r"```yaml\n(.*?)```", TEXT, re.S) if m.startswith("version: 1")]


def test_every_complete_example_loads_or_is_refused_only_as_unsupported():
    examples = yaml_examples()
    assert len(examples) >= 5
    backend_types, match_modes = set(), set()
    for text in examples:
        raw = yaml.safe_load(text)
        for api in raw.get("apis", []):
            backend_types.add(api["backend"].get("type", "http"))
            match_modes.add(api.get("match_mode", "exact"))
        try:
            parse_document(text)
        except ConfigError as exc:
            assert all(e.endswith("not supported in this version") for e in exc.errors), exc.errors
            assert {api["backend"]["type"] for api in raw["apis"]} <= {"function", "data"}, text
    assert backend_types == {"http", "mock", "function", "data"}
    assert match_modes == {"exact", "prefix"}


def test_the_readme_and_the_example_file_link_to_the_reference():
    root = REFERENCE.parents[1]
    assert "docs/configuration.md" in (root / "README.md").read_text()
    assert "docs/configuration.md" in (root / "tollgate" / "examples" / "gateway.yaml").read_text()

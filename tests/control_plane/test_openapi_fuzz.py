"""A schemathesis run of ``/v1/openapi.json`` against a real running control plane.

Every operation of the document gets a few generated requests (derandomized: the same cases on
every run) with a read-write token, so creates, replaces, patches and deletes really happen;
before each operation the store is reset to the rich example, and half of the generated
``{name}`` path parameters are replaced by the name of a resource that exists (else nearly every
call of ``/v1/{kind}/{name}`` would be a 404).  Checks: no 5xx, every answer's status declared
by the document and its body conforming to the declared schema.  The token the run uses is not
a resource (``PUT /v1/config`` cannot touch it) and a generated ``DELETE /v1/tokens/admin`` is
sent for another name: the run cannot lock itself out.
"""
from __future__ import annotations

import hashlib
import os
import re

import httpx
import pytest

schemathesis = pytest.importorskip("schemathesis")
from hypothesis import HealthCheck, Phase, settings  # noqa: E402
from schemathesis.checks import (not_a_server_error, response_schema_conformance,  # noqa: E402
                                 status_code_conformance)

from control_plane.kinds import KINDS  # noqa: E402
from tests.support.control_plane import running  # noqa: E402

from .examples import rich  # noqa: E402

ADMIN = "admin-token-for-the-openapi-run-0123"
#: generated requests per operation (about 110 operations: the run takes about 40 s)
MAX_EXAMPLES = 5


@pytest.fixture(scope="module")
def fuzz_cp(tmp_path_factory):
    with running(tmp_path_factory.mktemp("fuzz"), admin_token=ADMIN) as proc:
        yield proc


@pytest.fixture(scope="module")
def api_schema(fuzz_cp):
    doc = httpx.get(f"{fuzz_cp.url}/v1/openapi.json",
                    headers={"Authorization": f"Bearer {ADMIN}"}).json()
    schema = schemathesis.openapi.from_dict(doc)
    # bounded and reproducible: the examples of the document and MAX_EXAMPLES generated cases
    # (valid and invalid ones) per operation, the same ones on every run (the coverage phase,
    # thousands of cases, is for a run by hand: TOLLGATE_OPENAPI_COVERAGE=1)
    schema.config.phases.update(phases=["examples", "fuzzing"] + (
        ["coverage"] if os.environ.get("TOLLGATE_OPENAPI_COVERAGE") else []))
    schema.config.generation.update(max_examples=MAX_EXAMPLES, deterministic=True)
    return schema


_seeded: dict[str, object] = {"operation": None, "names": {}}


def _seed(fuzz_cp, operation: str) -> dict[str, list[str]]:
    """The rich example in the store before each operation's cases (one PUT per operation);
    the existing names per kind."""
    if _seeded["operation"] != operation:
        with fuzz_cp.client(ADMIN) as c:
            r = c.put("/v1/config", json=rich())
            assert r.status_code == 200, r.text
            _seeded["names"] = {k: [i["name"] for i in r.json()[k]] for k in KINDS}
        _seeded["operation"] = operation
    return _seeded["names"]


schema = schemathesis.pytest.from_fixture("api_schema")


def _existing(case, names: dict[str, list[str]]) -> None:
    """Half of the generated ``name`` path parameters become an existing resource's name."""
    params = case.path_parameters or {}
    if "name" not in params:
        return
    parts = case.operation.path.split("/")       # /v1/{kind}/{name}...
    kind = parts[2] if len(parts) > 2 else ""
    known = names.get(kind) or []
    digest = int(hashlib.sha256(repr(params["name"]).encode()).hexdigest(), 16)
    if known and digest % 2 == 0:
        params["name"] = known[digest // 2 % len(known)]


@pytest.mark.timeout(1800 if os.environ.get("TOLLGATE_OPENAPI_COVERAGE") else 300)
@schema.parametrize()
@settings(max_examples=MAX_EXAMPLES, derandomize=True, database=None, deadline=None,
          phases=[Phase.explicit, Phase.generate], suppress_health_check=list(HealthCheck))
def test_openapi_operations(case, fuzz_cp):
    _existing(case, _seed(fuzz_cp, case.operation.label))
    if case.operation.path == "/v1/tokens/{name}" and case.path_parameters.get("name") == "admin":
        case.path_parameters["name"] = "not-the-run-token"
    case.call_and_validate(base_url=fuzz_cp.url, headers={"Authorization": f"Bearer {ADMIN}"},
                           checks=[not_a_server_error, status_code_conformance,
                                   response_schema_conformance], timeout=30)


def test_the_run_reached_existing_resources(fuzz_cp):
    """(After the run.) Not every call of ``/v1/{kind}/{name}`` was a 404: reads, deletes,
    replaces and patches of existing resources were answered (the seeded names were used)."""
    with fuzz_cp.client(ADMIN) as c:
        text = c.get("/metrics").text
    answered = {}
    for line in text.splitlines():
        if line.startswith("tollgate_control_plane_requests_total{"):
            labels = dict(re.findall(r'(\w+)="([^"]*)"', line))
            route, method, status = labels["route"], labels["method"], labels["status"]
            if route.endswith("/{name}") and route.count("/") == 3 and status != "404":
                answered.setdefault(method, set()).add(status)
    assert "200" in answered["GET"] and "204" in answered["DELETE"], answered
    # (generated bodies are rarely valid ones: reaching the stored resource is what counts)
    for method in ("PUT", "PATCH"):
        assert answered.get(method, set()) & {"200", "409", "412", "422"}, answered

def test_the_checks_fail_on_an_answer_the_document_does_not_declare(fuzz_cp, api_schema):
    """The run can fail: with a document that declares another body, or not the status, of
    ``GET /v1/audit``, the same checks refuse the control plane's real answer."""
    import copy
    doc = copy.deepcopy(api_schema.raw_schema)
    audit = doc["paths"]["/v1/audit"]["get"]["responses"]
    audit["200"]["content"]["application/json"]["schema"]["required"].append("not-there")
    undeclared = {**doc, "paths": {**doc["paths"], "/v1/audit": {"get": {
        **doc["paths"]["/v1/audit"]["get"], "responses": {"201": audit["200"]}}}}}
    for changed, expected in ((doc, "violates schema"), (undeclared, "Undocumented")):
        operation = schemathesis.openapi.from_dict(changed)["/v1/audit"]["GET"]
        with pytest.raises(BaseExceptionGroup) as failed:
            operation.Case().call_and_validate(
                base_url=fuzz_cp.url, headers={"Authorization": f"Bearer {ADMIN}"},
                checks=[not_a_server_error, status_code_conformance,
                        response_schema_conformance])
        assert expected in " ".join(str(e) for e in failed.value.exceptions)


def test_body_errors_are_declared_for_every_operation_with_a_body(fuzz_cp, api_schema):
    """413 (too large) and 415 (a PATCH that is no merge patch) are real answers: every
    operation with a body declares them."""
    doc = api_schema.raw_schema
    with fuzz_cp.client(ADMIN) as c:
        assert c.put("/v1/config", json=rich()).status_code == 200
        big = c.post("/v1/apis", content=b"[" + b"0," * (1 << 20) + b"0]",
                     headers={"Content-Type": "application/json"})
        plain = c.patch("/v1/apis/free-slots", content=b'{"note": "x"}',
                        headers={"Content-Type": "text/plain"})
    assert (big.status_code, plain.status_code) == (413, 415)
    for answer in (big, plain):
        assert set(answer.json()) >= {"error_code", "error_msg", "path", "errors"}
    assert "413" in doc["paths"]["/v1/apis"]["post"]["responses"]
    assert "415" in doc["paths"]["/v1/apis/{name}"]["patch"]["responses"]
    for path, item in doc["paths"].items():
        for method, operation in item.items():
            if isinstance(operation, dict) and "requestBody" in operation:
                assert "413" in operation["responses"], (method, path)
                if method == "patch":
                    assert "415" in operation["responses"], (method, path)

"""The HTTP contract: /openapi.json describes every route completely, and the server keeps it.

Two halves. A walk over the document checks its form: every operation has a typed
success response, documents the error shape, and a route that takes a body says so; no
object without properties unless it is free-form on purpose (attributes, filters) and says
that. Then schemathesis sends generated requests (bounded, derandomised) to a real uvicorn
server on a seeded namespace and checks each answer: no 5xx, a documented status and
content type, a body that matches its schema.
"""

from __future__ import annotations

import hashlib
from collections import Counter

import pytest

from api.app import create_app
from tests.fakes import unit_settings
from tests.servers import InProcessServer

schemathesis = pytest.importorskip("schemathesis")
from hypothesis import HealthCheck, Phase, given  # noqa: E402
from hypothesis import settings as hsettings  # noqa: E402
from schemathesis.checks import not_a_server_error  # noqa: E402
from schemathesis.core.failures import Failure, FailureGroup  # noqa: E402
from schemathesis.specs.openapi.checks import (  # noqa: E402
    content_type_conformance,
    response_schema_conformance,
    status_code_conformance,
)

NS = "seeded"
ERROR_REF = "#/components/schemas/ErrorResponse"
# Routes whose error answers carry more than the error (the upload's job); they extend it.
ERROR_REFS = {ERROR_REF, "#/components/schemas/JobErrorResponse"}
METHODS = ("get", "put", "post", "delete", "patch")
# Examples per operation: ~20 operations, so the whole run stays well under a minute.
MAX_EXAMPLES = 30
CHECKS = [not_a_server_error, status_code_conformance, content_type_conformance, response_schema_conformance]


@pytest.fixture(scope="module")
def app():
    application = create_app(unit_settings("memory://contract"), role="all")
    yield application
    application.state.service.close()


@pytest.fixture(scope="module")
def openapi(app) -> dict:
    return app.openapi()


# --- the document's form ---------------------------------------------------------------------
def _operations(openapi: dict):
    for path, item in openapi["paths"].items():
        for method, op in item.items():
            if method in METHODS:
                yield f"{method.upper()} {path}", op


def _resolve(openapi: dict, schema: dict) -> dict:
    while "$ref" in schema:
        name = schema["$ref"].rsplit("/", 1)[1]
        schema = openapi["components"]["schemas"][name]
    return schema


def _untyped_objects(node, where: str, described: bool = False):
    """Places in ``node`` with an object schema that says nothing of its contents and,
    being free-form, does not say so either."""
    if isinstance(node, dict):
        described = described or bool(node.get("description"))
        extra = node.get("additionalProperties", True)
        if node.get("type") == "object" and not node.get("properties") and extra in (True, {}) and not described:
            yield where
        for key, value in node.items():
            # A description covers the alternatives of its own schema (X | None), not properties below it.
            inherit = described and key in ("anyOf", "oneOf", "allOf")
            yield from _untyped_objects(value, f"{where}/{key}", inherit)
    elif isinstance(node, list):
        for n, value in enumerate(node):
            yield from _untyped_objects(value, f"{where}[{n}]", described)


def test_no_untyped_objects(openapi):
    assert list(_untyped_objects(openapi, "#")) == []


def test_every_operation_has_a_typed_success_response(openapi):
    for name, op in _operations(openapi):
        ok = {code: r for code, r in op["responses"].items() if code.startswith("2")}
        assert ok, name
        for code, response in ok.items():
            schema = response["content"]["application/json"]["schema"]
            resolved = _resolve(openapi, schema)
            assert resolved.get("type") == "object" and resolved.get("properties"), (name, code)


def test_every_operation_documents_the_error_shape(openapi):
    for name, op in _operations(openapi):
        errors = {code: r for code, r in op["responses"].items() if code[0] in "45"}
        assert errors, name
        assert "422" not in op["responses"], name  # validation fails with 400 here
        for code, response in errors.items():
            assert response["content"]["application/json"]["schema"]["$ref"] in ERROR_REFS, (name, code)
    assert "HTTPValidationError" not in openapi["components"]["schemas"]
    error = openapi["components"]["schemas"]["ErrorDetail"]
    assert set(error["required"]) == {"code", "message", "request_id"}


def test_every_operation_that_takes_a_body_describes_it(app, openapi):
    from api.rights import RULES

    ops = dict(_operations(openapi))
    for (method, path), rule in RULES.items():
        name = f"{method} {path.replace(':path', '')}"
        if not rule.media:
            assert "requestBody" not in ops[name], name
            continue
        body = ops[name]["requestBody"]
        assert set(body["content"]) == set(rule.media), name  # what access control lets through
        for media in body["content"].values():
            assert media["schema"], name
    upsert = ops["POST /v1/namespaces/{ns}/documents"]["requestBody"]
    assert upsert["required"] and "vector" in upsert["description"]
    assert _resolve(openapi, upsert["content"]["application/json"]["schema"])["properties"]["documents"]
    assert upsert["content"]["application/vnd.apache.arrow.stream"]["schema"]["format"] == "binary"


def test_every_operation_keeps_its_security_and_rights(openapi):
    assert "bearer" in openapi["components"]["securitySchemes"]
    for name, op in _operations(openapi):
        assert "security" in op, name
        if name != "GET /healthz":
            assert "Needs a key with" in op["description"], name


# --- the server keeps it -----------------------------------------------------------------------
def _seed(service) -> tuple[str, list[str]]:
    """A namespace with indexed and unindexed documents (one chunked), a tag and a finished
    upload job; returns the job's id and the documents' ids."""
    service.create_namespace(NS, "fake", chunking={"chunk_tokens": 16, "overlap_tokens": 2})
    words = "pump filter valve motor seal bearing housing impeller shaft gasket".split()
    docs = [
        {"id": f"d{n}", "text": " ".join(words[n % 10 :] + words[: n % 10]),
         "attributes": {"lang": "en" if n % 2 else "de", "year": 2000 + n, "title": f"Doc {n}"}}
        for n in range(60)
    ]
    docs.append({"id": "long", "text": " ".join(words * 12), "attributes": {"page": 3}})
    service.upsert(NS, docs)
    service.index(NS)
    service.upsert(NS, [{"id": "fresh", "text": "a row still in the tail", "attributes": {"lang": "en"}}])
    service.tag(NS, "v1", service.catalog.latest(NS).version)
    job = service.ingest_file(NS, "notes.txt", b"Clean the filter weekly.\n\nCheck the seal.", "text/plain",
                              None, None, None)
    return job.id, [d["id"] for d in docs] + ["fresh"]


@pytest.fixture(scope="module")
def server(app):
    job_id, ids = _seed(app.state.service)
    with InProcessServer(app) as url:
        yield url, job_id, ids


def _pick(generated, known: list[str]):
    """Half the generated values stand for something that exists, chosen by the value
    (deterministic): a read then finds something, the other half tests the 404s."""
    if not isinstance(generated, str):
        return generated
    digest = hashlib.blake2b(generated.encode(), digest_size=2).digest()
    return known[digest[1] % len(known)] if digest[0] % 2 else generated


def _aim(case, job_id: str, ids: list[str]) -> None:
    params = case.path_parameters or {}
    # Dropping the seeded namespace would leave the rest of the run nothing to read.
    if "ns" in params and case.operation.label != "DELETE /v1/namespaces/{ns}":
        params["ns"] = _pick(params["ns"], [NS])
    if "doc_id" in params:
        params["doc_id"] = _pick(params["doc_id"], ids)
    if "name" in params:
        params["name"] = _pick(params["name"], ["v1"])
    if "job_id" in params:
        params["job_id"] = _pick(params["job_id"], [job_id])


def _exercise(operation, url: str, session, aim, failures: list[str], statuses: Counter) -> None:
    """Send ``operation``'s generated cases, collecting the checks' failures and the
    statuses answered."""
    # Not a cross-site page: the API refuses body-less POSTs without one of these (api/access.py).
    headers = {"X-Requested-With": "schemathesis"}

    @hsettings(max_examples=MAX_EXAMPLES, deadline=None, derandomize=True, database=None,
               phases=[Phase.explicit, Phase.generate], suppress_health_check=list(HealthCheck))
    @given(case=operation.as_strategy())
    def run(case):
        aim(case)
        response = case.call(base_url=url, session=session, headers=headers)
        statuses[response.status_code] += 1
        try:
            case.validate_response(response, checks=CHECKS, headers=headers)
        except (Failure, FailureGroup) as exc:  # one failed check, or several
            failures.append(f"{operation.label}: {exc}"[:2000])

    run()


def test_schemathesis_finds_no_server_error_and_no_contract_breach(server):
    import requests

    url, job_id, ids = server
    schema = schemathesis.openapi.from_url(f"{url}/openapi.json")

    def aim(case):
        _aim(case, job_id, ids)

    failures: list[str] = []
    answered: dict[str, Counter] = {}
    with requests.Session() as session:
        for result in schema.get_all_operations():
            operation = result.ok()
            answered[operation.label] = Counter()
            _exercise(operation, url, session, aim, failures, answered[operation.label])
    print("\n".join(f"{label}: {dict(sorted(counts.items()))}" for label, counts in answered.items()))
    assert not failures, "\n\n".join(failures)

"""Property-based run of schemathesis against the app's own OpenAPI spec: no 5xx, responses as documented.

Bounded (``max_examples`` per operation) to stay fast. The only 5xx allowed is the documented
503 of ``/synthesize``: this app has no synthesis worker (tests/test_synthesize_api.py covers
one). Schemathesis cannot know the admin key, so ``/admin/reload`` is exercised here only up to
its 401/403.
"""

from __future__ import annotations

from pathlib import Path

import pytest
import schemathesis
from hypothesis import HealthCheck, given, settings
from schemathesis import GenerationMode
from schemathesis.checks import CheckContext
from schemathesis.core.transport import Response
from schemathesis.generation.case import Case
from schemathesis.specs.openapi.checks import (
    content_type_conformance,
    response_schema_conformance,
    status_code_conformance,
)

from retrieval_service.api.app import create_app
from retrieval_service.api.settings import Settings

#: Documented server errors: (path, status).
ALLOWED_5XX = {("/synthesize", 503)}


# The operations, from the spec of an app without a bank (building it is cheap and needs nothing).
# Invalid inputs can only be generated for operations that take some.
_PATHS = create_app(Settings(bank=None)).openapi()["paths"]
OPERATIONS = [(method.upper(), path) for path, ops in _PATHS.items() for method in ops]
CASES = [
    (method, path, mode)
    for method, path in OPERATIONS
    for mode in (GenerationMode.POSITIVE, GenerationMode.NEGATIVE)
    if mode is GenerationMode.POSITIVE or {"parameters", "requestBody"} & set(_PATHS[path][method.lower()])
]


@pytest.fixture(scope="module")
def api_schema(val_bank_path: Path) -> schemathesis.BaseSchema:
    app = create_app(Settings(bank=val_bank_path, api_key="schema-key", wait_for_bank=True))
    return schemathesis.openapi.from_asgi("/openapi.json", app)


def no_server_error(ctx: CheckContext, response: Response, case: Case) -> bool | None:
    """No 5xx except the documented ones, and every error a JSON body with a message."""
    status = response.status_code
    if status >= 500 and (case.operation.path, status) not in ALLOWED_5XX:
        raise AssertionError(f"{case.operation.label} answered {status}: {response.text[:300]}")
    if status >= 400:
        body = response.json()
        assert isinstance(body.get("message"), str) and body["message"], body
    return None


CHECKS = [no_server_error, status_code_conformance, content_type_conformance, response_schema_conformance]


@pytest.mark.parametrize(("method", "path", "mode"), CASES, ids=[f"{m} {p} {g.value}" for m, p, g in CASES])
def test_operation_conforms(api_schema: schemathesis.BaseSchema, method: str, path: str, mode: GenerationMode) -> None:
    operation = api_schema[path][method]

    @given(case=operation.as_strategy(generation_mode=mode))
    @settings(max_examples=20, deadline=None, database=None, derandomize=True, suppress_health_check=list(HealthCheck))
    def run(case: Case) -> None:
        case.validate_response(case.call(), checks=CHECKS)

    run()


def test_every_operation_is_covered() -> None:
    assert len(OPERATIONS) == 14
    assert {(m, p) for m, p, g in CASES if g is GenerationMode.NEGATIVE} == {
        ("POST", "/retrieve"),
        ("POST", "/synthesize"),
        ("GET", "/segments/{segment_id}"),
        ("GET", "/segments/{segment_id}/meta"),
        ("POST", "/segments/batch"),
        ("GET", "/segments/{segment_id}/thumbnail"),
        ("GET", "/images"),
        ("GET", "/images/{image_id}/layout"),
        ("GET", "/images/{image_id}/photo"),
    }

"""The OpenAPI document is complete and correct: schemathesis generates requests from it
(admin-authenticated, so the admin routes are exercised for real) against a real server
on loopback and checks that no response is a server error and that every status code,
content type and body is documented."""

from __future__ import annotations

import tempfile
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
import schemathesis
from hypothesis import HealthCheck, given, settings
from schemathesis.checks import not_a_server_error
from schemathesis.specs.openapi.checks import (
    content_type_conformance,
    response_schema_conformance,
    status_code_conformance,
)

from secagg.app import create_app
from secagg.settings import Settings
from tests.server.helpers import ADMIN, running_server

# The document exactly as the app serves it.
_DOC = create_app(
    Settings(database_url=f"sqlite:///{tempfile.mkdtemp()}/doc.db", admin_token="doc")
).openapi()
SCHEMA = schemathesis.openapi.from_dict(_DOC)
OPERATIONS = [result.ok() for result in SCHEMA.get_all_operations()]
CHECKS = [
    not_a_server_error,
    status_code_conformance,
    content_type_conformance,
    response_schema_conformance,
]


@pytest.fixture(scope="module")
def server_url(tmp_path_factory: pytest.TempPathFactory) -> Iterator[str]:
    with running_server(Path(tmp_path_factory.mktemp("openapi"))) as url:
        yield url


@pytest.mark.parametrize("operation", OPERATIONS, ids=lambda op: op.label)
def test_operation_conforms_to_its_documentation(operation: Any, server_url: str) -> None:
    @settings(max_examples=30, deadline=None, suppress_health_check=list(HealthCheck))
    @given(case=operation.as_strategy())
    def check(case: Any) -> None:
        case.headers = {**(case.headers or {}), "authorization": f"Bearer {ADMIN}"}
        case.validate_response(case.call(base_url=server_url), checks=CHECKS)

    check()

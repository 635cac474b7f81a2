"""Property-based fuzzing of the service from its own OpenAPI schema (schemathesis): no input gives a 500.

The service runs in a real uvicorn server on loopback with the tiny trained model, so the generated
requests go through HTTP parsing, the size limit, validation, the batcher and the real tokenizer.
"""

from __future__ import annotations

import pytest
import schemathesis
from hypothesis import HealthCheck, given, settings

from tests._serve_fixtures import serving
from tunelab.serve.app import create_app
from tunelab.serve.settings import ServeSettings

KEY = "fuzz-key"


@pytest.fixture(scope="module")
def server_url(trained_run):
    app = create_app(trained_run, ServeSettings(max_texts=16, max_body_bytes=20_000, max_wait_ms=1), api_key=KEY)
    with serving(app) as url:
        yield url


@pytest.fixture(scope="module")
def api_schema(server_url):
    return schemathesis.openapi.from_url(server_url + "/openapi.json")


OPERATIONS = [("/v1/predict", "POST"), ("/v1/model", "GET"), ("/health", "GET"), ("/ready", "GET"), ("/metrics", "GET")]


def test_schema_lists_every_operation(api_schema) -> None:
    listed = {(op.path, op.method.upper()) for op in (r.ok() for r in api_schema.get_all_operations())}
    assert set(OPERATIONS) <= listed


# schemathesis.pytest.from_fixture does not work with pytest 9 here, so each operation's strategy is
# drawn from inside a plain test with Hypothesis. Negative mode (bodies that break the schema) only
# applies to the one operation that takes input.
CASES = [(path, method, "positive") for path, method in OPERATIONS] + [("/v1/predict", "POST", "negative")]


@pytest.mark.parametrize(("path", "method", "mode"), CASES)
def test_no_input_gives_a_server_error(api_schema, path: str, method: str, mode: str) -> None:
    operation = api_schema[path][method]

    @settings(max_examples=150 if method == "POST" else 5, deadline=None, suppress_health_check=list(HealthCheck), database=None)
    @given(case=operation.as_strategy(schemathesis.GenerationMode(mode)))
    def check(case) -> None:
        # Every default check: no 5xx, documented status codes and content types, responses match the schema.
        # With the key; schemathesis also replays the request without it and expects a 401.
        case.call_and_validate(headers={"X-API-Key": KEY})

    check()

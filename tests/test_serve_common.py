"""The one API-key rule of both services: Authorization: Bearer wins over X-API-Key."""

from __future__ import annotations

import pytest
from fastapi import FastAPI
from fastapi.testclient import TestClient
from starlette.datastructures import Headers

from tests._serve_fixtures import fake_model, running
from tunelab.serve.app import create_app
from tunelab.serve.common import key_accepted, presented_key
from tunelab.serve.openai import openai_router


@pytest.mark.parametrize(
    ("headers", "presented"),
    [
        ({"Authorization": "Bearer k"}, "k"),
        ({"authorization": "bearer  k "}, "k"),
        ({"X-API-Key": "k"}, "k"),
        ({"Authorization": "Bearer a", "X-API-Key": "b"}, "a"),  # both: the Bearer credential wins
        ({"Authorization": "Basic a", "X-API-Key": "b"}, "b"),  # not a Bearer credential: X-API-Key is read
        ({}, ""),
    ],
)
def test_presented_key(headers, presented) -> None:
    assert presented_key(Headers(headers)) == presented


def test_no_key_required_accepts_anything() -> None:
    assert key_accepted(Headers({}), "") and key_accepted(Headers({"X-API-Key": "x"}), "")


CASES = [
    ({"X-API-Key": "k"}, 200),
    ({"Authorization": "Bearer k"}, 200),
    ({"Authorization": "Bearer k", "X-API-Key": "wrong"}, 200),
    ({"Authorization": "Bearer wrong", "X-API-Key": "k"}, 401),
    ({}, 401),
]


@pytest.mark.parametrize(("headers", "status"), CASES)
def test_classifier_service_follows_the_rule(headers, status) -> None:
    with running(create_app(lambda: fake_model(), api_key="k")) as client:
        assert client.get("/v1/model", headers=headers).status_code == status


@pytest.mark.parametrize(("headers", "status"), CASES)
def test_chat_service_follows_the_rule(headers, status) -> None:
    app = FastAPI()
    app.include_router(openai_router(generator=None, model_name="tiny", api_key="k"))  # /v1/models never generates
    with TestClient(app) as client:
        response = client.get("/v1/models", headers=headers)
    assert response.status_code == status
    if status == 401:
        assert response.json()["error"]["code"] == "invalid_api_key"


def test_chat_routes_document_their_bodies() -> None:
    app = FastAPI()
    app.include_router(openai_router(generator=None, model_name="tiny", api_key=""))
    schema = TestClient(app).get("/openapi.json").json()
    chat = schema["paths"]["/v1/chat/completions"]["post"]
    assert chat["requestBody"]["content"]["application/json"]["schema"]["$ref"].endswith("/ChatCompletionRequest")
    assert chat["responses"]["200"]["content"]["application/json"]["schema"]["$ref"].endswith("/ChatCompletion")
    assert chat["responses"]["422"]["content"]["application/json"]["schema"]["$ref"].endswith("/OpenAIErrorBody")
    assert schema["paths"]["/v1/models"]["get"]["responses"]["200"]["content"]["application/json"]["schema"]["$ref"].endswith("/ModelList")
    assert schema["components"]["schemas"]["ChatCompletionRequest"]["properties"]["messages"]["maxItems"] == 256

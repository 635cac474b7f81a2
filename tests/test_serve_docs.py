"""/docs on both services, without a browser: Swagger UI >= 5 (it reads the OpenAPI 3.1 FastAPI
writes; 4.x shows "Unable to render this definition"), served from the service itself.

tests/test_serve_browser.py checks in Chromium that the page really lists the operations.
"""

from __future__ import annotations

import re

import pytest
from fastapi.testclient import TestClient

from tests._lm_fixtures import write_tiny_llama
from tests._serve_fixtures import fake_model
from tunelab.serve.app import create_app


@pytest.fixture(scope="module")
def lm_app(tmp_path_factory):
    from tunelab.lm.generate import Generator
    from tunelab.serve.openai import create_openai_app

    generator = Generator(write_tiny_llama(tmp_path_factory.mktemp("tiny-llama")), precision="fp32")
    return create_openai_app(generator, model_name="tiny", api_key="")


def swagger_ui_version(script: str) -> tuple[int, ...]:
    found = re.search(r'PACKAGE_VERSION:"(\d+)\.(\d+)\.(\d+)"', script)
    assert found, "no version string in the served Swagger UI bundle"
    return tuple(int(part) for part in found.groups())


@pytest.mark.parametrize("service", ["classifier", "lm"])
def test_docs_serve_swagger_ui_5_from_local_assets(service, request) -> None:
    app = create_app(lambda: fake_model(), api_key="") if service == "classifier" else request.getfixturevalue("lm_app")
    with TestClient(app) as client:
        page = client.get("/docs")
        assert page.status_code == 200
        assert client.get("/openapi.json").json()["openapi"].startswith("3.1")
        assert not re.search(r"https?://", page.text)  # no CDN: the docs work offline
        assets = re.findall(r"(?:src|href)\s*=\s*['\"]([^'\"]+)['\"]", page.text)
        assert assets and all(a.startswith("/") for a in assets), assets
        scripts = [a for a in assets if a.endswith("swagger-ui-bundle.js")]
        assert len(scripts) == 1, assets
        for asset in assets:
            assert client.get(asset).status_code == 200, asset
        version = swagger_ui_version(client.get(scripts[0]).text)
        assert version >= (5, 0, 0), f"Swagger UI {version} cannot render OpenAPI 3.1"

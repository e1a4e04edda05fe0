"""The service against its own OpenAPI document (schemathesis): no 5xx, answers as documented.

A real server on loopback runs the tiny champion; schemathesis generates requests for every
documented operation (valid and invalid ones) with an admin key, and checks that none is
answered 5xx and that every answer's status, content type, headers and body match the
document. The document itself is checked for what people read in the API browser: the
bearer scheme, examples on the inference schemas and the predict body's media types.
"""

from __future__ import annotations

from collections.abc import Iterator
from typing import Any

import hypothesis
import pytest
import schemathesis
from schemathesis import GenerationMode
from schemathesis.checks import not_a_server_error
from schemathesis.specs.openapi.checks import (
    content_type_conformance,
    response_headers_conformance,
    response_schema_conformance,
    status_code_conformance,
)

from medai.config import Settings
from medai.serving.app import create_app
from tests.serving.helpers import bearer, new_key
from tests.serving.test_auth_matrix import MATRIX
from tests.utils.campaign import init_example_campaign
from tests.utils.served_model import Champion, ThreadedServer, shared_champion, wait_ready

# Raw bodies, as the service takes them (a generated multipart/related body has no
# boundary parameter, and is refused with the documented 400).
schemathesis.serializer.alias("application/dicom", "application/octet-stream")
schemathesis.serializer.alias("multipart/related", "application/octet-stream")

CHECKS = [
    not_a_server_error,
    status_code_conformance,
    content_type_conformance,
    response_headers_conformance,
    response_schema_conformance,
]


@pytest.fixture(scope="module")
def champion(tmp_path_factory: pytest.TempPathFactory) -> Champion:
    return shared_champion(tmp_path_factory)


@pytest.fixture(scope="module")
def server(
    champion: Champion, tmp_path_factory: pytest.TempPathFactory
) -> Iterator[tuple[ThreadedServer, str]]:
    root = tmp_path_factory.mktemp("schemathesis")
    own = Settings(home=root / "home", database_url=f"sqlite:///{root / 'catalog.db'}")
    init_example_campaign(own)
    settings = champion.serving_settings(own, model_poll_seconds=0.0)
    key = new_key(settings, "admin")
    with ThreadedServer(create_app(settings)) as running:
        with running.client() as client:
            wait_ready(client)
        yield running, key


@pytest.fixture(scope="module")
def api_schema(server: tuple[ThreadedServer, str]) -> Any:
    running, key = server
    return schemathesis.openapi.from_url(f"{running.url}/openapi.json", headers=bearer(key))


def _cases(operation: Any) -> Any:
    # Valid requests, and requests that break the document (which must be refused, not 5xx).
    return hypothesis.strategies.one_of(
        operation.as_strategy(generation_mode=GenerationMode.POSITIVE),
        operation.as_strategy(generation_mode=GenerationMode.NEGATIVE),
    )


# Every documented operation (test_auth_matrix checks this list against the document);
# schemathesis's own pytest plugin (`schema.parametrize`) does not run on this pytest.
@pytest.mark.parametrize(
    ("method", "path"), sorted(MATRIX), ids=[f"{m} {p}" for m, p in sorted(MATRIX)]
)
def test_the_service_answers_as_its_openapi_document_says(
    method: str, path: str, api_schema: Any, server: tuple[ThreadedServer, str]
) -> None:
    running, key = server
    operation = api_schema[path][method]

    @hypothesis.given(case=_cases(operation))
    @hypothesis.settings(
        max_examples=25,
        deadline=None,
        derandomize=True,
        database=None,
        suppress_health_check=list(hypothesis.HealthCheck),
    )
    def check(case: Any) -> None:
        case.call_and_validate(base_url=running.url, headers=bearer(key), checks=CHECKS)

    check()


def test_real_predictions_match_the_document(
    api_schema: Any, server: tuple[ThreadedServer, str], champion: Champion
) -> None:
    # Generated bodies are never DICOM; these are, so the success answers are checked too.
    running, key = server
    data = champion.radiographs[0][0].read_bytes()
    predict = api_schema["/v1/predict"]["POST"]
    answer = predict.Case(
        body=data, media_type="application/dicom", headers={"Medai-Reference": "r-1"}
    ).call_and_validate(base_url=running.url, headers=bearer(key), checks=CHECKS)
    assert answer.status_code == 200
    prediction_id = answer.json()["prediction_id"]
    report = predict.Case(
        body=data, media_type="application/dicom", headers={"Accept": "application/dicom"}
    ).call_and_validate(base_url=running.url, headers=bearer(key), checks=CHECKS)
    assert report.headers["content-type"] == ["application/dicom"]
    for path in ("/v1/predictions/{prediction_id}", "/v1/predictions/{prediction_id}/heatmap.png"):
        response = (
            api_schema[path]["GET"]
            .Case(path_parameters={"prediction_id": prediction_id})
            .call_and_validate(base_url=running.url, headers=bearer(key), checks=CHECKS)
        )
        assert response.status_code == 200, path
    models = api_schema["/v1/models"]["GET"].Case()
    listed = models.call_and_validate(base_url=running.url, headers=bearer(key), checks=CHECKS)
    assert listed.json()["models"][0]["version"] == "1"


def test_the_document_describes_keys_examples_and_media_types(
    server: tuple[ThreadedServer, str],
) -> None:
    running, key = server
    with running.client() as client:
        assert client.get("/openapi.json").status_code == 401  # not open either
        spec = client.get("/openapi.json", headers=bearer(key)).json()
    schemes = spec["components"]["securitySchemes"]
    assert schemes["bearer"] == {
        "type": "http",
        "scheme": "bearer",
        "description": schemes["bearer"]["description"],
    }
    predict = spec["paths"]["/v1/predict"]["post"]
    assert set(predict["requestBody"]["content"]) == {"application/dicom", "multipart/related"}
    assert set(predict["responses"]["200"]["content"]) == {"application/json", "application/dicom"}
    # The study-level rule is documented where the operation is.
    assert "highest over the instances" in " ".join(predict["description"].split())
    schemas = spec["components"]["schemas"]
    example = schemas["PredictionOut"]["examples"][0]
    assert set(example) == set(schemas["PredictionOut"]["properties"])
    assert schemas["ReloadOut"]["examples"] and schemas["Problem"]["examples"]
    for path in ("/healthz", "/readyz"):
        assert not spec["paths"][path]["get"].get("security")

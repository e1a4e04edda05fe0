"""Fixtures of the serving tests: a set-up campaign, a web client, small synthetic studies."""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path

import pytest

from medai.config import Settings
from medai.dicom.synth import SynthResult, generate
from medai.serving.app import create_app
from tests.serving.helpers import TestClient
from tests.utils.campaign import init_example_campaign


@pytest.fixture
def campaign(settings: Settings) -> Settings:
    """``settings`` with the example campaign set up (sites site-a, site-b, site-c)."""
    init_example_campaign(settings)
    return settings


@pytest.fixture
def client(campaign: Settings) -> Iterator[TestClient]:
    """The web app on the set-up campaign, in process (httpx)."""
    with TestClient(create_app(campaign)) as test_client:
        yield test_client


@pytest.fixture(scope="module")
def synth(tmp_path_factory: pytest.TempPathFactory) -> SynthResult:
    """Three small studies of site-a (two radiographs, a two-slice CT): four files."""
    out: Path = tmp_path_factory.mktemp("synth")
    return generate(out, studies=3, seed=11, sites=("site-a",), image_size=32, ct_slices=2)

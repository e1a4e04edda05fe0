"""The demo's accounting stage: each broken check is named, none is blamed on another."""

from __future__ import annotations

import io

import pytest
from rich.console import Console
from sqlalchemy import update

from medai.catalog.db import create_engine_for, session_factory
from medai.catalog.models import AuditRecord
from medai.config import Settings
from medai.demo import stages
from medai.errors import DemoFailed
from tests.utils.campaign import init_example_campaign


def _verify(settings: Settings) -> str:
    return stages.verify(settings, lambda _number, _text: None, Console(file=io.StringIO()))


@pytest.mark.parametrize("database_url", ["sqlite"], indirect=True)
def test_an_intact_collection_passes(settings: Settings) -> None:
    init_example_campaign(settings)
    line = _verify(settings)
    assert line.startswith("inputs 0 = stored 0 + duplicate 0 + quarantined 0")
    assert line.endswith("records intact")


@pytest.mark.parametrize("database_url", ["sqlite"], indirect=True)
def test_a_broken_audit_chain_alone_is_not_called_an_accounting_problem(
    settings: Settings,
) -> None:
    init_example_campaign(settings)
    engine = create_engine_for(settings.resolved_database_url)
    try:
        with session_factory(engine).begin() as session:
            session.execute(update(AuditRecord).where(AuditRecord.seq == 1).values(actor="edited"))
    finally:
        engine.dispose()
    with pytest.raises(DemoFailed) as failed:
        _verify(settings)
    message = str(failed.value)
    assert message.startswith("audit chain broken at record 1: ")
    assert "accounting" not in message

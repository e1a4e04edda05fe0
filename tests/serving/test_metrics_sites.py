"""``GET /metrics`` exposes each site's status, time since last seen and edge outbox."""

from __future__ import annotations

import datetime as dt
import math

from prometheus_client.parser import text_string_to_metric_families

from medai.catalog.db import create_engine_for, session_factory
from medai.catalog.models import utcnow
from medai.collection.campaign.definition import CampaignDefinition
from medai.collection.campaign.setup import init_campaign
from medai.config import Settings
from medai.serving.app import create_app
from tests.collection.timeline_data import add_heartbeat, add_studies
from tests.serving.helpers import TestClient, bearer, new_key


def _samples(text: str) -> dict[tuple[str, tuple[tuple[str, str], ...]], float]:
    return {
        (sample.name, tuple(sorted(sample.labels.items()))): sample.value
        for family in text_string_to_metric_families(text)
        for sample in family.samples
    }


def test_metrics_have_per_site_status_last_seen_and_outbox(settings: Settings) -> None:
    today = utcnow().date()
    start = today - dt.timedelta(days=10)  # today is day 11 of 90
    definition = CampaignDefinition.model_validate(
        {
            "name": "Metrics",
            "start_date": start,
            "length_days": 90,
            "sites": [
                {"id": site, "name": site, "ae_titles": [site.upper().replace("-", "_")],
                 "targets": [{"modality": "DX", "studies": 50}]}
                for site in ("site-a", "site-b", "site-c")
            ],
        }
    )  # fmt: skip
    init_campaign(definition, settings)
    engine = create_engine_for(settings.resolved_database_url)
    with session_factory(engine).begin() as session:
        add_studies(session, "site-a", start, {9: 3, 10: 3})  # last: yesterday 12:00 UTC
        add_heartbeat(
            session, "site-b", utcnow() - dt.timedelta(minutes=1), outbox_depth=17,
            oldest_unsent_seconds=120.0,
        )  # fmt: skip
    engine.dispose()
    key = new_key(settings, "steward")
    # The service's own quiet time: 48 h keeps site-a (heard yesterday) from being silent.
    served = settings.model_copy(update={"site_quiet_hours": 48.0})
    with TestClient(create_app(served)) as client:
        assert client.get("/metrics").status_code == 401
        response = client.get("/metrics", headers=bearer(key))
    assert response.status_code == 200
    samples = _samples(response.text)

    def status_of(site: str) -> str:
        states = {
            dict(labels)["status"]: value
            for (name, labels), value in samples.items()
            if name == "medai_site_status" and dict(labels)["site"] == site
        }
        assert sum(states.values()) == 1.0 and len(states) == 6, states
        return next(state for state, value in states.items() if value == 1.0)

    assert status_of("site-c") == "silent"  # nothing heard in the 10 days since the start
    assert status_of("site-a") != "silent" and status_of("site-b") != "silent"
    age = "medai_site_last_seen_age_seconds"
    assert math.isinf(samples[(age, (("site", "site-c"),))])
    assert 12 * 3600 <= samples[(age, (("site", "site-a"),))] <= 36 * 3600 + 60
    assert 0 <= samples[(age, (("site", "site-b"),))] < 3600
    assert samples[("medai_site_outbox_depth", (("site", "site-b"),))] == 17.0
    assert samples[("medai_site_oldest_unsent_seconds", (("site", "site-b"),))] == 120.0
    assert ("medai_site_outbox_depth", (("site", "site-a"),)) not in samples  # no edge
    assert samples[("medai_site_progress_ratio", (("site", "site-a"),))] == 6 / 50
    assert samples[("medai_campaign_silent_sites", ())] == 1.0


def test_metrics_without_a_campaign_leave_the_site_series_out(settings: Settings) -> None:
    key = new_key(settings, "admin")
    with TestClient(create_app(settings)) as client:
        response = client.get("/metrics", headers=bearer(key))
    assert response.status_code == 200
    assert "medai_http_requests" in response.text
    assert "medai_site_status" not in response.text
